// Shutdown policies on the wire: what a raw OpenSSL peer sees when a
// tls_stream closes by fast_shutdown, quiet_shutdown or full_shutdown, what
// shutdown() reports, and how long it takes (DESIGN.md, "Policies on the wire").
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
#include <future>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>

namespace {

using namespace std::chrono_literals;
using support::ending;
using ms = std::chrono::milliseconds;

template <class Policy>
using stream = tls::tls_stream<tls::unique_socket, Policy>;

/// full_shutdown with a short deadline, as a user would derive it.
struct brief_full : tls::full_shutdown {
    static constexpr std::chrono::milliseconds timeout{300};
};

/// fast_shutdown with a long deadline: if fast ever waited for the peer, it
/// would show as seconds, not milliseconds.
struct patient_fast : tls::fast_shutdown {
    static constexpr std::chrono::milliseconds timeout{5000};
};

enum class role { client, server };

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

/// Runs `f` as the peer on its own thread. SIGPIPE is blocked on that thread
/// only: the raw peer writes through OpenSSL's socket BIO (plain write()), and
/// OpenSSL answers an unexpected EOF with a fatal alert, which on an AF_UNIX
/// socket whose other end is closed would raise SIGPIPE and end the test
/// binary. The process's signal handling is left untouched.
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

/// A one-shot signal from the main thread to a peer thread.
class gate {
public:
    void open()
    {
        std::call_once(once_, [this] { promise_.set_value(); });
    }
    /// Waits at most 10 s; false if the gate was never opened.
    bool wait() const { return future_.wait_for(10s) == std::future_status::ready; }

private:
    std::promise<void> promise_;
    std::shared_future<void> future_{promise_.get_future().share()};
    std::once_flag once_;
};

/// Opens the gate when the scope ends, so a failing REQUIRE cannot leave a
/// peer waiting for it.
struct open_on_exit {
    gate& g;
    explicit open_on_exit(gate& to_open) : g(to_open) {}
    open_on_exit(const open_on_exit&) = delete;
    open_on_exit& operator=(const open_on_exit&) = delete;
    ~open_on_exit() { g.open(); }
};

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
    std::string bytes;   // everything read before the end
    bool clean_eof = false; // recv() returned 0
    int error = 0;       // errno otherwise (EAGAIN: the 10 s socket timeout)
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

/// A tls_stream (`s`, client or server) connected to a raw OpenSSL peer, with
/// one round trip of application data already done, so that TLS 1.3 session
/// tickets are consumed and neither socket holds unread bytes.
template <class Policy>
struct connection {
    connection(int version, bool tcp, role r = role::client) : connection(version, r, support::make_pair(tcp)) {}

    tls::context own_ctx;
    tls::context peer_ctx;
    support::raw_peer peer;
    std::optional<stream<Policy>> s;

private:
    connection(int version, role r, support::socket_pair pair)
        : own_ctx(r == role::client ? support::client_context(version) : support::server_context(version)),
          peer_ctx(r == role::client ? support::server_context(version) : support::client_context(version)),
          peer(peer_ctx, std::move(pair.b)), s(std::in_place, own_ctx, std::move(pair.a))
    {
        s->set_io_timeout(5s);
        auto t = run_peer([this, r] {
            if (r == role::client)
                peer.accept();
            else
                peer.connect();
            support::ensure(peer_read_exact(peer, 4) == "ping", "raw peer: expected ping");
            peer.write("pong");
        });
        if (r == role::client)
            s->connect("localhost");
        else
            s->accept();
        s->write_all(support::bytes("ping"));
        const std::string pong = read_exact(*s, 4);
        t.join();
        REQUIRE(pong == "pong");
    }
};

/// What happened when a stream closed against a peer that reads our
/// close_notify and then stays silent with its socket open.
struct silent_close {
    ms elapsed{};
    std::error_code ec;                                  // shutdown(ec) only
    tls::shutdown_result result = tls::shutdown_result::none; // shutdown(ec) only
    int flags = 0;                                       // SSL_get_shutdown after shutdown(ec)
    ending peer_saw{};
    int close_notify_received = -1;
};

enum class closed_by { shutdown_call, destructor };

template <class Policy>
silent_close close_against_silent_peer(int version, bool tcp, closed_by how, std::optional<ms> timeout = {})
{
    connection<Policy> c(version, tcp);
    if (timeout)
        c.s->set_shutdown_timeout(*timeout);
    silent_close out;
    gate done;
    auto t = run_peer([&] {
        out.peer_saw = c.peer.read_to_end().second;
        // Keep the socket open and send nothing until the main thread has
        // measured the close.
        support::ensure(done.wait(), "raw peer: main thread never finished");
    });
    {
        open_on_exit guard{done};
        if (how == closed_by::shutdown_call) {
            out.elapsed = support::time_of([&] { out.result = c.s->shutdown(out.ec); });
            out.flags = SSL_get_shutdown(c.s->native_handle());
        } else {
            out.elapsed = support::time_of([&] { c.s.reset(); });
        }
    }
    t.join();
    out.close_notify_received = c.peer.count_alerts(false, 0);
    return out;
}

} // namespace

