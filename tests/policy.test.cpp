// Shutdown policies on the wire: what a raw OpenSSL peer sees when a
// tls_stream closes by fast_shutdown, quiet_shutdown or full_shutdown, what
// shutdown() reports, and how long it takes (DESIGN.md, "Policies on the wire").
#include "support/checks.hpp"
#include "support/support.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>

namespace {

using namespace std::chrono_literals;
using support::ending;
using support::role;
using support::to_string;
using ms = std::chrono::milliseconds;

using support::brief_full; // full_shutdown with a short deadline, as a user would derive it
using support::stream;

/// fast_shutdown with a long deadline: if fast ever waited for the peer, it
/// would show as seconds, not milliseconds.
struct patient_fast : tls::fast_shutdown {
    static constexpr std::chrono::milliseconds timeout{5000};
};

/// A support::session whose tls_stream has done one round trip of
/// application data (support::ping_pong). The check stays here, not in
/// support, because it is a Catch2 assertion.
template <class Policy>
struct connection : support::session<stream<Policy>> {
    connection(int version, bool tcp, role r = role::client) : support::session<stream<Policy>>(version, tcp, r)
    {
        const std::string pong = support::ping_pong(*this->stream, this->peer);
        REQUIRE(pong == "pong");
    }
};

/// What happened when a stream closed against a peer that reads our
/// close_notify and then stays silent with its socket open.
struct silent_close {
    ms elapsed{};
    std::error_code ec;                                       // shutdown(ec) only
    tls::shutdown_result result = tls::shutdown_result::none; // shutdown(ec) only
    int flags = 0;                                            // SSL_get_shutdown after shutdown(ec)
    ending peer_saw{};
    int close_notify_received = -1;
};

enum class closed_by { shutdown_call, destructor };

template <class Policy>
silent_close close_against_silent_peer(int version, bool tcp, closed_by how, std::optional<ms> timeout = {})
{
    connection<Policy> c(version, tcp);
    if (timeout)
        c.stream->set_shutdown_timeout(*timeout);
    silent_close out;
    support::gate done;
    support::peer_thread t([&] {
        out.peer_saw = c.peer.read_to_end().second;
        // Keep the socket open and send nothing until the main thread has
        // measured the close.
        support::ensure(done.wait_for(10s), "raw peer: main thread never finished");
    });
    {
        support::open_on_exit guard{done};
        if (how == closed_by::shutdown_call) {
            out.elapsed = support::time_of([&] { out.result = c.stream->shutdown(out.ec); });
            out.flags = SSL_get_shutdown(c.stream->native_handle());
        } else {
            out.elapsed = support::time_of([&] { c.stream.reset(); });
        }
    }
    t.join();
    out.close_notify_received = c.peer.count_alerts(false, 0);
    return out;
}

} // namespace

// ---------------------------------------------------------------- policy types

namespace {
struct never_waits : tls::full_shutdown {
    static constexpr std::chrono::milliseconds timeout{0};
};
struct negative_timeout : tls::full_shutdown {
    static constexpr std::chrono::milliseconds timeout{-1};
};
struct no_mode {
    [[maybe_unused]] static constexpr std::chrono::milliseconds timeout{100};
};
} // namespace

TEST_CASE("a policy is a type with a mode and a non-negative timeout that a derived type can override", "[policy]")
{
    STATIC_REQUIRE(tls::shutdown_policy<tls::fast_shutdown>);
    STATIC_REQUIRE(tls::shutdown_policy<tls::quiet_shutdown>);
    STATIC_REQUIRE(tls::shutdown_policy<tls::full_shutdown>);
    STATIC_REQUIRE(tls::fast_shutdown::timeout == std::chrono::seconds(1));
    STATIC_REQUIRE(tls::quiet_shutdown::timeout == std::chrono::milliseconds(0));
    STATIC_REQUIRE(tls::full_shutdown::timeout == std::chrono::seconds(3));
    STATIC_REQUIRE(brief_full::timeout == std::chrono::milliseconds(300));
    STATIC_REQUIRE(brief_full::mode == tls::close_mode::full);
    STATIC_REQUIRE(tls::shutdown_policy<never_waits>);
    STATIC_REQUIRE_FALSE(tls::shutdown_policy<negative_timeout>);
    STATIC_REQUIRE_FALSE(tls::shutdown_policy<no_mode>);
    STATIC_REQUIRE(std::is_same_v<tls::tls_stream<tls::fd_socket>::policy_type, tls::full_shutdown>);
}

// ---------------------------------------------------------------- wire outcome of each policy

