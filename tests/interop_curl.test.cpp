// tls_stream as a tiny HTTPS responder, fetched by `curl -v` (OpenSSL
// backend), whose verbose output logs every TLS alert: "TLSv1.3 (IN), TLS
// alert, close notify (256):". The response has no Content-Length, so the
// body ends where the connection ends; that is exactly where a missing
// close_notify matters (a truncated body would look complete), and curl
// does not tell: see the quiet case.
#include "support/interop.hpp"

#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <memory>

using namespace interop;
using support::bytes;

namespace {

std::string curl_alert(bool in, int version)
{
    return "* TLSv" + dotted(version) + (in ? " (IN)" : " (OUT)") + ", TLS alert, close notify (256):";
}

constexpr std::string_view body = "hello from tls_stream\n";

} // namespace

TEMPLATE_TEST_CASE("curl sees exactly the closure of the HTTPS responder's policy", "[interop][curl]",
                   TLS_STREAM_TEST_POLICIES)
{
    const int version = TLS_STREAM_TEST_VERSIONS();
    CAPTURE(policy_name<TestType>(), dotted(version));
    listener l;
    support::process curl({"curl", "-sS", "-v", "--cacert", support::credentials().ca_file, "--tlsv" + dotted(version),
                           "--tls-max", dotted(version), "https://127.0.0.1:" + std::to_string(l.port()) + "/"});

    auto s = std::make_unique<stream<TestType>>(support::server_context(version), l.accept(soon()));
    s->set_io_timeout(patience);
    s->accept();
    std::string request_line = read_line(*s);
    CHECK(request_line == "GET / HTTP/1.1\r\n");
    while (read_line(*s) != "\r\n") {
    }
    s->write_all(bytes("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"));
    s->write_all(bytes(body));

    std::error_code ec;
    const tls::shutdown_result r = s->shutdown(ec);
    s.reset();
    const auto status = curl.wait(patience);
    REQUIRE(status.has_value());
    const std::string out = curl.output();
    INFO("curl:\n" << lines_with(out, {"alert", "curl:", "TLSv", "< HTTP", "hello"}));
    CHECK(!ec);
    CHECK(contains(out, body));

    if constexpr (TestType::mode == tls::close_mode::quiet) {
        CHECK(support::to_string(r) == "quiet");
        // No close_notify reached curl. curl 7.88 is not strict: it takes
        // the bare end of the transport as the end of the body and exits 0,
        // so only its alert log tells the difference.
        CHECK_FALSE(contains(out, curl_alert(true, version)));
        CHECK(*status == 0);
    } else {
        CHECK(contains(out, curl_alert(true, version)));
        CHECK(*status == 0);
        // curl answers before it closes.
        CHECK(contains(out, curl_alert(false, version)));
        CHECK(support::to_string(r) == (TestType::mode == tls::close_mode::full ? "complete" : "sent"));
    }
}
