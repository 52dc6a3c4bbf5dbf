// Coroutine benchmark: tls_stream's asynchronous members
// (<tls_stream/asio.hpp>) against Asio's ssl::stream, both ends of every
// connection on one io_context run by one thread, so the process's CPU time
// is all the work of both ends and nothing else.
//
//   asio_bench [--quick] [--runs N]
//
// Workloads, each with full_shutdown / async_shutdown at both ends:
//   bulk        one connection, one end sends, the other reads (64 KiB writes)
//   round trip  one connection, 64 bytes each way, one after the other
//   churn       connect (loopback TCP), handshake, one 64-byte round trip,
//               close both ways; sequential
//   heap        live heap (mallinfo2) per connection with K connections
//               established and idle, both ends counted
// Same TLS configuration as bench.cpp: TLS 1.3 only, TLS_AES_256_GCM_SHA384,
// one ECDSA P-256 certificate, the client verifies the chain and the host
// name (SNI sent), no tickets, no session cache. Each figure is the median
// of N runs (5; 3 with --quick), the implementations alternating.
//
// SPDX-License-Identifier: MIT
#include <tls_stream/asio.hpp>

#include "common.hpp"
#include "examples/self_signed.hpp"

#include <asio/ssl.hpp>

#include <malloc.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& what)
{
    std::fprintf(stderr, "asio_bench: %s\n", what.c_str());
    std::exit(1);
}

void check(bool ok, const char* what)
{
    if (!ok)
        die(what);
}

