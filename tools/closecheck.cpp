// closecheck: tells how a TLS server (or, with --listen, a TLS client)
// closes its connections. See docs/closecheck.md.
//
//   closecheck HOST PORT [--tls1.2|--tls1.3] [--sni NAME] [--cafile F | --insecure]
//              [--http PATH] [--json] [--timeout MS]
//   closecheck --listen PORT --cert F --key F [--once | --count N] [--tls1.2|--tls1.3]
//              [--json] [--timeout MS]
//
// Exit status: 0 every experiment ran, 1 one could not (no connection, no
// handshake), 2 bad usage.
//
// It uses tls_stream's public blocking API; what the library does not report
// (alerts, session tickets, resumption) comes from OpenSSL through
// native_handle(), and whether the transport ended with a FIN or a reset
// from the socket itself (a peeked recv's errno, and TCP_INFO's state).
//
// SPDX-License-Identifier: MIT
#include <tls_stream.hpp>

#include <fcntl.h>
#include <linux/sockios.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ---------------------------------------------------------------- errors and options

/// Bad command line: exit status 2.
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// An experiment could not run (no connection, no handshake): exit status 1.
struct run_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct options {
    std::string host;
    std::string port;
    int version = 0; // 0: any of TLS 1.2 and 1.3
    std::string sni;
    std::string cafile;
    bool insecure = false;
    std::optional<std::string> http_path;
    bool json = false;
    milliseconds timeout{2000};
    // --listen
    bool listen = false;
    std::string cert;
    std::string key;
    long count = 0; // 0: for ever
};

constexpr const char* usage_text =
    "usage: closecheck HOST PORT [--tls1.2|--tls1.3] [--sni NAME] [--cafile F | --insecure] [--http PATH] "
    "[--json] [--timeout MS]\n"
    "       closecheck --listen PORT --cert F --key F [--once | --count N] [--tls1.2|--tls1.3] [--json] "
    "[--timeout MS]\n";

long parse_number(const std::string& flag, const std::string& text, long min, long max)
{
    std::size_t used = 0;
    long v = 0;
    try {
        v = std::stol(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used == 0 || used != text.size() || v < min || v > max)
        throw usage_error(flag + " needs a number from " + std::to_string(min) + " to " + std::to_string(max)
                          + ", not '" + text + "'");
    return v;
}

options parse(int argc, char** argv)
{
    options o;
    std::vector<std::string> positional;
    std::vector<std::string> args(argv + 1, argv + argc);
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= args.size())
                throw usage_error(a + " needs a value");
            return args[++i];
        };
        if (a == "--tls1.2" || a == "--tls1.3") {
            const int v = a == "--tls1.2" ? TLS1_2_VERSION : TLS1_3_VERSION;
            if (o.version != 0 && o.version != v)
                throw usage_error("--tls1.2 and --tls1.3 exclude each other");
            o.version = v;
        } else if (a == "--sni") {
            o.sni = value();
        } else if (a == "--cafile") {
            o.cafile = value();
        } else if (a == "--insecure") {
            o.insecure = true;
        } else if (a == "--http") {
            o.http_path = value();
            if (o.http_path->empty() || o.http_path->front() != '/')
                throw usage_error("--http needs a path starting with '/'");
        } else if (a == "--json") {
            o.json = true;
        } else if (a == "--timeout") {
            o.timeout = milliseconds(parse_number(a, value(), 1, 600000));
        } else if (a == "--listen") {
            o.listen = true;
            o.port = std::to_string(parse_number(a, value(), 0, 65535));
        } else if (a == "--cert") {
            o.cert = value();
        } else if (a == "--key") {
            o.key = value();
        } else if (a == "--once") {
            o.count = 1;
        } else if (a == "--count") {
            o.count = parse_number(a, value(), 1, 1000000);
        } else if (a == "--help" || a == "-h") {
            std::fputs(usage_text, stdout);
            std::exit(0);
        } else if (a.size() > 1 && a[0] == '-') {
            throw usage_error("unknown option '" + a + "'");
        } else {
            positional.push_back(a);
        }
    }
    if (!o.cafile.empty() && o.insecure)
        throw usage_error("--cafile and --insecure exclude each other");
    if (o.listen) {
        if (!positional.empty())
            throw usage_error("--listen takes no HOST PORT");
        if (o.cert.empty() || o.key.empty())
            throw usage_error("--listen needs --cert and --key");
        if (!o.sni.empty() || !o.cafile.empty() || o.insecure || o.http_path)
            throw usage_error("--sni, --cafile, --insecure and --http are for the client mode");
        return o;
    }
    if (!o.cert.empty() || !o.key.empty() || o.count != 0)
        throw usage_error("--cert, --key, --once and --count need --listen");
    if (positional.size() != 2)
        throw usage_error("expected HOST PORT");
    o.host = positional[0];
    o.port = std::to_string(parse_number("PORT", positional[1], 1, 65535));
    if (o.host.empty())
        throw usage_error("HOST is empty");
    return o;
}

// ---------------------------------------------------------------- small helpers

double ms_since(clock_type::time_point start)
{
    return std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
}

