// Benchmarks: tls_stream against hand-written OpenSSL on blocking sockets
// (read-ahead off, and on) and Asio's ssl::stream. Both ends of every
// connection use the implementation under test; the two ends run on two
// threads of this process.
//
//   tls_bench time   [--quick] [--runs N] [--title T]  timing tables (markdown)
//   tls_bench counts [--quick]                         instructions (callgrind) and syscalls (perf/strace)
//   tls_bench one IMPL WORKLOAD TRANSPORT UNITS [POLICY]  one run, for the counters
//
// One TLS configuration for all: TLS 1.3 only, TLS_AES_256_GCM_SHA384, the
// same ECDSA P-256 certificate (generated at start), the client verifies the
// chain (no host name check), no session tickets and no session cache, so
// every churn connection is a full handshake for every implementation.
//
// SPDX-License-Identifier: MIT
#include <tls_stream.hpp>

#include "common.hpp"
#include "examples/self_signed.hpp"

#include <asio.hpp>
#include <asio/ssl.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/wait.h>

#include <algorithm>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <time.h>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& what)
{
    std::fprintf(stderr, "tls_bench: %s\n", what.c_str());
    ERR_print_errors_fp(stderr);
    std::exit(1);
}

void check(bool ok, const char* what)
{
    if (!ok)
        die(what);
}

// ---------------------------------------------------------------- set-up

enum class policy { fast, quiet, full };
const char* name_of(policy p) { return p == policy::fast ? "fast" : p == policy::quiet ? "quiet" : "full"; }

// raw_rb: raw OpenSSL with SSL_MODE_RELEASE_BUFFERS (its buffers freed and
// taken again around every record), the leanest raw form when idle.
enum class impl { tls, raw, raw_ra, asio, raw_rb };
const impl all_impls[] = {impl::tls, impl::raw, impl::raw_ra, impl::asio, impl::raw_rb};
constexpr int n_impls = 5;
// Asio has no fast close; raw_rb is there for the hot path only.
bool churn_skipped(impl i, policy p) { return (i == impl::asio && p == policy::fast) || i == impl::raw_rb; }
const char* id_of(impl i)
{
    switch (i) {
    case impl::tls: return "tls_stream";
    case impl::raw: return "raw";
    case impl::raw_ra: return "raw_ra";
    case impl::asio: return "asio";
    case impl::raw_rb: return "raw_rb";
    }
    return "?";
}
const char* label_of(impl i)
{
    switch (i) {
    case impl::tls: return "tls_stream";
    case impl::raw: return "raw OpenSSL";
    case impl::raw_ra: return "raw OpenSSL, read-ahead";
    case impl::asio: return "Asio ssl::stream";
    case impl::raw_rb: return "raw OpenSSL, SSL_MODE_RELEASE_BUFFERS";
    }
    return "?";
}

using bench::make_ctx; // bench/common.hpp

using bench::shared;

// Everything the implementations share: one SSL_CTX per side, seen through
// each implementation's own context type.
struct env {
    self_signed::credentials creds;
    SSL_CTX* server;
    SSL_CTX* client;
    tls::context tls_server;
    tls::context tls_client;
    asio::io_context io;
    asio::ssl::context asio_server;
    asio::ssl::context asio_client;

    env()
        : server((self_signed::generate(creds), make_ctx(true, creds))), client(make_ctx(false, creds)),
          tls_server(shared(server)), tls_client(shared(client)), asio_server(shared(server)),
          asio_client(shared(client))
    {
    }
    ~env()
    {
        SSL_CTX_free(server);
        SSL_CTX_free(client);
    }
};

// ---------------------------------------------------------------- transports

int listener_port = 0;
int listener_fd = -1;

void no_delay(int fd)
{
    const int one = 1;
    check(::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0, "TCP_NODELAY");
}

