// Benchmark: an echo server on one epoll loop built on tls_stream's steps and
// a tls::closer, against the same server hand-written on raw non-blocking
// OpenSSL (SSL_set_fd, SSL_accept / SSL_read / SSL_write / SSL_shutdown with
// SSL_get_error, its own deadline timers), both closing by full.
//
//   eventloop_bench [--quick] [--conns N] [--timeout MS] [--rounds R] [--rate PER_S] [--only tls|raw]
//
// --quick: 1 000 connections instead of 10 000. --rounds R: R phases per
// server, interleaved (tls, raw, raw, tls, ...), figures over all of them.
// --rate: requests paced at PER_S per second instead of all at once.
// --only: one server, one table row (to profile it, e.g. under strace -c).
//
// Each phase (one server, N connections): the client process (forked, raw
// non-blocking OpenSSL on its own epoll loop) opens N connections, at most
// 128 handshakes at a time, and keeps them all open; once the server holds
// all N (it says so through a pipe, after sampling its heap) every client
// sends a 16-byte request; the server echoes it and then closes by full:
// close_notify out, and up to the shutdown timeout (1000 ms) for the
// peer's. Nine clients in ten answer with their own close_notify and wait
// for the server's FIN; one in ten stays silent, keeps its socket open and
// notes when the server's FIN arrives: the server's close of it ends at its
// deadline. The server waits for the deadline's tick with a millisecond
// epoll_wait timeout, as a plain epoll loop does.
//
// Figures (server side unless said): CPU = user + system time of the server
// process over the phase; connections/s = N / (first accept -> all N
// handshakes done); heap = malloc'd bytes in use (mallinfo2: uordblks +
// hblkhd) with all N open, minus before the phase; loop iterations are timed
// from epoll_wait's return to the end of that round's processing; "with a
// close" counts iterations that did close work (a close started or
// advanced, a deadline expired, the closer ran). Close end - deadline, for
// the silent peers: when the client saw the FIN minus the deadline (for
// tls_stream: the time just before the stream was destroyed + the timeout,
// which is at most as late as the real one, so the figure errs on the late
// side).
//
// SPDX-License-Identifier: MIT
#include <tls_stream.hpp>

#include "common.hpp"
#include "examples/self_signed.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::size_t request_size = 16; // the connection's index, then padding
constexpr int max_events = 64;

[[noreturn]] void die(const char* what)
{
    std::fprintf(stderr, "eventloop_bench: %s (%s)\n", what, std::strerror(errno));
    ERR_print_errors_fp(stderr);
    std::exit(1);
}

void check(bool ok, const char* what)
{
    if (!ok)
        die(what);
}

