// Test support: credentials, contexts pinned to a TLS version, connected
// socket pairs (loopback TCP on port 0, or socketpair), and a raw OpenSSL
// peer that records every alert it sends and receives.
#ifndef TLS_STREAM_TESTS_SUPPORT_HPP
#define TLS_STREAM_TESTS_SUPPORT_HPP

#include <tls_stream.hpp>

#include "examples/self_signed.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <chrono>
#include <cstddef>
#include <exception>
#include <thread>
#include <mutex>
#include <string>
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
socket_pair tcp_pair();   // loopback TCP, listener bound to port 0
socket_pair unix_pair();  // AF_UNIX socketpair
socket_pair make_pair(bool tcp);

/// Bounds every blocking call on `fd` (raw peers must never hang a test).
void set_socket_timeouts(int fd, std::chrono::milliseconds t = 10s);
void set_nonblocking(int fd, bool on = true);

/// Sends a TCP reset instead of a FIN when `fd` is closed.
void arm_reset(int fd);

/// The plaintext of `s` as bytes.
std::span<const std::byte> bytes(std::string_view s);
std::string text(std::span<const std::byte> b);

/// One alert as seen by a raw peer's message callback.
struct alert {
    bool sent;        // true: the peer sent it; false: the peer received it
    int level;        // 1 warning, 2 fatal
    int description;  // 0 close_notify, ...
};

/// How a raw peer's reading ended.
enum class ending {
    close_notify,    // SSL_read reported the clean end (SSL_ERROR_ZERO_RETURN)
    unexpected_eof,  // the transport ended without close_notify
    reset,           // ECONNRESET
    timeout,         // nothing arrived within the socket timeout
    error,           // any other failure (e.g. a fatal alert)
};
const char* to_string(ending e);

/// A hand-written OpenSSL endpoint on a blocking socket, used as the peer
/// (it can misbehave on purpose). Its socket has receive/send timeouts so
/// nothing it does can hang a test.
class raw_peer {
public:
    raw_peer(const tls::context& ctx, tls::unique_socket sock);
    raw_peer(const raw_peer&) = delete;
    raw_peer& operator=(const raw_peer&) = delete;
    ~raw_peer();

    void accept();   // throws unless it succeeds
    void connect();  // throws unless it succeeds (no hostname check)

    /// Reads until the stream ends; returns everything read and how it ended.
    std::pair<std::string, ending> read_to_end();
    /// One SSL_read of up to `max` bytes; "" with `how` set when it ended.
    std::string read_some(std::size_t max, ending& how);
    void write(std::string_view data);
    /// SSL_shutdown once: sends our close_notify (1 if the peer's had arrived).
    int shutdown();

    std::vector<alert> alerts() const;
    int count_alerts(bool sent, int description) const;
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

/// Throws std::runtime_error(what) unless ok. Safe on any thread, unlike
/// Catch2's assertions: peers run on threads and report through peer_thread.
void ensure(bool ok, const std::string& what);

/// Runs a peer on its own thread; join() rethrows whatever it threw, so a
/// failing peer fails the test on the main thread.
class peer_thread {
public:
    template <class F>
    explicit peer_thread(F&& f)
        : thread_([this, fn = std::forward<F>(f)]() mutable {
              try {
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
    std::exception_ptr error_;
    std::thread thread_;
};

/// Milliseconds elapsed while running `f`.
template <class F>
std::chrono::milliseconds time_of(F&& f)
{
    const auto start = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
}

} // namespace support

#endif
