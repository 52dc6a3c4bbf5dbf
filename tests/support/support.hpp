// Test support: credentials, contexts pinned to a TLS version, connected
// socket pairs (loopback TCP on port 0, or socketpair), a raw OpenSSL peer
// that records every alert it sends and receives, and a tls_stream connected
// to such a peer. Nothing here uses Catch2's assertions: much of it runs on
// peer threads, so failures throw (see ensure) instead.
#ifndef TLS_STREAM_TESTS_SUPPORT_HPP
#define TLS_STREAM_TESTS_SUPPORT_HPP

#include <tls_stream.hpp>

#include "examples/self_signed.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <future>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace support {

using namespace std::chrono_literals;

/// The credentials shared by the whole test binary (generated once).
const self_signed::credentials& credentials();

/// Server / client contexts limited to one protocol version (0 = any >= 1.2).
tls::context server_context(int version = 0);
tls::context client_context(int version = 0);

/// A connected pair of stream sockets.
struct socket_pair {
    tls::unique_socket a;
    tls::unique_socket b;
};
socket_pair tcp_pair();  // loopback TCP, listener bound to port 0
socket_pair unix_pair(); // AF_UNIX socketpair
socket_pair make_pair(bool tcp);

/// Bounds every blocking call on `fd` (raw peers must never hang a test).
void set_socket_timeouts(int fd, std::chrono::milliseconds t = 10s);
void set_nonblocking(int fd, bool on = true);

/// Sends a TCP reset instead of a FIN when `fd` is closed.
void arm_reset(int fd);

/// The plaintext of `s` as bytes.
std::span<const std::byte> bytes(std::string_view s);
std::string text(std::span<const std::byte> b);

/// "TLS 1.2" / "TLS 1.3", for CAPTURE.
const char* version_name(int version);

/// Catch2's GENERATE over the protocol versions the library supports: the
/// test case runs once with TLS1_2_VERSION and once with TLS1_3_VERSION.
/// A macro, because GENERATE must stand in the test case's own body
/// (`const int version = TLS_STREAM_TEST_VERSIONS();`); the file that uses
/// it includes catch2/generators/catch_generators.hpp.
#define TLS_STREAM_TEST_VERSIONS() GENERATE(TLS1_2_VERSION, TLS1_3_VERSION)

/// The three policies, as a TEMPLATE_TEST_CASE's type list.
#define TLS_STREAM_TEST_POLICIES tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown

/// The stream type most tests use: it owns its socket and closes by `Policy`.
template <class Policy>
using stream = tls::tls_stream<tls::unique_socket, Policy>;

/// fast_shutdown and full_shutdown with a short deadline, derived as a user
/// would: a test that waits out the deadline costs 300 ms, not seconds.
struct brief_fast : tls::fast_shutdown {
    static constexpr std::chrono::milliseconds timeout{300};
};
struct brief_full : tls::full_shutdown {
    static constexpr std::chrono::milliseconds timeout{300};
};

/// The CPU time (user + system) the calling thread has used so far.
std::chrono::nanoseconds thread_cpu_time();
/// A deterministic pseudo-random byte pattern (splitmix64), different per
/// seed, so that a lost or reordered byte shows.
std::string pattern(std::size_t n, std::uint64_t seed);

/// Throws std::runtime_error(what) unless ok. Safe on any thread, unlike
/// Catch2's assertions: peers run on threads and report through peer_thread.
void ensure(bool ok, const std::string& what);

/// One alert as seen by a raw peer's message callback.
struct alert {
    bool sent;       // true: the peer sent it; false: the peer received it
    int level;       // 1 warning, 2 fatal
    int description; // 0 close_notify, ...
};

/// How a raw peer's reading ended.
enum class ending {
    close_notify,   // SSL_read reported the clean end (SSL_ERROR_ZERO_RETURN)
    unexpected_eof, // the transport ended without close_notify
    reset,          // ECONNRESET
    timeout,        // nothing arrived within the socket timeout
    error,          // any other failure (e.g. a fatal alert)
};

/// Names for messages and for CHECKs, whose failures then show the name
/// instead of a number.
std::string to_string(ending e);
std::string to_string(tls::shutdown_result r);