long long ns_of(clk::time_point t)
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
double ms_of(clk::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct options {
    long conns = 10000;
    milliseconds timeout{1000};
    int rounds = 1;
    bool quick = false;
    int inflight = 128; // the client's handshakes in progress at most
    long rate = 0;      // requests per second over all clients; 0: all at once
    std::string only;   // "tls" or "raw": one server only, one line (for profiling it, e.g. strace -c)
};

// ---------------------------------------------------------------- set-up

using bench::make_ctx; // bench/common.hpp

void raise_fd_limit(long conns)
{
    rlimit lim{};
    check(::getrlimit(RLIMIT_NOFILE, &lim) == 0, "getrlimit");
    const auto need = static_cast<rlim_t>(conns + 1024);
    if (lim.rlim_cur >= need)
        return;
    lim.rlim_cur = need;
    lim.rlim_max = std::max(lim.rlim_max, need); // raising the hard limit needs CAP_SYS_RESOURCE
    check(::setrlimit(RLIMIT_NOFILE, &lim) == 0, "setrlimit(RLIMIT_NOFILE)");
}

int listen_any(int& port)
{
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    check(fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 && ::listen(fd, 4096) == 0
              && ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0,
          "listen");
    port = ntohs(addr.sin_port);
    return fd;
}

void no_delay(int fd)
{
    const int on = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

std::size_t heap_in_use()
{
    const struct mallinfo2 m = ::mallinfo2();
    return m.uordblks + m.hblkhd;
}

double cpu_seconds()
{
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
           + static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// Until `next` in whole milliseconds, rounded up: an epoll loop's timer.
int timeout_until(std::optional<clk::time_point> next)
{
    if (!next)
        return 1000;
    const auto left = std::chrono::ceil<milliseconds>(*next - clk::now()).count();
    return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1000));
}

// ---------------------------------------------------------------- the servers' common part

// This thread's CPU time: a loop iteration's wall time on a loaded machine
// includes time spent preempted; its CPU time does not.
clk::duration thread_cpu()
{
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

struct loop_stats {
    clk::duration longest{};                // any iteration
    clk::duration longest_with_close{};     // an iteration that did close work
    clk::duration longest_with_close_cpu{}; // the CPU time of such an iteration, at most
    clk::duration longest_close_work{};     // the close work within one iteration
    long most_closes_ended = 0;             // closes that ended in one iteration
    clk::duration latest_expiry{};          // raw only, by its own timer: a timed-out close's end - deadline
    long iterations = 0;
};

class server_base {
public:
    server_base(const options& o, int listener, int go_fd)
        : opt_(o), listener_(listener), go_fd_(go_fd), epfd_(::epoll_create1(EPOLL_CLOEXEC))
    {
        check(epfd_ >= 0, "epoll_create1");
        deadline_ns_.assign(static_cast<std::size_t>(o.conns), 0);
        watch(listener_, EPOLLIN, nullptr, EPOLL_CTL_ADD);
    }
    server_base(const server_base&) = delete;
    server_base& operator=(const server_base&) = delete;
    ~server_base() { ::close(epfd_); }

    loop_stats stats;
    clk::time_point first_accept{}, all_open{};
    double cpu_all_open = 0; // the process's CPU seconds when all handshakes had ended
    std::size_t heap_all_open = 0;
    long failed = 0;
    std::vector<long long> deadline_ns_; // per client connection index: its close's deadline

protected:
    void watch(int fd, std::uint32_t events, void* tag, int op)
    {
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = tag;
        check(::epoll_ctl(epfd_, op, fd, &ev) == 0, "epoll_ctl");
    }

    // A handshake has ended (done or failed); once all have, the heap is
    // sampled and the clients are told to go on.
    void handshake_ended()
    {
        if (++resolved_ != opt_.conns)
            return;
        all_open = clk::now();
        cpu_all_open = cpu_seconds();
        heap_all_open = heap_in_use();
        check(::write(go_fd_, "gg", 2) == 2, "write go"); // one for each client process
    }

    void note_deadline(const unsigned char* req, clk::time_point deadline)
    {
        std::uint32_t id = 0;
        std::memcpy(&id, req, sizeof id);
        if (id < deadline_ns_.size())
            deadline_ns_[id] = ns_of(deadline);
    }

    void iteration_done(clk::time_point start, clk::duration start_cpu, clk::duration close_work, bool had_close)
    {
        const auto d = clk::now() - start;
        ++stats.iterations;
        stats.longest = std::max(stats.longest, d);
        if (had_close) {
            stats.longest_with_close = std::max(stats.longest_with_close, d);
            stats.longest_with_close_cpu = std::max(stats.longest_with_close_cpu, thread_cpu() - start_cpu);
            stats.longest_close_work = std::max(stats.longest_close_work, close_work);
        }
    }

    int accept_one()
    {
        const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            if (first_accept == clk::time_point{})
                first_accept = clk::now();
            no_delay(fd);
        }
        return fd;
    }

    const options& opt_;
    int listener_;
    int go_fd_;
    int epfd_;
    long resolved_ = 0; // handshakes ended
    long ended_ = 0;    // connections ended (their close handed over or finished)
};

// ---------------------------------------------------------------- tls_stream: steps + closer

using stream = tls::tls_stream<tls::unique_socket, tls::full_shutdown>;

struct tls_connection {
    explicit tls_connection(stream s) : tls(std::move(s)) {}
    stream tls;
    bool open = false;
    std::uint32_t events = 0;
    std::size_t got = 0, sent = 0;
    unsigned char req[request_size] = {};
};

class tls_server : public server_base {
public:
    tls_server(const options& o, int listener, int go_fd, SSL_CTX* ctx)
        : server_base(o, listener, go_fd), ctx_((SSL_CTX_up_ref(ctx), ctx))
    {
        watch(closer_.native_handle(), EPOLLIN, &closer_, EPOLL_CTL_ADD);
        conns_.reserve(static_cast<std::size_t>(o.conns));
    }
    ~tls_server() { ::epoll_ctl(epfd_, EPOLL_CTL_DEL, closer_.native_handle(), nullptr); }
    tls_server(const tls_server&) = delete;
    tls_server& operator=(const tls_server&) = delete;

    // False if the time limit passed first.
    bool run(clk::time_point limit)
    {
        epoll_event events[max_events];
        while (ended_ < opt_.conns || closer_.size() > 0) {
            if (clk::now() > limit)
                return false;
            const int n = ::epoll_wait(epfd_, events, max_events, timeout_until(closer_.next_deadline()));
            const auto start = clk::now();
            const auto start_cpu = thread_cpu();
            close_work_ = {};
            had_close_ = false;
            bool closer_ready = false;
            for (int i = 0; i < n; ++i) {
                void* tag = events[i].data.ptr;
                if (tag == nullptr)
                    accept_all();
                else if (tag == &closer_)
                    closer_ready = true;
                else
                    advance(static_cast<tls_connection*>(tag));
            }
            // Every round, as examples/epoll_server.cpp does: the closer's
            // descriptor, queued behind many ready sockets, may be reported
            // only rounds later, so waiting for it would let closes pile up.
            const auto t = clk::now();
            const auto before = closer_.size();
            closer_.run_ready(); // closes that can progress, and those past their deadline
            if (closer_ready || before != closer_.size()) {
                close_work_ += clk::now() - t;
                had_close_ = true;
            }
            stats.most_closes_ended = std::max(stats.most_closes_ended, static_cast<long>(before - closer_.size()));
            iteration_done(start, start_cpu, close_work_, had_close_);
        }
        return true;
    }

private:
    void accept_all()
    {
        for (;;) {
            const int fd = accept_one();
            if (fd < 0)
                return;
            auto c = std::make_unique<tls_connection>(stream(ctx_, tls::unique_socket{fd}));
            c->tls.close_via(closer_); // its destructor never waits
            c->tls.set_shutdown_timeout(opt_.timeout);
            tls_connection* raw = c.get();
            conns_.emplace(raw, std::move(c));
            set_events(raw, EPOLLIN);
            advance(raw);
        }
    }

    void set_events(tls_connection* c, std::uint32_t events)
    {
        if (c->events == events)
            return;
        watch(c->tls.socket().native_handle(), events, c, c->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD);
        c->events = events;
    }

    void wait_for(tls_connection* c, tls::want w) { set_events(c, w == tls::want::read ? EPOLLIN : EPOLLOUT); }

    // Runs the connection's steps until one needs to wait: handshake, read
    // the request, echo it, close.
    void advance(tls_connection* c)
    {
        std::error_code ec;
        tls::want w = tls::want::nothing;
        if (!c->open) {
            w = c->tls.try_accept(ec);
            if (ec) {
                ++failed;
                handshake_ended();
                return end(c);
            }
            if (w != tls::want::nothing)
                return wait_for(c, w);
            c->open = true;
            handshake_ended();
        }
        while (c->got < request_size) {
            std::size_t n = 0;
            w = c->tls.try_read_some(std::as_writable_bytes(std::span(c->req + c->got, request_size - c->got)), n, ec);
            if (ec || (w == tls::want::nothing && n == 0)) {
                ++failed;
                return end(c);
            }
            if (w != tls::want::nothing)
                return wait_for(c, w);
            c->got += n;
        }
        while (c->sent < request_size) {
            std::size_t n = 0;
            w = c->tls.try_write_some(std::as_bytes(std::span(c->req + c->sent, request_size - c->sent)), n, ec);
            if (ec) {
                ++failed;
                return end(c);
            }
            c->sent += n;
            if (w != tls::want::nothing)
                return wait_for(c, w);
        }
        // Echoed: close. The destructor sends close_notify and hands the
        // wait for the peer's to the closer; the deadline starts now.
        const auto t = clk::now();
        note_deadline(c->req, t + opt_.timeout);
        end(c);
        close_work_ += clk::now() - t;
        had_close_ = true;
    }

    void end(tls_connection* c)
    {
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, c->tls.socket().native_handle(), nullptr);
        conns_.erase(c);
        ++ended_;
    }

    tls::closer closer_; // declared before the streams: it outlives them
    tls::context ctx_;
    std::unordered_map<tls_connection*, std::unique_ptr<tls_connection>> conns_;
    clk::duration close_work_{};
    bool had_close_ = false;
};

