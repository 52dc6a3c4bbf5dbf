// tls_stream: a TLS connection (OpenSSL 3.x) around a socket you already
// have, that always closes the way its policy says.
//
// SPDX-License-Identifier: MIT
//
// Sections: errors, context, sockets, transport (BIO), policies, stream.
#ifndef TLS_STREAM_HPP
#define TLS_STREAM_HPP

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace tls {

// ---------------------------------------------------------------- errors

/// The library's own error codes. Compare with `ec == tls::errc::timeout`.
enum class errc {
    stream_truncated = 1, ///< the transport ended (FIN or RST) without the peer's close_notify
    timeout,              ///< a deadline passed
    not_connected,        ///< no completed handshake (never ran, or a moved-from stream)
    already_connected,    ///< a second handshake on the same stream
    closed,               ///< I/O after our close_notify or after shutdown()
    not_closed,           ///< release_socket() before a completed bidirectional close
};

namespace detail {

class errc_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "tls_stream"; }
    std::string message(int value) const override
    {
        switch (static_cast<errc>(value)) {
        case errc::stream_truncated: return "TLS stream truncated: the transport ended without close_notify";
        case errc::timeout: return "TLS operation timed out";
        case errc::not_connected: return "TLS stream has no completed handshake";
        case errc::already_connected: return "TLS handshake already done on this stream";
        case errc::closed: return "TLS stream is closed for this operation";
        case errc::not_closed: return "TLS stream is not closed in both directions";
        }
        return "unknown tls_stream error";
    }
    std::error_condition default_error_condition(int value) const noexcept override
    {
        if (static_cast<errc>(value) == errc::timeout)
            return std::errc::timed_out;
        return {value, *this};
    }
};

// Codes are OpenSSL's packed error codes (ERR_get_error), reinterpreted as int.
class openssl_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "openssl"; }
    std::string message(int value) const override
    {
        // The strings are loaded when libssl initialises; a message asked
        // for before anything else touched OpenSSL must not come out raw.
        OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, nullptr);
        const auto code = static_cast<unsigned long>(static_cast<unsigned int>(value));
        if (const char* reason = ERR_reason_error_string(code))
            return reason;
        char buf[256];
        ERR_error_string_n(code, buf, sizeof buf);
        return buf;
    }
};

} // namespace detail

/// Category of `tls::errc`.
inline const std::error_category& error_category() noexcept
{
    static const detail::errc_category_impl instance;
    return instance;
}

/// Category of OpenSSL's own error codes; messages are OpenSSL's reason strings.
inline const std::error_category& openssl_category() noexcept
{
    static const detail::openssl_category_impl instance;
    return instance;
}

inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

} // namespace tls

template <>
struct std::is_error_code_enum<tls::errc> : std::true_type {
};

namespace tls {
namespace detail {

template <auto F>
using deleter = std::integral_constant<decltype(F), F>;

// Turns the oldest entry of the thread's OpenSSL error queue into an
// error_code and empties the queue, so nothing of ours is left behind.
inline std::error_code take_openssl_error() noexcept
{
    const unsigned long code = ERR_get_error();
    ERR_clear_error();
    if (code == 0)
        return std::make_error_code(std::errc::io_error);
    if (ERR_SYSTEM_ERROR(code))
        return {static_cast<int>(ERR_GET_REASON(code)), std::system_category()};
    return {static_cast<int>(static_cast<unsigned int>(code)), openssl_category()};
}

[[noreturn, gnu::cold]] inline void throw_error(const std::error_code& ec, const char* what)
{
    throw std::system_error(ec, what);
}

inline void throw_if(const std::error_code& ec, const char* what)
{
    if (ec) [[unlikely]]
        throw_error(ec, what);
}

} // namespace detail

// ---------------------------------------------------------------- context

/// RAII owner of an `SSL_CTX*`. Movable, not copyable.
class context {
public:
    /// An empty context (no SSL_CTX); only useful as a target for assignment.
    context() noexcept = default;

    /// Adopts the reference passed in: the context frees it. Throws
    /// `std::invalid_argument` on a null pointer.
    explicit context(SSL_CTX* adopted) : ctx_(adopted)
    {
        if (!ctx_)
            throw std::invalid_argument("tls::context: null SSL_CTX*");
    }

    /// A client context: TLS 1.2 or newer, the peer's certificate is verified
    /// against the system trust store.
    static context client()
    {
        std::error_code ec;
        context c = client(ec);
        detail::throw_if(ec, "tls::context::client");
        return c;
    }
    static context client(std::error_code& ec)
    {
        ec.clear();
        ERR_clear_error();
        context c = make(TLS_client_method(), ec);
        if (ec)
            return c;
        SSL_CTX_set_verify(c.native_handle(), SSL_VERIFY_PEER, nullptr);
        if (SSL_CTX_set_default_verify_paths(c.native_handle()) != 1)
            return fail(ec);
        return c;
    }

