// What the fuzz targets share: the peer, a raw OpenSSL endpoint on one end of
// a socketpair, talking through memory BIOs that the driver moves to and from
// the socket with send(MSG_NOSIGNAL)/recv, so the peer can never raise
// SIGPIPE and never blocks without a deadline; a cursor over the input; and
// the checks' failure. Used by both targets and the seed generator.
#ifndef TLS_STREAM_TESTS_FUZZ_PEER_HPP
#define TLS_STREAM_TESTS_FUZZ_PEER_HPP

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

namespace fuzz {

/// Configuration byte (the first byte of every input).
struct config {
    bool our_role_server;   // bit 0: the tls_stream accepts (else it connects)
    int policy;             // bits 1-2: 0 fast, 1 quiet, 2-3 full
    bool real_handshake;    // bit 3: a real peer completes the handshake, then
                            //        the input is a script of peer actions;
                            //        else the input is the peer's raw bytes
    bool tls13;             // bit 4: the real peer's protocol version
    bool peer_closes;       // bit 5: the peer ends with close() (else shutdown(SHUT_WR))
    bool explicit_shutdown; // bit 6: we call shutdown() (else the destructor closes)
    bool close_write_first; // bit 7: we call close_write() before reading

    static config from(std::uint8_t b)
    {
        return {(b & 1) != 0, (b >> 1) & 3, (b & 8) != 0, (b & 16) != 0, (b & 32) != 0, (b & 64) != 0, (b & 128) != 0};
    }
};

/// Script opcodes (after a real handshake), one byte each, some with operands.
enum op : std::uint8_t {
    op_data = 0,     // [len] [len bytes]: application data, encrypted by the peer
    op_close_notify, // the peer's close_notify
    op_raw,          // [len] [len bytes]: bytes put on the wire as they are
    op_key_update,   // TLS 1.3: KeyUpdate (update requested); TLS 1.2: renegotiation request
    op_ticket,       // TLS 1.3 server peer: one more NewSessionTicket
    op_count
};

/// A raw SSL over memory BIOs; pump() moves bytes between them and `fd`.
class peer {
public:
    peer(SSL_CTX* ctx, int fd, bool server) : fd_(fd), ssl_(SSL_new(ctx))
    {
        BIO* in = BIO_new(BIO_s_mem());
        BIO* out = BIO_new(BIO_s_mem());
        BIO_set_mem_eof_return(in, -1); // "no data yet", not EOF
        SSL_set_bio(ssl_, in, out);
        if (server)
            SSL_set_accept_state(ssl_);
        else
            SSL_set_connect_state(ssl_);
    }
    peer(const peer&) = delete;
    peer& operator=(const peer&) = delete;
    ~peer() { SSL_free(ssl_); }

    SSL* ssl() const noexcept { return ssl_; }

    /// Sends what the SSL has written, without waiting: what does not fit
    /// into the socket yet stays queued, in order, for the next flush (the
    /// other side may not be reading yet, so waiting would not help).
    void flush()
    {
        char buf[16384];
        int n;
        while ((n = BIO_read(SSL_get_wbio(ssl_), buf, sizeof buf)) > 0)
            queued_.append(buf, static_cast<std::size_t>(n));
        send_queued();
    }

    /// Puts bytes on the wire as they are, behind what the SSL wrote.
    void raw(const void* p, std::size_t n)
    {
        flush();
        queued_.append(static_cast<const char*>(p), n);
        send_queued();
    }

    /// Hands whatever has arrived to the SSL, without waiting. False once
    /// the other side has ended the transport.
    bool receive_now() noexcept
    {
        char buf[16384];
        for (;;) {
            const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
            if (n <= 0)
                return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
            BIO_write(SSL_get_rbio(ssl_), buf, static_cast<int>(n));
        }
    }

    /// Ends our sending side (FIN) after what is queued.
    void end_sending() noexcept
    {
        send_queued();
        ::shutdown(fd_, SHUT_WR);
    }

    /// Runs the handshake, waiting for the other side at most `limit` in all.
    bool handshake(std::chrono::milliseconds limit) noexcept
    {
        const auto until = std::chrono::steady_clock::now() + limit;
        for (;;) {
            ERR_clear_error();
            const int r = SSL_do_handshake(ssl_);
            flush();
            if (r == 1)
                return true;
            if (SSL_get_error(ssl_, r) != SSL_ERROR_WANT_READ || !receive(until))
                return false;
        }
    }

    /// Waits for bytes from `fd` (until the deadline) and hands them to the SSL.
    bool receive(std::chrono::steady_clock::time_point until) noexcept
    {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
        pollfd p{fd_, POLLIN, 0};
        if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) != 1)
            return false;
        char buf[16384];
        const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n <= 0)
            return false;
        BIO_write(SSL_get_rbio(ssl_), buf, static_cast<int>(n));
        return true;
    }

private:
    void send_queued() noexcept
    {
        while (fd_ >= 0 && !queued_.empty()) {
            const ssize_t n = ::send(fd_, queued_.data(), queued_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n <= 0)
                return;
            queued_.erase(0, static_cast<std::size_t>(n));
        }
    }

    int fd_;
    SSL* ssl_;
    std::string queued_;
};

/// Stops the fuzzer on a failed check.
[[noreturn]] inline void fail(const char* what)
{
    std::fprintf(stderr, "fuzz: %s\n", what);
    std::abort();
}

/// A raw context for the peer, held to one protocol version; a server's has
/// the certificate chain and key from the files named.
inline SSL_CTX* peer_context(bool server, int version, const std::string& chain_file, const std::string& key_file)
{
    SSL_CTX* c = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!c || SSL_CTX_set_min_proto_version(c, version) != 1 || SSL_CTX_set_max_proto_version(c, version) != 1)
        fail("cannot make the peer's context");
    if (server
        && (SSL_CTX_use_certificate_chain_file(c, chain_file.c_str()) != 1
            || SSL_CTX_use_PrivateKey_file(c, key_file.c_str(), SSL_FILETYPE_PEM) != 1))
        fail("cannot load the peer's certificate");
    return c;
}

/// Stops the fuzzer if our last call left something on the OpenSSL error queue.
inline void check_error_queue(const char* after)
{
    if (ERR_peek_error() != 0) {
        std::fprintf(stderr, "fuzz: OpenSSL error queue not empty after %s:\n", after);
        ERR_print_errors_fp(stderr);
        std::abort();
    }
}

/// A small cursor over the input.
struct reader {
    const std::uint8_t* p;
    std::size_t n;
    bool empty() const { return n == 0; }
    std::uint8_t byte()
    {
        if (n == 0)
            return 0;
        --n;
        return *p++;
    }
    std::span<const std::uint8_t> bytes(std::size_t want)
    {
        const std::size_t k = want < n ? want : n;
        std::span<const std::uint8_t> out(p, k);
        p += k;
        n -= k;
        return out;
    }
};

} // namespace fuzz

#endif
