// Below the socket: the pure parts of the library, with no peer, no socket
// and no clock, so every case is fast and gives the same result each run.
// - tls::detail::frame, the transport's record framing: fed any split of a
//   byte stream of several records, it hands OpenSSL each record whole and
//   never a byte past a record's end (what keeps the bytes after the peer's
//   close_notify for release_socket()).
// - Error mapping: tls::errc's category and conditions, OpenSSL's category,
//   and detail::take_openssl_error turning the thread's error queue into one
//   error_code.
#include "support/support.hpp"

#include <catch2/catch_test_macros.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace {

// ---------------------------------------------------------------- framing

constexpr unsigned char alert_type = 21;
constexpr unsigned char application_data = 23;

/// One TLS record: the 5-byte header (type, version 3.3, length) and a body
/// of `length` pattern bytes.
std::string record(unsigned char type, std::size_t length, std::uint64_t seed)
{
    std::string r;
    r += static_cast<char>(type);
    r += '\x03';
    r += '\x03';
    r += static_cast<char>(length >> 8);
    r += static_cast<char>(length & 0xff);
    return r + support::pattern(length, seed);
}

/// Records of the sizes that stress the framing: an empty body (the record
/// ends with its header), bodies shorter than a header, a few hundred bytes,
/// and the largest a TLS 1.2 peer may send (2^14 + 2048), back to back.
std::vector<std::string> sample_records()
{
    const std::size_t lengths[] = {1, 0, 0, 4, 5, 300, 16384 + 2048, 2, 6};
    std::vector<std::string> out;
    std::uint64_t seed = 1;
    for (const std::size_t n : lengths)
        out.push_back(record(out.size() % 2 == 0 ? application_data : alert_type, n, seed++));
    return out;
}

std::string concatenated(const std::vector<std::string>& records)
{
    std::string all;
    for (const auto& r : records)
        all += r;
    return all;
}

/// Feeds `wire` to a fresh transport's framing in the pieces that `cuts`
/// (increasing offsets) mark, as successive recv()s would deliver it, and
/// regroups what frame() hands over into records. Returns "" if each call
/// took between 1 byte and its whole piece, no call crossed a record's end,
/// and the records came out as `expected`; otherwise what went wrong first.
std::string check_framing(const std::string& wire, const std::vector<std::size_t>& cuts,
                          const std::vector<std::string>& expected)
{
    tls::detail::transport t{};
    t.fd = -1; // never used: frame() only looks at the bytes it is given
    const auto* bytes = reinterpret_cast<const std::byte*>(wire.data());
    std::vector<std::string> got;
    std::string current;
    std::size_t from = 0;
    for (std::size_t piece = 0; piece <= cuts.size(); ++piece) {
        const std::size_t to = piece < cuts.size() ? cuts[piece] : wire.size();
        while (from < to) {
            const std::size_t k = tls::detail::frame(t, bytes + from, to - from);
            if (k == 0 || k > to - from)
                return "frame() took " + std::to_string(k) + " of " + std::to_string(to - from) + " bytes at offset "
                       + std::to_string(from);
            current.append(wire, from, k);
            from += k;
            // Between records no header byte is pending and no body is due;
            // inside one, at least one header byte has been seen.
            if (t.header_seen == 0 && t.body_left == 0) {
                const std::size_t i = got.size();
                if (i >= expected.size() || current != expected[i])
                    return "record " + std::to_string(i) + " came out as " + std::to_string(current.size())
                           + " bytes ending at offset " + std::to_string(from);
                got.push_back(std::move(current));
                current.clear();
            }
        }
    }
    if (!current.empty())
        return "a partial record of " + std::to_string(current.size()) + " bytes was left at the end";
    if (got.size() != expected.size())
        return std::to_string(got.size()) + " records instead of " + std::to_string(expected.size());
    return "";
}

// ---------------------------------------------------------------- error mapping

const tls::errc all_errc[] = {tls::errc::stream_truncated,  tls::errc::timeout, tls::errc::not_connected,
                              tls::errc::already_connected, tls::errc::closed,  tls::errc::not_closed};

/// Empties the thread's OpenSSL error queue when the scope ends, so that a
/// failing check cannot leave entries for the next test case.
struct clear_queue_on_exit {
    clear_queue_on_exit() = default;
    clear_queue_on_exit(const clear_queue_on_exit&) = delete;
    clear_queue_on_exit& operator=(const clear_queue_on_exit&) = delete;
    ~clear_queue_on_exit() { ERR_clear_error(); }
};

} // namespace

TEST_CASE("framing hands over each record whole, whatever single split the byte stream arrives in", "[unit]")
{
    const std::vector<std::string> records = sample_records();
    const std::string wire = concatenated(records);
    std::size_t failures = 0;
    for (std::size_t cut = 0; cut <= wire.size(); ++cut) {
        const std::string problem = check_framing(wire, {cut}, records);
        if (!problem.empty() && failures++ == 0) {
            INFO("split at " << cut << " of " << wire.size());
            FAIL_CHECK(problem);
        }
    }
    CHECK(failures == 0);
}

TEST_CASE("framing hands over each record whole when the stream arrives one byte at a time", "[unit]")
{
    const std::vector<std::string> records = sample_records();
    const std::string wire = concatenated(records);
    std::vector<std::size_t> cuts;
    for (std::size_t i = 1; i < wire.size(); ++i)
        cuts.push_back(i);
    CHECK(check_framing(wire, cuts, records) == "");
}

