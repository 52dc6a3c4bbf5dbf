// Errors: codes, verification failures, truncation, dead peers without
// SIGPIPE, OpenSSL error-queue hygiene, misuse and I/O timeouts.
#include "support/support.hpp"

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

namespace {

using namespace std::chrono_literals;
using Catch::Matchers::ContainsSubstring;
using support::bytes;
using support::echo;
using support::read_exactly;
using support::text;
using support::thrown_code;

using fd_fast = tls::tls_stream<tls::fd_socket, tls::fast_shutdown>;
using fd_full = tls::tls_stream<tls::fd_socket, tls::full_shutdown>;

// A client tls_stream over a borrowed fd_socket, connected to a raw OpenSSL server.
template <class Policy = tls::fast_shutdown>
using session = support::session<tls::tls_stream<tls::fd_socket, Policy>>;

// What a client handshake against a raw server peer (server_context(),
// certificate for localhost / 127.0.0.1 / ::1) produced.
struct connect_outcome {
    std::optional<std::system_error> error; // what connect threw
    long verify_result = -1;                // SSL_get_verify_result on our side
    std::string sni;                        // server name the peer received ("" = none)
};

template <class Connect>
connect_outcome try_connect(const tls::context& ctx, Connect&& connect)
{
    support::socket_pair pair = support::tcp_pair();
    support::raw_peer peer(support::server_context(), std::move(pair.b));
    fd_fast s(ctx, tls::fd_socket{pair.a.native_handle()});
    s.set_io_timeout(5s);
    connect_outcome out;
    support::peer_thread t([&] {
        try {
            peer.accept();
        } catch (const std::exception&) {
            return; // expected whenever our side rejects the certificate
        }
        const char* name = SSL_get_servername(peer.ssl(), TLSEXT_NAMETYPE_host_name);
        out.sni = name ? name : "";
    });
    try {
        connect(s);
    } catch (const std::system_error& e) {
        out.error = e;
    }
    out.verify_result = SSL_get_verify_result(s.native_handle());
    t.join();
    return out;
}

void push_junk() { ERR_raise(ERR_LIB_SSL, SSL_R_BAD_LENGTH); }

// Garbage that is not a TLS record, written straight onto the peer's socket.
void send_garbage(int fd)
{
    const char junk[] = "\xff\xff\xff\xff this is not a TLS record \xff\xff\xff\xff";
    support::ensure(::send(fd, junk, sizeof junk - 1, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof junk - 1),
                    "send garbage");
}

// ---------------------------------------------------------------- forked writer

// Exit codes of the forked writer.
enum child_exit : int {
    child_ok = 0,            // EPIPE/ECONNRESET (system_category), SIGPIPE disposition untouched
    child_wrong_error = 10,  // failed with some other error
    child_never_failed = 11, // every write "succeeded"
    child_exception = 12,    // something threw
    child_disposition_changed = 13,
};

// The forked child: with SIGPIPE at its default (fatal) disposition, sets up
// its own connection, lets the peer vanish, writes until the stream reports
// it, tells the parent what happened through `report_fd`, and _exits. The
// parent never touches that connection, so a library that raises SIGPIPE
// kills only the child.
[[noreturn]] void write_to_vanished_peer(bool tcp, int report_fd) noexcept
{
    int code = child_exception;
    std::string report = "exception";
    auto tell = [&] { [[maybe_unused]] const ssize_t w = ::write(report_fd, report.data(), report.size()); };
    try {
        ::signal(SIGPIPE, SIG_DFL);
        session<tls::fast_shutdown> s(0, tcp);
        s.peer.drop();
        s.peer.close_socket(); // gone, without a word

        code = child_never_failed;
        report = "no write failed";
        const std::string chunk(1024, 'x');
        for (int i = 0; i < 10000; ++i) {
            std::error_code ec;
            s.stream->write_some(bytes(chunk), ec);
            if (ec) {
                const bool expected =
                    ec.category() == std::system_category() && (ec.value() == EPIPE || ec.value() == ECONNRESET);
                code = expected ? child_ok : child_wrong_error;
                report = std::string(ec.category().name()) + ":" + std::to_string(ec.value()) + " (" + ec.message()
                         + ") after " + std::to_string(i) + " writes";
                break;
            }
        }
        struct sigaction now {};
        if (::sigaction(SIGPIPE, nullptr, &now) != 0 || now.sa_handler != SIG_DFL) {
            code = child_disposition_changed;
            report += "; SIGPIPE disposition changed";
        }
        tell();
        report.clear();
        // ~session: the stream's close_notify also goes to the vanished peer.
    } catch (const std::exception& e) {
        code = child_exception;
        report = std::string("exception: ") + e.what();
    } catch (...) {
        code = child_exception;
    }
    tell();
    ::_exit(code);
}

} // namespace

