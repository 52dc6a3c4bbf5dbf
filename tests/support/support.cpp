#include "support.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace support {

const self_signed::credentials& credentials()
{
    static const std::unique_ptr<self_signed::credentials> instance = [] {
        auto c = std::make_unique<self_signed::credentials>();
        self_signed::generate(*c);
        return c;
    }();
    return *instance;
}

const char* version_name(int version) { return version == TLS1_3_VERSION ? "TLS 1.3" : "TLS 1.2"; }

std::chrono::nanoseconds thread_cpu_time()
{
    timespec ts{};
    ensure(::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

std::string pattern(std::size_t n, std::uint64_t seed)
{
    std::string out(n, '\0');
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ULL;
    for (std::size_t i = 0; i < n; i += 8) {
        x += 0x9E3779B97F4A7C15ULL;
        std::uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        for (std::size_t j = 0; j < 8 && i + j < n; ++j)
            out[i + j] = static_cast<char>((z >> (8 * j)) & 0xff);
    }
    return out;
}

void ensure(bool ok, const std::string& what)
{
    if (!ok)
        throw std::runtime_error(what);
}

namespace {

void pin_version(SSL_CTX* ctx, int version)
{
    if (version != 0) {
        ensure(SSL_CTX_set_min_proto_version(ctx, version) == 1, "SSL_CTX_set_min_proto_version");
        ensure(SSL_CTX_set_max_proto_version(ctx, version) == 1, "SSL_CTX_set_max_proto_version");
    }
}

int require_fd(int fd, const char* what)
{
    ensure(fd >= 0, std::string(what) + ": " + std::strerror(errno));
    return fd;
}

std::string last_ssl_error(SSL* ssl, int r)
{
    const int err = SSL_get_error(ssl, r);
    const char* reason = ERR_reason_error_string(ERR_peek_error());
    ERR_clear_error();
    return "SSL_get_error " + std::to_string(err) + (reason ? std::string(": ") + reason : std::string());
}

} // namespace

tls::context server_context(int version)
{
    tls::context ctx = tls::context::server(credentials().chain_file, credentials().key_file);
    pin_version(ctx.native_handle(), version);
    return ctx;
}

tls::context client_context(int version)
{
    tls::context ctx = tls::context::client();
    ctx.load_verify_file(credentials().ca_file);
    pin_version(ctx.native_handle(), version);
    return ctx;
}

socket_pair tcp_pair()
{
    tls::unique_socket listener{require_fd(::socket(AF_INET, SOCK_STREAM, 0), "socket")};
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ensure(::bind(listener.native_handle(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, "bind");
    ensure(::listen(listener.native_handle(), 1) == 0, "listen");
    socklen_t len = sizeof addr;
    ensure(::getsockname(listener.native_handle(), reinterpret_cast<sockaddr*>(&addr), &len) == 0, "getsockname");
    tls::unique_socket client{require_fd(::socket(AF_INET, SOCK_STREAM, 0), "socket")};
    ensure(::connect(client.native_handle(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, "connect");
    tls::unique_socket server{require_fd(::accept(listener.native_handle(), nullptr, nullptr), "accept")};
    return {std::move(client), std::move(server)};
}

socket_pair unix_pair()
{
    int fds[2];
    ensure(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0, "socketpair");
    return {tls::unique_socket{fds[0]}, tls::unique_socket{fds[1]}};
}

socket_pair make_pair(bool tcp) { return tcp ? tcp_pair() : unix_pair(); }

void set_socket_timeouts(int fd, std::chrono::milliseconds t)
{
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(t.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
    ensure(::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0, "setsockopt");
    ensure(::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0, "setsockopt");
}

void set_nonblocking(int fd, bool on)
{
    const int flags = ::fcntl(fd, F_GETFL);
    ensure(flags >= 0, "fcntl(F_GETFL)");
    ensure(::fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) == 0, "fcntl");
}

void arm_reset(int fd)
{
    linger l{1, 0};
    ensure(::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0, "setsockopt");
}

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

std::string text(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

std::string to_string(ending e)
{
    switch (e) {
    case ending::close_notify: return "close_notify";
    case ending::unexpected_eof: return "unexpected_eof";
    case ending::reset: return "reset";
    case ending::timeout: return "timeout";
    case ending::error: return "error";
    }
    return "?";
}

std::string to_string(tls::shutdown_result r)
{
    switch (r) {
    case tls::shutdown_result::none: return "none";
    case tls::shutdown_result::quiet: return "quiet";
    case tls::shutdown_result::sent: return "sent";
    case tls::shutdown_result::complete: return "complete";
    }
    return "?";
}

raw_peer::raw_peer(const tls::context& ctx, tls::unique_socket sock)
    : sock_(std::move(sock)), ssl_(SSL_new(ctx.native_handle()))
{
    ensure(ssl_ != nullptr, "SSL_new");
    set_socket_timeouts(sock_.native_handle());
    ensure(SSL_set_fd(ssl_, sock_.native_handle()) == 1, "SSL_set_fd");
    SSL_set_msg_callback(ssl_, &raw_peer::on_message);
    SSL_set_msg_callback_arg(ssl_, this);
}

raw_peer::~raw_peer() { drop(); }

void raw_peer::drop() noexcept
{
    if (ssl_) {
        SSL_free(ssl_);
        ssl_ = nullptr;
    }
    ERR_clear_error();
}

void raw_peer::accept()
{
    ERR_clear_error();
    const int r = SSL_accept(ssl_);
    ensure(r == 1, "raw peer SSL_accept failed: " + last_ssl_error(ssl_, r));
}

void raw_peer::connect()
{
    ERR_clear_error();
    const int r = SSL_connect(ssl_);
    ensure(r == 1, "raw peer SSL_connect failed: " + last_ssl_error(ssl_, r));
}

std::string raw_peer::read_some(std::size_t max, ending& how)
{
    std::string buf(max, '\0');
    std::size_t n = 0;
    ERR_clear_error();
    errno = 0;
    if (SSL_read_ex(ssl_, buf.data(), buf.size(), &n) == 1) {
        buf.resize(n);
        return buf;
    }
    const int err = SSL_get_error(ssl_, 0);
    const int saved_errno = errno;
    const unsigned long code = ERR_peek_error();
    ERR_clear_error();
    if (err == SSL_ERROR_ZERO_RETURN)
        how = ending::close_notify;
    else if ((err == SSL_ERROR_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
             || (err == SSL_ERROR_SYSCALL && saved_errno == 0)) // OpenSSL 3.0's form, or the older one
        how = ending::unexpected_eof;
    else if (err == SSL_ERROR_SYSCALL && saved_errno == ECONNRESET)
        how = ending::reset;
    else if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_SYSCALL)
             && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK))
        how = ending::timeout;
    else
        how = ending::error;
    return {};
}

std::pair<std::string, ending> raw_peer::read_to_end()
{
    std::string all;
    for (;;) {
        ending how{};
        std::string chunk = read_some(16384, how);
        if (chunk.empty())
            return {std::move(all), how};
        all += chunk;
    }
}

std::string raw_peer::read_exactly(std::size_t n)
{
    std::string out;
    while (out.size() < n) {
        ending how{};
        const std::string chunk = read_some(n - out.size(), how);
        ensure(!chunk.empty(), "raw peer: stream ended (" + to_string(how) + ") after " + std::to_string(out.size())
                                   + " of " + std::to_string(n) + " bytes");
        out += chunk;
    }
    return out;
}

void raw_peer::write(std::string_view data)
{
    ERR_clear_error();
    std::size_t n = 0;
    ensure(SSL_write_ex(ssl_, data.data(), data.size(), &n) == 1, "SSL_write_ex");
    ensure(n == data.size(), "short SSL_write_ex");
}

int raw_peer::shutdown()
{
    ERR_clear_error();
    const int r = SSL_shutdown(ssl_);
    ERR_clear_error();
    return r;
}

std::vector<alert> raw_peer::alerts() const
{
    std::lock_guard lock(mutex_);
    return alerts_;
}

int raw_peer::count_alerts(bool sent, int description) const
{
    std::lock_guard lock(mutex_);
    int n = 0;
    for (const alert& a : alerts_)
        n += a.sent == sent && a.description == description ? 1 : 0;
    return n;
}

int raw_peer::received_alerts() const
{
    std::lock_guard lock(mutex_);
    int n = 0;
    for (const alert& a : alerts_)
        n += a.sent ? 0 : 1;
    return n;
}

void raw_peer::on_message(int write_p, int /*version*/, int content_type, const void* buf, std::size_t len,
                          SSL* /*ssl*/, void* arg)
{
    if (content_type != SSL3_RT_ALERT || len < 2)
        return;
    auto* self = static_cast<raw_peer*>(arg);
    const auto* p = static_cast<const unsigned char*>(buf);
    std::lock_guard lock(self->mutex_);
    self->alerts_.push_back({write_p != 0, p[0], p[1]});
}

void peer_thread::block_sigpipe()
{
    sigset_t set;
    ensure(sigemptyset(&set) == 0 && sigaddset(&set, SIGPIPE) == 0, "sigaddset");
    ensure(pthread_sigmask(SIG_BLOCK, &set, nullptr) == 0, "pthread_sigmask");
}

peer_thread::~peer_thread()
{
    if (thread_.joinable())
        thread_.join();
}

void peer_thread::join()
{
    if (thread_.joinable())
        thread_.join();
    if (error_)
        std::rethrow_exception(std::exchange(error_, nullptr));
}

void gate::open()
{
    std::call_once(once_, [this] { promise_.set_value(); });
}

bool gate::wait_for(std::chrono::milliseconds limit) const
{
    return future_.wait_for(limit) == std::future_status::ready;
}

void gate::wait() const { ensure(wait_for(10s), "gate: not opened within 10 s"); }

std::string read_raw_available(int fd)
{
    std::string out;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            out.append(buf, static_cast<std::size_t>(n));
        else if (n < 0 && errno == EINTR)
            continue;
        else
            return out;
    }
}

raw_end read_raw_until_eof(int fd)
{
    raw_end r;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            r.bytes.append(buf, static_cast<std::size_t>(n));
        } else if (n == 0) {
            r.clean_eof = true;
            return r;
        } else if (errno != EINTR) {
            r.error = errno;
            return r;
        }
    }
}

std::optional<std::vector<int>> record_types(std::string_view wire)
{
    std::vector<int> types;
    std::size_t at = 0;
    while (at < wire.size()) {
        if (wire.size() - at < 5)
            return std::nullopt;
        const auto* p = reinterpret_cast<const unsigned char*>(wire.data() + at);
        const std::size_t len = (std::size_t{p[3]} << 8) | p[4];
        if (wire.size() - at - 5 < len)
            return std::nullopt;
        types.push_back(p[0]);
        at += 5 + len;
    }
    return types;
}

} // namespace support
