// libFuzzer target: the engine, driven step by step in one thread. Where
// fuzz_peer runs a peer thread and waits out deadlines, here nothing ever
// waits: both ends sit on one socketpair in this thread, our tls_stream is
// driven only through its non-blocking steps (try_*), and a raw OpenSSL peer
// behind memory BIOs is pumped by hand between them. Handshakes resume a
// session saved at start-up, so an input costs no public-key operation for
// TLS 1.2 (and only the key exchange for 1.3). The handshake is still most of
// an input's cost (docs/testing.md, "Fuzzing").
//
// Input: the first byte picks our role, the TLS version, the policy and the
// mode (see `setup`). In script mode each following byte is an action of
// either end (see `action`), with its operands; in raw mode the rest of the
// input is the peer's bytes during our handshake.
//
// Checked on every input, besides what ASan/UBSan/LeakSanitizer catch:
// - the plaintext each end reads is a prefix of what the other end wrote
//   (nothing invented, reordered or duplicated, whatever the wire carried),
// - a clean end of stream (a read of 0) or a `complete` close comes only
//   after the peer really sent its close_notify,
// - a step reports `want::nothing` or an error once its work is done, and a
//   step that reports an error leaves nothing on the OpenSSL error queue,
// - the destructor and a closer finish at once when the peer has gone
//   (nothing here ever waits for a deadline).
#include <tls_stream.hpp>

#include "examples/self_signed.hpp"
#include "peer.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <system_error>

namespace {

using fuzz::check_error_queue;
using fuzz::fail;
using fuzz::peer;
using fuzz::reader;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

/// The first input byte.
struct setup {
    bool we_serve; // bit 0: our tls_stream accepts (else it connects)
    bool tls13;    // bit 1
    int policy;    // bits 2-3: fast, quiet, full, full closed through a tls::closer
    bool raw;      // bit 4: the rest is the peer's raw bytes during our handshake

    static setup from(std::uint8_t b) { return {(b & 1) != 0, (b & 2) != 0, (b >> 2) & 3, (b & 16) != 0}; }
};

/// Script actions, one byte each (modulo count), some with operands.
enum action : std::uint8_t {
    peer_data,         // [len] [len bytes]: the peer writes application data
    peer_close_notify, // the peer sends its close_notify
    peer_raw,          // [len] [len bytes]: bytes on the wire as they are
    peer_key_update,   // TLS 1.3: KeyUpdate, update requested; 1.2: a renegotiation request
    peer_ticket,       // TLS 1.3 server peer: one more NewSessionTicket
    peer_read,         // the peer reads what has arrived
    peer_end,          // the peer ends its sending side (FIN)
    our_read,          // [size]: try_read_some into a buffer of size + 1 bytes
    our_write,         // [len]: try_write_some of len + 1 bytes
    our_close_write,   // try_close_write
    our_shutdown,      // try_shutdown
    action_count
};

struct contexts {
    self_signed::credentials creds;
    std::optional<tls::context> our_client, our_server;
    SSL_CTX* peer_server[2] = {};
    SSL_CTX* peer_client[2] = {};
    tls::session our_session[2];       // for our client, issued by the peer server
    SSL_SESSION* peer_session[2] = {}; // for the peer client, issued by our server

