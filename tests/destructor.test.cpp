// The destructor, one test per row of DESIGN.md's state table: what goes on
// the wire (seen by a raw OpenSSL peer or by reading the raw socket) and what
// is left on the thread's OpenSSL error queue when a tls_stream is destroyed.
#include "support/support.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

namespace {

using namespace std::chrono_literals;
using support::ending;

template <class Policy>
using stream = tls::tls_stream<tls::unique_socket, Policy>;

std::string name(ending e) { return support::to_string(e); }

std::string name(tls::shutdown_result r)
{
    switch (r) {
    case tls::shutdown_result::none: return "none";
    case tls::shutdown_result::quiet: return "quiet";
    case tls::shutdown_result::sent: return "sent";
    case tls::shutdown_result::complete: return "complete";
    }
    return "?";
}

/// Runs `f` as the peer on its own thread, with SIGPIPE blocked on that
/// thread only: the raw peer writes with plain write() (OpenSSL's socket
/// BIO), and OpenSSL answers an unexpected EOF with a fatal alert, which on
/// an AF_UNIX socket whose other end is closed would raise SIGPIPE. The
/// process's signal handling is left untouched.
template <class F>
support::peer_thread run_peer(F&& f)
{
    return support::peer_thread([fn = std::forward<F>(f)]() mutable {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &set, nullptr);
        fn();
    });
}

template <class Stream>
std::string read_exact(Stream& s, std::size_t n)
{
    std::string out;
    std::byte buf[256];
    while (out.size() < n) {
        const std::size_t got = s.read_some(std::span(buf, std::min(sizeof buf, n - out.size())));
        if (got == 0)
            break;
        out += support::text(std::span(buf, got));
    }
    return out;
}

std::string peer_read_exact(support::raw_peer& p, std::size_t n)
{
    std::string out;
    while (out.size() < n) {
        ending how{};
        const std::string chunk = p.read_some(n - out.size(), how);
        support::ensure(!chunk.empty(), "raw peer: stream ended early: " + name(how));
        out += chunk;
    }
    return out;
}

/// Alerts the raw peer received (of any kind).
int received_alerts(const support::raw_peer& p)
{
    int n = 0;
    for (const support::alert& a : p.alerts())
        n += a.sent ? 0 : 1;
    return n;
}

/// Reads whatever `fd` holds right now without waiting; stops at EOF.
std::string read_raw_available(int fd)
{
    std::string out;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            out.append(buf, static_cast<std::size_t>(n));
        else if (n < 0 && errno == EINTR)
            continue;
        else
            return out;
    }
}

struct raw_end {
    std::string bytes;      // everything read before the end
    bool clean_eof = false; // recv() returned 0
    int error = 0;          // errno otherwise (EAGAIN: the 10 s socket timeout)
};

/// Reads `fd` (blocking, bounded by its socket timeout) until it ends.
raw_end read_raw_until_eof(int fd)
{
    raw_end r;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            r.bytes.append(buf, static_cast<std::size_t>(n));
        } else if (n == 0) {
            r.clean_eof = true;
            return r;
        } else if (errno != EINTR) {
            r.error = errno;
            return r;
        }
    }
}

/// How many whole TLS records `wire` holds; -1 if it is not a sequence of
/// whole records.
int count_records(const std::string& wire)
{
    std::size_t at = 0;
    int n = 0;
    while (at < wire.size()) {
        if (wire.size() - at < 5)
            return -1;
        const std::size_t len = static_cast<std::size_t>(static_cast<unsigned char>(wire[at + 3])) << 8
                                | static_cast<unsigned char>(wire[at + 4]);
        at += 5 + len;
        if (at > wire.size())
            return -1;
        ++n;
    }
    return n;
}

/// A client tls_stream `s` connected to a raw OpenSSL server, with one round
/// trip of application data already done (TLS 1.3 session tickets consumed,
/// no unread bytes in either socket).
template <class Policy>
struct connection {
    connection(int version, bool tcp) : connection(version, support::make_pair(tcp)) {}

