// libFuzzer target: an adversarial peer. The first input byte picks our role,
// the closing policy and the scenario (see fuzz::config); the rest is either
// the peer's raw bytes while a tls_stream handshakes, or, after a real
// handshake, a script of peer actions (data, close_notify, raw bytes,
// KeyUpdate / renegotiation, tickets). Then the tls_stream reads to the end,
// maybe writes, and closes by its policy (shutdown() or the destructor).
// Policy value 3 is full driven by the event-loop API: try_connect (with a
// host name taken from the input), try_read_some, try_write_some and
// try_shutdown with poll(), and a destructor bound to a tls::closer.
//
// Checked on every input, besides what ASan/UBSan/LeakSanitizer catch:
// - every call returns within its deadline (plus a generous slack),
// - no exception other than std::system_error leaves a throwing call, and
//   nothing escapes the destructor (it is noexcept: that would terminate),
// - our calls leave nothing on the thread's OpenSSL error queue.
#include <tls_stream.hpp>

#include "examples/self_signed.hpp"
#include "peer.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string_view>
#include <system_error>
#include <thread>

namespace {

using fuzz::check_error_queue;
using fuzz::fail;
using fuzz::reader;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// Deadlines for our stream: short, so that a silent peer costs little.
constexpr std::chrono::milliseconds io_timeout{50};
constexpr std::chrono::milliseconds shutdown_timeout{50};
// A call that takes longer than its deadline plus this has hung.
constexpr std::chrono::milliseconds slack{3000};

struct contexts {
    self_signed::credentials creds;
    std::optional<tls::context> our_client, our_server;
    SSL_CTX* peer_server[2] = {};
    SSL_CTX* peer_client[2] = {};