int ms_left(clock_type::time_point until)
{
    const auto left = std::chrono::ceil<milliseconds>(until - clock_type::now()).count();
    return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

std::string fixed(double v)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return buf;
}

std::string json_string(std::string_view s)
{
    std::string out = "\"";
    for (const char c : s) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (static_cast<unsigned char>(c) < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
                out += buf;
            } else {
                out += c;
            }
        }
    }
    return out + "\"";
}

std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

// Whether bytes wait to be read by TLS without touching the socket: in
// OpenSSL's record buffer or in the library's transport (BIO_ctrl_pending).
bool tls_pending(SSL* ssl) { return SSL_has_pending(ssl) == 1 || BIO_ctrl_pending(SSL_get_rbio(ssl)) > 0; }

int tcp_state(int fd)
{
    tcp_info info{};
    socklen_t len = sizeof info;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0)
        return -1;
    return info.tcpi_state;
}

// Bytes received and not read yet (what would make close() send a reset).
int unread_bytes(int fd)
{
    int n = 0;
    return ::ioctl(fd, SIOCINQ, &n) == 0 ? n : -1;
}

// ---------------------------------------------------------------- what OpenSSL saw

/// Filled by OpenSSL's message callback: alerts both ways, session tickets.
struct observer {
    clock_type::time_point start = clock_type::now();
    int tickets = 0;
    std::vector<std::string> alerts_received; // other than close_notify
    std::vector<std::string> alerts_sent;
    std::optional<double> close_notify_received_ms;
    bool close_notify_sent = false;

    static void callback(int write_p, int /*version*/, int content_type, const void* buf, std::size_t len, SSL* /*ssl*/,
                         void* arg)
    {
        auto* self = static_cast<observer*>(arg);
        const auto* p = static_cast<const unsigned char*>(buf);
        if (content_type == SSL3_RT_ALERT && len >= 2) {
            const int level = p[0];
            const int desc = p[1];
            if (desc == SSL_AD_CLOSE_NOTIFY) {
                if (write_p != 0)
                    self->close_notify_sent = true;
                else if (!self->close_notify_received_ms)
                    self->close_notify_received_ms = ms_since(self->start);
                return;
            }
            std::string name = SSL_alert_desc_string_long((level << 8) | desc);
            name += level == SSL3_AL_FATAL ? " (fatal)" : " (warning)";
            (write_p != 0 ? self->alerts_sent : self->alerts_received).push_back(std::move(name));
        } else if (content_type == SSL3_RT_HANDSHAKE && len >= 1 && write_p == 0 && p[0] == SSL3_MT_NEWSESSION_TICKET) {
            ++self->tickets;
        }
    }

    void attach(SSL* ssl)
    {
        SSL_set_msg_callback(ssl, &observer::callback);
        SSL_set_msg_callback_arg(ssl, this);
    }
};

// The latest session OpenSSL offered to the cache (new-session callback).
struct session_keeper {
    SSL_SESSION* latest = nullptr;
    session_keeper() = default;
    session_keeper(const session_keeper&) = delete;
    session_keeper& operator=(const session_keeper&) = delete;
    ~session_keeper() { reset(); }
    void reset(SSL_SESSION* s = nullptr)
    {
        if (latest)
            SSL_SESSION_free(latest);
        latest = s;
    }
};
session_keeper g_sessions; // NOLINT: OpenSSL's callback has no argument of ours; single-threaded tool

int on_new_session(SSL* /*ssl*/, SSL_SESSION* s)
{
    g_sessions.reset(s);
    return 1; // we keep the reference
}

// ---------------------------------------------------------------- how a peer ended

/// How the peer's side of the connection ended, as seen by a reader.
struct ending {
    std::string how = "none";            // close_notify | fin | rst | alert | error | none (nothing by the deadline)
    std::string detail;                  // the alert or error
    double ms = 0;                       // when, since the observer's start
    std::size_t bytes = 0;               // application data read meanwhile
    std::string then;                    // after close_notify: fin | rst | none (how TCP ended)
    std::optional<bool> waited_for_ours; // the peer's close_notify came first: did it wait for our answer?
};

/// The raw socket's end: bytes until a FIN, a reset or the deadline.
struct raw_end {
    std::string how = "none"; // fin | rst | none
    std::size_t bytes = 0;
};

raw_end wait_raw_end(int fd, clock_type::time_point until)
{
    raw_end r;
    char buf[4096];
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        const int ready = ::poll(&p, 1, ms_left(until));
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0)
            return r;
        const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            r.bytes += static_cast<std::size_t>(n);
        } else if (n == 0) {
            r.how = "fin";
            return r;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            r.how = "rst"; // ECONNRESET, or the like (ETIMEDOUT after retransmissions)
            return r;
        }
    }
}

