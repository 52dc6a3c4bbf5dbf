// Event loops: the non-blocking steps (try_*), shutdown_deadline() and the
// closer, against raw OpenSSL peers and tls_streams over real sockets.
#include "support/checks.hpp"
#include "support/support.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

namespace {

using namespace std::chrono_literals;
using support::ending;
using support::to_string;
using support::version_name;
using ms = std::chrono::milliseconds;
using clock_type = std::chrono::steady_clock;

using support::brief_full;
template <class Policy>
using owned = support::stream<Policy>;

// Waits (poll, bounded) for what a step asked for. Returns false if the
// descriptor did not become ready within `limit`.
bool wait_for(int fd, tls::want w, ms limit = 10s)
{
    pollfd p{fd, static_cast<short>(w == tls::want::write ? POLLOUT : POLLIN), 0};
    return ::poll(&p, 1, static_cast<int>(limit.count())) == 1;
}

// Runs `step` (returning tls::want) until it says want::nothing, waiting for
// what it asks for in between: the shortest correct event loop.
template <class Step>
void run_steps(int fd, Step&& step)
{
    for (int i = 0; i < 100000; ++i) {
        const tls::want w = step();
        if (w == tls::want::nothing)
            return;
        support::ensure(wait_for(fd, w), "a step's descriptor never became ready");
    }
    support::ensure(false, "a step never finished");
}

int open_fds()
{
    int n = 0;
    DIR* dir = ::opendir("/proc/self/fd");
    while (dir != nullptr && ::readdir(dir) != nullptr)
        ++n;
    if (dir != nullptr)
        ::closedir(dir);
    return n;
}

} // namespace

TEST_CASE("steps handshake, read and write without ever blocking, on blocking and non-blocking descriptors",
          "[eventloop][scenario-17]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool nonblocking = GENERATE(false, true);
    const bool client = GENERATE(true, false);
    CAPTURE(version_name(version), nonblocking, client);

    support::socket_pair pair = support::tcp_pair();
    if (nonblocking)
        support::set_nonblocking(pair.a.native_handle());
    support::raw_peer peer(client ? support::server_context(version) : support::client_context(version),
                           std::move(pair.b));
    owned<tls::full_shutdown> s(client ? support::client_context(version) : support::server_context(version),
                                std::move(pair.a));
    const int fd = s.socket().native_handle();
    support::gate start_handshake;
    support::gate send_pong;
    support::peer_thread t([&] {
        start_handshake.wait();
        if (client)
            peer.accept();
        else
            peer.connect();
        support::ensure(peer.read_exactly(4) == "ping", "peer: expected ping");
        send_pong.wait();
        peer.write("pong");
        support::ensure(peer.read_to_end().second == ending::close_notify, "peer: expected close_notify");
        peer.shutdown();
    });
    support::open_on_exit release_start(start_handshake);
    support::open_on_exit release_pong(send_pong);

    std::error_code ec;
    // The peer does nothing yet: a step that waited would hang here. A
    // client has written its hello and waits for the answer; a server waits
    // for the hello.
    tls::want w{};
    const ms first = support::time_of([&] { w = client ? s.try_connect("localhost", ec) : s.try_accept(ec); });
    CHECK(w == tls::want::read);
    CHECK_FALSE(ec);
    CHECK(first < 1s);
    start_handshake.open();
    run_steps(fd, [&] { return client ? s.try_connect("localhost", ec) : s.try_accept(ec); });
    REQUIRE_FALSE(ec);

    std::byte buf[16];
    std::size_t n = 99;
    // Nothing has arrived (TLS 1.3 tickets aside): want::read, at once.
    CHECK(s.try_read_some(buf, n, ec) == tls::want::read);
    CHECK(n == 0);
    CHECK_FALSE(ec);

    n = 0;
    CHECK(s.try_write_some(support::bytes("ping"), n, ec) == tls::want::nothing);
    CHECK(n == 4);
    CHECK_FALSE(ec);
    send_pong.open();
    std::string got;
    run_steps(fd, [&] {
        const tls::want step = s.try_read_some(buf, n, ec);
        got.append(reinterpret_cast<const char*>(buf), n);
        return step == tls::want::nothing && got.size() < 4 && !ec ? tls::want::read : step;
    });
    CHECK_FALSE(ec);
    CHECK(got == "pong");

    tls::shutdown_result result{};
    run_steps(fd, [&] { return s.try_shutdown(result, ec); });
    CHECK_FALSE(ec);
    CHECK(to_string(result) == "complete");
    // The close_notify is a sticky EOF for reads, and the close reports the same again.
    CHECK(s.try_shutdown(result, ec) == tls::want::nothing);
    CHECK(to_string(result) == "complete");
    t.join();
}

