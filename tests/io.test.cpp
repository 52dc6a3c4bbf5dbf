// Data transfer over real TLS connections: two tls_streams talking to each
// other, blocking and non-blocking descriptors, waiting without spinning,
// half-close in both directions, the peer closing first, handing the socket
// back after a completed close (ENDTLS), write_some/read_some edge cases and
// the I/O timeout on a handshake.
#include "support/support.hpp"

#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace {

using namespace std::chrono_literals;
using support::ending;
using support::gate;
using support::pattern;
using support::read_exactly;
using support::record_types;
using support::thrown_code;
using support::version_name;

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

// "" when equal; otherwise where they differ (a 4 MiB dump helps nobody).
std::string difference(const std::string& got, const std::string& expected)
{
    if (got == expected)
        return {};
    std::size_t i = 0;
    while (i < got.size() && i < expected.size() && got[i] == expected[i])
        ++i;
    return "got " + std::to_string(got.size()) + " bytes, expected " + std::to_string(expected.size())
           + "; first difference at offset " + std::to_string(i);
}

// Reads from a tls_stream until read_some returns 0 (the peer's close_notify).
template <class Stream>
std::string read_to_close_notify(Stream& s)
{
    std::string out;
    std::array<char, 16 * KiB> buf;
    for (;;) {
        const std::size_t k = s.read_some(std::as_writable_bytes(std::span(buf)));
        if (k == 0)
            return out;
        out.append(buf.data(), k);
    }
}

// Plain (non-TLS) socket I/O.
void send_all(int fd, std::string_view data)
{
    while (!data.empty()) {
        const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        support::ensure(n > 0, std::string("send: ") + std::strerror(errno));
        data.remove_prefix(static_cast<std::size_t>(n));
    }
}

// One ::send carrying all of `data` (so it travels as one segment).
void send_in_one_call(int fd, std::string_view data)
{
    ssize_t n;
    do
        n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    support::ensure(n == static_cast<ssize_t>(data.size()), std::string("single send: ") + std::strerror(errno));
}

// Everything until the other end closes its write side; a receive timeout
// (SO_RCVTIMEO) or error throws, so a missing EOF cannot pass unnoticed.
std::string recv_to_eof(int fd)
{
    support::raw_end r = support::read_raw_until_eof(fd);
    support::ensure(r.clean_eof, std::string("recv: ") + std::strerror(r.error));
    return std::move(r.bytes);
}

bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

// The bytes a memory BIO holds.
std::string contents(BIO* mem)
{
    char* p = nullptr;
    const long len = BIO_get_mem_data(mem, &p);
    support::ensure(len >= 0, "BIO_get_mem_data");
    return {p, static_cast<std::size_t>(len)};
}

// From now on the raw peer's records go into a memory BIO instead of the
// socket (reading still comes from the socket), so that several records can
// be sent with a single ::send. Returns the BIO (owned by the SSL).
BIO* divert_writes_to_memory(support::raw_peer& peer)
{
    BIO* mem = BIO_new(BIO_s_mem());
    support::ensure(mem != nullptr, "BIO_new(BIO_s_mem())");
    // SSL_set_fd gave the SSL two references to one socket BIO (read and
    // write); this releases the write one and installs the memory BIO.
    SSL_set0_wbio(peer.ssl(), mem);
    return mem;
}

// `n` threads meet here; a missing one makes the others throw after 10 s.
class rendezvous {
public:
    explicit rendezvous(int n) : left_(n) {}
    void arrive_and_wait()
    {
        std::unique_lock lock(mutex_);
        if (--left_ == 0) {
            cv_.notify_all();
            return;
        }
        support::ensure(cv_.wait_for(lock, 10s, [this] { return left_ == 0; }), "rendezvous: a party is missing");
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    int left_;
};

// --------------------------------------------------------------- two tls_streams

struct side_outcome {
    std::string small_mismatch = "not run"; // "" when every small message arrived intact
    std::string big_mismatch = "not run";   // "" when the 4 MiB message arrived intact
    tls::shutdown_result result = tls::shutdown_result::none;
    std::error_code close_ec;
};

constexpr int small_rounds = 64;

std::string small_message(int round)
{
    return pattern(static_cast<std::size_t>(round) + 1, 1000 + static_cast<std::uint64_t>(round));
}

// --------------------------------------------------------------- blocking vs non-blocking

struct exchange_outcome {
    std::string we_received_mismatch = "not run";
    std::string peer_received_mismatch = "not run";
    tls::shutdown_result result = tls::shutdown_result::none;
    std::error_code close_ec;
    ending peer_ending = ending::error;
    int peer_close_notify_received = -1;
    int peer_close_notify_sent = -1;
    bool fd_flags_unchanged = false;

