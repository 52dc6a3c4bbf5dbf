// tls_stream: a TLS connection (OpenSSL 3.x) around a socket you already
// have, that always closes the way its policy says.
//
// SPDX-License-Identifier: MIT
//
// Sections: errors, context, sessions, sockets, transport (BIO), policies,
// event loops (want, the closer), stream.
#ifndef TLS_STREAM_HPP
#define TLS_STREAM_HPP

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <concepts>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <unordered_map>
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

/// The protocol versions a context can be limited to (never below TLS 1.2).
enum class protocol_version {
    tls1_2 = TLS1_2_VERSION,
    tls1_3 = TLS1_3_VERSION,
};

/// What a server context asks of its clients' certificates.
enum class client_auth {
    none,    ///< no certificate is asked for (the default)
    request, ///< asked for; a client may send none, but one it sends must verify
    require, ///< a client that sends none fails the handshake
};

namespace detail {

// OpenSSL takes these strings as C strings and would stop at an embedded
// NUL, silently using a shorter name than the caller gave.
inline bool has_nul(std::string_view s) noexcept { return s.find('\0') != std::string_view::npos; }

// `function("argument")` for an exception's message; NUL bytes shown as \0.
inline std::string call_text(const char* function, std::string_view argument)
{
    std::string out = std::string(function) + "(\"";
    for (const char c : argument)
        out += c == '\0' ? std::string_view("\\0") : std::string_view(&c, 1);
    return out + "\")";
}

inline void throw_if(const std::error_code& ec, const char* function, std::string_view argument)
{
    if (ec) [[unlikely]]
        throw_error(ec, call_text(function, argument).c_str());
}

using session_ptr = std::unique_ptr<SSL_SESSION, deleter<&SSL_SESSION_free>>;

// Client sessions by server name; the least recently used one goes first.
// Shared by every stream of a context, possibly on several threads.
class session_cache {
public:
    explicit session_cache(std::size_t capacity) : capacity_(capacity) {}

    void put(const std::string& name, session_ptr s)
    {
        const std::lock_guard lock(mutex_);
        if (const auto it = index_.find(name); it != index_.end()) {
            lru_.erase(it->second);
            index_.erase(it);
        }
        lru_.emplace_front(name, std::move(s));
        try {
            index_.emplace(name, lru_.begin());
        } catch (...) {
            lru_.pop_front();
            throw;
        }
        if (lru_.size() > capacity_) {
            index_.erase(lru_.back().first);
            lru_.pop_back();
        }
    }

    // A new reference to the session for `name`, or null.
    session_ptr get(const std::string& name)
    {
        const std::lock_guard lock(mutex_);
        const auto it = index_.find(name);
        if (it == index_.end())
            return nullptr;
        lru_.splice(lru_.begin(), lru_, it->second);
        SSL_SESSION* s = lru_.front().second.get();
        SSL_SESSION_up_ref(s);
        return session_ptr(s);
    }

    std::size_t size()
    {
        const std::lock_guard lock(mutex_);
        return lru_.size();
    }

private:
    std::mutex mutex_;
    std::size_t capacity_;
    std::list<std::pair<std::string, session_ptr>> lru_;
    std::map<std::string, std::list<std::pair<std::string, session_ptr>>::iterator, std::less<>> index_;
};

struct file_closer {
    void operator()(std::FILE* f) const noexcept { std::fclose(f); }
};

// What a context adds to its SSL_CTX. The SSL_CTX owns it (ex_data), so it
// lives as long as the last stream made from the context, which may
// outlive the tls::context object.
struct context_state {
    std::string session_id;          // the session id context (SSL_CTX_set_session_id_context)
    std::vector<unsigned char> alpn; // the protocols in preference order, ALPN wire format
    std::unique_ptr<session_cache> cache;
    std::mutex keylog_mutex; // guards the two members below
    std::unique_ptr<std::FILE, file_closer> keylog_file;
    std::function<void(std::string_view)> keylog_callback;
    bool keep_idle_buffers = false; // set_release_idle_buffers(false)
};

inline void free_context_state(void* /*parent*/, void* state, CRYPTO_EX_DATA* /*ad*/, int /*index*/, long /*argl*/,
                               void* /*argp*/) noexcept
{
    delete static_cast<context_state*>(state);
}

inline int context_state_index() noexcept
{
    static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_context_state);
    return index;
}

inline context_state* find_state(const SSL_CTX* ctx) noexcept
{
    const int index = context_state_index();
    return ctx && index >= 0 ? static_cast<context_state*>(SSL_CTX_get_ex_data(ctx, index)) : nullptr;
}

// The server name a client stream's sessions are cached under; owned by the SSL.
inline void free_cache_key(void* /*parent*/, void* key, CRYPTO_EX_DATA* /*ad*/, int /*index*/, long /*argl*/,
                           void* /*argp*/) noexcept
{
    delete static_cast<std::string*>(key);
}

inline int cache_key_index() noexcept
{
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_cache_key);
    return index;
}

// SSL_CTX_sess_set_new_cb: a client received a session (TLS 1.2: at the
// handshake; TLS 1.3: with each ticket). Returning 1 keeps OpenSSL's reference.
inline int cache_new_session(SSL* ssl, SSL_SESSION* s) noexcept
{
    context_state* state = find_state(SSL_get_SSL_CTX(ssl));
    const int index = cache_key_index();
    const auto* name = index >= 0 ? static_cast<const std::string*>(SSL_get_ex_data(ssl, index)) : nullptr;
    if (!state || !state->cache || !name || SSL_SESSION_is_resumable(s) != 1)
        return 0;
    try {
        state->cache->put(*name, session_ptr(s));
    } catch (...) { // std::bad_alloc: the session was freed with the argument
    }
    return 1;
}

// SSL_CTX_set_keylog_callback: one NSS key log line (no newline).
inline void write_keylog(const SSL* ssl, const char* line) noexcept
{
    context_state* state = find_state(SSL_get_SSL_CTX(ssl));
    if (!state)
        return;
    try {
        const std::lock_guard lock(state->keylog_mutex);
        if (state->keylog_file) {
            std::fputs(line, state->keylog_file.get());
            std::fputc('\n', state->keylog_file.get());
            std::fflush(state->keylog_file.get());
        }
        if (state->keylog_callback)
            state->keylog_callback(line);
    } catch (...) { // a throwing callback must not unwind through OpenSSL
    }
}