    contexts();
    contexts(const contexts&) = delete;
    /// Gives the client end a copy of the saved session: OpenSSL marks a
    /// session as not resumable, in place, when a connection that used it
    /// ends without a close, as most inputs' connections do.
    template <class Stream>
    void use_copy(Stream& s, peer& p, bool we_serve, int v) const
    {
        if (we_serve) {
            SSL_SESSION* copy = SSL_SESSION_dup(peer_session[v]);
            SSL_set_session(p.ssl(), copy);
            SSL_SESSION_free(copy);
        } else {
            s.set_session(tls::session(SSL_SESSION_dup(our_session[v].native_handle())));
        }
    }
    contexts& operator=(const contexts&) = delete;
    ~contexts()
    {
        for (int v = 0; v < 2; ++v) {
            SSL_CTX_free(peer_server[v]);
            SSL_CTX_free(peer_client[v]);
            SSL_SESSION_free(peer_session[v]);
        }
    }
};

contexts& ctxs()
{
    static contexts c;
    return c;
}

template <class Policy>
using stream = tls::tls_stream<tls::unique_socket, Policy>;

/// Drives our handshake step and the peer's in turn, without ever waiting.
template <class Stream>
bool handshake(Stream& s, peer& p, bool we_serve)
{
    bool ours_done = false;
    bool peers_done = false;
    for (int i = 0; i < 16 && !(ours_done && peers_done); ++i) {
        if (!ours_done) {
            std::error_code ec;
            const tls::want w = we_serve ? s.try_accept(ec) : s.try_connect("localhost", ec);
            if (ec) {
                check_error_queue("a failed handshake step");
                return false;
            }
            ours_done = w == tls::want::nothing;
        }
        if (!peers_done) {
            p.receive_now();
            ERR_clear_error();
            const int r = SSL_do_handshake(p.ssl());
            p.flush();
            if (r != 1 && SSL_get_error(p.ssl(), r) != SSL_ERROR_WANT_READ)
                return false;
            peers_done = r == 1;
        }
    }
    ERR_clear_error(); // the peer's, if any
    return ours_done && peers_done;
}

/// A full handshake at start-up, to save a session for each role and version.
contexts::contexts()
{
    self_signed::generate(creds);
    our_server.emplace(tls::context::server(creds.chain_file, creds.key_file));
    our_client.emplace(tls::context::client());
    our_client->load_verify_file(creds.ca_file);
    // Runs f on our stream and the peer, connected by a new socketpair.
    const auto connected = [this](bool we_serve, int v, auto&& f) {
        int fds[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
            fail("socketpair");
        {
            stream<tls::quiet_shutdown> s(we_serve ? *our_server : *our_client, tls::unique_socket{fds[0]});
            peer p(we_serve ? peer_client[v] : peer_server[v], fds[1], !we_serve);
            f(s, p);
        }
        ::close(fds[1]);
    };
    for (int v = 0; v < 2; ++v) {
        const int version = v ? TLS1_3_VERSION : TLS1_2_VERSION;
        peer_server[v] = fuzz::peer_context(true, version, creds.chain_file, creds.key_file);
        peer_client[v] = fuzz::peer_context(false, version, creds.chain_file, creds.key_file);
        for (bool we_serve : {false, true}) {
            connected(we_serve, v, [&](stream<tls::quiet_shutdown>& s, peer& p) {
                if (!handshake(s, p, we_serve))
                    fail("the start-up handshake failed");
                // TLS 1.3 tickets come after the handshake: let the client read them.
                char sink[64];
                std::size_t got = 0;
                std::byte buf[64];
                std::size_t n = 0;
                std::error_code ec;
                for (int i = 0; i < 4; ++i) {
                    (void)s.try_read_some(buf, n, ec);
                    p.receive_now();
                    (void)SSL_read_ex(p.ssl(), sink, sizeof sink, &got);
                    p.flush();
                }
                ERR_clear_error();
                // Copies, detached from this connection (see use_copy).
                if (we_serve)
                    peer_session[v] = SSL_SESSION_dup(SSL_get0_session(p.ssl()));
                else
                    our_session[v] = tls::session(SSL_SESSION_dup(s.session().native_handle()));
            });
        }
        if (!our_session[v].resumable())
            fail("no resumable session from the peer server at start-up");
        if (!peer_session[v] || SSL_SESSION_is_resumable(peer_session[v]) != 1)
            fail(v ? "no resumable TLS 1.3 session from our server at start-up"
                   : "no resumable TLS 1.2 session from our server at start-up");
        // Every input resumes them: check once that both ends take them.
        for (bool we_serve : {false, true}) {
            connected(we_serve, v, [&](stream<tls::quiet_shutdown>& s, peer& p) {
                use_copy(s, p, we_serve, v);
                if (!handshake(s, p, we_serve) || !s.session_reused())
                    fail("a saved session was not resumed");
            });
        }
        // From now on the peer server sends tickets only when the script
        // says so (peer_ticket): two per handshake would double its cost.
        SSL_CTX_set_num_tickets(peer_server[v], 0);
    }
}

/// What each end wrote and read: what is read must be a prefix of what the
/// other end wrote.
struct ledger {
    std::string peer_wrote, we_read, we_wrote, peer_read;
    bool peer_sent_close_notify = false;

    static bool prefix(const std::string& part, const std::string& whole)
    {
        return part.size() <= whole.size() && whole.compare(0, part.size(), part) == 0;
    }
    void check() const
    {
        if (!prefix(we_read, peer_wrote))
            fail("we read plaintext the peer did not write");
        if (!prefix(peer_read, we_wrote))
            fail("the peer read plaintext we did not write");
    }
};

/// One step of ours; checks what every step must hold.
template <class Step>
tls::want our_step(const char* what, std::error_code& ec, Step&& step)
{
    const tls::want w = step();
    if (ec && w != tls::want::nothing)
        fail("a step reported an error and still wants to wait");
    check_error_queue(what);
    return w;
}

template <class Policy>
void play(const setup& cfg, reader in, stream<Policy>& s, peer& p, ledger& book)
{
    const bool peer_serves = !cfg.we_serve;
    bool closed = false; // our try_shutdown reported its end
    int actions = 0;
    while (!in.empty() && actions++ < 256) {
        std::error_code ec;
        switch (in.byte() % action_count) {
        case peer_data: {
            const auto d = in.bytes(in.byte());
            std::size_t written = 0;
            ERR_clear_error();
            if (!d.empty() && SSL_write_ex(p.ssl(), d.data(), d.size(), &written) == 1)
                book.peer_wrote.append(reinterpret_cast<const char*>(d.data()), written);
            p.flush();
            break;
        }
        case peer_close_notify:
            ERR_clear_error();
            if (SSL_shutdown(p.ssl()) >= 0)
                book.peer_sent_close_notify = true;
            p.flush();
            break;
        case peer_raw: {
            const auto d = in.bytes(in.byte());
            p.raw(d.data(), d.size());
            break;
        }
        case peer_key_update:
            ERR_clear_error();
            if (cfg.tls13)
                SSL_key_update(p.ssl(), SSL_KEY_UPDATE_REQUESTED);
            else
                SSL_renegotiate(p.ssl());
            SSL_do_handshake(p.ssl());
            p.flush();
            break;
        case peer_ticket:
            ERR_clear_error();
            if (cfg.tls13 && peer_serves) {
                SSL_new_session_ticket(p.ssl());
                SSL_do_handshake(p.ssl());
                p.flush();
            }
            break;
        case peer_read: {
            p.receive_now();
            char buf[4096];
            std::size_t got = 0;
            ERR_clear_error();
            while (SSL_read_ex(p.ssl(), buf, sizeof buf, &got) == 1)
                book.peer_read.append(buf, got);
            p.flush(); // an answer to a KeyUpdate or a close_notify
            break;
        }
        case peer_end: p.end_sending(); break;
        case our_read: {
            std::byte buf[256];
            std::size_t n = 0;
            const std::size_t size = std::size_t{in.byte()} + 1;
            const tls::want w =
                our_step("try_read_some", ec, [&] { return s.try_read_some(std::span<std::byte>(buf, size), n, ec); });
            book.we_read.append(reinterpret_cast<const char*>(buf), n);
            if (w == tls::want::nothing && !ec && n == 0 && !book.peer_sent_close_notify)
                fail("a clean end of stream without the peer's close_notify");
            break;
        }
        case our_write: {
            const std::size_t len = std::size_t{in.byte()} + 1;
            const std::string data(len, static_cast<char>('a' + book.we_wrote.size() % 26));
            std::size_t n = 0;
            (void)our_step("try_write_some", ec,
                           [&] { return s.try_write_some(std::as_bytes(std::span(data.data(), data.size())), n, ec); });
            if (n > len)
                fail("try_write_some reports more than it was given");
            book.we_wrote.append(data, 0, n);
            break;
        }
        case our_close_write: (void)our_step("try_close_write", ec, [&] { return s.try_close_write(ec); }); break;
        case our_shutdown: {
            tls::shutdown_result r{};
            const tls::want w = our_step("try_shutdown", ec, [&] { return s.try_shutdown(r, ec); });
            if (w == tls::want::nothing && !ec) {
                if (r == tls::shutdown_result::complete && !book.peer_sent_close_notify)
                    fail("a complete close without the peer's close_notify");
                closed = true;
            }
            break;
        }
        default: break;
        }
        ERR_clear_error(); // the peer's errors; each step of ours is checked in our_step
        book.check();
    }
    if (closed) { // a closed stream reads and writes nothing more
        std::byte buf[8];
        std::size_t n = 0;
        std::error_code ec;
        if (s.try_read_some(buf, n, ec) != tls::want::nothing || !ec || n != 0)
            fail("a read after the close did not fail");
    }
    ERR_clear_error();
}

/// Raw mode: the peer's bytes are all on the wire, then its FIN; our
/// handshake runs until it ends or stops making progress.
template <class Policy>
void raw_handshake(const setup& cfg, reader in, stream<Policy>& s, int peer_fd)
{
    std::size_t off = 0;
    while (off < in.n) {
        const ssize_t n = ::send(peer_fd, in.p + off, in.n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0)
            break;
        off += static_cast<std::size_t>(n);
    }
    ::shutdown(peer_fd, SHUT_WR);
    std::error_code ec;
    for (int i = 0; i < 8; ++i) {
        const tls::want w = our_step("a raw handshake step", ec,
                                     [&] { return cfg.we_serve ? s.try_accept(ec) : s.try_connect("localhost", ec); });
        if (w != tls::want::read) // done, failed, or blocked on writing
            return;
    }
}

template <class Policy>
void run(const setup& cfg, reader in)
{
    contexts& c = ctxs();
    const int v = cfg.tls13 ? 1 : 0;
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
        fail("socketpair");
    std::optional<tls::closer> closer;
    if (cfg.policy == 3)
        closer.emplace();
    {
        std::optional<stream<Policy>> s;
        s.emplace(cfg.we_serve ? *c.our_server : *c.our_client, tls::unique_socket{fds[0]});
        s->set_shutdown_timeout(1s); // never reached: nothing here waits
        if (cfg.raw) {
            raw_handshake(cfg, in, *s, fds[1]);
        } else {
            peer p(cfg.we_serve ? c.peer_client[v] : c.peer_server[v], fds[1], !cfg.we_serve);
            c.use_copy(*s, p, cfg.we_serve, v);
            ledger book;
            if (handshake(*s, p, cfg.we_serve))
                play(cfg, in, *s, p, book);
        }
        check_error_queue("the script");
        // The peer goes away, so that no close below has anything to wait for.
        ::close(fds[1]);
        const auto start = clock_type::now();
        if (closer) {
            try {
                s->close_via(*closer);
            } catch (const std::system_error&) { // nothing left to close
            }
            s.reset();
            if (!closer->run_for(1s))
                fail("a close in the closer did not end when the peer went away");
        } else {
            s.reset();
        }
        if (clock_type::now() - start > 1s)
            fail("the close waited although the peer had gone");
        check_error_queue("the destructor");
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0)
        return 0;
    const setup cfg = setup::from(data[0]);
    const reader in{data + 1, size - 1};
    switch (cfg.policy) {
    case 0: run<tls::fast_shutdown>(cfg, in); break;
    case 1: run<tls::quiet_shutdown>(cfg, in); break;
    default: run<tls::full_shutdown>(cfg, in); break;
    }
    return 0;
}