TEST_CASE("try_write_some moves several MiB byte-exact to a slow reader, asking for want::write when the buffer is "
          "full",
          "[eventloop]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version_name(version), tcp);

    support::session<owned<tls::full_shutdown>> c(version, tcp);
    auto& s = *c.stream;
    const int fd = s.socket().native_handle();
    const std::string payload = support::pattern(std::size_t{4} << 20, 11);
    support::gate blocked;
    std::string received;
    support::peer_thread t([&] {
        blocked.wait(); // reads nothing until the writer had to wait
        received = c.peer.read_exactly(payload.size());
        support::ensure(c.peer.read_to_end().second == ending::close_notify, "peer: expected close_notify");
        c.peer.shutdown();
    });
    support::open_on_exit release(blocked);

    std::span<const std::byte> rest = support::bytes(payload);
    std::error_code ec;
    int write_waits = 0;
    while (!rest.empty()) {
        std::size_t n = 0;
        const tls::want w = s.try_write_some(rest, n, ec);
        REQUIRE_FALSE(ec);
        if (w == tls::want::write) {
            CHECK(n == 0); // call again with the same bytes
            ++write_waits;
            blocked.open();
            REQUIRE(wait_for(fd, w));
            continue;
        }
        REQUIRE(w == tls::want::nothing);
        REQUIRE(n > 0);
        rest = rest.subspan(n);
    }
    CHECK(write_waits > 0);
    tls::shutdown_result result{};
    run_steps(fd, [&] { return s.try_shutdown(result, ec); });
    CHECK_FALSE(ec);
    CHECK(to_string(result) == "complete");
    t.join();
    CHECK(received == payload);
}

TEMPLATE_TEST_CASE("try_shutdown runs each policy step by step; a silent peer ends full at its fixed deadline",
                   "[eventloop][scenario-16]", tls::fast_shutdown, tls::quiet_shutdown, brief_full)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    support::session<owned<TestType>> c(version);
    auto& s = *c.stream;
    support::ping_pong(s, c.peer);
    const int fd = s.socket().native_handle();
    CHECK_FALSE(s.shutdown_deadline().has_value());

    tls::shutdown_result result{};
    std::error_code ec;
    const auto started = clock_type::now();
    tls::want w = s.try_shutdown(result, ec); // the peer stays silent
    const auto deadline = s.shutdown_deadline();
    REQUIRE(deadline.has_value());
    CHECK(*deadline - started <= ms(TestType::timeout) + 50ms);
    if constexpr (TestType::mode == tls::close_mode::full) {
        CHECK(w == tls::want::read);
        CHECK(clock_type::now() - started < 200ms);
        while (w != tls::want::nothing) {
            wait_for(fd, w, std::chrono::ceil<ms>(*s.shutdown_deadline() - clock_type::now()) + 1ms);
            w = s.try_shutdown(result, ec);
            CHECK(s.shutdown_deadline() == deadline); // never moves
        }
        const auto ended = clock_type::now();
        CHECK(ec == tls::errc::timeout);
        CHECK(to_string(result) == "sent");
        CHECK(ended >= *deadline);
        CHECK(ended - *deadline < 200ms);
    } else {
        CHECK(w == tls::want::nothing);
        CHECK_FALSE(ec);
        CHECK(to_string(result) == (TestType::mode == tls::close_mode::quiet ? "quiet" : "sent"));
    }
    // Reads and writes now fail; the close reports its outcome again.
    std::byte buf[4];
    std::size_t n = 0;
    CHECK(s.try_read_some(buf, n, ec) == tls::want::nothing);
    CHECK(ec == tls::errc::closed);
    CHECK(s.try_write_some(support::bytes("x"), n, ec) == tls::want::nothing);
    CHECK(ec == tls::errc::closed);
    tls::shutdown_result again{};
    CHECK(s.try_shutdown(again, ec) == tls::want::nothing);
    CHECK(again == result);
    c.stream.reset();
    const auto [wire, how] = c.peer.read_to_end();
    CHECK(wire.empty());
    CHECK(to_string(how) == (TestType::mode == tls::close_mode::quiet ? "unexpected_eof" : "close_notify"));
}