/// A hand-written OpenSSL endpoint on a blocking socket, used as the peer
/// (it can misbehave on purpose). Its socket has receive/send timeouts so
/// nothing it does can hang a test.
class raw_peer {
public:
    raw_peer(const tls::context& ctx, tls::unique_socket sock);
    raw_peer(const raw_peer&) = delete;
    raw_peer& operator=(const raw_peer&) = delete;
    ~raw_peer();

    void accept();  // throws unless it succeeds
    void connect(); // throws unless it succeeds (no hostname check)

    /// Reads until the stream ends; returns everything read and how it ended.
    std::pair<std::string, ending> read_to_end();
    /// One SSL_read of up to `max` bytes; "" with `how` set when it ended.
    std::string read_some(std::size_t max, ending& how);
    /// Exactly `n` bytes; throws, naming how the stream ended, if it ends first.
    std::string read_exactly(std::size_t n);
    void write(std::string_view data);
    /// SSL_shutdown once: sends our close_notify (1 if the peer's had arrived).
    int shutdown();

    std::vector<alert> alerts() const;
    int count_alerts(bool sent, int description) const;
    /// Alerts of any kind the peer received.
    int received_alerts() const;
    SSL* ssl() const noexcept { return ssl_; }
    int fd() const noexcept { return sock_.native_handle(); }
    /// Closes the TCP connection now (FIN), without any TLS alert.
    void close_socket() noexcept { sock_.reset(); }
    /// Frees the SSL without any alert (the destructor would not send one either).
    void drop() noexcept;

private:
    static void on_message(int write_p, int version, int content_type, const void* buf, std::size_t len, SSL* ssl,
                           void* arg);

    tls::unique_socket sock_;
    SSL* ssl_;
    mutable std::mutex mutex_;
    std::vector<alert> alerts_;
};

/// Runs a peer on its own thread; join() rethrows whatever it threw, so a
/// failing peer fails the test on the main thread.
///
/// SIGPIPE is blocked on that thread, and only there. A raw_peer writes
/// through OpenSSL's socket BIO with plain write(), and OpenSSL answers an
/// unexpected EOF with a fatal alert: on an AF_UNIX socket whose other end is
/// closed, that write raises SIGPIPE, which would end the whole test binary.
/// The process's signal handling (disposition, other threads' masks) stays
/// untouched, because a test checks that tls_stream never changes it; a test
/// of tls_stream's own SIGPIPE safety must not write from a peer_thread.
class peer_thread {
public:
    template <class F>
    // peer_thread has no move constructor that this could hide.
    explicit peer_thread(F&& f) // NOLINT(bugprone-forwarding-reference-overload)
        : thread_([this, fn = std::forward<F>(f)]() mutable {
              try {
                  block_sigpipe();
                  fn();
              } catch (...) {
                  error_ = std::current_exception();
              }
          })
    {
    }
    peer_thread(const peer_thread&) = delete;
    peer_thread& operator=(const peer_thread&) = delete;
    ~peer_thread();
    void join();

private:
    static void block_sigpipe();

    std::exception_ptr error_;
    std::thread thread_;
};

/// A one-shot signal from one thread to another, with a bounded wait.
class gate {
public:
    /// Opening it again does nothing, so an open_on_exit may follow an open().
    void open();
    /// Whether the gate opened within `limit`.
    bool wait_for(std::chrono::milliseconds limit) const;
    /// Throws unless the gate opens within 10 s.
    void wait() const;

private:
    std::promise<void> promise_;
    std::shared_future<void> future_{promise_.get_future().share()};
    std::once_flag once_;
};

/// Opens the gate when the scope ends, so that a failing REQUIRE cannot leave
/// a peer waiting for it.
class open_on_exit {
public:
    explicit open_on_exit(gate& g) : gate_(g) {}
    open_on_exit(const open_on_exit&) = delete;
    open_on_exit& operator=(const open_on_exit&) = delete;
    ~open_on_exit() { gate_.open(); }

private:
    gate& gate_;
};

/// Milliseconds elapsed while running `f`.
template <class F>
std::chrono::milliseconds time_of(F&& f)
{
    const auto start = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
}

/// The error code a throwing call throws ({} if it does not throw).
template <class F>
std::error_code thrown_code(F&& f)
{
    try {
        f();
    } catch (const std::system_error& e) {
        return e.code();
    }
    return {};
}