// SSL_CTX_set_alpn_select_cb: the first of our protocols that the client
// offers, so the server's preference decides. None in common: the
// no_application_protocol alert (RFC 7301, 3.2).
inline int select_alpn(SSL* /*ssl*/, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                       unsigned int inlen, void* arg) noexcept
{
    const auto& ours = static_cast<const context_state*>(arg)->alpn;
    for (std::size_t i = 0; i < ours.size(); i += 1U + ours[i]) {
        for (unsigned int j = 0; j < inlen && j + 1U + in[j] <= inlen; j += 1U + in[j]) {
            if (in[j] == ours[i] && std::memcmp(in + j + 1, ours.data() + i + 1, ours[i]) == 0) {
                *out = in + j + 1;
                *outlen = in[j];
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

} // namespace detail

/// RAII owner of an `SSL_CTX*`. Movable, not copyable.
///
/// Configure a context before making streams from it: the setters are not
/// thread-safe (as with OpenSSL's own), while streams of one context may run
/// on many threads at once. Every setter fails with
/// `std::errc::invalid_argument` on an empty (default-constructed or
/// moved-from) context.
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
    /// @note Calls SSL_CTX_new, SSL_CTX_set_verify and SSL_CTX_set_default_verify_paths.
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
    /// @note Calls SSL_CTX_new, SSL_CTX_use_certificate_chain_file, SSL_CTX_use_PrivateKey_file and SSL_CTX_check_private_key.
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
        if (!ec)
            c.use_certificate_chain(cert_chain_file, key_file, ec);
        if (ec)
            return context{};
        return c;
    }

    /// Adds the PEM certificates in `path` as trust anchors.
    /// @note Calls SSL_CTX_load_verify_locations.
    void load_verify_file(const std::string& path)
    {
        std::error_code ec;
        load_verify_file(path, ec);
        detail::throw_if(ec, "tls::context::load_verify_file", path);
    }
    void load_verify_file(const std::string& path, std::error_code& ec)
    {
        if (!usable(ec) || !no_nul(path, ec))
            return;
        if (SSL_CTX_load_verify_locations(ctx_.get(), path.c_str(), nullptr) != 1)
            ec = detail::take_openssl_error();
    }

    /// Adds the trust anchors of a hashed certificate directory (the
    /// `openssl rehash` layout, like /etc/ssl/certs), looked up as needed.
    /// A path that is not a directory fails at once.
    /// @note Calls SSL_CTX_load_verify_dir.
    void load_verify_dir(const std::string& path)
    {
        std::error_code ec;
        load_verify_dir(path, ec);
        detail::throw_if(ec, "tls::context::load_verify_dir", path);
    }
    void load_verify_dir(const std::string& path, std::error_code& ec)
    {
        if (!usable(ec) || !no_nul(path, ec))
            return;
        // OpenSSL only looks into the directory during a handshake: a
        // missing one would just fail verification later, without naming it.
        struct stat st {};
        if (::stat(path.c_str(), &st) != 0) {
            ec = {errno, std::system_category()};
            return;
        }
        if (!S_ISDIR(st.st_mode)) {
            ec = std::make_error_code(std::errc::not_a_directory);
            return;
        }
        if (SSL_CTX_load_verify_dir(ctx_.get(), path.c_str()) != 1)
            ec = detail::take_openssl_error();
    }

    /// Presents the certificate chain in `cert_chain_file` (PEM: leaf first,
    /// then intermediates) with the private key in `key_file` (PEM): a
    /// server's certificate, or a client's for mutual TLS. A key that does
    /// not belong to the certificate fails with OpenSSL's "key values
    /// mismatch"; the throwing overload's message names both files.
    /// @note Calls SSL_CTX_use_certificate_chain_file, SSL_CTX_use_PrivateKey_file, SSL_CTX_check_private_key.
    void use_certificate_chain(const std::string& cert_chain_file, const std::string& key_file)
    {
        std::error_code ec;
        use_certificate_chain(cert_chain_file, key_file, ec);
        if (ec)
            detail::throw_error(
                ec, ("tls::context::use_certificate_chain(\"" + cert_chain_file + "\", \"" + key_file + "\")").c_str());
    }
    void use_certificate_chain(const std::string& cert_chain_file, const std::string& key_file, std::error_code& ec)
    {
        if (!usable(ec) || !no_nul(cert_chain_file, ec) || !no_nul(key_file, ec))
            return;
        SSL_CTX* raw = ctx_.get();
        if (SSL_CTX_use_certificate_chain_file(raw, cert_chain_file.c_str()) != 1
            || SSL_CTX_use_PrivateKey_file(raw, key_file.c_str(), SSL_FILETYPE_PEM) != 1
            || SSL_CTX_check_private_key(raw) != 1)
            ec = detail::take_openssl_error();
    }

    /// Server contexts: whether clients are asked for a certificate, which
    /// is then verified against the trust anchors loaded with
    /// `load_verify_file` / `load_verify_dir`. The server's handshake fails
    /// with "peer did not return a certificate" when `require` finds none,
    /// and with "certificate verify failed (reason)" when one does not
    /// verify. Fails with `std::errc::invalid_argument` on a client context,
    /// where it would switch off the check of the server's certificate.
    /// @note Calls SSL_CTX_set_verify.
    void set_client_auth(client_auth mode)
    {
        std::error_code ec;
        set_client_auth(mode, ec);
        detail::throw_if(ec, "tls::context::set_client_auth");
    }
    void set_client_auth(client_auth mode, std::error_code& ec)
    {
        if (!usable(ec))
            return;
        if (SSL_CTX_get_ssl_method(ctx_.get()) == TLS_client_method()) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        switch (mode) {
        case client_auth::none: SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_NONE, nullptr); return;
        case client_auth::request: SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr); return;
        case client_auth::require:
            SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
            return;
        }
        ec = std::make_error_code(std::errc::invalid_argument);
    }

    /// Limits the protocol versions to [min, max]. `min > max` (an empty
    /// range) fails with `std::errc::invalid_argument`.
    /// @note Calls SSL_CTX_set_min_proto_version, SSL_CTX_set_max_proto_version.
    void set_protocol_versions(protocol_version min, protocol_version max)
    {
        std::error_code ec;
        set_protocol_versions(min, max, ec);
        detail::throw_if(ec, "tls::context::set_protocol_versions");
    }
    void set_protocol_versions(protocol_version min, protocol_version max, std::error_code& ec)
    {
        if (!usable(ec))
            return;
        const auto known = [](protocol_version v) {
            return v == protocol_version::tls1_2 || v == protocol_version::tls1_3;
        };
        if (!known(min) || !known(max) || static_cast<int>(min) > static_cast<int>(max)) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        if (SSL_CTX_set_min_proto_version(ctx_.get(), static_cast<int>(min)) != 1
            || SSL_CTX_set_max_proto_version(ctx_.get(), static_cast<int>(max)) != 1)
            ec = detail::take_openssl_error();
    }

    /// The TLS 1.2 cipher list, in OpenSSL's syntax
    /// (e.g. "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256").
    /// A list that selects no cipher fails with OpenSSL's "no cipher match".
    /// @note Calls SSL_CTX_set_cipher_list.
    void set_cipher_list(std::string_view ciphers)
    {
        std::error_code ec;
        set_cipher_list(ciphers, ec);
        detail::throw_if(ec, "tls::context::set_cipher_list", ciphers);
    }
    void set_cipher_list(std::string_view ciphers, std::error_code& ec)
    {
        if (!usable(ec) || !no_nul(ciphers, ec))
            return;
        if (SSL_CTX_set_cipher_list(ctx_.get(), std::string(ciphers).c_str()) != 1)
            ec = detail::take_openssl_error();
    }

    /// The TLS 1.3 cipher suites, colon-separated
    /// (e.g. "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"); an
    /// unknown name fails with "no cipher match".
    /// @note Calls SSL_CTX_set_ciphersuites.
    void set_ciphersuites(std::string_view suites)
    {
        std::error_code ec;
        set_ciphersuites(suites, ec);
        detail::throw_if(ec, "tls::context::set_ciphersuites", suites);
    }
    void set_ciphersuites(std::string_view suites, std::error_code& ec)
    {
        if (!usable(ec) || !no_nul(suites, ec))
            return;
        if (SSL_CTX_set_ciphersuites(ctx_.get(), std::string(suites).c_str()) != 1)
            ec = detail::take_openssl_error();
    }

    /// ALPN: the application protocols, most preferred first
    /// (e.g. {"h2", "http/1.1"}). A client offers them; a server picks the
    /// first of its own list that the client offers, and ends a handshake
    /// with none in common with the no_application_protocol alert (a
    /// client that offers no ALPN at all is served without). The result is
    /// `tls_stream::alpn_protocol()`. An empty list, an empty name or one
    /// longer than 255 bytes fails with `std::errc::invalid_argument`
    /// (names are bytes: ALPN allows any, NUL included).
    /// @note Calls SSL_CTX_set_alpn_protos and SSL_CTX_set_alpn_select_cb.
    void set_alpn_protocols(const std::vector<std::string>& protocols)
    {
        std::error_code ec;
        set_alpn_protocols(protocols, ec);
        detail::throw_if(ec, "tls::context::set_alpn_protocols");
    }
    void set_alpn_protocols(const std::vector<std::string>& protocols, std::error_code& ec)
    {
        if (!usable(ec))
            return;
        std::vector<unsigned char> wire;
        for (const std::string& p : protocols) {
            if (p.empty() || p.size() > 255) {
                ec = std::make_error_code(std::errc::invalid_argument);
                return;
            }
            wire.push_back(static_cast<unsigned char>(p.size()));
            wire.insert(wire.end(), p.begin(), p.end());
        }
        if (wire.empty() || wire.size() > 0xffff) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        detail::context_state& s = state();
        // 0 is success here, unlike every other SSL_CTX_set_*.
        if (SSL_CTX_set_alpn_protos(ctx_.get(), wire.data(), static_cast<unsigned int>(wire.size())) != 0) {
            ec = detail::take_openssl_error();
            return;
        }
        s.alpn = std::move(wire);
        SSL_CTX_set_alpn_select_cb(ctx_.get(), detail::select_alpn, &s);
    }

    /// Client contexts: keep the sessions that servers hand out, up to
    /// `capacity` (least recently used dropped first), keyed by the name
    /// given to `tls_stream::connect(host)`; a later `connect(host)` to the
    /// same name resumes. Off by default. Sessions arrive with the
    /// handshake (TLS 1.2) or with the server's tickets, which a stream
    /// processes when it reads (TLS 1.3; also while closing by fast or
    /// full). Fails with `std::errc::invalid_argument` on a server context
    /// or for a capacity of 0.
    /// @note Calls SSL_CTX_set_session_cache_mode (SSL_SESS_CACHE_CLIENT |
    /// SSL_SESS_CACHE_NO_INTERNAL_STORE) and SSL_CTX_sess_set_new_cb.
    void enable_session_cache(std::size_t capacity = 100)
    {
        std::error_code ec;
        enable_session_cache(capacity, ec);
        detail::throw_if(ec, "tls::context::enable_session_cache");
    }
    void enable_session_cache(std::size_t capacity, std::error_code& ec)
    {
        if (!usable(ec))
            return;
        if (capacity == 0 || SSL_CTX_get_ssl_method(ctx_.get()) == TLS_server_method()) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        state().cache = std::make_unique<detail::session_cache>(capacity);
        SSL_CTX_set_session_cache_mode(ctx_.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx_.get(), detail::cache_new_session);
    }
    /// How many sessions the cache holds (0 without one).
    std::size_t cached_sessions() const noexcept
    {
        detail::context_state* s = detail::find_state(ctx_.get());
        return s && s->cache ? s->cache->size() : 0;
    }

    /// The session id context: `tls_stream::set_session` only takes
    /// sessions that carry the same one. Each context gets a random one when
    /// made by `client()` or `server()`, so a session from another context
    /// is refused; a client that keeps sessions across runs
    /// (`session::to_bytes`) names its contexts alike, e.g.
    /// `set_session_id_context("myapp client")`. 1 to 32 bytes, else
    /// `std::errc::invalid_argument`.
    /// @note Calls SSL_CTX_set_session_id_context.
    void set_session_id_context(std::string_view id)
    {
        std::error_code ec;
        set_session_id_context(id, ec);
        detail::throw_if(ec, "tls::context::set_session_id_context", id);
    }
    void set_session_id_context(std::string_view id, std::error_code& ec)
    {
        if (!usable(ec))
            return;
        if (id.empty() || id.size() > SSL_MAX_SID_CTX_LENGTH) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        detail::context_state& s = state();
        if (SSL_CTX_set_session_id_context(ctx_.get(), reinterpret_cast<const unsigned char*>(id.data()),
                                           static_cast<unsigned int>(id.size()))
            != 1) {
            ec = detail::take_openssl_error();
            return;
        }
        s.session_id.assign(id);
    }

    /// Key logging, for debugging only (whoever reads the file can decrypt
    /// the traffic): appends each connection's secrets to `path` in the NSS
    /// key log format that Wireshark reads, creating it (mode 0600) if
    /// needed. Replaces an earlier key log file or callback. Off by default.
    /// @note Calls SSL_CTX_set_keylog_callback.
    void set_keylog_file(const std::string& path)
    {
        std::error_code ec;
        set_keylog_file(path, ec);
        detail::throw_if(ec, "tls::context::set_keylog_file", path);
    }
    void set_keylog_file(const std::string& path, std::error_code& ec)
    {
        if (!usable(ec) || !no_nul(path, ec))
            return;
        if (path.empty()) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) {
            ec = {errno, std::system_category()};
            return;
        }
        std::unique_ptr<std::FILE, detail::file_closer> file(::fdopen(fd, "a"));
        if (!file) {
            ec = {errno, std::system_category()};
            ::close(fd);
            return;
        }
        detail::context_state& s = state();
        const std::lock_guard lock(s.keylog_mutex);
        s.keylog_file = std::move(file);
        s.keylog_callback = nullptr;
        SSL_CTX_set_keylog_callback(ctx_.get(), detail::write_keylog);
    }

    /// Key logging to a callback, called with each NSS key log line
    /// (without the newline), possibly from several threads (one call at a
    /// time). Replaces an earlier key log file or callback; an empty
    /// function turns key logging off.
    /// @note Calls SSL_CTX_set_keylog_callback.
    void set_keylog_callback(std::function<void(std::string_view line)> callback)
    {
        std::error_code ec;
        set_keylog_callback(std::move(callback), ec);
        detail::throw_if(ec, "tls::context::set_keylog_callback");
    }
    void set_keylog_callback(std::function<void(std::string_view line)> callback, std::error_code& ec)
    {
        if (!usable(ec))
            return;
        detail::context_state& s = state();
        const std::lock_guard lock(s.keylog_mutex);
        s.keylog_file.reset();
        const bool on = static_cast<bool>(callback);
        s.keylog_callback = std::move(callback);
        SSL_CTX_set_keylog_callback(ctx_.get(), on ? detail::write_keylog : nullptr);
    }

    /// Honours the `SSLKEYLOGFILE` environment variable, as browsers and
    /// curl do, but only when called: if it names a file, key logging goes
    /// there (as `set_keylog_file`) and this returns true; unset or empty,
    /// nothing changes and it returns false.
    /// @note Calls SSL_CTX_set_keylog_callback (through set_keylog_file).
    bool set_keylog_file_from_env()
    {
        std::error_code ec;
        const bool on = set_keylog_file_from_env(ec);
        if (ec) {
            const char* path = std::getenv("SSLKEYLOGFILE");
            detail::throw_if(ec, "tls::context::set_keylog_file_from_env", path ? path : "");
        }
        return on;
    }
    bool set_keylog_file_from_env(std::error_code& ec)
    {
        if (!usable(ec))
            return false;
        const char* path = std::getenv("SSLKEYLOGFILE");
        if (!path || *path == '\0')
            return false;
        set_keylog_file(path, ec);
        return !ec;
    }

    /// Opt-in for peers known to end connections without close_notify:
    /// streams made from this context read such an ending as a clean EOF
    /// (`read_some` returns 0) instead of `errc::stream_truncated`. Off by
    /// default; the same switch as `SSL_OP_IGNORE_UNEXPECTED_EOF`. A stream
    /// can override it with `tls_stream::set_accept_missing_close_notify`.
    /// On an empty context it does nothing.
    /// @note Calls SSL_CTX_set_options / SSL_CTX_clear_options.
    void set_accept_missing_close_notify(bool accept = true) noexcept
    {
        if (!ctx_)
            return;
        if (accept)
            SSL_CTX_set_options(ctx_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
        else
            SSL_CTX_clear_options(ctx_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
    }
    bool accepts_missing_close_notify() const noexcept
    {
        return ctx_ && (SSL_CTX_get_options(ctx_.get()) & SSL_OP_IGNORE_UNEXPECTED_EOF) != 0;
    }

    /// Whether streams made from this context from now on free their record
    /// buffers while they wait for the peer: yes by default, so an idle
    /// connection holds about 18 KiB per end instead of about 51 (raw
    /// OpenSSL's). The price falls on a connection that waits between each
    /// request and its response: it takes the buffers again after every
    /// wait, about 14% more instructions per round trip. `false` keeps them,
    /// for busy event loops (docs/guide.md, "How it works"). Does nothing on
    /// an empty context. `tls_stream::set_release_idle_buffers` sets one stream.
    /// @note Calls SSL_CTX_set_ex_data (the first time the context keeps state).
    void set_release_idle_buffers(bool release = true)
    {
        if (!ctx_)
            return;
        if (!release || detail::find_state(ctx_.get()) != nullptr)
            state().keep_idle_buffers = !release;
    }
    bool releases_idle_buffers() const noexcept
    {
        const detail::context_state* s = detail::find_state(ctx_.get());
        return ctx_ && !(s && s->keep_idle_buffers);
    }

    SSL_CTX* native_handle() const noexcept { return ctx_.get(); }
    explicit operator bool() const noexcept { return ctx_ != nullptr; }

private:
    static context make(const SSL_METHOD* method, std::error_code& ec)
    {
        context c;
        c.ctx_.reset(SSL_CTX_new(method));
        unsigned char id[SSL_MAX_SID_CTX_LENGTH];
        if (!c.ctx_ || SSL_CTX_set_min_proto_version(c.ctx_.get(), TLS1_2_VERSION) != 1
            || RAND_bytes(id, sizeof id) != 1) {
            c.ctx_.reset();
            ec = detail::take_openssl_error();
            return c;
        }
        c.set_session_id_context(std::string_view(reinterpret_cast<const char*>(id), sizeof id), ec);
        if (ec)
            c.ctx_.reset();
        return c;
    }
    static context fail(std::error_code& ec)
    {
        ec = detail::take_openssl_error();
        return context{};
    }

    // Clears ec and the error queue; false (invalid_argument) on an empty context.
    bool usable(std::error_code& ec) const noexcept
    {
        ec.clear();
        if (!ctx_) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return false;
        }
        ERR_clear_error();
        return true;
    }

    static bool no_nul(std::string_view s, std::error_code& ec) noexcept
    {
        if (detail::has_nul(s)) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return false;
        }
        return true;
    }

    // The context's own state, made on first use (also for adopted contexts).
    detail::context_state& state()
    {
        if (detail::context_state* s = detail::find_state(ctx_.get()))
            return *s;
        auto fresh = std::make_unique<detail::context_state>();
        const int index = detail::context_state_index();
        if (index < 0 || SSL_CTX_set_ex_data(ctx_.get(), index, fresh.get()) != 1) {
            ERR_clear_error();
            throw std::bad_alloc();
        }
        return *fresh.release();
    }

    std::unique_ptr<SSL_CTX, detail::deleter<&SSL_CTX_free>> ctx_;
};