// ---------------------------------------------------------------- codes

TEST_CASE("tls::errc values make error codes that compare equal to them, with distinct messages", "[errors]")
{
    const tls::errc all[] = {tls::errc::stream_truncated,  tls::errc::timeout, tls::errc::not_connected,
                             tls::errc::already_connected, tls::errc::closed,  tls::errc::not_closed};
    std::set<std::string> messages;
    for (const tls::errc e : all) {
        const std::error_code made = tls::make_error_code(e);
        const std::error_code implicit = e;
        CAPTURE(made.value(), made.message());
        CHECK(made);
        CHECK(made == e);
        CHECK(implicit == made);
        CHECK(&made.category() == &tls::error_category());
        CHECK_FALSE(made.message().empty());
        messages.insert(made.message());
        for (const tls::errc other : all)
            if (other != e)
                CHECK(made != other);
    }
    CHECK(messages.size() == std::size(all));
    CHECK(std::string(tls::error_category().name()) != tls::openssl_category().name());
}

TEST_CASE("errc::timeout compares equal to std::errc::timed_out; the other codes do not", "[errors]")
{
    CHECK(tls::make_error_code(tls::errc::timeout) == std::errc::timed_out);
    CHECK(tls::make_error_code(tls::errc::stream_truncated) != std::errc::timed_out);
    CHECK(tls::make_error_code(tls::errc::closed) != std::errc::timed_out);
}

TEST_CASE("openssl_category messages are OpenSSL's reason strings", "[errors]")
{
    // Codes only ever come from a library in use: a context exists by then.
    const tls::context ctx = tls::context::client();
    const auto code = static_cast<int>(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_CERTIFICATE_VERIFY_FAILED));
    const std::error_code ec(code, tls::openssl_category());
    CHECK_THAT(ec.message(), ContainsSubstring("certificate verify failed"));
}

// ---------------------------------------------------------------- verification

TEST_CASE("a hostname mismatch fails the handshake with 'certificate verify failed' and 'hostname mismatch'",
          "[errors]")
{
    const tls::context ctx = support::client_context();
    const connect_outcome out = try_connect(ctx, [](fd_fast& s) { s.connect("wrong.example"); });
    REQUIRE(out.error.has_value());
    CHECK(&out.error->code().category() == &tls::openssl_category());
    CHECK_THAT(out.error->what(), ContainsSubstring("certificate verify failed"));
    CHECK_THAT(out.error->what(), ContainsSubstring("hostname mismatch"));
    CHECK(out.verify_result == X509_V_ERR_HOSTNAME_MISMATCH);
}

TEST_CASE("the error_code overload of connect reports a hostname mismatch and leaves the error queue empty", "[errors]")
{
    const tls::context ctx = support::client_context();
    std::error_code ec;
    unsigned long left_on_queue = 1;
    const connect_outcome out = try_connect(ctx, [&](fd_fast& s) {
        s.connect("wrong.example", ec);
        left_on_queue = ERR_peek_error();
    });
    CHECK_FALSE(out.error.has_value());
    CHECK(left_on_queue == 0);
    CHECK(&ec.category() == &tls::openssl_category());
    CHECK_THAT(ec.message(), ContainsSubstring("certificate verify failed"));
    CHECK(out.verify_result == X509_V_ERR_HOSTNAME_MISMATCH);
}