/// Reads (and counts) application data until the peer's close_notify, the
/// end of the transport, a fatal alert or `until` (or, with `done`, until
/// the data read into `got` satisfies it: then `how` stays "none").
///
/// The stream accepts a missing close_notify for the duration: OpenSSL 3.0
/// answers an unexpected EOF with a decode_error alert of its own, which
/// would reach the peer and have it answer with a reset, spoiling what
/// TCP_INFO tells. Whether the end was a close_notify is then the message
/// callback's to say. Before each read that needs the socket this peeks
/// there, so that a reset is seen by its errno before the library's recv
/// consumes it; `sent_fin` says whether our FIN went out (then TCP_INFO's
/// state cannot tell a reset from a FIN).
template <class Stream>
ending read_until_end(Stream& s, observer& obs, clock_type::time_point until, bool sent_fin = false,
                      std::string* got = nullptr, bool (*done)(const std::string&) = nullptr)
{
    ending e;
    SSL* ssl = s.native_handle();
    const int fd = s.socket().native_handle();
    const bool accepting = s.accepts_missing_close_notify();
    s.set_accept_missing_close_notify(true);
    bool rst_seen = false;
    std::byte buf[16 * 1024];
    for (;;) {
        if (got && done && done(*got))
            break;
        if (!tls_pending(ssl)) {
            pollfd p{fd, POLLIN, 0};
            const int ready = ::poll(&p, 1, ms_left(until));
            if (ready < 0 && errno == EINTR)
                continue;
            if (ready <= 0) {
                e.ms = ms_since(obs.start);
                break;
            }
            char c = 0;
            if (::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 && errno == ECONNRESET)
                rst_seen = true;
        }
        s.set_io_timeout(milliseconds(std::max(ms_left(until), 1)));
        std::error_code ec;
        const std::size_t n = s.read_some(buf, ec);
        e.ms = ms_since(obs.start);
        if (!ec && n > 0) {
            e.bytes += n;
            if (got)
                got->append(reinterpret_cast<const char*>(buf), n);
            continue;
        }
        if (!ec && obs.close_notify_received_ms) {
            e.how = "close_notify";
            e.then = "none";
            if (!obs.close_notify_sent) {
                // Does the peer end TCP at once, or wait for our answer?
                e.then = wait_raw_end(fd, std::min(until, clock_type::now() + milliseconds(200))).how;
                e.waited_for_ours = e.then == "none";
            }
            if (e.then == "none") {
                // Answer, as fast and full do, and see how TCP ends then.
                std::error_code ignored;
                (void)s.shutdown(ignored);
                e.then = wait_raw_end(fd, std::min(until, clock_type::now() + milliseconds(500))).how;
            }
        } else if (!ec) {
            // The transport ended. Our side still open: a FIN leaves CLOSE_WAIT, a reset CLOSE.
            e.how = rst_seen || (!sent_fin && tcp_state(fd) == TCP_CLOSE) ? "rst" : "fin";
        } else if (ec == tls::errc::timeout) {
            e.how = "none";
        } else if (!obs.alerts_received.empty()) {
            e.how = "alert";
            e.detail = obs.alerts_received.back();
        } else if (ec == std::errc::connection_reset) {
            e.how = "rst";
        } else {
            e.how = "error";
            e.detail = ec.message();
        }
        break;
    }
    s.set_accept_missing_close_notify(accepting);
    return e;
}

// ---------------------------------------------------------------- connecting

struct client_setup {
    const options& opt;
    tls::context ctx;
    std::string name; // SNI and hostname check (empty: neither)
    std::string negotiated;
};

int connect_tcp(const options& o)
{
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    addrinfo* found = nullptr;
    if (const int r = ::getaddrinfo(o.host.c_str(), o.port.c_str(), &hints, &found); r != 0)
        throw run_error("cannot resolve " + o.host + ": " + ::gai_strerror(r));
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(found, &::freeaddrinfo);
    std::string why = "no address";
    for (const addrinfo* a = found; a; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            why = std::strerror(errno);
            continue;
        }
        int err = 0;
        if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            err = errno;
            if (err == EINPROGRESS) {
                pollfd p{fd, POLLOUT, 0};
                const int ready = ::poll(&p, 1, static_cast<int>(o.timeout.count()));
                socklen_t len = sizeof err;
                if (ready <= 0)
                    err = ETIMEDOUT;
                else if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                    err = errno;
            }
        }
        if (err == 0) {
            ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
            return fd;
        }
        why = std::strerror(err);
        ::close(fd);
    }
    throw run_error("cannot connect to " + o.host + " port " + o.port + ": " + why);
}

// A handshake error that says what it probably means.
std::string handshake_failure(const options& o, const std::error_code& ec)
{
    std::string msg = "TLS handshake with " + o.host + " port " + o.port + " failed: " + ec.message();
    if (ec.category() == tls::openssl_category()) {
        const auto code = static_cast<unsigned long>(static_cast<unsigned int>(ec.value()));
        const int reason = ERR_GET_REASON(code);
        if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG
            || reason == SSL_R_HTTP_REQUEST || reason == SSL_R_UNEXPECTED_RECORD)
            msg += " (not a TLS server?)";
    } else if (ec == tls::errc::stream_truncated) {
        msg += " (the server closed the connection: not a TLS server?)";
    } else if (ec == tls::errc::timeout) {
        msg += " (no answer within " + std::to_string(o.timeout.count()) + " ms: not a TLS server?)";
    }
    return msg;
}

