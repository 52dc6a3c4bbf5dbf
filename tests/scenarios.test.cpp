// Closure scenarios of docs/scenarios.md that the topic files do not
// already prove; each test is tagged [scenario-N]. The rest carry their tag
// where they live (policy, destructor, errors, io, raii), and scenario 23,
// which needs an external peer, is in scenario23.test.cpp.
#include "support/checks.hpp"
#include "support/support.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <memory>
#include <string>
#include <system_error>
#include <tuple>

namespace {

using namespace std::chrono_literals;
using support::ending;
using support::pattern;
using support::role;
using support::to_string;
using support::version_name;
using ms = std::chrono::milliseconds;

using support::brief_fast;
using support::brief_full;
using support::stream;
using support::thread_cpu_time;

} // namespace

// ---------------------------------------------------------------- 6

TEST_CASE("accepting a missing close_notify is an opt-in, per context or per stream, that reads the end as EOF",
          "[scenario-6][scenario-27]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    enum class opt_in { none, context, stream };
    const opt_in how = GENERATE(opt_in::none, opt_in::context, opt_in::stream);
    CAPTURE(version_name(version), static_cast<int>(how));

    support::socket_pair pair = support::tcp_pair();
    support::raw_peer peer(support::server_context(version), std::move(pair.b));
    tls::context ctx = support::client_context(version);
    CHECK_FALSE(ctx.accepts_missing_close_notify()); // strict by default
    if (how == opt_in::context)
        ctx.set_accept_missing_close_notify();
    auto holder = std::make_unique<stream<tls::full_shutdown>>(ctx, std::move(pair.a));
    auto& s = *holder;
    if (how == opt_in::stream)
        s.set_accept_missing_close_notify();
    CHECK(s.accepts_missing_close_notify() == (how != opt_in::none));
    support::handshake(s, peer);

    // The peer says its last word and ends its side of the transport
    // without close_notify (it keeps reading, to see what we send after).
    peer.write("last words");
    REQUIRE(::shutdown(peer.fd(), SHUT_WR) == 0);

    CHECK(support::read_exactly(s, 10) == "last words");
    std::byte buf[16];
    std::error_code ec;
    const std::size_t n = s.read_some(buf, ec);
    if (how == opt_in::none) {
        CHECK(ec == tls::errc::stream_truncated);
        CHECK(n == 0);
    } else {
        CHECK_FALSE(ec);
        CHECK(n == 0);
        CHECK(s.read_some(buf, ec) == 0); // and again
        CHECK_FALSE(ec);
        // Never a completed close: the peer's close_notify did not come.
        std::error_code release_ec;
        // A refused release_socket() leaves the stream as it was.
        // NOLINTBEGIN(bugprone-use-after-move)
        CHECK_FALSE(std::move(s).release_socket(release_ec).has_value());
        CHECK(release_ec == tls::errc::not_closed);
        // Nobody left to tell: the close puts nothing on the wire, and is no error.
        tls::shutdown_result result{};
        const ms took = support::time_of([&] { result = s.shutdown(ec); });
        CHECK_FALSE(ec);
        CHECK(to_string(result) == "none");
        CHECK(took < 500ms);
        // NOLINTEND(bugprone-use-after-move)
    }
    holder.reset();
    // The socket is closed now: everything we sent after the peer's FIN is
    // what the peer reads before its EOF.
    const support::raw_end after = support::read_raw_until_eof(peer.fd());
    CHECK(after.clean_eof);
    // Nothing at all follows a truncation [scenario-27]: no close_notify,
    // and not the fatal decode_error alert OpenSSL itself would send from
    // inside SSL_read (31 bytes under TLS 1.2, 24 under TLS 1.3).
    CHECK(after.bytes.empty());
}

// ---------------------------------------------------------------- 8