TEST_CASE("connect verifies IP addresses against the certificate's IP entries", "[errors]")
{
    const tls::context ctx = support::client_context();
    SECTION("127.0.0.1 is in the certificate")
    {
        const connect_outcome out = try_connect(ctx, [](fd_fast& s) { s.connect("127.0.0.1"); });
        CHECK_FALSE(out.error.has_value());
        CHECK(out.verify_result == X509_V_OK);
        CHECK(out.sni.empty()); // an IP address is never sent as SNI
    }
    SECTION("::1 is in the certificate")
    {
        const connect_outcome out = try_connect(ctx, [](fd_fast& s) { s.connect("::1"); });
        CHECK_FALSE(out.error.has_value());
        CHECK(out.verify_result == X509_V_OK);
    }
    SECTION("10.1.2.3 is not")
    {
        const connect_outcome out = try_connect(ctx, [](fd_fast& s) { s.connect("10.1.2.3"); });
        REQUIRE(out.error.has_value());
        CHECK(&out.error->code().category() == &tls::openssl_category());
        CHECK_THAT(out.error->what(), ContainsSubstring("certificate verify failed"));
        CHECK(out.verify_result == X509_V_ERR_IP_ADDRESS_MISMATCH);
    }
}

TEST_CASE("a certificate from an untrusted CA fails with 'certificate verify failed', with or without a host",
          "[errors]")
{
    const tls::context untrusted = tls::context::client(); // no load_verify_file: the test CA is unknown
    const bool with_host = GENERATE(true, false);
    CAPTURE(with_host);
    const connect_outcome out = try_connect(untrusted, [&](fd_fast& s) {
        if (with_host)
            s.connect("localhost");
        else
            s.connect();
    });
    REQUIRE(out.error.has_value());
    CHECK(&out.error->code().category() == &tls::openssl_category());
    CHECK_THAT(out.error->what(), ContainsSubstring("certificate verify failed"));
    CHECK(out.verify_result != X509_V_OK);
}

TEST_CASE("connect() without a host skips the hostname check and SNI but still verifies the chain", "[errors]")
{
    const tls::context ctx = support::client_context();
    const connect_outcome without = try_connect(ctx, [](fd_fast& s) { s.connect(); });
    CHECK_FALSE(without.error.has_value());
    CHECK(without.verify_result == X509_V_OK);
    CHECK(without.sni.empty());

    const connect_outcome with = try_connect(ctx, [](fd_fast& s) { s.connect("localhost"); });
    CHECK_FALSE(with.error.has_value());
    CHECK(with.sni == "localhost");
}

// ---------------------------------------------------------------- truncation

TEST_CASE("a transport that ends without close_notify is stream_truncated, never EOF, and stays failed",
          "[scenario-5][errors]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool reset = GENERATE(false, true);
    const bool throwing = GENERATE(false, true);
    CAPTURE(version, reset, throwing);
    session<tls::full_shutdown> s(version);

    // The peer sends some data, then ends the TCP connection (FIN or RST)
    // without any alert once we told it we have read that data.
    support::peer_thread peer([&] {
        support::ensure(s.peer.read_exactly(2) == "go", "peer: no go");
        s.peer.write("partial");
        support::ensure(s.peer.read_exactly(3) == "end", "peer: no end");
        if (reset)
            support::arm_reset(s.peer.fd());
        s.peer.drop();
        s.peer.close_socket();
    });
    s.stream->write_all(bytes("go"));
    CHECK(read_exactly(*s.stream, 7) == "partial");
    s.stream->write_all(bytes("end"));

    std::byte buf[64];
    std::error_code ec;
    std::size_t n = 0;
    if (throwing)
        ec = thrown_code([&] { n = s.stream->read_some(buf); });
    else
        n = s.stream->read_some(buf, ec);
    peer.join();

    CHECK(ec == tls::errc::stream_truncated);
    CHECK(n == 0);
    CHECK(ERR_peek_error() == 0);

    // Failed for good: the same error again, from either overload.
    CHECK(s.stream->read_some(buf, ec) == 0);
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(thrown_code([&] { s.stream->read_some(buf); }) == tls::errc::stream_truncated);
    CHECK(s.stream->write_some(bytes("x"), ec) == 0);
    CHECK(ec == tls::errc::stream_truncated);
    // shutdown() on a failed stream reports that error again (and sends nothing).
    CHECK(s.stream->shutdown(ec) == tls::shutdown_result::none);
    CHECK(ec == tls::errc::stream_truncated);
    CHECK(thrown_code([&] { (void)s.stream->shutdown(); }) == tls::errc::stream_truncated);

    // The destructor puts nothing on a failed stream's wire and does not wait
    // for a close_notify (full policy: that would take 3 s).
    const auto took = support::time_of([&] { s.stream.reset(); });
    CHECK(took < 1000ms);
    CHECK(ERR_peek_error() == 0);
}

