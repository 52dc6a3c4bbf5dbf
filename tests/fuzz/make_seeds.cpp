// Writes the fuzz target's seed corpus (tests/fuzz/corpus): real first
// flights of TLS 1.2 and 1.3 handshakes (a ClientHello for our server role,
// a server's answer for our client role), captured from two OpenSSL
// endpoints talking through memory, and short scripts for the scenarios
// after a real handshake. Run by hand when the input format changes:
//   build/fuzz/tests/fuzz/make_seeds tests/fuzz/corpus
#include "examples/self_signed.hpp"
#include "peer.hpp"

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace {

using bytes = std::vector<std::uint8_t>;

void write(const std::string& dir, const std::string& name, std::uint8_t cfg, const bytes& body)
{
    std::ofstream f(dir + "/" + name, std::ios::binary);
    f.put(static_cast<char>(cfg));
    f.write(reinterpret_cast<const char*>(body.data()), static_cast<std::streamsize>(body.size()));
    if (!f)
        throw std::runtime_error("cannot write " + name);
}

bytes drain(BIO* b)
{
    bytes out;
    std::uint8_t buf[4096];
    int n;
    while ((n = BIO_read(b, buf, sizeof buf)) > 0)
        out.insert(out.end(), buf, buf + n);
    return out;
}

/// The client's first flight and the server's answer to it.
std::pair<bytes, bytes> first_flights(const self_signed::credentials& creds, int version)
{
    SSL_CTX* cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX* sctx = SSL_CTX_new(TLS_server_method());
    for (SSL_CTX* c : {cctx, sctx}) {
        SSL_CTX_set_min_proto_version(c, version);
        SSL_CTX_set_max_proto_version(c, version);
    }
    SSL_CTX_use_certificate_chain_file(sctx, creds.chain_file.c_str());
    SSL_CTX_use_PrivateKey_file(sctx, creds.key_file.c_str(), SSL_FILETYPE_PEM);
    fuzz::peer client(cctx, -1, false);
    fuzz::peer server(sctx, -1, true);
    SSL_set_tlsext_host_name(client.ssl(), "localhost");
    SSL_do_handshake(client.ssl());
    bytes hello = drain(SSL_get_wbio(client.ssl()));
    BIO_write(SSL_get_rbio(server.ssl()), hello.data(), static_cast<int>(hello.size()));
    SSL_do_handshake(server.ssl());
    bytes answer = drain(SSL_get_wbio(server.ssl()));
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    return {hello, answer};
}

} // namespace

int main(int argc, char** argv)
try {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_seeds DIR\n");
        return 2;
    }
    const std::string dir = argv[1];
    self_signed::credentials creds;
    self_signed::generate(creds);

    // Raw scenarios (bit 3 clear): bit 0 set = we are the server.
    for (const int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
        const auto [hello, answer] = first_flights(creds, version);
        const std::string v = version == TLS1_3_VERSION ? "tls13" : "tls12";
        write(dir, "raw-server-" + v + "-clienthello", 0x01 | 0x04, hello);               // full policy
        write(dir, "raw-client-" + v + "-serverflight", 0x00 | 0x02, answer);             // quiet policy
        write(dir, "raw-server-" + v + "-clienthello-closed", 0x01 | 0x20 | 0x40, hello); // fast, peer closes
    }
    // Steps (policy 3), our client role: the input starts with the host name.
    const std::string nul_host("localhost\0.attacker.example\n", 28);
    write(dir, "raw-client-steps-nul-host", 0x06, bytes(nul_host.begin(), nul_host.end()));
    const std::string long_host = std::string(256, 'a') + "\n";
    write(dir, "raw-client-steps-long-host", 0x06, bytes(long_host.begin(), long_host.end()));

    // Scripts after a real handshake (bit 3 set).
    const bytes hello_then_close = {fuzz::op_data, 5, 'h', 'e', 'l', 'l', 'o', fuzz::op_close_notify};
    const bytes garbage_record = {fuzz::op_data, 2,    'h',  'i',  fuzz::op_raw, 7,   0x17,
                                  0x03,          0x03, 0x00, 0x02, 0xde,         0xad};
    const bytes alert_record = {fuzz::op_raw, 7, 0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28};
    const bytes key_update = {fuzz::op_key_update, fuzz::op_data, 3, 'a', 'b', 'c', fuzz::op_close_notify};
    const bytes tickets = {fuzz::op_ticket, fuzz::op_ticket, fuzz::op_data, 1, 'x'};
    const bytes silent = {};
    // A peer that never stops sending, as far as a script goes: 64 tiny records.
    bytes flood;
    for (int i = 0; i < 32; ++i)
        flood.insert(flood.end(), {fuzz::op_data, 1, 'f'});
    // TLS 1.3 session tickets without end.
    const bytes ticket_flood(64, fuzz::op_ticket);
    // An undecryptable record, then data we never read.
    bytes bad_then_more = garbage_record;
    for (int i = 0; i < 8; ++i) {
        bad_then_more.insert(bad_then_more.end(), {fuzz::op_raw, 200});
        bad_then_more.insert(bad_then_more.end(), 200, 0x17);
    }
    // A renegotiation request (TLS 1.2) pending when a quiet close starts.
    const bytes renegotiate_pending = {fuzz::op_data, 1, 'x', fuzz::op_key_update};
    struct script {
        const char* name;
        std::uint8_t cfg;
        const bytes* body;
    };
    const script scripts[] = {
        {"script-client-tls13-full-hello-close", 0x08 | 0x10 | 0x04, &hello_then_close},
        {"script-server-tls12-fast-hello-close", 0x08 | 0x01 | 0x00, &hello_then_close},
        {"script-client-tls12-full-garbage", 0x08 | 0x04, &garbage_record},
        {"script-server-tls13-quiet-alert", 0x08 | 0x10 | 0x01 | 0x02, &alert_record},
        {"script-client-tls13-full-keyupdate", 0x08 | 0x10 | 0x04 | 0x40, &key_update},
        {"script-client-tls12-fast-renegotiate", 0x08 | 0x00, &key_update},
        {"script-client-tls13-full-tickets-closewrite", 0x08 | 0x10 | 0x04 | 0x80, &tickets},
        {"script-server-tls13-full-silent-closed", 0x08 | 0x10 | 0x01 | 0x04 | 0x20, &silent},
        {"script-client-tls12-full-flood", 0x08 | 0x04 | 0x40, &flood},
        {"script-client-tls13-fast-ticketflood", 0x08 | 0x10, &ticket_flood},
        {"script-client-tls13-full-bad-record-more", 0x08 | 0x10 | 0x04, &bad_then_more},
        {"script-client-tls12-quiet-renegotiate-pending", 0x08 | 0x02 | 0x40, &renegotiate_pending},
        // Policy 3: full through the event-loop API and a closer.
        {"script-client-tls13-steps-hello-close", 0x08 | 0x10 | 0x06, &hello_then_close},
        {"script-server-tls12-steps-silent-shutdown", 0x08 | 0x01 | 0x06 | 0x40, &silent},
        {"script-client-tls13-steps-flood", 0x08 | 0x10 | 0x06, &flood},
    };
    for (const script& s : scripts)
        write(dir, s.name, s.cfg, *s.body);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
}
