// RAII: tls_stream, tls::context and tls::unique_socket own what they hold,
// move it without throwing, and give it back (close it) exactly once.
#include "support/support.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>

namespace {

using namespace std::chrono_literals;
using Catch::Matchers::ContainsSubstring;
using support::bytes;
using support::echo;
using support::handshake;
using support::session;
using support::socket_over;
using support::thrown_code;

using fd_fast = tls::tls_stream<tls::fd_socket, tls::fast_shutdown>;
using fd_quiet = tls::tls_stream<tls::fd_socket, tls::quiet_shutdown>;
using fd_full = tls::tls_stream<tls::fd_socket, tls::full_shutdown>;
using uq_fast = tls::tls_stream<tls::unique_socket, tls::fast_shutdown>;
using uq_quiet = tls::tls_stream<tls::unique_socket, tls::quiet_shutdown>;
using uq_full = tls::tls_stream<tls::unique_socket, tls::full_shutdown>;

// AF_UNIX: whether the other end of `fd`'s pair was closed (recv sees EOF at
// once); false while it is open and silent.
bool peer_closed(int fd)
{
    char c;
    const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
    return n == 0;
}

// Counts how often OpenSSL frees an SSL_CTX carrying our ex_data: the ex_data
// free callback runs inside SSL_CTX_free.
void count_ctx_free(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/, void* /*argp*/)
{
    if (ptr)
        ++*static_cast<int*>(ptr);
}

int free_counter_index()
{
    static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, &count_ctx_free);
    return index;
}

SSL_CTX* counted_ctx(int& frees)
{
    SSL_CTX* raw = SSL_CTX_new(TLS_method());
    if (raw)
        SSL_CTX_set_ex_data(raw, free_counter_index(), &frees);
    return raw;
}

// A path under the temporary directory that does not exist (nothing is created).
std::string missing_file(const char* name)
{
    const auto dir = std::filesystem::temp_directory_path() / ("tls_stream-raii-missing-" + std::to_string(::getpid()));
    return (dir / name).string();
}

} // namespace

// ---------------------------------------------------------------- type traits

TEMPLATE_TEST_CASE("tls_stream is move-only, and its destructor and moves never throw", "[raii]", fd_fast, fd_quiet,
                   fd_full, uq_fast, uq_quiet, uq_full)
{
    STATIC_REQUIRE(std::is_nothrow_destructible_v<TestType>);
    STATIC_REQUIRE(std::is_nothrow_move_constructible_v<TestType>);
    STATIC_REQUIRE(std::is_nothrow_move_assignable_v<TestType>);
    STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<TestType>);
    STATIC_REQUIRE_FALSE(std::is_copy_assignable_v<TestType>);
}

TEST_CASE("tls::context is nothrow-movable and not copyable", "[raii]")
{
    STATIC_REQUIRE(std::is_nothrow_destructible_v<tls::context>);
    STATIC_REQUIRE(std::is_nothrow_move_constructible_v<tls::context>);
    STATIC_REQUIRE(std::is_nothrow_move_assignable_v<tls::context>);
    STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<tls::context>);
    STATIC_REQUIRE_FALSE(std::is_copy_assignable_v<tls::context>);
}

TEST_CASE("tls::unique_socket is nothrow-movable and not copyable", "[raii]")
{
    STATIC_REQUIRE(std::is_nothrow_destructible_v<tls::unique_socket>);
    STATIC_REQUIRE(std::is_nothrow_move_constructible_v<tls::unique_socket>);
    STATIC_REQUIRE(std::is_nothrow_move_assignable_v<tls::unique_socket>);
    STATIC_REQUIRE_FALSE(std::is_copy_constructible_v<tls::unique_socket>);
    STATIC_REQUIRE_FALSE(std::is_copy_assignable_v<tls::unique_socket>);
}

// ---------------------------------------------------------------- moves