TEST_CASE("after truncation the destructor of a stream puts nothing on the wire", "[scenario-5][errors]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool full = GENERATE(false, true);
    CAPTURE(version, full);
    support::socket_pair pair = support::tcp_pair();
    support::raw_peer peer(support::server_context(version), std::move(pair.b));
    std::optional<fd_fast> fast;
    std::optional<fd_full> fuller;
    support::peer_thread t([&] { peer.accept(); });
    if (full)
        fuller.emplace(support::client_context(version), tls::fd_socket{pair.a.native_handle()});
    else
        fast.emplace(support::client_context(version), tls::fd_socket{pair.a.native_handle()});
    auto read_and_destroy = [&](auto& stream) {
        stream->set_io_timeout(5s);
        stream->connect("localhost");
        t.join();
        // The peer ends its direction without close_notify (FIN) but keeps
        // reading, so it sees whatever our destructor sends.
        REQUIRE(::shutdown(peer.fd(), SHUT_WR) == 0);
        std::byte buf[64];
        std::error_code ec;
        CHECK(stream->read_some(buf, ec) == 0);
        CHECK(ec == tls::errc::stream_truncated);
        // OpenSSL itself answers the unexpected EOF with a fatal alert
        // (decode_error) from inside SSL_read: not the destructor's doing,
        // so take it off the wire first.
        const std::size_t before = support::read_raw_available(peer.fd()).size();
        stream.reset();
        return before;
    };
    const std::size_t before = full ? read_and_destroy(fuller) : read_and_destroy(fast);
    INFO("bytes read_some put on the wire before the destructor ran: " << before);

    pair.a.reset(); // our end of the connection: the peer reads EOF after anything the destructor sent
    char c[64];
    const ssize_t n = ::recv(peer.fd(), c, sizeof c, 0); // bounded by the peer's 10 s socket timeout
    CHECK(n == 0);
}

// ---------------------------------------------------------------- dead peer, SIGPIPE

TEST_CASE("writing to a peer that is gone returns EPIPE or ECONNRESET and never raises SIGPIPE",
          "[scenario-14][errors]")
{
    const bool tcp = GENERATE(true, false);
    CAPTURE(tcp);

    int report_pipe[2];
    REQUIRE(::pipe2(report_pipe, O_CLOEXEC) == 0);
    tls::unique_socket report_read{report_pipe[0]};
    tls::unique_socket report_write{report_pipe[1]};

    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0)
        write_to_vanished_peer(tcp, report_write.native_handle()); // never returns
    report_write.reset();

    // Wait for the child, bounded: WNOHANG polls paced by its report pipe;
    // SIGKILL if it overstays.
    int status = 0;
    bool killed = false;
    bool pipe_open = true;
    std::string report;
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    for (;;) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        REQUIRE(r == 0);
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            killed = true;
            break;
        }
        pollfd p{report_read.native_handle(), POLLIN, 0};
        if (::poll(pipe_open ? &p : nullptr, pipe_open ? 1 : 0, 10) > 0) {
            char buf[256];
            const ssize_t k = ::read(report_read.native_handle(), buf, sizeof buf);
            if (k > 0)
                report.append(buf, static_cast<std::size_t>(k));
            else
                pipe_open = false;
        }
    }
    char buf[256];
    for (ssize_t k; (k = ::read(report_read.native_handle(), buf, sizeof buf)) > 0;)
        report.append(buf, static_cast<std::size_t>(k));

    CAPTURE(report);
    REQUIRE_FALSE(killed);
    if (WIFSIGNALED(status))
        FAIL_CHECK("child killed by signal " << WTERMSIG(status) << (WTERMSIG(status) == SIGPIPE ? " (SIGPIPE)" : ""));
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == child_ok);
}