    contexts()
    {
        self_signed::generate(creds);
        our_server.emplace(tls::context::server(creds.chain_file, creds.key_file));
        our_client.emplace(tls::context::client());
        our_client->load_verify_file(creds.ca_file);
        for (int v = 0; v < 2; ++v) {
            const int version = v ? TLS1_3_VERSION : TLS1_2_VERSION;
            peer_server[v] = fuzz::peer_context(true, version, creds.chain_file, creds.key_file);
            peer_client[v] = fuzz::peer_context(false, version, creds.chain_file, creds.key_file);
        }
    }
    contexts(const contexts&) = delete;
    contexts& operator=(const contexts&) = delete;
    ~contexts()
    {
        for (SSL_CTX* c : peer_server)
            SSL_CTX_free(c);
        for (SSL_CTX* c : peer_client)
            SSL_CTX_free(c);
    }
};

contexts& ctxs()
{
    static contexts c;
    return c;
}

/// Runs `f`, failing if it takes longer than `limit` + slack.
template <class F>
void bounded(std::chrono::milliseconds limit, const char* what, F&& f)
{
    const auto start = clock_type::now();
    f();
    if (clock_type::now() - start > limit + slack)
        fail(what);
}

/// The peer's side after a real handshake: plays the script, then ends the transport.
void play_script(fuzz::peer& peer, reader in, bool tls13, bool peer_is_server)
{
    int actions = 0;
    while (!in.empty() && actions++ < 64) {
        ERR_clear_error();
        switch (in.byte() % fuzz::op_count) {
        case fuzz::op_data: {
            const auto d = in.bytes(in.byte());
            std::size_t written = 0;
            if (!d.empty())
                SSL_write_ex(peer.ssl(), d.data(), d.size(), &written);
            break;
        }
        case fuzz::op_close_notify: SSL_shutdown(peer.ssl()); break;
        case fuzz::op_raw: {
            peer.flush();
            const auto d = in.bytes(in.byte());
            peer.raw(d.data(), d.size());
            break;
        }
        case fuzz::op_key_update:
            if (tls13)
                SSL_key_update(peer.ssl(), SSL_KEY_UPDATE_REQUESTED);
            else
                SSL_renegotiate(peer.ssl());
            SSL_do_handshake(peer.ssl());
            break;
        case fuzz::op_ticket:
            if (tls13 && peer_is_server) {
                SSL_new_session_ticket(peer.ssl());
                SSL_do_handshake(peer.ssl());
            }
            break;
        default: break;
        }
        peer.flush();
    }
    ERR_clear_error();
}

/// Runs a step until it finishes or `limit` passes, polling for what it wants.
template <class Step>
void run_steps(int fd, std::chrono::milliseconds limit, Step&& step)
{
    const auto until = clock_type::now() + limit;
    for (;;) {
        const tls::want w = step();
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(until - clock_type::now());
        if (w == tls::want::nothing || left.count() <= 0)
            return;
        pollfd p{fd, static_cast<short>(w == tls::want::write ? POLLOUT : POLLIN), 0};
        ::poll(&p, 1, static_cast<int>(left.count()));
    }
}

template <class Policy>
void run(const fuzz::config& cfg, const std::uint8_t* data, std::size_t size)
{
    const bool steps = cfg.policy == 3;
    tls::closer closer;
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
        fail("socketpair");
    tls::unique_socket ours{fds[0]};
    int peer_fd = fds[1];
    contexts& c = ctxs();
    const bool peer_is_server = !cfg.our_role_server;

    {
        // optional: so that the destructor runs where its duration is measured.
        std::optional<tls::tls_stream<tls::unique_socket, Policy>> s;
        s.emplace(cfg.our_role_server ? *c.our_server : *c.our_client, std::move(ours));
        s->set_io_timeout(io_timeout);
        s->set_shutdown_timeout(shutdown_timeout);
        std::error_code ec;
        const auto raw_handshake = [&] {
            bounded(io_timeout, "handshake past its deadline", [&] {
                if (cfg.our_role_server) {
                    s->accept(ec);
                } else if (steps) {
                    // The host name is fuzzed too: the input's first bytes, up
                    // to the first 0x0a (NUL bytes and over-long names included).
                    const std::string_view in(reinterpret_cast<const char*>(data), size);
                    const std::string_view host = in.substr(0, std::min<std::size_t>(in.find('\n'), 300));
                    run_steps(s->socket().native_handle(), io_timeout, [&] { return s->try_connect(host, ec); });
                    const bool bad_name =
                        host.empty() || host.size() > 255 || host.find('\0') != std::string_view::npos;
                    if (bad_name && ec != std::errc::invalid_argument)
                        fail("a bad host name was not refused");
                } else {
                    s->connect(ec);
                }
            });
        };

        std::optional<fuzz::peer> peer;
        if (cfg.real_handshake) {
            SSL_CTX* pctx = peer_is_server ? c.peer_server[cfg.tls13] : c.peer_client[cfg.tls13];
            peer.emplace(pctx, peer_fd, peer_is_server);
            bool peer_ok = false;
            // A real handshake may take long under the sanitizers: its own,
            // longer deadline; the short one applies from then on.
            s->set_io_timeout(2s);
            std::thread t([&] { peer_ok = peer->handshake(2s); });
            bounded(2s, "handshake past its deadline", [&] {
                if (cfg.our_role_server)
                    s->accept(ec);
                else
                    s->connect("localhost", ec);
            });
            t.join();
            s->set_io_timeout(io_timeout);
            ERR_clear_error(); // the peer ran on another thread; this clears nothing of ours
            if (peer_ok)
                play_script(*peer, reader{data, size}, cfg.tls13, peer_is_server);
        } else {
            // The peer's bytes are all on the wire before we start.
            std::size_t off = 0;
            while (off < size) {
                const ssize_t n = ::send(peer_fd, data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n <= 0)
                    break;
                off += static_cast<std::size_t>(n);
            }
        }
        // The peer ends the transport: half-close (it could still read) or close.
        if (cfg.peer_closes) {
            ::close(peer_fd);
            peer_fd = -1;
        } else {
            ::shutdown(peer_fd, SHUT_WR);
        }

        if (!cfg.real_handshake)
            raw_handshake();
        check_error_queue("the handshake");

        if (!ec) {
            if (cfg.close_write_first) {
                bounded(shutdown_timeout, "close_write past its deadline", [&] { s->close_write(ec); });
                check_error_queue("close_write");
            }
            std::byte buf[4096];
            for (int i = 0; i < 64; ++i) {
                std::size_t n = 0;
                bounded(io_timeout, "read_some past its deadline", [&] {
                    // Alternate the overloads: the throwing one may throw only std::system_error.
                    if (steps) {
                        run_steps(s->socket().native_handle(), io_timeout,
                                  [&] { return s->try_read_some(buf, n, ec); });
                    } else if (i % 2) {
                        n = s->read_some(buf, ec);
                    } else {
                        try {
                            n = s->read_some(buf);
                        } catch (const std::system_error& e) {
                            ec = e.code();
                        }
                    }
                });
                check_error_queue("read_some");
                if (n == 0 || ec)
                    break;
            }
            const std::byte reply[] = {std::byte{'o'}, std::byte{'k'}};
            bounded(io_timeout, "write_some past its deadline", [&] {
                if (steps) {
                    std::size_t n = 0;
                    (void)s->try_write_some(reply, n, ec);
                } else {
                    s->write_some(reply, ec);
                }
            });
            check_error_queue("write_some");
        }
        if (cfg.explicit_shutdown) {
            bounded(shutdown_timeout, "shutdown past its deadline", [&] {
                if (steps) {
                    tls::shutdown_result r{};
                    run_steps(s->socket().native_handle(), shutdown_timeout + 1s,
                              [&] { return s->try_shutdown(r, ec); });
                    if (!ec && !s->shutdown_deadline()) // a close that ran has its deadline
                        fail("try_shutdown left no deadline");
                } else {
                    (void)s->shutdown(ec);
                }
            });
            check_error_queue("shutdown");
        }
        if (steps) {
            try {
                s->close_via(closer);
            } catch (const std::system_error&) { // nothing left to close
            }
            bounded(0ms, "a bound destructor waited", [&] { s.reset(); });
            bounded(shutdown_timeout, "the closer past the close's deadline", [&] {
                if (!closer.run_for(shutdown_timeout + 1s))
                    fail("a close in the closer outlived its deadline");
            });
            check_error_queue("the closer");
        } else {
            bounded(shutdown_timeout, "the destructor past its deadline", [&] { s.reset(); });
        }
    }
    if (peer_fd >= 0)
        ::close(peer_fd);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size == 0)
        return 0;
    const fuzz::config cfg = fuzz::config::from(data[0]);
    switch (cfg.policy) {
    case 0: run<tls::fast_shutdown>(cfg, data + 1, size - 1); break;
    case 1: run<tls::quiet_shutdown>(cfg, data + 1, size - 1); break;
    default: run<tls::full_shutdown>(cfg, data + 1, size - 1); break;
    }
    check_error_queue("the destructor");
    return 0;
}