TEST_CASE("steps and blocking calls mix on one stream", "[eventloop]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    support::session<owned<tls::full_shutdown>> c(version);
    auto& s = *c.stream;
    std::byte buf[8];
    std::size_t n = 0;
    std::error_code ec;
    CHECK(s.try_write_some(support::bytes("step"), n, ec) == tls::want::nothing);
    CHECK(n == 4);
    CHECK(c.peer.read_exactly(4) == "step");
    c.peer.write("blocking");
    CHECK(support::read_exactly(s, 8) == "blocking");
    CHECK(s.try_close_write(ec) == tls::want::nothing);
    CHECK_FALSE(ec);
    CHECK(c.peer.read_to_end().second == ending::close_notify);
    c.peer.shutdown();
    CHECK(s.read_some(buf) == 0);
    // A close_notify is a clean EOF, again on every later step.
    CHECK(s.try_read_some(buf, n, ec) == tls::want::nothing);
    CHECK(n == 0);
    CHECK_FALSE(ec);
    CHECK(to_string(s.shutdown()) == "complete");
}

TEST_CASE("steps on a moved-from, failed or closed stream report why, and bad close_via calls throw", "[eventloop]")
{
    support::session<owned<tls::full_shutdown>> c(TLS1_3_VERSION);
    owned<tls::full_shutdown> moved(std::move(*c.stream));
    auto& empty = *c.stream; // NOLINT(bugprone-use-after-move): checking the moved-from state is the point
    std::byte buf[4];
    std::size_t n = 7;
    std::error_code ec;
    tls::shutdown_result r{};
    CHECK(empty.try_read_some(buf, n, ec) == tls::want::nothing);
    CHECK(ec == tls::errc::not_connected);
    CHECK(n == 0);
    CHECK(empty.try_write_some(support::bytes("x"), n, ec) == tls::want::nothing);
    CHECK(ec == tls::errc::not_connected);
    CHECK(empty.try_accept(ec) == tls::want::nothing);
    CHECK(ec == tls::errc::not_connected);
    CHECK(empty.try_shutdown(r, ec) == tls::want::nothing);
    CHECK(ec == tls::errc::not_connected);
    CHECK(empty.try_close_write(ec) == tls::want::nothing);
    CHECK(ec == tls::errc::not_connected);

    tls::closer closer;
    CHECK(moved.try_connect("localhost", ec) == tls::want::nothing);
    CHECK(ec == tls::errc::already_connected);
    // A stream whose close has ended has nothing left for a closer.
    moved.set_shutdown_timeout(50ms);
    (void)moved.shutdown(ec); // the peer stays silent: a timeout
    CHECK(ec == tls::errc::timeout);
    CHECK(support::thrown_code([&] { moved.close_via(closer); }) == tls::errc::closed);

    // A failed stream: the peer ends the transport without close_notify.
    support::session<owned<tls::full_shutdown>> f(TLS1_2_VERSION);
    f.stream->close_via(closer);
    CHECK_THROWS_AS(f.stream->close_via(closer), std::logic_error); // bound twice
    f.peer.close_socket();
    const int fd = f.stream->socket().native_handle();
    run_steps(fd, [&] { return f.stream->try_read_some(buf, n, ec); });
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(f.stream->try_read_some(buf, n, ec) == tls::want::nothing);
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(f.stream->try_shutdown(r, ec) == tls::want::nothing);
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(to_string(r) == "none");
    f.stream.reset(); // failed: nothing for the closer
    CHECK(closer.size() == 0);
}

TEST_CASE("a bound stream's destructor returns at once; the closer finishes the close by the policy, then closes the "
          "socket",
          "[eventloop][closer][scenario-28]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    tls::closer closer;
    CHECK(closer.size() == 0);
    CHECK_FALSE(closer.next_deadline().has_value());
    support::session<owned<tls::full_shutdown>> c(version);
    support::ping_pong(*c.stream, c.peer);
    c.stream->close_via(closer);
    support::gate answer;
    ending how{};
    std::string after_close;
    support::peer_thread t([&] {
        how = c.peer.read_to_end().second;
        answer.wait();
        c.peer.shutdown();
        // The socket closes only after the TLS close: EOF follows our answer.
        after_close = support::read_raw_until_eof(c.peer.fd()).clean_eof ? "eof" : "no eof";
    });
    support::open_on_exit release(answer);

    const ms took = support::time_of([&] { c.stream.reset(); }); // full would wait up to 3 s here
    CHECK(took < 500ms);
    CHECK(closer.size() == 1);
    REQUIRE(closer.next_deadline().has_value());
    CHECK(*closer.next_deadline() > clock_type::now() + 2s); // the stream's own 3 s deadline
    closer.run_ready();                                      // nothing to do yet: the peer has not answered
    CHECK(closer.size() == 1);
    answer.open();
    CHECK(closer.run_for(5s));
    CHECK(closer.size() == 0);
    CHECK_FALSE(closer.next_deadline().has_value());
    t.join();
    CHECK(to_string(how) == "close_notify");
    CHECK(after_close == "eof");
}

