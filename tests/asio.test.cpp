// The blocking API over the sockets Asio users already have (their
// native_handle() is not const): each policy against a raw OpenSSL peer.
#include "support/checks.hpp"
#include "support/support.hpp"

#include <asio.hpp>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <string>

namespace {

using support::to_string;
using support::version_name;

} // namespace

TEMPLATE_TEST_CASE("the blocking API works over an asio::ip::tcp::socket and closes by its policy", "[asio]",
                   tls::fast_shutdown, tls::quiet_shutdown, tls::full_shutdown)
{
    const int version = GENERATE(TLS1_2_VERSION, TLS1_3_VERSION);
    CAPTURE(version_name(version));

    STATIC_REQUIRE(tls::socket_owns_descriptor<asio::ip::tcp::socket>::value);
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    asio::ip::tcp::socket client(io);
    client.connect(acceptor.local_endpoint());
    asio::ip::tcp::socket accepted = acceptor.accept();
    support::raw_peer peer(support::server_context(version), tls::unique_socket{accepted.release()});

    using stream = tls::tls_stream<asio::ip::tcp::socket, TestType>;
    auto s = std::make_unique<stream>(support::client_context(version), std::move(client));
    support::handshake(*s, peer);
    CHECK(support::ping_pong(*s, peer) == "pong");
    CHECK(s->socket().is_open());
    support::peer_thread t([&] {
        const auto [data, how] = peer.read_to_end();
        support::ensure(data == "bye", "peer: expected bye");
        support::ensure((how == support::ending::close_notify) == (TestType::mode != tls::close_mode::quiet),
                        "peer: the policy's closure, got " + support::to_string(how));
        peer.shutdown();
    });
    s->write_all(support::bytes("bye"));
    std::error_code ec;
    const tls::shutdown_result r = s->shutdown(ec);
    CHECK_FALSE(ec);
    CHECK(to_string(r)
          == (TestType::mode == tls::close_mode::quiet  ? "quiet"
              : TestType::mode == tls::close_mode::full ? "complete"
                                                        : "sent"));
    s.reset(); // frees the SSL, then the Asio socket closes its descriptor
    t.join();
}