    bool operator==(const exchange_outcome&) const = default;
};

// Handshake, 1 MiB each way, full close, with our fd blocking or not and
// with or without an I/O timeout. The raw peer lives on its thread, so if it
// gives up its socket closes and we cannot hang even without a timeout.
exchange_outcome run_exchange(bool tcp, int version, bool nonblocking, std::chrono::milliseconds io_timeout)
{
    auto pair = support::make_pair(tcp);
    const int fd = pair.a.native_handle();
    support::set_nonblocking(fd, nonblocking);
    const int flags_before = ::fcntl(fd, F_GETFL);
    const tls::context server_ctx = support::server_context(version);
    const std::string up = pattern(MiB, 3);
    const std::string down = pattern(MiB, 4);

    exchange_outcome out;
    std::string peer_got;
    support::peer_thread peer_side([&, sock = std::move(pair.b)]() mutable {
        support::raw_peer peer(server_ctx, std::move(sock));
        peer.accept();
        peer_got = peer.read_exactly(up.size());
        peer.write(down);
        auto [rest, how] = peer.read_to_end();
        support::ensure(rest.empty(), "raw peer: unexpected data before close_notify");
        out.peer_ending = how;
        peer.shutdown();
        out.peer_close_notify_received = peer.count_alerts(false, SSL_AD_CLOSE_NOTIFY);
        out.peer_close_notify_sent = peer.count_alerts(true, SSL_AD_CLOSE_NOTIFY);
    });

    {
        tls::tls_stream<tls::fd_socket, tls::full_shutdown> s(support::client_context(version), tls::fd_socket{fd});
        s.set_io_timeout(io_timeout);
        s.connect();
        s.write_all(support::bytes(up));
        out.we_received_mismatch = difference(read_exactly(s, down.size()), down);
        out.result = s.shutdown(out.close_ec);
    }
    peer_side.join();
    out.peer_received_mismatch = difference(peer_got, up);
    out.fd_flags_unchanged = ::fcntl(fd, F_GETFL) == flags_before;
    return out;
}

// --------------------------------------------------------------- ENDTLS

enum class our_close { close_write, full_shutdown };
enum class plaintext_arrives { with_close_notify, later };

struct endtls_outcome {
    std::string peer_received_tls;
    std::optional<std::error_code> early_release_ec; // release_socket() before the peer's close_notify
    std::string tls_after_our_close;                 // what read_some returned before 0
    tls::shutdown_result result = tls::shutdown_result::none;
    std::string unread;
    std::string from_fd;
    bool same_fd = false;
    bool fd_open_after_release = false;
    bool fd_open_after_stream_gone = false; // fd_socket only: the stream never closes it
    std::string peer_received_clear;
};

const std::string& endtls_plaintext()
{
    static const std::string text = [] {
        std::string t = "PLAINTEXT AFTER TLS: the protocol goes on in the clear.\n";
        for (int i = 0; t.size() < 1500; ++i)
            t += "line " + std::to_string(i) + " of the clear-text part\n";
        return t;
    }();
    return text;
}

// We (client, tls_stream over Socket) send "request" and close; the raw peer
// answers with its close_notify and then plaintext, either in the same
// ::send or only after we released the socket. We then read the fd to EOF
// and answer in the clear.
template <class Socket>
endtls_outcome run_endtls(bool tcp, int version, our_close how, plaintext_arrives when)
{
    auto pair = support::make_pair(tcp);
    const int fd = pair.a.native_handle();
    support::set_socket_timeouts(fd); // bounds our plain ::recv below
    const tls::context server_ctx = support::server_context(version);
    const std::string& plaintext = endtls_plaintext();
    gate released;

    endtls_outcome out;
    support::peer_thread peer_side([&, sock = std::move(pair.b)]() mutable {
        support::raw_peer peer(server_ctx, std::move(sock));
        peer.accept();
        auto [data, ended] = peer.read_to_end();
        out.peer_received_tls = data;
        support::ensure(ended == ending::close_notify,
                        std::string("raw peer: our close ended as ") + support::to_string(ended));
        if (when == plaintext_arrives::with_close_notify) {
            BIO* mem = divert_writes_to_memory(peer);
            support::ensure(peer.shutdown() == 1, "raw peer: SSL_shutdown did not complete");
            const std::string close_notify = contents(mem);
            support::ensure(!close_notify.empty(), "raw peer: no close_notify record produced");
            send_in_one_call(peer.fd(), close_notify + plaintext);
        } else {
            support::ensure(peer.shutdown() == 1, "raw peer: SSL_shutdown did not complete");
            released.wait();
            send_all(peer.fd(), plaintext);
        }
        support::ensure(::shutdown(peer.fd(), SHUT_WR) == 0, "shutdown(SHUT_WR)");
        out.peer_received_clear = recv_to_eof(peer.fd()); // ends when our fd is closed
    });

    {
        tls::tls_stream<Socket, tls::full_shutdown> s(support::client_context(version),
                                                      support::socket_over<Socket>(pair.a));
        s.set_io_timeout(5s);
        s.connect();
        s.write_all(support::bytes("request"));
        if (how == our_close::close_write) {
            s.close_write();
            std::error_code ec;
            const auto early = std::move(s).release_socket(ec); // refused: the stream stays as it was
            out.early_release_ec = early ? std::error_code{} : ec;
            out.tls_after_our_close = read_to_close_notify(s);
        } else {
            out.result = s.shutdown();
        }
        tls::released<Socket> r = std::move(s).release_socket();
        out.unread = support::text(r.unread);
        out.same_fd = r.socket.native_handle() == fd;
        released.open();
        out.from_fd = recv_to_eof(r.socket.native_handle());
        out.fd_open_after_release = fd_is_open(fd);
        send_all(r.socket.native_handle(), "CLEAR REPLY");
        // Leaving this scope destroys `r` and `s`: a unique_socket closes fd.
    }
    if constexpr (std::is_same_v<Socket, tls::fd_socket>) {
        out.fd_open_after_stream_gone = fd_is_open(fd);
        pair.a.reset(); // the peer sees EOF only now
    }
    peer_side.join();
    return out;
}

void check_endtls(const endtls_outcome& out, our_close how)
{
    CHECK(out.peer_received_tls == "request");
    if (how == our_close::close_write) {
        REQUIRE(out.early_release_ec.has_value());
        CHECK(*out.early_release_ec == tls::errc::not_closed);
        CHECK(out.tls_after_our_close.empty());
    } else {
        CHECK(out.result == tls::shutdown_result::complete);
    }
    CHECK(out.same_fd);
    CHECK(out.fd_open_after_release);
    CHECK(out.peer_received_clear == "CLEAR REPLY");
}

// The body of the two ENDTLS test cases, which differ only in when the
// plaintext arrives: in the segment of the peer's close_notify (then part of
// it is `unread`), or after we released the socket (then `unread` is empty).
// Either way `unread` followed by what the fd yields is the whole plaintext.
void check_release_socket(plaintext_arrives when)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    const our_close how = GENERATE(our_close::close_write, our_close::full_shutdown);
    CAPTURE(version_name(version), tcp, how == our_close::close_write ? "close_write" : "shutdown");
    const std::string& plaintext = endtls_plaintext();
    const auto check_plaintext = [&](const endtls_outcome& out) {
        if (when == plaintext_arrives::with_close_notify)
            CHECK_FALSE(out.unread.empty());
        else
            CHECK(out.unread.empty());
        CHECK(difference(out.unread + out.from_fd, plaintext) == "");
    };

