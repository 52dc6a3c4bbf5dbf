// Heap per connection: tls_stream against hand-written non-blocking OpenSSL
// (read-ahead off, read-ahead on, and SSL_MODE_RELEASE_BUFFERS), N
// connections over AF_UNIX socketpairs, both ends of each connection the
// same implementation, all on this thread (issue 12).
//
//   memory_bench [--quick] [--conns N]     (default 2 000 connections, --quick 500)
//   memory_bench --rtt IMPL N              N 64-byte round trips on one connection,
//                                          for callgrind (IMPL: raw raw_ra raw_rb tls tls_keep;
//                                          tls_keep: set_release_idle_buffers(false))
//
// --rtt: the busy side of the same trade. Each end reads until it has to wait
// (want read), as an event loop does, so tls_stream frees its buffers at
// every wait and takes them again; raw_rb frees and retakes them around
// every record. Count with, e.g.,
//   valgrind --tool=callgrind memory_bench --rtt tls 1000   (and 3000)
// and divide the difference by 2 000.
//
// Phases, for each implementation in turn, from the same starting heap:
//   handshake  all N handshakes stepped side by side (one step per end per
//              pass), so every connection is mid-handshake at once: the peak
//   idle       each end then tries a read and has to wait (want read)
//   active     each client has written 64 KiB (four full records) and each
//              server has read 1 KiB of it: records in flight and part-read
//   idle again everything drained, each end waiting for a read again
// Heap is measured two ways: mallinfo2() (bytes in malloc'd chunks, headers
// included: what the process pays), and a count of the bytes that OpenSSL
// (CRYPTO_set_mem_functions) and C++ (operator new) hold, which also gives
// the peak inside each call. Figures are per end (one connection = two ends).
//
// Same TLS configuration as tls_bench: TLS 1.3, TLS_AES_256_GCM_SHA384, an
// ECDSA P-256 certificate, the client verifies the chain, no tickets, no
// session cache.
//
// SPDX-License-Identifier: MIT
#include <tls_stream.hpp>

#include "common.hpp"
#include "examples/self_signed.hpp"

#include <malloc.h>
#include <sys/socket.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

// ---------------------------------------------------------------- counting allocator

namespace {

std::size_t in_use = 0; // one thread: no atomics needed
std::size_t peak = 0;

void count_in(void* p)
{
    if (p) {
        in_use += malloc_usable_size(p);
        if (in_use > peak)
            peak = in_use;
    }
}
void count_out(void* p)
{
    if (p)
        in_use -= malloc_usable_size(p);
}

void* counted_malloc(std::size_t n, const char*, int)
{
    void* p = std::malloc(n);
    count_in(p);
    return p;
}
void* counted_realloc(void* old, std::size_t n, const char*, int)
{
    count_out(old);
    void* p = std::realloc(old, n);
    count_in(p ? p : (n == 0 ? nullptr : old));
    return p;
}
void counted_free(void* p, const char*, int)
{
    count_out(p);
    std::free(p);
}

} // namespace

