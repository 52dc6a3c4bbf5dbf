// The destructor, one test per row of DESIGN.md's state table: what goes on
// the wire (seen by a raw OpenSSL peer or by reading the raw socket) and what
// is left on the thread's OpenSSL error queue when a tls_stream is destroyed.
#include "support/checks.hpp"
#include "support/support.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <exception>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

namespace {

using namespace std::chrono_literals;
using support::ending;
using support::to_string;

using support::stream;

/// How many whole TLS records `wire` holds; -1 if it is not a sequence of
/// whole records.
int count_records(const std::string& wire)
{
    const auto types = support::record_types(wire);
    return types ? static_cast<int>(types->size()) : -1;
}

/// A support::session whose client tls_stream has done one round trip of
/// application data (support::ping_pong). The check stays here, not in
/// support, because it is a Catch2 assertion.
template <class Policy>
struct connection : support::session<stream<Policy>> {
    connection(int version, bool tcp) : support::session<stream<Policy>>(version, tcp)
    {
        const std::string pong = support::ping_pong(*this->stream, this->peer);
        REQUIRE(pong == "pong");
    }
};

/// A client context that trusts nothing we present: verification fails.
tls::context untrusting_client(int version)
{
    tls::context ctx = tls::context::client();
    REQUIRE(SSL_CTX_set_min_proto_version(ctx.native_handle(), version) == 1);
    REQUIRE(SSL_CTX_set_max_proto_version(ctx.native_handle(), version) == 1);
    return ctx;
}

} // namespace

TEMPLATE_TEST_CASE("the destructor never throws", "[destructor]", TLS_STREAM_TEST_POLICIES)
{
    STATIC_REQUIRE(std::is_nothrow_destructible_v<stream<TestType>>);
    STATIC_REQUIRE(std::is_nothrow_destructible_v<tls::tls_stream<tls::fd_socket, TestType>>);
}

// ---------------------------------------------------------------- moved-from / empty

TEMPLATE_TEST_CASE("destroying a moved-from stream does nothing and the moved-to stream keeps the connection",
                   "[destructor]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<TestType> c(version, tcp);
    std::optional<stream<TestType>> moved(std::in_place, std::move(*c.stream));
    c.stream.reset(); // the moved-from stream
    const unsigned long left = ERR_peek_error();

    std::string got;
    int alerts_before_data = -1;
    ending how{};
    support::peer_thread t([&] {
        got = c.peer.read_exactly(10);
        alerts_before_data = c.peer.received_alerts();
        c.peer.write("still here");
        how = c.peer.read_to_end().second;
        if (TestType::mode == tls::close_mode::full && how == ending::close_notify)
            c.peer.shutdown();
    });
    moved->write_all(support::bytes("after move"));
    const std::string reply = support::read_exactly(*moved, 10);
    moved.reset(); // the moved-to stream closes by its policy
    t.join();

    CHECK(left == 0);
    CHECK(got == "after move");
    CHECK(alerts_before_data == 0);
    CHECK(reply == "still here");
    // Exactly the moved-to stream's closure, nothing from the moved-from one.
    support::check_peer_saw_closure(TestType::mode, how, c.peer);
}

// ---------------------------------------------------------------- handshake never completed

TEMPLATE_TEST_CASE("destroying a stream that never ran its handshake puts no byte on the wire",
                   "[scenario-12][destructor]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    support::socket_pair pair = support::make_pair(tcp);
    support::set_socket_timeouts(pair.b.native_handle());
    const tls::context ctx = support::client_context(version);
    ERR_clear_error();
    {
        stream<TestType> s(ctx, std::move(pair.a));
    } // closes the socket too
    const unsigned long left = ERR_peek_error();
    const support::raw_end wire = support::read_raw_until_eof(pair.b.native_handle());

    CHECK(left == 0);
    INFO("bytes on the wire: " << wire.bytes.size());
    CHECK(wire.bytes.empty());
    CHECK(wire.clean_eof);
}