    SECTION("borrowed fd_socket: the fd stays open after the stream is gone")
    {
        const endtls_outcome out = run_endtls<tls::fd_socket>(tcp, version, how, when);
        check_endtls(out, how);
        check_plaintext(out);
        CHECK(out.fd_open_after_stream_gone);
    }
    SECTION("owned unique_socket: the returned socket still owns the fd and closes it")
    {
        const endtls_outcome out = run_endtls<tls::unique_socket>(tcp, version, how, when);
        check_endtls(out, how); // the peer saw EOF, so destroying the returned socket closed the fd
        check_plaintext(out);
    }
}

} // namespace

// ===================================================================== tests

TEST_CASE("a tls_stream client and server exchange small and 4 MiB messages both ways, and a simultaneous full "
          "shutdown completes on both ends",
          "[scenario-3][io]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version_name(version), tcp);

    auto pair = support::make_pair(tcp);
    const tls::context server_ctx = support::server_context(version);
    const tls::context client_ctx = support::client_context(version);
    const std::string up = pattern(4 * MiB, 1);
    const std::string down = pattern(4 * MiB, 2);
    rendezvous before_close(2);
    side_outcome server_out;
    side_outcome client_out;

    {
        support::peer_thread server([&, sock = std::move(pair.b)]() mutable {
            tls::tls_stream<tls::unique_socket, tls::full_shutdown> s(server_ctx, std::move(sock));
            s.set_io_timeout(5s);
            s.accept();
            std::string small_errors;
            for (int i = 0; i < small_rounds; ++i) {
                const std::string got = read_exactly(s, small_message(i).size());
                if (got != small_message(i))
                    small_errors += "round " + std::to_string(i) + " differs; ";
                s.write_all(support::bytes(got)); // echo
            }
            server_out.small_mismatch = small_errors;
            server_out.big_mismatch = difference(read_exactly(s, up.size()), up);
            s.write_all(support::bytes(down));
            before_close.arrive_and_wait();
            server_out.result = s.shutdown(server_out.close_ec);
        });
        support::peer_thread client([&, sock = std::move(pair.a)]() mutable {
            tls::tls_stream<tls::unique_socket, tls::full_shutdown> s(client_ctx, std::move(sock));
            s.set_io_timeout(5s);
            s.connect("localhost");
            std::string small_errors;
            for (int i = 0; i < small_rounds; ++i) {
                s.write_all(support::bytes(small_message(i)));
                if (read_exactly(s, small_message(i).size()) != small_message(i))
                    small_errors += "echo " + std::to_string(i) + " differs; ";
            }
            client_out.small_mismatch = small_errors;
            s.write_all(support::bytes(up));
            client_out.big_mismatch = difference(read_exactly(s, down.size()), down);
            before_close.arrive_and_wait();
            client_out.result = s.shutdown(client_out.close_ec);
        });
        client.join();
        server.join();
    }

    CHECK(server_out.small_mismatch == "");
    CHECK(client_out.small_mismatch == "");
    CHECK(server_out.big_mismatch == "");
    CHECK(client_out.big_mismatch == "");
    CHECK(server_out.close_ec.message() == std::error_code{}.message());
    CHECK(client_out.close_ec.message() == std::error_code{}.message());
    CHECK(server_out.result == tls::shutdown_result::complete);
    CHECK(client_out.result == tls::shutdown_result::complete);
}