TEMPLATE_TEST_CASE("destroying an open stream puts exactly its policy's closure on the wire", "[scenario-1][policy]",
                   TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    const role r = GENERATE(role::client, role::server);
    CAPTURE(version, tcp);
    INFO("tls_stream is the " << (r == role::client ? "client" : "server"));

    connection<TestType> c(version, tcp, r);
    std::string data;
    ending how{};
    support::peer_thread t([&] {
        std::tie(data, how) = c.peer.read_to_end();
        if (TestType::mode == tls::close_mode::full && how == ending::close_notify)
            c.peer.shutdown(); // full waits for our answer
    });
    c.stream.reset();
    t.join();

    CHECK(data.empty());
    support::check_peer_saw_closure(TestType::mode, how, c.peer);
}

// ---------------------------------------------------------------- fast

TEST_CASE("fast shutdown returns at once without waiting for the peer's close_notify",
          "[scenario-1][scenario-16][policy]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    SECTION("shutdown() reports sent")
    {
        const silent_close r = close_against_silent_peer<patient_fast>(version, tcp, closed_by::shutdown_call);
        CHECK(r.elapsed < 1000ms);
        CHECK_FALSE(r.ec);
        CHECK(to_string(r.result) == "sent");
        CHECK((r.flags & SSL_SENT_SHUTDOWN) != 0);
        CHECK((r.flags & SSL_RECEIVED_SHUTDOWN) == 0);
        CHECK(to_string(r.peer_saw) == "close_notify");
        CHECK(r.close_notify_received == 1);
    }
    SECTION("the destructor")
    {
        const silent_close r = close_against_silent_peer<patient_fast>(version, tcp, closed_by::destructor);
        CHECK(r.elapsed < 1000ms);
        CHECK(to_string(r.peer_saw) == "close_notify");
        CHECK(r.close_notify_received == 1);
    }
}

// ---------------------------------------------------------------- full

TEST_CASE("full shutdown completes when the peer answers close_notify with its own", "[scenario-1][policy]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::full_shutdown> c(version, tcp);
    ending how{};
    int answered = -1;
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second;
        if (how == ending::close_notify)
            answered = c.peer.shutdown();
    });
    std::error_code ec;
    const tls::shutdown_result result = c.stream->shutdown(ec);
    const int flags = SSL_get_shutdown(c.stream->native_handle());
    t.join();

    CHECK_FALSE(ec);
    CHECK(to_string(result) == "complete");
    CHECK((flags & SSL_SENT_SHUTDOWN) != 0);
    CHECK((flags & SSL_RECEIVED_SHUTDOWN) != 0);
    CHECK(to_string(how) == "close_notify");
    CHECK(answered == 1); // the peer's SSL_shutdown completed: ours had arrived, its own went out
    CHECK(c.peer.count_alerts(false, 0) == 1);
    CHECK(c.peer.count_alerts(true, 0) == 1);
}

TEST_CASE("full shutdown returns errc::timeout after its policy's timeout when the peer is silent",
          "[scenario-16][policy]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    SECTION("shutdown(ec)")
    {
        const silent_close r = close_against_silent_peer<brief_full>(version, tcp, closed_by::shutdown_call);
        CHECK(r.elapsed >= 300ms);
        CHECK(r.elapsed < 300ms + 2s);
        CHECK(r.ec == tls::errc::timeout);
        CHECK(to_string(r.result) == "sent");
        CHECK(to_string(r.peer_saw) == "close_notify");
        CHECK(r.close_notify_received == 1);
    }
    SECTION("the destructor")
    {
        const silent_close r = close_against_silent_peer<brief_full>(version, tcp, closed_by::destructor);
        CHECK(r.elapsed >= 300ms);
        CHECK(r.elapsed < 300ms + 2s);
        CHECK(to_string(r.peer_saw) == "close_notify");
        CHECK(r.close_notify_received == 1);
    }
}

TEST_CASE("set_shutdown_timeout overrides the policy's timeout at run time", "[policy]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version);

    SECTION("shorter than the policy's (full_shutdown, 3 s -> 200 ms)")
    {
        const silent_close r =
            close_against_silent_peer<tls::full_shutdown>(version, true, closed_by::shutdown_call, 200ms);
        CHECK(r.elapsed >= 200ms);
        CHECK(r.elapsed < 1500ms);
        CHECK(r.ec == tls::errc::timeout);
        CHECK(to_string(r.result) == "sent");
    }
    SECTION("longer than the policy's (brief_full, 300 ms -> 900 ms)")
    {
        const silent_close r = close_against_silent_peer<brief_full>(version, false, closed_by::shutdown_call, 900ms);
        CHECK(r.elapsed >= 900ms);
        CHECK(r.elapsed < 900ms + 2s);
        CHECK(r.ec == tls::errc::timeout);
        CHECK(to_string(r.result) == "sent");
    }
    SECTION("through the destructor (full_shutdown, 3 s -> 200 ms)")
    {
        const silent_close r =
            close_against_silent_peer<tls::full_shutdown>(version, false, closed_by::destructor, 200ms);
        CHECK(r.elapsed >= 200ms);
        CHECK(r.elapsed < 1500ms);
    }
}

