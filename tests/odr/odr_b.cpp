#include "odr.hpp"

#include "examples/self_signed.hpp"

#include <sys/socket.h>

#include <cstdio>
#include <exception>
#include <future>
#include <stdexcept>
#include <string_view>

namespace odr {

addresses seen_by_b() { return {&tls::error_category(), &tls::openssl_category(), tls::detail::transport_method()}; }

} // namespace odr

namespace {

bool check(bool ok, const char* what)
{
    std::printf("%s: %s\n", ok ? "ok" : "FAILED", what);
    return ok;
}

} // namespace

int main()
try {
    using namespace std::chrono_literals;
    const odr::addresses a = odr::seen_by_a();
    const odr::addresses b = odr::seen_by_b();
    bool ok = check(a.errc_category == b.errc_category, "one tls::error_category() for both units");
    ok &= check(a.openssl_category == b.openssl_category, "one tls::openssl_category() for both units");
    ok &= check(a.transport == b.transport && a.transport != nullptr, "one transport BIO_METHOD for both units");
    // An error code made in one unit compares equal to the enum in the other.
    ok &= check(std::error_code(tls::errc::timeout) == tls::make_error_code(tls::errc::timeout),
                "tls::errc codes compare equal across units");

    // The same stream template instantiated in both units, used together.
    self_signed::credentials creds;
    self_signed::generate(creds);
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
        throw std::runtime_error("socketpair failed");
    tls::unique_socket server_end{fds[0]};
    const tls::context server_ctx = tls::context::server(creds.chain_file, creds.key_file);
    auto served =
        std::async(std::launch::async, [&] { return odr::serve_once(server_ctx, server_end.native_handle()); });
    tls::context client_ctx = tls::context::client();
    client_ctx.load_verify_file(creds.ca_file);
    tls::shutdown_result closed = tls::shutdown_result::none;
    std::string echoed(4, '\0');
    {
        tls::tls_stream<tls::unique_socket, tls::full_shutdown> c(client_ctx, tls::unique_socket{fds[1]});
        c.set_io_timeout(10s);
        c.connect("localhost");
        const std::string_view msg = "odr!";
        c.write_all(std::as_bytes(std::span(msg.data(), msg.size())));
        std::size_t have = 0;
        while (have < echoed.size()) {
            const std::size_t k =
                c.read_some(std::as_writable_bytes(std::span(echoed.data() + have, echoed.size() - have)));
            if (k == 0)
                break;
            have += k;
        }
        closed = c.shutdown();
    }
    // The server's own I/O timeout bounds this wait.
    ok &= check(served.get() == "odr!" && echoed == "odr!", "a stream from each unit exchanged a message");
    ok &= check(closed == tls::shutdown_result::complete, "full close completed between the units");
    return ok ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "odr: %s\n", e.what());
    return 1;
}