TEST_CASE("using tls_stream, including its failures, leaves the process's SIGPIPE disposition untouched", "[errors]")
{
    struct sigaction before {};
    REQUIRE(::sigaction(SIGPIPE, nullptr, &before) == 0);
    {
        session<tls::full_shutdown> s;
        CHECK(echo(*s.stream, s.peer, "hello") == "hello");
        support::peer_thread t([&] {
            s.peer.read_to_end();
            s.peer.shutdown();
        });
        CHECK(s.stream->shutdown() == tls::shutdown_result::complete);
        t.join();
    }
    {
        session<tls::full_shutdown> s;
        s.peer.drop();
        s.peer.close_socket();
        std::byte buf[16];
        std::error_code ec;
        s.stream->read_some(buf, ec);
        CHECK(ec == tls::errc::stream_truncated);
    }
    struct sigaction after {};
    REQUIRE(::sigaction(SIGPIPE, nullptr, &after) == 0);
    CHECK(after.sa_handler == before.sa_handler);
    CHECK(after.sa_flags == before.sa_flags);
}

// ---------------------------------------------------------------- error queue

TEST_CASE("a stale entry on the OpenSSL error queue does not change the outcome of connect, read, write or shutdown",
          "[scenario-22][errors]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version);
    support::socket_pair pair = support::tcp_pair();
    support::raw_peer peer(support::server_context(version), std::move(pair.b));
    fd_full s(support::client_context(version), tls::fd_socket{pair.a.native_handle()});
    // A deadline makes every wait go through non-blocking calls and
    // SSL_get_error: exactly where a stale entry would turn a want-read into
    // a failure.
    s.set_io_timeout(5s);

    support::peer_thread t([&] {
        peer.accept();
        support::ensure(peer.read_exactly(4) == "ping", "peer: no ping");
        peer.write("pong");
        const auto [rest, how] = peer.read_to_end();
        support::ensure(rest == "tail", "peer: got '" + rest + "'");
        support::ensure(how == support::ending::close_notify, std::string("peer ended by ") + support::to_string(how));
        peer.shutdown();
    });

    std::error_code ec;
    push_junk();
    REQUIRE(ERR_peek_error() != 0);
    s.connect("localhost", ec);
    CHECK_FALSE(ec);

    push_junk();
    s.write_all(bytes("ping"), ec);
    CHECK_FALSE(ec);

    push_junk();
    std::byte buf[16];
    const std::size_t n = s.read_some(buf, ec);
    CHECK_FALSE(ec);
    CHECK(text(std::span<const std::byte>(buf, n)) == "pong");

    push_junk();
    CHECK(s.write_some(bytes("tail"), ec) == 4);
    CHECK_FALSE(ec);

    push_junk();
    CHECK(s.shutdown(ec) == tls::shutdown_result::complete);
    CHECK_FALSE(ec);
    CAPTURE(ec.message());
    t.join();
    ERR_clear_error();
}

TEST_CASE("a failed call turned into an error_code leaves the OpenSSL error queue empty", "[scenario-22][errors]")
{
    std::byte buf[64];
    std::error_code ec;
    ERR_clear_error();

    SECTION("a record that is not TLS")
    {
        session<> s;
        send_garbage(s.peer.fd());
        CHECK(s.stream->read_some(buf, ec) == 0);
        CHECK(ec);
        CHECK(ec != tls::errc::stream_truncated);
        CHECK(ERR_peek_error() == 0);
    }
    SECTION("a handshake with a peer that does not speak TLS")
    {
        support::socket_pair pair = support::tcp_pair();
        fd_fast s(support::client_context(), tls::fd_socket{pair.a.native_handle()});
        s.set_io_timeout(5s);
        send_garbage(pair.b.native_handle());
        s.connect("localhost", ec);
        CHECK(ec);
        CHECK(ERR_peek_error() == 0);
    }
    SECTION("truncation")
    {
        session<> s;
        s.peer.drop();
        s.peer.close_socket();
        CHECK(s.stream->read_some(buf, ec) == 0);
        CHECK(ec == tls::errc::stream_truncated);
        CHECK(ERR_peek_error() == 0);
    }
    SECTION("shutdown against a peer that reset the connection")
    {
        session<> s;
        support::arm_reset(s.peer.fd());
        s.peer.drop();
        s.peer.close_socket();
        s.stream->read_some(buf, ec); // sees the reset
        CHECK(ec);
        CHECK(s.stream->shutdown(ec) == tls::shutdown_result::none);
        CHECK(ec);
        CHECK(ERR_peek_error() == 0);
    }
    SECTION("context and trust-anchor files")
    {
        const std::string missing = "/nonexistent-tls-stream-dir/missing.pem";
        const tls::context bad = tls::context::server(missing, missing, ec);
        CHECK(ec);
        CHECK(ERR_peek_error() == 0);
        tls::context ctx = tls::context::client();
        ctx.load_verify_file(missing, ec);
        CHECK(ec);
        CHECK(ERR_peek_error() == 0);
    }
}

