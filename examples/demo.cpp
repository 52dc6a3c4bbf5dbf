// The tls_stream demo: a TLS server on loopback with a certificate generated
// just now, and one client connection per shutdown policy. For each, it shows
// what went over the wire when the client's stream was destroyed.
//
// Run it with no arguments. Exit status 0 when every policy behaved as
// documented, 1 otherwise.
//
// SPDX-License-Identifier: MIT
#include <tls_stream.hpp>

#include "self_signed.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

namespace {

using namespace std::chrono_literals;

// What the client's own OpenSSL message callback saw: the truth of the wire,
// independent of anything tls_stream reports.
struct wire_log {
    bool close_notify_sent = false;
    bool close_notify_received = false;
};

void record_alert(int write_p, int, int content_type, const void* buf, std::size_t len, SSL*, void* arg)
{
    if (content_type != SSL3_RT_ALERT || len < 2 || static_cast<const unsigned char*>(buf)[1] != SSL_AD_CLOSE_NOTIFY)
        return;
    auto* log = static_cast<wire_log*>(arg);
    (write_p ? log->close_notify_sent : log->close_notify_received) = true;
}

tls::unique_socket listen_on_loopback(sockaddr_in& addr)
{
    tls::unique_socket s{::socket(AF_INET, SOCK_STREAM, 0)};
    addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (s.native_handle() < 0 || ::bind(s.native_handle(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0
        || ::listen(s.native_handle(), 1) != 0
        || ::getsockname(s.native_handle(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
        throw std::system_error(errno, std::system_category(), "listen on 127.0.0.1");
    return s;
}

// The server: answers one line, then reads until the client's end and says
// how it ended. Its own stream (fast policy) answers a close_notify at once.
void serve_one(const tls::context& ctx, tls::unique_socket sock, std::string& saw)
{
    tls::tls_stream<tls::unique_socket, tls::fast_shutdown> s(ctx, std::move(sock));
    s.set_io_timeout(5s);
    std::error_code ec;
    s.accept(ec);
    std::byte buf[256];
    std::size_t n = ec ? 0 : s.read_some(buf, ec);
    if (!ec)
        s.write_all(std::span(buf, n), ec);
    while (!ec && (n = s.read_some(buf, ec)) > 0) {
    }
    saw = !ec                                 ? "close_notify: a clean end"
          : ec == tls::errc::stream_truncated ? "no close_notify: truncated"
                                              : "error: " + ec.message();
}

struct outcome {
    wire_log wire;
    std::string server_saw;
    double close_ms = 0;
};

template <class Policy>
outcome run(const tls::context& server_ctx, const tls::context& client_ctx)
{
    outcome out;
    sockaddr_in addr;
    tls::unique_socket listener = listen_on_loopback(addr);
    // TCP connects through the listen backlog, so both ends exist before
    // the server thread starts: nothing can leave it waiting forever.
    tls::unique_socket sock{::socket(AF_INET, SOCK_STREAM, 0)};
    if (::connect(sock.native_handle(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        throw std::system_error(errno, std::system_category(), "connect to 127.0.0.1");
    tls::unique_socket accepted{::accept(listener.native_handle(), nullptr, nullptr)};
    if (accepted.native_handle() < 0)
        throw std::system_error(errno, std::system_category(), "accept on 127.0.0.1");
    std::jthread server(serve_one, std::cref(server_ctx), std::move(accepted), std::ref(out.server_saw));
    // In an optional only so that the destructor can be timed on its own.
    std::optional<tls::tls_stream<tls::unique_socket, Policy>> s;
    s.emplace(client_ctx, std::move(sock));
    s->set_io_timeout(5s);
    SSL_set_msg_callback(s->native_handle(), record_alert);
    SSL_set_msg_callback_arg(s->native_handle(), &out.wire);
    s->connect("localhost");
    const std::string hello = "hello";
    s->write_all(std::as_bytes(std::span(hello)));
    std::byte echo[256];
    s->read_some(echo);

    const auto start = std::chrono::steady_clock::now();
    s.reset(); // the destructor runs the policy
    out.close_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    server.join();
    return out;
}

const char* yes_no(bool b) { return b ? "yes" : "no"; }

} // namespace

int main()
try {
    self_signed::credentials creds;
    self_signed::generate(creds);
    const tls::context server_ctx = tls::context::server(creds.chain_file, creds.key_file);
    tls::context client_ctx = tls::context::client();
    client_ctx.load_verify_file(creds.ca_file);

    std::printf("tls_stream demo: a TLS server on 127.0.0.1 with a certificate for \"localhost\" made just now,\n"
                "one connection per policy; the client's stream is destroyed after one exchange.\n\n");
    std::printf("%-7s %-19s %-30s %-28s %s\n", "policy", "close_notify sent", "peer's close_notify received",
                "server saw", "close took");

    bool as_documented = true;
    auto report = [&](const char* name, const outcome& o, bool expect_sent, bool expect_received) {
        std::printf("%-7s %-19s %-30s %-28s %.3f ms\n", name, yes_no(o.wire.close_notify_sent),
                    yes_no(o.wire.close_notify_received), o.server_saw.c_str(), o.close_ms);
        as_documented =
            as_documented && o.wire.close_notify_sent == expect_sent && o.wire.close_notify_received == expect_received;
    };
    report("fast", run<tls::fast_shutdown>(server_ctx, client_ctx), true, false);
    report("quiet", run<tls::quiet_shutdown>(server_ctx, client_ctx), false, false);
    report("full", run<tls::full_shutdown>(server_ctx, client_ctx), true, true);

    std::printf("\nfast:  sends close_notify and returns; the peer knows the data ended cleanly.\n"
                "quiet: sends nothing; a strict peer cannot tell the end from a truncation attack.\n"
                "full:  sends close_notify and waits (bounded by its timeout) for the peer's.\n");
    if (!as_documented)
        std::printf("\nUNEXPECTED: a policy did not behave as documented.\n");
    return as_documented ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "demo failed: %s\n", e.what());
    return 1;
}