TEST_CASE("a full close answered by a fatal alert reports that alert, never complete, and sends nothing more",
          "[scenario-8]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    support::session<stream<tls::full_shutdown>> c(version);
    auto& s = *c.stream;
    // The peer corrupts our close_notify record on its way in (one bit of
    // its authentication tag), so its OpenSSL answers with a fatal
    // bad_record_mac alert of its own.
    support::peer_thread t([&] {
        char wire[256];
        const ssize_t n = ::recv(c.peer.fd(), wire, sizeof wire, 0);
        support::ensure(n > 5, "raw peer: no close_notify record");
        wire[n - 1] = static_cast<char>(wire[n - 1] ^ 0x01);
        BIO* in = BIO_new(BIO_s_mem());
        support::ensure(in && BIO_write(in, wire, static_cast<int>(n)) == n, "BIO_write");
        SSL_set0_rbio(c.peer.ssl(), in); // the SSL owns it now; writes still go to the socket
        char sink[16];
        support::ensure(SSL_read(c.peer.ssl(), sink, sizeof sink) <= 0, "raw peer: read a corrupted record");
    });
    std::error_code ec;
    tls::shutdown_result result{};
    const ms took = support::time_of([&] { result = s.shutdown(ec); });
    t.join();

    INFO("shutdown reported: " << ec.message());
    CHECK(ec.category() == tls::openssl_category());
    CHECK(ec.message().find("bad record mac") != std::string::npos);
    CHECK(to_string(result) == "sent");
    CHECK(took < 2s);                          // promptly, not at the 3 s deadline
    CHECK(c.peer.count_alerts(true, 20) == 1); // its bad_record_mac went out
    // The same outcome again, and the destructor adds nothing to the wire.
    std::error_code again;
    CHECK(s.shutdown(again) == result);
    CHECK(again == ec);
    c.stream.reset();
    const support::raw_end after = support::read_raw_until_eof(c.peer.fd());
    CHECK(after.clean_eof);
    CHECK(after.bytes.empty());
    CHECK(ERR_peek_error() == 0);
}

// ---------------------------------------------------------------- 9

TEST_CASE("a full close drains the 1 MiB a peer sends after our close_notify and completes without error",
          "[scenario-9]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version_name(version), tcp);

    support::session<stream<tls::full_shutdown>> c(version, tcp);
    const std::string tail = pattern(std::size_t{1024} * 1024, 9);
    ending how{};
    int answered = -1;
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second; // our close_notify
        c.peer.write(tail);                // TLS 1.3 allows it; OpenSSL 1.2 accepts it
        answered = c.peer.shutdown();
    });
    std::error_code ec;
    const tls::shutdown_result result = c.stream->shutdown(ec);
    t.join();

    CHECK_FALSE(ec);
    CHECK(to_string(result) == "complete");
    CHECK(to_string(how) == "close_notify");
    CHECK(answered == 1);
    CHECK(c.peer.received_alerts() == 1); // our close_notify, and no error alert after it
}

// ---------------------------------------------------------------- 10

TEMPLATE_TEST_CASE("a write-only TLS 1.3 client's close processes the session tickets, so the next connection resumes",
                   "[scenario-10]", TLS_STREAM_TEST_POLICIES)
{
    // One server context for both connections: its ticket key decrypts the ticket.
    const tls::context server_ctx = support::server_context(TLS1_3_VERSION);
    const tls::context client_ctx = support::client_context(TLS1_3_VERSION);

    SSL_SESSION* session = nullptr;
    {
        support::socket_pair pair = support::tcp_pair();
        support::raw_peer peer(server_ctx, std::move(pair.b));
        auto holder = std::make_unique<stream<TestType>>(client_ctx, std::move(pair.a));
        auto& s = *holder;
        support::handshake(s, peer); // the peer's accept has written its tickets
        std::string got;
        ending how{};
        support::peer_thread t([&] {
            std::tie(got, how) = peer.read_to_end();
            if (how == ending::close_notify)
                peer.shutdown();
        });
        s.write_all(support::bytes("request, and nothing read"));
        (void)s.shutdown();
        session = SSL_get1_session(s.native_handle());
        holder.reset(); // under quiet, the peer's read ends only when the socket closes
        t.join();
        CHECK(got == "request, and nothing read");
    }
    REQUIRE(session != nullptr);
    CHECK(SSL_SESSION_is_resumable(session) == 1);

    support::socket_pair pair = support::tcp_pair();
    support::raw_peer peer(server_ctx, std::move(pair.b));
    stream<tls::full_shutdown> again(client_ctx, std::move(pair.a));
    REQUIRE(SSL_set_session(again.native_handle(), session) == 1);
    SSL_SESSION_free(session);
    support::handshake(again, peer);
    CHECK(SSL_session_reused(again.native_handle()) == 1);
    CHECK(support::ping_pong(again, peer) == "pong");
}

