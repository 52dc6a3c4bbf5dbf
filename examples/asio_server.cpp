// A coroutine HTTPS server on Asio, one coroutine per connection: each
// handshakes, reads a request head, answers it and closes by the policy.
// A connection that stalls or disappears costs its coroutine nothing more
// than its close: the destructor finishes that on the executor, within the
// policy's deadline, without holding up the others.
//
//   asio_server [PORT [CERT KEY]] [--count N]
//
// Without CERT and KEY it makes a throwaway self-signed certificate and
// prints the authority's file (for asio_client --ca, or curl --cacert). It
// prints "listening on PORT" once ready; with --count N it stops accepting
// after N connections and exits once they have all closed.
//
// SPDX-License-Identifier: MIT
#include <tls_stream/asio.hpp>

#include "self_signed.hpp"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

namespace {

using stream = tls::tls_stream<asio::ip::tcp::socket, tls::full_shutdown>;

asio::awaitable<void> serve(const tls::context& ctx, asio::ip::tcp::socket sock)
{
    stream s(ctx, std::move(sock));
    std::error_code ec;
    co_await s.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec)
        co_return; // a failed handshake: the destructor only frees
    std::string head;
    co_await asio::async_read_until(s, asio::dynamic_buffer(head, std::size_t{16} * 1024), "\r\n\r\n",
                                    asio::redirect_error(asio::use_awaitable, ec));
    if (ec)
        co_return; // the destructor closes by the policy, on the executor
    const std::string body = "hello from tls_stream over Asio\n";
    const std::string reply = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                              + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    co_await asio::async_write(s, asio::buffer(reply), asio::redirect_error(asio::use_awaitable, ec));
    if (ec)
        co_return;
    // Full: our close_notify, then the client's, within 3 s at most.
    co_await s.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> listen(const tls::context& ctx, asio::ip::tcp::acceptor acceptor, long count)
{
    for (long n = 0; count == 0 || n < count; ++n) {
        asio::ip::tcp::socket sock = co_await acceptor.async_accept(asio::use_awaitable);
        asio::co_spawn(acceptor.get_executor(), serve(ctx, std::move(sock)), asio::detached);
    }
}

} // namespace

int main(int argc, char** argv)
try {
    std::vector<std::string> args(argv + 1, argv + argc);
    long count = 0;
    for (std::size_t i = 0; i + 1 < args.size(); ++i)
        if (args[i] == "--count") {
            count = std::strtol(args[i + 1].c_str(), nullptr, 10);
            args.erase(args.begin() + static_cast<std::ptrdiff_t>(i),
                       args.begin() + static_cast<std::ptrdiff_t>(i) + 2);
            break;
        }
    if (args.size() != 0 && args.size() != 1 && args.size() != 3) {
        std::fprintf(stderr, "usage: asio_server [PORT [CERT KEY]] [--count N]\n");
        return 2;
    }
    self_signed::credentials made;
    std::string cert = args.size() == 3 ? args[1] : "";
    std::string key = args.size() == 3 ? args[2] : "";
    if (cert.empty()) {
        self_signed::generate(made);
        cert = made.chain_file;
        key = made.key_file;
        std::printf("authority: %s\n", made.ca_file.c_str());
    }
    const tls::context ctx = tls::context::server(cert, key);

    asio::io_context io;
    const auto port = static_cast<unsigned short>(args.empty() ? 0 : std::atoi(args[0].c_str()));
    asio::ip::tcp::acceptor acceptor(io, {asio::ip::address_v4::loopback(), port});
    std::printf("listening on %u\n", static_cast<unsigned>(acceptor.local_endpoint().port()));
    std::fflush(stdout);
    asio::co_spawn(io, listen(ctx, std::move(acceptor), count), asio::detached);
    io.run(); // with --count: returns once every connection and its close have ended
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "asio_server: %s\n", e.what());
    return 1;
}