TEST_CASE("a non-blocking fd behaves like a blocking one: the same exchange and close, with and without an io "
          "timeout, gives identical results",
          "[scenario-17][io]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version_name(version), tcp);

    const exchange_outcome baseline = run_exchange(tcp, version, false, 0ms);
    CHECK(baseline.we_received_mismatch == "");
    CHECK(baseline.peer_received_mismatch == "");
    CHECK(baseline.result == tls::shutdown_result::complete);
    CHECK(baseline.close_ec.message() == std::error_code{}.message());
    CHECK(baseline.peer_ending == ending::close_notify);
    CHECK(baseline.peer_close_notify_received == 1);
    CHECK(baseline.peer_close_notify_sent == 1);
    CHECK(baseline.fd_flags_unchanged);

    struct mode {
        const char* name;
        bool nonblocking;
        std::chrono::milliseconds timeout;
    };
    for (const mode m :
         {mode{"blocking fd, 5 s io timeout", false, 5000ms}, mode{"non-blocking fd, no io timeout", true, 0ms},
          mode{"non-blocking fd, 5 s io timeout", true, 5000ms}}) {
        INFO(m.name);
        const exchange_outcome out = run_exchange(tcp, version, m.nonblocking, m.timeout);
        CHECK(out.we_received_mismatch == baseline.we_received_mismatch);
        CHECK(out.peer_received_mismatch == baseline.peer_received_mismatch);
        CHECK(out.result == baseline.result);
        CHECK(out.close_ec.message() == baseline.close_ec.message());
        CHECK(out.peer_ending == baseline.peer_ending);
        CHECK(out.peer_close_notify_received == baseline.peer_close_notify_received);
        CHECK(out.peer_close_notify_sent == baseline.peer_close_notify_sent);
        CHECK(out.fd_flags_unchanged);
        CHECK(out == baseline);
    }
}

