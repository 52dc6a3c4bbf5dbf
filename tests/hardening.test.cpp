// Hostile peers and bad input: deadlines that hold against a peer that
// never stops sending, the lingering close, nothing but the policy's closure
// on the wire, our fatal alert surviving the close, and clear errors for
// bad arguments.
#include "support/checks.hpp"
#include "support/support.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>
#include <system_error>
#include <tuple>

namespace {

using namespace std::chrono_literals;
using support::ending;
using support::to_string;
using support::version_name;
using ms = std::chrono::milliseconds;

template <class Policy>
using owned = support::stream<Policy>;

struct flood_full : tls::full_shutdown {
    static constexpr ms timeout{150};
};
struct patient_fast : tls::fast_shutdown {
    static constexpr ms timeout{5000};
};

bool readable_within(int fd, ms limit)
{
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(limit.count())) == 1;
}

} // namespace

TEST_CASE("a full close ends at its deadline against a peer that never stops sending", "[hardening][scenario-24]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    support::session<owned<flood_full>> c(version);
    // Once we stop reading, the peer's writes block: not for long.
    support::set_socket_timeouts(c.peer.fd(), 500ms);
    std::atomic<bool> stop{false};
    support::peer_thread t([&] {
        // Tiny records for up to 5 s: far longer than the close may take.
        const auto until = std::chrono::steady_clock::now() + 5s;
        while (!stop && std::chrono::steady_clock::now() < until) {
            std::size_t n = 0;
            ERR_clear_error();
            if (SSL_write_ex(c.peer.ssl(), "x", 1, &n) != 1)
                break;
        }
    });
    std::error_code ec;
    tls::shutdown_result r{};
    const ms took = support::time_of([&] { r = c.stream->shutdown(ec); });
    stop = true;
    c.stream.reset(); // the peer's next write fails at once
    t.join();
    CHECK(ec == tls::errc::timeout);
    CHECK(to_string(r) == "sent");
    CHECK(took >= flood_full::timeout);
    CHECK(took < flood_full::timeout + 400ms);
}

TEST_CASE("a read's I/O deadline holds against a TLS 1.3 peer that sends session tickets without end",
          "[hardening][scenario-24]")
{
    support::session<owned<tls::fast_shutdown>> c(TLS1_3_VERSION);
    support::set_socket_timeouts(c.peer.fd(), 500ms);
    std::atomic<bool> stop{false};
    support::peer_thread t([&] {
        const auto until = std::chrono::steady_clock::now() + 5s;
        while (!stop && std::chrono::steady_clock::now() < until) {
            ERR_clear_error();
            if (SSL_new_session_ticket(c.peer.ssl()) != 1 || SSL_do_handshake(c.peer.ssl()) != 1)
                break;
        }
    });
    c.stream->set_io_timeout(200ms);
    std::byte buf[16];
    std::error_code ec;
    const ms took = support::time_of([&] { c.stream->read_some(buf, ec); });
    stop = true;
    t.join();
    CHECK(ec == tls::errc::timeout);
    CHECK(took >= 200ms);
    CHECK(took < 200ms + 400ms);
    // Retryable, as every read timeout: the stream is still open, and the
    // next read (tickets still queued) again ends at its deadline.
    const ms again = support::time_of([&] { c.stream->read_some(buf, ec); });
    CHECK(ec == tls::errc::timeout);
    CHECK(again < 200ms + 400ms);
}