// ---------------------------------------------------------------- raw OpenSSL, by hand

struct raw_connection {
    enum class state { handshake, reading, writing, closing } st = state::handshake;
    int fd = -1;
    SSL* ssl = nullptr;
    std::uint32_t events = 0;
    std::size_t got = 0, sent = 0;
    unsigned char req[request_size] = {};
    clk::time_point deadline{};
};

class raw_server : public server_base {
public:
    raw_server(const options& o, int listener, int go_fd, SSL_CTX* ctx) : server_base(o, listener, go_fd), ctx_(ctx)
    {
        conns_.reserve(static_cast<std::size_t>(o.conns));
    }
    raw_server(const raw_server&) = delete;
    raw_server& operator=(const raw_server&) = delete;
    ~raw_server()
    {
        for (auto& [c, owned] : conns_)
            release(c);
    }

    bool run(clk::time_point limit)
    {
        epoll_event events[max_events];
        while (ended_ < opt_.conns) {
            if (clk::now() > limit)
                return false;
            const int n = ::epoll_wait(epfd_, events, max_events, timeout_until(next_deadline()));
            const auto start = clk::now();
            const long ended_before = ended_;
            const auto start_cpu = thread_cpu();
            close_work_ = {};
            had_close_ = false;
            for (int i = 0; i < n; ++i) {
                void* tag = events[i].data.ptr;
                if (tag == nullptr)
                    accept_all();
                else
                    advance(static_cast<raw_connection*>(tag));
            }
            expire();
            stats.most_closes_ended = std::max(stats.most_closes_ended, ended_ - ended_before);
            iteration_done(start, start_cpu, close_work_, had_close_);
        }
        return true;
    }

private:
    std::optional<clk::time_point> next_deadline() const
    {
        if (timers_.empty())
            return std::nullopt;
        return timers_.begin()->first;
    }

    // Ends the closes whose deadline has passed: the peer never answered.
    void expire()
    {
        const auto now = clk::now();
        if (timers_.empty() || timers_.begin()->first > now)
            return;
        while (!timers_.empty() && timers_.begin()->first <= now) {
            const auto deadline = timers_.begin()->first;
            finish(timers_.begin()->second);
            stats.latest_expiry = std::max(stats.latest_expiry, clk::now() - deadline);
        }
        close_work_ += clk::now() - now;
        had_close_ = true;
    }

    void accept_all()
    {
        for (;;) {
            const int fd = accept_one();
            if (fd < 0)
                return;
            auto c = std::make_unique<raw_connection>();
            c->fd = fd;
            c->ssl = SSL_new(ctx_);
            check(c->ssl != nullptr && SSL_set_fd(c->ssl, fd) == 1, "SSL_new");
            SSL_set_accept_state(c->ssl);
            // Read-ahead, as tls_stream does: one recv() per record instead of
            // header + body; the stronger of bench.cpp's two raw baselines.
            SSL_set_read_ahead(c->ssl, 1);
            raw_connection* raw = c.get();
            conns_.emplace(raw, std::move(c));
            set_events(raw, EPOLLIN);
            advance(raw);
        }
    }