TEST_CASE("read_some waiting out its io timeout burns almost no CPU (no busy-spinning), and a retry reads the data "
          "sent afterwards",
          "[scenario-17][io]")
{
    const bool tcp = GENERATE(true, false);
    const bool nonblocking = GENERATE(true, false);
    CAPTURE(tcp, nonblocking);

    auto pair = support::make_pair(tcp);
    const int fd = pair.a.native_handle();
    support::set_nonblocking(fd, nonblocking);
    const tls::context server_ctx = support::server_context(TLS1_3_VERSION);
    gate send_late;
    ending peer_ending = ending::error;
    support::peer_thread peer_side([&, sock = std::move(pair.b)]() mutable {
        support::raw_peer peer(server_ctx, std::move(sock));
        peer.accept();
        send_late.wait(); // silent until our read has timed out
        peer.write("late data");
        auto [rest, how] = peer.read_to_end();
        peer_ending = how;
        peer.shutdown();
    });

    std::error_code wait_ec;
    std::size_t waited_n = 99;
    std::chrono::milliseconds wall{};
    std::chrono::nanoseconds cpu{};
    std::string late;
    std::error_code close_ec;
    tls::shutdown_result result{};
    {
        tls::tls_stream<tls::fd_socket, tls::full_shutdown> s(support::client_context(TLS1_3_VERSION),
                                                              tls::fd_socket{fd});
        s.set_io_timeout(5s);
        s.connect();
        s.set_io_timeout(300ms);
        std::array<std::byte, 256> buf{};
        const auto cpu_before = support::thread_cpu_time();
        wall = support::time_of([&] { waited_n = s.read_some(buf, wait_ec); });
        cpu = support::thread_cpu_time() - cpu_before;
        send_late.open();
        s.set_io_timeout(5s);
        late = read_exactly(s, 9);
        result = s.shutdown(close_ec);
    }
    peer_side.join();

    CHECK(wait_ec == tls::errc::timeout);
    CHECK(waited_n == 0);
    CHECK(wall >= 300ms);
    CHECK(wall < 1000ms);
    INFO("CPU time spent waiting: " << std::chrono::duration_cast<std::chrono::microseconds>(cpu).count() << " us");
    CHECK(cpu < 50ms);
    CHECK(late == "late data");
    CHECK(result == tls::shutdown_result::complete);
    CHECK(peer_ending == ending::close_notify);
}

