// The child-process helper the interop tests stand on: output can be
// waited for with a deadline, stdin can be written and closed, and nothing
// it started outlives it. Uses only /bin/sh and sleep.
#include "support/process.hpp"

#include <catch2/catch_test_macros.hpp>

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <string>

using namespace std::chrono_literals;
using support::process;

namespace {
// What a CHECK shows for a child still running at the deadline (Catch2
// cannot print a std::optional).
constexpr int still_running = 1000;

int exit_of(process& p) { return p.wait(10s).value_or(still_running); }
} // namespace

TEST_CASE("a child's output is waited for and its exit status read", "[process]")
{
    process p({"sh", "-c", "echo ready; read line; echo \"got:$line\"; exit 3"});
    REQUIRE(p.wait_for_output("ready", 10s));
    REQUIRE(p.write_stdin("hello\n"));
    REQUIRE(p.wait_for_output("got:hello", 10s));
    CHECK(exit_of(p) == 3);
    CHECK(p.output() == "ready\ngot:hello\n");
}

TEST_CASE("closing a child's stdin gives it end of file", "[process]")
{
    process p({"cat"});
    REQUIRE(p.write_stdin("abc"));
    p.close_stdin();
    CHECK(exit_of(p) == 0);
    CHECK(p.wait_for_output_end(process::clock::now() + 10s));
    CHECK(p.output() == "abc");
    CHECK_FALSE(p.write_stdin("more"));
}

TEST_CASE("stdout and stderr are both captured", "[process]")
{
    process p({"sh", "-c", "echo out; echo err >&2"});
    CHECK(exit_of(p) == 0);
    REQUIRE(p.wait_for_output_end(process::clock::now() + 10s));
    CHECK(p.output().find("out\n") != std::string::npos);
    CHECK(p.output().find("err\n") != std::string::npos);
}

TEST_CASE("waits end at their deadline, and as soon as the output ends", "[process]")
{
    process p({"sh", "-c", "echo started; read x; exit 0"});
    REQUIRE(p.wait_for_output("started", 10s));
    const auto t0 = process::clock::now();
    CHECK_FALSE(p.wait_for_output("never printed", 100ms));
    CHECK_FALSE(p.wait(100ms).has_value());
    CHECK(process::clock::now() - t0 >= 200ms);

    p.close_stdin(); // the child exits, its output ends
    const auto t1 = process::clock::now();
    CHECK_FALSE(p.wait_for_output("never printed", 10s));
    CHECK(process::clock::now() - t1 < 5s);
    CHECK(exit_of(p) == 0);
}

TEST_CASE("a child that cannot be started is an exception", "[process]")
{
    CHECK_THROWS(process({"/nonexistent/tls_stream-no-such-program"}));
}

TEST_CASE("the destructor ends the child's whole process group", "[process]")
{
    int grandchild_fd = -1;
    {
        process p({"sh", "-c", "sleep 1000 & echo \"grandchild $!\"; wait"});
        REQUIRE(p.wait_for_output("\n", 10s));
        const std::string out = p.output();
        REQUIRE(out.rfind("grandchild ", 0) == 0);
        const pid_t grandchild = std::stoi(out.substr(11));
        grandchild_fd = support::open_pidfd(grandchild);
        if (grandchild_fd < 0 && errno == ENOSYS) // valgrind 3.19 does not know pidfd_open
            SKIP("pidfd_open is not available, so a grandchild's end cannot be observed");
        REQUIRE(grandchild_fd >= 0);
        pollfd still_running{grandchild_fd, POLLIN, 0};
        REQUIRE(::poll(&still_running, 1, 0) == 0);
    }
    // The pidfd turns readable once the process has exited.
    pollfd gone{grandchild_fd, POLLIN, 0};
    CHECK(::poll(&gone, 1, 10'000) == 1);
    ::close(grandchild_fd);
}

TEST_CASE("a child's exit by signal is reported as minus the signal", "[process]")
{
    process p({"sh", "-c", "kill -TERM $$"});
    CHECK(exit_of(p) == -SIGTERM);
}

TEST_CASE("free_port gives a bindable loopback port", "[process]")
{
    const int port = support::free_port();
    CHECK(port > 0);
    CHECK(port < 65536);
}