// ---------------------------------------------------------------- 11

namespace {
std::atomic<int> sessions_removed{0};
void count_removal(SSL_CTX*, SSL_SESSION*) { ++sessions_removed; }
} // namespace

TEMPLATE_TEST_CASE("a TLS 1.2 server's session cache keeps sessions closed by any policy and drops one ended by a "
                   "fatal error",
                   "[scenario-11]", TLS_STREAM_TEST_POLICIES)
{
    const bool fatal = GENERATE(false, true);
    CAPTURE(fatal);

    tls::context server_ctx = support::server_context(TLS1_2_VERSION);
    SSL_CTX* raw = server_ctx.native_handle();
    SSL_CTX_set_options(raw, SSL_OP_NO_TICKET); // sessions live in the server's cache
    SSL_CTX_set_session_cache_mode(raw, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_remove_cb(raw, count_removal);
    sessions_removed = 0;

    {
        support::socket_pair pair = support::tcp_pair();
        support::raw_peer client(support::client_context(TLS1_2_VERSION), std::move(pair.b));
        auto holder = std::make_unique<stream<TestType>>(server_ctx, std::move(pair.a));
        auto& s = *holder;
        support::handshake(s, client, role::server);
        REQUIRE(support::ping_pong(s, client) == "pong");
        REQUIRE(SSL_CTX_sess_number(raw) == 1);

        support::peer_thread t([&] {
            if (fatal) { // bytes that are not a TLS record
                support::ensure(::send(client.fd(), "garbage, not TLS", 16, MSG_NOSIGNAL) == 16, "send");
            } else {
                const ending how = client.read_to_end().second;
                if (how == ending::close_notify)
                    client.shutdown();
            }
        });
        if (fatal) {
            std::byte buf[16];
            std::error_code ec;
            s.read_some(buf, ec);
            CHECK(ec.category() == tls::openssl_category());
        } else {
            CHECK_FALSE(s.shutdown() == tls::shutdown_result::none);
        }
        holder.reset(); // frees the SSL; under quiet, also what ends the peer's read
        t.join();
    }

    if (fatal) {
        CHECK(sessions_removed == 1);
        CHECK(SSL_CTX_sess_number(raw) == 0);
    } else {
        CHECK(sessions_removed == 0);
        CHECK(SSL_CTX_sess_number(raw) == 1);
    }
    SSL_CTX_sess_set_remove_cb(raw, nullptr);
}

// ---------------------------------------------------------------- 14

namespace {
// Runs `body` in a child process whose SIGPIPE is at its default
// disposition (the test binary's own is untouched). The child's exit code
// is body's result; SIGALRM bounds it, in case it hangs.
template <class F>
int run_in_child(F body)
{
    const pid_t pid = ::fork();
    if (pid == 0) {
        std::signal(SIGPIPE, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        pthread_sigmask(SIG_SETMASK, &none, nullptr);
        ::alarm(20);
        int code = 3;
        try {
            code = body();
        } catch (...) {
            code = 4;
        }
        ::_exit(code);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}
} // namespace

TEMPLATE_TEST_CASE("writing to and closing against a peer that is gone, with SIGPIPE at its default, returns errors "
                   "and never kills the process",
                   "[scenario-14]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version_name(version), tcp);

    const int status = run_in_child([&]() -> int {
        support::session<stream<TestType>> c(version, tcp);
        c.peer.drop();         // no alert
        c.peer.close_socket(); // gone: AF_UNIX writes get EPIPE, TCP ones a reset
        const std::string chunk(std::size_t{64} * 1024, 'x');
        std::error_code ec;
        for (int i = 0; i < 64 && !ec; ++i)
            c.stream->write_all(support::bytes(chunk), ec);
        if (ec != std::errc::broken_pipe && ec != std::errc::connection_reset)
            return 10;
        c.stream.reset(); // a failed stream: frees only
        // A second stream whose peer vanished while it was open: its policy
        // runs in the destructor and meets the broken pipe there.
        support::session<stream<TestType>> d(version, tcp);
        d.peer.drop();
        d.peer.close_socket();
        d.stream.reset();
        return 0;
    });
    INFO("child status " << status);
    CHECK_FALSE(WIFSIGNALED(status));
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

// ---------------------------------------------------------------- 15

TEMPLATE_TEST_CASE("when the peer stops reading and our send buffer is full, the close still returns within its "
                   "timeout",
                   "[scenario-15]", brief_fast, tls::quiet_shutdown, brief_full)
{
    const bool by_destructor = GENERATE(false, true);
    const bool tcp = GENERATE(true, false);
    CAPTURE(by_destructor, tcp);

    support::session<stream<TestType>> c(TLS1_3_VERSION, tcp);
    const int fd = c.stream->socket().native_handle();
    // Fill our send buffer, and the peer's receive buffer behind it, while
    // the peer reads nothing. Raw bytes: the peer never reads them, and the
    // stream, which has not written them, stays open.
    const int small = 16 * 1024;
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    // Over TCP the kernel moves bytes on into the peer's receive buffer
    // for a while; full means no room even after 200 ms of trying.
    const std::string filler(std::size_t{64} * 1024, 'f');
    std::size_t filled = 0;
    for (int rounds = 0; rounds < 100; ++rounds) {
        ssize_t n;
        while ((n = ::send(fd, filler.data(), filler.size(), MSG_DONTWAIT | MSG_NOSIGNAL)) > 0)
            filled += static_cast<std::size_t>(n);
        REQUIRE(errno == EAGAIN);
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, 200) == 0)
            break;
    }
    pollfd p{fd, POLLOUT, 0};
    REQUIRE(::poll(&p, 1, 0) == 0);
    REQUIRE(filled > 0);

    std::error_code ec;
    tls::shutdown_result result{};
    const ms took = support::time_of([&] {
        if (by_destructor)
            c.stream.reset();
        else
            result = c.stream->shutdown(ec);
    });
    const ms budget = TestType::timeout;
    CHECK(took >= budget);
    CHECK(took < budget + 1s);
    if (!by_destructor) {
        if constexpr (TestType::mode == tls::close_mode::quiet) {
            CHECK_FALSE(ec);
            CHECK(to_string(result) == "quiet");
        } else {
            CHECK(ec == tls::errc::timeout);
            CHECK(to_string(result) == "none"); // our close_notify could not go out
        }
    }
}

// ---------------------------------------------------------------- 17

TEST_CASE("on a non-blocking fd without an io timeout, waiting for the peer uses poll and burns almost no CPU",
          "[scenario-17]")
{
    const bool tcp = GENERATE(true, false);
    CAPTURE(tcp);

    support::session<stream<tls::full_shutdown>> c(TLS1_3_VERSION, tcp);
    auto& s = *c.stream;
    s.set_io_timeout(0ms); // no deadline: the transport must still not spin
    support::set_nonblocking(s.socket().native_handle());
    REQUIRE(support::ping_pong(s, c.peer) == "pong");

    // The peer stays idle for a while before each answer: that idle time is
    // what the test measures, so here a timed wait is the scenario itself.
    constexpr ms idle = 400ms;
    support::gate never_opened;
    support::peer_thread t([&] {
        never_opened.wait_for(idle);
        c.peer.write("late");
        const ending how = c.peer.read_to_end().second; // our close_notify
        never_opened.wait_for(idle);
        if (how == ending::close_notify)
            c.peer.shutdown();
    });
    std::byte buf[8];
    const auto cpu0 = thread_cpu_time();
    const auto wall0 = std::chrono::steady_clock::now();
    const std::size_t n = s.read_some(buf);
    const auto cpu1 = thread_cpu_time();
    const auto wall1 = std::chrono::steady_clock::now();
    std::error_code ec;
    const tls::shutdown_result result = s.shutdown(ec);
    const auto cpu2 = thread_cpu_time();
    const auto wall2 = std::chrono::steady_clock::now();
    t.join();

    CHECK(n == 4);
    CHECK_FALSE(ec);
    CHECK(to_string(result) == "complete");
    const auto ms_of = [](auto d) { return std::chrono::duration_cast<ms>(d).count(); };
    INFO("read: " << ms_of(wall1 - wall0) << " ms waited, " << ms_of(cpu1 - cpu0)
                  << " ms CPU; close: " << ms_of(wall2 - wall1) << " ms waited, " << ms_of(cpu2 - cpu1) << " ms CPU");
    CHECK(wall1 - wall0 >= idle - 50ms);
    CHECK(wall2 - wall1 >= idle - 50ms);
    // A spinning loop would burn nearly all of the idle time.
    CHECK(cpu1 - cpu0 < 40ms);
    CHECK(cpu2 - cpu1 < 40ms);
}

// ---------------------------------------------------------------- 18

TEMPLATE_TEST_CASE("after close_write writes fail, exactly one close_notify reaches the wire, and a second shutdown "
                   "does nothing",
                   "[scenario-18]", TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    support::session<stream<TestType>> c(version);
    auto& s = *c.stream;
    ending how{};
    int answered = -1;
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second;
        answered = c.peer.shutdown();
    });
    s.close_write();
    CHECK(support::thrown_code([&] { s.write_all(support::bytes("too late")); }) == tls::errc::closed);
    std::byte buf[8];
    CHECK(s.read_some(buf) == 0); // the peer's answer
    s.close_write();              // again: nothing happens
    std::error_code ec;
    const tls::shutdown_result first = s.shutdown(ec);
    CHECK_FALSE(ec);
    CHECK(to_string(first) == "complete"); // ours sent by close_write, theirs received, whatever the policy
    CHECK(s.shutdown(ec) == first);
    CHECK_FALSE(ec);
    CHECK(support::thrown_code([&] { s.close_write(); }) == tls::errc::closed);
    CHECK(support::thrown_code([&] { s.write_all(support::bytes("too late")); }) == tls::errc::closed);
    t.join();
    c.stream.reset();

    CHECK(to_string(how) == "close_notify");
    CHECK(answered == 1);
    CHECK(c.peer.count_alerts(false, 0) == 1);
    CHECK(c.peer.received_alerts() == 1);
    const support::raw_end after = support::read_raw_until_eof(c.peer.fd());
    CHECK(after.clean_eof);
    CHECK(after.bytes.empty());
}

