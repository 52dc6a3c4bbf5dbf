// Shared pieces of the interop tests: tls_stream against external TLS
// programs (openssl, gnutls-cli/gnutls-serv, Python's ssl, curl) started as
// real processes on loopback. Catch2 assertions live in the test files; this
// header only throws (like support.hpp).
#ifndef TLS_STREAM_TESTS_INTEROP_HPP
#define TLS_STREAM_TESTS_INTEROP_HPP

#include "process.hpp"
#include "support.hpp"

#include <chrono>
#include <initializer_list>
#include <string>
#include <string_view>

namespace interop {

using namespace std::chrono_literals;
using clock = support::process::clock;

/// Bounds every single wait for a peer (its start, a line of output, its
/// exit). Generous: a loaded CI machine must not fail a test that is right.
inline constexpr std::chrono::milliseconds patience = 10s;
inline clock::time_point soon() { return clock::now() + patience; }

/// "1.2" / "1.3" for TLS1_2_VERSION / TLS1_3_VERSION.
std::string dotted(int version);
/// The way each tool pins the protocol version.
std::string openssl_flag(int version);    // -tls1_2
std::string gnutls_priority(int version); // --priority=NORMAL:-VERS-ALL:+VERS-TLS1.2
/// How OpenSSL's -msg names the version of an alert record: "TLS 1.2".
std::string msg_version(int version);

/// The Python peer script (tests/interop/strict_peer.py).
std::string strict_peer_script();

/// A loopback TCP listener on a port chosen by the kernel.
class listener {
public:
    listener();
    int port() const noexcept { return port_; }
    /// The next connection; throws unless one arrives by `deadline`.
    tls::unique_socket accept(clock::time_point deadline);

private:
    tls::unique_socket sock_;
    int port_ = 0;
};

/// A TCP connection to 127.0.0.1:port.
tls::unique_socket connect_to(int port);

/// Lines of `output` that contain any of `keys`, for a failure message: the
/// peers print hex dumps and handshake details around what matters.
std::string lines_with(const std::string& output, std::initializer_list<std::string_view> keys);

/// Whether `output` contains `needle`.
inline bool contains(const std::string& output, std::string_view needle)
{
    return output.find(needle) != std::string::npos;
}

/// One line (up to and including '\n') from a stream; throws if the stream
/// ends first or the line grows past `max`.
template <class Stream>
std::string read_line(Stream& s, std::size_t max = 4096)
{
    std::string line;
    std::byte c[1];
    while (line.empty() || line.back() != '\n') {
        support::ensure(line.size() < max, "read_line: no end of line in " + line);
        support::ensure(s.read_some(c) == 1, "read_line: close_notify after '" + line + "'");
        line.push_back(static_cast<char>(c[0]));
    }
    return line;
}

template <class Policy>
constexpr const char* policy_name()
{
    if constexpr (Policy::mode == tls::close_mode::fast)
        return "fast";
    else if constexpr (Policy::mode == tls::close_mode::quiet)
        return "quiet";
    else
        return "full";
}

/// The stream type of every interop test: it owns its socket.
using support::stream;

} // namespace interop

#endif
