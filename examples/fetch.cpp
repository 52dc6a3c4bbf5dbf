// Fetches / from an HTTPS server over HTTP/1.0 and prints the reply:
//   fetch example.com 443
// The function fetch() is the README's usage example.
//
// SPDX-License-Identifier: MIT
#include <tls_stream.hpp>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

// fd: a connected TCP socket you already have (this stream will close it).
std::string fetch(int fd, const std::string& host)
{
    tls::context ctx = tls::context::client(); // TLS >= 1.2, system trust store
    tls::tls_stream<tls::unique_socket, tls::full_shutdown> s(ctx, tls::unique_socket{fd});
    s.set_io_timeout(std::chrono::seconds(10)); // each blocking call; default: none
    s.connect(host);                            // SNI + certificate + hostname check

    const std::string request = "GET / HTTP/1.0\r\nHost: " + host + "\r\n\r\n";
    s.write_all(std::as_bytes(std::span(request)));

    std::string reply;
    std::byte buf[4096];
    while (std::size_t n = s.read_some(buf)) // 0: the server's close_notify
        reply.append(reinterpret_cast<const char*>(buf), n);
    return reply;
} // ~tls_stream: close_notify both ways within 3 s, then the fd is closed

static int connect_tcp(const char* host, const char* port)
{
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (getaddrinfo(host, port, &hints, &found) != 0)
        return -1;
    int fd = -1;
    for (addrinfo* a = found; a && fd < 0; a = a->ai_next) {
        fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            ::close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(found);
    return fd;
}

int main(int argc, char** argv)
try {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    const int fd = connect_tcp(argv[1], argv[2]);
    if (fd < 0) {
        std::fprintf(stderr, "cannot connect to %s:%s\n", argv[1], argv[2]);
        return 1;
    }
    std::fputs(fetch(fd, argv[1]).c_str(), stdout);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "fetch: %s\n", e.what());
    return 1;
}