// ---------------------------------------------------------------- sessions

/// A TLS session that a later connection to the same server can resume
/// (abbreviated handshake, no certificate exchange). Copies share one
/// `SSL_SESSION` by reference count (`SSL_SESSION_up_ref`), as OpenSSL
/// itself shares it between its cache and its connections: a session is
/// immutable once handed out, so sharing is safe, also across threads.
class session {
public:
    /// No session.
    session() noexcept = default;
    /// Adopts the reference passed in (null gives an empty session).
    explicit session(SSL_SESSION* adopted) noexcept : s_(adopted) {}
    session(const session& other) noexcept : s_(other.s_ ? up_ref(other.s_.get()) : nullptr) {}
    session(session&& other) noexcept = default;
    session& operator=(const session& other) noexcept
    {
        if (this != &other)
            s_.reset(other.s_ ? up_ref(other.s_.get()) : nullptr);
        return *this;
    }
    session& operator=(session&& other) noexcept = default;
    ~session() = default;

    /// A session saved with `to_bytes`. Bytes that do not hold exactly one
    /// session, or one that cannot be resumed, fail (OpenSSL's ASN.1 error,
    /// or `std::errc::invalid_argument`).
    /// @note Calls d2i_SSL_SESSION.
    static session from_bytes(std::span<const std::byte> der)
    {
        std::error_code ec;
        session s = from_bytes(der, ec);
        detail::throw_if(ec, "tls::session::from_bytes");
        return s;
    }
    static session from_bytes(std::span<const std::byte> der, std::error_code& ec)
    {
        ec.clear();
        if (der.empty() || der.size() > LONG_MAX) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return {};
        }
        ERR_clear_error();
        const auto* p = reinterpret_cast<const unsigned char*>(der.data());
        session s(d2i_SSL_SESSION(nullptr, &p, static_cast<long>(der.size())));
        if (!s) {
            ec = detail::take_openssl_error();
            return {};
        }
        if (p != reinterpret_cast<const unsigned char*>(der.data() + der.size()) || !s.resumable()) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return {};
        }
        return s;
    }

    /// The session as bytes (DER), to keep it across runs. It holds the
    /// session's secrets: store it as carefully as a private key.
    /// @note Calls i2d_SSL_SESSION.
    std::vector<std::byte> to_bytes() const
    {
        std::error_code ec;
        std::vector<std::byte> out = to_bytes(ec);
        detail::throw_if(ec, "tls::session::to_bytes");
        return out;
    }
    std::vector<std::byte> to_bytes(std::error_code& ec) const
    {
        ec.clear();
        if (!s_) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return {};
        }
        ERR_clear_error();
        const int n = i2d_SSL_SESSION(s_.get(), nullptr);
        if (n <= 0) {
            ec = detail::take_openssl_error();
            return {};
        }
        std::vector<std::byte> out(static_cast<std::size_t>(n));
        auto* p = reinterpret_cast<unsigned char*>(out.data());
        if (i2d_SSL_SESSION(s_.get(), &p) != n) {
            ec = detail::take_openssl_error();
            return {};
        }
        return out;
    }

    /// Whether a connection can resume it.
    /// @note Calls SSL_SESSION_is_resumable.
    bool resumable() const noexcept { return s_ && SSL_SESSION_is_resumable(s_.get()) == 1; }

    SSL_SESSION* native_handle() const noexcept { return s_.get(); }
    explicit operator bool() const noexcept { return s_ != nullptr; }

private:
    static SSL_SESSION* up_ref(SSL_SESSION* s) noexcept
    {
        SSL_SESSION_up_ref(s);
        return s;
    }

    detail::session_ptr s_;
};

namespace detail {

// Why `s` cannot be given to `ssl` (nullptr if it can).
inline const char* session_refusal(SSL* ssl, const session& s) noexcept
{
    if (!s)
        return "empty session";
    if (!s.resumable())
        return "the session cannot be resumed";
    const context_state* state = find_state(SSL_get_SSL_CTX(ssl));
    if (!state || state->session_id.empty())
        return nullptr;
    unsigned int length = 0;
    const unsigned char* id = SSL_SESSION_get0_id_context(s.native_handle(), &length);
    if (std::string_view(reinterpret_cast<const char*>(id), length) != state->session_id)
        return "the session comes from another tls::context (its session id context differs)";
    return nullptr;
}

} // namespace detail

// ---------------------------------------------------------------- sockets

/// Anything with `native_handle()` giving a connected socket descriptor
/// (const or not: Asio's sockets have a non-const one).
// clang-format 14 mangles requires-expressions.
// clang-format off
template <class S>
concept socket_like = std::is_nothrow_move_constructible_v<S> && requires(S& s) {
    { s.native_handle() } -> std::convertible_to<int>;
};

namespace detail {
template <class S>
concept declares_owning = requires { requires S::owns_descriptor; };
template <class S>
concept asio_socket = requires(S& s) {
    typename S::executor_type;
    typename S::protocol_type;
    s.is_open();
    s.close();
};
} // namespace detail
// clang-format on

/// Whether `S` owns its descriptor (closes it when destroyed), so that a
/// stream over it may hand its close to a `tls::closer`, which then decides
/// when the descriptor closes. True for `unique_socket`, for Asio's sockets,
/// and for a type that declares `static constexpr bool owns_descriptor =
/// true;`; specialise it for a type you cannot change. `fd_socket` only
/// borrows its descriptor, whose owner may close it at any time: false.
template <class S>
struct socket_owns_descriptor : std::bool_constant<detail::declares_owning<S> || detail::asio_socket<S>> {
};

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
    static constexpr bool owns_descriptor = true;

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

using steady = std::chrono::steady_clock;
using deadline = std::optional<steady::time_point>;

// `now + d`, saturating: a timeout too large to add ("practically never")
// is the furthest representable time, never an overflow into the past.
inline steady::time_point deadline_after(std::chrono::milliseconds d, steady::time_point now = steady::now()) noexcept
{
    if (d > std::chrono::duration_cast<std::chrono::milliseconds>(steady::time_point::max() - now))
        return steady::time_point::max();
    return now + d;
}

// The most one recv() asks for: OpenSSL's read-ahead buffer is smaller (a
// record and its overhead, about 16.7 KiB), so in practice recv() fills that.
inline constexpr std::size_t read_ahead_capacity = std::size_t{64} * 1024;