// ---------------------------------------------------------------- wire outcome of each policy

TEMPLATE_TEST_CASE("destroying an open stream puts exactly its policy's closure on the wire", "[policy]",
                   tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    const role r = GENERATE(role::client, role::server);
    CAPTURE(version, tcp);
    INFO("tls_stream is the " << (r == role::client ? "client" : "server"));

    connection<TestType> c(version, tcp, r);
    std::string data;
    ending how{};
    auto t = run_peer([&] {
        std::tie(data, how) = c.peer.read_to_end();
        if (TestType::mode == tls::close_mode::full && how == ending::close_notify)
            c.peer.shutdown(); // full waits for our answer
    });
    c.s.reset();
    t.join();

    CHECK(data.empty());
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(name(how) == "unexpected_eof");
        // Received only: the peer itself answers the unexpected EOF with a
        // fatal decode_error alert of its own (OpenSSL 3.0).
        CHECK(received_alerts(c.peer) == 0);
    } else {
        CHECK(name(how) == "close_notify");
        CHECK(c.peer.count_alerts(false, 0) == 1);
        CHECK(received_alerts(c.peer) == 1);
    }
}

// ---------------------------------------------------------------- fast

TEST_CASE("fast shutdown returns at once without waiting for the peer's close_notify", "[policy]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    SECTION("shutdown() reports sent")
    {
        const silent_close r = close_against_silent_peer<patient_fast>(version, tcp, closed_by::shutdown_call);
        CHECK(r.elapsed < 1000ms);
        CHECK_FALSE(r.ec);
        CHECK(name(r.result) == "sent");
        CHECK((r.flags & SSL_SENT_SHUTDOWN) != 0);
        CHECK((r.flags & SSL_RECEIVED_SHUTDOWN) == 0);
        CHECK(name(r.peer_saw) == "close_notify");
        CHECK(r.close_notify_received == 1);
    }
    SECTION("the destructor")
    {
        const silent_close r = close_against_silent_peer<patient_fast>(version, tcp, closed_by::destructor);
        CHECK(r.elapsed < 1000ms);
        CHECK(name(r.peer_saw) == "close_notify");
        CHECK(r.close_notify_received == 1);
    }
}

// ---------------------------------------------------------------- full

TEST_CASE("full shutdown completes when the peer answers close_notify with its own", "[policy]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::full_shutdown> c(version, tcp);
    ending how{};
    int answered = -1;
    auto t = run_peer([&] {
        how = c.peer.read_to_end().second;
        if (how == ending::close_notify)
            answered = c.peer.shutdown();
    });
    std::error_code ec;
    const tls::shutdown_result result = c.s->shutdown(ec);
    const int flags = SSL_get_shutdown(c.s->native_handle());
    t.join();

    CHECK_FALSE(ec);
    CHECK(name(result) == "complete");
    CHECK((flags & SSL_SENT_SHUTDOWN) != 0);
    CHECK((flags & SSL_RECEIVED_SHUTDOWN) != 0);
    CHECK(name(how) == "close_notify");
    CHECK(answered == 1); // the peer's SSL_shutdown completed: ours had arrived, its own went out
    CHECK(c.peer.count_alerts(false, 0) == 1);
    CHECK(c.peer.count_alerts(true, 0) == 1);
}

TEST_CASE("full shutdown returns errc::timeout after its policy's timeout when the peer is silent", "[policy]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    SECTION("shutdown(ec)")
    {
        const silent_close r = close_against_silent_peer<brief_full>(version, tcp, closed_by::shutdown_call);
        CHECK(r.elapsed >= 300ms);
        CHECK(r.elapsed < 300ms + 2s);
        CHECK(r.ec == tls::errc::timeout);
        CHECK(name(r.result) == "sent");
        CHECK(name(r.peer_saw) == "close_notify");
        CHECK(r.close_notify_received == 1);
    }
    SECTION("the destructor")
    {
        const silent_close r = close_against_silent_peer<brief_full>(version, tcp, closed_by::destructor);
        CHECK(r.elapsed >= 300ms);
        CHECK(r.elapsed < 300ms + 2s);
        CHECK(name(r.peer_saw) == "close_notify");
        CHECK(r.close_notify_received == 1);
    }
}

