// What deployments configure: session resumption (by hand, serialised, and
// through the context's cache), ALPN, client certificates, CA directories,
// protocol versions, ciphers, key logging, and the errors for bad input.
#include "support/interop.hpp"
#include "support/support.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

using Catch::Matchers::ContainsSubstring;
using support::bytes;
using namespace std::chrono_literals;

namespace {

template <class Policy>
using stream = tls::tls_stream<tls::unique_socket, Policy>;
using fast_stream = stream<tls::fast_shutdown>;

// ---------------------------------------------------------------- credentials for client certificates

// A client CA with a client certificate (clientAuth), and a stranger: a
// client certificate from a CA nobody trusts. Written to a temp dir.
struct client_credentials {
    self_signed::credentials files; // only dir is used: removed with it
    std::string ca_file;            // the client CA, for the server to trust
    std::string chain_file;         // client certificate, then its CA
    std::string key_file;
    std::string stranger_chain_file; // signed by an untrusted CA
    std::string stranger_key_file;
};

self_signed::detail::x509_ptr make_cert(EVP_PKEY* key, const char* cn, X509* issuer, EVP_PKEY* issuer_key, long serial)
{
    namespace d = self_signed::detail;
    d::x509_ptr cert(X509_new());
    d::check(cert != nullptr, "X509_new");
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 7L * 24 * 3600);
    X509_set_pubkey(cert.get(), key);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("tls_stream tests"), -1,
                               -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
    X509* signer = issuer ? issuer : cert.get();
    X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
    if (issuer) {
        d::add_ext(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
        d::add_ext(cert.get(), signer, NID_ext_key_usage, "clientAuth");
    } else {
        d::add_ext(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
        d::add_ext(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    }
    d::check(X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
    return cert;
}

const client_credentials& client_creds()
{
    static const std::unique_ptr<client_credentials> instance = [] {
        namespace d = self_signed::detail;
        auto c = std::make_unique<client_credentials>();
        std::string dir = (std::filesystem::temp_directory_path() / "tls_stream-client-XXXXXX").string();
        d::check(mkdtemp(dir.data()) != nullptr, "mkdtemp");
        c->files.dir = dir;
        auto ca_key = d::new_key();
        auto ca = make_cert(ca_key.get(), "client CA", nullptr, nullptr, 1);
        auto key = d::new_key();
        auto leaf = make_cert(key.get(), "client", ca.get(), ca_key.get(), 2);
        auto other_ca_key = d::new_key();
        auto other_ca = make_cert(other_ca_key.get(), "other CA", nullptr, nullptr, 3);
        auto other_key = d::new_key();
        auto other = make_cert(other_key.get(), "stranger", other_ca.get(), other_ca_key.get(), 4);
        const std::filesystem::path p = dir;
        c->ca_file = (p / "client-ca.pem").string();
        c->chain_file = (p / "client-chain.pem").string();
        c->key_file = (p / "client-key.pem").string();
        c->stranger_chain_file = (p / "stranger-chain.pem").string();
        c->stranger_key_file = (p / "stranger-key.pem").string();
        d::write_pem(c->ca_file, [&](FILE* f) { return PEM_write_X509(f, ca.get()) == 1; });
        d::write_pem(c->chain_file,
                     [&](FILE* f) { return PEM_write_X509(f, leaf.get()) == 1 && PEM_write_X509(f, ca.get()) == 1; });
        d::write_pem(c->key_file, [&](FILE* f) {
            return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1;
        });
        d::write_pem(c->stranger_chain_file, [&](FILE* f) {
            return PEM_write_X509(f, other.get()) == 1 && PEM_write_X509(f, other_ca.get()) == 1;
        });
        d::write_pem(c->stranger_key_file, [&](FILE* f) {
            return PEM_write_PrivateKey(f, other_key.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1;
        });
        return c;
    }();
    return *instance;
}

// A fresh private temp dir, removed at the end of the scope.
struct temp_dir {
    std::filesystem::path path;
    temp_dir()
    {
        std::string p = (std::filesystem::temp_directory_path() / "tls_stream-config-XXXXXX").string();
        support::ensure(mkdtemp(p.data()) != nullptr, "mkdtemp");
        path = p;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir()
    {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
};

std::string slurp(const std::filesystem::path& p)
{
    std::ifstream in(p);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// ---------------------------------------------------------------- connections

// A tls_stream client against a raw OpenSSL server using `server_ctx`.
template <class Policy>
struct client_conn {
    support::socket_pair pair = support::tcp_pair();
    support::raw_peer peer;
    std::optional<stream<Policy>> s;
    std::string host = "localhost"; // connect(host); empty: connect() without a name

    client_conn(const tls::context& server_ctx, const tls::context& client_ctx) : peer(server_ctx, std::move(pair.b))
    {
        s.emplace(client_ctx, std::move(pair.a));
        s->set_io_timeout(5s);
    }

    // The handshake, with `before` run on the stream first (set_session).
    template <class F = void (*)(stream<Policy>&)>
    void handshake(F before = [](stream<Policy>&) {})
    {
        before(*s);
        support::peer_thread t([this] { peer.accept(); });
        if (host.empty())
            s->connect();
        else
            s->connect(host);
        t.join();
    }

    // Destroys the stream (its policy closes) while the peer reads to the
    // end and answers close_notify, as a polite server does.
    void close()
    {
        support::peer_thread t([this] {
            peer.read_to_end();
            peer.shutdown();
        });
        s.reset();
        t.join();
    }
};

template <class F>
std::string thrown_what(F&& f)
{
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "(nothing thrown)";
}

const std::error_code invalid = std::make_error_code(std::errc::invalid_argument);

} // namespace

// ---------------------------------------------------------------- sessions

TEST_CASE("session() is empty until TLS 1.3 tickets are read, and at once with TLS 1.2", "[config][session]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(support::version_name(version));
    const tls::context server = support::server_context(version);
    const tls::context client = support::client_context(version);
    client_conn<tls::fast_shutdown> c(server, client);
    CHECK_FALSE(c.s->session()); // before the handshake
    c.handshake();
    CHECK(static_cast<bool>(c.s->session()) == (version == TLS1_2_VERSION));
    CHECK(support::ping_pong(*c.s, c.peer) == "pong");
    const tls::session sess = c.s->session();
    REQUIRE(sess);
    CHECK(sess.resumable());
    CHECK_FALSE(c.s->session_reused());
    c.close();
}

TEMPLATE_TEST_CASE("a session taken from a stream resumes after the stream closed by its policy", "[config][session]",
                   tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(support::version_name(version));
    const tls::context server = support::server_context(version);
    const tls::context client = support::client_context(version);
    tls::session sess;
    {
        client_conn<TestType> first(server, client);
        first.handshake();
        CHECK(support::ping_pong(*first.s, first.peer) == "pong");
        sess = first.s->session();
        REQUIRE(sess);
        first.close();
    }
    CHECK(sess.resumable()); // no close of any policy spoils it
    client_conn<TestType> second(server, client);
    second.handshake([&](stream<TestType>& s) { s.set_session(sess); });
    CHECK(second.s->session_reused());
    CHECK(SSL_session_reused(second.peer.ssl()) == 1);
    CHECK(support::ping_pong(*second.s, second.peer) == "pong");
    second.close();
}

TEMPLATE_TEST_CASE("the context's session cache resumes connect(host) after a close by each policy",
                   "[config][session]", tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(support::version_name(version));
    const tls::context server = support::server_context(version);
    tls::context client = support::client_context(version);
    client.enable_session_cache(8);
    {
        client_conn<TestType> first(server, client);
        first.handshake();
        CHECK_FALSE(first.s->session_reused());
        CHECK(support::ping_pong(*first.s, first.peer) == "pong");
        first.close();
    }
    CHECK(client.cached_sessions() == 1);
    client_conn<TestType> second(server, client);
    second.handshake();
    CHECK(second.s->session_reused());
    CHECK(support::ping_pong(*second.s, second.peer) == "pong");
    second.close();
    CHECK(client.cached_sessions() == 1);
}

TEST_CASE("the session cache keys sessions by the name given to connect", "[config][session]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(support::version_name(version));
    const tls::context server = support::server_context(version);
    tls::context client = support::client_context(version);
    client.enable_session_cache(2);
    // Returns whether the connection to `host` resumed.
    const auto visit = [&](const std::string& host) {
        client_conn<tls::full_shutdown> c(server, client);
        c.host = host;
        c.handshake();
        CHECK(support::ping_pong(*c.s, c.peer) == "pong");
        const bool reused = c.s->session_reused();
        c.close();
        return reused;
    };
    CHECK_FALSE(visit("localhost"));
    CHECK_FALSE(visit("127.0.0.1")); // another name, even for the same server
    CHECK(client.cached_sessions() == 2);
    CHECK_FALSE(visit("")); // connect() without a name neither uses nor fills the cache
    CHECK(client.cached_sessions() == 2);
    CHECK(visit("localhost"));
    CHECK(visit("127.0.0.1"));
}

TEST_CASE("a write-only TLS 1.3 client closed by full leaves a session to resume", "[config][session]")
{
    const tls::context server = support::server_context(TLS1_3_VERSION);
    tls::context client = support::client_context(TLS1_3_VERSION);
    client.enable_session_cache();
    tls::session sess;
    {
        client_conn<tls::full_shutdown> first(server, client);
        first.handshake();
        first.s->write_all(bytes("only writing"));
        CHECK_FALSE(first.s->session()); // no ticket read yet
        support::peer_thread t([&first] {
            support::ensure(first.peer.read_to_end().first == "only writing", "raw peer: wrong data");
            first.peer.shutdown();
        });
        CHECK(first.s->shutdown() == tls::shutdown_result::complete);
        t.join();
        sess = first.s->session(); // the full close read the tickets
        REQUIRE(sess);
    }
    CHECK(client.cached_sessions() == 1);

    SECTION("through the cache")
    {
        client_conn<tls::full_shutdown> second(server, client);
        second.handshake();
        CHECK(second.s->session_reused());
        second.close();
    }
    SECTION("by hand")
    {
        client_conn<tls::full_shutdown> second(server, client);
        second.handshake([&](stream<tls::full_shutdown>& s) { s.set_session(sess); });
        CHECK(second.s->session_reused());
        second.close();
    }
}

TEST_CASE("a session saved as bytes resumes in a later context with the same session id context", "[config][session]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(support::version_name(version));
    const tls::context server = support::server_context(version);
    std::vector<std::byte> saved;
    {
        tls::context client = support::client_context(version);
        client.set_session_id_context("config test client");
        client_conn<tls::full_shutdown> first(server, client);
        first.handshake();
        CHECK(support::ping_pong(*first.s, first.peer) == "pong");
        saved = first.s->session().to_bytes();
        first.close();
    }
    REQUIRE_FALSE(saved.empty());

    // As in a later run of the program: a new context, the session from disk.
    tls::context client = support::client_context(version);
    client.set_session_id_context("config test client");
    const tls::session restored = tls::session::from_bytes(saved);
    CHECK(restored.resumable());
    CHECK(restored.to_bytes() == saved);
    client_conn<tls::full_shutdown> second(server, client);
    second.handshake([&](stream<tls::full_shutdown>& s) { s.set_session(restored); });
    CHECK(second.s->session_reused());
    second.close();
}

TEST_CASE("a session from another context is refused with a clear error", "[config][session]")
{
    const tls::context server = support::server_context();
    const tls::context client = support::client_context();
    tls::session from_client;
    tls::session from_server;
    {
        client_conn<tls::full_shutdown> c(server, client);
        c.handshake();
        CHECK(support::ping_pong(*c.s, c.peer) == "pong");
        from_client = c.s->session();
        from_server = tls::session(SSL_get1_session(c.peer.ssl()));
        c.close();
    }
    REQUIRE(from_client);
    REQUIRE(from_server);

    const tls::context other = support::client_context();
    auto p = support::tcp_pair();
    fast_stream s(other, std::move(p.a));
    std::error_code ec;
    s.set_session(from_client, ec);
    CHECK(ec == invalid);
    CHECK_THAT(thrown_what([&] { s.set_session(from_client); }),
               ContainsSubstring("tls::tls_stream::set_session: the session comes from another tls::context"));

    fast_stream same(client, std::move(p.b));
    same.set_session(from_server, ec); // a server's session is not a client's
    CHECK(ec == invalid);
    same.set_session(from_client, ec);
    CHECK(!ec);
}

TEST_CASE("corrupt or empty session bytes are refused", "[config][session]")
{
    const tls::context server = support::server_context();
    const tls::context client = support::client_context();
    std::vector<std::byte> good;
    {
        client_conn<tls::full_shutdown> c(server, client);
        c.handshake();
        CHECK(support::ping_pong(*c.s, c.peer) == "pong");
        good = c.s->session().to_bytes();
        c.close();
    }
    std::error_code ec;

    SECTION("empty")
    {
        CHECK_FALSE(tls::session::from_bytes({}, ec));
        CHECK(ec == invalid);
    }
    SECTION("garbage")
    {
        const std::string junk = support::pattern(200, 14);
        CHECK_FALSE(tls::session::from_bytes(bytes(junk), ec));
        CHECK(ec);
        CHECK_THAT(thrown_what([&] { tls::session::from_bytes(bytes(junk)); }),
                   ContainsSubstring("tls::session::from_bytes"));
    }
    SECTION("truncated")
    {
        const std::span<const std::byte> half(good.data(), good.size() / 2);
        CHECK_FALSE(tls::session::from_bytes(half, ec));
        CHECK(ec);
    }
    SECTION("with trailing bytes")
    {
        std::vector<std::byte> longer = good;
        longer.push_back(std::byte{0});
        CHECK_FALSE(tls::session::from_bytes(longer, ec));
        CHECK(ec == invalid);
    }
    SECTION("an empty session has no bytes")
    {
        CHECK(tls::session{}.to_bytes(ec).empty());
        CHECK(ec == invalid);
    }
    CHECK(ERR_peek_error() == 0);
}

TEST_CASE("set_session is refused after the handshake, on a moved-from stream and for an empty session",
          "[config][session]")
{
    const tls::context server = support::server_context();
    const tls::context client = support::client_context();
    client_conn<tls::full_shutdown> c(server, client);
    std::error_code ec;
    c.s->set_session(tls::session{}, ec);
    CHECK(ec == invalid);
    CHECK_THAT(thrown_what([&] { c.s->set_session(tls::session{}); }), ContainsSubstring("empty session"));
    c.handshake();
    CHECK(support::ping_pong(*c.s, c.peer) == "pong");
    const tls::session sess = c.s->session();
    c.s->set_session(sess, ec);
    CHECK(ec == tls::errc::already_connected);
    stream<tls::full_shutdown> moved(std::move(*c.s));
    c.s->set_session(sess, ec);
    CHECK(ec == tls::errc::not_connected);
    CHECK_FALSE(c.s->session());
    CHECK_FALSE(c.s->session_reused());
    CHECK(c.s->alpn_protocol().empty());
    CHECK(c.s->peer_subject().empty());
    c.s.emplace(std::move(moved));
    c.close();
}

TEST_CASE("sessions are shared by reference count", "[config][session][raii]")
{
    STATIC_REQUIRE(std::is_nothrow_copy_constructible_v<tls::session>);
    STATIC_REQUIRE(std::is_nothrow_move_constructible_v<tls::session>);
    tls::session a(SSL_SESSION_new());
    REQUIRE(a);
    tls::session b = a;
    CHECK(b.native_handle() == a.native_handle());
    tls::session c = std::move(a);
    CHECK_FALSE(a); // NOLINT(bugprone-use-after-move): checks the moved-from state
    const tls::session& alias = c;
    c = alias; // self-assignment keeps the reference
    b = tls::session{};
    CHECK(c);
    CHECK_FALSE(c.resumable()); // a new SSL_SESSION has neither id nor ticket
}

// ---------------------------------------------------------------- ALPN

TEST_CASE("ALPN: the server picks by its own preference and both ends see it", "[config][alpn]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(support::version_name(version));
    tls::context server = support::server_context(version);
    tls::context client = support::client_context(version);
    server.set_alpn_protocols({"h2", "http/1.1"});

    SECTION("common protocols")
    {
        client.set_alpn_protocols({"http/1.1", "spdy/1", "h2"});
        client_conn<tls::full_shutdown> c(server, client);
        c.handshake();
        CHECK(c.s->alpn_protocol() == "h2");
        const unsigned char* p = nullptr;
        unsigned int n = 0;
        SSL_get0_alpn_selected(c.peer.ssl(), &p, &n);
        CHECK(std::string(reinterpret_cast<const char*>(p), n) == "h2");
        c.close();
    }
    SECTION("a client without ALPN gets none")
    {
        client_conn<tls::full_shutdown> c(server, client);
        c.handshake();
        CHECK(c.s->alpn_protocol().empty());
        c.close();
    }
    SECTION("nothing in common ends the handshake with no_application_protocol")
    {
        client.set_alpn_protocols({"imap"});
        client_conn<tls::full_shutdown> c(server, client);
        support::peer_thread t([&c] {
            ERR_clear_error();
            support::ensure(SSL_accept(c.peer.ssl()) != 1, "raw peer: the handshake should fail");
            ERR_clear_error();
        });
        std::error_code ec;
        c.s->connect("localhost", ec);
        t.join();
        CHECK(ec.category() == tls::openssl_category());
        CHECK_THAT(ec.message(), ContainsSubstring("no application protocol"));
    }
}

TEST_CASE("ALPN lists that cannot be sent are refused", "[config][alpn]")
{
    tls::context ctx = tls::context::client();
    std::error_code ec;
    ctx.set_alpn_protocols({}, ec);
    CHECK(ec == invalid);
    ctx.set_alpn_protocols({"h2", ""}, ec);
    CHECK(ec == invalid);
    ctx.set_alpn_protocols({std::string(256, 'x')}, ec);
    CHECK(ec == invalid);
    CHECK(support::thrown_code([&] { ctx.set_alpn_protocols({}); }) == invalid);
    ctx.set_alpn_protocols({std::string(255, 'x')}, ec);
    CHECK(!ec);
}

// ---------------------------------------------------------------- client certificates

TEST_CASE("a server that requires a client certificate sees the client's subject", "[config][client-cert]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(support::version_name(version));
    const auto& cc = client_creds();
    tls::context server = support::server_context(version);
    server.set_client_auth(tls::client_auth::require);
    server.load_verify_file(cc.ca_file);
    tls::context client = support::client_context(version);
    client.use_certificate_chain(cc.chain_file, cc.key_file);

    // A tls_stream on each side: the client on a thread.
    auto p = support::tcp_pair();
    fast_stream srv(server, std::move(p.b));
    srv.set_io_timeout(5s);
    std::string server_seen_by_client;
    support::peer_thread t([&] {
        fast_stream cli(client, std::move(p.a));
        cli.set_io_timeout(5s);
        cli.connect("localhost");
        server_seen_by_client = cli.peer_subject();
        support::ensure(support::read_exactly(cli, 2) == "ok", "client: expected ok");
    });
    srv.accept();
    CHECK(srv.peer_subject() == "CN=client,O=tls_stream tests");
    srv.write_all(bytes("ok"));
    t.join();
    CHECK(server_seen_by_client == "CN=localhost");
}

TEST_CASE("client certificate failures say what was wrong", "[config][client-cert]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(support::version_name(version));
    const auto& cc = client_creds();
    tls::context server = support::server_context(version);
    server.load_verify_file(cc.ca_file);
    tls::context client = support::client_context(version);

    // The client's side of a handshake that the server may refuse.
    const auto attempt = [&](const tls::context& cctx) {
        auto p = support::tcp_pair();
        auto srv = std::make_unique<fast_stream>(server, std::move(p.b));
        srv->set_io_timeout(5s);
        support::peer_thread t([&cctx, &p] {
            fast_stream cli(cctx, std::move(p.a));
            cli.set_io_timeout(5s);
            std::error_code ignored;
            cli.connect("localhost", ignored);
            std::byte b[1];
            if (!ignored) // TLS 1.3: the server's verdict comes after the client's handshake
                cli.read_some(b, ignored);
        });
        std::string what = thrown_what([&] { srv->accept(); });
        srv.reset();
        t.join();
        return what;
    };

    SECTION("required but none sent")
    {
        server.set_client_auth(tls::client_auth::require);
        CHECK_THAT(attempt(client), ContainsSubstring("peer did not return a certificate"));
    }
    SECTION("requested and none sent is fine")
    {
        server.set_client_auth(tls::client_auth::request);
        CHECK(attempt(client) == "(nothing thrown)");
    }
    SECTION("a certificate from an untrusted CA")
    {
        server.set_client_auth(tls::client_auth::request);
        client.use_certificate_chain(cc.stranger_chain_file, cc.stranger_key_file);
        const std::string what = attempt(client);
        CHECK_THAT(what, ContainsSubstring("certificate verify failed"));
        CHECK_THAT(what, ContainsSubstring("(self-signed certificate in certificate chain)"));
    }
}

TEST_CASE("a key that does not match the certificate is refused, naming both files", "[config][client-cert]")
{
    const auto& cc = client_creds();
    tls::context client = tls::context::client();
    std::error_code ec;
    client.use_certificate_chain(cc.chain_file, cc.stranger_key_file, ec);
    CHECK(ec.category() == tls::openssl_category());
    const std::string what = thrown_what([&] { client.use_certificate_chain(cc.chain_file, cc.stranger_key_file); });
    CHECK_THAT(what, ContainsSubstring("key values mismatch"));
    CHECK_THAT(what, ContainsSubstring(cc.chain_file));
    CHECK_THAT(what, ContainsSubstring(cc.stranger_key_file));
    CHECK_THAT(thrown_what([&] { client.use_certificate_chain("/nonexistent/chain.pem", cc.key_file); }),
               ContainsSubstring("/nonexistent/chain.pem"));
    CHECK(support::thrown_code([&] { client.set_client_auth(tls::client_auth::require); }) == invalid);
    CHECK(ERR_peek_error() == 0);
}

// ---------------------------------------------------------------- trust, versions, ciphers

TEST_CASE("load_verify_dir trusts a hashed directory and names a bad path", "[config][verify]")
{
    temp_dir dir;
    {
        std::unique_ptr<FILE, decltype(&std::fclose)> f(std::fopen(support::credentials().ca_file.c_str(), "r"),
                                                        &std::fclose);
        REQUIRE(f);
        std::unique_ptr<X509, decltype(&X509_free)> ca(PEM_read_X509(f.get(), nullptr, nullptr, nullptr), &X509_free);
        REQUIRE(ca);
        char name[16];
        std::snprintf(name, sizeof name, "%08lx.0", X509_subject_name_hash(ca.get()));
        std::filesystem::copy_file(support::credentials().ca_file, dir.path / name);
    }
    const tls::context server = support::server_context();
    tls::context client = tls::context::client();
    client.load_verify_dir(dir.path.string());
    client_conn<tls::full_shutdown> c(server, client);
    c.handshake(); // verified: the system store does not know the test CA
    c.close();

    std::error_code ec;
    client.load_verify_dir((dir.path / "missing").string(), ec);
    CHECK(ec == std::errc::no_such_file_or_directory);
    CHECK_THAT(thrown_what([&] { client.load_verify_dir((dir.path / "missing").string()); }),
               ContainsSubstring((dir.path / "missing").string()));
    client.load_verify_dir(support::credentials().ca_file, ec);
    CHECK(ec == std::errc::not_a_directory);
    CHECK_THAT(thrown_what([&] { client.load_verify_file((dir.path / "none.pem").string()); }),
               ContainsSubstring((dir.path / "none.pem").string()));
}

TEST_CASE("protocol versions: a range is kept, an empty one is refused", "[config][versions]")
{
    tls::context server = support::server_context();
    tls::context client = support::client_context();
    std::error_code ec;
    client.set_protocol_versions(tls::protocol_version::tls1_3, tls::protocol_version::tls1_2, ec);
    CHECK(ec == invalid);
    client.set_protocol_versions(static_cast<tls::protocol_version>(0x0301), tls::protocol_version::tls1_3, ec);
    CHECK(ec == invalid);
    CHECK(support::thrown_code(
              [&] { client.set_protocol_versions(tls::protocol_version::tls1_3, tls::protocol_version::tls1_2); })
          == invalid);

    SECTION("both ends agree on the highest common version")
    {
        server.set_protocol_versions(tls::protocol_version::tls1_2, tls::protocol_version::tls1_2);
        client.set_protocol_versions(tls::protocol_version::tls1_2, tls::protocol_version::tls1_3);
        client_conn<tls::full_shutdown> c(server, client);
        c.handshake();
        CHECK(SSL_version(c.s->native_handle()) == TLS1_2_VERSION);
        c.close();
    }
    SECTION("disjoint ranges fail the handshake")
    {
        server.set_protocol_versions(tls::protocol_version::tls1_2, tls::protocol_version::tls1_2);
        client.set_protocol_versions(tls::protocol_version::tls1_3, tls::protocol_version::tls1_3);
        client_conn<tls::full_shutdown> c(server, client);
        support::peer_thread t([&c] {
            ERR_clear_error();
            SSL_accept(c.peer.ssl());
            ERR_clear_error();
        });
        std::error_code hs;
        c.s->connect("localhost", hs);
        t.join();
        CHECK(hs);
    }
}

TEST_CASE("cipher choices are used, and bad strings are named", "[config][ciphers]")
{
    tls::context server = support::server_context();
    tls::context client = support::client_context();

    SECTION("TLS 1.2 cipher list")
    {
        client.set_protocol_versions(tls::protocol_version::tls1_2, tls::protocol_version::tls1_2);
        client.set_cipher_list("ECDHE-ECDSA-CHACHA20-POLY1305");
        client_conn<tls::full_shutdown> c(server, client);
        c.handshake();
        CHECK(std::string(SSL_get_cipher_name(c.s->native_handle())) == "ECDHE-ECDSA-CHACHA20-POLY1305");
        c.close();
    }
    SECTION("TLS 1.3 cipher suites")
    {
        client.set_ciphersuites("TLS_CHACHA20_POLY1305_SHA256");
        client_conn<tls::full_shutdown> c(server, client);
        c.handshake();
        CHECK(std::string(SSL_get_cipher_name(c.s->native_handle())) == "TLS_CHACHA20_POLY1305_SHA256");
        c.close();
    }
    SECTION("bad strings")
    {
        std::error_code ec;
        client.set_cipher_list("NO-SUCH-CIPHER", ec);
        CHECK(ec.category() == tls::openssl_category());
        CHECK_THAT(thrown_what([&] { client.set_cipher_list("NO-SUCH-CIPHER"); }),
                   ContainsSubstring("tls::context::set_cipher_list(\"NO-SUCH-CIPHER\"): no cipher match"));
        client.set_ciphersuites("TLS_NO_SUCH_SUITE", ec);
        CHECK(ec.category() == tls::openssl_category());
        CHECK_THAT(thrown_what([&] { client.set_ciphersuites("TLS_NO_SUCH_SUITE"); }),
                   ContainsSubstring("tls::context::set_ciphersuites(\"TLS_NO_SUCH_SUITE\")"));
        CHECK(ERR_peek_error() == 0);
    }
}

TEST_CASE("strings with NUL bytes are refused, never cut short", "[config][errors]")
{
    using namespace std::string_literals;
    tls::context ctx = tls::context::client();
    const std::string path = support::credentials().ca_file + "\0.bak"s;
    std::error_code ec;
    ctx.load_verify_file(path, ec);
    CHECK(ec == invalid);
    ctx.load_verify_dir("/etc\0/ssl"s, ec);
    CHECK(ec == invalid);
    ctx.use_certificate_chain(support::credentials().chain_file + "\0x"s, support::credentials().key_file, ec);
    CHECK(ec == invalid);
    ctx.set_cipher_list("DEFAULT\0:NULL"s, ec);
    CHECK(ec == invalid);
    ctx.set_ciphersuites("TLS_AES_128_GCM_SHA256\0:x"s, ec);
    CHECK(ec == invalid);
    ctx.set_keylog_file("/tmp/keys\0.log"s, ec);
    CHECK(ec == invalid);
    CHECK_THAT(thrown_what([&] { ctx.set_cipher_list("DEFAULT\0:NULL"s); }),
               ContainsSubstring("set_cipher_list(\"DEFAULT\\0:NULL\")"));
    CHECK(support::thrown_code(
              [&] { tls::context::server(support::credentials().chain_file + "\0"s, support::credentials().key_file); })
          == invalid);
}

TEST_CASE("every setter on an empty context fails cleanly", "[config][errors]")
{
    tls::context moved = tls::context::client();
    const tls::context taker = std::move(moved);
    tls::context empty;
    // NOLINTNEXTLINE(bugprone-use-after-move): checks the moved-from state
    for (tls::context* ctx : {&empty, &moved}) {
        std::error_code ec;
        const auto refused = [&ec] {
            const bool r = ec == invalid;
            ec.clear();
            return r;
        };
        ctx->load_verify_file("x", ec);
        CHECK(refused());
        ctx->load_verify_dir("/", ec);
        CHECK(refused());
        ctx->use_certificate_chain("a", "b", ec);
        CHECK(refused());
        ctx->set_client_auth(tls::client_auth::require, ec);
        CHECK(refused());
        ctx->set_protocol_versions(tls::protocol_version::tls1_2, tls::protocol_version::tls1_3, ec);
        CHECK(refused());
        ctx->set_cipher_list("DEFAULT", ec);
        CHECK(refused());
        ctx->set_ciphersuites("TLS_AES_128_GCM_SHA256", ec);
        CHECK(refused());
        ctx->set_alpn_protocols({"h2"}, ec);
        CHECK(refused());
        ctx->enable_session_cache(4, ec);
        CHECK(refused());
        ctx->set_session_id_context("x", ec);
        CHECK(refused());
        ctx->set_keylog_file("/dev/null", ec);
        CHECK(refused());
        ctx->set_keylog_callback([](std::string_view) {}, ec);
        CHECK(refused());
        CHECK_FALSE(ctx->set_keylog_file_from_env(ec));
        CHECK(refused());
        ctx->set_accept_missing_close_notify(); // a documented no-op
        CHECK_FALSE(ctx->accepts_missing_close_notify());
        CHECK(ctx->cached_sessions() == 0);
        CHECK(support::thrown_code([&] { ctx->set_alpn_protocols({"h2"}); }) == invalid);
    }
    CHECK(taker);
}

TEST_CASE("context setters refuse what does not fit the context", "[config][errors]")
{
    tls::context server = support::server_context();
    tls::context client = support::client_context();
    std::error_code ec;
    server.enable_session_cache(4, ec);
    CHECK(ec == invalid);
    client.enable_session_cache(0, ec);
    CHECK(ec == invalid);
    client.set_session_id_context("", ec);
    CHECK(ec == invalid);
    client.set_session_id_context(std::string(33, 'x'), ec);
    CHECK(ec == invalid);
    client.set_session_id_context(std::string(32, 'x'), ec);
    CHECK(!ec);
    client.set_keylog_file("", ec);
    CHECK(ec == invalid);
}

// ---------------------------------------------------------------- key log

TEST_CASE("the key log gets each connection's secrets, to a callback or a file", "[config][keylog]")
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(support::version_name(version));
    const std::string expected = version == TLS1_3_VERSION ? "CLIENT_TRAFFIC_SECRET_0 " : "CLIENT_RANDOM ";
    const tls::context server = support::server_context(version);
    tls::context client = support::client_context(version);
    temp_dir dir;

    SECTION("callback")
    {
        std::vector<std::string> lines;
        client.set_keylog_callback([&lines](std::string_view line) { lines.emplace_back(line); });
        client_conn<tls::full_shutdown> c(server, client);
        c.handshake();
        c.close();
        REQUIRE_FALSE(lines.empty());
        bool found = false;
        for (const auto& l : lines)
            found = found || l.rfind(expected, 0) == 0;
        CHECK(found);
        client.set_keylog_callback(nullptr); // off again
        client_conn<tls::full_shutdown> again(server, client);
        const std::size_t before = lines.size();
        again.handshake();
        again.close();
        CHECK(lines.size() == before);
    }
    SECTION("file, private to the user")
    {
        const auto path = dir.path / "keys.log";
        client.set_keylog_file(path.string());
        client_conn<tls::full_shutdown> c(server, client);
        c.handshake();
        c.close();
        CHECK_THAT(slurp(path), ContainsSubstring(expected));
        struct stat st {};
        REQUIRE(::stat(path.c_str(), &st) == 0);
        CHECK((st.st_mode & 0777) == 0600);
    }
    SECTION("SSLKEYLOGFILE, only when asked for")
    {
        const auto path = dir.path / "env.log";
        REQUIRE(::setenv("SSLKEYLOGFILE", path.c_str(), 1) == 0);
        {
            client_conn<tls::full_shutdown> c(server, client);
            c.handshake();
            c.close();
        }
        CHECK_FALSE(std::filesystem::exists(path)); // not asked for: ignored
        CHECK(client.set_keylog_file_from_env());
        {
            client_conn<tls::full_shutdown> c(server, client);
            c.handshake();
            c.close();
        }
        ::unsetenv("SSLKEYLOGFILE");
        CHECK_THAT(slurp(path), ContainsSubstring(expected));
        CHECK_FALSE(client.set_keylog_file_from_env());
        CHECK(support::thrown_code([&] { client.set_keylog_file((dir.path / "no/such/dir").string()); })
              == std::errc::no_such_file_or_directory);
    }
}

// ---------------------------------------------------------------- ALPN against other implementations

TEST_CASE("ALPN against openssl s_server: the server's preference wins", "[config][alpn][interop][openssl]")
{
    const auto& c = support::credentials();
    support::process srv({"openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", c.chain_file, "-key", c.key_file,
                          "-alpn", "h2,http/1.1", "-naccept", "1"});
    const auto port = srv.wait_for_line("ACCEPT 127.0.0.1:", interop::soon());
    REQUIRE(port.has_value());
    tls::context client = support::client_context();
    client.set_alpn_protocols({"http/1.1", "h2"});
    auto s = std::make_unique<fast_stream>(client, interop::connect_to(std::stoi(*port)));
    s->set_io_timeout(interop::patience);
    s->connect("localhost");
    CHECK(s->alpn_protocol() == "h2");
    CHECK(srv.wait_for_output("ALPN protocols advertised by the client: http/1.1, h2", interop::soon()));
    s.reset();
    CHECK(srv.wait(interop::patience).has_value());
}

TEST_CASE("ALPN against openssl s_client: tls_stream's server preference wins", "[config][alpn][interop][openssl]")
{
    interop::listener l;
    support::process cli({"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(l.port()), "-alpn",
                          "http/1.1,h2", "-CAfile", support::credentials().ca_file, "-verify_return_error",
                          "-servername", "localhost"});
    tls::context server = support::server_context();
    server.set_alpn_protocols({"h2", "http/1.1"});
    auto s = std::make_unique<fast_stream>(server, l.accept(interop::soon()));
    s->set_io_timeout(interop::patience);
    s->accept();
    CHECK(s->alpn_protocol() == "h2");
    CHECK(cli.wait_for_output("ALPN protocol: h2", interop::soon()));
    s.reset();
    cli.close_stdin();
    CHECK(cli.wait(interop::patience).has_value());
}

TEST_CASE("ALPN against curl --http2: a server that only speaks HTTP/1.1 says so", "[config][alpn][interop][curl]")
{
    {
        support::process version({"curl", "-V"});
        REQUIRE(version.wait(interop::patience).has_value());
        if (!interop::contains(version.output(), "HTTP2"))
            SKIP("this curl has no HTTP/2 support");
    }
    interop::listener l;
    support::process curl({"curl", "-sS", "-v", "--http2", "--cacert", support::credentials().ca_file,
                           "https://127.0.0.1:" + std::to_string(l.port()) + "/"});
    tls::context server = support::server_context();
    server.set_alpn_protocols({"http/1.1"});
    auto s = std::make_unique<stream<tls::full_shutdown>>(server, l.accept(interop::soon()));
    s->set_io_timeout(interop::patience);
    s->accept();
    CHECK(s->alpn_protocol() == "http/1.1");
    CHECK(interop::read_line(*s) == "GET / HTTP/1.1\r\n");
    while (interop::read_line(*s) != "\r\n") {
    }
    s->write_all(bytes("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nhello over ALPN\n"));
    s.reset();
    const auto status = curl.wait(interop::patience);
    REQUIRE(status.has_value());
    const std::string out = curl.output();
    INFO("curl:\n" << interop::lines_with(out, {"ALPN", "curl:", "< HTTP", "hello"}));
    CHECK(*status == 0);
    CHECK(interop::contains(out, "ALPN: offers h2"));
    CHECK(interop::contains(out, "ALPN: server accepted http/1.1"));
    CHECK(interop::contains(out, "hello over ALPN"));
}