// A connected pair: [0] for the client, [1] for the server.
std::pair<int, int> make_pair(bool tcp)
{
    if (!tcp) {
        int fds[2];
        check(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0, "socketpair");
        return {fds[0], fds[1]};
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listener_fd < 0) {
        listener_fd = ::socket(AF_INET, SOCK_STREAM, 0);
        check(listener_fd >= 0, "socket");
        check(::bind(listener_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, "bind");
        check(::listen(listener_fd, 16) == 0, "listen");
        socklen_t len = sizeof addr;
        check(::getsockname(listener_fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0, "getsockname");
        listener_port = addr.sin_port;
    }
    addr.sin_port = static_cast<in_port_t>(listener_port);
    const int c = ::socket(AF_INET, SOCK_STREAM, 0);
    check(c >= 0, "socket");
    check(::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, "connect");
    const int s = ::accept(listener_fd, nullptr, nullptr);
    check(s >= 0, "accept");
    no_delay(c);
    no_delay(s);
    return {c, s};
}

// ---------------------------------------------------------------- implementations
//
// Each end: constructed over a connected fd (which it owns), then
// handshake(), read_some() (0 = the peer's close_notify), write_all(),
// wait_end() (read until the peer's close_notify or the transport's end,
// swallowing errors) and close() (run the policy, free, close the fd).

template <class Policy>
struct tls_factory {
    env& e;
    class end {
    public:
        end(tls_factory& f, bool server, int fd)
            : s_(std::make_unique<tls::tls_stream<tls::unique_socket, Policy>>(server ? f.e.tls_server : f.e.tls_client,
                                                                               tls::unique_socket{fd}))
        {
        }
        void handshake(bool client) { client ? s_->connect() : s_->accept(); }
        std::size_t read_some(std::byte* p, std::size_t n) { return s_->read_some({p, n}); }
        void write_all(const std::byte* p, std::size_t n) { s_->write_all({p, n}); }
        void wait_end()
        {
            std::byte b[256];
            std::error_code ec;
            while (s_->read_some(b, ec) > 0) {
            }
        }
        void close() { s_.reset(); }

    private:
        std::unique_ptr<tls::tls_stream<tls::unique_socket, Policy>> s_; // closed by reset()
    };
};

struct raw_factory {
    env& e;
    bool read_ahead;
    policy pol;
    bool release_buffers = false;
    class end {
    public:
        end(raw_factory& f, bool server, int fd) : pol_(f.pol), fd_(fd), ssl_(SSL_new(server ? f.e.server : f.e.client))
        {
            check(ssl_ != nullptr && SSL_set_fd(ssl_, fd) == 1, "SSL_new");
            if (f.read_ahead)
                SSL_set_read_ahead(ssl_, 1);
            if (f.release_buffers)
                SSL_set_mode(ssl_, SSL_MODE_RELEASE_BUFFERS);
        }
        end(const end&) = delete;
        end& operator=(const end&) = delete;
        ~end() { close(); }
        void handshake(bool client) { check((client ? SSL_connect(ssl_) : SSL_accept(ssl_)) == 1, "raw handshake"); }
        std::size_t read_some(std::byte* p, std::size_t n)
        {
            std::size_t got = 0;
            if (SSL_read_ex(ssl_, p, n, &got) == 1)
                return got;
            check(SSL_get_error(ssl_, 0) == SSL_ERROR_ZERO_RETURN, "SSL_read_ex");
            return 0;
        }
        void write_all(const std::byte* p, std::size_t n)
        {
            std::size_t put = 0; // no partial-write mode: one call writes everything
            check(SSL_write_ex(ssl_, p, n, &put) == 1, "SSL_write_ex");
        }
        void wait_end()
        {
            std::byte b[256];
            std::size_t got;
            while (SSL_read_ex(ssl_, b, sizeof b, &got) == 1) {
            }
            ERR_clear_error();
        }
        void close()
        {
            if (!ssl_)
                return;
            switch (pol_) {
            case policy::fast: SSL_shutdown(ssl_); break;
            case policy::quiet:
                SSL_set_quiet_shutdown(ssl_, 1);
                SSL_shutdown(ssl_);
                break;
            case policy::full:
                if (SSL_shutdown(ssl_) == 0) // blocking: the second call reads until the peer's close_notify
                    SSL_shutdown(ssl_);
                break;
            }
            ERR_clear_error();
            SSL_free(ssl_);
            ssl_ = nullptr;
            ::close(fd_);
        }

    private:
        policy pol_;
        int fd_;
        SSL* ssl_;
    };
};

// Asio has no close that sends close_notify without waiting for the peer's;
// its destructor sends nothing, which is our quiet. Full is its shutdown().
template <class Protocol>
struct asio_factory {
    env& e;
    policy pol;
    Protocol protocol;
    class end {
    public:
        end(asio_factory& f, bool server, int fd) : pol_(f.pol), s_(f.e.io, server ? f.e.asio_server : f.e.asio_client)
        {
            s_.next_layer().assign(f.protocol, fd);
        }
        void handshake(bool client)
        {
            s_.handshake(client ? asio::ssl::stream_base::client : asio::ssl::stream_base::server);
        }
        std::size_t read_some(std::byte* p, std::size_t n)
        {
            asio::error_code ec;
            const std::size_t got = s_.read_some(asio::buffer(p, n), ec);
            if (ec == asio::error::eof)
                return 0;
            if (ec)
                die("asio read_some: " + ec.message());
            return got;
        }
        void write_all(const std::byte* p, std::size_t n) { asio::write(s_, asio::buffer(p, n)); }
        void wait_end()
        {
            std::byte b[256];
            asio::error_code ec;
            while (!ec)
                s_.read_some(asio::buffer(b), ec);
        }
        void close()
        {
            asio::error_code ec;
            if (pol_ == policy::full)
                s_.shutdown(ec);
            s_.next_layer().close(ec);
        }

    private:
        policy pol_;
        asio::ssl::stream<typename Protocol::socket> s_;
    };
};

// Calls f(factory) with the factory of implementation i closing by p.
template <class F>
void with_factory(env& e, impl i, policy p, bool tcp, F&& f)
{
    switch (i) {
    case impl::tls:
        switch (p) {
        case policy::fast: {
            tls_factory<tls::fast_shutdown> fa{e};
            return f(fa);
        }
        case policy::quiet: {
            tls_factory<tls::quiet_shutdown> fa{e};
            return f(fa);
        }
        case policy::full: {
            tls_factory<tls::full_shutdown> fa{e};
            return f(fa);
        }
        }
        return;
    case impl::raw:
    case impl::raw_ra:
    case impl::raw_rb: {
        raw_factory fa{e, i == impl::raw_ra, p, i == impl::raw_rb};
        return f(fa);
    }
    case impl::asio:
        if (tcp) {
            asio_factory<asio::ip::tcp> fa{e, p, asio::ip::tcp::v4()};
            return f(fa);
        }
        asio_factory<asio::local::stream_protocol> fa{e, p, asio::local::stream_protocol()};
        return f(fa);
    }
}

// ---------------------------------------------------------------- workloads

double seconds_now()
{
    timespec t{};
    clock_gettime(CLOCK_MONOTONIC, &t);
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// CPU time of the whole process: both ends, user + system.
double cpu_now()
{
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

template <class End>
void read_exactly(End& end, std::byte* p, std::size_t n)
{
    while (n > 0) {
        const std::size_t got = end.read_some(p, n);
        check(got > 0, "stream ended early");
        p += got;
        n -= got;
    }
}

// Runs the server on its own thread; rethrows its exception on join.
class server_thread {
public:
    template <class F>
    explicit server_thread(F&& f)
        : t_([this, fn = std::forward<F>(f)]() mutable {
              try {
                  fn();
              } catch (...) {
                  error_ = std::current_exception();
              }
          })
    {
    }
    void join()
    {
        t_.join();
        if (error_)
            std::rethrow_exception(error_);
    }

private:
    std::exception_ptr error_;
    std::thread t_;
};

struct sample {
    double wall = 0;              // seconds, of the measured phase
    double cpu = 0;               // process CPU seconds, of the measured phase
    std::vector<double> close_us; // churn: each client close, microseconds
};

constexpr std::size_t bulk_write = 16 * 1024;
constexpr std::size_t message = 64;

// (A) `bytes` from client to server in 16 KiB writes; a 1-byte answer marks the end.
template <class Factory>
sample bulk(Factory& f, bool tcp, std::size_t bytes)
{
    auto [cfd, sfd] = make_pair(tcp);
    server_thread server([&f, fd = sfd, bytes] {
        typename Factory::end s(f, true, fd);
        s.handshake(false);
        std::vector<std::byte> buf(64 * 1024);
        for (std::size_t left = bytes; left > 0;) {
            const std::size_t got = s.read_some(buf.data(), std::min(left, buf.size()));
            check(got > 0, "bulk: stream ended early");
            left -= got;
        }
        s.write_all(buf.data(), 1);
        s.wait_end();
        s.close();
    });
    sample r;
    {
        typename Factory::end c(f, false, cfd);
        c.handshake(true);
        std::vector<std::byte> buf(bulk_write, std::byte{0x5a});
        const double t0 = seconds_now(), c0 = cpu_now();
        for (std::size_t left = bytes; left > 0; left -= std::min(left, bulk_write))
            c.write_all(buf.data(), std::min(left, bulk_write));
        read_exactly(c, buf.data(), 1);
        r.wall = seconds_now() - t0;
        r.cpu = cpu_now() - c0;
        c.close();
    }
    server.join();
    return r;
}

// (C) `count` round trips of 64 bytes on one connection.
template <class Factory>
sample round_trips(Factory& f, bool tcp, std::size_t count)
{
    auto [cfd, sfd] = make_pair(tcp);
    server_thread server([&f, fd = sfd, count] {
        typename Factory::end s(f, true, fd);
        s.handshake(false);
        std::byte buf[message];
        for (std::size_t i = 0; i < count; ++i) {
            read_exactly(s, buf, message);
            s.write_all(buf, message);
        }
        s.wait_end();
        s.close();
    });
    sample r;
    {
        typename Factory::end c(f, false, cfd);
        c.handshake(true);
        std::byte buf[message] = {};
        const double t0 = seconds_now(), c0 = cpu_now();
        for (std::size_t i = 0; i < count; ++i) {
            c.write_all(buf, message);
            read_exactly(c, buf, message);
        }
        r.wall = seconds_now() - t0;
        r.cpu = cpu_now() - c0;
        c.close();
    }
    server.join();
    return r;
}

// Hands the server ends of new connections to the server thread.
class fd_queue {
public:
    void push(int fd)
    {
        {
            std::lock_guard lock(m_);
            q_.push_back(fd);
        }
        cv_.notify_one();
    }
    int pop()
    {
        std::unique_lock lock(m_);
        cv_.wait(lock, [this] { return !q_.empty(); });
        const int fd = q_.front();
        q_.pop_front();
        return fd;
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<int> q_;
};

// (B) `count` connections: handshake, one 64-byte request and response,
// then the client closes by the policy (timed) while the server waits for
// the client's end and then closes by the same policy.
template <class Factory>
sample churn(Factory& f, bool tcp, std::size_t count)
{
    fd_queue queue;
    server_thread server([&f, &queue] {
        for (int fd; (fd = queue.pop()) >= 0;) {
            typename Factory::end s(f, true, fd);
            s.handshake(false);
            std::byte buf[message];
            read_exactly(s, buf, message);
            s.write_all(buf, message);
            s.wait_end();
            s.close();
        }
    });
    sample r;
    r.close_us.reserve(count);
    const double t0 = seconds_now(), c0 = cpu_now();
    for (std::size_t i = 0; i < count; ++i) {
        auto [cfd, sfd] = make_pair(tcp);
        queue.push(sfd);
        typename Factory::end c(f, false, cfd);
        c.handshake(true);
        std::byte buf[message] = {};
        c.write_all(buf, message);
        read_exactly(c, buf, message);
        const double k0 = seconds_now();
        c.close();
        r.close_us.push_back((seconds_now() - k0) * 1e6);
    }
    r.wall = seconds_now() - t0;
    r.cpu = cpu_now() - c0;
    queue.push(-1);
    server.join();
    return r;
}

enum class workload { bulk, churn, rtt };

sample run_once(env& e, impl i, workload w, bool tcp, std::size_t units, policy p)
{
    sample r;
    with_factory(e, i, p, tcp, [&](auto& f) {
        switch (w) {
        case workload::bulk: r = bulk(f, tcp, units); break;
        case workload::rtt: r = round_trips(f, tcp, units); break;
        case workload::churn: r = churn(f, tcp, units); break;
        }
    });
    return r;
}

// ---------------------------------------------------------------- statistics and tables

double percentile(std::vector<double> v, double p)
{
    std::sort(v.begin(), v.end());
    const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(k, v.size() - 1)];
}

struct stat {
    double median, min, max;
};
stat summarise(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    const double med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    return {med, v.front(), v.back()};
}

std::string fmt(double x)
{
    char b[32];
    const double a = std::abs(x);
    std::snprintf(b, sizeof b, a >= 1000 ? "%.0f" : a >= 100 ? "%.1f" : a >= 10 ? "%.2f" : "%.3f", x);
    return b;
}
std::string cell(const stat& s) { return fmt(s.median) + " (" + fmt(s.min) + "–" + fmt(s.max) + ")"; }
std::string ratio(double a, double b)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f", a / b);
    return buf;
}

struct options {
    bool quick = false;
    int runs = 5;
    std::string title = "free threads";
    std::size_t bulk_mib = 512;
    std::size_t churn = 2000;
    std::size_t rtts = 100000;
};

const char* transport_name(bool tcp) { return tcp ? "TCP loopback" : "unix socketpair"; }

void time_tables(env& e, const options& o)
{
    std::printf("#### Bulk and round trips, %s\n\n", o.title.c_str());
    std::printf("%d runs each; median (min–max). Bulk: %zu MiB in 16 KiB writes; round trips: %zu × 64 bytes. "
                "CPU = user + system time of both ends.\n\n",
                o.runs, o.bulk_mib, o.rtts);
    std::printf("| transport | implementation | bulk MiB/s | bulk CPU ms/MiB | round trips/s | CPU µs/round trip |\n");
    std::printf("|---|---|---|---|---|---|\n");
    for (bool tcp : {false, true}) {
        // Runs interleave the implementations, so that a change in the
        // machine's load hits all of them alike.
        std::vector<double> mibs[n_impls], cpu_mib[n_impls], rts[n_impls], cpu_rt[n_impls];
        for (int k = 0; k < o.runs; ++k) {
            for (impl i : all_impls) {
                const sample b = run_once(e, i, workload::bulk, tcp, o.bulk_mib << 20, policy::full);
                const auto x = static_cast<int>(i);
                mibs[x].push_back(static_cast<double>(o.bulk_mib) / b.wall);
                cpu_mib[x].push_back(b.cpu * 1e3 / static_cast<double>(o.bulk_mib));
                const sample r = run_once(e, i, workload::rtt, tcp, o.rtts, policy::full);
                rts[x].push_back(static_cast<double>(o.rtts) / r.wall);
                cpu_rt[x].push_back(r.cpu * 1e6 / static_cast<double>(o.rtts));
            }
        }
        double med[n_impls][4] = {};
        for (impl i : all_impls) {
            const auto x = static_cast<int>(i);
            const stat s[4] = {summarise(mibs[x]), summarise(cpu_mib[x]), summarise(rts[x]), summarise(cpu_rt[x])};
            for (int c = 0; c < 4; ++c)
                med[static_cast<int>(i)][c] = s[c].median;
            std::printf("| %s | %s | %s | %s | %s | %s |\n", transport_name(tcp), label_of(i), cell(s[0]).c_str(),
                        cell(s[1]).c_str(), cell(s[2]).c_str(), cell(s[3]).c_str());
            std::fflush(stdout);
        }
        for (impl ref : {impl::raw_ra, impl::raw_rb, impl::asio}) {
            const auto* t = med[static_cast<int>(impl::tls)];
            const auto* r = med[static_cast<int>(ref)];
            std::printf("| %s | *tls_stream ÷ %s* | %s | %s | %s | %s |\n", transport_name(tcp), label_of(ref),
                        ratio(t[0], r[0]).c_str(), ratio(t[1], r[1]).c_str(), ratio(t[2], r[2]).c_str(),
                        ratio(t[3], r[3]).c_str());
        }
    }

    std::printf("\n#### Connection churn, %s\n\n", o.title.c_str());
    std::printf("%zu connections per run (handshake, 64-byte request and response, close), %d runs; median (min–max) "
                "of each run's figure. Close = the client's close by the policy until its socket is closed, in µs. "
                "Asio: full is its `shutdown()`; quiet is its destructor (sends nothing); it has no fast close.\n\n",
                o.churn, o.runs);
    std::printf(
        "| transport | policy | implementation | connections/s | CPU µs/connection | close p50 µs | close p99 µs |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    for (bool tcp : {false, true}) {
        for (policy p : {policy::fast, policy::quiet, policy::full}) {
            std::vector<double> rate[n_impls], cpu[n_impls], c50[n_impls], c99[n_impls];
            for (int k = 0; k < o.runs; ++k) {
                for (impl i : all_impls) {
                    if (churn_skipped(i, p))
                        continue;
                    const auto x = static_cast<int>(i);
                    const sample c = run_once(e, i, workload::churn, tcp, o.churn, p);
                    rate[x].push_back(static_cast<double>(o.churn) / c.wall);
                    cpu[x].push_back(c.cpu * 1e6 / static_cast<double>(o.churn));
                    c50[x].push_back(percentile(c.close_us, 0.50));
                    c99[x].push_back(percentile(c.close_us, 0.99));
                }
            }
            double p50[n_impls] = {};
            for (impl i : all_impls) {
                if (churn_skipped(i, p)) {
                    std::printf("| %s | %s | %s | n/a | n/a | n/a | n/a |\n", transport_name(tcp), name_of(p),
                                label_of(i));
                    continue;
                }
                const auto x = static_cast<int>(i);
                p50[x] = summarise(c50[x]).median;
                std::printf("| %s | %s | %s | %s | %s | %s | %s |\n", transport_name(tcp), name_of(p), label_of(i),
                            cell(summarise(rate[x])).c_str(), cell(summarise(cpu[x])).c_str(),
                            cell(summarise(c50[x])).c_str(), cell(summarise(c99[x])).c_str());
            }
            std::fflush(stdout);
            std::printf("| %s | %s | *close p50: tls_stream ÷ raw OpenSSL · ÷ read-ahead* | | | %s · %s | |\n",
                        transport_name(tcp), name_of(p), ratio(p50[0], p50[1]).c_str(), ratio(p50[0], p50[2]).c_str());
        }
    }
    std::printf("\n");
}

// ---------------------------------------------------------------- counts (child processes)

std::string self_path()
{
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    check(n > 0, "readlink /proc/self/exe");
    return std::string(buf, static_cast<std::size_t>(n));
}

// Runs argv with stdout and stderr going to `log`; true on exit status 0.
bool run(const std::vector<std::string>& argv, const std::string& log)
{
    const pid_t pid = ::fork();
    check(pid >= 0, "fork");
    if (pid == 0) {
        if (FILE* f = std::fopen(log.c_str(), "w")) {
            ::dup2(fileno(f), 1);
            ::dup2(fileno(f), 2);
        }
        std::vector<char*> args;
        for (const auto& a : argv)
            args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        ::execvp(args[0], args.data());
        _exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string read_all(const std::string& path)
{
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

struct counter_tools {
    std::string dir;
    bool perf = false; // perf stat -e raw_syscalls:sys_enter works here
};

std::vector<std::string> one_args(impl i, workload w, bool tcp, std::size_t units, policy p)
{
    const char* ws = w == workload::bulk ? "bulk" : w == workload::rtt ? "rtt" : "churn";
    return {self_path(), "one", id_of(i), ws, tcp ? "tcp" : "unix", std::to_string(units), name_of(p)};
}

// User-space instructions of one run, both threads (callgrind's total Ir).
double instructions(const counter_tools& t, const std::vector<std::string>& one)
{
    const std::string out = t.dir + "/callgrind.out";
    std::vector<std::string> argv = {"valgrind", "--tool=callgrind", "--callgrind-out-file=" + out};
    argv.insert(argv.end(), one.begin(), one.end());
    if (!run(argv, t.dir + "/callgrind.log"))
        die("valgrind failed; see " + t.dir + "/callgrind.log");
    std::istringstream in(read_all(out));
    for (std::string line; std::getline(in, line);)
        if (line.rfind("totals:", 0) == 0 || line.rfind("summary:", 0) == 0)
            return std::stod(line.substr(line.find(':') + 1));
    die("no total in callgrind's output");
}

// System calls of one run, both threads.
double syscalls(const counter_tools& t, const std::vector<std::string>& one)
{
    const std::string out = t.dir + "/syscalls.out";
    std::vector<std::string> argv;
    if (t.perf)
        argv = {"perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o", out, "--"};
    else
        argv = {"strace", "-f", "-qq", "-o", out};
    argv.insert(argv.end(), one.begin(), one.end());
    if (!run(argv, t.dir + "/syscalls.log"))
        die("counting syscalls failed; see " + t.dir + "/syscalls.log");
    std::istringstream in(read_all(out));
    double n = 0;
    for (std::string line; std::getline(in, line);) {
        if (t.perf) {
            if (line.find("raw_syscalls:sys_enter") != std::string::npos)
                return std::stod(line.substr(0, line.find(',')));
        } else if (line.find("resumed>") == std::string::npos && line.find("+++") == std::string::npos
                   && line.find("---") == std::string::npos && !line.empty()) {
            ++n; // one line per call; a call split by another thread is "unfinished" then "resumed"
        }
    }
    if (t.perf)
        die("no count in perf's output");
    return n;
}

struct per_unit {
    double instr, sys;
};

// Per unit, without the fixed cost of start-up and set-up: the difference
// between a run of `big` units and one of `small`, divided by the difference.
per_unit measure(const counter_tools& t, impl i, workload w, bool tcp, std::size_t small, std::size_t big, policy p,
                 double unit)
{
    const auto a = one_args(i, w, tcp, small, p), b = one_args(i, w, tcp, big, p);
    const double du = static_cast<double>(big - small) / unit;
    return {(instructions(t, b) - instructions(t, a)) / du, (syscalls(t, b) - syscalls(t, a)) / du};
}

void count_tables(const options& o)
{
    counter_tools t;
    char dir[] = "/tmp/tls_bench-XXXXXX";
    check(::mkdtemp(dir) != nullptr, "mkdtemp");
    t.dir = dir;
    t.perf = run({"perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-o", t.dir + "/probe", "--", "true"},
                 t.dir + "/probe.log");

    const std::size_t mib_small = (o.quick ? 2 : 8) << 20, mib_big = (o.quick ? 6 : 24) << 20;
    const std::size_t rt_small = o.quick ? 500 : 2000, rt_big = o.quick ? 1500 : 6000;
    const std::size_t conn_small = o.quick ? 4 : 10, conn_big = o.quick ? 12 : 30;

    std::printf("#### Instructions and system calls\n\n");
    std::printf("User-space instructions of both ends (valgrind --tool=callgrind) and system calls of both ends "
                "(%s), per unit: the difference between two run sizes divided by the difference in units, so "
                "start-up and set-up cancel out (bulk %zu and %zu MiB, round trips %zu and %zu, connections %zu "
                "and %zu). Independent of the machine's load.\n\n",
                t.perf ? "perf stat -e raw_syscalls:sys_enter" : "strace -f", mib_small >> 20, mib_big >> 20, rt_small,
                rt_big, conn_small, conn_big);
    std::printf("| transport | implementation | instructions/MiB | syscalls/MiB | instructions/round trip | "
                "syscalls/round trip | instructions/connection fast · quiet · full | syscalls/connection fast · quiet "
                "· full |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (bool tcp : {false, true}) {
        per_unit m[n_impls][2] = {};
        for (impl i : all_impls) {
            const per_unit b = measure(t, i, workload::bulk, tcp, mib_small, mib_big, policy::full, 1 << 20);
            const per_unit r = measure(t, i, workload::rtt, tcp, rt_small, rt_big, policy::full, 1);
            m[static_cast<int>(i)][0] = b;
            m[static_cast<int>(i)][1] = r;
            std::string ci, cs;
            for (policy p : {policy::fast, policy::quiet, policy::full}) {
                const char* sep = p == policy::fast ? "" : " · ";
                if (churn_skipped(i, p)) {
                    ci += std::string(sep) + "n/a";
                    cs += std::string(sep) + "n/a";
                    continue;
                }
                const per_unit c = measure(t, i, workload::churn, tcp, conn_small, conn_big, p, 1);
                ci += sep + fmt(c.instr / 1e3) + " k";
                cs += sep + fmt(c.sys);
            }
            std::printf("| %s | %s | %s M | %s | %s k | %s | %s | %s |\n", transport_name(tcp), label_of(i),
                        fmt(b.instr / 1e6).c_str(), fmt(b.sys).c_str(), fmt(r.instr / 1e3).c_str(), fmt(r.sys).c_str(),
                        ci.c_str(), cs.c_str());
            std::fflush(stdout);
        }
        for (impl ref : {impl::raw, impl::raw_ra, impl::raw_rb, impl::asio}) {
            const auto& x = m[static_cast<int>(impl::tls)];
            const auto& y = m[static_cast<int>(ref)];
            std::printf("| %s | *tls_stream ÷ %s* | %s | %s | %s | %s | | |\n", transport_name(tcp), label_of(ref),
                        ratio(x[0].instr, y[0].instr).c_str(), ratio(x[0].sys, y[0].sys).c_str(),
                        ratio(x[1].instr, y[1].instr).c_str(), ratio(x[1].sys, y[1].sys).c_str());
        }
    }
    std::printf("\n");
    std::filesystem::remove_all(t.dir);
}

int usage()
{
    std::fprintf(
        stderr,
        "usage: tls_bench time [--quick] [--runs N] [--title TEXT]\n"
        "       tls_bench counts [--quick]\n"
        "       tls_bench one tls_stream|raw|raw_ra|raw_rb|asio bulk|rtt|churn unix|tcp UNITS [fast|quiet|full]\n");
    return 2;
}

} // namespace

int main(int argc, char** argv)
{
    // Raw OpenSSL writes with plain write(): an AF_UNIX peer that is gone
    // would raise SIGPIPE. tls_stream itself never needs this.
    std::signal(SIGPIPE, SIG_IGN);
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty())
        return usage();

    options o;
    for (std::size_t k = 1; k < args.size(); ++k) {
        if (args[k] == "--quick") {
            o.quick = true;
            o.runs = 3;
            o.bulk_mib = 64;
            o.churn = 200;
            o.rtts = 10000;
        } else if (args[k] == "--runs" && k + 1 < args.size()) {
            o.runs = std::stoi(args[++k]);
        } else if (args[k] == "--title" && k + 1 < args.size()) {
            o.title = args[++k];
        } else if (args[0] != "one") {
            return usage();
        }
    }

    if (args[0] == "time") {
        env e;
        time_tables(e, o);
    } else if (args[0] == "counts") {
        count_tables(o);
    } else if (args[0] == "one" && args.size() >= 5) {
        impl i = impl::tls;
        bool found = false;
        for (impl c : all_impls)
            if (args[1] == id_of(c)) {
                i = c;
                found = true;
            }
        const workload w = args[2] == "bulk" ? workload::bulk : args[2] == "rtt" ? workload::rtt : workload::churn;
        const policy p = args.size() < 6 || args[5] == "full" ? policy::full
                         : args[5] == "fast"                  ? policy::fast
                                                              : policy::quiet;
        if (!found || (args[3] != "unix" && args[3] != "tcp"))
            return usage();
        env e;
        run_once(e, i, w, args[3] == "tcp", std::stoul(args[4]), p);
    } else {
        return usage();
    }
    return 0;
}