TEST_CASE("closes in a closer end by their own deadlines, interleaved, also when the closer is destroyed first",
          "[eventloop][closer][scenario-28]")
{
    const bool destroy_closer = GENERATE(false, true);
    CAPTURE(destroy_closer);

    std::deque<support::session<owned<brief_full>>> sessions; // not movable: a deque builds them in place
    for (int i = 0; i < 3; ++i)
        sessions.emplace_back(TLS1_3_VERSION);
    auto closer = std::make_unique<tls::closer>();
    const auto started = clock_type::now();
    for (auto& c : sessions) { // silent peers: none will answer
        c.stream->close_via(*closer);
        c.stream.reset();
    }
    CHECK(closer->size() == 3);
    CHECK(clock_type::now() - started < 300ms); // not one after another: at once
    if (destroy_closer)
        closer.reset();
    else
        CHECK(closer->run_for(5s));
    const auto took = clock_type::now() - started;
    CHECK(took >= brief_full::timeout);
    CHECK(took < brief_full::timeout + 500ms);
    for (auto& c : sessions) {
        const auto [wire, how] = c.peer.read_to_end();
        CHECK(to_string(how) == "close_notify"); // each got its close_notify, then the socket closed
    }
}

TEST_CASE("a closer run_for gives up when its time is up and goes on later", "[eventloop][closer]")
{
    tls::closer closer;
    support::session<owned<tls::full_shutdown>> c(TLS1_2_VERSION);
    c.stream->close_via(closer);
    c.stream.reset();
    REQUIRE(closer.size() == 1);
    const ms took = support::time_of([&] { CHECK_FALSE(closer.run_for(100ms)); });
    CHECK(took >= 100ms);
    CHECK(took < 1s);
    CHECK(closer.size() == 1);
    c.peer.read_to_end();
    c.peer.shutdown();
    CHECK(closer.run_for(5s));
}

TEST_CASE("1 000 closes handed to a closer leave no descriptor and no heap behind", "[eventloop][closer][soak]")
{
    tls::context server = support::server_context(TLS1_3_VERSION);
    SSL_CTX_sess_set_cache_size(server.native_handle(), 64);
    tls::context client = support::client_context(TLS1_3_VERSION);
    tls::closer closer;
    int fds_before = 0;
    long heap_before = 0;
    for (int i = 0; i < 1000; ++i) {
        if (i == 100) { // after a warm-up that fills OpenSSL's own caches
            REQUIRE(closer.run_for(10s));
            fds_before = open_fds();
            heap_before = static_cast<long>(::mallinfo2().uordblks);
        }
        support::socket_pair pair = support::make_pair(i % 2 == 0);
        auto a = std::make_unique<owned<tls::full_shutdown>>(client, std::move(pair.a));
        auto b = std::make_unique<owned<tls::full_shutdown>>(server, std::move(pair.b));
        std::error_code ea;
        std::error_code eb;
        tls::want wa = tls::want::read;
        tls::want wb = tls::want::read;
        for (int steps = 0; (wa != tls::want::nothing || wb != tls::want::nothing) && steps < 100; ++steps) {
            if (wa != tls::want::nothing)
                wa = a->try_connect(ea);
            if (wb != tls::want::nothing)
                wb = b->try_accept(eb);
        }
        REQUIRE(wa == tls::want::nothing);
        REQUIRE(wb == tls::want::nothing);
        REQUIRE_FALSE(ea);
        REQUIRE_FALSE(eb);
        a->close_via(closer);
        b->close_via(closer);
        a.reset(); // its close_notify out; waits in the closer for b's
        b.reset(); // answers a's at once, or waits for it in the closer
        closer.run_ready();
    }
    CHECK(closer.run_for(10s));
    CHECK(closer.size() == 0);
    CHECK(open_fds() == fds_before);
    const long heap_growth = static_cast<long>(::mallinfo2().uordblks) - heap_before;
    CAPTURE(heap_growth);
    CHECK(heap_before > 0); // the allocator counts (a sanitizer's would not)
    CHECK(heap_growth < 64L * 1024);
}

TEST_CASE("a closer waiting for a silent peer's close costs no CPU while it waits", "[eventloop][closer][scenario-17]")
{
    support::session<owned<brief_full>> c(TLS1_3_VERSION);
    tls::closer closer;
    c.stream->close_via(closer);
    c.stream.reset();
    REQUIRE(closer.size() == 1);
    const auto cpu_before = support::thread_cpu_time();
    const ms took = support::time_of([&] { CHECK(closer.run_for(5s)); }); // waits out the 300 ms deadline
    const auto cpu = support::thread_cpu_time() - cpu_before;
    CAPTURE(std::chrono::duration_cast<ms>(cpu).count());
    CHECK(took >= 200ms);
    CHECK(cpu < took / 4); // no busy-spinning: poll() and epoll_wait() sleep
}