TEST_CASE("after close_write the peer sees our close_notify, read_some receives all it sends afterwards until 0, and "
          "writes fail with errc::closed",
          "[scenario-9][io]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    const bool we_are_client = GENERATE(true, false);
    CAPTURE(version_name(version), tcp, we_are_client);

    auto pair = support::make_pair(tcp);
    const tls::context peer_ctx = we_are_client ? support::server_context(version) : support::client_context(version);
    const std::string reply = pattern(MiB, 5);
    std::string peer_got;
    ending peer_ending = ending::error;
    int peer_close_notify_received = -1;
    support::peer_thread peer_side([&, sock = std::move(pair.b)]() mutable {
        support::raw_peer peer(peer_ctx, std::move(sock));
        if (we_are_client)
            peer.accept();
        else
            peer.connect();
        auto [data, how] = peer.read_to_end();
        peer_got = data;
        peer_ending = how;
        peer_close_notify_received = peer.count_alerts(false, SSL_AD_CLOSE_NOTIFY);
        peer.write(reply); // all of it after our close_notify
        peer.shutdown();
    });

    std::string got;
    std::size_t again = 99;
    std::error_code again_ec;
    std::error_code write_some_ec;
    std::size_t write_some_n = 99;
    std::error_code write_all_ec;
    std::error_code write_all_thrown;
    {
        tls::tls_stream<tls::fd_socket, tls::full_shutdown> s(we_are_client ? support::client_context(version)
                                                                            : support::server_context(version),
                                                              tls::fd_socket{pair.a.native_handle()});
        s.set_io_timeout(5s);
        if (we_are_client)
            s.connect();
        else
            s.accept();
        s.write_all(support::bytes("request"));
        s.close_write();
        got = read_to_close_notify(s);
        std::array<std::byte, 16> buf{};
        again = s.read_some(buf, again_ec);
        write_some_n = s.write_some(support::bytes("more"), write_some_ec);
        s.write_all(support::bytes("more"), write_all_ec);
        write_all_thrown = thrown_code([&] { s.write_all(support::bytes("more")); });
    }
    peer_side.join();

    CHECK(peer_got == "request");
    CHECK(peer_ending == ending::close_notify);
    CHECK(peer_close_notify_received == 1);
    CHECK(difference(got, reply) == "");
    CHECK(again == 0);
    CHECK_FALSE(again_ec);
    CHECK(write_some_n == 0);
    CHECK(write_some_ec == tls::errc::closed);
    CHECK(write_all_ec == tls::errc::closed);
    CHECK(write_all_thrown == tls::errc::closed);
}

TEST_CASE("when the peer sends data, its close_notify and a FIN, read_some returns every byte, then 0, and 0 again",
          "[scenario-4][io]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    const bool one_segment = GENERATE(true, false);
    CAPTURE(version_name(version), tcp, one_segment);

    auto pair = support::make_pair(tcp);
    const std::string data = pattern(48 * KiB, 6);
    tls::tls_stream<tls::unique_socket, tls::full_shutdown> s(support::client_context(version), std::move(pair.a));
    s.set_io_timeout(5s);
    support::raw_peer peer(support::server_context(version), std::move(pair.b));
    {
        support::peer_thread handshake([&] { peer.accept(); });
        s.connect();
        handshake.join();
    }

    // Everything below fits in the socket buffers, so the peer does it all
    // before we read a byte.
    if (one_segment) {
        BIO* mem = divert_writes_to_memory(peer);
        peer.write(data);
        REQUIRE(peer.shutdown() == 0);
        send_in_one_call(peer.fd(), contents(mem));
    } else {
        peer.write(std::string_view(data).substr(0, 20 * KiB));
        peer.write(std::string_view(data).substr(20 * KiB));
        REQUIRE(peer.shutdown() == 0);
    }
    peer.close_socket();

    const std::string got = read_to_close_notify(s);
    std::array<std::byte, 64> buf{};
    std::error_code ec1;
    const std::size_t again1 = s.read_some(buf, ec1);
    std::error_code ec2;
    const std::size_t again2 = s.read_some(buf, ec2);

    CHECK(difference(got, data) == "");
    CHECK(again1 == 0);
    CHECK(ec1.message() == std::error_code{}.message());
    CHECK(again2 == 0);
    CHECK(ec2.message() == std::error_code{}.message());
}