    void set_events(raw_connection* c, std::uint32_t events)
    {
        if (c->events == events)
            return;
        watch(c->fd, events, c, c->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD);
        c->events = events;
    }

    // After a call returned ret <= 0: wait for the socket (true), or the
    // connection failed (false).
    bool wait_for(raw_connection* c, int ret)
    {
        switch (SSL_get_error(c->ssl, ret)) {
        case SSL_ERROR_WANT_READ: set_events(c, EPOLLIN); return true;
        case SSL_ERROR_WANT_WRITE: set_events(c, EPOLLOUT); return true;
        default: ERR_clear_error(); return false;
        }
    }

    void advance(raw_connection* c)
    {
        using st = raw_connection::state;
        if (c->st == st::handshake) {
            ERR_clear_error();
            const int ret = SSL_accept(c->ssl);
            if (ret != 1) {
                if (wait_for(c, ret))
                    return;
                ++failed;
                handshake_ended();
                return fail(c);
            }
            c->st = st::reading;
            handshake_ended();
        }
        while (c->st == st::reading) {
            ERR_clear_error();
            const int ret = SSL_read(c->ssl, c->req + c->got, static_cast<int>(request_size - c->got));
            if (ret <= 0) {
                if (wait_for(c, ret))
                    return;
                ++failed;
                return fail(c);
            }
            c->got += static_cast<std::size_t>(ret);
            if (c->got == request_size)
                c->st = st::writing;
        }
        while (c->st == st::writing) {
            ERR_clear_error();
            const int ret = SSL_write(c->ssl, c->req + c->sent, static_cast<int>(request_size - c->sent));
            if (ret <= 0) {
                if (wait_for(c, ret))
                    return;
                ++failed;
                return fail(c);
            }
            c->sent += static_cast<std::size_t>(ret);
            if (c->sent == request_size) {
                // Echoed: the full close starts, bounded by its deadline.
                const auto t = clk::now();
                c->st = st::closing;
                c->deadline = t + opt_.timeout;
                note_deadline(c->req, c->deadline);
                timers_.emplace(c->deadline, c);
                close_step(c);
                close_work_ += clk::now() - t;
                had_close_ = true;
                return;
            }
        }
        if (c->st == st::closing) {
            const auto t = clk::now();
            close_step(c);
            close_work_ += clk::now() - t;
            had_close_ = true;
        }
    }

    // Full close: our close_notify, then the peer's.
    void close_step(raw_connection* c)
    {
        ERR_clear_error();
        int ret = SSL_shutdown(c->ssl);
        if (ret == 0) { // ours sent; now wait for theirs
            ERR_clear_error();
            ret = SSL_shutdown(c->ssl);
        }
        if (ret == 1 || !wait_for(c, ret))
            finish(c); // complete, or the peer is gone
    }

    void finish(raw_connection* c)
    {
        timers_.erase({c->deadline, c});
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, c->fd, nullptr);
        release(c);
        conns_.erase(c);
        ++ended_;
    }

    // A failed handshake or read/write: nothing to close by TLS.
    void fail(raw_connection* c)
    {
        const auto t = clk::now();
        finish(c);
        close_work_ += clk::now() - t;
        had_close_ = true;
    }

    static void release(raw_connection* c)
    {
        SSL_free(c->ssl);
        ::close(c->fd);
        c->ssl = nullptr;
        c->fd = -1;
    }

    SSL_CTX* ctx_;
    std::unordered_map<raw_connection*, std::unique_ptr<raw_connection>> conns_;
    std::set<std::pair<clk::time_point, raw_connection*>> timers_; // the close deadlines
    clk::duration close_work_{};
    bool had_close_ = false;
};

// ---------------------------------------------------------------- the clients (another process)

struct client_connection {
    enum class state { connecting, handshake, idle, writing, reading, closing, awaiting_fin, silent, done };
    state st = state::connecting;
    int fd = -1;
    SSL* ssl = nullptr;
    std::uint32_t events = 0;
    std::size_t got = 0, sent = 0;
    unsigned char buf[request_size] = {};
    std::uint32_t id = 0;
    bool silent = false;
};

// One client process: either the nine in ten that answer close_notify, or
// the one in ten that stay silent (a process of their own, mostly idle, so
// that it notices each FIN at once).
class clients {
public:
    clients(const options& o, SSL_CTX* ctx, int port, int go_fd, bool silent)
        : opt_(o), ctx_(ctx), port_(port), go_fd_(go_fd), epfd_(::epoll_create1(EPOLL_CLOEXEC)),
          fin_ns_(static_cast<std::size_t>(o.conns), 0)
    {
        for (long id = 0; id < o.conns; ++id)
            if ((id % 10 == 0) == silent)
                ids_.push_back(static_cast<std::uint32_t>(id));
        conns_ = std::vector<client_connection>(ids_.size());
        check(epfd_ >= 0, "epoll_create1");
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = nullptr;
        check(::epoll_ctl(epfd_, EPOLL_CTL_ADD, go_fd_, &ev) == 0, "epoll_ctl go");
    }