    /// A server context presenting `cert_chain_file` (PEM: leaf first, then
    /// intermediates) with the private key in `key_file` (PEM). TLS 1.2 or newer.
    static context server(const std::string& cert_chain_file, const std::string& key_file)
    {
        std::error_code ec;
        context c = server(cert_chain_file, key_file, ec);
        if (ec)
            detail::throw_error(ec,
                                ("tls::context::server(\"" + cert_chain_file + "\", \"" + key_file + "\")").c_str());
        return c;
    }
    static context server(const std::string& cert_chain_file, const std::string& key_file, std::error_code& ec)
    {
        ec.clear();
        ERR_clear_error();
        context c = make(TLS_server_method(), ec);
        if (ec)
            return c;
        SSL_CTX* raw = c.native_handle();
        if (SSL_CTX_use_certificate_chain_file(raw, cert_chain_file.c_str()) != 1
            || SSL_CTX_use_PrivateKey_file(raw, key_file.c_str(), SSL_FILETYPE_PEM) != 1
            || SSL_CTX_check_private_key(raw) != 1)
            return fail(ec);
        return c;
    }

    /// Adds the PEM certificates in `path` as trust anchors.
    /// @note Calls SSL_CTX_load_verify_locations.
    void load_verify_file(const std::string& path)
    {
        std::error_code ec;
        load_verify_file(path, ec);
        if (ec)
            detail::throw_error(ec, ("tls::context::load_verify_file(\"" + path + "\")").c_str());
    }
    void load_verify_file(const std::string& path, std::error_code& ec)
    {
        ec.clear();
        if (!ctx_) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        ERR_clear_error();
        if (SSL_CTX_load_verify_locations(ctx_.get(), path.c_str(), nullptr) != 1)
            ec = detail::take_openssl_error();
    }