TEMPLATE_TEST_CASE("a lingering close gets the reply and the close_notify to a peer that is still uploading",
                   "[hardening][scenario-25]", patient_fast, tls::full_shutdown)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    // We are the server: the peer sends a request and a large upload, and
    // reads nothing until its upload is done (as HTTP clients do); we reply
    // early without reading the upload, then close.
    support::session<owned<TestType>> c(version, true, support::role::server);
    // The reply cannot all fit in the peer's receive buffer, but fits in our
    // send buffer: the rest waits behind the peer's closed window.
    const int small = 16 * 1024;
    const int large = 1 << 20;
    REQUIRE(::setsockopt(c.peer.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    REQUIRE(::setsockopt(c.stream->socket().native_handle(), SOL_SOCKET, SO_SNDBUF, &large, sizeof large) == 0);
    const std::string reply = support::pattern(std::size_t{64} * 1024, 25);
    const std::string upload(std::size_t{8} << 20, 'u');
    std::string received;
    ending how{};
    support::peer_thread t([&] {
        c.peer.write("request");
        try {
            c.peer.write(upload); // blocks while the server does not read
        } catch (const std::exception&) {
            // The server closed before taking the whole upload, as servers
            // that answer early do: like an HTTP client, read the reply anyway.
        }
        std::tie(received, how) = c.peer.read_to_end();
        c.peer.shutdown(); // answers a full close
    });
    CHECK(support::read_exactly(*c.stream, 7) == "request");
    // Some of the upload, so it is under way (and keeps coming) when we reply.
    CHECK(support::read_exactly(*c.stream, std::size_t{64} * 1024) == upload.substr(0, std::size_t{64} * 1024));
    c.stream->write_all(support::bytes(reply));
    c.stream.reset(); // the policy's close; then the socket closes
    t.join();
    CHECK(received.size() == reply.size());
    const bool intact = received == reply;
    CHECK(intact);
    CHECK(to_string(how) == "close_notify");
}

TEMPLATE_TEST_CASE("a pending renegotiation request or KeyUpdate provokes nothing but the policy's closure at close",
                   "[hardening][scenario-26]", tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    support::session<owned<TestType>> c(version);
    support::ping_pong(*c.stream, c.peer);
    // TLS 1.2: the server asks for a renegotiation (a HelloRequest); TLS
    // 1.3: a KeyUpdate that requests ours. It arrives and stays unread.
    if (version == TLS1_2_VERSION)
        REQUIRE(SSL_renegotiate(c.peer.ssl()) == 1);
    else
        REQUIRE(SSL_key_update(c.peer.ssl(), SSL_KEY_UPDATE_REQUESTED) == 1);
    REQUIRE(SSL_do_handshake(c.peer.ssl()) == 1);
    REQUIRE(readable_within(c.stream->socket().native_handle(), 5s));
    std::error_code ec;
    if constexpr (TestType::mode == tls::close_mode::full) {
        support::peer_thread answer([&] {
            // Reads raw until our close_notify; then answers with its own.
            c.peer.shutdown();
        });
        (void)c.stream->shutdown(ec);
        answer.join();
    } else {
        (void)c.stream->shutdown(ec);
    }
    c.stream.reset();
    const support::raw_end after = support::read_raw_until_eof(c.peer.fd());
    CHECK(after.clean_eof);
    const auto records = support::record_types(after.bytes);
    REQUIRE(records.has_value());
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(records->empty()); // no ClientHello, nothing at all
    } else {
        REQUIRE(records->size() == 1); // only our close_notify: no ClientHello, no KeyUpdate
        CHECK(records->front() == (version == TLS1_2_VERSION ? 21 : 23)); // TLS 1.3 encrypts alerts
    }
}

