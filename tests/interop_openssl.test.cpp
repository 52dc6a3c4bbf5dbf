// tls_stream against OpenSSL's own command-line peers, `openssl s_server`
// and `openssl s_client`, with -msg: they print every alert they send
// (">>>") and receive ("<<<"), which is what these tests read.
#include "support/interop.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <memory>
#include <optional>

using namespace interop;
using support::bytes;

namespace {

// -msg's line for a close_notify alert received (<<<) or sent (>>>).
std::string close_notify_line(bool received, int version)
{
    return std::string(received ? "<<< " : ">>> ") + msg_version(version)
           + ", Alert [length 0002], warning close_notify";
}

std::string alerts_of(const support::process& p)
{
    return lines_with(p.output(), {"Alert", "error", "ERROR", "DONE", "closed", "CLOSED"});
}

// Arguments that make a tool verify our certificate like a real client.
std::vector<std::string> verifying_client_args()
{
    return {"-CAfile",
            support::credentials().ca_file,
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-servername",
            "localhost"};
}

struct s_server {
    std::unique_ptr<support::process> proc;
    int port = 0;
};

// One connection, then it exits. Port 0: s_server prints the one it got.
s_server start_s_server(int version)
{
    const auto& c = support::credentials();
    auto p = std::make_unique<support::process>(
        std::vector<std::string>{"openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", c.chain_file, "-key",
                                 c.key_file, openssl_flag(version), "-naccept", "1", "-msg"});
    const auto port = p->wait_for_line("ACCEPT 127.0.0.1:", soon());
    support::ensure(port.has_value(), "s_server did not start:\n" + p->output());
    return {std::move(p), std::stoi(*port)};
}

// A tls_stream client connected to `srv` that has sent a line and read
// s_server's answer (typed on its stdin).
template <class Policy>
std::unique_ptr<stream<Policy>> exchange_with(s_server& srv, int version)
{
    auto s = std::make_unique<stream<Policy>>(support::client_context(version), connect_to(srv.port));
    s->set_io_timeout(patience);
    s->connect("localhost");
    s->write_all(bytes("ping from tls_stream\n"));
    support::ensure(srv.proc->wait_for_output("ping from tls_stream", soon()),
                    "s_server did not print our line:\n" + srv.proc->output());
    support::ensure(srv.proc->write_stdin("pong from s_server\n"), "s_server's stdin is closed");
    support::ensure(read_line(*s) == "pong from s_server\n", "unexpected answer from s_server");
    return s;
}

std::unique_ptr<support::process> start_s_client(int version, int port)
{
    std::vector<std::string> argv = {
        "openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(port), openssl_flag(version), "-msg"};
    for (auto& a : verifying_client_args())
        argv.push_back(a);
    return std::make_unique<support::process>(argv);
}

// A tls_stream server that accepted s_client, read its line (typed on its
// stdin) and answered it.
template <class Policy>
std::unique_ptr<stream<Policy>> exchange_with(listener& l, support::process& client, int version)
{
    auto s = std::make_unique<stream<Policy>>(support::server_context(version), l.accept(soon()));
    s->set_io_timeout(patience);
    s->accept();
    support::ensure(client.write_stdin("ping from s_client\n"), "s_client's stdin is closed");
    support::ensure(read_line(*s) == "ping from s_client\n", "unexpected line from s_client");
    s->write_all(bytes("pong from tls_stream\n"));
    support::ensure(client.wait_for_output("pong from tls_stream", soon()),
                    "s_client did not print our line:\n" + client.output());
    return s;
}

// What s_server or s_client printed (`out`, with -msg) when our stream closed
// by `Policy`, and what our shutdown() reported. Both answer a close_notify
// with their own, so fast reports sent and full complete.
template <class Policy>
void check_closure_seen(const std::string& out, tls::shutdown_result r, const std::error_code& ec, int version)
{
    if constexpr (Policy::mode == tls::close_mode::quiet) {
        CHECK(support::to_string(r) == "quiet");
        CHECK(!ec);
        CHECK_FALSE(contains(out, "<<< " + msg_version(version) + ", Alert"));
        CHECK(contains(out, "unexpected eof while reading"));
    } else {
        CHECK(contains(out, close_notify_line(true, version)));
        CHECK_FALSE(contains(out, "unexpected eof"));
        CHECK(contains(out, close_notify_line(false, version)));
        if constexpr (Policy::mode == tls::close_mode::full)
            CHECK(support::to_string(r) == "complete");
        else
            CHECK(support::to_string(r) == "sent");
        CHECK(!ec);
    }
}

} // namespace

TEMPLATE_TEST_CASE("openssl s_server sees exactly the closure of the client's policy", "[interop][openssl]",
                   TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(policy_name<TestType>(), dotted(version));
    s_server srv = start_s_server(version);
    auto s = exchange_with<TestType>(srv, version);

    std::error_code ec;
    const tls::shutdown_result r = s->shutdown(ec);
    s.reset(); // closes the socket: the FIN that ends a quiet close
    // With -naccept 1 s_server exits once the connection is over, so its
    // output is then complete and an absent line means it never happened.
    REQUIRE(srv.proc->wait(patience).has_value());
    const std::string out = srv.proc->output();
    INFO("s_server:\n" << alerts_of(*srv.proc));

    check_closure_seen<TestType>(out, r, ec, version);
}

TEMPLATE_TEST_CASE("openssl s_server's Q (no close_notify) is truncation to the client", "[interop][openssl]",
                   TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(policy_name<TestType>(), dotted(version));
    s_server srv = start_s_server(version);
    auto s = exchange_with<TestType>(srv, version);

    REQUIRE(srv.proc->write_stdin("Q\n"));
    std::byte buf[64];
    std::error_code ec;
    const std::size_t n = s->read_some(buf, ec);
    CHECK(n == 0);
    CHECK(ec == tls::errc::stream_truncated);
    // The stream failed: its close reports the same and sends nothing.
    std::error_code close_ec;
    CHECK(support::to_string(s->shutdown(close_ec)) == "none");
    CHECK(close_ec == tls::errc::stream_truncated);
    REQUIRE(srv.proc->wait(patience).has_value());
    INFO("s_server:\n" << alerts_of(*srv.proc));
    // The premise: Q really ended the connection without any alert.
    CHECK_FALSE(contains(srv.proc->output(), ">>> " + msg_version(version) + ", Alert"));
}

TEMPLATE_TEST_CASE("openssl s_client sees exactly the closure of the server's policy", "[interop][openssl]",
                   TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(policy_name<TestType>(), dotted(version));
    listener l;
    auto client = start_s_client(version, l.port());
    auto s = exchange_with<TestType>(l, *client, version);

    std::error_code ec;
    const tls::shutdown_result r = s->shutdown(ec);
    s.reset();
    // s_client exits when the connection ends (its stdin is still open).
    REQUIRE(client->wait(patience).has_value());
    const std::string out = client->output();
    INFO("s_client:\n" << alerts_of(*client));

    check_closure_seen<TestType>(out, r, ec, version);
}

TEMPLATE_TEST_CASE("openssl s_client's close_notify on stdin EOF reads as a clean end, then the server answers",
                   "[interop][openssl]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(policy_name<TestType>(), dotted(version));
    listener l;
    auto client = start_s_client(version, l.port());
    auto s = exchange_with<TestType>(l, *client, version);

    client->close_stdin(); // s_client sends close_notify and exits
    std::byte buf[64];
    std::error_code ec;
    CHECK(s->read_some(buf, ec) == 0);
    CHECK(!ec);
    const tls::shutdown_result r = s->shutdown(ec);
    CHECK(!ec);
    // Fast and full answer the close_notify that already arrived; quiet does not.
    CHECK(support::to_string(r) == (TestType::mode == tls::close_mode::quiet ? "quiet" : "complete"));
    s.reset(); // s_client waits (up to 500 ms) for the end of the connection after its close_notify
    REQUIRE(client->wait(patience).has_value());
    INFO("s_client:\n" << alerts_of(*client));
    CHECK(contains(client->output(), close_notify_line(false, version)));
}