double cpu_seconds()
{
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

using bench::make_ctx; // bench/common.hpp

using bench::shared;

struct env {
    self_signed::credentials creds;
    SSL_CTX* server;
    SSL_CTX* client;
    tls::context tls_server;
    tls::context tls_client;
    asio::ssl::context asio_server;
    asio::ssl::context asio_client;
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor{io, {asio::ip::address_v4::loopback(), 0}};

    env()
        : server((self_signed::generate(creds), make_ctx(true, creds))), client(make_ctx(false, creds)),
          tls_server(shared(server)), tls_client(shared(client)), asio_server(shared(server)),
          asio_client(shared(client))
    {
    }
    env(const env&) = delete;
    env& operator=(const env&) = delete;
    ~env()
    {
        SSL_CTX_free(server);
        SSL_CTX_free(client);
    }

    // A connected loopback pair: {client end, server end}. Loopback connect
    // and accept complete at once; both implementations pay them alike.
    std::pair<asio::ip::tcp::socket, asio::ip::tcp::socket> pair()
    {
        asio::ip::tcp::socket c(io);
        c.connect(acceptor.local_endpoint());
        asio::ip::tcp::socket s = acceptor.accept();
        c.set_option(asio::ip::tcp::no_delay(true));
        s.set_option(asio::ip::tcp::no_delay(true));
        return {std::move(c), std::move(s)};
    }
};

using asio::use_awaitable;

struct tls_impl {
    static constexpr const char* name = "tls_stream";
    using stream = tls::tls_stream<asio::ip::tcp::socket, tls::full_shutdown>;
    static stream make(env& e, bool server, asio::ip::tcp::socket sock)
    {
        return stream(server ? e.tls_server : e.tls_client, std::move(sock));
    }
    static asio::awaitable<void> handshake(stream& s, bool server)
    {
        if (server)
            co_await s.async_accept(use_awaitable);
        else
            co_await s.async_connect("localhost", use_awaitable);
    }
    static asio::awaitable<void> shutdown(stream& s)
    {
        const tls::shutdown_result r = co_await s.async_shutdown(use_awaitable);
        check(r == tls::shutdown_result::complete, "tls_stream: incomplete close");
    }
};

struct asio_impl {
    static constexpr const char* name = "Asio ssl::stream";
    using stream = asio::ssl::stream<asio::ip::tcp::socket>;
    static stream make(env& e, bool server, asio::ip::tcp::socket sock)
    {
        stream s(std::move(sock), server ? e.asio_server : e.asio_client);
        if (!server) { // what tls_stream's connect("localhost") does
            check(SSL_set_tlsext_host_name(s.native_handle(), "localhost") == 1, "SNI");
            s.set_verify_callback(asio::ssl::host_name_verification("localhost"));
        }
        return s;
    }
    static asio::awaitable<void> handshake(stream& s, bool server)
    {
        co_await s.async_handshake(server ? stream::server : stream::client, use_awaitable);
    }
    static asio::awaitable<void> shutdown(stream& s)
    {
        // Both ends at once: each sends close_notify and waits for the other's.
        std::error_code ec;
        co_await s.async_shutdown(asio::redirect_error(use_awaitable, ec));
        check(!ec, "asio: shutdown failed");
    }
};

void run(env& e)
{
    e.io.restart();
    e.io.run();
}

void spawn(env& e, asio::awaitable<void> a)
{
    asio::co_spawn(e.io, std::move(a), [](std::exception_ptr x) {
        if (x)
            std::rethrow_exception(x);
    });
}

// ---------------------------------------------------------------- workloads

template <class Impl>
double bulk(env& e, std::size_t mib) // CPU seconds per MiB
{
    auto [c, s] = e.pair();
    auto client = Impl::make(e, false, std::move(c));
    auto server = Impl::make(e, true, std::move(s));
    spawn(e, Impl::handshake(client, false));
    spawn(e, Impl::handshake(server, true));
    run(e);
    const std::size_t total = mib << 20;
    const double start = cpu_seconds();
    spawn(e, [](typename Impl::stream& w, std::size_t n) -> asio::awaitable<void> {
        std::vector<char> buf(64 * 1024, 'x');
        for (std::size_t sent = 0; sent < n; sent += buf.size())
            co_await asio::async_write(w, asio::buffer(buf), use_awaitable);
    }(server, total));
    spawn(e, [](typename Impl::stream& r, std::size_t n) -> asio::awaitable<void> {
        std::vector<char> buf(64 * 1024);
        for (std::size_t got = 0; got < n;)
            got += co_await r.async_read_some(asio::buffer(buf), use_awaitable);
    }(client, total));
    run(e);
    const double used = cpu_seconds() - start;
    spawn(e, Impl::shutdown(client));
    spawn(e, Impl::shutdown(server));
    run(e);
    return used / static_cast<double>(mib);
}

template <class Impl>
double round_trips(env& e, int n) // CPU seconds per round trip
{
    auto [c, s] = e.pair();
    auto client = Impl::make(e, false, std::move(c));
    auto server = Impl::make(e, true, std::move(s));
    spawn(e, Impl::handshake(client, false));
    spawn(e, Impl::handshake(server, true));
    run(e);
    const double start = cpu_seconds();
    spawn(e, [](typename Impl::stream& cl, int count) -> asio::awaitable<void> {
        char buf[64] = {};
        for (int i = 0; i < count; ++i) {
            co_await asio::async_write(cl, asio::buffer(buf), use_awaitable);
            co_await asio::async_read(cl, asio::buffer(buf), use_awaitable);
        }
    }(client, n));
    spawn(e, [](typename Impl::stream& sv, int count) -> asio::awaitable<void> {
        char buf[64];
        for (int i = 0; i < count; ++i) {
            co_await asio::async_read(sv, asio::buffer(buf), use_awaitable);
            co_await asio::async_write(sv, asio::buffer(buf), use_awaitable);
        }
    }(server, n));
    run(e);
    const double used = cpu_seconds() - start;
    spawn(e, Impl::shutdown(client));
    spawn(e, Impl::shutdown(server));
    run(e);
    return used / n;
}

template <class Impl>
asio::awaitable<void> one_connection(env& e, typename Impl::stream& s, bool server)
{
    co_await Impl::handshake(s, server);
    char buf[64] = {};
    if (server) {
        co_await asio::async_read(s, asio::buffer(buf), use_awaitable);
        co_await asio::async_write(s, asio::buffer(buf), use_awaitable);
    } else {
        co_await asio::async_write(s, asio::buffer(buf), use_awaitable);
        co_await asio::async_read(s, asio::buffer(buf), use_awaitable);
    }
    co_await Impl::shutdown(s);
    static_cast<void>(e);
}

template <class Impl>
double churn(env& e, int n) // CPU seconds per connection
{
    const double start = cpu_seconds();
    for (int i = 0; i < n; ++i) {
        auto [c, s] = e.pair();
        auto client = Impl::make(e, false, std::move(c));
        auto server = Impl::make(e, true, std::move(s));
        spawn(e, one_connection<Impl>(e, client, false));
        spawn(e, one_connection<Impl>(e, server, true));
        run(e);
    }
    return (cpu_seconds() - start) / n;
}

template <class Impl>
double heap(env& e, int k) // bytes per connection, both ends
{
    std::vector<typename Impl::stream> ends;
    ends.reserve(static_cast<std::size_t>(2 * k));
    const auto before = mallinfo2().uordblks;
    for (int i = 0; i < k; ++i) {
        auto [c, s] = e.pair();
        ends.push_back(Impl::make(e, false, std::move(c)));
        ends.push_back(Impl::make(e, true, std::move(s)));
    }
    for (int i = 0; i < k; ++i) {
        spawn(e, Impl::handshake(ends[static_cast<std::size_t>(2 * i)], false));
        spawn(e, Impl::handshake(ends[static_cast<std::size_t>(2 * i + 1)], true));
    }
    run(e);
    const auto after = mallinfo2().uordblks;
    for (auto& s : ends)
        spawn(e, Impl::shutdown(s));
    run(e);
    return static_cast<double>(after - before) / k;
}

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

template <class F>
void row(const char* what, const char* unit, double scale, int runs, F&& measure)
{
    std::vector<double> t, a;
    for (int i = 0; i < runs; ++i) {
        t.push_back(measure(tls_impl{}));
        a.push_back(measure(asio_impl{}));
    }
    const double mt = median(t) * scale, ma = median(a) * scale;
    std::printf("| %s | %.3f %s | %.3f %s | %.3f |\n", what, mt, unit, ma, unit, mt / ma);
    std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv)
{
    bool quick = false;
    int runs = 0;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--quick") == 0)
            quick = true;
        else if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            runs = std::atoi(argv[++i]);
        else
            die("usage: asio_bench [--quick] [--runs N]");
    }
    if (runs <= 0)
        runs = quick ? 3 : 5;
    const std::size_t mib = quick ? 64 : 256;
    const int trips = quick ? 5000 : 20000;
    const int conns = quick ? 200 : 1000;
    const int idle = quick ? 100 : 500;

    env e;
    std::printf("Coroutines on one io_context, one thread, both ends in this process (CPU = both ends); "
                "median of %d runs; bulk %zu MiB, %d round trips, %d connections, %d idle connections.\n\n",
                runs, mib, trips, conns, idle);
    std::printf("| what | tls_stream | Asio ssl::stream | ratio |\n|---|---|---|---|\n");
    row("CPU per MiB (bulk)", "ms", 1e3, runs, [&](auto impl) { return bulk<decltype(impl)>(e, mib); });
    row("CPU per 64-byte round trip", "µs", 1e6, runs,
        [&](auto impl) { return round_trips<decltype(impl)>(e, trips); });
    row("CPU per connection (churn)", "µs", 1e6, runs, [&](auto impl) { return churn<decltype(impl)>(e, conns); });
    row("heap per idle connection (both ends)", "KiB", 1.0 / 1024, runs,
        [&](auto impl) { return heap<decltype(impl)>(e, idle); });
    return 0;
}