TEST_CASE("after a fatal error our alert reaches the peer, followed by a FIN rather than a reset",
          "[hardening][scenario-30][scenario-13]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    support::session<owned<tls::full_shutdown>> c(version);
    support::ping_pong(*c.stream, c.peer);
    // An application-data record that cannot be decrypted, then 20 KB more
    // that we will never read.
    std::string junk("\x17\x03\x03\x00\x40", 5); // header: 64 bytes of application data
    junk.append(0x40, '\x5a');
    junk.append(std::size_t{20} * 1024, '\x17');
    REQUIRE(::send(c.peer.fd(), junk.data(), junk.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(junk.size()));
    std::byte buf[16];
    std::error_code ec;
    c.stream->read_some(buf, ec);
    REQUIRE(ec);
    CHECK(ec != tls::errc::stream_truncated);
    c.stream.reset();
    const support::raw_end after = support::read_raw_until_eof(c.peer.fd());
    CHECK(after.error == 0); // a FIN, not ECONNRESET
    CHECK(after.clean_eof);
    const auto records = support::record_types(after.bytes);
    REQUIRE(records.has_value());
    CHECK(records->size() == 1); // OpenSSL's fatal alert, nothing more
}

TEST_CASE("a fast close that consumed the peer's waiting close_notify reports sent, and release_socket agrees",
          "[hardening][scenario-21]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version_name(version));

    support::session<owned<tls::fast_shutdown>> c(version);
    support::ping_pong(*c.stream, c.peer);
    c.peer.shutdown(); // its close_notify arrives before our close starts
    REQUIRE(readable_within(c.stream->socket().native_handle(), 5s));
    std::error_code ec;
    CHECK(to_string(c.stream->shutdown(ec)) == "sent");
    CHECK_FALSE(ec);
    CHECK_FALSE(std::move(*c.stream).release_socket(ec).has_value());
    CHECK(ec == tls::errc::not_closed);
}

TEST_CASE("bad input is a clear error: host names, timeouts, empty contexts, descriptors that are no socket",
          "[hardening][scenario-29][errors]")
{
    SECTION("a host name with a NUL byte, or over 255 bytes, is refused before anything is sent")
    {
        support::socket_pair pair = support::tcp_pair();
        owned<tls::fast_shutdown> s(support::client_context(), std::move(pair.a));
        using std::string_view_literals::operator""sv;
        CHECK(support::thrown_code([&] { s.connect("localhost\0.attacker.example"sv); })
              == std::errc::invalid_argument);
        CHECK(support::thrown_code([&] { s.connect(std::string(256, 'a')); }) == std::errc::invalid_argument);
        std::error_code ec;
        CHECK(s.try_connect("a\0b"sv, ec) == tls::want::nothing);
        CHECK(ec == std::errc::invalid_argument);
        CHECK(support::read_raw_available(pair.b.native_handle()).empty());
    }
    SECTION("milliseconds::max() as a timeout means practically never, not at once")
    {
        support::session<owned<tls::full_shutdown>> c(TLS1_3_VERSION);
        c.stream->set_io_timeout(ms::max());
        c.stream->set_shutdown_timeout(ms::max());
        support::peer_thread t([&] {
            c.peer.write("late");
            c.peer.read_to_end();
            c.peer.shutdown();
        });
        CHECK(support::read_exactly(*c.stream, 4) == "late");
        CHECK(to_string(c.stream->shutdown()) == "complete");
        t.join();
    }
    SECTION("an empty or moved-from context: a clear error or a documented no-op, never a crash")
    {
        tls::context empty;
        empty.set_accept_missing_close_notify();
        CHECK_FALSE(empty.accepts_missing_close_notify());
        CHECK(support::thrown_code([&] { empty.load_verify_file("/nonexistent"); }) == std::errc::invalid_argument);
        tls::context full = support::client_context();
        tls::context taken = std::move(full);
        full.set_accept_missing_close_notify(false); // NOLINT(bugprone-use-after-move)
        CHECK_THROWS_AS((owned<tls::fast_shutdown>(full, tls::unique_socket{})), std::invalid_argument);
    }
    SECTION("a descriptor that is no connected socket reports its errno")
    {
        int pipe_fds[2];
        REQUIRE(::pipe(pipe_fds) == 0);
        ::close(pipe_fds[1]);
        owned<tls::fast_shutdown> on_pipe(support::server_context(), tls::unique_socket{pipe_fds[0]});
        CHECK(support::thrown_code([&] { on_pipe.accept(); }) == std::errc::not_a_socket);

        int spare[2];
        REQUIRE(::pipe(spare) == 0);
        ::close(spare[0]);
        ::close(spare[1]);
        const int closed = spare[0]; // a descriptor number nothing has open
        tls::tls_stream<tls::fd_socket, tls::fast_shutdown> on_closed(support::server_context(),
                                                                      tls::fd_socket{closed});
        CHECK(support::thrown_code([&] { on_closed.accept(); }) == std::errc::bad_file_descriptor);

        tls::unique_socket unconnected{::socket(AF_INET, SOCK_STREAM, 0)};
        REQUIRE(unconnected.native_handle() >= 0);
        owned<tls::fast_shutdown> on_unconnected(support::server_context(), std::move(unconnected));
        CHECK(support::thrown_code([&] { on_unconnected.accept(); }) == std::errc::not_connected);
    }
}