TEST_CASE("after the peer's close_notify (read_some returned 0) write_all still reaches the peer, and our close then "
          "sends close_notify",
          "[scenario-19][io]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    const bool full = GENERATE(true, false);
    CAPTURE(version_name(version), tcp, full);

    auto pair = support::make_pair(tcp);
    const tls::context server_ctx = support::server_context(version);
    const std::string upload = pattern(MiB, 7);
    int peer_shutdown_r = -1;
    std::string peer_got;
    ending peer_ending = ending::error;
    support::peer_thread peer_side([&, sock = std::move(pair.b)]() mutable {
        support::raw_peer peer(server_ctx, std::move(sock));
        peer.accept();
        peer.write("last words from the peer");
        peer_shutdown_r = peer.shutdown(); // our half-close: close_notify, then keep reading
        auto [data, how] = peer.read_to_end();
        peer_got = data;
        peer_ending = how;
    });

    std::string got;
    std::size_t again = 99;
    std::error_code again_ec;
    std::error_code close_ec;
    tls::shutdown_result result{};
    std::chrono::milliseconds close_time{};
    const tls::context client_ctx = support::client_context(version);
    auto exchange = [&](auto& s) {
        s.set_io_timeout(5s);
        s.connect();
        got = read_to_close_notify(s);
        std::array<std::byte, 16> buf{};
        again = s.read_some(buf, again_ec);
        s.write_all(support::bytes(upload));
        close_time = support::time_of([&] { result = s.shutdown(close_ec); });
    };
    if (full) {
        tls::tls_stream<tls::fd_socket, tls::full_shutdown> s(client_ctx, tls::fd_socket{pair.a.native_handle()});
        exchange(s);
    } else {
        tls::tls_stream<tls::fd_socket, tls::fast_shutdown> s(client_ctx, tls::fd_socket{pair.a.native_handle()});
        exchange(s);
    }
    peer_side.join();

    CHECK(peer_shutdown_r == 0);
    CHECK(got == "last words from the peer");
    CHECK(again == 0);
    CHECK_FALSE(again_ec);
    CHECK(difference(peer_got, upload) == "");
    CHECK(peer_ending == ending::close_notify);
    CHECK(close_ec.message() == std::error_code{}.message());
    if (full)
        CHECK(result == tls::shutdown_result::complete);
    else
        CHECK((result == tls::shutdown_result::sent || result == tls::shutdown_result::complete));
    CHECK(close_time < 1000ms); // the peer's close_notify is in: nothing to wait for
}

TEST_CASE("release_socket hands back the plaintext that arrived in the same segment as the peer's close_notify as "
          "unread, and the rest comes from the fd",
          "[scenario-21][io]")
{
    check_release_socket(plaintext_arrives::with_close_notify);
}

TEST_CASE("release_socket after a close that read no plaintext returns an empty unread, and the plaintext sent later "
          "all comes from the fd",
          "[scenario-21][io]")
{
    check_release_socket(plaintext_arrives::later);
}

TEST_CASE("write_some writes a non-zero amount no larger than its buffer", "[io]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version_name(version), tcp);

    auto pair = support::make_pair(tcp);
    const tls::context server_ctx = support::server_context(version);
    std::string peer_got;
    support::peer_thread peer_side([&, sock = std::move(pair.b)]() mutable {
        support::raw_peer peer(server_ctx, std::move(sock));
        peer.accept();
        auto [data, how] = peer.read_to_end();
        support::ensure(how == ending::close_notify, std::string("raw peer: ended as ") + support::to_string(how));
        peer_got = data;
        peer.shutdown();
    });

    const std::string data = pattern(2 * MiB, 8);
    const std::vector<std::size_t> sizes{1, 2, 100, 16 * KiB - 1, 16 * KiB, 16 * KiB + 1, MiB};
    std::vector<std::size_t> written;
    std::size_t offset = 0;
    {
        tls::tls_stream<tls::fd_socket, tls::full_shutdown> s(support::client_context(version),
                                                              tls::fd_socket{pair.a.native_handle()});
        s.set_io_timeout(5s);
        s.connect();
        for (const std::size_t size : sizes) {
            const std::size_t n = s.write_some(support::bytes(std::string_view(data).substr(offset, size)));
            written.push_back(n);
            offset += n;
        }
        s.close_write();
        read_to_close_notify(s);
    }
    peer_side.join();

    for (std::size_t i = 0; i < sizes.size(); ++i) {
        CAPTURE(sizes[i], written[i]);
        CHECK(written[i] > 0);
        CHECK(written[i] <= sizes[i]);
    }
    CHECK(difference(peer_got, data.substr(0, offset)) == "");
}