TEMPLATE_TEST_CASE("destroying a stream whose handshake failed sends no close_notify and leaves the error queue empty",
                   "[scenario-12][destructor]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    support::socket_pair pair = support::make_pair(tcp);
    const tls::context server = support::server_context(version);
    support::raw_peer peer(server, std::move(pair.b));
    const tls::context client = untrusting_client(version);
    std::optional<stream<TestType>> s(std::in_place, client, std::move(pair.a));
    s->set_io_timeout(5s);

    bool accepted = true;
    support::raw_end after;
    support::peer_thread t([&] {
        try {
            peer.accept();
        } catch (const std::exception&) {
            accepted = false; // our fatal alert (unknown CA) ended it
        }
        // Everything we send after the failed handshake: must be nothing.
        after = support::read_raw_until_eof(peer.fd());
    });
    std::string what;
    try {
        s->connect("localhost");
    } catch (const std::system_error& e) {
        what = e.what();
    }
    ERR_clear_error(); // whatever connect() left is not the destructor's
    s.reset();
    const unsigned long left = ERR_peek_error();
    t.join();

    INFO("connect: " << what);
    CHECK(what.find("certificate verify failed") != std::string::npos);
    CHECK_FALSE(accepted);
    CHECK(peer.count_alerts(false, 0) == 0);
    CHECK(peer.received_alerts() == 1); // only our fatal alert at the failure
    INFO("bytes after the failed handshake: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
    CHECK(left == 0); // no "shutdown while in init"
}

TEMPLATE_TEST_CASE("destroying a stream whose handshake timed out puts nothing more on the wire",
                   "[scenario-12][destructor]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    support::socket_pair pair = support::make_pair(tcp);
    support::set_socket_timeouts(pair.b.native_handle());
    const tls::context ctx = support::client_context(version);
    std::optional<stream<TestType>> s(std::in_place, ctx, std::move(pair.a));
    s->set_io_timeout(200ms);

    std::error_code ec;
    s->connect("localhost", ec); // the server never answers
    const std::string before = support::read_raw_available(pair.b.native_handle());
    ERR_clear_error();
    s.reset();
    const unsigned long left = ERR_peek_error();
    const support::raw_end after = support::read_raw_until_eof(pair.b.native_handle());

    CHECK(ec == tls::errc::timeout);
    CHECK(count_records(before) == 1); // our ClientHello, nothing else
    INFO("bytes after the failed handshake: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
    CHECK(left == 0);
}

// ---------------------------------------------------------------- a fatal error was seen

TEMPLATE_TEST_CASE("destroying a stream that saw a fatal error puts nothing more on the wire",
                   "[scenario-13][destructor]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    bool garbage = true;
    bool shutdown_first = false;
    SECTION("the peer sends bytes that are not TLS") {}
    SECTION("the peer sends bytes that are not TLS; shutdown() is called before the destructor")
    {
        shutdown_first = true;
    }
    SECTION("the peer ends the transport without close_notify (half-close)") { garbage = false; }

    connection<TestType> c(version, tcp);
    const int peer_fd = c.peer.fd();
    if (garbage) {
        const std::string junk = "this is not TLS";
        REQUIRE(::send(peer_fd, junk.data(), junk.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(junk.size()));
    } else {
        REQUIRE(::shutdown(peer_fd, SHUT_WR) == 0);
    }

    std::byte buf[64];
    std::error_code ec;
    const std::size_t n = c.stream->read_some(buf, ec);
    INFO("read_some: " << ec.message());
    CHECK(n == 0);
    REQUIRE(ec);
    if (garbage)
        CHECK(ec.category() == tls::openssl_category());
    else
        CHECK(ec == tls::errc::stream_truncated);

    // What OpenSSL sent at the moment of the failure (its fatal alert, if any).
    const std::string before = support::read_raw_available(peer_fd);
    std::error_code again;
    tls::shutdown_result result = tls::shutdown_result::none;
    if (shutdown_first)
        result = c.stream->shutdown(again);
    const std::string after_shutdown = support::read_raw_available(peer_fd);
    c.stream.reset();
    const unsigned long left = ERR_peek_error();
    const support::raw_end after = support::read_raw_until_eof(peer_fd);

    INFO("bytes at the failure: " << before.size());
    CHECK(count_records(before) >= 0);
    CHECK(count_records(before) <= 1);
    if (shutdown_first) {
        CHECK(again == ec); // reports the fatal error again
        CHECK(to_string(result) == "none");
        CHECK(after_shutdown.empty());
    }
    INFO("bytes after the failure: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
    CHECK(left == 0);
}

TEMPLATE_TEST_CASE("destroying a stream whose write timed out puts nothing more on the wire", "[destructor]",
                   TLS_STREAM_TEST_POLICIES)
{
    // A write that times out leaves the stream failed with (possibly) half a
    // record still in OpenSSL's buffer; OpenSSL itself is not in an error
    // state, so only the library stands between a destructor and a flush
    // plus close_notify. AF_UNIX: every byte a send() accepted is already in
    // the peer's receive queue, so "before" and "after" split exactly.
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version);

    connection<TestType> c(version, false);
    c.stream->set_io_timeout(300ms);
    const std::string big(std::size_t{8} * 1024 * 1024,
                          'x'); // far more than the socket buffers hold; the peer reads nothing
    std::error_code ec;
    c.stream->write_all(support::bytes(big), ec);
    REQUIRE(ec == tls::errc::timeout);

    const std::string before = support::read_raw_available(c.peer.fd());
    c.stream.reset();
    const unsigned long left = ERR_peek_error();
    const support::raw_end after = support::read_raw_until_eof(c.peer.fd());

    INFO("bytes before destruction: " << before.size() << ", after: " << after.bytes.size());
    CHECK_FALSE(before.empty());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
    CHECK(left == 0);
}

// ---------------------------------------------------------------- shutdown() already ran

TEMPLATE_TEST_CASE("destroying a stream after shutdown() only frees it", "[destructor]", tls::fast_shutdown,
                   tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);
    constexpr bool quiet = TestType::mode == tls::close_mode::quiet;
    constexpr bool full = TestType::mode == tls::close_mode::full;

    connection<TestType> c(version, tcp);
    ending how{};
    support::raw_end after;
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second;
        if (full && how == ending::close_notify)
            c.peer.shutdown();
        // After our close_notify (or, for quiet, after the transport ended):
        // nothing more may arrive, only the end of the transport.
        if (!quiet)
            after = support::read_raw_until_eof(c.peer.fd());
    });
    std::error_code ec1;
    std::error_code ec2;
    const tls::shutdown_result first = c.stream->shutdown(ec1);
    const tls::shutdown_result second = c.stream->shutdown(ec2);
    c.stream.reset();
    const unsigned long left = ERR_peek_error();
    t.join();

    CHECK_FALSE(ec1);
    CHECK(ec2 == ec1);
    CHECK(to_string(second) == to_string(first));
    CHECK(left == 0);
    support::check_peer_saw_closure(TestType::mode, how, c.peer);
    if constexpr (quiet) {
        CHECK(to_string(first) == "quiet");
    } else {
        CHECK(to_string(first) == (full ? "complete" : "sent"));
        INFO("bytes after our close_notify: " << after.bytes.size());
        CHECK(after.bytes.empty());
        CHECK(after.clean_eof);
    }
}