    tls::context own_ctx;
    tls::context peer_ctx;
    support::raw_peer peer;
    std::optional<stream<Policy>> s;

private:
    connection(int version, support::socket_pair pair)
        : own_ctx(support::client_context(version)), peer_ctx(support::server_context(version)),
          peer(peer_ctx, std::move(pair.b)), s(std::in_place, own_ctx, std::move(pair.a))
    {
        s->set_io_timeout(5s);
        auto t = run_peer([this] {
            peer.accept();
            support::ensure(peer_read_exact(peer, 4) == "ping", "raw peer: expected ping");
            peer.write("pong");
        });
        s->connect("localhost");
        s->write_all(support::bytes("ping"));
        const std::string pong = read_exact(*s, 4);
        t.join();
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

TEMPLATE_TEST_CASE("the destructor never throws", "[destructor]", tls::fast_shutdown, tls::quiet_shutdown,
                   tls::full_shutdown)
{
    STATIC_REQUIRE(std::is_nothrow_destructible_v<stream<TestType>>);
    STATIC_REQUIRE(std::is_nothrow_destructible_v<tls::tls_stream<tls::fd_socket, TestType>>);
}

// ---------------------------------------------------------------- moved-from / empty

TEMPLATE_TEST_CASE("destroying a moved-from stream does nothing and the moved-to stream keeps the connection",
                   "[destructor]", tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<TestType> c(version, tcp);
    std::optional<stream<TestType>> moved(std::in_place, std::move(*c.s));
    c.s.reset(); // the moved-from stream
    const unsigned long left = ERR_peek_error();

    std::string got;
    int alerts_before_data = -1;
    ending how{};
    auto t = run_peer([&] {
        got = peer_read_exact(c.peer, 10);
        alerts_before_data = received_alerts(c.peer);
        c.peer.write("still here");
        how = c.peer.read_to_end().second;
        if (TestType::mode == tls::close_mode::full && how == ending::close_notify)
            c.peer.shutdown();
    });
    moved->write_all(support::bytes("after move"));
    const std::string reply = read_exact(*moved, 10);
    moved.reset(); // the moved-to stream closes by its policy
    t.join();

    CHECK(left == 0);
    CHECK(got == "after move");
    CHECK(alerts_before_data == 0);
    CHECK(reply == "still here");
    // Exactly the moved-to stream's closure, nothing from the moved-from one.
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(name(how) == "unexpected_eof");
        CHECK(received_alerts(c.peer) == 0);
    } else {
        CHECK(name(how) == "close_notify");
        CHECK(c.peer.count_alerts(false, 0) == 1);
        CHECK(received_alerts(c.peer) == 1);
    }
}

// ---------------------------------------------------------------- handshake never completed

TEMPLATE_TEST_CASE("destroying a stream that never ran its handshake puts no byte on the wire", "[destructor]",
                   tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
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
    const raw_end wire = read_raw_until_eof(pair.b.native_handle());

    CHECK(left == 0);
    INFO("bytes on the wire: " << wire.bytes.size());
    CHECK(wire.bytes.empty());
    CHECK(wire.clean_eof);
}

TEMPLATE_TEST_CASE("destroying a stream whose handshake failed sends no close_notify and leaves the error queue empty",
                   "[destructor]", tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    support::socket_pair pair = support::make_pair(tcp);
    const tls::context server = support::server_context(version);
    support::raw_peer peer(server, std::move(pair.b));
    const tls::context client = untrusting_client(version);
    std::optional<stream<TestType>> s(std::in_place, client, std::move(pair.a));
    s->set_io_timeout(5s);

    bool accepted = true;
    raw_end after;
    auto t = run_peer([&] {
        try {
            peer.accept();
        } catch (const std::exception&) {
            accepted = false; // our fatal alert (unknown CA) ended it
        }
        // Everything we send after the failed handshake: must be nothing.
        after = read_raw_until_eof(peer.fd());
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
    CHECK(received_alerts(peer) == 1); // only our fatal alert at the failure
    INFO("bytes after the failed handshake: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
    CHECK(left == 0); // no "shutdown while in init"
}

TEMPLATE_TEST_CASE("destroying a stream whose handshake timed out puts nothing more on the wire", "[destructor]",
                   tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    support::socket_pair pair = support::make_pair(tcp);
    support::set_socket_timeouts(pair.b.native_handle());
    const tls::context ctx = support::client_context(version);
    std::optional<stream<TestType>> s(std::in_place, ctx, std::move(pair.a));
    s->set_io_timeout(200ms);

    std::error_code ec;
    s->connect("localhost", ec); // the server never answers
    const std::string before = read_raw_available(pair.b.native_handle());
    ERR_clear_error();
    s.reset();
    const unsigned long left = ERR_peek_error();
    const raw_end after = read_raw_until_eof(pair.b.native_handle());

    CHECK(ec == tls::errc::timeout);
    CHECK(count_records(before) == 1); // our ClientHello, nothing else
    INFO("bytes after the failed handshake: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
    CHECK(left == 0);
}

// ---------------------------------------------------------------- a fatal error was seen

TEMPLATE_TEST_CASE("destroying a stream that saw a fatal error puts nothing more on the wire", "[destructor]",
                   tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
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
    const std::size_t n = c.s->read_some(buf, ec);
    INFO("read_some: " << ec.message());
    CHECK(n == 0);
    REQUIRE(ec);
    if (garbage)
        CHECK(ec.category() == tls::openssl_category());
    else
        CHECK(ec == tls::errc::stream_truncated);

    // What OpenSSL sent at the moment of the failure (its fatal alert, if any).
    const std::string before = read_raw_available(peer_fd);
    std::error_code again;
    tls::shutdown_result result = tls::shutdown_result::none;
    if (shutdown_first)
        result = c.s->shutdown(again);
    const std::string after_shutdown = read_raw_available(peer_fd);
    c.s.reset();
    const unsigned long left = ERR_peek_error();
    const raw_end after = read_raw_until_eof(peer_fd);

    INFO("bytes at the failure: " << before.size());
    CHECK(count_records(before) >= 0);
    CHECK(count_records(before) <= 1);
    if (shutdown_first) {
        CHECK(again == ec); // reports the fatal error again
        CHECK(name(result) == "none");
        CHECK(after_shutdown.empty());
    }
    INFO("bytes after the failure: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
    CHECK(left == 0);
}

TEMPLATE_TEST_CASE("destroying a stream whose write timed out puts nothing more on the wire", "[destructor]",
                   tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    // A write that times out leaves the stream failed with (possibly) half a
    // record still in OpenSSL's buffer; OpenSSL itself is not in an error
    // state, so only the library stands between a destructor and a flush
    // plus close_notify. AF_UNIX: every byte a send() accepted is already in
    // the peer's receive queue, so "before" and "after" split exactly.
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(version);

    connection<TestType> c(version, false);
    c.s->set_io_timeout(300ms);
    const std::string big(8 * 1024 * 1024, 'x'); // far more than the socket buffers hold; the peer reads nothing
    std::error_code ec;
    c.s->write_all(support::bytes(big), ec);
    REQUIRE(ec == tls::errc::timeout);

    const std::string before = read_raw_available(c.peer.fd());
    c.s.reset();
    const unsigned long left = ERR_peek_error();
    const raw_end after = read_raw_until_eof(c.peer.fd());

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
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);
    constexpr bool quiet = TestType::mode == tls::close_mode::quiet;
    constexpr bool full = TestType::mode == tls::close_mode::full;

    connection<TestType> c(version, tcp);
    ending how{};
    raw_end after;
    auto t = run_peer([&] {
        how = c.peer.read_to_end().second;
        if (full && how == ending::close_notify)
            c.peer.shutdown();
        // After our close_notify (or, for quiet, after the transport ended):
        // nothing more may arrive, only the end of the transport.
        if (!quiet)
            after = read_raw_until_eof(c.peer.fd());
    });
    std::error_code ec1;
    std::error_code ec2;
    const tls::shutdown_result first = c.s->shutdown(ec1);
    const tls::shutdown_result second = c.s->shutdown(ec2);
    c.s.reset();
    const unsigned long left = ERR_peek_error();
    t.join();

    CHECK_FALSE(ec1);
    CHECK(ec2 == ec1);
    CHECK(name(second) == name(first));
    CHECK(left == 0);
    if constexpr (quiet) {
        CHECK(name(first) == "quiet");
        CHECK(name(how) == "unexpected_eof");
        CHECK(received_alerts(c.peer) == 0);
    } else {
        CHECK(name(first) == (full ? "complete" : "sent"));
        CHECK(name(how) == "close_notify");
        CHECK(c.peer.count_alerts(false, 0) == 1);
        CHECK(received_alerts(c.peer) == 1);
        INFO("bytes after our close_notify: " << after.bytes.size());
        CHECK(after.bytes.empty());
        CHECK(after.clean_eof);
    }
}

TEST_CASE("after a timed-out full shutdown a second shutdown() returns at once with the same outcome",
          "[destructor]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::full_shutdown> c(version, tcp);
    c.s->set_shutdown_timeout(300ms);
    ending how{};
    raw_end after;
    auto t = run_peer([&] {
        how = c.peer.read_to_end().second;
        // Silent from here on, but reading: the end of the transport must
        // be all that follows our close_notify.
        after = read_raw_until_eof(c.peer.fd());
    });
    std::error_code ec1;
    std::error_code ec2;
    const tls::shutdown_result first = c.s->shutdown(ec1);
    tls::shutdown_result second{};
    const std::chrono::milliseconds elapsed = support::time_of([&] { second = c.s->shutdown(ec2); });
    c.s.reset();
    t.join();

    CHECK(ec1 == tls::errc::timeout);
    CHECK(name(first) == "sent");
    CHECK(ec2 == ec1);
    CHECK(name(second) == name(first));
    CHECK(elapsed < 100ms); // no second wait
    CHECK(name(how) == "close_notify");
    CHECK(c.peer.count_alerts(false, 0) == 1);
    INFO("bytes after our close_notify: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
}

// ---------------------------------------------------------------- open

TEMPLATE_TEST_CASE("destroying an open stream runs its policy and leaves the error queue empty", "[destructor]",
                   tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<TestType> c(version, tcp);
    ending how{};
    auto t = run_peer([&] {
        how = c.peer.read_to_end().second;
        if (TestType::mode == tls::close_mode::full && how == ending::close_notify)
            c.peer.shutdown();
    });
    c.s.reset();
    const unsigned long left = ERR_peek_error();
    t.join();

    CHECK(left == 0);
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(name(how) == "unexpected_eof");
        CHECK(received_alerts(c.peer) == 0);
    } else {
        CHECK(name(how) == "close_notify");
        CHECK(c.peer.count_alerts(false, 0) == 1);
        CHECK(received_alerts(c.peer) == 1);
    }
}

TEST_CASE("destroying an open full-policy stream swallows a truncated close and returns promptly", "[destructor]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::full_shutdown> c(version, tcp);
    ending how{};
    auto t = run_peer([&] {
        how = c.peer.read_to_end().second;
        c.peer.close_socket(); // FIN instead of close_notify
    });
    const std::chrono::milliseconds elapsed = support::time_of([&] { c.s.reset(); });
    const unsigned long left = ERR_peek_error();
    t.join();

    CHECK(elapsed < 1000ms); // the truncation ends the wait, not the 3 s timeout
    CHECK(left == 0);
    CHECK(name(how) == "close_notify");
    CHECK(c.peer.count_alerts(false, 0) == 1);
}
