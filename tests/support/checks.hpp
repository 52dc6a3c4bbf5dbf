// Catch2 checks shared by the topic files. Unlike support.hpp these assert,
// so call them on the main thread only (Catch2 3.7's assertions are not
// thread-safe): after peer_thread::join().
#ifndef TLS_STREAM_TESTS_CHECKS_HPP
#define TLS_STREAM_TESTS_CHECKS_HPP

#include "support.hpp"

#include <catch2/catch_test_macros.hpp>

namespace support {

/// The raw peer, having read to the end, saw exactly the closure that a
/// policy of `mode` puts on the wire: one close_notify (fast, full), or an
/// end without any alert (quiet).
inline void check_peer_saw_closure(tls::close_mode mode, ending how, const raw_peer& peer)
{
    if (mode == tls::close_mode::quiet) {
        CHECK(to_string(how) == "unexpected_eof");
        // Received only: the peer itself answers the unexpected EOF with a
        // fatal decode_error alert of its own (OpenSSL 3.0).
        CHECK(peer.received_alerts() == 0);
    } else {
        CHECK(to_string(how) == "close_notify");
        CHECK(peer.count_alerts(false, 0) == 1);
        CHECK(peer.received_alerts() == 1);
    }
}

} // namespace support

#endif