    /// Opt-in for peers known to end connections without close_notify:
    /// streams made from this context read such an ending as a clean EOF
    /// (`read_some` returns 0) instead of `errc::stream_truncated`. Off by
    /// default; the same switch as `SSL_OP_IGNORE_UNEXPECTED_EOF`. A stream
    /// can override it with `tls_stream::set_accept_missing_close_notify`.
    void set_accept_missing_close_notify(bool accept = true) noexcept
    {
        if (accept)
            SSL_CTX_set_options(ctx_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
        else
            SSL_CTX_clear_options(ctx_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
    }
    bool accepts_missing_close_notify() const noexcept
    {
        return ctx_ && (SSL_CTX_get_options(ctx_.get()) & SSL_OP_IGNORE_UNEXPECTED_EOF) != 0;
    }

    SSL_CTX* native_handle() const noexcept { return ctx_.get(); }
    explicit operator bool() const noexcept { return ctx_ != nullptr; }

private:
    static context make(const SSL_METHOD* method, std::error_code& ec)
    {
        context c;
        c.ctx_.reset(SSL_CTX_new(method));
        if (!c.ctx_ || SSL_CTX_set_min_proto_version(c.ctx_.get(), TLS1_2_VERSION) != 1) {
            c.ctx_.reset();
            ec = detail::take_openssl_error();
        }
        return c;
    }
    static context fail(std::error_code& ec)
    {
        ec = detail::take_openssl_error();
        return context{};
    }

    std::unique_ptr<SSL_CTX, detail::deleter<&SSL_CTX_free>> ctx_;
};

// ---------------------------------------------------------------- sockets

/// Anything with `native_handle()` giving a connected socket descriptor.
// clang-format 14 mangles requires-expressions.
// clang-format off
template <class S>
concept socket_like = std::is_nothrow_move_constructible_v<S> && requires(const S& s) {
    { s.native_handle() } -> std::convertible_to<int>;
};
// clang-format on

/// A borrowed descriptor: never closes it.
class fd_socket {
public:
    explicit fd_socket(int fd) noexcept : fd_(fd) {}
    int native_handle() const noexcept { return fd_; }

private:
    int fd_;
};

/// An owned descriptor: closes it when destroyed. Move-only.
class unique_socket {
public:
    unique_socket() noexcept = default;
    explicit unique_socket(int fd) noexcept : fd_(fd) {}
    unique_socket(unique_socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    unique_socket& operator=(unique_socket&& other) noexcept
    {
        if (this != &other)
            reset(std::exchange(other.fd_, -1));
        return *this;
    }
    unique_socket(const unique_socket&) = delete;
    unique_socket& operator=(const unique_socket&) = delete;
    ~unique_socket() { reset(); }

    int native_handle() const noexcept { return fd_; }
    /// Gives up ownership without closing.
    int release() noexcept { return std::exchange(fd_, -1); }
    /// Closes the current descriptor (if any) and takes `fd`.
    void reset(int fd = -1) noexcept
    {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

/// What `release_socket()` hands back: the socket, and every byte the
/// transport had read past the peer's close_notify (to be consumed first).
template <class Socket>
struct released {
    Socket socket;
    std::vector<std::byte> unread;
};

// ---------------------------------------------------------------- transport (BIO)

namespace detail {

// Ciphertext read from the socket ahead of what OpenSSL asked for, so that one
// recv() usually brings a whole record (or several) instead of header + body.
inline constexpr std::size_t read_ahead_capacity = std::size_t{64} * 1024;

struct transport {
    int fd;
    // No deadline pending: let recv()/send() block in the kernel instead of
    // paying for MSG_DONTWAIT + EAGAIN + poll on every record.
    bool may_block = false;
    bool eof = false;      // the peer ended the transport (FIN, or RST)
    int last_errno = 0;    // errno of the last failing send/recv
    std::size_t begin = 0; // unconsumed ciphertext is buf[begin, end)
    std::size_t end = 0;
    std::unique_ptr<std::byte[]> buf{new std::byte[read_ahead_capacity]};
    // Framing of what OpenSSL was given: it never gets a byte past the end
    // of the record it is reading, so whatever follows the peer's
    // close_notify stays in buf for release_socket().
    unsigned char header[5] = {};
    std::size_t header_seen = 0; // bytes of the current record's header given so far
    std::size_t body_left = 0;   // bytes of its body still to give

    std::size_t buffered() const noexcept { return end - begin; }
};

// How many of the n bytes at p belong to the current record (all of them, or
// up to its end); moves the framing past them. At least 1 if n > 0.
inline std::size_t frame(transport& t, const std::byte* p, std::size_t n) noexcept
{
    std::size_t k = 0;
    while (k < n) {
        if (t.header_seen < sizeof t.header) {
            t.header[t.header_seen++] = static_cast<unsigned char>(p[k++]);
            if (t.header_seen < sizeof t.header)
                continue;
            t.body_left = std::size_t{t.header[3]} << 8 | t.header[4];
        } else {
            const std::size_t m = std::min(t.body_left, n - k);
            k += m;
            t.body_left -= m;
        }
        if (t.body_left == 0) {
            t.header_seen = 0;
            break;
        }
    }
    return k;
}

// OpenSSL runs with read-ahead on, so it asks for a whole buffer's worth and
// one recv() usually brings a whole record, straight into OpenSSL's buffer
// (no copy). Only bytes past the end of the current record are kept here.
inline int transport_read(BIO* bio, char* out, std::size_t len, std::size_t* got) noexcept
{
    auto* t = static_cast<transport*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    *got = 0;
    auto* dst = reinterpret_cast<std::byte*>(out);
    if (t->begin == t->end) {
        if (t->eof)
            return 0;
        ssize_t n;
        do
            n = ::recv(t->fd, out, std::min(len, read_ahead_capacity), t->may_block ? 0 : MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n <= 0) {
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                BIO_set_retry_read(bio);
                return 0;
            }
            // FIN, or a reset: either way the peer's stream of records has
            // ended; OpenSSL turns it into "unexpected EOF" via BIO_CTRL_EOF.
            t->last_errno = n < 0 ? errno : 0;
            t->eof = true;
            return 0;
        }
        const auto received = static_cast<std::size_t>(n);
        const std::size_t k = frame(*t, dst, received);
        std::memcpy(t->buf.get(), dst + k, received - k);
        t->begin = 0;
        t->end = received - k;
        *got = k;
        return 1;
    }
    const std::size_t k = frame(*t, t->buf.get() + t->begin, std::min(len, t->buffered()));
    std::memcpy(dst, t->buf.get() + t->begin, k);
    t->begin += k;
    *got = k;
    return 1;
}

inline int transport_write(BIO* bio, const char* in, std::size_t len, std::size_t* put) noexcept
{
    auto* t = static_cast<transport*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    *put = 0;
    ssize_t n;
    // MSG_NOSIGNAL: a peer that is gone gives EPIPE, never SIGPIPE.
    do
        n = ::send(t->fd, in, len, MSG_NOSIGNAL | (t->may_block ? 0 : MSG_DONTWAIT));
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_write(bio);
        else
            t->last_errno = errno;
        return 0;
    }
    *put = static_cast<std::size_t>(n);
    return 1;
}

inline long transport_ctrl(BIO* bio, int cmd, long /*num*/, void* ptr) noexcept
{
    auto* t = static_cast<transport*>(BIO_get_data(bio));
    switch (cmd) {
    case BIO_CTRL_EOF: return t->eof && t->begin == t->end ? 1 : 0;
    case BIO_CTRL_PENDING: return static_cast<long>(t->buffered());
    case BIO_CTRL_WPENDING: return 0;
    case BIO_CTRL_FLUSH: return 1;
    case BIO_C_GET_FD:
        if (ptr)
            *static_cast<int*>(ptr) = t->fd;
        return t->fd;
    default: return 0;
    }
}

inline int transport_destroy(BIO* bio) noexcept
{
    delete static_cast<transport*>(BIO_get_data(bio));
    BIO_set_data(bio, nullptr);
    return 1;
}

// clang-format 14 would write deleter<& BIO_meth_free>.
// clang-format off
inline const BIO_METHOD* transport_method()
{
    static const std::unique_ptr<BIO_METHOD, deleter<&BIO_meth_free>> method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                     "tls_stream socket");
        if (m) {
            BIO_meth_set_read_ex(m, transport_read);
            BIO_meth_set_write_ex(m, transport_write);
            BIO_meth_set_ctrl(m, transport_ctrl);
            BIO_meth_set_destroy(m, transport_destroy);
        }
        return std::unique_ptr<BIO_METHOD, deleter<&BIO_meth_free>>(m);
    }();
    return method.get();
}
// clang-format on

using steady = std::chrono::steady_clock;
using deadline = std::optional<steady::time_point>;

inline deadline deadline_after(std::chrono::milliseconds d) noexcept { return steady::now() + d; }

// Waits until the fd is ready for `events` or the deadline passes. Without a
// deadline it waits for as long as it takes.
inline std::error_code wait_ready(int fd, short events, const deadline& until) noexcept
{
    for (;;) {
        int ms = -1;
        if (until) {
            const auto left = *until - steady::now();
            if (left <= steady::duration::zero())
                return errc::timeout;
            // Round up so we never wake just before the deadline and spin.
            const auto left_ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
            ms = left_ms > INT_MAX ? INT_MAX : static_cast<int>(left_ms);
        }
        pollfd p{fd, events, 0};
        const int r = ::poll(&p, 1, ms);
        if (r > 0)
            return {};
        if (r < 0 && errno != EINTR)
            return {errno, std::system_category()};
    }
}

} // namespace detail

// ---------------------------------------------------------------- policies

/// How a policy closes the connection.
enum class close_mode { fast, quiet, full };

/// Sends close_notify and does not wait for the peer's. `timeout` bounds
/// getting our close_notify out.
struct fast_shutdown {
    static constexpr close_mode mode = close_mode::fast;
    static constexpr std::chrono::milliseconds timeout{1000};
};

/// Sends nothing (SSL_set_quiet_shutdown); the session stays resumable.
/// Strict peers see the end as a truncation.
struct quiet_shutdown {
    static constexpr close_mode mode = close_mode::quiet;
    static constexpr std::chrono::milliseconds timeout{0};
};

/// Sends close_notify, then reads (discarding application data) until the
/// peer's close_notify arrives; `timeout` bounds the whole close.
struct full_shutdown {
    static constexpr close_mode mode = close_mode::full;
    static constexpr std::chrono::milliseconds timeout{3000};
};

// clang-format 14 mangles requires-expressions.
// clang-format off
template <class P>
concept shutdown_policy = requires {
    { P::mode } -> std::convertible_to<close_mode>;
    { P::timeout } -> std::convertible_to<std::chrono::milliseconds>;
} && (std::chrono::milliseconds(P::timeout).count() >= 0);

// clang-format on
/// What `shutdown()` achieved on the wire.
enum class shutdown_result {
    none,     ///< nothing was put on the wire (error, or no connection to close)
    quiet,    ///< a quiet close: nothing on the wire, by design
    sent,     ///< our close_notify went out; the policy did not receive the peer's (fast never waits for it)
    complete, ///< close_notify both ways: ours sent, the peer's received
};

// ---------------------------------------------------------------- stream

/// A TLS connection over `Socket`, closed by `Policy` when destroyed.
///
/// Blocking calls wait with poll() only when a deadline is set; otherwise
/// they block in the kernel. Blocking and non-blocking descriptors behave
/// the same to the caller. No call raises SIGPIPE.
template <socket_like Socket, shutdown_policy Policy = full_shutdown>
class tls_stream {
public:
    using socket_type = Socket;
    using policy_type = Policy;