template <class Policy>
using client_stream = tls::tls_stream<tls::fd_socket, Policy>;

/// A connected socket and a handshaken stream over it (the stream borrows
/// the descriptor, which outlives it, so the socket can be watched after
/// the TLS close).
template <class Policy>
struct client_conn {
    tls::unique_socket sock;
    observer obs;
    std::unique_ptr<client_stream<Policy>> s;
    int fd() const { return sock.native_handle(); }
};

template <class Policy>
std::unique_ptr<client_conn<Policy>> open_client(client_setup& cs, SSL_SESSION* resume = nullptr)
{
    auto c = std::make_unique<client_conn<Policy>>();
    c->sock.reset(connect_tcp(cs.opt));
    c->s = std::make_unique<client_stream<Policy>>(cs.ctx, tls::fd_socket{c->fd()});
    c->obs.attach(c->s->native_handle());
    if (resume)
        SSL_set_session(c->s->native_handle(), resume);
    c->s->set_io_timeout(cs.opt.timeout);
    c->s->set_shutdown_timeout(cs.opt.timeout);
    std::error_code ec;
    if (cs.name.empty())
        c->s->connect(ec);
    else
        c->s->connect(cs.name, ec);
    if (ec) {
        std::string msg = handshake_failure(cs.opt, ec);
        const long verify = SSL_get_verify_result(c->s->native_handle());
        if (verify != X509_V_OK)
            msg += " (" + std::string(X509_verify_cert_error_string(verify)) + "; --cafile F or --insecure)";
        throw run_error(msg);
    }
    c->obs.start = clock_type::now();
    if (cs.negotiated.empty())
        cs.negotiated = SSL_get_version(c->s->native_handle());
    return c;
}

std::string http_request(const client_setup& cs, bool close)
{
    const std::string host = cs.name.empty() ? cs.opt.host : cs.name;
    return "GET " + *cs.opt.http_path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: closecheck\r\n"
           + (close ? "Connection: close\r\n" : "") + "\r\n";
}

// ---------------------------------------------------------------- reporting

struct fact {
    std::string key;
    std::string json; // a JSON value
    std::string text; // for the table
};

struct result {
    std::string id;    // JSON key
    std::string title; // table
    std::vector<fact> facts;
    std::string summary; // what it means for the user

    void add(std::string key, std::string value)
    {
        std::string j = json_string(value);
        facts.push_back({std::move(key), std::move(j), std::move(value)});
    }
    void add_number(std::string key, double value)
    {
        const bool whole = value == static_cast<double>(static_cast<long long>(value));
        std::string v = whole ? std::to_string(static_cast<long long>(value)) : fixed(value);
        facts.push_back({std::move(key), v, v});
    }
    void add_bool(std::string key, bool value)
    {
        facts.push_back({std::move(key), value ? "true" : "false", value ? "yes" : "no"});
    }
};

void add_ending(result& r, const std::string& prefix, const ending& e)
{
    r.add(prefix, e.how);
    if (e.how != "none")
        r.add_number(prefix + "_ms", std::stod(fixed(e.ms)));
    if (!e.detail.empty())
        r.add(prefix + "_detail", e.detail);
    if (e.how == "close_notify")
        r.add(prefix + "_then", e.then);
    if (e.waited_for_ours)
        r.add_bool(prefix + "_waited_for_ours", *e.waited_for_ours);
}

std::string describe(const ending& e)
{
    if (e.how == "close_notify")
        return "close_notify after " + fixed(e.ms) + " ms";
    if (e.how == "fin")
        return "a bare FIN (no close_notify) after " + fixed(e.ms) + " ms";
    if (e.how == "rst")
        return "a reset after " + fixed(e.ms) + " ms";
    if (e.how == "alert")
        return "the alert " + e.detail;
    if (e.how == "error")
        return "an error: " + e.detail;
    return "nothing";
}

void print_table(const options& o, const client_setup& cs, const std::vector<result>& results)
{
    std::printf("closecheck %s port %s, %s\n\n", o.host.c_str(), o.port.c_str(), cs.negotiated.c_str());
    int n = 0;
    for (const result& r : results) {
        std::printf("%d. %s\n", ++n, r.title.c_str());
        for (const fact& f : r.facts)
            std::printf("     %-28s %s\n", f.key.c_str(), f.text.c_str());
        std::printf("   => %s\n\n", r.summary.c_str());
    }
}

void print_json(const options& o, const client_setup& cs, const std::vector<result>& results)
{
    std::string out = "{\"host\":" + json_string(o.host) + ",\"port\":" + o.port
                      + ",\"tls_version\":" + json_string(cs.negotiated)
                      + ",\"timeout_ms\":" + std::to_string(o.timeout.count()) + ",\"experiments\":{";
    bool first = true;
    for (const result& r : results) {
        out += (first ? "" : ",") + json_string(r.id) + ":{";
        first = false;
        for (const fact& f : r.facts)
            out += json_string(f.key) + ":" + f.json + ",";
        out += "\"summary\":" + json_string(r.summary) + "}";
    }
    out += "}}\n";
    std::fputs(out.c_str(), stdout);
}

