// tls_stream against GnuTLS, a different TLS stack: `gnutls-serv --echo`
// and `gnutls-cli`, both with -d 5, at which GnuTLS logs every alert it
// receives ("Alert[1|0] - Close notify - was received") and sends
// ("REC: Sending Alert[1|0] - Close notify").
#include "support/interop.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <memory>

using namespace interop;
using support::bytes;

namespace {

constexpr std::string_view got_close_notify = "Alert[1|0] - Close notify - was received";
constexpr std::string_view sent_close_notify = "REC: Sending Alert[1|0] - Close notify";
constexpr std::string_view unclean_end = "The TLS connection was non-properly terminated.";

std::string alerts_of(const support::process& p)
{
    return lines_with(p.output(), {"Alert", "rror", "terminated", "closed", "listening"});
}

support::listening_process start_gnutls_serv(int version)
{
    const auto& c = support::credentials();
    return support::start_listening(
        [&](int port) {
            return std::vector<std::string>{"gnutls-serv",
                                            "--echo",
                                            "--x509certfile",
                                            c.chain_file,
                                            "--x509keyfile",
                                            c.key_file,
                                            "-p",
                                            std::to_string(port),
                                            gnutls_priority(version),
                                            "-d",
                                            "5"};
        },
        // It binds IPv4 first: "...done" or "...bind() failed: Address already in use".
        "...done", "failed", soon());
}

std::unique_ptr<support::process> start_gnutls_cli(int version, int port)
{
    return std::make_unique<support::process>(
        std::vector<std::string>{"gnutls-cli", "--x509cafile", support::credentials().ca_file, "-p",
                                 std::to_string(port), gnutls_priority(version), "-d", "5", "127.0.0.1"});
}

// A tls_stream server that accepted gnutls-cli, read its line (typed on its
// stdin) and answered it.
template <class Policy>
std::unique_ptr<stream<Policy>> exchange_with(listener& l, support::process& client, int version)
{
    auto s = std::make_unique<stream<Policy>>(support::server_context(version), l.accept(soon()));
    s->set_io_timeout(patience);
    s->accept();
    support::ensure(client.write_stdin("ping from gnutls-cli\n"), "gnutls-cli's stdin is closed");
    support::ensure(read_line(*s) == "ping from gnutls-cli\n", "unexpected line from gnutls-cli");
    s->write_all(bytes("pong from tls_stream\n"));
    support::ensure(client.wait_for_output("pong from tls_stream", soon()),
                    "gnutls-cli did not print our line:\n" + client.output());
    return s;
}

} // namespace

TEMPLATE_TEST_CASE("gnutls-serv sees exactly the closure of the client's policy", "[interop][gnutls]",
                   TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(policy_name<TestType>(), dotted(version));
    auto srv = start_gnutls_serv(version);

    auto s = std::make_unique<stream<TestType>>(support::client_context(version), connect_to(srv.port));
    s->set_io_timeout(patience);
    s->connect("localhost");
    s->write_all(bytes("ping from tls_stream\n"));
    REQUIRE(read_line(*s) == "ping from tls_stream\n"); // the echo

    std::error_code ec;
    const tls::shutdown_result r = s->shutdown(ec);
    s.reset();
    // gnutls-serv keeps serving; the first of these lines is how it saw the end.
    const auto seen = srv.server->wait_for_first_of({got_close_notify, unclean_end}, soon());
    INFO("gnutls-serv:\n" << alerts_of(*srv.server));
    REQUIRE(seen.has_value());

    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(*seen == 1u);
        CHECK(support::to_string(r) == "quiet");
        CHECK(!ec);
    } else {
        CHECK(*seen == 0u);
        // gnutls-serv answers a close_notify with its own.
        CHECK(srv.server->wait_for_output(sent_close_notify, soon()));
        if constexpr (TestType::mode == tls::close_mode::full)
            CHECK(support::to_string(r) == "complete");
        else
            CHECK(support::to_string(r) == "sent");
        CHECK(!ec);
    }
    CHECK_FALSE(contains(srv.server->output(), *seen == 0u ? unclean_end : got_close_notify));
}

TEMPLATE_TEST_CASE("gnutls-cli sees exactly the closure of the server's policy, and never answers", "[interop][gnutls]",
                   TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(policy_name<TestType>(), dotted(version));
    listener l;
    auto client = start_gnutls_cli(version, l.port());
    auto s = exchange_with<TestType>(l, *client, version);
    // Long enough that a close which waited for it would show.
    s->set_shutdown_timeout(patience);

    std::error_code ec;
    tls::shutdown_result r{};
    const auto took = support::time_of([&] { r = s->shutdown(ec); });
    s.reset();
    REQUIRE(client->wait(patience).has_value());
    const std::string out = client->output();
    INFO("gnutls-cli:\n" << alerts_of(*client));

    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(contains(out, "*** Fatal error: " + std::string(unclean_end)));
        CHECK_FALSE(contains(out, got_close_notify));
        CHECK(support::to_string(r) == "quiet");
        CHECK(!ec);
    } else {
        CHECK(contains(out, got_close_notify));
        CHECK(contains(out, "- Peer has closed the GnuTLS connection"));
        CHECK_FALSE(contains(out, unclean_end));
        // gnutls-cli exits on our close_notify without sending its own.
        CHECK_FALSE(contains(out, sent_close_notify));
        if constexpr (TestType::mode == tls::close_mode::full) {
            // So full ends at the FIN, promptly, as not confirmed.
            CHECK(support::to_string(r) == "sent");
            CHECK(ec == tls::errc::stream_truncated);
            CHECK(took < patience / 2);
        } else {
            CHECK(support::to_string(r) == "sent");
            CHECK(!ec);
        }
    }
}

TEMPLATE_TEST_CASE("gnutls-cli's half-close on stdin EOF: the server reads the end, writes on, then closes",
                   "[interop][gnutls]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(policy_name<TestType>(), dotted(version));
    listener l;
    auto client = start_gnutls_cli(version, l.port());
    auto s = exchange_with<TestType>(l, *client, version);

    client->close_stdin(); // gnutls-cli sends close_notify (gnutls_bye SHUT_WR) and keeps reading
    std::byte buf[64];
    std::error_code ec;
    CHECK(s->read_some(buf, ec) == 0);
    CHECK(!ec);
    s->write_all(bytes("after your close_notify\n"));
    REQUIRE(client->wait_for_output("after your close_notify", soon()));
    const tls::shutdown_result r = s->shutdown(ec);
    CHECK(!ec);
    s.reset();
    REQUIRE(client->wait(patience).has_value());
    const std::string out = client->output();
    INFO("gnutls-cli:\n" << alerts_of(*client));
    CHECK(contains(out, sent_close_notify));
    // Having half-closed, gnutls-cli prints "Peer has closed the GnuTLS
    // connection" for a bare FIN too; only its alert log tells them apart.
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(support::to_string(r) == "quiet");
        CHECK_FALSE(contains(out, got_close_notify));
    } else {
        CHECK(support::to_string(r) == "complete");
        CHECK(contains(out, got_close_notify));
    }
}