TEST_CASE("framing hands over each record whole across pseudo-random splits (fixed seed)", "[unit]")
{
    const std::vector<std::string> records = sample_records();
    const std::string wire = concatenated(records);
    // Piece sizes from support::pattern, so every platform draws the same:
    // three in four up to 64 bytes (headers and short records split many
    // times), the others up to 4 KiB (the long record split a few times).
    const std::string draws = support::pattern(std::size_t{1} << 20, 16);
    std::size_t d = 0;
    const auto next_size = [&] {
        const auto hi = static_cast<unsigned char>(draws[d++ % draws.size()]);
        const auto lo = static_cast<unsigned char>(draws[d++ % draws.size()]);
        const std::size_t r = std::size_t{hi} << 8 | lo;
        return hi % 4 == 0 ? 1 + r % 4096 : 1 + r % 64;
    };
    std::size_t failures = 0;
    for (int run = 0; run < 500; ++run) {
        std::vector<std::size_t> cuts;
        for (std::size_t at = next_size(); at < wire.size(); at += next_size())
            cuts.push_back(at);
        const std::string problem = check_framing(wire, cuts, records);
        if (!problem.empty() && failures++ == 0) {
            INFO("run " << run << ", " << cuts.size() + 1 << " pieces");
            FAIL_CHECK(problem);
        }
    }
    CHECK(failures == 0);
}

TEST_CASE("framing stops at the end of a record even when the next one is already buffered", "[unit]")
{
    // The peer's close_notify (an alert record) and plaintext that follows
    // it in the same segment: framing must give OpenSSL the alert and not one
    // byte of what follows.
    const std::string alert = record(alert_type, 2, 7);
    const std::string wire = alert + "PLAINTEXT AFTER TLS";
    tls::detail::transport t{};
    t.fd = -1;
    const std::size_t k = tls::detail::frame(t, reinterpret_cast<const std::byte*>(wire.data()), wire.size());
    CHECK(k == alert.size());
    CHECK(t.header_seen == 0);
    CHECK(t.body_left == 0);
}

TEST_CASE("every tls::errc maps to its own condition, except timeout, which is std::errc::timed_out", "[unit]")
{
    for (const tls::errc e : all_errc) {
        const std::error_code ec = e; // is_error_code_enum: the implicit conversion
        CAPTURE(ec.value(), ec.message());
        CHECK(ec == tls::make_error_code(e));
        CHECK(std::string(ec.category().name()) == "tls_stream");
        const std::error_condition cond = ec.default_error_condition();
        if (e == tls::errc::timeout) {
            CHECK(cond == std::errc::timed_out);
            CHECK(ec == std::errc::timed_out);
        } else {
            CHECK(&cond.category() == &tls::error_category());
            CHECK(cond.value() == static_cast<int>(e));
            CHECK(ec != std::errc::timed_out);
        }
    }
    CHECK(tls::error_category().message(0) == "unknown tls_stream error");
    CHECK(tls::error_category().message(999) == "unknown tls_stream error");
}

TEST_CASE("openssl_category names OpenSSL's reason, and falls back to OpenSSL's whole error string", "[unit]")
{
    CHECK(std::string(tls::openssl_category().name()) == "openssl");
    const auto eof = static_cast<int>(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_UNEXPECTED_EOF_WHILE_READING));
    CHECK(tls::openssl_category().message(eof) == "unexpected eof while reading");
    // A reason OpenSSL has no string for: the message still says something.
    const auto unknown = static_cast<int>(ERR_PACK(ERR_LIB_SSL, 0, 4095));
    CHECK_FALSE(tls::openssl_category().message(unknown).empty());
}

TEST_CASE("take_openssl_error turns the oldest queued entry into an error_code and empties the queue", "[unit]")
{
    const clear_queue_on_exit cleanup;
    ERR_clear_error();

    SECTION("an OpenSSL error: openssl_category, with the entry's packed code")
    {
        ERR_raise(ERR_LIB_SSL, SSL_R_CERTIFICATE_VERIFY_FAILED);
        ERR_raise(ERR_LIB_SSL, SSL_R_UNEXPECTED_EOF_WHILE_READING); // newer: not the one reported
        const std::error_code ec = tls::detail::take_openssl_error();
        CHECK(&ec.category() == &tls::openssl_category());
        CHECK(ERR_GET_LIB(static_cast<unsigned long>(static_cast<unsigned int>(ec.value()))) == ERR_LIB_SSL);
        CHECK(ERR_GET_REASON(static_cast<unsigned long>(static_cast<unsigned int>(ec.value())))
              == SSL_R_CERTIFICATE_VERIFY_FAILED);
        CHECK(ec.message() == "certificate verify failed");
        CHECK(ERR_peek_error() == 0);
    }
    SECTION("a system error: the errno in std::system_category")
    {
        ERR_raise(ERR_LIB_SYS, ECONNRESET);
        const std::error_code ec = tls::detail::take_openssl_error();
        CHECK(ec == std::error_code(ECONNRESET, std::system_category()));
        CHECK(ERR_peek_error() == 0);
    }
    SECTION("an empty queue: a generic I/O error, never success")
    {
        const std::error_code ec = tls::detail::take_openssl_error();
        CHECK(ec == std::errc::io_error);
        CHECK(ERR_peek_error() == 0);
    }
}