TEST_CASE("a failed stream, alive or destroyed, does not disturb a healthy stream on the same thread",
          "[scenario-22][errors]")
{
    session<> healthy;
    session<> broken;
    send_garbage(broken.peer.fd());
    std::byte buf[64];
    std::error_code ec;
    CHECK(broken.stream->read_some(buf, ec) == 0);
    REQUIRE(ec);

    CHECK(echo(*healthy.stream, healthy.peer, "while the other has failed") == "while the other has failed");
    CHECK(ERR_peek_error() == 0);

    broken.stream.reset();
    CHECK(ERR_peek_error() == 0);
    CHECK(echo(*healthy.stream, healthy.peer, "after it was destroyed") == "after it was destroyed");
    CHECK(healthy.peer.alerts().empty());
}

// ---------------------------------------------------------------- misuse

TEST_CASE("negative timeouts are std::invalid_argument and leave the settings unchanged", "[errors]")
{
    support::socket_pair pair = support::unix_pair();
    fd_full s(support::client_context(), tls::fd_socket{pair.a.native_handle()});
    CHECK_THROWS_AS(s.set_io_timeout(-1ms), std::invalid_argument);
    CHECK_THROWS_AS(s.set_shutdown_timeout(-1ms), std::invalid_argument);
    CHECK(s.io_timeout() == 0ms);
    CHECK(s.shutdown_timeout() == tls::full_shutdown::timeout);
    CHECK_NOTHROW(s.set_io_timeout(0ms));
    CHECK_NOTHROW(s.set_shutdown_timeout(0ms));
}

TEST_CASE("connect(\"\") is std::errc::invalid_argument from both overloads", "[errors]")
{
    support::socket_pair pair = support::unix_pair();
    fd_fast s(support::client_context(), tls::fd_socket{pair.a.native_handle()});
    std::error_code ec;
    s.connect("", ec);
    CHECK(ec == std::errc::invalid_argument);
    CHECK(thrown_code([&] { s.connect(""); }) == std::errc::invalid_argument);
}

TEST_CASE("I/O and shutdown before the handshake are errc::not_connected from both overloads", "[errors]")
{
    support::socket_pair pair = support::unix_pair();
    fd_full s(support::client_context(), tls::fd_socket{pair.a.native_handle()});
    s.set_io_timeout(5s);
    std::byte buf[16];
    std::error_code ec;

    CHECK(s.read_some(buf, ec) == 0);
    CHECK(ec == tls::errc::not_connected);
    CHECK(s.write_some(bytes("x"), ec) == 0);
    CHECK(ec == tls::errc::not_connected);
    s.write_all(bytes("x"), ec);
    CHECK(ec == tls::errc::not_connected);
    s.close_write(ec);
    CHECK(ec == tls::errc::not_connected);
    CHECK(s.shutdown(ec) == tls::shutdown_result::none);
    CHECK(ec == tls::errc::not_connected);

    CHECK(thrown_code([&] { s.read_some(buf); }) == tls::errc::not_connected);
    CHECK(thrown_code([&] { s.write_some(bytes("x")); }) == tls::errc::not_connected);
    CHECK(thrown_code([&] { s.write_all(bytes("x")); }) == tls::errc::not_connected);
    CHECK(thrown_code([&] { s.close_write(); }) == tls::errc::not_connected);
    CHECK(thrown_code([&] { (void)s.shutdown(); }) == tls::errc::not_connected);

    // Nothing went on the wire.
    char c;
    CHECK(::recv(pair.b.native_handle(), &c, 1, MSG_DONTWAIT) == -1);
}

TEST_CASE("a second handshake is errc::already_connected and leaves the connection working", "[errors]")
{
    session<> s;
    std::error_code ec;
    s.stream->connect("localhost", ec);
    CHECK(ec == tls::errc::already_connected);
    s.stream->connect(ec);
    CHECK(ec == tls::errc::already_connected);
    s.stream->accept(ec);
    CHECK(ec == tls::errc::already_connected);
    CHECK(thrown_code([&] { s.stream->connect("localhost"); }) == tls::errc::already_connected);
    CHECK(thrown_code([&] { s.stream->accept(); }) == tls::errc::already_connected);

    CHECK(echo(*s.stream, s.peer, "still connected") == "still connected");
}