TEST_CASE("full shutdown reports stream_truncated at once when the peer ends the transport without close_notify",
          "[scenario-7][policy]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    bool tcp = true;
    bool reset = false;
    SECTION("FIN over TCP") {}
    SECTION("FIN over AF_UNIX") { tcp = false; }
    SECTION("RST over TCP") { reset = true; }
    CAPTURE(version, tcp, reset);

    connection<tls::full_shutdown> c(version, tcp);
    ending how{};
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second;
        if (reset)
            support::arm_reset(c.peer.fd());
        c.peer.close_socket();
    });
    std::error_code ec;
    tls::shutdown_result result{};
    const ms elapsed = support::time_of([&] { result = c.stream->shutdown(ec); });
    const int flags = SSL_get_shutdown(c.stream->native_handle());
    t.join();

    INFO("shutdown: " << ec.message());
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(to_string(result) == "sent");
    CHECK((flags & SSL_RECEIVED_SHUTDOWN) == 0);
    CHECK(elapsed < 1000ms); // far below full_shutdown's 3 s
    CHECK(to_string(how) == "close_notify");
    CHECK(c.peer.count_alerts(false, 0) == 1);
    CHECK(c.peer.received_alerts() == 1);
}

TEST_CASE("full shutdown sends nothing after its close_notify when the peer half-closes without answering",
          "[scenario-7][policy]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::full_shutdown> c(version, tcp);
    ending how{};
    support::raw_end after;
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second;
        // A bare FIN, but keep reading: whatever we send after our
        // close_notify shows up here.
        support::ensure(::shutdown(c.peer.fd(), SHUT_WR) == 0, "shutdown(SHUT_WR)");
        after = support::read_raw_until_eof(c.peer.fd());
    });
    std::error_code ec;
    const tls::shutdown_result result = c.stream->shutdown(ec);
    c.stream.reset();
    t.join();

    INFO("shutdown: " << ec.message());
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(to_string(result) == "sent");
    CHECK(to_string(how) == "close_notify");
    CHECK(c.peer.count_alerts(false, 0) == 1);
    INFO("bytes after our close_notify: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
}

// ---------------------------------------------------------------- the peer closed first

TEMPLATE_TEST_CASE("after the peer's close_notify each policy answers as its table row says and returns at once",
                   "[scenario-2][policy]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<TestType> c(version, tcp);
    int peer_shutdown = -1;
    ending how{};
    support::peer_thread t([&] {
        peer_shutdown = c.peer.shutdown();
        how = c.peer.read_to_end().second;
    });
    std::byte buf[16];
    std::error_code ec;
    const std::size_t n = c.stream->read_some(buf, ec);
    REQUIRE_FALSE(ec);
    REQUIRE(n == 0); // the peer's close_notify

    tls::shutdown_result result{};
    const ms elapsed = support::time_of([&] { result = c.stream->shutdown(ec); });
    const int flags = SSL_get_shutdown(c.stream->native_handle());
    c.stream.reset(); // a quiet close ends the peer's read only when the socket closes
    t.join();

    CHECK(peer_shutdown == 0); // its close_notify went out, ours had not arrived yet
    CHECK_FALSE(ec);
    CHECK(elapsed < 500ms);
    support::check_peer_saw_closure(TestType::mode, how, c.peer);
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(to_string(result) == "quiet");
    } else {
        CHECK(to_string(result) == "complete");
        CHECK((flags & SSL_SENT_SHUTDOWN) != 0);
        CHECK((flags & SSL_RECEIVED_SHUTDOWN) != 0);
    }
}

// ---------------------------------------------------------------- quiet

TEST_CASE("quiet shutdown reports quiet and puts nothing on the wire", "[scenario-1][scenario-16][policy]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::quiet_shutdown> c(version, tcp);
    std::error_code ec;
    tls::shutdown_result result{};
    const ms elapsed = support::time_of([&] { result = c.stream->shutdown(ec); });
    // shutdown() has returned: anything it wrote is in the peer's socket now.
    const std::string during = support::read_raw_available(c.peer.fd());
    c.stream.reset();
    const support::raw_end after = support::read_raw_until_eof(c.peer.fd());

    CHECK_FALSE(ec);
    CHECK(to_string(result) == "quiet");
    CHECK(elapsed < 500ms);
    INFO("bytes written by shutdown(): " << during.size() << ", by the destructor: " << after.bytes.size());
    CHECK(during.empty());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
}