    /// Creates the `SSL` for `ctx` over `sock`. No I/O yet.
    tls_stream(const context& ctx, Socket sock) : sock_(std::move(sock))
    {
        if (!ctx)
            throw std::invalid_argument("tls::tls_stream: empty tls::context");
        std::unique_ptr<detail::transport> t(new detail::transport{static_cast<int>(sock_.native_handle())});
        ERR_clear_error();
        ssl_.reset(SSL_new(ctx.native_handle()));
        const BIO_METHOD* method = detail::transport_method();
        BIO* bio = ssl_ && method ? BIO_new(method) : nullptr;
        if (!bio) {
            ssl_.reset();
            detail::throw_error(detail::take_openssl_error(), "tls::tls_stream");
        }
        t_ = t.release();
        BIO_set_data(bio, t_);
        BIO_set_init(bio, 1);
        SSL_set_bio(ssl_.get(), bio, bio);
        SSL_set_mode(ssl_.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_set_read_ahead(ssl_.get(), 1); // safe: the transport hands over one record at a time
    }

    tls_stream(tls_stream&& other) noexcept
        : sock_(std::move(other.sock_)), ssl_(std::move(other.ssl_)), t_(std::exchange(other.t_, nullptr)),
          phase_(std::exchange(other.phase_, phase::empty)), sent_cn_(other.sent_cn_), got_cn_(other.got_cn_),
          peer_ended_(other.peer_ended_), io_timeout_(other.io_timeout_), shutdown_timeout_(other.shutdown_timeout_),
          error_(other.error_), result_(other.result_)
    {
    }

    /// Closes what this stream held (by its policy), then takes `other`'s connection.
    tls_stream& operator=(tls_stream&& other) noexcept
    {
        if (this != &other) {
            close_on_destruction();
            ssl_.reset();
            sock_ = std::move(other.sock_);
            ssl_ = std::move(other.ssl_);
            t_ = std::exchange(other.t_, nullptr);
            phase_ = std::exchange(other.phase_, phase::empty);
            sent_cn_ = other.sent_cn_;
            got_cn_ = other.got_cn_;
            peer_ended_ = other.peer_ended_;
            io_timeout_ = other.io_timeout_;
            shutdown_timeout_ = other.shutdown_timeout_;
            error_ = other.error_;
            result_ = other.result_;
        }
        return *this;
    }

    tls_stream(const tls_stream&) = delete;
    tls_stream& operator=(const tls_stream&) = delete;

    /// Runs `Policy` if the connection is open (see the README's state
    /// table), swallows every error, frees the `SSL`. Never throws.
    ~tls_stream() { close_on_destruction(); }

    // -- handshake

    /// Client handshake with SNI and verification of `host` (a DNS name or
    /// an IP address; IP addresses are checked but not sent as SNI).
    /// @note Calls SSL_connect.
    void connect(std::string_view host)
    {
        std::error_code ec;
        connect(host, ec);
        throw_with_detail(ec, "tls::tls_stream::connect");
    }
    void connect(std::string_view host, std::error_code& ec)
    {
        if (host.empty()) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        if (!begin_handshake(ec))
            return;
        const std::string name(host);
        in6_addr addr{};
        const bool is_ip =
            inet_pton(AF_INET, name.c_str(), &addr) == 1 || inet_pton(AF_INET6, name.c_str(), &addr) == 1;
        ERR_clear_error();
        const int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_.get()), name.c_str())
                             : SSL_set_tlsext_host_name(ssl_.get(), name.c_str()) == 1
                                   && SSL_set1_host(ssl_.get(), name.c_str()) == 1;
        if (ok != 1) {
            fail(detail::take_openssl_error(), ec);
            return;
        }
        handshake(true, ec);
    }