TEMPLATE_TEST_CASE("a move-constructed tls_stream carries the connection; the moved-from one is not_connected",
                   "[raii]", fd_fast, uq_fast)
{
    session<TestType> s;
    TestType& source = *s.stream;
    SSL* const ssl = source.native_handle();
    const int fd = source.socket().native_handle();
    REQUIRE(ssl != nullptr);

    TestType moved(std::move(source));

    CHECK(moved.native_handle() == ssl);
    CHECK(moved.socket().native_handle() == fd);
    CHECK(echo(moved, s.peer, "through the new stream") == "through the new stream");

    CHECK(source.native_handle() == nullptr); // NOLINT(bugprone-use-after-move): checks the moved-from state
    if constexpr (std::is_same_v<typename TestType::socket_type, tls::unique_socket>)
        CHECK(source.socket().native_handle() == -1);

    std::byte buf[16];
    std::error_code ec;
    CHECK(source.read_some(buf, ec) == 0);
    CHECK(ec == tls::errc::not_connected);
    CHECK(source.write_some(bytes("x"), ec) == 0);
    CHECK(ec == tls::errc::not_connected);
    source.write_all(bytes("x"), ec);
    CHECK(ec == tls::errc::not_connected);
    source.close_write(ec);
    CHECK(ec == tls::errc::not_connected);
    CHECK(source.shutdown(ec) == tls::shutdown_result::none);
    CHECK(ec == tls::errc::not_connected);
    source.connect("localhost", ec);
    CHECK(ec == tls::errc::not_connected);
    source.accept(ec);
    CHECK(ec == tls::errc::not_connected);
    // NOLINTNEXTLINE(bugprone-use-after-move): checks the moved-from state
    CHECK_FALSE(std::move(source).release_socket(ec).has_value());
    CHECK(ec == tls::errc::not_connected);

    // NOLINTNEXTLINE(bugprone-use-after-move): checks the moved-from state
    CHECK(thrown_code([&] { source.read_some(buf); }) == tls::errc::not_connected);
    CHECK(thrown_code([&] { source.write_all(bytes("x")); }) == tls::errc::not_connected);
    CHECK(thrown_code([&] { (void)source.shutdown(); }) == tls::errc::not_connected);

    // None of that reached the peer: it still reads the live stream's data first.
    CHECK(echo(moved, s.peer, "still fine") == "still fine");
    CHECK(s.peer.alerts().empty());
}

TEMPLATE_TEST_CASE("move-assignment closes the target's connection by its policy at once and takes over the source's",
                   "[scenario-23][raii]", fd_fast, fd_full, uq_fast, uq_full)
{
    using socket_type = typename TestType::socket_type;
    constexpr bool full = TestType::policy_type::mode == tls::close_mode::full;
    constexpr bool owning = std::is_same_v<socket_type, tls::unique_socket>;

    support::socket_pair pair1 = support::tcp_pair();
    support::socket_pair pair2 = support::tcp_pair();
    const int fd1 = pair1.a.native_handle();
    const int fd2 = pair2.a.native_handle();
    support::raw_peer peer1(support::server_context(), std::move(pair1.b));
    support::raw_peer peer2(support::server_context(), std::move(pair2.b));
    TestType a(support::client_context(), socket_over<socket_type>(pair1.a));
    TestType b(support::client_context(), socket_over<socket_type>(pair2.a));
    handshake(a, peer1);
    handshake(b, peer2);
    SSL* const ssl_b = b.native_handle();

    // Peer 1 reads until its stream ends; under full it answers the
    // close_notify so that the assignment's full close completes.
    std::string peer1_data;
    support::ending peer1_ending{};
    support::peer_thread reader([&] {
        std::tie(peer1_data, peer1_ending) = peer1.read_to_end();
        if (full && peer1_ending == support::ending::close_notify)
            peer1.shutdown();
    });

    a = std::move(b);
    // Joined while `a` is alive: peer 1 saw its ending because of the
    // assignment, not because of some later destruction.
    reader.join();

    CHECK(peer1_ending == support::ending::close_notify);
    CHECK(peer1_data.empty());
    CHECK(peer1.count_alerts(false, 0) == 1);

    if constexpr (owning) {
        // The old descriptor was closed by the assignment, after the
        // close_notify: peer 1's socket reads EOF (bounded by its 10 s
        // timeout; EAGAIN would mean the descriptor is still open). Not a
        // reset: the close consumed the TLS 1.3 tickets that had arrived,
        // so the kernel had no unread data to answer with one (scenario 23).
        char c;
        errno = 0;
        const ssize_t n = ::recv(peer1.fd(), &c, 1, 0);
        const int err = errno;
        CAPTURE(n, err);
        CHECK(n == 0);
    } else {
        // A borrowed descriptor is never closed.
        CHECK(::fcntl(fd1, F_GETFD) != -1);
    }

    CHECK(a.native_handle() == ssl_b);
    CHECK(a.socket().native_handle() == fd2);
    CHECK(b.native_handle() == nullptr); // NOLINT(bugprone-use-after-move): checks the moved-from state
    CHECK(echo(a, peer2, "peer 2 through a") == "peer 2 through a");
    CHECK(peer2.alerts().empty());

    // Close peer 2's connection cleanly (no 3 s wait under full at the end).
    support::peer_thread closer([&] {
        const auto [rest, how] = peer2.read_to_end();
        support::ensure(how == support::ending::close_notify,
                        std::string("peer 2 ended by ") + support::to_string(how));
        peer2.shutdown();
    });
    CHECK(a.shutdown() == (full ? tls::shutdown_result::complete : tls::shutdown_result::sent));
    closer.join();
}