TEST_CASE("after a timed-out full shutdown a second shutdown() returns at once with the same outcome",
          "[scenario-18][destructor]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::full_shutdown> c(version, tcp);
    c.stream->set_shutdown_timeout(300ms);
    ending how{};
    support::raw_end after;
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second;
        // Silent from here on, but reading: the end of the transport must
        // be all that follows our close_notify.
        after = support::read_raw_until_eof(c.peer.fd());
    });
    std::error_code ec1;
    std::error_code ec2;
    const tls::shutdown_result first = c.stream->shutdown(ec1);
    tls::shutdown_result second{};
    const std::chrono::milliseconds elapsed = support::time_of([&] { second = c.stream->shutdown(ec2); });
    c.stream.reset();
    t.join();

    CHECK(ec1 == tls::errc::timeout);
    CHECK(to_string(first) == "sent");
    CHECK(ec2 == ec1);
    CHECK(to_string(second) == to_string(first));
    CHECK(elapsed < 100ms); // no second wait
    CHECK(to_string(how) == "close_notify");
    CHECK(c.peer.count_alerts(false, 0) == 1);
    INFO("bytes after our close_notify: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
}

// ---------------------------------------------------------------- open

TEMPLATE_TEST_CASE("destroying an open stream runs its policy and leaves the error queue empty", "[destructor]",
                   TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<TestType> c(version, tcp);
    ending how{};
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second;
        if (TestType::mode == tls::close_mode::full && how == ending::close_notify)
            c.peer.shutdown();
    });
    c.stream.reset();
    const unsigned long left = ERR_peek_error();
    t.join();

    CHECK(left == 0);
    support::check_peer_saw_closure(TestType::mode, how, c.peer);
}

TEST_CASE("destroying an open full-policy stream swallows a truncated close and returns promptly",
          "[scenario-7][destructor]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::full_shutdown> c(version, tcp);
    ending how{};
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second;
        c.peer.close_socket(); // FIN instead of close_notify
    });
    const std::chrono::milliseconds elapsed = support::time_of([&] { c.stream.reset(); });
    const unsigned long left = ERR_peek_error();
    t.join();

    CHECK(elapsed < 1000ms); // the truncation ends the wait, not the 3 s timeout
    CHECK(left == 0);
    CHECK(to_string(how) == "close_notify");
    CHECK(c.peer.count_alerts(false, 0) == 1);
}
