// A throwaway certificate authority and a "localhost" server certificate,
// generated in memory with OpenSSL and written to a fresh private temporary
// directory that is removed again. Handy for demos and tests; never use such
// certificates in production.
//
// SPDX-License-Identifier: MIT
#ifndef TLS_STREAM_EXAMPLES_SELF_SIGNED_HPP
#define TLS_STREAM_EXAMPLES_SELF_SIGNED_HPP

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

namespace self_signed {

struct credentials {
    std::filesystem::path dir; // private temporary directory holding the files
    std::string ca_file;       // PEM: the authority, to pass to load_verify_file
    std::string chain_file;    // PEM: server certificate, then the authority
    std::string key_file;      // PEM: the server's private key

    credentials() = default;
    credentials(const credentials&) = delete;
    credentials& operator=(const credentials&) = delete;
    ~credentials()
    {
        std::error_code ignored;
        if (!dir.empty())
            std::filesystem::remove_all(dir, ignored);
    }
};

namespace detail {

template <class T, void (*Free)(T*)>
struct freer {
    void operator()(T* p) const noexcept { Free(p); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, freer<EVP_PKEY, EVP_PKEY_free>>;
using x509_ptr = std::unique_ptr<X509, freer<X509, X509_free>>;

inline void check(bool ok, const char* what)
{
    if (!ok)
        throw std::runtime_error(std::string("self_signed: ") + what + " failed");
}

inline pkey_ptr new_key()
{
    pkey_ptr key(EVP_EC_gen("P-256"));
    check(key != nullptr, "EVP_EC_gen");
    return key;
}

inline void add_ext(X509* cert, X509* issuer, int nid, const char* value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    check(ext != nullptr, "X509V3_EXT_conf_nid");
    const int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    check(ok == 1, "X509_add_ext");
}

inline x509_ptr new_cert(EVP_PKEY* key, const char* common_name, X509* issuer, EVP_PKEY* issuer_key, long serial)
{
    x509_ptr cert(X509_new());
    check(cert != nullptr, "X509_new");
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 7L * 24 * 3600);
    X509_set_pubkey(cert.get(), key);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name), -1, -1,
                               0);
    X509* signer = issuer ? issuer : cert.get();
    X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
    if (issuer) {
        add_ext(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(cert.get(), signer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1");
        add_ext(cert.get(), signer, NID_ext_key_usage, "serverAuth");
    } else {
        add_ext(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    }
    add_ext(cert.get(), signer, NID_subject_key_identifier, "hash");
    check(X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
    return cert;
}

template <class Write>
void write_pem(const std::filesystem::path& path, Write&& write)
{
    FILE* f = std::fopen(path.c_str(), "w");
    check(f != nullptr, "fopen");
    const bool ok = write(f);
    check(std::fclose(f) == 0 && ok, "writing PEM");
}

} // namespace detail

/// Generates a CA and a server certificate valid for localhost, 127.0.0.1
/// and ::1, and writes them (with the server key) to a new temporary directory.
inline void generate(credentials& out)
{
    std::string pattern = (std::filesystem::temp_directory_path() / "tls_stream-XXXXXX").string();
    if (!mkdtemp(pattern.data()))
        throw std::runtime_error("self_signed: mkdtemp failed");
    out.dir = pattern;

    auto ca_key = detail::new_key();
    auto ca = detail::new_cert(ca_key.get(), "tls_stream test CA", nullptr, nullptr, 1);
    auto key = detail::new_key();
    auto leaf = detail::new_cert(key.get(), "localhost", ca.get(), ca_key.get(), 2);

    out.ca_file = (out.dir / "ca.pem").string();
    out.chain_file = (out.dir / "chain.pem").string();
    out.key_file = (out.dir / "key.pem").string();
    detail::write_pem(out.ca_file, [&](FILE* f) { return PEM_write_X509(f, ca.get()) == 1; });
    detail::write_pem(out.chain_file,
                      [&](FILE* f) { return PEM_write_X509(f, leaf.get()) == 1 && PEM_write_X509(f, ca.get()) == 1; });
    detail::write_pem(out.key_file, [&](FILE* f) {
        return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1;
    });
}

} // namespace self_signed

#endif
