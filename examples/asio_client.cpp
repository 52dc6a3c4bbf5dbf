// A coroutine HTTPS client on Asio: resolves HOST, connects, fetches PATH
// over HTTP/1.1 (Connection: close) and prints the reply.
//
//   asio_client HOST [PORT [PATH]] [--ca FILE]
//
// It trusts the system's store, and FILE too with --ca (e.g. the authority
// of asio_server's throwaway certificate, whose path it prints).
//
// SPDX-License-Identifier: MIT
#include <tls_stream/asio.hpp>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

using stream = tls::tls_stream<asio::ip::tcp::socket, tls::full_shutdown>;

asio::awaitable<void> fetch(tls::context& ctx, std::string host, std::string port, std::string path)
{
    auto ex = co_await asio::this_coro::executor;
    asio::ip::tcp::resolver resolver(ex);
    asio::ip::tcp::socket sock(ex);
    co_await asio::async_connect(sock, co_await resolver.async_resolve(host, port, asio::use_awaitable),
                                 asio::use_awaitable);

    stream s(ctx, std::move(sock));
    co_await s.async_connect(host, asio::use_awaitable); // SNI + certificate + hostname check
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
    co_await asio::async_write(s, asio::buffer(request), asio::use_awaitable);

    std::string reply;
    std::error_code ec;
    co_await asio::async_read(s, asio::dynamic_buffer(reply), asio::redirect_error(asio::use_awaitable, ec));
    std::fwrite(reply.data(), 1, reply.size(), stdout);
    if (ec != asio::error::eof) { // eof: the server's close_notify
        std::fprintf(stderr, "asio_client: the reply ended with %s\n", ec.message().c_str());
        co_return; // the destructor still closes by the policy, on the executor
    }
    // The server closed first: answering is all full_shutdown has left to do.
    const tls::shutdown_result r = co_await s.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
    std::fprintf(stderr, "asio_client: close %s%s%s\n", r == tls::shutdown_result::complete ? "complete" : "incomplete",
                 ec ? ": " : "", ec ? ec.message().c_str() : "");
}

} // namespace

int main(int argc, char** argv)
try {
    std::vector<std::string> args(argv + 1, argv + argc);
    std::string ca;
    for (std::size_t i = 0; i + 1 < args.size(); ++i)
        if (args[i] == "--ca") {
            ca = args[i + 1];
            args.erase(args.begin() + static_cast<std::ptrdiff_t>(i),
                       args.begin() + static_cast<std::ptrdiff_t>(i) + 2);
            break;
        }
    if (args.empty() || args.size() > 3) {
        std::fprintf(stderr, "usage: asio_client HOST [PORT [PATH]] [--ca FILE]\n");
        return 2;
    }
    tls::context ctx = tls::context::client(); // TLS >= 1.2, system trust store
    if (!ca.empty())
        ctx.load_verify_file(ca);
    asio::io_context io;
    bool failed = false;
    asio::co_spawn(io, fetch(ctx, args[0], args.size() > 1 ? args[1] : "443", args.size() > 2 ? args[2] : "/"),
                   [&](const std::exception_ptr& e) {
                       if (!e)
                           return;
                       failed = true;
                       try {
                           std::rethrow_exception(e);
                       } catch (const std::exception& x) {
                           std::fprintf(stderr, "asio_client: %s\n", x.what());
                       }
                   });
    io.run(); // returns once the fetch and its close have ended
    return failed ? 1 : 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "asio_client: %s\n", e.what());
    return 1;
}