// ---------------------------------------------------------------- the experiments

std::string timeout_text(const options& o) { return std::to_string(o.timeout.count()) + " ms"; }

// 1. We close with full: close_write() (our close_notify), then read until
//    the server's answer. This is tls::full_shutdown, taken apart so that
//    each step can be watched.
result full_close(client_setup& cs)
{
    result r{"full_close", "we close first (full_shutdown): does the server answer our close_notify?", {}, {}};
    auto c = open_client<tls::full_shutdown>(cs);
    std::error_code ec;
    const auto began = clock_type::now();
    c->obs.start = began;
    c->s->close_write(ec);
    if (ec)
        throw run_error("sending close_notify failed: " + ec.message());
    const ending e = read_until_end(*c->s, c->obs, began + cs.opt.timeout);
    add_ending(r, "answer", e);
    if (e.bytes > 0)
        r.add_number("data_bytes_before", static_cast<double>(e.bytes));
    // What tls::full_shutdown's shutdown() reports against this server
    // (this stream accepted a missing close_notify while it watched).
    r.add("full_shutdown_reports", e.how == "close_notify"            ? "complete"
                                   : e.how == "fin" || e.how == "rst" ? "sent, stream_truncated"
                                   : e.how == "none"                  ? "sent, timeout"
                                                                      : "sent, " + e.detail);
    if (e.how == "close_notify")
        r.summary = "answers close_notify (" + fixed(e.ms) + " ms): tls::full_shutdown completes";
    else if (e.how == "fin")
        r.summary = "ends with a bare FIN instead of answering: tls::full_shutdown reports stream_truncated; "
                    "fast_shutdown, which does not wait for the answer, fits this server";
    else if (e.how == "rst")
        r.summary = "resets instead of answering: tls::full_shutdown reports stream_truncated; use fast_shutdown";
    else if (e.how == "alert")
        r.summary = "answers with the alert " + e.detail + ": tls::full_shutdown fails";
    else if (e.how == "none")
        r.summary = "does not answer within " + timeout_text(cs.opt)
                    + ": tls::full_shutdown waits its whole timeout; use fast_shutdown";
    else
        r.summary = "the close failed: " + e.detail;
    return r;
}

// 2. The server closes first: after an HTTP request with Connection: close,
//    or when it finds the connection idle.
result server_close(client_setup& cs)
{
    result r{"server_close", "the server closes first: close_notify before its FIN?", {}, {}};
    auto c = open_client<tls::fast_shutdown>(cs);
    const bool http = cs.opt.http_path.has_value();
    r.add("trigger", http ? "http request with Connection: close" : "idle");
    if (http) {
        std::error_code ec;
        c->s->write_all(bytes_of(http_request(cs, true)), ec);
        if (ec)
            throw run_error("sending the HTTP request failed: " + ec.message());
    }
    const ending e = read_until_end(*c->s, c->obs, clock_type::now() + cs.opt.timeout);
    add_ending(r, "ending", e);
    r.add_number("data_bytes", static_cast<double>(e.bytes));
    if (e.how == "close_notify")
        r.summary = "sends close_notify before closing: a strict client can tell a complete response from a "
                    "truncated one";
    else if (e.how == "fin")
        r.summary = "ends with a bare FIN: responses from this server cannot be told from truncated ones by a strict "
                    "client (it reads stream_truncated; set_accept_missing_close_notify() accepts it)";
    else if (e.how == "rst")
        r.summary = "resets the connection: the last bytes of a response may be lost";
    else if (e.how == "alert")
        r.summary = "ends with the alert " + e.detail;
    else if (e.how == "none")
        r.summary = std::string("did not close within ") + timeout_text(cs.opt)
                    + (http ? " after a Connection: close request" : " (its idle timeout is longer; try --http)");
    else
        r.summary = "the connection failed: " + e.detail;
    return r;
}

// Waits (up to 200 ms, or the timeout) for something to arrive without
// reading it, then until the bytes waiting stop growing for 20 ms: the
// server's tickets come in one or several segments right after the handshake.
void wait_for_arrivals(int fd, milliseconds timeout)
{
    const auto until = clock_type::now() + std::min(timeout, milliseconds(200));
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, ms_left(until)) <= 0)
        return;
    int seen = unread_bytes(fd);
    for (;;) {
        const timespec step{0, 20'000'000};
        ::nanosleep(&step, nullptr);
        const int now = unread_bytes(fd);
        if (now == seen || clock_type::now() >= until)
            return;
        seen = now;
    }
}

