#include "interop.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#ifndef TLS_STREAM_INTEROP_DIR
#error "TLS_STREAM_INTEROP_DIR must name tests/interop (set by tests/meson.build)"
#endif

namespace interop {

namespace {

sockaddr_in loopback(int port)
{
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    return addr;
}

int checked(int r, const char* what)
{
    support::ensure(r >= 0, std::string(what) + ": " + std::strerror(errno));
    return r;
}

} // namespace

std::string dotted(int version) { return version == TLS1_3_VERSION ? "1.3" : "1.2"; }

std::string openssl_flag(int version) { return version == TLS1_3_VERSION ? "-tls1_3" : "-tls1_2"; }

std::string gnutls_priority(int version) { return "--priority=NORMAL:-VERS-ALL:+VERS-TLS" + dotted(version); }

std::string msg_version(int version) { return "TLS " + dotted(version); }

std::string strict_peer_script() { return TLS_STREAM_INTEROP_DIR "/strict_peer.py"; }

listener::listener() : sock_{checked(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket")}
{
    sockaddr_in addr = loopback(0);
    checked(::bind(sock_.native_handle(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), "bind");
    checked(::listen(sock_.native_handle(), 4), "listen");
    socklen_t len = sizeof addr;
    checked(::getsockname(sock_.native_handle(), reinterpret_cast<sockaddr*>(&addr), &len), "getsockname");
    port_ = ntohs(addr.sin_port);
}

tls::unique_socket listener::accept(clock::time_point deadline)
{
    for (;;) {
        pollfd p{sock_.native_handle(), POLLIN, 0};
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now());
        const int k = ::poll(&p, 1, static_cast<int>(std::max<long long>(left.count(), 0)));
        if (k < 0 && errno == EINTR)
            continue;
        checked(k, "poll");
        support::ensure(k == 1, "listener: no connection within the deadline");
        return tls::unique_socket{checked(::accept4(sock_.native_handle(), nullptr, nullptr, SOCK_CLOEXEC), "accept")};
    }
}

tls::unique_socket connect_to(int port)
{
    tls::unique_socket s{checked(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket")};
    const sockaddr_in addr = loopback(port);
    checked(::connect(s.native_handle(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), "connect");
    return s;
}

std::string lines_with(const std::string& output, std::initializer_list<std::string_view> keys)
{
    std::istringstream in(output);
    std::string out;
    for (std::string line; std::getline(in, line);) {
        for (std::string_view k : keys) {
            if (line.find(k) != std::string::npos) {
                out += line + '\n';
                break;
            }
        }
    }
    return out;
}

} // namespace interop