TEST_CASE("set_shutdown_timeout overrides the policy's timeout at run time", "[policy]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(version);

    SECTION("shorter than the policy's (full_shutdown, 3 s -> 200 ms)")
    {
        const silent_close r =
            close_against_silent_peer<tls::full_shutdown>(version, true, closed_by::shutdown_call, 200ms);
        CHECK(r.elapsed >= 200ms);
        CHECK(r.elapsed < 1500ms);
        CHECK(r.ec == tls::errc::timeout);
        CHECK(name(r.result) == "sent");
    }
    SECTION("longer than the policy's (brief_full, 300 ms -> 900 ms)")
    {
        const silent_close r = close_against_silent_peer<brief_full>(version, false, closed_by::shutdown_call, 900ms);
        CHECK(r.elapsed >= 900ms);
        CHECK(r.elapsed < 900ms + 2s);
        CHECK(r.ec == tls::errc::timeout);
        CHECK(name(r.result) == "sent");
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
          "[policy]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    bool tcp = true;
    bool reset = false;
    SECTION("FIN over TCP") {}
    SECTION("FIN over AF_UNIX") { tcp = false; }
    SECTION("RST over TCP") { reset = true; }
    CAPTURE(version, tcp, reset);

    connection<tls::full_shutdown> c(version, tcp);
    ending how{};
    auto t = run_peer([&] {
        how = c.peer.read_to_end().second;
        if (reset)
            support::arm_reset(c.peer.fd());
        c.peer.close_socket();
    });
    std::error_code ec;
    tls::shutdown_result result{};
    const ms elapsed = support::time_of([&] { result = c.s->shutdown(ec); });
    const int flags = SSL_get_shutdown(c.s->native_handle());
    t.join();

    INFO("shutdown: " << ec.message());
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(name(result) == "sent");
    CHECK((flags & SSL_RECEIVED_SHUTDOWN) == 0);
    CHECK(elapsed < 1000ms); // far below full_shutdown's 3 s
    CHECK(name(how) == "close_notify");
    CHECK(c.peer.count_alerts(false, 0) == 1);
    CHECK(received_alerts(c.peer) == 1);
}

TEST_CASE("full shutdown sends nothing after its close_notify when the peer half-closes without answering",
          "[policy]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::full_shutdown> c(version, tcp);
    ending how{};
    raw_end after;
    auto t = run_peer([&] {
        how = c.peer.read_to_end().second;
        // A bare FIN, but keep reading: whatever we send after our
        // close_notify shows up here.
        support::ensure(::shutdown(c.peer.fd(), SHUT_WR) == 0, "shutdown(SHUT_WR)");
        after = read_raw_until_eof(c.peer.fd());
    });
    std::error_code ec;
    const tls::shutdown_result result = c.s->shutdown(ec);
    c.s.reset();
    t.join();

    INFO("shutdown: " << ec.message());
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(name(result) == "sent");
    CHECK(name(how) == "close_notify");
    CHECK(c.peer.count_alerts(false, 0) == 1);
    INFO("bytes after our close_notify: " << after.bytes.size());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
}

// ---------------------------------------------------------------- the peer closed first

TEMPLATE_TEST_CASE("after the peer's close_notify each policy answers as its table row says and returns at once",
                   "[policy]", tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<TestType> c(version, tcp);
    int peer_shutdown = -1;
    ending how{};
    auto t = run_peer([&] {
        peer_shutdown = c.peer.shutdown();
        how = c.peer.read_to_end().second;
    });
    std::byte buf[16];
    std::error_code ec;
    const std::size_t n = c.s->read_some(buf, ec);
    REQUIRE_FALSE(ec);
    REQUIRE(n == 0); // the peer's close_notify

    tls::shutdown_result result{};
    const ms elapsed = support::time_of([&] { result = c.s->shutdown(ec); });
    const int flags = SSL_get_shutdown(c.s->native_handle());
    c.s.reset(); // a quiet close ends the peer's read only when the socket closes
    t.join();

    CHECK(peer_shutdown == 0); // its close_notify went out, ours had not arrived yet
    CHECK_FALSE(ec);
    CHECK(elapsed < 500ms);
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(name(result) == "quiet");
        CHECK(name(how) == "unexpected_eof");
        CHECK(received_alerts(c.peer) == 0);
    } else {
        CHECK(name(result) == "complete");
        CHECK((flags & SSL_SENT_SHUTDOWN) != 0);
        CHECK((flags & SSL_RECEIVED_SHUTDOWN) != 0);
        CHECK(name(how) == "close_notify");
        CHECK(c.peer.count_alerts(false, 0) == 1);
        CHECK(received_alerts(c.peer) == 1);
    }
}

// ---------------------------------------------------------------- quiet

TEST_CASE("quiet shutdown reports quiet and puts nothing on the wire", "[policy]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    const bool tcp = GENERATE(true, false);
    CAPTURE(version, tcp);

    connection<tls::quiet_shutdown> c(version, tcp);
    std::error_code ec;
    tls::shutdown_result result{};
    const ms elapsed = support::time_of([&] { result = c.s->shutdown(ec); });
    // shutdown() has returned: anything it wrote is in the peer's socket now.
    const std::string during = read_raw_available(c.peer.fd());
    c.s.reset();
    const raw_end after = read_raw_until_eof(c.peer.fd());

    CHECK_FALSE(ec);
    CHECK(name(result) == "quiet");
    CHECK(elapsed < 500ms);
    INFO("bytes written by shutdown(): " << during.size() << ", by the destructor: " << after.bytes.size());
    CHECK(during.empty());
    CHECK(after.bytes.empty());
    CHECK(after.clean_eof);
}