TEST_CASE("a moved-from tls_stream's destructor puts nothing on the wire", "[raii]")
{
    session<fd_fast> s;
    std::optional<fd_fast> target;

    SECTION("moved from by construction") { target.emplace(std::move(*s.stream)); }
    SECTION("moved from by assignment")
    {
        support::socket_pair other = support::unix_pair();
        // Never handshaken: closing it by assignment puts nothing anywhere either.
        target.emplace(support::client_context(), tls::fd_socket{other.a.native_handle()});
        *target = std::move(*s.stream);
    }

    s.stream.reset(); // destroys the moved-from stream

    // Had the moved-from destructor sent close_notify, the peer would read
    // the end of the stream here instead of the data.
    target->write_all(bytes("after the move"));
    CHECK(s.peer.read_exactly(14) == "after the move");
    CHECK(s.peer.alerts().empty());
}

// ---------------------------------------------------------------- destructor

TEMPLATE_TEST_CASE("the destructor of an open tls_stream sends close_notify", "[raii]", fd_fast, fd_full)
{
    session<TestType> s;
    support::ending how{};
    support::peer_thread reader([&] {
        how = s.peer.read_to_end().second;
        if (how == support::ending::close_notify)
            s.peer.shutdown(); // lets a full close complete
    });
    s.stream.reset();
    reader.join();
    CHECK(how == support::ending::close_notify);
    CHECK(s.peer.count_alerts(false, 0) == 1);
}

TEMPLATE_TEST_CASE("the destructor swallows a failing close (peer reset) and leaves the OpenSSL error queue empty",
                   "[raii]", fd_fast, fd_full, uq_full)
{
    session<TestType> s;
    support::arm_reset(s.peer.fd());
    s.peer.drop();
    s.peer.close_socket(); // RST: our close_notify cannot be delivered
    ERR_clear_error();

    const auto took = support::time_of([&] { s.stream.reset(); }); // noexcept: a throw would terminate

    CHECK(ERR_peek_error() == 0);
    CHECK(took < TestType::policy_type::timeout + 200ms);
}

// ---------------------------------------------------------------- unique_socket

TEST_CASE("unique_socket closes its descriptor when destroyed", "[raii]")
{
    support::socket_pair pair = support::unix_pair();
    const int fd = pair.a.release();
    {
        tls::unique_socket s{fd};
        CHECK(s.native_handle() == fd);
        CHECK_FALSE(peer_closed(pair.b.native_handle()));
    }
    CHECK(peer_closed(pair.b.native_handle()));
}

TEST_CASE("unique_socket::release() gives the descriptor up without closing it", "[raii]")
{
    support::socket_pair pair = support::unix_pair();
    const int fd = pair.a.release();
    int released = -1;
    {
        tls::unique_socket s{fd};
        released = s.release();
        CHECK(s.native_handle() == -1);
    }
    CHECK(released == fd);
    CHECK_FALSE(peer_closed(pair.b.native_handle()));
    CHECK(::send(fd, "x", 1, MSG_NOSIGNAL) == 1);
    pair.a.reset(fd); // owned again, closed at the end
}

TEST_CASE("unique_socket::reset() closes the old descriptor and takes the new one", "[raii]")
{
    support::socket_pair one = support::unix_pair();
    support::socket_pair two = support::unix_pair();
    const int fd1 = one.a.release();
    const int fd2 = two.a.release();

    tls::unique_socket s{fd1};
    s.reset(fd2);
    CHECK(peer_closed(one.b.native_handle()));
    CHECK(s.native_handle() == fd2);
    CHECK_FALSE(peer_closed(two.b.native_handle()));

    s.reset();
    CHECK(peer_closed(two.b.native_handle()));
    CHECK(s.native_handle() == -1);
}

TEST_CASE("unique_socket move-assignment closes the target's descriptor; move-construction transfers it", "[raii]")
{
    support::socket_pair one = support::unix_pair();
    support::socket_pair two = support::unix_pair();
    const int fd1 = one.a.release();
    const int fd2 = two.a.release();

    tls::unique_socket target{fd1};
    tls::unique_socket source{fd2};
    target = std::move(source);
    CHECK(peer_closed(one.b.native_handle()));
    CHECK(target.native_handle() == fd2);
    CHECK(source.native_handle() == -1); // NOLINT(bugprone-use-after-move): checks the moved-from state

    tls::unique_socket moved(std::move(target));
    CHECK(moved.native_handle() == fd2);
    CHECK(target.native_handle() == -1); // NOLINT(bugprone-use-after-move): checks the moved-from state
    CHECK_FALSE(peer_closed(two.b.native_handle()));
}