    /// Client handshake without SNI and without any hostname check (the
    /// certificate chain is still verified if the context asks for it).
    void connect()
    {
        std::error_code ec;
        connect(ec);
        throw_with_detail(ec, "tls::tls_stream::connect");
    }
    void connect(std::error_code& ec)
    {
        if (begin_handshake(ec))
            handshake(true, ec);
    }

    /// Server handshake.
    /// @note Calls SSL_accept.
    void accept()
    {
        std::error_code ec;
        accept(ec);
        throw_with_detail(ec, "tls::tls_stream::accept");
    }
    void accept(std::error_code& ec)
    {
        if (begin_handshake(ec))
            handshake(false, ec);
    }

    // -- data

    /// Reads at least one byte into `buf`, waiting if needed. Returns 0 only
    /// when the peer's close_notify arrived (or `buf` is empty); a transport
    /// that ends without it fails with `errc::stream_truncated`, unless
    /// missing close_notify is accepted (see
    /// `set_accept_missing_close_notify`), when it too reads as 0.
    /// @note Calls SSL_read_ex.
    std::size_t read_some(std::span<std::byte> buf)
    {
        std::error_code ec;
        const std::size_t n = read_some(buf, ec);
        detail::throw_if(ec, "tls::tls_stream::read_some");
        return n;
    }
    std::size_t read_some(std::span<std::byte> buf, std::error_code& ec)
    {
        ec.clear();
        if (phase_ != phase::open) [[unlikely]] {
            ec = unusable_error();
            return 0;
        }
        if (buf.empty() || got_cn_ || peer_ended_)
            return 0;
        std::size_t n = 0;
        SSL* ssl = ssl_.get();
        const op_status s = drive([&] { return SSL_read_ex(ssl, buf.data(), buf.size(), &n); }, io_deadline(), ec);
        if (s == op_status::eof)
            note_end_of_data();
        else if (s == op_status::failed)
            fail_unless_timeout(ec);
        return s == op_status::done ? n : 0;
    }

    /// Writes some of `buf` (at most one record), waiting if needed.
    /// @note Calls SSL_write_ex.
    std::size_t write_some(std::span<const std::byte> buf)
    {
        std::error_code ec;
        const std::size_t n = write_some(buf, ec);
        detail::throw_if(ec, "tls::tls_stream::write_some");
        return n;
    }
    std::size_t write_some(std::span<const std::byte> buf, std::error_code& ec)
    {
        if (!writable(ec) || buf.empty())
            return 0;
        return write_step(buf, io_deadline(), ec);
    }

    /// Writes all of `buf`. The I/O timeout, if set, bounds the whole call.
    void write_all(std::span<const std::byte> buf)
    {
        std::error_code ec;
        write_all(buf, ec);
        detail::throw_if(ec, "tls::tls_stream::write_all");
    }
    void write_all(std::span<const std::byte> buf, std::error_code& ec)
    {
        if (!writable(ec))
            return;
        const detail::deadline until = io_deadline();
        while (!buf.empty()) {
            const std::size_t n = write_step(buf, until, ec);
            if (ec)
                return;
            buf = buf.subspan(n);
        }
    }

    // -- closing

    /// Sends our close_notify now (half-close); `read_some` keeps working
    /// until it returns 0. Later writes fail with `errc::closed`.
    /// @note Calls SSL_shutdown once (again only to flush a partly sent alert).
    void close_write()
    {
        std::error_code ec;
        close_write(ec);
        detail::throw_if(ec, "tls::tls_stream::close_write");
    }
    void close_write(std::error_code& ec)
    {
        ec.clear();
        if (phase_ != phase::open) {
            ec = unusable_error();
            return;
        }
        if (!sent_cn_) {
            send_close_notify(io_deadline(), ec);
            if (!ec)
                push_unsent(); // the half-close should reach the peer now
        }
    }

    /// Runs the policy now, bounded by the shutdown timeout; afterwards
    /// reads and writes fail with `errc::closed` and the destructor only
    /// frees. A second call does nothing and reports the first outcome.
    /// Errors: `errc::timeout`, `errc::stream_truncated`, the peer's fatal
    /// alert, a socket error; on a stream that already failed, that error.
    shutdown_result shutdown()
    {
        std::error_code ec;
        const shutdown_result r = shutdown(ec);
        detail::throw_if(ec, "tls::tls_stream::shutdown");
        return r;
    }
    shutdown_result shutdown(std::error_code& ec)
    {
        ec.clear();
        switch (phase_) {
        case phase::open: break;
        case phase::finished: // the close's outcome again
        case phase::failed:   // the fatal error; none, unless it was a close that failed
            ec = error_;
            return result_;
        default: ec = unusable_error(); return shutdown_result::none;
        }
        result_ = run_policy(ec);
        if (phase_ == phase::open) {
            phase_ = phase::finished;
            if (!got_cn_)
                end_sending();
        }
        error_ = ec;
        ERR_clear_error();
        return result_;
    }