// 3. A write-only TLS 1.3 client (scenario 23): it sends and never reads, so
//    the tickets sit unread when it closes; tls_stream's close processes them.
result write_only(client_setup& cs)
{
    result r{"write_only", "a write-only TLS 1.3 client: tickets, and does our close still end cleanly?", {}, {}};
    if (cs.negotiated != "TLSv1.3") {
        r.add_bool("applicable", false);
        r.summary = "not applicable: " + cs.negotiated + " has no post-handshake tickets";
        return r;
    }
    auto c = open_client<tls::fast_shutdown>(cs);
    r.add_bool("applicable", true);
    std::error_code ec;
    // The start of a request, not all of it: the server has nothing to
    // answer yet, so what arrives is the tickets alone.
    std::string payload = cs.opt.http_path ? http_request(cs, false) : std::string("closecheck\r\n\r\n");
    payload.resize(payload.size() - 2);
    c->s->write_all(bytes_of(payload), ec);
    if (ec)
        throw run_error("writing failed: " + ec.message());
    wait_for_arrivals(c->fd(), cs.opt.timeout);
    const int unread_before = unread_bytes(c->fd());
    const tls::shutdown_result res = c->s->shutdown(ec);
    // Counted by the message callback: the tickets the close itself processed.
    r.add_number("tickets", c->obs.tickets);
    r.add_number("unread_bytes_before_close", unread_before);
    r.add_bool("close_notify_sent", res == tls::shutdown_result::sent || res == tls::shutdown_result::complete);
    // Our FIN followed our close_notify; what does the server do next? (What
    // arrives after our close, e.g. its answer to our close_notify, is read
    // here; a socket closed without reading it would send a reset.)
    const raw_end after = wait_raw_end(c->fd(), clock_type::now() + cs.opt.timeout);
    r.add("server_then", after.how);
    r.add_number("server_bytes_then", static_cast<double>(after.bytes));
    std::string s = c->obs.tickets > 0
                        ? "sends " + std::to_string(c->obs.tickets)
                              + " ticket(s) that a write-only client never reads (" + std::to_string(unread_before)
                              + " bytes unread when the close began); the close processed them"
                        : "no ticket had arrived";
    if (after.how == "rst")
        s += "; the server reset the connection after our close_notify and FIN (our close_notify may be lost)";
    else if (after.how == "fin")
        s += "; the server then ended with a FIN, no reset (the client's view: the server's own log tells "
             "whether it read our close_notify)";
    else
        s += "; the server did not close within " + timeout_text(cs.opt);
    r.summary = s;
    return r;
}

// 4. Half-close: after our close_notify, does the server still send?
result half_close(client_setup& cs)
{
    result r{"half_close", "half-close: after our close_notify (close_write), does the server keep sending?", {}, {}};
    auto c = open_client<tls::full_shutdown>(cs);
    const bool http = cs.opt.http_path.has_value();
    std::error_code ec;
    c->s->write_all(bytes_of(http ? http_request(cs, false) : std::string("closecheck half-close probe\r\n")), ec);
    if (!ec)
        c->s->close_write(ec);
    if (ec)
        throw run_error("sending the request and close_notify failed: " + ec.message());
    r.add("sent", http ? "http request, then close_notify" : "a line, then close_notify");
    const ending e = read_until_end(*c->s, c->obs, clock_type::now() + cs.opt.timeout);
    r.add_number("bytes_after_our_close_notify", static_cast<double>(e.bytes));
    add_ending(r, "ending", e);
    const std::string sent = std::to_string(e.bytes) + " bytes";
    if (e.bytes > 0 && e.how == "close_notify")
        r.summary = "keeps sending after our close_notify (" + sent
                    + "), then its close_notify: close_write() then read_some() until 0 gets the whole answer";
    else if (e.bytes > 0)
        r.summary = "keeps sending after our close_notify (" + sent + "), but then ends with " + describe(e)
                    + ": read_some() reports that after the answer, so a half-closed client cannot tell the answer "
                      "complete";
    else
        r.summary = std::string("sent nothing after our close_notify")
                    + (http ? ": a half-closed request gets no answer; keep the write side open until the response"
                            : " (its protocol may not answer this probe; try --http)");
    return r;
}

template <class Policy>
std::string resume_after(client_setup& cs, bool& worked_around)
{
    g_sessions.reset();
    {
        auto c = open_client<Policy>(cs);
        // TLS 1.3 tickets come after the handshake; the close processes what
        // has arrived, so wait (without reading) until they have.
        wait_for_arrivals(c->fd(), cs.opt.timeout);
        std::error_code ignored;
        (void)c->s->shutdown(ignored);
        // Library bug, worked around: when the peer's FIN arrives while the
        // close consumes what has arrived (nginx answers our close_notify
        // with one), OpenSSL's "accept a missing close_notify" sets the
        // shutdown state to "received" alone, dropping "sent", and SSL_free
        // then evicts the session. Put the flag back: our close_notify did go out.
        SSL* ssl = c->s->native_handle();
        if (c->obs.close_notify_sent && (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN) == 0) {
            SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
            worked_around = true;
        }
    } // the SSL is freed: a session OpenSSL found bad is now removed, not resumable
    SSL_SESSION* s = std::exchange(g_sessions.latest, nullptr);
    if (!s)
        return "no_session";
    std::unique_ptr<SSL_SESSION, decltype(&::SSL_SESSION_free)> guard(s, &::SSL_SESSION_free);
    if (SSL_SESSION_is_resumable(s) != 1)
        return "not_resumable";
    auto c = open_client<tls::fast_shutdown>(cs, s);
    return SSL_session_reused(c->s->native_handle()) == 1 ? "resumed" : "not_resumed";
}