// ---------------------------------------------------------------- context

TEST_CASE("context::client() gives a verifying TLS >= 1.2 client context that connects", "[raii]")
{
    tls::context ctx = tls::context::client();
    REQUIRE(ctx);
    REQUIRE(ctx.native_handle() != nullptr);
    CHECK((SSL_CTX_get_verify_mode(ctx.native_handle()) & SSL_VERIFY_PEER) != 0);
    CHECK(SSL_CTX_get_min_proto_version(ctx.native_handle()) >= TLS1_2_VERSION);

    ctx.load_verify_file(support::credentials().ca_file);
    support::socket_pair pair = support::tcp_pair();
    support::raw_peer peer(support::server_context(), std::move(pair.b));
    fd_fast s(ctx, tls::fd_socket{pair.a.native_handle()});
    handshake(s, peer);
    CHECK(SSL_get_verify_result(s.native_handle()) == X509_V_OK);
    CHECK(echo(s, peer, "hello") == "hello");
}

TEST_CASE("context::server() with a missing file throws std::system_error naming the file", "[raii]")
{
    const std::string missing = missing_file("missing.pem");
    REQUIRE_FALSE(std::filesystem::exists(missing));
    const auto& creds = support::credentials();

    SECTION("missing certificate chain")
    {
        try {
            (void)tls::context::server(missing, creds.key_file);
            FAIL("no exception");
        } catch (const std::system_error& e) {
            CHECK_THAT(e.what(), ContainsSubstring(missing));
            CHECK(e.code());
        }
    }
    SECTION("missing private key")
    {
        try {
            (void)tls::context::server(creds.chain_file, missing);
            FAIL("no exception");
        } catch (const std::system_error& e) {
            CHECK_THAT(e.what(), ContainsSubstring(missing));
            CHECK(e.code());
        }
    }
    SECTION("error_code overload reports instead of throwing")
    {
        std::error_code ec;
        tls::context ctx;
        CHECK_NOTHROW(ctx = tls::context::server(missing, creds.key_file, ec));
        CHECK(ec);
        CHECK_FALSE(ctx);
        CHECK(ERR_peek_error() == 0);
    }
    SECTION("the good files load")
    {
        std::error_code ec;
        tls::context ctx = tls::context::server(creds.chain_file, creds.key_file, ec);
        CHECK_FALSE(ec);
        CHECK(ctx);
    }
}

TEST_CASE("context adopts an SSL_CTX*: same handle, freed exactly once; a null pointer is invalid_argument", "[raii]")
{
    int frees = 0;
    SECTION("adopted and freed by the destructor")
    {
        SSL_CTX* raw = counted_ctx(frees);
        REQUIRE(raw != nullptr);
        {
            tls::context ctx{raw};
            CHECK(ctx.native_handle() == raw);
            CHECK(frees == 0);
        }
        CHECK(frees == 1);
    }
    SECTION("moves transfer it; only the last owner frees it")
    {
        SSL_CTX* raw = counted_ctx(frees);
        REQUIRE(raw != nullptr);
        {
            tls::context first{raw};
            tls::context second(std::move(first));
            CHECK(first.native_handle() == nullptr); // NOLINT(bugprone-use-after-move): checks the moved-from state
            CHECK_FALSE(first);
            CHECK(second.native_handle() == raw);
            tls::context third = tls::context::client();
            third = std::move(second); // frees the client context, not `raw`
            CHECK(third.native_handle() == raw);
            CHECK(second.native_handle() == nullptr); // NOLINT(bugprone-use-after-move): checks the moved-from state
            CHECK(frees == 0);
        }
        CHECK(frees == 1);
    }
    SECTION("null pointer") { CHECK_THROWS_AS(tls::context{static_cast<SSL_CTX*>(nullptr)}, std::invalid_argument); }
}

TEST_CASE("load_verify_file with a missing file throws naming the file; the error_code overload reports it", "[raii]")
{
    const std::string missing = missing_file("ca.pem");
    REQUIRE_FALSE(std::filesystem::exists(missing));
    tls::context ctx = tls::context::client();

    try {
        ctx.load_verify_file(missing);
        FAIL("no exception");
    } catch (const std::system_error& e) {
        CHECK_THAT(e.what(), ContainsSubstring(missing));
        CHECK(e.code());
    }
    CHECK(ERR_peek_error() == 0);

    std::error_code ec;
    CHECK_NOTHROW(ctx.load_verify_file(missing, ec));
    CHECK(ec);
    CHECK(ERR_peek_error() == 0);

    ctx.load_verify_file(support::credentials().ca_file, ec);
    CHECK_FALSE(ec);
}