TEST_CASE("read_some with an empty span returns 0 at once without reading, and the stream goes on", "[io]")
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    const bool tcp = GENERATE(true, false);
    CAPTURE(version_name(version), tcp);

    auto pair = support::make_pair(tcp);
    const int fd = pair.a.native_handle();
    const tls::context server_ctx = support::server_context(version);
    gate send_now;
    support::peer_thread peer_side([&, sock = std::move(pair.b)]() mutable {
        support::raw_peer peer(server_ctx, std::move(sock));
        peer.accept();
        send_now.wait();
        peer.write("abc");
        auto [rest, how] = peer.read_to_end();
        support::ensure(how == ending::close_notify, std::string("raw peer: ended as ") + support::to_string(how));
        peer.shutdown();
    });

    std::size_t idle_n = 99;
    std::error_code idle_ec;
    std::chrono::milliseconds idle_time{};
    int ready = -1;
    std::size_t pending_n = 99;
    std::error_code pending_ec;
    std::string got;
    {
        tls::tls_stream<tls::fd_socket, tls::full_shutdown> s(support::client_context(version), tls::fd_socket{fd});
        s.set_io_timeout(5s);
        s.connect();
        const std::span<std::byte> empty;
        // Nothing will arrive before we say so: any read would wait 5 s.
        idle_time = support::time_of([&] { idle_n = s.read_some(empty, idle_ec); });
        send_now.open();
        pollfd p{fd, POLLIN, 0};
        ready = ::poll(&p, 1, 5000); // the record is there (or at least something is)
        pending_n = s.read_some(empty, pending_ec);
        got = read_exactly(s, 3);
        (void)s.shutdown();
    }
    peer_side.join();

    CHECK(idle_n == 0);
    CHECK_FALSE(idle_ec);
    CHECK(idle_time < 500ms);
    CHECK(ready == 1);
    CHECK(pending_n == 0);
    CHECK_FALSE(pending_ec);
    CHECK(got == "abc"); // the empty reads consumed nothing and were not an end
}

TEST_CASE("the io timeout bounds a handshake with a silent peer: errc::timeout in time, then the stream is failed "
          "and its destruction sends nothing",
          "[io]")
{
    const bool tcp = GENERATE(true, false);
    const bool client = GENERATE(true, false);
    CAPTURE(tcp, client);

    auto pair = support::make_pair(tcp);
    const int silent = pair.b.native_handle(); // a plain socket that never answers
    support::set_socket_timeouts(silent);

    // Should the handshake ignore its deadline, the silent end gives up after
    // 5 s, so that the test fails instead of hanging.
    gate handshake_over;
    support::peer_thread watchdog([&] {
        if (!handshake_over.wait_for(5s))
            ::shutdown(silent, SHUT_RDWR);
    });

    std::error_code ec;
    std::chrono::milliseconds elapsed{};
    std::error_code read_ec;
    std::error_code shutdown_ec;
    tls::shutdown_result result = tls::shutdown_result::complete;
    {
        tls::tls_stream<tls::unique_socket, tls::full_shutdown> s(
            client ? support::client_context() : support::server_context(), std::move(pair.a));
        s.set_io_timeout(300ms);
        elapsed = support::time_of([&] {
            if (client)
                s.connect(ec);
            else
                s.accept(ec);
        });
        handshake_over.open();
        std::array<std::byte, 16> buf{};
        s.read_some(buf, read_ec);
        result = s.shutdown(shutdown_ec);
    } // closes the fd: the silent end then reads EOF
    watchdog.join();
    const std::string wire = recv_to_eof(silent);

    CHECK(ec == tls::errc::timeout);
    CHECK(elapsed >= 300ms);
    CHECK(elapsed < 1300ms);
    CHECK(read_ec); // a failed stream does no I/O
    CHECK(shutdown_ec == tls::errc::timeout);
    CHECK(result == tls::shutdown_result::none);
    const auto types = record_types(wire);
    REQUIRE(types.has_value());
    if (client) {
        // The ClientHello, and nothing after it: no alert, no close_notify.
        REQUIRE_FALSE(types->empty());
        for (const int type : *types)
            CHECK(type == SSL3_RT_HANDSHAKE);
    } else {
        CHECK(wire.empty());
    }
}