struct transport {
    int fd;
    // No deadline pending: let recv()/send() block in the kernel instead of
    // paying for MSG_DONTWAIT + EAGAIN + poll on every record.
    bool may_block = false;
    bool eof = false;   // the peer ended the transport (FIN, or RST)
    int last_errno = 0; // errno of the last failing send/recv
    // Set while a deadline is pending: no new recv() starts past it, so a
    // peer that never stops sending cannot hold an OpenSSL call (that
    // consumes session tickets, say) beyond the deadline.
    deadline until{};
    // Writes that must not reach the wire are swallowed (reported as sent):
    // everything after our close_notify, everything during a quiet close,
    // and, unless a missing close_notify is accepted, OpenSSL's own fatal
    // alert after the peer ended the transport (a truncation: nothing more).
    bool muted = false;
    bool mute_after_eof = true;
    bool write_blocked = false;     // the last send() found no room
    bool keep_idle_buffers = false; // set_release_idle_buffers(false)
    std::size_t begin = 0;          // unconsumed ciphertext is buf[begin, end)
    std::size_t end = 0;
    // Bytes a recv() brought past the end of the record OpenSSL is reading.
    // Taken only when there are some, and kept while the stream is busy (no
    // allocation per record); release_idle() frees it once it is drained and
    // the stream waits for the peer, so an idle stream holds none (issue 12:
    // a 64 KiB buffer made with every stream cost 2.4 times raw OpenSSL's
    // heap per idle connection).
    std::unique_ptr<std::byte[]> buf{};
    std::size_t capacity = 0;
    // Framing of what OpenSSL was given: it never gets a byte past the end
    // of the record it is reading, so whatever follows the peer's
    // close_notify stays in buf for release_socket().
    unsigned char header[5] = {};
    std::size_t header_seen = 0; // bytes of the current record's header given so far
    std::size_t body_left = 0;   // bytes of its body still to give

    std::size_t buffered() const noexcept { return end - begin; }

    // Frees the buffer if nothing is left in it.
    void release_idle() noexcept
    {
        if (begin != end)
            return;
        buf.reset();
        capacity = 0;
        begin = end = 0;
    }
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
// (no copy). Only bytes past the end of the current record are kept here, in
// a buffer taken when the first such bytes arrive: no more than that recv()
// asked for, so at most OpenSSL's request, about 16.7 KiB.
inline int transport_read(BIO* bio, char* out, std::size_t len, std::size_t* got) noexcept
{
    auto* t = static_cast<transport*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    *got = 0;
    auto* dst = reinterpret_cast<std::byte*>(out);
    if (t->begin == t->end) {
        if (t->eof)
            return 0;
        if (t->until && steady::now() >= *t->until) [[unlikely]] {
            BIO_set_retry_read(bio);
            return 0;
        }
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
        const std::size_t rest = received - k;
        if (rest > t->capacity) {
            const std::size_t size = std::min(len, read_ahead_capacity);
            t->buf.reset(new (std::nothrow) std::byte[size]);
            t->capacity = t->buf ? size : 0;
            if (!t->buf) [[unlikely]] {
                // The bytes are off the socket and cannot be kept: the stream
                // of records is broken, which OpenSSL reports as its end.
                t->last_errno = ENOMEM;
                t->eof = true;
                return 0;
            }
        }
        if (rest != 0)
            std::memcpy(t->buf.get(), dst + k, rest);
        t->begin = 0;
        t->end = rest;
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
    if (t->muted || (t->eof && t->mute_after_eof)) [[unlikely]] {
        *put = len;
        return 1;
    }
    *put = 0;
    ssize_t n;
    // MSG_NOSIGNAL: a peer that is gone gives EPIPE, never SIGPIPE.
    do
        n = ::send(t->fd, in, len, MSG_NOSIGNAL | (t->may_block ? 0 : MSG_DONTWAIT));
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            t->write_blocked = true;
            BIO_set_retry_write(bio);
        } else
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

template <socket_like Socket, shutdown_policy Policy = full_shutdown>
class tls_stream;

namespace detail {
// The asynchronous members over Asio sockets: declared in tls_stream,
// defined by <tls_stream/asio.hpp>, so this header never includes Asio.
template <class Stream>
struct asio_ops;

// `executor_type` for a stream over an Asio socket (Asio's AsyncReadStream
// needs it); nothing, at no size, for any other socket.
template <class S>
struct executor_base {
};
template <asio_socket S>
struct executor_base<S> {
    using executor_type = typename S::executor_type;
};

// What a stream over a non-Asio socket stores for the Asio hook: nothing.
struct no_hook {};
} // namespace detail

// ---------------------------------------------------------------- event loops

/// What a non-blocking step needs before it can go on.
enum class want {
    nothing, ///< the step finished (its error_code says how)
    read,    ///< call again once the descriptor is readable
    write,   ///< call again once the descriptor is writable
};

namespace detail {

inline short poll_events(want w) noexcept { return w == want::write ? POLLOUT : POLLIN; }

// A close handed to a closer: one step at a time, never waiting.
class close_job {
public:
    close_job() = default;
    close_job(const close_job&) = delete;
    close_job& operator=(const close_job&) = delete;
    virtual ~close_job() = default;
    // Advances the close without waiting; want::nothing once it has ended.
    virtual want step() noexcept = 0;
    // Call step() again by then even if the descriptor is not ready: the
    // close's deadline, or sooner while a lingering close watches its send queue.
    virtual steady::time_point wake_time() const noexcept = 0;
    virtual int fd() const noexcept = 0;
    // The fallback when the closer cannot watch the descriptor: close here.
    virtual void finish_blocking() noexcept = 0;

    want waiting = want::nothing;
    steady::time_point wake{};
};

// The stream itself, moved out of its destructor, is the job: its own
// close step and deadline go on unchanged.
template <class Stream>
class stream_close_job final : public close_job {
public:
    explicit stream_close_job(Stream&& s) noexcept : stream_(std::move(s)) { stream_.st_.bound = nullptr; }
    want step() noexcept override { return stream_.close_step(); }
    steady::time_point wake_time() const noexcept override { return stream_.close_wake(); }
    int fd() const noexcept override { return stream_.t_->fd; }
    void finish_blocking() noexcept override { stream_.finish_close(); }

private:
    Stream stream_;
};

} // namespace detail

/// A lingering-close service for an event loop: the closes of streams bound
/// to it with `close_via()` finish here, by their policy, within their own
/// deadlines, interleaved, while the loop goes on. Watch `native_handle()`
/// for readability and wake at `next_deadline()`, then call `run_ready()`.
/// Not thread-safe: one closer per loop. It must outlive the streams bound
/// to it.
class closer {
public:
    /// Throws `std::system_error` if the kernel refuses an epoll instance.
    closer() : epfd_(::epoll_create1(EPOLL_CLOEXEC))
    {
        if (epfd_ < 0)
            detail::throw_error({errno, std::system_category()}, "tls::closer");
    }
    closer(const closer&) = delete;
    closer& operator=(const closer&) = delete;

    /// Finishes the closes still in progress, each within its own deadline.
    /// @note Calls SSL_shutdown, SSL_read_ex and SSL_free, for the closes it finishes.
    ~closer()
    {
        run_for(std::chrono::milliseconds::max());
        ::close(epfd_);
    }

    /// One descriptor for the loop: readable when a socket of a close in
    /// progress is ready.
    int native_handle() const noexcept { return epfd_; }

    /// Advances closes that can progress, without waiting; ends those past
    /// their deadline (first). The work per call is bounded (each close's
    /// step, and at most 32 closes): what is left is reported again by
    /// `native_handle()` and `next_deadline()` (then in the past). Cheap when
    /// nothing is ready, so a loop may simply call it on every iteration.
    /// @note Calls SSL_shutdown, SSL_read_ex and SSL_free, for the closes it advances.
    void run_ready()
    {
        std::size_t budget = max_jobs_per_run;
        const auto now = detail::steady::now();
        while (budget > 0 && !timers_.empty() && timers_.begin()->first <= now) {
            advance(timers_.begin()->second); // reschedules it later, or ends it
            --budget;
        }
        epoll_event events[max_jobs_per_run];
        const int n = budget == 0 || jobs_.empty() ? 0 : ::epoll_wait(epfd_, events, static_cast<int>(budget), 0);
        for (int i = 0; i < n; ++i) {
            auto* job = static_cast<detail::close_job*>(events[i].data.ptr);
            if (jobs_.count(job) != 0)
                advance(job);
        }
    }

    /// When `run_ready()` must run at the latest (a deadline, or a
    /// lingering close's next look at its send queue); empty when idle.
    std::optional<std::chrono::steady_clock::time_point> next_deadline() const noexcept
    {
        if (timers_.empty())
            return std::nullopt;
        return timers_.begin()->first;
    }

    /// Closes in progress.
    std::size_t size() const noexcept { return jobs_.size(); }

    /// Waits and runs until no close is left (true) or `d` has passed (false).
    /// @note Calls SSL_shutdown, SSL_read_ex and SSL_free, for the closes it advances.
    bool run_for(std::chrono::milliseconds d)
    {
        const auto end = detail::deadline_after(d);
        while (!jobs_.empty()) {
            const auto now = detail::steady::now();
            if (now >= end)
                return false;
            detail::wait_ready(epfd_, POLLIN, std::min(end, *next_deadline()));
            run_ready();
        }
        return true;
    }

private:
    template <class Stream>
    friend class detail::stream_close_job;
    template <socket_like, shutdown_policy>
    friend class tls_stream;

    // Takes a close that waits for `w`. Never fails: a close it cannot
    // watch (no memory, the kernel refuses the descriptor) finishes at once
    // by the blocking close.
    void adopt(std::unique_ptr<detail::close_job> job, want w) noexcept
    {
        detail::close_job* raw = job.get();
        try {
            jobs_.emplace(raw, std::move(job));
        } catch (...) {
            raw->finish_blocking();
            delete raw;
            return;
        }
        epoll_event ev{};
        ev.events = static_cast<std::uint32_t>(w == want::write ? EPOLLOUT : EPOLLIN);
        ev.data.ptr = raw;
        if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, raw->fd(), &ev) != 0 || !schedule(raw)) {
            ::epoll_ctl(epfd_, EPOLL_CTL_DEL, raw->fd(), nullptr);
            raw->finish_blocking();
            jobs_.erase(raw);
            return;
        }
        raw->waiting = w;
    }

    bool schedule(detail::close_job* job) noexcept
    {
        job->wake = job->wake_time();
        try {
            timers_.emplace(job->wake, job);
            return true;
        } catch (...) {
            return false;
        }
    }

    void advance(detail::close_job* job) noexcept
    {
        timers_.erase({job->wake, job});
        const want w = job->step();
        if (w != want::nothing && w != job->waiting) {
            epoll_event ev{};
            ev.events = static_cast<std::uint32_t>(w == want::write ? EPOLLOUT : EPOLLIN);
            ev.data.ptr = job;
            if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, job->fd(), &ev) == 0)
                job->waiting = w;
        }
        if (w == want::nothing || !schedule(job)) {
            ::epoll_ctl(epfd_, EPOLL_CTL_DEL, job->fd(), nullptr);
            if (w != want::nothing)
                job->finish_blocking();
            jobs_.erase(job); // frees the SSL, then closes the socket
        }
    }

    static constexpr std::size_t max_jobs_per_run = 32;

    int epfd_;
    std::unordered_map<detail::close_job*, std::unique_ptr<detail::close_job>> jobs_;
    std::set<std::pair<detail::steady::time_point, detail::close_job*>> timers_;
};

// ---------------------------------------------------------------- stream

/// A TLS connection over `Socket`, closed by `Policy` when destroyed.
///
/// Every operation is a non-blocking step (the `try_*` members) underneath;
/// the blocking members are the same step plus a wait. Blocking calls wait
/// with poll() only when a deadline is set; otherwise they block in the
/// kernel. Blocking and non-blocking descriptors behave the same to the
/// caller. No call raises SIGPIPE.
template <socket_like Socket, shutdown_policy Policy>
class tls_stream : public detail::executor_base<Socket> {
public:
    using socket_type = Socket;
    using policy_type = Policy;