// ---------------------------------------------------------------- 20

TEST_CASE("data that follows the peer's close_notify is ignored: the application sees a clean 0", "[scenario-20]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool encrypted = GENERATE(true, false);
    CAPTURE(version_name(version), encrypted);

    support::session<stream<tls::full_shutdown>> c(version);
    auto& s = *c.stream;
    c.peer.write("before");
    REQUIRE(c.peer.shutdown() == 0);
    if (encrypted) {
        // A peer that misbehaves: it clears its own "sent" flag so OpenSSL
        // lets it write an application-data record after its close_notify.
        SSL_set_shutdown(c.peer.ssl(), 0);
        c.peer.write("after");
    } else {
        REQUIRE(::send(c.peer.fd(), "plain after", 11, MSG_NOSIGNAL) == 11);
    }
    CHECK(support::read_exactly(s, 6) == "before");
    std::byte buf[16];
    CHECK(s.read_some(buf) == 0);
    CHECK(s.read_some(buf) == 0);
    std::error_code ec;
    support::peer_thread t([&] { c.peer.read_to_end(); });
    CHECK(to_string(s.shutdown(ec)) == "complete");
    t.join();
    CHECK_FALSE(ec);
    CHECK(c.peer.count_alerts(false, 0) == 1);
}

// ---------------------------------------------------------------- 23 (the part a raw peer can show)