TEST_CASE("writing after close_write() is errc::closed from both overloads", "[scenario-18][errors]")
{
    session<> s;
    s.stream->close_write();
    std::error_code ec;
    CHECK(s.stream->write_some(bytes("late"), ec) == 0);
    CHECK(ec == tls::errc::closed);
    s.stream->write_all(bytes("late"), ec);
    CHECK(ec == tls::errc::closed);
    CHECK(thrown_code([&] { s.stream->write_some(bytes("late")); }) == tls::errc::closed);
    CHECK(thrown_code([&] { s.stream->write_all(bytes("late")); }) == tls::errc::closed);

    // The peer got our close_notify and nothing after it.
    const auto [data, how] = s.peer.read_to_end();
    CHECK(data.empty());
    CHECK(how == support::ending::close_notify);
}

TEST_CASE("reading or writing after shutdown() is errc::closed from both overloads", "[scenario-18][errors]")
{
    session<> s;
    CHECK(s.stream->shutdown() == tls::shutdown_result::sent);
    std::byte buf[16];
    std::error_code ec;
    CHECK(s.stream->read_some(buf, ec) == 0);
    CHECK(ec == tls::errc::closed);
    CHECK(s.stream->write_some(bytes("late"), ec) == 0);
    CHECK(ec == tls::errc::closed);
    s.stream->write_all(bytes("late"), ec);
    CHECK(ec == tls::errc::closed);
    CHECK(thrown_code([&] { s.stream->read_some(buf); }) == tls::errc::closed);
    CHECK(thrown_code([&] { s.stream->write_some(bytes("late")); }) == tls::errc::closed);
    CHECK(thrown_code([&] { s.stream->write_all(bytes("late")); }) == tls::errc::closed);
}

TEST_CASE("release_socket() before a completed bidirectional close is errc::not_closed and the stream stays usable",
          "[errors]")
{
    session<> s;
    const bool half_closed = GENERATE(false, true);
    CAPTURE(half_closed);
    if (half_closed)
        s.stream->close_write(); // ours sent, the peer's not received

    std::error_code ec;
    CHECK_FALSE(std::move(*s.stream).release_socket(ec).has_value());
    CHECK(ec == tls::errc::not_closed);
    CHECK(thrown_code([&] { (void)std::move(*s.stream).release_socket(); }) == tls::errc::not_closed);
    REQUIRE(s.stream->native_handle() != nullptr);

    if (half_closed) {
        // Still readable: the peer's data and then its close_notify.
        const auto [data, how] = s.peer.read_to_end();
        CHECK(how == support::ending::close_notify);
        s.peer.write("reply");
        s.peer.shutdown();
        CHECK(read_exactly(*s.stream, 5) == "reply");
        std::byte buf[16];
        CHECK(s.stream->read_some(buf, ec) == 0);
        CHECK_FALSE(ec);
        // Now the close is complete and the socket can be had.
        const auto released = std::move(*s.stream).release_socket(ec);
        CHECK_FALSE(ec);
        CHECK(released.has_value());
    } else {
        CHECK(echo(*s.stream, s.peer, "still usable") == "still usable");
    }
}

// ---------------------------------------------------------------- io timeout

TEST_CASE("read_some with an I/O timeout fails with errc::timeout on time and the stream stays usable", "[errors]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(version);
    session<> s(version);
    s.stream->set_io_timeout(200ms);
    std::byte buf[64];
    std::error_code ec;
    std::size_t n = 1;

    const auto took = support::time_of([&] { n = s.stream->read_some(buf, ec); });
    CHECK(ec == tls::errc::timeout);
    CHECK(ec == std::errc::timed_out);
    CHECK(n == 0);
    CHECK(took >= 200ms);
    CHECK(took < 200ms + 1500ms);

    const auto took_throwing =
        support::time_of([&] { CHECK(thrown_code([&] { s.stream->read_some(buf); }) == tls::errc::timeout); });
    CHECK(took_throwing >= 200ms);
    CHECK(took_throwing < 200ms + 1500ms);

    s.peer.write("late data");
    CHECK(read_exactly(*s.stream, 9) == "late data");
    CHECK(echo(*s.stream, s.peer, "and more") == "and more");
}
