// Compiled by a Meson test with TLS_STREAM_TEST_SOCKET set to a socket type:
// close_via() must compile for a socket that owns its descriptor and must
// not for one that only borrows it (tests/meson.build).
#include <tls_stream.hpp>

void bind_to_closer(const tls::context& ctx, tls::closer& closer)
{
    tls::tls_stream<TLS_STREAM_TEST_SOCKET, tls::full_shutdown> s(ctx, TLS_STREAM_TEST_SOCKET{-1});
    s.close_via(closer);
}
