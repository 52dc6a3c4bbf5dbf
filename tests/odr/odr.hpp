// The ODR test: two translation units (odr_a.cpp, odr_b.cpp) include
// tls_stream.hpp, instantiate the same templates and are linked into one
// program. It links only if every non-template definition in the header is
// inline; it passes only if both units share one copy of the header's
// function-local statics, whose addresses the library relies on (error
// categories compare by address; the BIO method is created once).
#ifndef TLS_STREAM_TESTS_ODR_HPP
#define TLS_STREAM_TESTS_ODR_HPP

#include <tls_stream.hpp>

#include <string>

namespace odr {

struct addresses {
    const std::error_category* errc_category;
    const std::error_category* openssl_category;
    const BIO_METHOD* transport;
};

addresses seen_by_a();
addresses seen_by_b();

/// Unit a's half of a connection: a server stream on `fd` that answers one
/// message and completes a full close. Returns what it read.
std::string serve_once(const tls::context& ctx, int fd);

} // namespace odr

#endif