// 5. Resumption after a connection closed by each policy.
result resumption(client_setup& cs)
{
    result r{"resumption", "resumption: does a session from a connection closed by each policy resume?", {}, {}};
    bool worked_around = false;
    const std::string fast = resume_after<tls::fast_shutdown>(cs, worked_around);
    const std::string quiet = resume_after<tls::quiet_shutdown>(cs, worked_around);
    const std::string full = resume_after<tls::full_shutdown>(cs, worked_around);
    r.add("fast", fast);
    r.add("quiet", quiet);
    r.add("full", full);
    r.add_bool("sent_shutdown_flag_restored", worked_around);
    const bool all = fast == "resumed" && quiet == "resumed" && full == "resumed";
    const bool none = fast != "resumed" && quiet != "resumed" && full != "resumed";
    if (all)
        r.summary = "sessions resume whichever policy closed the connection";
    else if (none)
        r.summary = fast == "no_session" ? "offers no session to resume (no tickets, no session IDs)"
                                         : "does not resume sessions (every handshake is a full one)";
    else
        r.summary = "resumption depends on the policy: see above";
    if (worked_around)
        r.summary += " (closecheck restored OpenSSL's \"close_notify sent\" flag, which the close had lost: "
                     "see docs/closecheck.md)";
    return r;
}

// 6. A client that ends with a bare FIN (no close_notify): TCP
//    shutdown(SHUT_WR) under the stream, then read what the server answers.
result bare_fin(client_setup& cs)
{
    result r{"bare_fin", "we end with a bare FIN (no close_notify): what does the server answer?", {}, {}};
    auto c = open_client<tls::quiet_shutdown>(cs);
    ::shutdown(c->fd(), SHUT_WR);
    const ending e = read_until_end(*c->s, c->obs, clock_type::now() + cs.opt.timeout, true);
    add_ending(r, "answer", e);
    if (e.how == "alert")
        r.summary = "answers a missing close_notify with the alert " + e.detail
                    + ": it treats a quiet close as an error (quiet_shutdown shows up in its logs)";
    else if (e.how == "close_notify")
        r.summary = "answers a bare FIN with close_notify: it reads a quiet close as a clean end";
    else if (e.how == "fin")
        r.summary = "closes silently with a FIN: a quiet close causes no error on the wire (the server may still log "
                    "a truncation)";
    else if (e.how == "rst")
        r.summary = "resets the connection";
    else if (e.how == "none")
        r.summary = "did not close within " + timeout_text(cs.opt) + " after our FIN";
    else
        r.summary = "failed: " + e.detail;
    return r;
}