    /// Creates the `SSL` for `ctx` over `sock`. No I/O yet.
    /// @note Calls SSL_new, BIO_new and SSL_set_bio.
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
        t_->mute_after_eof = (SSL_get_options(ssl_.get()) & SSL_OP_IGNORE_UNEXPECTED_EOF) == 0;
        if (const detail::context_state* st = detail::find_state(ctx.native_handle()))
            t_->keep_idle_buffers = st->keep_idle_buffers;
        BIO_set_data(bio, t_);
        BIO_set_init(bio, 1);
        SSL_set_bio(ssl_.get(), bio, bio);
        SSL_set_mode(ssl_.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_set_read_ahead(ssl_.get(), 1); // safe: the transport hands over one record at a time
    }

    tls_stream(tls_stream&& other) noexcept
        : sock_(std::move(other.sock_)), ssl_(std::move(other.ssl_)), t_(std::exchange(other.t_, nullptr)),
          st_(std::exchange(other.st_, state{}))
    {
    }

    /// Closes what this stream held (by its policy), then takes `other`'s connection.
    /// @note Calls SSL_shutdown, SSL_read_ex and SSL_free (the close of what it held).
    tls_stream& operator=(tls_stream&& other) noexcept
    {
        if (this != &other) {
            close_on_destruction();
            sock_ = std::move(other.sock_);
            ssl_ = std::move(other.ssl_);
            t_ = std::exchange(other.t_, nullptr);
            st_ = std::exchange(other.st_, state{});
        }
        return *this;
    }

    tls_stream(const tls_stream&) = delete;
    tls_stream& operator=(const tls_stream&) = delete;

    /// Runs `Policy` if the connection is open (see docs/guide.md, "What the
    /// destructor does"), swallows every error, frees the `SSL`. Never throws. Bound
    /// to a closer (`close_via`), it never waits: what is left of the close
    /// moves into the closer.
    /// @note Calls SSL_shutdown, SSL_read_ex and SSL_free.
    ~tls_stream() { close_on_destruction(); }

    // -- handshake

    /// Client handshake with SNI and verification of `host` (a DNS name or
    /// an IP address; IP addresses are checked but not sent as SNI). A name
    /// that is empty, longer than 255 bytes or holds a NUL byte is
    /// `std::errc::invalid_argument`.
    /// @note Calls SSL_connect.
    void connect(std::string_view host)
    {
        std::error_code ec;
        connect(host, ec);
        throw_with_detail(ec, "tls::tls_stream::connect");
    }
    void connect(std::string_view host, std::error_code& ec)
    {
        if (start_handshake(true, &host, ec))
            handshake(ec);
    }

    /// Client handshake without SNI and without any hostname check (the
    /// certificate chain is still verified if the context asks for it).
    /// @note Calls SSL_connect.
    void connect()
    {
        std::error_code ec;
        connect(ec);
        throw_with_detail(ec, "tls::tls_stream::connect");
    }
    void connect(std::error_code& ec)
    {
        if (start_handshake(true, nullptr, ec))
            handshake(ec);
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
        if (start_handshake(false, nullptr, ec))
            handshake(ec);
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
        if (!readable(buf, ec))
            return 0;
        std::size_t n = 0;
        SSL* ssl = ssl_.get();
        const op_status s = drive([&] { return SSL_read_ex(ssl, buf.data(), buf.size(), &n); }, io_deadline(), ec);
        return read_outcome(s, n, ec);
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
    /// @note Calls SSL_write_ex.
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
        const detail::deadline until = io_deadline();
        for (;;) {
            const want w = try_close_write(ec);
            if (w == want::nothing)
                return;
            if ((ec = detail::wait_ready(t_->fd, detail::poll_events(w), until)))
                return fail(ec, ec);
        }
    }

    /// Runs the policy now, bounded by the shutdown timeout; afterwards
    /// reads and writes fail with `errc::closed` and the destructor only
    /// frees. A second call does nothing and reports the first outcome.
    /// Errors: `errc::timeout`, `errc::stream_truncated`, the peer's fatal
    /// alert, a socket error; on a stream that already failed, that error.
    /// The result is `[[nodiscard]]`: only `complete` says both close_notify
    /// alerts were exchanged, which is what ENDTLS and a peer that must have
    /// read everything depend on; write `(void)s.shutdown()` when it does not matter.
    /// @note Calls SSL_shutdown (once) and SSL_read_ex (to drain or consume).
    [[nodiscard]] shutdown_result shutdown()
    {
        std::error_code ec;
        const shutdown_result r = shutdown(ec);
        detail::throw_if(ec, "tls::tls_stream::shutdown");
        return r;
    }
    [[nodiscard]] shutdown_result shutdown(std::error_code& ec)
    {
        shutdown_result r = shutdown_result::none;
        if (closable(r, ec))
            finish_close();
        return outcome(r, ec);
    }

    /// Runtime override of `Policy::timeout`. Throws `std::invalid_argument`
    /// if negative; 0 means "do not wait at all"; a huge value ("practically
    /// never", up to `milliseconds::max()`) is fine.
    void set_shutdown_timeout(std::chrono::milliseconds timeout)
    {
        if (timeout.count() < 0)
            throw std::invalid_argument("tls::tls_stream::set_shutdown_timeout: negative timeout");
        st_.shutdown_timeout = timeout;
    }
    std::chrono::milliseconds shutdown_timeout() const noexcept { return st_.shutdown_timeout; }

    /// Deadline for each blocking call (handshake, read, write); 0 = none,
    /// the default; a huge value means "practically never". A read that
    /// times out can be retried; a handshake or a write that times out
    /// leaves the stream failed (the record layer may hold half a record),
    /// as in Go's crypto/tls. The deadline holds against a peer that never
    /// stops sending. Throws `std::invalid_argument` if negative.
    void set_io_timeout(std::chrono::milliseconds timeout)
    {
        if (timeout.count() < 0)
            throw std::invalid_argument("tls::tls_stream::set_io_timeout: negative timeout");
        st_.io_timeout = timeout;
    }
    std::chrono::milliseconds io_timeout() const noexcept { return st_.io_timeout; }

