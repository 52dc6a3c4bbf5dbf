#include "odr.hpp"

namespace odr {

addresses seen_by_a() { return {&tls::error_category(), &tls::openssl_category(), tls::detail::transport_method()}; }

std::string serve_once(const tls::context& ctx, int fd)
{
    using namespace std::chrono_literals;
    tls::tls_stream<tls::fd_socket, tls::full_shutdown> s(ctx, tls::fd_socket{fd});
    s.set_io_timeout(10s);
    s.accept();
    std::byte buf[64];
    const std::size_t n = s.read_some(buf);
    s.write_all(std::span<const std::byte>(buf, n));
    while (s.read_some(buf) != 0) {
    }
    return {reinterpret_cast<const char*>(buf), n};
}

} // namespace odr