    // Runs every connection to its end; the FIN times of the silent ones.
    const std::vector<long long>& run(clk::time_point limit)
    {
        epoll_event events[max_events];
        start_more();
        while (done_ < static_cast<long>(conns_.size())) {
            if (clk::now() > limit)
                ::_exit(1);
            const bool pacing = going_ && sending_ < conns_.size();
            const int n = ::epoll_wait(epfd_, events, max_events, pacing ? 1 : 1000);
            for (int i = 0; i < n; ++i) {
                if (events[i].data.ptr == nullptr) {
                    go();
                    continue;
                }
                advance(*static_cast<client_connection*>(events[i].data.ptr), events[i].events);
            }
            start_more();
            send_due();
        }
        return fin_ns_;
    }

private:
    void start_more()
    {
        while (inflight_ < opt_.inflight && next_ < static_cast<long>(conns_.size())) {
            client_connection& c = conns_[static_cast<std::size_t>(next_)];
            c.id = ids_[static_cast<std::size_t>(next_++)];
            std::memcpy(c.buf, &c.id, sizeof c.id);
            c.silent = c.id % 10 == 0;
            c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            check(c.fd >= 0, "client socket");
            no_delay(c.fd);
            sockaddr_in addr{};
            addr.sin_family = AF_INET;
            addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            addr.sin_port = htons(static_cast<std::uint16_t>(port_));
            if (::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS)
                die("client connect");
            c.ssl = SSL_new(ctx_);
            check(c.ssl != nullptr && SSL_set_fd(c.ssl, c.fd) == 1, "client SSL_new");
            SSL_set_connect_state(c.ssl);
            ++inflight_;
            set_events(c, EPOLLOUT, EPOLL_CTL_ADD); // writable once connected
        }
    }

    void set_events(client_connection& c, std::uint32_t events, int op = EPOLL_CTL_MOD)
    {
        if (c.events == events && op == EPOLL_CTL_MOD)
            return;
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = &c;
        check(::epoll_ctl(epfd_, op, c.fd, &ev) == 0, "client epoll_ctl");
        c.events = events;
    }

    bool wait_for(client_connection& c, int ret)
    {
        switch (SSL_get_error(c.ssl, ret)) {
        case SSL_ERROR_WANT_READ: set_events(c, EPOLLIN); return true;
        case SSL_ERROR_WANT_WRITE: set_events(c, EPOLLOUT); return true;
        default: ERR_clear_error(); return false;
        }
    }

    // The server holds every connection: send all the requests.
    void go()
    {
        char g = 0;
        const bool went = ::read(go_fd_, &g, 1) == 1; // one byte each: the other one is the other process's
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, go_fd_, nullptr);
        if (!went)
            return;
        going_ = true;
        go_time_ = clk::now();
        send_due();
    }

    // The requests due by now: all of them, or this process's share of --rate.
    void send_due()
    {
        if (!going_ || sending_ == conns_.size())
            return;
        std::size_t due = conns_.size();
        if (opt_.rate > 0) {
            const double share =
                static_cast<double>(opt_.rate) * static_cast<double>(conns_.size()) / static_cast<double>(opt_.conns);
            due = std::min(
                due,
                static_cast<std::size_t>(share * std::chrono::duration<double>(clk::now() - go_time_).count()) + 1);
        }
        for (; sending_ < due; ++sending_) {
            client_connection& c = conns_[sending_];
            if (c.st == client_connection::state::idle) {
                c.st = client_connection::state::writing;
                advance(c, 0);
            }
        }
    }

    void end(client_connection& c)
    {
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, c.fd, nullptr);
        SSL_free(c.ssl);
        ::close(c.fd);
        c.ssl = nullptr;
        c.fd = -1;
        if (c.st == client_connection::state::connecting || c.st == client_connection::state::handshake)
            --inflight_;
        c.st = client_connection::state::done;
        ++done_;
    }

    void advance(client_connection& c, std::uint32_t ev)
    {
        using st = client_connection::state;
        if (c.st == st::connecting) {
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0)
                return end(c);
            c.st = st::handshake;
        }
        if (c.st == st::handshake) {
            ERR_clear_error();
            const int ret = SSL_do_handshake(c.ssl);
            if (ret != 1) {
                if (!wait_for(c, ret))
                    end(c);
                return;
            }
            --inflight_;
            c.st = st::idle;
            set_events(c, 0); // nothing comes until we ask
            return;
        }
        if (c.st == st::idle) {
            if ((ev & (EPOLLHUP | EPOLLERR)) != 0)
                end(c);
            return;
        }
        while (c.st == st::writing) {
            ERR_clear_error();
            const int ret = SSL_write(c.ssl, c.buf + c.sent, static_cast<int>(request_size - c.sent));
            if (ret <= 0) {
                if (!wait_for(c, ret))
                    end(c);
                return;
            }
            c.sent += static_cast<std::size_t>(ret);
            if (c.sent == request_size) {
                c.st = st::reading;
                set_events(c, EPOLLIN);
            }
        }
        while (c.st == st::reading) {
            unsigned char echo[request_size];
            ERR_clear_error();
            const int ret = SSL_read(c.ssl, echo, static_cast<int>(request_size - c.got));
            if (ret <= 0) {
                if (!wait_for(c, ret))
                    end(c);
                return;
            }
            c.got += static_cast<std::size_t>(ret);
            if (c.got == request_size) {
                // One in ten never answers the server's close_notify: it reads
                // nothing more and waits for the FIN that ends the server's close.
                c.st = c.silent ? st::silent : st::closing;
                set_events(c, c.silent ? EPOLLRDHUP : EPOLLIN);
                if (c.silent)
                    return;
            }
        }
        if (c.st == st::closing) {
            unsigned char extra[64];
            ERR_clear_error();
            const int ret = SSL_read(c.ssl, extra, sizeof extra);
            if (ret > 0)
                return end(c); // unexpected data: not a close
            if (SSL_get_error(c.ssl, ret) != SSL_ERROR_ZERO_RETURN) {
                if (!wait_for(c, ret))
                    end(c);
                return;
            }
            c.st = st::awaiting_fin; // the server's close_notify: answer it
        }
        if (c.st == st::awaiting_fin) {
            ERR_clear_error();
            const int ret = SSL_shutdown(c.ssl);
            if (ret < 0 && wait_for(c, ret))
                return;
            // Ours is out: the server ends its close and its socket. Waiting
            // for its FIN leaves TIME_WAIT on the server's side, not here.
            set_events(c, EPOLLRDHUP);
            if ((ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0)
                end(c);
            return;
        }
        if (c.st == st::silent && (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
            fin_ns_[c.id] = ns_of(clk::now());
            end(c);
        }
    }

    const options& opt_;
    SSL_CTX* ctx_;
    int port_;
    int go_fd_;
    int epfd_;
    std::vector<std::uint32_t> ids_;
    std::vector<client_connection> conns_;
    std::vector<long long> fin_ns_;
    long next_ = 0, inflight_ = 0, done_ = 0;
    bool going_ = false;
    clk::time_point go_time_{};
    std::size_t sending_ = 0; // conns_[0, sending_) have been asked to send their request
};