    /// Per-stream opt-in (overriding the context's): read a transport that
    /// ends without the peer's close_notify as a clean EOF instead of
    /// `errc::stream_truncated`. Off by default. Such an ending is never
    /// a completed close: `release_socket()` still refuses, and a later
    /// close puts nothing on the wire (the peer is gone) and reports
    /// `shutdown_result::none` without an error.
    /// @note Calls SSL_set_options / SSL_clear_options.
    void set_accept_missing_close_notify(bool accept = true) noexcept
    {
        if (!ssl_)
            return;
        if (accept)
            SSL_set_options(ssl_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
        else
            SSL_clear_options(ssl_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
        t_->mute_after_eof = !accept;
    }
    bool accepts_missing_close_notify() const noexcept
    {
        return ssl_ && (SSL_get_options(ssl_.get()) & SSL_OP_IGNORE_UNEXPECTED_EOF) != 0;
    }

    /// As `context::set_release_idle_buffers`, for this stream: `false`
    /// keeps its record buffers while it waits for the peer (a busy
    /// event-loop connection saves taking them again after every wait);
    /// `true`, the context's default, frees them at its next wait.
    void set_release_idle_buffers(bool release = true) noexcept
    {
        if (t_)
            t_->keep_idle_buffers = !release;
    }
    bool releases_idle_buffers() const noexcept { return t_ && !t_->keep_idle_buffers; }

    // -- event loops: one non-blocking step each
    //
    // want::nothing: the step finished, `ec` says how; want::read / write:
    // call again once socket().native_handle() is readable / writable.
    // Never waits, whatever the descriptor's flags. Steps and blocking
    // calls mix on one stream.

    /// Starts or continues a client handshake (SNI and name check as `connect`).
    /// @note Calls SSL_connect.
    [[nodiscard]] want try_connect(std::string_view host, std::error_code& ec)
    {
        if (st_.stage == phase::handshaking && st_.client) // continuing: the name is set
            return handshake_step(ec);
        return start_handshake(true, &host, ec) ? handshake_step(ec) : want::nothing;
    }
    [[nodiscard]] want try_connect(std::error_code& ec)
    {
        return start_handshake(true, nullptr, ec) ? handshake_step(ec) : want::nothing;
    }
    /// Starts or continues a server handshake.
    /// @note Calls SSL_accept.
    [[nodiscard]] want try_accept(std::error_code& ec)
    {
        return start_handshake(false, nullptr, ec) ? handshake_step(ec) : want::nothing;
    }

    /// Reads what has arrived into `buf`: `n` bytes; n == 0 with no error is
    /// the peer's close_notify (clean EOF), again on every later call.
    /// After it moved bytes, call again before waiting.
    /// @note Calls SSL_read_ex.
    [[nodiscard]] want try_read_some(std::span<std::byte> buf, std::size_t& n, std::error_code& ec)
    {
        n = 0;
        if (!readable(buf, ec))
            return want::nothing;
        want w = want::nothing;
        SSL* ssl = ssl_.get();
        no_waiting(std::nullopt);
        const op_status s = step([&] { return SSL_read_ex(ssl, buf.data(), buf.size(), &n); }, w, ec);
        if (s == op_status::blocked)
            return w;
        n = read_outcome(s, n, ec);
        return want::nothing;
    }

    /// Writes some of `buf` (at most one record): `n` bytes. After
    /// want::write (n == 0), call again with the same bytes.
    /// @note Calls SSL_write_ex.
    [[nodiscard]] want try_write_some(std::span<const std::byte> buf, std::size_t& n, std::error_code& ec)
    {
        n = 0;
        if (!writable(ec) || buf.empty())
            return want::nothing;
        want w = want::nothing;
        SSL* ssl = ssl_.get();
        no_waiting(std::nullopt);
        const op_status s = step([&] { return SSL_write_ex(ssl, buf.data(), buf.size(), &n); }, w, ec);
        if (s == op_status::blocked)
            return w;
        if (s != op_status::done) {
            if (!ec)
                ec = errc::closed;
            fail(ec, ec);
        }
        return want::nothing;
    }

    /// Sends our close_notify (half-close), step by step.
    /// @note Calls SSL_shutdown.
    [[nodiscard]] want try_close_write(std::error_code& ec)
    {
        ec.clear();
        if (st_.stage != phase::open) {
            ec = unusable_error();
            return want::nothing;
        }
        if (st_.sent_cn)
            return want::nothing;
        no_waiting(std::nullopt);
        const want w = send_close_notify(ec);
        if (ec)
            fail(ec, ec);
        else if (w == want::nothing)
            push_unsent(); // the half-close should reach the peer now
        return w;
    }

    /// The policy's close, step by step. The first call fixes
    /// `shutdown_deadline()`; call again by then at the latest (past it, the
    /// close ends with `errc::timeout`). With want::nothing, `r` and `ec`
    /// are what `shutdown()` reports.
    /// @note Calls SSL_shutdown (once) and SSL_read_ex.
    [[nodiscard]] want try_shutdown(shutdown_result& r, std::error_code& ec)
    {
        r = shutdown_result::none;
        if (!closable(r, ec))
            return want::nothing;
        const want w = close_step();
        if (w == want::nothing)
            outcome(r, ec);
        return w;
    }

    /// Empty until the close starts (first `try_shutdown`, `shutdown()` or a
    /// bound destructor), then fixed.
    std::optional<std::chrono::steady_clock::time_point> shutdown_deadline() const noexcept
    {
        return st_.close_deadline;
    }

    /// Binds this stream to `c`: its destructor then never waits, and hands
    /// what is left of an open stream's close to `c`. Only for sockets that
    /// own their descriptor (see `socket_owns_descriptor`). Throws
    /// `std::logic_error` if already bound, and `std::system_error`
    /// (`errc::closed` / `errc::not_connected`) on a stream with nothing left
    /// to close.
    void close_via(closer& c)
    {
        static_assert(socket_owns_descriptor<Socket>::value,
                      "tls::tls_stream::close_via: the socket type only borrows its descriptor (fd_socket), whose "
                      "owner may close it at any time; use a socket that owns it (unique_socket, an Asio socket)");
        if (st_.bound != nullptr)
            throw std::logic_error("tls::tls_stream::close_via: already bound to a closer");
        switch (st_.stage) {
        case phase::fresh:
        case phase::handshaking:
        case phase::open: break;
        default: detail::throw_error(unusable_error(), "tls::tls_stream::close_via");
        }
        st_.bound = &c;
    }

    // -- Asio: over an Asio socket only, with <tls_stream/asio.hpp> included
    //
    // Each takes any completion token (a callback, asio::use_awaitable,
    // asio::experimental::deferred, asio::use_future) and runs the step above, waiting
    // with the socket's async_wait. At most one read and one write at a
    // time; async_shutdown with neither. Starting any of them makes the
    // destructor close on the socket's executor without waiting (README,
    // "Asio and coroutines"). Defined in <tls_stream/asio.hpp>.

    /// The socket's executor.
    auto get_executor() noexcept requires detail::asio_socket<Socket> { return sock_.get_executor(); }
    /// Client handshake as `connect(host)`; completes with `void(std::error_code)`.
    template <class Token>
    requires detail::asio_socket<Socket>
    auto async_connect(std::string_view host, Token&& token)
    {
        return detail::asio_ops<tls_stream>::connect(*this, host, std::forward<Token>(token));
    }
    /// Client handshake as `connect()`; completes with `void(std::error_code)`.
    template <class Token>
    requires detail::asio_socket<Socket>
    auto async_connect(Token&& token)
    {
        return detail::asio_ops<tls_stream>::connect(*this, std::forward<Token>(token));
    }
    /// Server handshake; completes with `void(std::error_code)`.
    template <class Token>
    requires detail::asio_socket<Socket>
    auto async_accept(Token&& token) { return detail::asio_ops<tls_stream>::accept(*this, std::forward<Token>(token)); }
    /// Reads into the first non-empty buffer; `void(std::error_code,
    /// std::size_t)`; the peer's close_notify is `asio::error::eof`.
    template <class MutableBuffers, class Token>
    requires detail::asio_socket<Socket>
    auto async_read_some(const MutableBuffers& buffers, Token&& token)
    {
        return detail::asio_ops<tls_stream>::read_some(*this, buffers, std::forward<Token>(token));
    }
    /// Writes from the first non-empty buffer (at most one record);
    /// `void(std::error_code, std::size_t)`.
    template <class ConstBuffers, class Token>
    requires detail::asio_socket<Socket>
    auto async_write_some(const ConstBuffers& buffers, Token&& token)
    {
        return detail::asio_ops<tls_stream>::write_some(*this, buffers, std::forward<Token>(token));
    }
    /// Half-close as `close_write()`; `void(std::error_code)`.
    template <class Token>
    requires detail::asio_socket<Socket>
    auto async_close_write(Token&& token)
    {
        return detail::asio_ops<tls_stream>::close_write(*this, std::forward<Token>(token));
    }
    /// The policy's close as `shutdown()`, bounded by the shutdown timeout
    /// (an Asio timer); `void(std::error_code, tls::shutdown_result)`.
    template <class Token>
    requires detail::asio_socket<Socket>
    auto async_shutdown(Token&& token)
    {
        return detail::asio_ops<tls_stream>::shutdown(*this, std::forward<Token>(token));
    }

    // -- configuration

    /// The session to resume this connection with later (`set_session` on
    /// a new stream to the same server), shared, not copied. Empty until
    /// there is one that can be resumed: after the handshake with TLS 1.2;
    /// with TLS 1.3 only once the server's tickets have been processed,
    /// which happens when this stream reads (`read_some`, or closing by
    /// fast or full). A client that only writes gets its session from a
    /// full close: call `shutdown()`, then `session()`.
    /// @note Calls SSL_get1_session.
    tls::session session() const
    {
        if (!ssl_ || SSL_is_init_finished(ssl_.get()) != 1)
            return {};
        tls::session s(SSL_get1_session(ssl_.get()));
        return s.resumable() ? s : tls::session{};
    }

    /// Client streams, before the handshake: offer `s` for resumption.
    /// Whether the server took it shows in `session_reused()` afterwards;
    /// if it did not, the handshake is a full one, never an error. Fails
    /// with `errc::not_connected` on a moved-from stream,
    /// `errc::already_connected` once the handshake began, and
    /// `std::errc::invalid_argument` for an empty session, one that cannot
    /// be resumed, or one from another context (see
    /// `context::set_session_id_context`); the throwing overload says which.
    /// @note Calls SSL_set_session.
    void set_session(const tls::session& s)
    {
        std::error_code ec;
        set_session(s, ec);
        if (ec) {
            const char* why = ssl_ ? detail::session_refusal(ssl_.get(), s) : nullptr;
            detail::throw_error(ec, why ? (std::string("tls::tls_stream::set_session: ") + why).c_str()
                                        : "tls::tls_stream::set_session");
        }
    }
    void set_session(const tls::session& s, std::error_code& ec)
    {
        ec.clear();
        if (!ssl_) {
            ec = errc::not_connected;
            return;
        }
        if (SSL_in_before(ssl_.get()) != 1) {
            ec = errc::already_connected;
            return;
        }
        if (detail::session_refusal(ssl_.get(), s) != nullptr) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return;
        }
        ERR_clear_error();
        if (SSL_set_session(ssl_.get(), s.native_handle()) != 1)
            ec = detail::take_openssl_error();
    }

    /// Whether the handshake resumed a session (abbreviated handshake).
    /// @note Calls SSL_session_reused.
    bool session_reused() const noexcept { return ssl_ && SSL_session_reused(ssl_.get()) == 1; }

    /// The application protocol ALPN agreed on (e.g. "h2"); empty if none.
    /// @note Calls SSL_get0_alpn_selected.
    std::string alpn_protocol() const
    {
        if (!ssl_)
            return {};
        const unsigned char* p = nullptr;
        unsigned int n = 0;
        SSL_get0_alpn_selected(ssl_.get(), &p, &n);
        return p ? std::string(reinterpret_cast<const char*>(p), n) : std::string();
    }

    /// The subject of the peer's certificate as an RFC 2253 string
    /// (e.g. "CN=client,O=Example"); empty if the peer sent none. A client
    /// certificate a server asked for with `client_auth` has been verified
    /// by the time the handshake succeeds.
    /// @note Calls SSL_get0_peer_certificate and X509_NAME_print_ex.
    std::string peer_subject() const
    {
        const X509* cert = ssl_ ? SSL_get0_peer_certificate(ssl_.get()) : nullptr;
        if (!cert)
            return {};
        const std::unique_ptr<BIO, detail::deleter<&BIO_free>> bio(BIO_new(BIO_s_mem()));
        std::string out;
        if (bio && X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
            char* data = nullptr;
            const long n = BIO_get_mem_data(bio.get(), &data);
            if (data && n > 0)
                out.assign(data, static_cast<std::size_t>(n));
        }
        ERR_clear_error();
        return out;
    }

    // -- access

    SSL* native_handle() const noexcept { return ssl_.get(); }
    const Socket& socket() const noexcept { return sock_; }
    Socket& socket() noexcept { return sock_; }

    /// After a completed bidirectional close (ours sent, the peer's
    /// received; `shutdown()` reported `complete`, or `close_write()` and a
    /// `read_some()` of 0 without a `shutdown()`): frees the `SSL` and
    /// gives back the socket with every byte read past the peer's
    /// close_notify. The plaintext that follows is `unread`, then the
    /// socket. Before that it fails with `errc::not_closed` (or
    /// `errc::not_connected`) and the stream is left as it was.
    /// @note Calls SSL_free.
    [[nodiscard]] released<Socket> release_socket() &&
    {
        std::error_code ec;
        std::optional<released<Socket>> r = std::move(*this).release_socket(ec);
        if (!r)
            detail::throw_error(ec, "tls::tls_stream::release_socket");
        return std::move(*r);
    }
    [[nodiscard]] std::optional<released<Socket>> release_socket(std::error_code& ec) &&
    {
        ec.clear();
        if (!ssl_) {
            ec = errc::not_connected;
            return std::nullopt;
        }
        const bool both_ways = st_.sent_cn && st_.got_cn;
        const bool complete = (st_.stage == phase::finished && st_.result == shutdown_result::complete)
                              || (st_.stage == phase::open && both_ways);
        if (!complete) {
            ec = st_.stage == phase::failed ? st_.error : make_error_code(errc::not_closed);
            return std::nullopt;
        }
        std::vector<std::byte> unread;
        if (t_->buffered() != 0)
            unread.assign(t_->buf.get() + t_->begin, t_->buf.get() + t_->end);
        ssl_.reset(); // frees the BIO and the transport with it
        t_ = nullptr;
        st_ = state{};
        ERR_clear_error();
        return released<Socket>{std::move(sock_), std::move(unread)};
    }

private:
    template <class Stream>
    friend class detail::stream_close_job;
    template <class Stream>
    friend struct detail::asio_ops;

    // Set by the first asynchronous operation (<tls_stream/asio.hpp>): the
    // destructor hands an open stream's close to the socket's executor.
    // true: it took the stream.
    using async_close_fn = bool (*)(tls_stream&) noexcept;

    enum class phase : unsigned char {
        empty,       // moved-from or released: no SSL
        fresh,       // no handshake yet
        handshaking, // a handshake started and has not ended
        open,        // handshake done, no fatal error, no close started
        closing,     // the policy's close started (try_shutdown) and has not ended
        failed,      // a fatal error was seen: nothing new goes on the wire
        finished,    // the close ended
    };
    enum class op_status { done, eof, failed, blocked };

    // Everything but the SSL and the socket; a move copies it and leaves
    // the source empty.
    struct state {
        phase stage = phase::empty;
        bool client = false;        // the handshake's role
        bool sent_cn = false;       // our close_notify is on the wire
        bool got_cn = false;        // the peer's close_notify was received
        bool peer_ended = false;    // the transport ended without it, and that was accepted
        bool answering = false;     // the peer's close_notify came before ours
        bool lingering = false;     // fast: waiting for what we wrote to leave the send queue
        bool peer_sending = false;  // application data arrived during the close
        bool sending_ended = false; // shutdown(SHUT_WR) done
        std::chrono::milliseconds io_timeout{0};
        std::chrono::milliseconds shutdown_timeout{Policy::timeout};
        detail::deadline close_deadline{};
        std::error_code error{}; // the fatal error (failed) or the close's outcome (finished)
        shutdown_result result = shutdown_result::none;
        closer* bound = nullptr; // close_via()
        [[no_unique_address]] std::conditional_t<detail::asio_socket<Socket>, async_close_fn, detail::no_hook>
            async_close{}; // set once an asynchronous operation started
    };

    // ------------------------------------------------ engine: one step, never waits

    // One OpenSSL call. `blocked`: it needs `w` first. Error-queue hygiene
    // lives here: stale entries never change the outcome (they would make
    // SSL_get_error report SSL_ERROR_SSL), and a failure leaves none behind.
    template <class Op>
    op_status step(Op&& op, want& w, std::error_code& ec)
    {
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
            w = err == SSL_ERROR_WANT_READ ? want::read : want::write;
            if (w == want::read)
                release_buffers();
            return op_status::blocked;
        }
        if (err == SSL_ERROR_ZERO_RETURN) {
            ERR_clear_error();
            return op_status::eof;
        }
        ec = error_from(err);
        return op_status::failed;
    }