void* operator new(std::size_t n)
{
    void* p = std::malloc(n ? n : 1);
    if (!p)
        throw std::bad_alloc();
    count_in(p);
    return p;
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept
{
    void* p = std::malloc(n ? n : 1);
    count_in(p);
    return p;
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return ::operator new(n, t); }
void operator delete(void* p) noexcept
{
    count_out(p);
    std::free(p);
}
void operator delete[](void* p) noexcept { ::operator delete(p); }
void operator delete(void* p, std::size_t) noexcept { ::operator delete(p); }
void operator delete[](void* p, std::size_t) noexcept { ::operator delete(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { ::operator delete(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { ::operator delete(p); }

namespace {

[[noreturn]] void die(const std::string& what)
{
    std::fprintf(stderr, "memory_bench: %s\n", what.c_str());
    ERR_print_errors_fp(stderr);
    std::exit(1);
}

void check(bool ok, const char* what)
{
    if (!ok)
        die(what);
}

std::size_t mallinfo_in_use() { return ::mallinfo2().uordblks; }

// ---------------------------------------------------------------- set-up

using bench::make_ctx; // bench/common.hpp

enum class impl { raw, raw_ra, raw_rb, tls };
const impl all_impls[] = {impl::raw, impl::raw_ra, impl::raw_rb, impl::tls};
const char* label_of(impl i)
{
    switch (i) {
    case impl::raw: return "raw OpenSSL";
    case impl::raw_ra: return "raw OpenSSL, read-ahead";
    case impl::raw_rb: return "raw OpenSSL, SSL_MODE_RELEASE_BUFFERS";
    case impl::tls: return "tls_stream";
    }
    return "?";
}

enum class step { done, again };

// One end, non-blocking: raw OpenSSL over its socket BIO, or tls_stream's steps.
class end {
public:
    virtual ~end() = default;
    virtual step handshake() = 0;
    // One read; 0 when it has to wait.
    virtual std::size_t read(std::byte* p, std::size_t n) = 0;
    // One write; 0 when it has to wait.
    virtual std::size_t write(const std::byte* p, std::size_t n) = 0;
};

class raw_end final : public end {
public:
    raw_end(SSL_CTX* ctx, int fd, bool server, impl i) : fd_(fd), ssl_(SSL_new(ctx))
    {
        check(ssl_ != nullptr && SSL_set_fd(ssl_, fd) == 1, "SSL_new");
        if (i == impl::raw_ra)
            SSL_set_read_ahead(ssl_, 1);
        if (i == impl::raw_rb)
            SSL_set_mode(ssl_, SSL_MODE_RELEASE_BUFFERS);
        server ? SSL_set_accept_state(ssl_) : SSL_set_connect_state(ssl_);
    }
    raw_end(const raw_end&) = delete;
    raw_end& operator=(const raw_end&) = delete;
    ~raw_end() override
    {
        SSL_shutdown(ssl_);
        SSL_free(ssl_);
        ::close(fd_);
        ERR_clear_error();
    }
    step handshake() override { return SSL_do_handshake(ssl_) == 1 ? step::done : blocked(-1); }
    std::size_t read(std::byte* p, std::size_t n) override
    {
        std::size_t got = 0;
        if (SSL_read_ex(ssl_, p, n, &got) == 1)
            return got;
        blocked(0);
        return 0;
    }
    std::size_t write(const std::byte* p, std::size_t n) override
    {
        std::size_t put = 0;
        if (SSL_write_ex(ssl_, p, n, &put) == 1)
            return put;
        blocked(0);
        return 0;
    }

private:
    step blocked(int r)
    {
        const int e = SSL_get_error(ssl_, r);
        check(e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE, "raw OpenSSL step failed");
        return step::again;
    }

    int fd_;
    SSL* ssl_;
};

class tls_end final : public end {
public:
    tls_end(const tls::context& ctx, int fd, bool server) : s_(ctx, tls::unique_socket{fd}), server_(server) {}
    step handshake() override
    {
        std::error_code ec;
        const tls::want w = server_ ? s_.try_accept(ec) : s_.try_connect(ec);
        check(!ec, "tls_stream handshake failed");
        return w == tls::want::nothing ? step::done : step::again;
    }
    std::size_t read(std::byte* p, std::size_t n) override
    {
        std::size_t got = 0;
        std::error_code ec;
        (void)s_.try_read_some({p, n}, got, ec);
        check(!ec, "tls_stream read failed");
        return got;
    }
    std::size_t write(const std::byte* p, std::size_t n) override
    {
        std::size_t put = 0;
        std::error_code ec;
        (void)s_.try_write_some({p, n}, put, ec);
        check(!ec, "tls_stream write failed");
        return put;
    }

private:
    tls::tls_stream<tls::unique_socket, tls::fast_shutdown> s_; // fast: closing never waits
    bool server_;
};

struct contexts {
    SSL_CTX* server;
    SSL_CTX* client;
    tls::context tls_server;
    tls::context tls_client;
};

struct figures {
    double idle_mallinfo, idle_counted, handshake_peak, active, active_peak, idle_again;
};

double per_end(std::size_t now, std::size_t base, std::size_t conns)
{
    return (static_cast<double>(now) - static_cast<double>(base)) / static_cast<double>(2 * conns) / 1024.0;
}

figures measure(impl i, contexts& c, std::size_t conns)
{
    constexpr std::size_t active_bytes = 64 * 1024;
    static std::vector<std::byte> payload(active_bytes, std::byte{'x'});
    std::byte sink[16 * 1024 + 256];

    std::vector<std::pair<std::unique_ptr<end>, std::unique_ptr<end>>> ends;
    ends.reserve(conns);
    std::vector<char> done(2 * conns, 0);
    const std::size_t base_mi = mallinfo_in_use();
    const std::size_t base = in_use;
    peak = in_use;
    for (std::size_t k = 0; k < conns; ++k) {
        int fds[2];
        check(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0, "socketpair");
        if (i == impl::tls)
            ends.emplace_back(std::make_unique<tls_end>(c.tls_client, fds[0], false),
                              std::make_unique<tls_end>(c.tls_server, fds[1], true));
        else
            ends.emplace_back(std::make_unique<raw_end>(c.client, fds[0], false, i),
                              std::make_unique<raw_end>(c.server, fds[1], true, i));
    }
    for (std::size_t left = 2 * conns; left > 0;) {
        for (std::size_t k = 0; k < conns; ++k) {
            for (int side = 0; side < 2; ++side) {
                char& d = done[2 * k + static_cast<std::size_t>(side)];
                if (!d && (side == 0 ? ends[k].first : ends[k].second)->handshake() == step::done) {
                    d = 1;
                    --left;
                }
            }
        }
    }
    figures f{};
    f.handshake_peak = per_end(peak, base, conns);

    for (auto& [client, server] : ends) {
        check(client->read(sink, sizeof sink) == 0 && server->read(sink, sizeof sink) == 0, "idle read got data");
    }
    f.idle_mallinfo = per_end(mallinfo_in_use(), base_mi, conns);
    f.idle_counted = per_end(in_use, base, conns);

    peak = in_use;
    for (auto& [client, server] : ends) {
        for (std::size_t put = 0; put < active_bytes;) {
            const std::size_t n = client->write(payload.data() + put, active_bytes - put);
            check(n > 0, "the socket buffer is too small for the active phase");
            put += n;
        }
        check(server->read(sink, 1024) == 1024, "active read");
    }
    f.active = per_end(in_use, base, conns);
    f.active_peak = per_end(peak, base, conns);

    for (auto& [client, server] : ends) {
        std::size_t got = 1024;
        for (std::size_t n; (n = server->read(sink, sizeof sink)) > 0;)
            got += n;
        check(got == active_bytes, "drain");
        check(client->read(sink, sizeof sink) == 0, "idle read got data");
    }
    f.idle_again = per_end(in_use, base, conns);
    ends.clear();
    return f;
}

// N round trips of 64 bytes on one connection, each end reading until it
// has to wait.
void round_trips(impl i, contexts& c, std::size_t count)
{
    int fds[2];
    check(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0, "socketpair");
    std::unique_ptr<end> ends[2];
    if (i == impl::tls) {
        ends[0] = std::make_unique<tls_end>(c.tls_client, fds[0], false);
        ends[1] = std::make_unique<tls_end>(c.tls_server, fds[1], true);
    } else {
        ends[0] = std::make_unique<raw_end>(c.client, fds[0], false, i);
        ends[1] = std::make_unique<raw_end>(c.server, fds[1], true, i);
    }
    for (bool done[2] = {false, false}; !done[0] || !done[1];)
        for (int k = 0; k < 2; ++k)
            done[k] = done[k] || ends[k]->handshake() == step::done;
    std::byte msg[64] = {};
    std::byte sink[256];
    for (std::size_t n = 0; n < count; ++n) {
        for (int from = 0; from < 2; ++from) {
            end& w = *ends[from];
            end& r = *ends[1 - from];
            check(w.write(msg, sizeof msg) == sizeof msg, "round trip write");
            std::size_t got = 0;
            for (std::size_t k; (k = r.read(sink, sizeof sink)) > 0;)
                got += k;
            check(got == sizeof msg, "round trip read");
        }
    }
}

std::string fmt(double x)
{
    char b[32];
    std::snprintf(b, sizeof b, x >= 100 ? "%.1f" : "%.2f", x);
    return b;
}
std::string ratio(double a, double b)
{
    char r[32];
    std::snprintf(r, sizeof r, "%.3f", a / b);
    return r;
}

} // namespace

int main(int argc, char** argv)
{
    const bool rtt = argc == 4 && std::string(argv[1]) == "--rtt";
    // Before OpenSSL allocates anything; not for --rtt, whose instructions
    // should be OpenSSL's own.
    if (!rtt)
        check(CRYPTO_set_mem_functions(counted_malloc, counted_realloc, counted_free) == 1, "CRYPTO_set_mem_functions");
    // Raw OpenSSL's close writes with plain write(): an AF_UNIX peer that is
    // gone would raise SIGPIPE. tls_stream itself never needs this.
    std::signal(SIGPIPE, SIG_IGN);
    std::size_t conns = 2000;
    for (int k = 1; k < argc && !rtt; ++k) {
        const std::string a = argv[k];
        if (a == "--quick")
            conns = 500;
        else if (a == "--conns" && k + 1 < argc)
            conns = std::strtoul(argv[++k], nullptr, 10);
        else {
            std::fprintf(stderr, "usage: memory_bench [--quick] [--conns N]\n"
                                 "       memory_bench --rtt raw|raw_ra|raw_rb|tls|tls_keep N\n");
            return 2;
        }
    }
    self_signed::credentials creds;
    self_signed::generate(creds);
    SSL_CTX* server = make_ctx(true, creds);
    SSL_CTX* client = make_ctx(false, creds);
    SSL_CTX_up_ref(server);
    SSL_CTX_up_ref(client);
    contexts c{server, client, tls::context{server}, tls::context{client}};
    if (rtt) {
        const std::string name = argv[2];
        const impl i = name == "raw"      ? impl::raw
                       : name == "raw_ra" ? impl::raw_ra
                       : name == "raw_rb" ? impl::raw_rb
                                          : impl::tls;
        if (name == "tls_keep") { // tls_stream keeping its buffers while it waits
            c.tls_client.set_release_idle_buffers(false);
            c.tls_server.set_release_idle_buffers(false);
        }
        round_trips(i, c, std::strtoul(argv[3], nullptr, 10));
        SSL_CTX_free(server);
        SSL_CTX_free(client);
        return 0;
    }

    figures m[4] = {};
    for (impl i : all_impls)
        m[static_cast<int>(i)] = measure(i, c, 1); // warm-up: one-time allocations out of the way
    for (impl i : all_impls)
        m[static_cast<int>(i)] = measure(i, c, conns);

    std::printf("#### Heap per connection end\n\n");
    std::printf("%zu connections over AF_UNIX socketpairs, both ends of each the same implementation, "
                "non-blocking on one thread (bench/memory_bench). KiB per end (a connection is two ends). "
                "idle: handshake done, each end waiting for a read; handshake peak: all %zu handshakes "
                "stepped side by side; active: each client has written 64 KiB and each server has read "
                "1 KiB of it; idle again: drained, waiting. mallinfo2 counts malloc'd chunks (headers included), "
                "the others count the bytes OpenSSL and operator new hold (malloc_usable_size).\n\n",
                conns, conns);
    std::printf("| implementation | idle (mallinfo2) | idle | handshake peak | active | active peak | idle again |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    for (impl i : all_impls) {
        const figures& f = m[static_cast<int>(i)];
        std::printf("| %s | %s | %s | %s | %s | %s | %s |\n", label_of(i), fmt(f.idle_mallinfo).c_str(),
                    fmt(f.idle_counted).c_str(), fmt(f.handshake_peak).c_str(), fmt(f.active).c_str(),
                    fmt(f.active_peak).c_str(), fmt(f.idle_again).c_str());
    }
    const figures& t = m[static_cast<int>(impl::tls)];
    for (impl ref : {impl::raw_rb, impl::raw, impl::raw_ra}) {
        const figures& r = m[static_cast<int>(ref)];
        std::printf("| *tls_stream ÷ %s* | %s | %s | %s | %s | %s | %s |\n", label_of(ref),
                    ratio(t.idle_mallinfo, r.idle_mallinfo).c_str(), ratio(t.idle_counted, r.idle_counted).c_str(),
                    ratio(t.handshake_peak, r.handshake_peak).c_str(), ratio(t.active, r.active).c_str(),
                    ratio(t.active_peak, r.active_peak).c_str(), ratio(t.idle_again, r.idle_again).c_str());
    }
    std::printf("\n");
    SSL_CTX_free(server);
    SSL_CTX_free(client);
    return 0;
}
