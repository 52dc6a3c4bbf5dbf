// Child processes for tests that talk to external programs (openssl,
// gnutls-cli, python3, curl). A `process` owns its child for its whole life:
// the child runs in a process group of its own, and the destructor ends that
// group (SIGTERM, then SIGKILL) and reaps it, so a failing test cannot leave
// a process behind. Like support.hpp, nothing here uses Catch2's assertions.
#ifndef TLS_STREAM_TESTS_PROCESS_HPP
#define TLS_STREAM_TESTS_PROCESS_HPP

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace support {

/// A running child: its stdin is a stream the test writes to and closes;
/// its stdout and stderr, interleaved as the child wrote them, are collected
/// by a reader thread and can be waited for.
class process {
public:
    using clock = std::chrono::steady_clock;

    /// Starts argv[0] (looked up in PATH) with the rest as arguments, in a
    /// new process group, with no descriptor of ours but its stdio. Throws
    /// std::runtime_error if it cannot be started.
    explicit process(std::vector<std::string> argv);
    process(const process&) = delete;
    process& operator=(const process&) = delete;
    /// Ends the child's whole process group unless it has already been
    /// reaped: SIGTERM, then SIGKILL if it is still there after a short grace.
    ~process();

    pid_t pid() const noexcept { return pid_; }
    /// The command line, for messages.
    const std::string& command() const noexcept { return command_; }

    /// Writes all of `data` to the child's stdin; false if the child no
    /// longer reads it (never raises SIGPIPE) or stdin was closed.
    bool write_stdin(std::string_view data);
    /// Closes the child's stdin: it reads end of file.
    void close_stdin() noexcept;

    /// Whether the output contains `needle` by `deadline` (false as soon as
    /// the child's output ends without it).
    bool wait_for_output(std::string_view needle, clock::time_point deadline) const;
    bool wait_for_output(std::string_view needle, std::chrono::milliseconds limit) const
    {
        return wait_for_output(needle, clock::now() + limit);
    }
    /// The rest of the first complete output line that contains `needle`
    /// (what follows `needle` on it), once that line has ended; nullopt if
    /// there is none by `deadline` or the output ends first.
    std::optional<std::string> wait_for_line(std::string_view needle, clock::time_point deadline) const;
    /// Which of `needles` occurs earliest in the output, once any occurs;
    /// nullopt if none does by `deadline` or the output ends first.
    std::optional<std::size_t> wait_for_first_of(const std::vector<std::string_view>& needles,
                                                 clock::time_point deadline) const;
    /// Whether the output ends (every writer closed it) by `deadline`.
    bool wait_for_output_end(clock::time_point deadline) const;
    /// Everything the child wrote so far.
    std::string output() const;

    /// Waits for the child to exit and reaps it, then (within the same
    /// deadline) for the reader thread to have collected all its output.
    /// Returns its exit code, or minus the signal number that ended it;
    /// nullopt if it is still running at `deadline`.
    std::optional<int> wait(clock::time_point deadline);
    std::optional<int> wait(std::chrono::milliseconds limit) { return wait(clock::now() + limit); }

private:
    std::optional<int> wait_without_pidfd(clock::time_point deadline);
    void read_output() noexcept;
    void stop() noexcept;

    std::string command_;
    pid_t pid_ = -1;
    std::optional<int> status_; // set once reaped
    int stdin_fd_ = -1;         // our end of the child's stdin (a socket: send() can avoid SIGPIPE)
    int output_fd_ = -1;        // read end of the child's stdout + stderr pipe
    int wake_fd_[2] = {-1, -1}; // a pipe that tells the reader thread to stop

    std::mutex stdin_mutex_;   // guards stdin_fd_; never held while output_ is needed
    mutable std::mutex mutex_; // guards the output
    mutable std::condition_variable changed_;
    std::string output_;
    bool output_ended_ = false;
    std::thread reader_;
};

/// pidfd_open(2): a descriptor that polls readable once `pid` has exited
/// (-1 on failure). Through syscall(): glibc 2.36's <sys/pidfd.h> lacks
/// extern "C", so its declaration cannot be linked from C++.
int open_pidfd(pid_t pid) noexcept;

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0,
/// read back, released). Another process may take it before the caller
/// does; start_listening retries for that reason.
int free_port();

/// Starts a server that must be told its port on the command line:
/// `make_argv(port)` with a free port, until the output shows `ready` (the
/// program's "listening" line). A child whose output shows `failed` first,
/// or that exits first, e.g. because the port was taken meanwhile, is ended
/// and retried with another port, up to `attempts` times. Throws
/// std::runtime_error, with the last output, if none is ready by `deadline`.
struct listening_process {
    std::unique_ptr<process> server;
    int port;
};
listening_process start_listening(const std::function<std::vector<std::string>(int port)>& make_argv,
                                  std::string_view ready, std::string_view failed, process::clock::time_point deadline,
                                  int attempts = 5);

} // namespace support

#endif