int run_client(const options& o)
{
    client_setup cs{o, tls::context::client(), o.sni.empty() ? o.host : o.sni, {}};
    SSL_CTX* ctx = cs.ctx.native_handle();
    if (o.insecure)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    if (!o.cafile.empty()) {
        std::error_code ec;
        cs.ctx.load_verify_file(o.cafile, ec);
        if (ec)
            throw run_error("cannot load --cafile " + o.cafile + ": " + ec.message());
    }
    if (o.version != 0) {
        SSL_CTX_set_min_proto_version(ctx, o.version);
        SSL_CTX_set_max_proto_version(ctx, o.version);
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
    SSL_CTX_sess_set_new_cb(ctx, &on_new_session);

    std::vector<result> results;
    results.push_back(full_close(cs));
    results.push_back(server_close(cs));
    results.push_back(write_only(cs));
    results.push_back(half_close(cs));
    results.push_back(resumption(cs));
    results.push_back(bare_fin(cs));
    if (o.json)
        print_json(o, cs, results);
    else
        print_table(o, cs, results);
    return 0;
}

// ---------------------------------------------------------------- --listen

using server_stream = tls::tls_stream<tls::unique_socket, tls::full_shutdown>;

bool request_complete(const std::string& got)
{
    const bool http = got.starts_with("GET ") || got.starts_with("HEAD ") || got.starts_with("POST ")
                      || got.starts_with("PUT ") || got.starts_with("OPTIONS ");
    return http ? got.find("\r\n\r\n") != std::string::npos : got.find('\n') != std::string::npos;
}

std::string peer_name(const sockaddr_storage& a)
{
    char host[NI_MAXHOST] = "?";
    char port[NI_MAXSERV] = "?";
    ::getnameinfo(reinterpret_cast<const sockaddr*>(&a), sizeof a, host, sizeof host, port, sizeof port,
                  NI_NUMERICHOST | NI_NUMERICSERV);
    return std::string(host) + " port " + port;
}

result serve_one(const options& o, const tls::context& ctx, int fd, const std::string& who)
{
    result r{"connection", "client " + who, {}, {}};
    r.add("client", who);
    server_stream s(ctx, tls::unique_socket{fd});
    observer obs;
    obs.attach(s.native_handle());
    s.set_io_timeout(o.timeout);
    s.set_shutdown_timeout(o.timeout);
    std::error_code ec;
    s.accept(ec);
    if (ec) {
        r.add("handshake", "failed: " + ec.message());
        r.summary = "the TLS handshake failed: " + ec.message();
        return r;
    }
    obs.start = clock_type::now();
    r.add("tls_version", SSL_get_version(s.native_handle()));
    std::string got;
    ending end = read_until_end(s, obs, clock_type::now() + o.timeout, false, &got, &request_complete);
    r.add_number("request_bytes", static_cast<double>(got.size()));
    if (end.how == "none") {
        const bool http = got.find("HTTP/1.") != std::string::npos;
        const std::string body = "closecheck: received " + std::to_string(got.size()) + " bytes\n";
        const std::string answer = http ? "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                                              + std::to_string(body.size()) + "\r\n\r\n" + body
                                        : body;
        s.write_all(bytes_of(answer), ec);
        if (ec) {
            r.add("answer", "failed: " + ec.message());
        } else {
            r.add("answer", http ? "http response (keep-alive)" : "a line");
            end = read_until_end(s, obs, clock_type::now() + o.timeout);
        }
    }
    add_ending(r, "client_close", end);
    if (end.how == "none") {
        // The client stays open: we close first; does it answer? (Times
        // from here on count from our close_notify.)
        obs.start = clock_type::now();
        s.close_write(ec);
        const ending answer = read_until_end(s, obs, clock_type::now() + o.timeout);
        add_ending(r, "answer_to_our_close_notify", answer);
        r.summary = "the client did not close within " + timeout_text(o) + "; after our close_notify it sent "
                    + describe(answer);
    } else if (end.how == "close_notify") {
        r.summary = "the client closes with close_notify (a clean end)"
                    + std::string(end.then == "fin"   ? ", then its FIN"
                                  : end.then == "rst" ? ", then a reset"
                                                      : "");
    } else if (end.how == "fin") {
        r.summary = "the client ends with a bare FIN, without close_notify (a quiet close: a strict server "
                    "reads it as a truncation)";
    } else if (end.how == "rst") {
        r.summary = "the client resets the connection";
    } else {
        r.summary = "the client ended with " + describe(end);
    }
    std::error_code ignored;
    (void)s.shutdown(ignored); // answers its close_notify, if it sent one
    return r;
}

int run_listen(const options& o)
{
    std::error_code ec;
    tls::context ctx = tls::context::server(o.cert, o.key, ec);
    if (ec)
        throw run_error("cannot use --cert " + o.cert + " --key " + o.key + ": " + ec.message());
    if (o.version != 0) {
        SSL_CTX_set_min_proto_version(ctx.native_handle(), o.version);
        SSL_CTX_set_max_proto_version(ctx.native_handle(), o.version);
    }
    tls::unique_socket listener{::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    bool v6 = listener.native_handle() >= 0;
    if (!v6)
        listener.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const int lfd = listener.native_handle();
    if (lfd < 0)
        throw run_error(std::string("socket: ") + std::strerror(errno));
    const int on = 1;
    const int off = 0;
    ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    const auto port = static_cast<std::uint16_t>(std::stoi(o.port));
    int bound = -1;
    if (v6) {
        ::setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_addr = in6addr_any;
        a.sin6_port = htons(port);
        bound = ::bind(lfd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
    } else {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_ANY);
        a.sin_port = htons(port);
        bound = ::bind(lfd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
    }
    if (bound != 0 || ::listen(lfd, 16) != 0)
        throw run_error("cannot listen on port " + o.port + ": " + std::strerror(errno));
    sockaddr_storage self{};
    socklen_t self_len = sizeof self;
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&self), &self_len);
    const int actual = ntohs(self.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(&self)->sin6_port
                                                        : reinterpret_cast<const sockaddr_in*>(&self)->sin_port);
    std::fprintf(stderr, "closecheck: listening on port %d\n", actual);
    for (long served = 0; o.count == 0 || served < o.count; ++served) {
        sockaddr_storage peer{};
        socklen_t len = sizeof peer;
        const int fd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                --served;
                continue;
            }
            throw run_error(std::string("accept: ") + std::strerror(errno));
        }
        const result r = serve_one(o, ctx, fd, peer_name(peer));
        if (o.json) {
            std::string out = "{";
            for (const fact& f : r.facts)
                out += json_string(f.key) + ":" + f.json + ",";
            out += "\"summary\":" + json_string(r.summary) + "}\n";
            std::fputs(out.c_str(), stdout);
        } else {
            std::printf("%s\n", r.title.c_str());
            for (const fact& f : r.facts)
                std::printf("     %-28s %s\n", f.key.c_str(), f.text.c_str());
            std::printf("   => %s\n\n", r.summary.c_str());
        }
        std::fflush(stdout);
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    try {
        const options o = parse(argc, argv);
        return o.listen ? run_listen(o) : run_client(o);
    } catch (const usage_error& e) {
        std::fprintf(stderr, "closecheck: %s (see closecheck --help)\n", e.what());
        return 2;
    } catch (const run_error& e) {
        std::fprintf(stderr, "closecheck: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "closecheck: %s\n", e.what());
        return 1;
    }
}
