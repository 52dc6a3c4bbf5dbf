// tls_stream against a strict peer written with Python's ssl module
// (tests/interop/strict_peer.py): suppress_ragged_eofs=False and no
// OP_IGNORE_UNEXPECTED_EOF, so its recv() gives b'' only for close_notify
// and raises SSLEOFError for a bare end of the transport. The script prints
// one OUTCOME line, which these tests read.
#include "support/interop.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <memory>

using namespace interop;
using support::bytes;
using support::role;

namespace {

std::string role_name(role r) { return r == role::client ? "client" : "server"; }

template <class Policy>
struct python_session {
    std::unique_ptr<support::process> peer;
    std::unique_ptr<stream<Policy>> s;

    /// The peer's OUTCOME line (what follows "OUTCOME ").
    std::string outcome() const
    {
        const auto line = peer->wait_for_line("OUTCOME ", soon());
        support::ensure(line.has_value(), "strict_peer.py printed no outcome:\n" + peer->output());
        return *line;
    }
};

// tls_stream takes role `ours`, the script the other one; then one line
// goes from the client to the server and back. `then` are the script's
// arguments that choose how it ends.
template <class Policy>
python_session<Policy> start_python(role ours, int version, std::vector<std::string> then)
{
    const auto& c = support::credentials();
    std::vector<std::string> argv = {"python3", strict_peer_script(), "--version", dotted(version)};
    if (ours == role::client) {
        for (auto a : {"--role", "server", "--cert", c.chain_file.c_str(), "--key", c.key_file.c_str()})
            argv.emplace_back(a);
    }
    python_session<Policy> p;
    if (ours == role::client) {
        argv.insert(argv.end(), then.begin(), then.end());
        p.peer = std::make_unique<support::process>(argv);
        const auto port = p.peer->wait_for_line("LISTENING ", soon());
        support::ensure(port.has_value(), "strict_peer.py did not listen:\n" + p.peer->output());
        p.s = std::make_unique<stream<Policy>>(support::client_context(version), connect_to(std::stoi(*port)));
        p.s->set_io_timeout(patience);
        p.s->connect("localhost");
        p.s->write_all(bytes("ping from tls_stream\n"));
        support::ensure(read_line(*p.s) == "ping from tls_stream\n", "strict_peer.py echoed something else");
    } else {
        listener l;
        for (auto a : {"--role", "client", "--cafile", c.ca_file.c_str()})
            argv.emplace_back(a);
        argv.insert(argv.end(), {"--port", std::to_string(l.port())});
        argv.insert(argv.end(), then.begin(), then.end());
        p.peer = std::make_unique<support::process>(argv);
        p.s = std::make_unique<stream<Policy>>(support::server_context(version), l.accept(soon()));
        p.s->set_io_timeout(patience);
        p.s->accept();
        const std::string line = read_line(*p.s);
        p.s->write_all(bytes(line));
    }
    support::ensure(p.peer->wait_for_output("EXCHANGED", soon()), "no exchange:\n" + p.peer->output());
    return p;
}

} // namespace

TEMPLATE_TEST_CASE("a strict Python peer reads the closure of each policy, and full completes when it answers",
                   "[interop][python]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const role ours = GENERATE(role::client, role::server);
    CAPTURE(policy_name<TestType>(), dotted(version), role_name(ours));
    auto p = start_python<TestType>(ours, version, {"--then", "read", "--answer"});

    std::error_code ec;
    const tls::shutdown_result r = p.s->shutdown(ec);
    p.s.reset();
    const std::string outcome = p.outcome();
    INFO("strict_peer.py:\n" << p.peer->output());
    CHECK(!ec);
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(outcome == "eof_error");
        CHECK(support::to_string(r) == "quiet");
    } else {
        CHECK(outcome == "close_notify");
        CHECK(support::to_string(r) == (TestType::mode == tls::close_mode::full ? "complete" : "sent"));
    }
    CHECK(p.peer->wait(patience).value_or(-1) == 0);
}

TEST_CASE("full ends promptly, not confirmed, when a strict Python peer closes without answering", "[interop][python]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const role ours = GENERATE(role::client, role::server);
    CAPTURE(dotted(version), role_name(ours));
    auto p = start_python<tls::full_shutdown>(ours, version, {"--then", "read"});
    p.s->set_shutdown_timeout(patience); // a close that waited for it would show

    std::error_code ec;
    tls::shutdown_result r{};
    const auto took = support::time_of([&] { r = p.s->shutdown(ec); });
    CHECK(p.outcome() == "close_notify");
    CHECK(support::to_string(r) == "sent");
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(took < patience / 2);
}

TEMPLATE_TEST_CASE("a strict Python peer's unwrap() completes against fast and full, not against quiet",
                   "[interop][python]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const role ours = GENERATE(role::client, role::server);
    CAPTURE(policy_name<TestType>(), dotted(version), role_name(ours));
    auto p = start_python<TestType>(ours, version, {"--then", "unwrap"});

    // The peer closes first: a clean end for us, then our policy answers.
    std::byte buf[64];
    std::error_code ec;
    CHECK(p.s->read_some(buf, ec) == 0);
    CHECK(!ec);
    const tls::shutdown_result r = p.s->shutdown(ec);
    CHECK(!ec);
    p.s.reset();
    const std::string outcome = p.outcome();
    INFO("strict_peer.py:\n" << p.peer->output());
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(support::to_string(r) == "quiet");
        CHECK(outcome == "unwrap_eof");
    } else {
        CHECK(support::to_string(r) == "complete");
        CHECK(outcome == "unwrap_complete");
    }
}

TEMPLATE_TEST_CASE("a Python client still uploading gets the whole early reply and the close_notify (lingering close)",
                   "[interop][python][scenario-25]", tls::fast_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(dotted(version));

    listener l;
    support::process peer({"python3", std::string(TLS_STREAM_INTEROP_DIR) + "/upload_client.py", "--port",
                           std::to_string(l.port()), "--cafile", support::credentials().ca_file, "--version",
                           dotted(version)});
    {
        stream<TestType> s(support::server_context(version), l.accept(soon()));
        s.set_io_timeout(patience);
        s.accept();
        CHECK(read_line(s) == "request\n");
        // Some of the upload, so it is under way when we answer early.
        std::byte buf[16384];
        std::size_t got = 0;
        while (got < std::size_t{64} * 1024)
            got += s.read_some(buf);
        s.write_all(bytes(support::pattern(std::size_t{64} * 1024, 7)));
    } // the policy's close, then the socket closes
    const auto line = peer.wait_for_line("RECEIVED ", soon());
    REQUIRE(line.has_value());
    CHECK(*line == "65536 close_notify");
}