// ---------------------------------------------------------------- one phase

struct result {
    const char* name = "";
    bool finished = false;
    long conns = 0;
    long failed = 0;
    double cpu_s = 0;
    double cpu_after_s = 0; // after all handshakes: requests, echoes, closes
    double open_s = 0;      // first accept -> all handshakes done
    double total_s = 0;     // the whole phase, the last close included
    double heap_per_conn = 0;
    loop_stats loop;
    std::vector<double> late_ms; // per silent peer: FIN seen - deadline
    long no_fin = 0;             // silent peers that saw no FIN
};

bool read_all(int fd, void* p, std::size_t n, clk::time_point limit)
{
    auto* b = static_cast<char*>(p);
    while (n > 0) {
        pollfd pfd{fd, POLLIN, 0};
        const auto left = std::chrono::duration_cast<milliseconds>(limit - clk::now()).count();
        if (left <= 0 || ::poll(&pfd, 1, static_cast<int>(left)) <= 0)
            return false;
        const ssize_t k = ::read(fd, b, n);
        if (k <= 0)
            return false;
        b += k;
        n -= static_cast<std::size_t>(k);
    }
    return true;
}

template <class Server>
result run_phase(const char* name, const options& opt, SSL_CTX* server_ctx, SSL_CTX* client_ctx)
{
    result res;
    res.name = name;
    res.conns = opt.conns;
    int port = 0;
    const int listener = listen_any(port);
    int go[2];
    check(::pipe2(go, O_CLOEXEC) == 0, "pipe");
    // Generous: the phase itself takes a few seconds.
    const auto limit = clk::now() + std::chrono::seconds(30 + opt.conns / 100);

    malloc_trim(0);
    const std::size_t heap_before = heap_in_use();
    std::fflush(nullptr);
    // Two client processes: [0] the answering ones, [1] the silent ones.
    pid_t pid[2];
    int back[2][2];
    for (int k = 0; k < 2; ++k) {
        check(::pipe2(back[k], O_CLOEXEC) == 0, "pipe");
        pid[k] = ::fork();
        check(pid[k] >= 0, "fork");
        if (pid[k] != 0)
            continue;
        // Bounded whatever happens: killed with the parent, and gone by the
        // phase's limit on its own.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() == 1)
            ::_exit(1);
        ::close(go[1]);
        ::close(back[k][0]);
        ::close(listener);
        clients cl(opt, client_ctx, port, go[0], k == 1);
        const auto& fins = cl.run(limit);
        const char* p = reinterpret_cast<const char*>(fins.data());
        std::size_t left = fins.size() * sizeof(long long);
        while (left > 0) {
            const ssize_t n = ::write(back[k][1], p, left);
            if (n <= 0)
                ::_exit(1);
            p += n;
            left -= static_cast<std::size_t>(n);
        }
        ::_exit(0);
    }
    ::close(go[0]);
    ::close(back[0][1]);
    ::close(back[1][1]);

    const double cpu0 = cpu_seconds();
    const auto t0 = clk::now();
    std::vector<long long> deadlines;
    {
        Server s(opt, listener, go[1], server_ctx);
        res.finished = s.run(limit);
        res.cpu_s = cpu_seconds() - cpu0;
        res.cpu_after_s = cpu_seconds() - s.cpu_all_open;
        res.total_s = std::chrono::duration<double>(clk::now() - t0).count();
        res.open_s = std::chrono::duration<double>(s.all_open - s.first_accept).count();
        res.heap_per_conn =
            (static_cast<double>(s.heap_all_open) - static_cast<double>(heap_before)) / static_cast<double>(opt.conns);
        res.loop = s.stats;
        res.failed = s.failed;
        deadlines = std::move(s.deadline_ns_);
    } // an unfinished server frees what is left here
    ::close(listener);
    ::close(go[1]);

    std::vector<long long> fins(static_cast<std::size_t>(opt.conns), 0);
    std::vector<long long> silent_fins(fins.size(), 0);
    for (int k = 0; k < 2; ++k) {
        const bool got =
            res.finished
            && read_all(back[k][0], (k == 0 ? fins : silent_fins).data(), fins.size() * sizeof(long long), limit);
        ::close(back[k][0]);
        if (!got)
            ::kill(pid[k], SIGKILL);
        int status = 0;
        ::waitpid(pid[k], &status, 0);
        if (!got || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            res.finished = false;
    }
    fins = std::move(silent_fins);
    for (std::size_t i = 0; i < fins.size(); i += 10) {
        if (fins[i] == 0 || deadlines[i] == 0)
            ++res.no_fin;
        else
            res.late_ms.push_back(static_cast<double>(fins[i] - deadlines[i]) / 1e6);
    }
    std::sort(res.late_ms.begin(), res.late_ms.end());
    return res;
}

// Several phases of one implementation: totals (CPU, time) and worst cases.
result merge(const std::vector<result>& rs)
{
    result m = rs.front();
    for (std::size_t i = 1; i < rs.size(); ++i) {
        const result& r = rs[i];
        m.finished = m.finished && r.finished;
        m.conns += r.conns;
        m.failed += r.failed;
        m.cpu_s += r.cpu_s;
        m.cpu_after_s += r.cpu_after_s;
        m.open_s += r.open_s;
        m.total_s += r.total_s;
        m.heap_per_conn = std::max(m.heap_per_conn, r.heap_per_conn);
        m.loop.longest = std::max(m.loop.longest, r.loop.longest);
        m.loop.longest_with_close = std::max(m.loop.longest_with_close, r.loop.longest_with_close);
        m.loop.longest_close_work = std::max(m.loop.longest_close_work, r.loop.longest_close_work);
        m.loop.longest_with_close_cpu = std::max(m.loop.longest_with_close_cpu, r.loop.longest_with_close_cpu);
        m.loop.iterations += r.loop.iterations;
        m.loop.most_closes_ended = std::max(m.loop.most_closes_ended, r.loop.most_closes_ended);
        m.loop.latest_expiry = std::max(m.loop.latest_expiry, r.loop.latest_expiry);
        m.late_ms.insert(m.late_ms.end(), r.late_ms.begin(), r.late_ms.end());
        m.no_fin += r.no_fin;
    }
    std::sort(m.late_ms.begin(), m.late_ms.end());
    return m;
}

double cpu_us_per_conn(const result& r) { return r.cpu_s * 1e6 / static_cast<double>(r.conns); }
double cpu_after_us_per_conn(const result& r) { return r.cpu_after_s * 1e6 / static_cast<double>(r.conns); }
double conns_per_s(const result& r) { return static_cast<double>(r.conns) / r.open_s; }
double late_max(const result& r) { return r.late_ms.empty() ? 0 : r.late_ms.back(); }
double late_at(const result& r, double q)
{
    if (r.late_ms.empty())
        return 0;
    const auto i = static_cast<std::size_t>(std::lround(q * static_cast<double>(r.late_ms.size() - 1)));
    return r.late_ms[i];
}

void print_row(const result& r)
{
    std::printf("| %s | %.0f | %.1f | %.0f | %.1f | %.2f | %.2f (%.2f) | %.2f | %.1f / %.1f / %.1f%s |\n", r.name,
                cpu_us_per_conn(r), cpu_after_us_per_conn(r), conns_per_s(r), r.heap_per_conn / 1024,
                ms_of(r.loop.longest), ms_of(r.loop.longest_with_close), ms_of(r.loop.longest_with_close_cpu),
                ms_of(r.loop.longest_close_work), late_max(r), late_at(r, 0.99), late_at(r, 0.5),
                r.no_fin > 0 ? (" (" + std::to_string(r.no_fin) + " without FIN)").c_str() : "");
}

int run(int argc, char** argv)
{
    options opt;
    bool conns_given = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick")
            opt.quick = true;
        else if (a == "--conns" && i + 1 < argc) {
            opt.conns = std::strtol(argv[++i], nullptr, 10);
            conns_given = true;
        } else if (a == "--timeout" && i + 1 < argc)
            opt.timeout = milliseconds(std::strtol(argv[++i], nullptr, 10));
        else if (a == "--rate" && i + 1 < argc)
            opt.rate = std::strtol(argv[++i], nullptr, 10);
        else if (a == "--only" && i + 1 < argc)
            opt.only = argv[++i];
        else if (a == "--rounds" && i + 1 < argc)
            opt.rounds = static_cast<int>(std::strtol(argv[++i], nullptr, 10));
        else {
            std::fprintf(stderr,
                         "usage: eventloop_bench [--quick] [--conns N] [--timeout MS] [--rounds R] [--rate PER_S] "
                         "[--only tls|raw]\n");
            return 2;
        }
    }
    if (opt.quick && !conns_given)
        opt.conns = 1000;
    if (opt.conns < 10 || opt.conns > 20000 || opt.rounds < 1 || opt.timeout.count() < 1 || opt.rate < 0) {
        std::fprintf(stderr, "eventloop_bench: --conns 10..20000, --rounds >= 1, --timeout >= 1, --rate >= 0\n");
        return 2;
    }
    raise_fd_limit(opt.conns);
    std::signal(SIGPIPE, SIG_IGN);

    self_signed::credentials creds;
    self_signed::generate(creds);
    SSL_CTX* server_ctx = make_ctx(true, creds);
    SSL_CTX* client_ctx = make_ctx(false, creds);

    // Alternate the order (tls, raw, raw, tls, ...) so drifting load hits both.
    if (opt.only == "tls" || opt.only == "raw") {
        const result r = opt.only == "tls"
                             ? run_phase<tls_server>("tls_stream steps + closer", opt, server_ctx, client_ctx)
                             : run_phase<raw_server>("raw OpenSSL by hand", opt, server_ctx, client_ctx);
        print_row(r);
        SSL_CTX_free(server_ctx);
        SSL_CTX_free(client_ctx);
        return r.finished ? 0 : 1;
    }
    std::vector<result> tls_runs, raw_runs;
    for (int r = 0; r < opt.rounds; ++r) {
        for (int k = 0; k < 2; ++k) {
            if ((k == 0) == (r % 2 == 0))
                tls_runs.push_back(run_phase<tls_server>("tls_stream steps + closer", opt, server_ctx, client_ctx));
            else
                raw_runs.push_back(run_phase<raw_server>("raw OpenSSL by hand", opt, server_ctx, client_ctx));
        }
    }
    const result t = merge(tls_runs);
    const result w = merge(raw_runs);

    std::printf("### Event loop: %ld connections, full close, %lld ms shutdown timeout\n\n", opt.conns,
                static_cast<long long>(opt.timeout.count()));
    std::printf("%d phase(s) per server, %ld connections each, all open at once; requests %s; one client in ten "
                "never answers close_notify. Times in ms; heap in KiB.\n\n",
                opt.rounds, opt.conns,
                opt.rate > 0 ? ("paced at " + std::to_string(opt.rate) + "/s").c_str() : "all at once");
    std::printf("| server | CPU µs/conn | of which after the handshakes | handshakes/s | heap KiB/conn | longest "
                "iteration | longest with a close "
                "(its CPU) | longest close work | silent close end − deadline, max / p99 / p50 |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
    print_row(t);
    print_row(w);
    std::printf("| *tls_stream ÷ raw* | %.3f | %.3f | %.3f | %.2f | | | | |\n\n",
                cpu_us_per_conn(t) / cpu_us_per_conn(w), cpu_after_us_per_conn(t) / cpu_after_us_per_conn(w),
                conns_per_s(t) / conns_per_s(w), t.heap_per_conn / w.heap_per_conn);

    const double cpu_ratio = cpu_us_per_conn(t) / cpu_us_per_conn(w);
    const auto verdict = [](bool ok) { return ok ? "met" : "NOT met"; };
    std::printf("Targets (tls_stream):\n\n");
    std::printf("- CPU per connection ≤ 1.05 × raw: %.3f × — %s\n", cpu_ratio, verdict(cpu_ratio <= 1.05));
    std::printf("- no loop iteration with close work longer than 5 ms: longest %.2f ms wall, %.2f ms CPU; close "
                "work in one iteration at most %.2f ms wall — %s by wall time, %s by CPU time\n",
                ms_of(t.loop.longest_with_close), ms_of(t.loop.longest_with_close_cpu),
                ms_of(t.loop.longest_close_work), verdict(t.loop.longest_with_close <= milliseconds(5)),
                verdict(t.loop.longest_with_close_cpu <= milliseconds(5)));
    std::printf("- every close ends within deadline + 20 ms: latest %.1f ms after it%s — %s\n", late_max(t),
                t.no_fin > 0 ? ", some never" : "", verdict(t.no_fin == 0 && late_max(t) <= 20.0));
    std::printf("\nMost closes ended in one loop iteration: tls_stream %ld (the closer's run_ready() advances at "
                "most 32 closes per call), raw %ld (at most one per epoll event, %d events per epoll_wait).\n",
                t.loop.most_closes_ended, w.loop.most_closes_ended, max_events);
    std::printf("\nClose end − deadline is when the silent client saw the FIN; the raw server's own timer ended "
                "its latest timed-out close %.1f ms after the deadline (the rest is the client noticing).\n",
                ms_of(w.loop.latest_expiry));
    std::printf("\nFailed connections: tls_stream %ld, raw %ld; every phase finished: %s. Wall time per phase: "
                "tls_stream %.1f s, raw %.1f s.\n",
                t.failed, w.failed, t.finished && w.finished ? "yes" : "NO",
                t.total_s / static_cast<double>(tls_runs.size()), w.total_s / static_cast<double>(raw_runs.size()));

    SSL_CTX_free(server_ctx);
    SSL_CTX_free(client_ctx);
    return t.finished && w.finished ? 0 : 1;
}

} // namespace

int main(int argc, char** argv)
{
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "eventloop_bench: %s\n", e.what());
        return 1;
    }
}
