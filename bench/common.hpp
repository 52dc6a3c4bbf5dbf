// What the benchmarks share: the one configuration every comparison uses, so
// that raw OpenSSL, Asio and tls_stream do the same work: TLS 1.3 only, one
// cipher suite, no session tickets or cache, and a client that verifies the
// chain against the generated CA.
#ifndef TLS_STREAM_BENCH_COMMON_HPP
#define TLS_STREAM_BENCH_COMMON_HPP

#include "examples/self_signed.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstdio>
#include <cstdlib>

namespace bench {

/// A raw context in the benchmarks' configuration; exits the program on failure.
inline SSL_CTX* make_ctx(bool server, const self_signed::credentials& creds)
{
    const auto require = [](bool ok, const char* what) {
        if (!ok) {
            std::fprintf(stderr, "bench: %s\n", what);
            ERR_print_errors_fp(stderr);
            std::exit(1);
        }
    };
    SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    require(ctx != nullptr, "SSL_CTX_new");
    require(SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1
                && SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1,
            "TLS 1.3 only");
    require(SSL_CTX_set_ciphersuites(ctx, "TLS_AES_256_GCM_SHA384") == 1, "SSL_CTX_set_ciphersuites");
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (server) {
        require(SSL_CTX_use_certificate_chain_file(ctx, creds.chain_file.c_str()) == 1
                    && SSL_CTX_use_PrivateKey_file(ctx, creds.key_file.c_str(), SSL_FILETYPE_PEM) == 1,
                "server credentials");
        require(SSL_CTX_set_num_tickets(ctx, 0) == 1, "SSL_CTX_set_num_tickets");
    } else {
        require(SSL_CTX_load_verify_locations(ctx, creds.ca_file.c_str(), nullptr) == 1, "load CA");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    }
    return ctx;
}

/// `ctx` with one more reference, for a second owner (tls::context,
/// asio::ssl::context) of the same SSL_CTX.
inline SSL_CTX* shared(SSL_CTX* ctx)
{
    SSL_CTX_up_ref(ctx);
    return ctx;
}

} // namespace bench

#endif