TEMPLATE_TEST_CASE("when a close returns, nothing it wrote is still held back in our socket by Nagle's algorithm",
                   "[scenario-23]", tls::fast_shutdown, tls::full_shutdown)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    // A request and our close_notify right behind it: with the request not
    // yet acknowledged, Nagle's algorithm holds the small close_notify back,
    // where a reset (scenario 23) would throw it away. Several rounds, since
    // whether the peer's ACK came first is up to timing.
    for (int round = 0; round < 10; ++round) {
        support::session<stream<TestType>> c(version);
        const int fd = c.stream->socket().native_handle();
        support::gate measured;
        support::peer_thread t([&] {
            const ending how = c.peer.read_to_end().second;
            support::ensure(measured.wait_for(10s), "main thread never measured");
            if (how == ending::close_notify)
                c.peer.shutdown();
        });
        int unsent = -1;
        {
            support::open_on_exit guard{measured};
            c.stream->write_all(support::bytes("request"));
            c.stream->close_write();
            REQUIRE(::ioctl(fd, SIOCOUTQNSD, &unsent) == 0);
        }
        (void)c.stream->shutdown();
        t.join();
        CAPTURE(round);
        CHECK(unsent == 0);
    }
}

TEMPLATE_TEST_CASE("after a close that did not complete, our FIN follows at once, even while the socket stays open",
                   "[scenario-23]", tls::fast_shutdown, tls::quiet_shutdown, brief_full)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version_name(version), tcp);

    // A borrowed descriptor: nothing closes it before the checks below.
    support::session<tls::tls_stream<tls::fd_socket, TestType>> c(version, tcp);
    REQUIRE(support::ping_pong(*c.stream, c.peer) == "pong");
    std::error_code ec;
    const tls::shutdown_result result = c.stream->shutdown(ec); // the peer stays silent
    CHECK(to_string(result) == (TestType::mode == tls::close_mode::quiet ? "quiet" : "sent"));
    // The peer reads our closure and then an orderly end (a FIN, not a
    // reset, not its 10 s receive timeout), though our socket is open.
    const ending how = c.peer.read_to_end().second;
    support::check_peer_saw_closure(TestType::mode, how, c.peer);
    CHECK(::fcntl(c.pair.a.native_handle(), F_GETFD) != -1);
}

TEST_CASE("after a completed close the socket can still send in the clear (ENDTLS)", "[scenario-21]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    support::session<stream<tls::fast_shutdown>> c(version);
    REQUIRE(c.peer.shutdown() == 0); // the peer closes first; we answer
    std::byte buf[8];
    REQUIRE(c.stream->read_some(buf) == 0);
    CHECK(to_string(c.stream->shutdown()) == "complete");
    auto [sock, unread] = std::move(*c.stream).release_socket();
    CHECK(unread.empty());
    CHECK(::send(sock.native_handle(), "in the clear", 12, MSG_NOSIGNAL) == 12);
    std::string got;
    ending how{};
    got = c.peer.read_some(64, how); // our close_notify first
    CHECK(got.empty());
    CHECK(to_string(how) == "close_notify");
    char clear[12] = {};
    CHECK(::recv(c.peer.fd(), clear, sizeof clear, MSG_WAITALL) == 12); // bounded by its 10 s timeout
    CHECK(std::string(clear, sizeof clear) == "in the clear");
}
