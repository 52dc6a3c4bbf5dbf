// A program as a user of the installed (or subproject) library writes it: a
// TLS server and a client tls_stream over a socketpair exchange one message
// each and close with a full bidirectional close. Exits 0 only if every step
// worked; the consumer tests build it three ways (Meson subproject,
// pkg-config, CMake find_package).
//
// SPDX-License-Identifier: MIT
#include <tls_stream.hpp>

#include "self_signed.hpp"

#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

namespace {

using namespace std::chrono_literals;

std::span<const std::byte> as_bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

template <class Stream>
std::string read_n(Stream& s, std::size_t n)
{
    std::string out(n, '\0');
    std::size_t have = 0;
    while (have < n) {
        const std::size_t k = s.read_some(std::as_writable_bytes(std::span(out.data() + have, n - have)));
        if (k == 0)
            throw std::runtime_error("close_notify before the whole message");
        have += k;
    }
    return out;
}

} // namespace

int main()
try {
    self_signed::credentials creds;
    self_signed::generate(creds);

    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
        throw std::runtime_error("socketpair failed");
    tls::unique_socket server_end{fds[0]};
    tls::unique_socket client_end{fds[1]};

    const tls::context server_ctx = tls::context::server(creds.chain_file, creds.key_file);
    tls::context client_ctx = tls::context::client();
    client_ctx.load_verify_file(creds.ca_file);

    std::exception_ptr server_error;
    tls::shutdown_result server_result = tls::shutdown_result::none;
    std::thread server([&] {
        try {
            tls::tls_stream<tls::unique_socket> s(server_ctx, std::move(server_end));
            s.set_io_timeout(10s);
            s.accept();
            if (read_n(s, 5) != "hello")
                throw std::runtime_error("server: unexpected request");
            s.write_all(as_bytes("world"));
            std::byte rest[16];
            if (s.read_some(rest) != 0)
                throw std::runtime_error("server: data after the request");
            server_result = s.shutdown();
        } catch (...) {
            server_error = std::current_exception();
        }
    });

    tls::shutdown_result client_result = tls::shutdown_result::none;
    std::string reply;
    try {
        tls::tls_stream<tls::unique_socket, tls::full_shutdown> c(client_ctx, std::move(client_end));
        c.set_io_timeout(10s);
        c.connect("localhost");
        c.write_all(as_bytes("hello"));
        reply = read_n(c, 5);
        client_result = c.shutdown();
    } catch (...) {
        server.join();
        throw;
    }
    server.join();
    if (server_error)
        std::rethrow_exception(server_error);

    const bool ok = reply == "world" && client_result == tls::shutdown_result::complete
                    && server_result == tls::shutdown_result::complete;
    std::printf("consumer: reply \"%s\", client close %s, server close %s\n", reply.c_str(),
                client_result == tls::shutdown_result::complete ? "complete" : "NOT complete",
                server_result == tls::shutdown_result::complete ? "complete" : "NOT complete");
    return ok ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
}
