// Scenario 23 (docs/scenarios.md): a write-only TLS 1.3 client that closes at
// once, against a real `openssl s_server`. The server's session tickets sit
// unread in the client's socket; Linux answers close() on such a socket with
// a reset, which used to throw away a close_notify that Nagle's algorithm
// still held back (99 of 100 lost when the tickets had arrived), and made a
// quiet close reach the server as a reset instead of an EOF.
//
// Every policy must get out what it wrote, close_notify included, and
// consume what has already arrived. Two loops per policy prove it, judged
// from the server's own -msg output:
//  - "tickets in": the client waits until the server has printed the
//    request, so the tickets are certainly in the client's socket when the
//    stream is destroyed and the socket closed: the case that used to fail;
//  - "at once": no waiting at all, whatever the timing gives.
#include "support/interop.hpp"
#include "support/process.hpp"
#include "support/support.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

namespace {

using namespace std::chrono_literals;

std::size_t count(std::string_view text, std::string_view needle)
{
    std::size_t n = 0;
    for (std::size_t at = text.find(needle); at != std::string_view::npos; at = text.find(needle, at + 1))
        ++n;
    return n;
}

} // namespace

TEMPLATE_TEST_CASE("a write-only TLS 1.3 client that closes at once never loses its closure to a reset, against "
                   "openssl s_server",
                   "[scenario-23][interop][openssl]", TLS_STREAM_TEST_POLICIES)
{
    const bool wait_for_tickets = GENERATE(true, false);
    const int runs = wait_for_tickets ? 25 : 100;
    CAPTURE(wait_for_tickets, runs);

    const auto deadline = support::process::clock::now() + 60s;
    const auto& cred = support::credentials();
    support::process server({"openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", cred.chain_file, "-key",
                             cred.key_file, "-tls1_3", "-msg", "-naccept", std::to_string(runs)});
    const auto port = server.wait_for_line("ACCEPT 127.0.0.1:", deadline); // port 0: it prints the one it got
    REQUIRE(port.has_value());

    const tls::context ctx = support::client_context(TLS1_3_VERSION);
    for (int i = 0; i < runs; ++i) {
        const std::string request = "request " + std::to_string(i) + "\n";
        tls::tls_stream<tls::unique_socket, TestType> s(ctx, interop::connect_to(std::stoi(*port)));
        s.set_io_timeout(10s);
        s.connect("localhost");
        s.write_all(support::bytes(request));
        // The server writes its tickets before it reads anything, so once it
        // printed the request they are in our socket.
        if (wait_for_tickets)
            REQUIRE(server.wait_for_output(request, deadline));
    } // each stream is destroyed, and its socket closed, right here

    const auto status = server.wait(deadline);
    REQUIRE(status.has_value()); // it served every connection and exited
    const std::string out = server.output();
    INFO("s_server output, last 3000 bytes:\n" << out.substr(out.size() > 3000 ? out.size() - 3000 : 0));
    CHECK(count(out, "request ") == static_cast<std::size_t>(runs)); // every request arrived
    const std::size_t close_notify_in = count(out, "<<< TLS 1.3, Alert [length 0002], warning close_notify");
    const std::size_t eof = count(out, "unexpected eof while reading");
    // s_server prints a bare "ERROR" line (no reason) when the read fails
    // with a reset; an unexpected EOF comes with its reason on the next line.
    const std::size_t errors = count(out, "\nERROR\n");
    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(close_notify_in == 0);
        CHECK(eof == static_cast<std::size_t>(runs)); // an EOF every time, never a reset
        CHECK(errors == eof);
    } else {
        CHECK(close_notify_in == static_cast<std::size_t>(runs)); // zero losses
        CHECK(eof == 0);
        CHECK(errors == 0);
    }
}