    // Called when the stream has to wait for the peer (a recv() found
    // nothing): frees the read-ahead buffer and OpenSSL's record buffers
    // (about 16.7 KiB each way) if nothing is left in them, so an idle
    // stream costs what raw OpenSSL with SSL_MODE_RELEASE_BUFFERS does. Not
    // that mode itself: it frees and takes both buffers around every record,
    // while this leaves a streaming transfer's buffers alone; a stream that
    // blocks in recv() (no deadline) never gets here and keeps them. The
    // price: a connection that waits between each request and response
    // takes them again after every wait, about 4 k instructions per round
    // trip for both ends (docs/performance.md), which
    // set_release_idle_buffers(false) avoids. OpenSSL takes them on its
    // next read or write. SSL_free_buffers() refuses (harmlessly) while a
    // partial record or an unsent one is held.
    void release_buffers() noexcept
    {
        if (t_->keep_idle_buffers || t_->buffered() != 0 || SSL_has_pending(ssl_.get()) != 0)
            return;
        t_->release_idle();
        SSL_free_buffers(ssl_.get());
    }

    // The transport must not block in the kernel during a step.
    void no_waiting(const detail::deadline& until) noexcept
    {
        t_->may_block = false;
        t_->until = until;
    }

    std::error_code error_from(int ssl_error) noexcept
    {
        if (ssl_error == SSL_ERROR_SSL) {
            const unsigned long code = ERR_peek_error();
            if (ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                ERR_clear_error();
                return transport_end();
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

    // The transport ended: by the peer (FIN or reset) it is a truncation; a
    // descriptor that is no connected socket at all reports its errno.
    std::error_code transport_end() const noexcept
    {
        switch (t_->last_errno) {
        case 0:
        case ECONNRESET:
        case ECONNABORTED:
        case EPIPE:
        case ETIMEDOUT: return errc::stream_truncated;
        default: return {t_->last_errno, std::system_category()};
        }
    }

    // ------------------------------------------------ driver: the one place that waits

    // A step, repeated until it completes, the peer's close_notify arrives,
    // an error occurs or the deadline passes. Without a deadline the
    // transport blocks in the kernel and this never polls unless the
    // descriptor itself is non-blocking.
    template <class Op>
    op_status drive(Op&& op, const detail::deadline& until, std::error_code& ec)
    {
        t_->may_block = !until;
        t_->until = until;
        for (;;) {
            want w = want::nothing;
            const op_status s = step(op, w, ec);
            if (s != op_status::blocked) [[likely]]
                return s;
            if ((ec = detail::wait_ready(t_->fd, detail::poll_events(w), until)))
                return op_status::failed;
        }
    }

    detail::deadline io_deadline() const noexcept
    {
        if (st_.io_timeout.count() == 0)
            return std::nullopt;
        return detail::deadline_after(st_.io_timeout);
    }

    // ------------------------------------------------ handshake, data

    bool start_handshake(bool client, const std::string_view* host, std::error_code& ec)
    {
        ec.clear();
        if (host && !valid_host(*host, ec))
            return false;
        if (st_.stage == phase::handshaking && st_.client == client)
            return true; // a handshake started by steps goes on
        if (st_.stage != phase::fresh) {
            ec = st_.stage == phase::empty    ? make_error_code(errc::not_connected)
                 : st_.stage == phase::failed ? st_.error
                                              : make_error_code(errc::already_connected);
            return false;
        }
        if (host && !set_peer_name(*host, ec))
            return false;
        if (client)
            SSL_set_connect_state(ssl_.get());
        else
            SSL_set_accept_state(ssl_.get());
        st_.client = client;
        st_.stage = phase::handshaking;
        return true;
    }

    static bool valid_host(std::string_view host, std::error_code& ec)
    {
        if (host.empty() || host.size() > 255 || host.find('\0') != std::string_view::npos) {
            ec = std::make_error_code(std::errc::invalid_argument);
            return false;
        }
        return true;
    }

    bool set_peer_name(std::string_view host, std::error_code& ec)
    {
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
            return false;
        }
        use_cached_session(name);
        return true;
    }

    void handshake(std::error_code& ec)
    {
        SSL* ssl = ssl_.get();
        handshake_ended(drive([ssl] { return SSL_do_handshake(ssl); }, io_deadline(), ec), ec);
    }

    want handshake_step(std::error_code& ec)
    {
        SSL* ssl = ssl_.get();
        want w = want::nothing;
        no_waiting(std::nullopt);
        const op_status s = step([ssl] { return SSL_do_handshake(ssl); }, w, ec);
        if (s == op_status::blocked)
            return w;
        handshake_ended(s, ec);
        return want::nothing;
    }

    void handshake_ended(op_status s, std::error_code& ec)
    {
        if (s == op_status::done) {
            st_.stage = phase::open;
            // Many connections sit idle after their handshake; the first
            // read or write takes the buffers again.
            release_buffers();
            return;
        }
        if (!ec) // close_notify during the handshake: the peer gave up
            ec = errc::stream_truncated;
        fail(ec, ec);
    }

    bool readable(std::span<std::byte> buf, std::error_code& ec)
    {
        ec.clear();
        if (st_.stage != phase::open) [[unlikely]] {
            ec = unusable_error();
            return false;
        }
        return !buf.empty() && !st_.got_cn && !st_.peer_ended;
    }

    std::size_t read_outcome(op_status s, std::size_t n, std::error_code& ec) noexcept
    {
        if (s == op_status::done) [[likely]]
            return n;
        if (s == op_status::eof)
            note_end_of_data();
        else
            fail_unless_timeout(ec);
        return 0;
    }

    bool writable(std::error_code& ec)
    {
        ec.clear();
        if (st_.stage != phase::open) [[unlikely]] {
            ec = unusable_error();
            return false;
        }
        if (st_.sent_cn) [[unlikely]] {
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
        switch (st_.stage) {
        case phase::failed: return st_.error;
        case phase::closing:
        case phase::finished: return errc::closed;
        default: return errc::not_connected;
        }
    }

    void fail(std::error_code cause, std::error_code& ec) noexcept
    {
        st_.stage = phase::failed;
        st_.error = cause;
        ec = cause;
    }

    // A read that timed out left OpenSSL in a retryable state; anything
    // else a read reports is fatal.
    void fail_unless_timeout(std::error_code& ec) noexcept
    {
        if (ec != errc::timeout)
            fail(ec, ec);
    }

    // SSL_read reported the end of the peer's data: its close_notify, or,
    // when missing close_notify is accepted, a transport that ended without
    // one. The transport only sees its end when OpenSSL wanted more bytes,
    // which it never does after a complete close_notify record.
    void note_end_of_data() noexcept
    {
        if (t_->eof)
            st_.peer_ended = true;
        else
            st_.got_cn = true;
    }

    // ------------------------------------------------ closing

    // Whether a close may run now; if not, `r` and `ec` say why (a finished
    // close's outcome again, a failed stream's error).
    bool closable(shutdown_result& r, std::error_code& ec) const noexcept
    {
        ec.clear();
        r = shutdown_result::none;
        switch (st_.stage) {
        case phase::open:
        case phase::closing: return true;
        case phase::finished:
        case phase::failed:
            ec = st_.error;
            r = st_.result;
            return false;
        default: ec = unusable_error(); return false;
        }
    }

    shutdown_result outcome(shutdown_result& r, std::error_code& ec) const noexcept
    {
        if (st_.stage == phase::finished || st_.stage == phase::failed) {
            r = st_.result;
            ec = st_.error;
        }
        return r;
    }

    // The blocking close: the close step, then a wait, until it ends.
    void finish_close() noexcept
    {
        while (st_.stage == phase::open || st_.stage == phase::closing) {
            const want w = close_step();
            if (w == want::nothing)
                return;
            const std::error_code waited = detail::wait_ready(t_->fd, detail::poll_events(w), close_wake());
            if (waited && waited != errc::timeout)
                end_close(st_.sent_cn ? shutdown_result::sent : shutdown_result::none, waited);
        }
    }

    // When the close step must run again even if the descriptor is not
    // ready: the deadline, or soon while a lingering close watches its
    // send queue (no readiness event says "all of it was acknowledged").
    detail::steady::time_point close_wake() const noexcept
    {
        if (st_.lingering)
            return std::min(*st_.close_deadline, detail::steady::now() + std::chrono::milliseconds(5));
        return *st_.close_deadline;
    }

    // One resumable step of the policy's close; never waits. want::nothing:
    // the close has ended (st_.result and st_.error say how). Each call does
    // a bounded amount of work, so one close cannot hold up an event loop.
    want close_step() noexcept
    {
        const auto now = detail::steady::now();
        const bool first = !st_.close_deadline;
        if (first) {
            st_.close_deadline = detail::deadline_after(st_.shutdown_timeout, now);
            st_.answering = st_.got_cn; // the peer's close_notify came before ours
        }
        st_.stage = phase::closing;
        st_.lingering = false;
        // No recv() starts past the deadline: a peer that never stops
        // sending cannot hold us beyond it.
        no_waiting(st_.close_deadline);
        const bool late = !first && now >= *st_.close_deadline;
        if (st_.peer_ended && !st_.sent_cn) { // an accepted missing close_notify: nobody to tell
            close_quietly();
            return end_close(shutdown_result::none, {});
        }
        if constexpr (Policy::mode == close_mode::quiet) {
            t_->muted = true; // whatever consuming provokes (a renegotiation) stays off the wire
            consume_arrived();
            if (st_.sent_cn) // close_write() already put ours out
                return end_close(st_.got_cn ? shutdown_result::complete : shutdown_result::sent, {});
            close_quietly();
            return end_close(shutdown_result::quiet, {});
        } else {
            if (!st_.sent_cn) {
                if (late) // no room for it until the deadline
                    return end_close(shutdown_result::none, errc::timeout);
                std::error_code ec;
                const want w = send_close_notify(ec);
                if (ec)
                    return end_close(shutdown_result::none, ec);
                if (w != want::nothing)
                    return detail::steady::now() >= *st_.close_deadline
                               ? end_close(shutdown_result::none, errc::timeout)
                               : w;
            }
            if constexpr (Policy::mode == close_mode::full)
                return drain_step(late);
            else
                return fast_step(late);
        }
    }

    // Full: reads and discards application data until the peer's
    // close_notify. SSL_read, not a second SSL_shutdown: data still in
    // flight would make SSL_shutdown fail ("application data after close
    // notify"). TLS 1.3 session tickets that arrive meanwhile are processed.
    // The deadline is checked per record, not only while waiting.
    want drain_step(bool late) noexcept
    {
        std::byte scratch[16 * 1024];
        SSL* ssl = ssl_.get();
        for (int records = 0; !st_.got_cn && !st_.peer_ended; ++records) {
            if (late || detail::steady::now() >= *st_.close_deadline)
                return end_close(shutdown_result::sent, errc::timeout);
            if (records >= max_records_per_step && buffers_empty())
                return want::read; // the rest is still in the socket: it stays readable
            std::size_t n = 0;
            want w = want::nothing;
            std::error_code ec;
            const op_status s = step([&] { return SSL_read_ex(ssl, scratch, sizeof scratch, &n); }, w, ec);
            if (s == op_status::blocked) {
                if (detail::steady::now() >= *st_.close_deadline)
                    return end_close(shutdown_result::sent, errc::timeout);
                return w;
            }
            if (s == op_status::eof)
                note_end_of_data();
            else if (s == op_status::failed)
                return end_close(shutdown_result::sent, ec);
        }
        return end_close(st_.got_cn ? shutdown_result::complete : shutdown_result::sent, {});
    }

    // Fast: does not wait for the peer's answer, only (lingering close) for
    // what we wrote to be acknowledged while the peer is still sending:
    // closing a socket with unread input is a reset, which would destroy our
    // reply and close_notify if they still sit in our send queue (behind the
    // closed window of a peer that uploads before it reads), or are still
    // in flight. Meanwhile what arrives is read and discarded. A peer that
    // sends nothing gets a plain FIN, and the kernel delivers the rest.
    want fast_step(bool late) noexcept
    {
        // Whether the peer's answer happened to be among what is consumed
        // is timing, not an outcome.
        if (consume_arrived())
            st_.peer_sending = true;
        if (st_.answering) { // our answer leaves now; the socket stays open for release_socket()
            push_unsent();
            return end_close(shutdown_result::complete, {});
        }
        end_sending(); // our FIN right behind our close_notify
        if (!st_.peer_sending || st_.peer_ended || t_->eof || unacknowledged() == 0)
            return end_close(shutdown_result::sent, {});
        if (late || detail::steady::now() >= *st_.close_deadline)
            return end_close(shutdown_result::sent, errc::timeout);
        st_.lingering = true;
        return want::read;
    }

    static constexpr int max_records_per_step = 64;

    bool buffers_empty() const noexcept { return t_->buffered() == 0 && SSL_has_pending(ssl_.get()) == 0; }

    // Bytes we wrote that the peer's TCP has not acknowledged yet; 0 for
    // sockets other than TCP (only TCP answers SIOCOUTQNSD), where closing
    // destroys nothing the peer has not read.
    int unacknowledged() const noexcept
    {
        int unsent = 0;
        int queued = 0;
        if (::ioctl(t_->fd, SIOCOUTQNSD, &unsent) != 0 || ::ioctl(t_->fd, SIOCOUTQ, &queued) != 0)
            return 0;
        return queued;
    }

    // The close has ended: the outcome is kept for later calls; a close that
    // did not complete ends our sending side (step 3 below). A failure
    // before our close_notify was out, or any error but a timeout, leaves
    // the stream failed.
    want end_close(shutdown_result r, std::error_code ec) noexcept
    {
        st_.result = r;
        st_.error = ec;
        st_.lingering = false;
        st_.stage = ec && (ec != errc::timeout || !st_.sent_cn) ? phase::failed : phase::finished;
        if (r != shutdown_result::complete)
            end_sending();
        t_->until.reset();
        ERR_clear_error();
        return want::nothing;
    }

    // Puts our close_notify on the wire, step by step; only ever calls
    // SSL_shutdown again while the alert is still half sent. Nothing else
    // of ours goes on the wire after it.
    want send_close_notify(std::error_code& ec)
    {
        SSL* ssl = ssl_.get();
        int r = 0;
        want w = want::nothing;
        t_->write_blocked = false;
        const op_status s = step(
            [ssl, &r] {
                r = SSL_shutdown(ssl);
                // 0: sent, the peer's not yet received; 1: both. Either is done.
                return r >= 0 ? 1 : r;
            },
            w, ec);
        if (s == op_status::blocked)
            return w;
        // OpenSSL 3.0 answers a call that retried a half-sent alert with 0
        // ("sent") even when the retry found no room either.
        if (t_->write_blocked)
            return want::write;
        if (s != op_status::done) {
            if (!ec)
                ec = errc::stream_truncated;
            return want::nothing;
        }
        st_.sent_cn = true;
        t_->muted = true;
        if (r == 1 && !t_->eof) // 1 also follows an accepted missing close_notify
            st_.got_cn = true;
        return want::nothing;
    }

    // Sets both shutdown flags without writing anything (SSL_shutdown in
    // quiet mode), so that SSL_free keeps the session resumable.
    void close_quietly() noexcept
    {
        SSL_set_quiet_shutdown(ssl_.get(), 1);
        SSL_shutdown(ssl_.get());
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
    //    alert, so OpenSSL is told to accept it for the duration. Returns
    //    whether application data was among it.
    bool consume_arrived() noexcept
    {
        bool data = false;
        SSL* ssl = ssl_.get();
        const bool accepting = (SSL_get_options(ssl) & SSL_OP_IGNORE_UNEXPECTED_EOF) != 0;
        if (!accepting)
            SSL_set_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
        const int flags = SSL_get_shutdown(ssl);
        // Bounded by a record count, not a deadline: a quiet close, whose
        // deadline is now, still processes the tickets that have arrived.
        const detail::deadline until = std::exchange(t_->until, std::nullopt);
        std::byte scratch[16 * 1024];
        // Bounded, so a peer that never stops sending cannot hold us here.
        for (int records = 0; records < max_records_per_step && !st_.got_cn && !st_.peer_ended; ++records) {
            ERR_clear_error();
            std::size_t n = 0;
            const int r = SSL_read_ex(ssl, scratch, sizeof scratch, &n);
            if (r > 0) {
                data = true;
                continue;
            }
            if (SSL_get_error(ssl, r) == SSL_ERROR_ZERO_RETURN)
                note_end_of_data();
            break; // nothing more has arrived, or an error: stop either way
        }
        if (!accepting)
            SSL_clear_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
        // An accepted end of the transport sets the shutdown flags to
        // "received" only; without "sent", SSL_free would evict the session.
        SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | flags);
        t_->until = until;
        ERR_clear_error();
        return data;
    }

    // 3. After a close that did not complete, our FIN follows at once
    //    (shutdown(SHUT_WR), which also pushes out anything still held). A
    //    reset from a later close() of a socket that meanwhile received more
    //    data then comes after the FIN, and the peer still reads an orderly
    //    end. Nothing valid can be written on this connection any more:
    //    going on in the clear needs a completed close, which skips this.
    void end_sending() noexcept
    {
        if (!std::exchange(st_.sending_ended, true))
            ::shutdown(t_->fd, SHUT_WR);
    }

    // After a fatal error nothing new goes on the wire, but what OpenSSL
    // already wrote (its alert) must leave before the socket closes: push
    // it, end our sending side, and read away what has arrived so that the
    // close does not turn into a reset that destroys the alert.
    void flush_failure() noexcept
    {
        push_unsent();
        end_sending();
        char scratch[16 * 1024];
        for (int i = 0; i < max_records_per_step; ++i)
            if (::recv(t_->fd, scratch, sizeof scratch, MSG_DONTWAIT) <= 0)
                break;
    }

    // ------------------------------------------------ the destructor's close

    // By state (docs/guide.md): an open stream is closed by its policy, here
    // (waiting up to its deadline) or, bound to a closer, in the closer
    // (what needs no waiting is done here first); a failed one lets
    // OpenSSL's alert leave; anything else is only freed. Out of line:
    // inlined into the destructor of a std::optional holding a stream,
    // g++ 12 -O2 misreports the phase as maybe-uninitialized.
    [[gnu::noinline]] void close_on_destruction() noexcept
    {
        switch (st_.stage) {
        case phase::open:
        case phase::closing:
            if (st_.bound != nullptr && handed_to_closer())
                return; // the closer owns the SSL and the socket now
            if constexpr (detail::asio_socket<Socket>)
                if (st_.async_close != nullptr && st_.async_close(*this))
                    return; // the socket's executor finishes the close
            finish_close();
            break;
        case phase::failed: flush_failure(); break;
        default: break;
        }
        ssl_.reset();
        t_ = nullptr;
        st_ = state{};
        ERR_clear_error();
    }

    // A bound stream's destructor: one close step; if the policy still has
    // to wait, the stream (SSL, transport and socket) moves into the closer.
    // false: nothing was handed over (the close ended, or no memory).
    bool handed_to_closer() noexcept
    {
        const want w = close_step();
        if (w == want::nothing)
            return false;
        closer* c = st_.bound;
        std::unique_ptr<detail::close_job> job;
        try {
            job = std::make_unique<detail::stream_close_job<tls_stream>>(std::move(*this));
        } catch (...) { // std::bad_alloc before the move: close here instead
            return false;
        }
        c->adopt(std::move(job), w);
        return true;
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
    state st_{phase::fresh};

    // -- configuration (private)

    // The context's session cache, if it has one: offers the session kept
    // for `name` (unless set_session gave one already) and files the
    // sessions this connection receives under `name`. Failing to (no
    // memory) only costs the resumption.
    void use_cached_session(const std::string& name) noexcept
    {
        SSL* ssl = ssl_.get();
        const detail::context_state* cs = detail::find_state(SSL_get_SSL_CTX(ssl));
        const int index = detail::cache_key_index();
        if (!cs || !cs->cache || index < 0)
            return;
        try {
            auto key = std::make_unique<std::string>(name);
            if (SSL_set_ex_data(ssl, index, key.get()) == 1)
                static_cast<void>(key.release());
            if (SSL_get_session(ssl) == nullptr)
                if (const detail::session_ptr cached = cs->cache->get(name))
                    SSL_set_session(ssl, cached.get());
        } catch (...) { // std::bad_alloc
        }
        ERR_clear_error();
    }
};

} // namespace tls

#endif // TLS_STREAM_HPP
