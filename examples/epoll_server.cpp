// An echo server over TLS on one epoll loop: every connection is driven by
// non-blocking steps (try_accept, try_read_some, try_write_some), and every
// close is handed to a tls::closer, so no connection's close ever stalls
// the loop, yet each ends by its policy within its deadline.
//
//   epoll_server [PORT [CERT KEY]] [--count N]
//
// Without CERT and KEY it makes a throwaway self-signed certificate. It
// prints "listening on PORT" once ready; with --count N it stops after N
// connections have ended (and their closes have finished).
//
// SPDX-License-Identifier: MIT
#include <tls_stream.hpp>

#include "self_signed.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using stream = tls::tls_stream<tls::unique_socket, tls::full_shutdown>;

struct connection {
    explicit connection(stream s) : tls(std::move(s)) {}
    stream tls;
    bool open = false;          // handshake done
    std::vector<std::byte> out; // read, not yet echoed
    std::uint32_t events = 0;   // what epoll watches now
};

[[noreturn]] void die(const char* what)
{
    std::perror(what);
    std::exit(1);
}

class server {
public:
    server(tls::context ctx, int listener) : ctx_(std::move(ctx)), listener_(listener), epfd_(::epoll_create1(0))
    {
        if (epfd_ < 0)
            die("epoll_create1");
        watch(listener_, EPOLLIN, nullptr);
        // The closer's one descriptor: readable when a close can progress.
        watch(closer_.native_handle(), EPOLLIN, &closer_);
    }
    ~server() { ::close(epfd_); } // the closer, destroyed after, finishes what is left

    // Runs until `count` connections have ended (0: forever).
    void run(long count)
    {
        epoll_event events[64];
        while (count == 0 || ended_ < count || closer_.size() > 0) {
            const int n = ::epoll_wait(epfd_, events, 64, timeout_ms());
            for (int i = 0; i < n; ++i) {
                void* tag = events[i].data.ptr;
                if (tag == nullptr)
                    accept_all();
                else if (tag == &closer_)
                    continue; // run_ready() below
                else
                    advance(static_cast<connection*>(tag));
            }
            closer_.run_ready(); // also ends closes whose deadline passed
        }
    }

private:
    // Until the closer's next deadline, so a silent peer's close ends on time.
    int timeout_ms() const
    {
        const auto next = closer_.next_deadline();
        if (!next)
            return -1;
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(*next - std::chrono::steady_clock::now());
        return left.count() < 0 ? 0 : static_cast<int>(std::min<long long>(left.count(), 60000));
    }

    void watch(int fd, std::uint32_t events, void* tag, int op = EPOLL_CTL_ADD)
    {
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = tag;
        if (::epoll_ctl(epfd_, op, fd, &ev) != 0)
            die("epoll_ctl");
    }

    void accept_all()
    {
        for (;;) {
            const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0)
                return; // EAGAIN: all taken
            const int on = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
            auto c = std::make_unique<connection>(stream(ctx_, tls::unique_socket{fd}));
            c->tls.close_via(closer_); // its destructor will never wait
            c->tls.set_shutdown_timeout(std::chrono::milliseconds(2000));
            connection* raw = c.get();
            conns_.emplace(raw, std::move(c));
            c_events(raw, EPOLLIN);
            advance(raw);
        }
    }

    void c_events(connection* c, std::uint32_t events)
    {
        if (c->events == events)
            return;
        watch(c->tls.socket().native_handle(), events, c, c->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD);
        c->events = events;
    }

    // Runs the connection's steps until one needs to wait.
    void advance(connection* c)
    {
        std::error_code ec;
        tls::want w = tls::want::nothing;
        if (!c->open) {
            w = c->tls.try_accept(ec);
            if (ec)
                return end(c); // a failed handshake: freed, nothing to close
            if (w != tls::want::nothing)
                return c_events(c, w == tls::want::read ? EPOLLIN : EPOLLOUT);
            c->open = true;
        }
        for (;;) {
            if (!c->out.empty()) { // echo what we have before reading more
                std::size_t n = 0;
                w = c->tls.try_write_some(c->out, n, ec);
                if (ec)
                    return end(c);
                c->out.erase(c->out.begin(), c->out.begin() + static_cast<std::ptrdiff_t>(n));
                if (w != tls::want::nothing)
                    return c_events(c, w == tls::want::read ? EPOLLIN : EPOLLOUT);
                continue;
            }
            std::byte buf[16384];
            std::size_t n = 0;
            w = c->tls.try_read_some(buf, n, ec);
            if (ec || (w == tls::want::nothing && n == 0))
                return end(c); // an error, or the peer's close_notify
            if (w != tls::want::nothing)
                return c_events(c, w == tls::want::read ? EPOLLIN : EPOLLOUT);
            c->out.insert(c->out.end(), buf, buf + n);
        }
    }

    // Destroying the stream hands its close to the closer: no waiting here.
    void end(connection* c)
    {
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, c->tls.socket().native_handle(), nullptr);
        conns_.erase(c);
        ++ended_;
    }

    tls::closer closer_; // declared first: it outlives every stream bound to it
    tls::context ctx_;
    int listener_;
    int epfd_;
    std::unordered_map<connection*, std::unique_ptr<connection>> conns_;
    long ended_ = 0;
};

int listen_on(int port)
{
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    socklen_t len = sizeof addr;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 1024) != 0
        || ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
        die("listen");
    std::printf("listening on %d\n", ntohs(addr.sin_port));
    std::fflush(stdout);
    return fd;
}

} // namespace

int main(int argc, char** argv)
try {
    std::vector<std::string> args(argv + 1, argv + argc);
    long count = 0;
    for (std::size_t i = 0; i < args.size(); ++i)
        if (args[i] == "--count" && i + 1 < args.size()) {
            count = std::strtol(args[i + 1].c_str(), nullptr, 10);
            args.erase(args.begin() + static_cast<std::ptrdiff_t>(i),
                       args.begin() + static_cast<std::ptrdiff_t>(i) + 2);
            break;
        }
    if (args.size() != 0 && args.size() != 1 && args.size() != 3) {
        std::fprintf(stderr, "usage: epoll_server [PORT [CERT KEY]] [--count N]\n");
        return 2;
    }
    const int port = args.empty() ? 0 : std::atoi(args[0].c_str());
    self_signed::credentials made;
    std::string cert = args.size() == 3 ? args[1] : "";
    std::string key = args.size() == 3 ? args[2] : "";
    if (cert.empty()) {
        self_signed::generate(made);
        cert = made.chain_file;
        key = made.key_file;
    }
    server s(tls::context::server(cert, key), listen_on(port));
    s.run(count);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "epoll_server: %s\n", e.what());
    return 1;
}