    /// Runtime override of `Policy::timeout`. Throws `std::invalid_argument`
    /// if negative; 0 means "do not wait at all".
    void set_shutdown_timeout(std::chrono::milliseconds timeout)
    {
        if (timeout.count() < 0)
            throw std::invalid_argument("tls::tls_stream::set_shutdown_timeout: negative timeout");
        shutdown_timeout_ = timeout;
    }
    std::chrono::milliseconds shutdown_timeout() const noexcept { return shutdown_timeout_; }

    /// Deadline for each blocking call (handshake, read, write); 0 = none,
    /// the default. A read that times out can be retried; a handshake or a
    /// write that times out leaves the stream failed (the record layer may
    /// hold half a record), as in Go's crypto/tls. Throws
    /// `std::invalid_argument` if negative.
    void set_io_timeout(std::chrono::milliseconds timeout)
    {
        if (timeout.count() < 0)
            throw std::invalid_argument("tls::tls_stream::set_io_timeout: negative timeout");
        io_timeout_ = timeout;
    }
    std::chrono::milliseconds io_timeout() const noexcept { return io_timeout_; }

    /// Per-stream opt-in (overriding the context's): read a transport that
    /// ends without the peer's close_notify as a clean EOF instead of
    /// `errc::stream_truncated`. Off by default. Such an ending is never
    /// a completed close: `release_socket()` still refuses, and a later
    /// close puts nothing on the wire (the peer is gone) and reports
    /// `shutdown_result::none` without an error.
    void set_accept_missing_close_notify(bool accept = true) noexcept
    {
        if (!ssl_)
            return;
        if (accept)
            SSL_set_options(ssl_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
        else
            SSL_clear_options(ssl_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
    }
    bool accepts_missing_close_notify() const noexcept
    {
        return ssl_ && (SSL_get_options(ssl_.get()) & SSL_OP_IGNORE_UNEXPECTED_EOF) != 0;
    }

    // -- access

    SSL* native_handle() const noexcept { return ssl_.get(); }
    const Socket& socket() const noexcept { return sock_; }

    /// After a completed bidirectional close (ours sent, the peer's
    /// received): frees the `SSL` and gives back the socket with every byte
    /// read past the peer's close_notify. The plaintext that follows is
    /// `unread`, then the socket. Before that it fails with
    /// `errc::not_closed` (or `errc::not_connected`) and the stream is left
    /// as it was.
    released<Socket> release_socket() &&
    {
        std::error_code ec;
        std::optional<released<Socket>> r = std::move(*this).release_socket(ec);
        if (!r)
            detail::throw_error(ec, "tls::tls_stream::release_socket");
        return std::move(*r);
    }
    std::optional<released<Socket>> release_socket(std::error_code& ec) &&
    {
        ec.clear();
        if (!ssl_) {
            ec = errc::not_connected;
            return std::nullopt;
        }
        if (!sent_cn_ || !got_cn_ || phase_ == phase::failed) {
            ec = phase_ == phase::failed ? error_ : make_error_code(errc::not_closed);
            return std::nullopt;
        }
        std::vector<std::byte> unread(t_->buf.get() + t_->begin, t_->buf.get() + t_->end);
        ssl_.reset(); // frees the BIO and the transport with it
        t_ = nullptr;
        phase_ = phase::empty;
        ERR_clear_error();
        return released<Socket>{std::move(sock_), std::move(unread)};
    }

private:
    enum class phase : unsigned char {
        empty,    // moved-from or released: no SSL
        fresh,    // no handshake yet (or one that did not complete: see failed)
        open,     // handshake done, no fatal error, shutdown() not run
        failed,   // a fatal error was seen: nothing more goes on the wire
        finished, // shutdown() ran
    };
    enum class op_status { done, eof, failed };

    detail::deadline io_deadline() const noexcept
    {
        if (io_timeout_.count() == 0)
            return std::nullopt;
        return detail::deadline_after(io_timeout_);
    }

    // One OpenSSL operation, retried until it completes, the peer's
    // close_notify arrives, an error occurs or the deadline passes. Without
    // a deadline the transport blocks in the kernel and this never polls
    // unless the descriptor itself is non-blocking.
    template <class Op>
    op_status drive(Op&& op, const detail::deadline& until, std::error_code& ec)
    {
        t_->may_block = !until;
        for (;;) {
            // Stale entries would make SSL_get_error report SSL_ERROR_SSL.
            // Peeking is far cheaper than ERR_clear_error(), which walks all
            // sixteen slots and frees two strings in each.
            if (ERR_peek_error() != 0) [[unlikely]]
                ERR_clear_error();
            t_->last_errno = 0;
            const int r = op();
            if (r > 0) [[likely]]
                return op_status::done;
            const int err = SSL_get_error(ssl_.get(), r);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                ec = detail::wait_ready(t_->fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, until);
                if (ec)
                    return op_status::failed;
                continue;
            }
            if (err == SSL_ERROR_ZERO_RETURN) {
                ERR_clear_error();
                return op_status::eof;
            }
            ec = error_from(err);
            return op_status::failed;
        }
    }

    std::error_code error_from(int ssl_error) noexcept
    {
        if (ssl_error == SSL_ERROR_SSL) {
            const unsigned long code = ERR_peek_error();
            if (ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                ERR_clear_error();
                return errc::stream_truncated;
            }
            return detail::take_openssl_error();
        }
        ERR_clear_error();
        if (ssl_error == SSL_ERROR_SYSCALL) {
            // OpenSSL 3 reports an ended read side as SSL_ERROR_SSL (see
            // above), so this is a failed send (EPIPE, ECONNRESET) or the
            // pre-3.0 form of EOF (errno 0), a truncation.
            if (t_->last_errno != 0)
                return {t_->last_errno, std::system_category()};
            return errc::stream_truncated;
        }
        return std::make_error_code(std::errc::protocol_error);
    }

    bool begin_handshake(std::error_code& ec)
    {
        ec.clear();
        if (phase_ == phase::fresh)
            return true;
        ec = phase_ == phase::empty    ? make_error_code(errc::not_connected)
             : phase_ == phase::failed ? error_
                                       : make_error_code(errc::already_connected);
        return false;
    }

    void handshake(bool client, std::error_code& ec)
    {
        SSL* ssl = ssl_.get();
        if (client)
            SSL_set_connect_state(ssl);
        else
            SSL_set_accept_state(ssl);
        if (drive([ssl] { return SSL_do_handshake(ssl); }, io_deadline(), ec) == op_status::done) {
            phase_ = phase::open;
            return;
        }
        if (!ec) // close_notify during the handshake: the peer gave up
            ec = errc::stream_truncated;
        fail(ec, ec);
    }

    bool writable(std::error_code& ec)
    {
        ec.clear();
        if (phase_ != phase::open) [[unlikely]] {
            ec = unusable_error();
            return false;
        }
        if (sent_cn_) [[unlikely]] {
            ec = errc::closed;
            return false;
        }
        return true;
    }

    std::size_t write_step(std::span<const std::byte> buf, const detail::deadline& until, std::error_code& ec)
    {
        std::size_t n = 0;
        SSL* ssl = ssl_.get();
        if (drive([&] { return SSL_write_ex(ssl, buf.data(), buf.size(), &n); }, until, ec) != op_status::done) {
            if (!ec)
                ec = errc::closed;
            fail(ec, ec);
            return 0;
        }
        return n;
    }

    // The error for an operation on a stream that is not open.
    std::error_code unusable_error() const noexcept
    {
        switch (phase_) {
        case phase::failed: return error_;
        case phase::finished: return errc::closed;
        default: return errc::not_connected;
        }
    }

    void fail(std::error_code cause, std::error_code& ec) noexcept
    {
        phase_ = phase::failed;
        error_ = cause;
        ec = cause;
    }

    // A read that timed out left OpenSSL in a retryable state; anything
    // else a read reports is fatal.
    void fail_unless_timeout(std::error_code& ec) noexcept
    {
        if (ec != errc::timeout)
            fail(ec, ec);
    }

    // Puts our close_notify on the wire (flushing it fully). Only ever
    // calls SSL_shutdown again while the alert is still half sent.
    void send_close_notify(const detail::deadline& until, std::error_code& ec)
    {
        SSL* ssl = ssl_.get();
        int r = 0;
        const op_status s = drive(
            [ssl, &r] {
                r = SSL_shutdown(ssl);
                // 0: sent, the peer's not yet received; 1: both. Either is done.
                return r >= 0 ? 1 : r;
            },
            until, ec);
        if (s != op_status::done) {
            if (!ec)
                ec = errc::stream_truncated;
            fail(ec, ec);
            return;
        }
        sent_cn_ = true;
        if (r == 1 && !t_->eof) // 1 also follows an accepted missing close_notify
            got_cn_ = true;
    }

    shutdown_result run_policy(std::error_code& ec)
    {
        const auto started = detail::steady::now();
        const detail::deadline until = started + shutdown_timeout_;
        if (peer_ended_ && !sent_cn_) { // an accepted missing close_notify: nobody to tell
            close_quietly();
            return shutdown_result::none;
        }
        if constexpr (Policy::mode == close_mode::quiet) {
            consume_arrived();
            if (sent_cn_) // close_write() already put ours out
                return got_cn_ ? shutdown_result::complete : shutdown_result::sent;
            close_quietly();
            return shutdown_result::quiet;
        } else {
            const bool answering = got_cn_; // the peer's close_notify came before ours
            if (!sent_cn_) {
                send_close_notify(until, ec);
                if (ec)
                    return shutdown_result::none;
            }
            if constexpr (Policy::mode == close_mode::full) {
                drain_until_close_notify(until, ec);
                return got_cn_ ? shutdown_result::complete : shutdown_result::sent;
            } else {
                // Fast does not wait for the peer: whether its answer happened
                // to be among what was consumed is timing, not an outcome.
                consume_arrived();
                // Not complete: shutdown() then ends our sending side, which
                // pushes. Complete: our answer leaves now, and the socket
                // stays open for release_socket().
                if (!answering)
                    return shutdown_result::sent;
                push_unsent();
                return shutdown_result::complete;
            }
        }
    }

    // Sets both shutdown flags without writing anything (SSL_shutdown in
    // quiet mode), so that SSL_free keeps the session resumable.
    void close_quietly() noexcept
    {
        SSL_set_quiet_shutdown(ssl_.get(), 1);
        SSL_shutdown(ssl_.get());
    }

    // SSL_read reported the end of the peer's data: its close_notify, or,
    // when missing close_notify is accepted, a transport that ended without
    // one. The transport only sees its end when OpenSSL wanted more bytes,
    // which it never does after a complete close_notify record.
    void note_end_of_data() noexcept
    {
        if (t_->eof)
            peer_ended_ = true;
        else
            got_cn_ = true;
    }

    // Linux answers close() on a TCP socket that still holds unread data
    // with a reset, which throws away whatever we had not sent yet. Three
    // steps make the close that follows ours (by the application, or by an
    // owning socket) harmless, without waiting for anything:

    // 1. What we wrote leaves now: a small record (our close_notify) held
    //    back by Nagle's algorithm is pushed out by switching TCP_NODELAY on
    //    for a moment. Costs one ioctl when nothing is held back; a no-op on
    //    sockets that are not TCP.
    void push_unsent() noexcept
    {
        const int fd = t_->fd;
        int unsent = 0;
        if (::ioctl(fd, SIOCOUTQNSD, &unsent) != 0 || unsent <= 0)
            return;
        int nodelay = 0;
        socklen_t len = sizeof nodelay;
        if (::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &len) != 0 || nodelay != 0)
            return;
        const int on = 1;
        if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) == 0)
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
    }

    // 2. What has already arrived is consumed, without waiting for more:
    //    TLS 1.3 session tickets are processed (so the session can be
    //    resumed), application data is discarded, the peer's close_notify
    //    is noted. A transport that ended here is not an error worth an
    //    alert, so OpenSSL is told to accept it for the duration.
    void consume_arrived() noexcept
    {
        SSL* ssl = ssl_.get();
        const bool accepting = (SSL_get_options(ssl) & SSL_OP_IGNORE_UNEXPECTED_EOF) != 0;
        if (!accepting)
            SSL_set_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
        t_->may_block = false;
        std::byte scratch[16 * 1024];
        // Bounded, so a peer that never stops sending cannot hold us here.
        for (int records = 0; records < 64 && !got_cn_ && !peer_ended_; ++records) {
            ERR_clear_error();
            std::size_t n = 0;
            const int r = SSL_read_ex(ssl, scratch, sizeof scratch, &n);
            if (r > 0)
                continue;
            if (SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN)
                note_end_of_data();
            break; // nothing more has arrived, or an error: stop either way
        }
        if (!accepting)
            SSL_clear_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
        ERR_clear_error();
    }

    // 3. After a close that did not complete, our FIN follows at once
    //    (shutdown(SHUT_WR), which also pushes out anything still held). A
    //    reset from a later close() of a socket that meanwhile received more
    //    data then comes after the FIN, and the peer still reads an orderly
    //    end. Nothing valid can be written on this connection any more:
    //    going on in the clear needs a completed close, which skips this.
    void end_sending() noexcept { ::shutdown(t_->fd, SHUT_WR); }

    // Reads and discards application data until the peer's close_notify.
    // SSL_read, not a second SSL_shutdown: data that is still in flight
    // would make SSL_shutdown fail ("application data after close notify").
    // TLS 1.3 session tickets that arrive meanwhile are processed.
    void drain_until_close_notify(const detail::deadline& until, std::error_code& ec)
    {
        std::byte scratch[16 * 1024];
        SSL* ssl = ssl_.get();
        while (!got_cn_) {
            std::size_t n = 0;
            const op_status s = drive([&] { return SSL_read_ex(ssl, scratch, sizeof scratch, &n); }, until, ec);
            if (s == op_status::eof)
                note_end_of_data();
            else if (s == op_status::failed)
                return fail_unless_timeout(ec);
            if (peer_ended_) // accepted in place of its close_notify
                return;
        }
    }

    // Out of line: inlined into the destructor of a std::optional holding
    // a stream, g++ 12 -O2 misreports phase_ as maybe-uninitialized (and
    // -Werror builds of user code would fail).
    [[gnu::noinline]] void close_on_destruction() noexcept
    {
        if (phase_ == phase::open) {
            std::error_code ignored;
            try {
                shutdown(ignored);
            } catch (...) { // std::bad_alloc from an error message; nothing else throws
            }
        }
        ssl_.reset();
        t_ = nullptr;
        phase_ = phase::empty;
        ERR_clear_error();
    }

    // Adds OpenSSL's verification detail ("hostname mismatch", "self-signed
    // certificate") to a failed handshake's message.
    void throw_with_detail(const std::error_code& ec, const char* what) const
    {
        if (!ec)
            return;
        if (ssl_ && ec.category() == openssl_category()) {
            const auto code = static_cast<unsigned long>(static_cast<unsigned int>(ec.value()));
            const long verify = SSL_get_verify_result(ssl_.get());
            if (ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED && verify != X509_V_OK)
                detail::throw_error(ec,
                                    (std::string(what) + " (" + X509_verify_cert_error_string(verify) + ")").c_str());
        }
        detail::throw_error(ec, what);
    }

    // Declared first so it is destroyed last: the SSL is freed (and its
    // close run) before an owning socket closes the descriptor.
    Socket sock_;
    std::unique_ptr<SSL, detail::deleter<&SSL_free>> ssl_;
    detail::transport* t_ = nullptr; // owned by the BIO, which the SSL owns
    phase phase_ = phase::fresh;
    bool sent_cn_ = false;    // our close_notify is on the wire
    bool got_cn_ = false;     // the peer's close_notify was received
    bool peer_ended_ = false; // the transport ended without it, and that was accepted
    std::chrono::milliseconds io_timeout_{0};
    std::chrono::milliseconds shutdown_timeout_{Policy::timeout};
    std::error_code error_; // the fatal error (failed) or the close's outcome (finished)
    shutdown_result result_ = shutdown_result::none;
};

} // namespace tls

#endif // TLS_STREAM_HPP