// ---------------------------------------------------------------- plain socket reads

/// Whatever `fd` holds right now, without waiting; stops at EOF.
std::string read_raw_available(int fd);

/// How reading a socket to its end went.
struct raw_end {
    std::string bytes;      // everything read before the end
    bool clean_eof = false; // recv() returned 0
    int error = 0;          // errno otherwise (EAGAIN: the socket's receive timeout)
};

/// Reads `fd` until it ends; only the socket's own timeout bounds the wait.
raw_end read_raw_until_eof(int fd);

/// The content types of the TLS records in `wire`; nullopt if it is not a
/// whole number of records.
std::optional<std::vector<int>> record_types(std::string_view wire);

// ---------------------------------------------------------------- a tls_stream and a raw peer

/// Which end of the handshake the tls_stream takes; the raw peer takes the other.
enum class role { client, server };

/// Exactly `n` bytes from a tls_stream. Throws, saying how far it got, if the
/// peer's close_notify comes first: a short result would only fail the
/// comparison after it without saying why.
template <class Stream>
std::string read_exactly(Stream& s, std::size_t n)
{
    std::string out(n, '\0');
    std::size_t have = 0;
    while (have < n) {
        const std::size_t k = s.read_some(std::as_writable_bytes(std::span(out.data() + have, n - have)));
        ensure(k != 0, "close_notify after " + std::to_string(have) + " of " + std::to_string(n) + " bytes");
        have += k;
    }
    return out;
}

/// The socket a stream over `S` uses for `end`: ownership moves into a
/// unique_socket; an fd_socket only borrows the descriptor.
template <class S>
S socket_over(tls::unique_socket& end)
{
    if constexpr (std::is_same_v<S, tls::unique_socket>)
        return std::move(end);
    else
        return tls::fd_socket{end.native_handle()};
}

/// The handshake of `s` (a client checks the hostname "localhost") against
/// `peer`, which runs its side on a peer_thread.
template <class Stream>
void handshake(Stream& s, raw_peer& peer, role r = role::client)
{
    s.set_io_timeout(5s); // a bug must not hang the test
    peer_thread t([&peer, r] {
        if (r == role::client)
            peer.accept();
        else
            peer.connect();
    });
    if (r == role::client)
        s.connect("localhost");
    else
        s.accept();
    t.join();
}

/// A tls_stream connected to a raw OpenSSL peer, both pinned to `version`,
/// over loopback TCP or AF_UNIX, handshake done.
template <class Stream>
struct session {
    explicit session(int version = 0, bool tcp = true, role r = role::client)
        : pair(make_pair(tcp)),
          peer(r == role::client ? server_context(version) : client_context(version), std::move(pair.b))
    {
        stream.emplace(r == role::client ? client_context(version) : server_context(version),
                       socket_over<typename Stream::socket_type>(pair.a));
        handshake(*stream, peer, r);
    }

    socket_pair pair; // an fd_socket stream borrows pair.a, so it must outlive `stream`
    raw_peer peer;
    std::optional<Stream> stream; // optional: tests destroy it at a moment of their choosing
};

/// One round trip: `s` sends "ping", `peer` answers "pong" from a
/// peer_thread; returns what `s` read back. Afterwards TLS 1.3 session
/// tickets are consumed and neither socket holds unread bytes.
template <class Stream>
std::string ping_pong(Stream& s, raw_peer& peer)
{
    peer_thread t([&peer] {
        ensure(peer.read_exactly(4) == "ping", "raw peer: expected ping");
        peer.write("pong");
    });
    s.write_all(bytes("ping"));
    std::string pong = read_exactly(s, 4);
    t.join();
    return pong;
}

/// Sends `msg` through `s` to `peer`, which sends it back; returns what `s`
/// read back ("peer received: ..." if the peer got something else). The peer
/// answers on this thread, so `msg` must fit in the socket buffers.
template <class Stream>
std::string echo(Stream& s, raw_peer& peer, std::string_view msg)
{
    s.write_all(bytes(msg));
    const std::string at_peer = peer.read_exactly(msg.size());
    if (at_peer != msg)
        return "peer received: " + at_peer;
    peer.write(at_peer);
    return read_exactly(s, msg.size());
}

} // namespace support

#endif
