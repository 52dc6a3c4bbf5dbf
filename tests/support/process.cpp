#include "process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

extern char** environ;

namespace support {

namespace {

// Whether `program` names an executable file, directly (with a '/') or
// through PATH, as posix_spawnp would find it.
bool executable_in_path(const std::string& program)
{
    if (program.find('/') != std::string::npos)
        return ::access(program.c_str(), X_OK) == 0;
    const char* path = std::getenv("PATH");
    std::string_view dirs = path ? path : "/usr/bin:/bin";
    for (;;) {
        const std::size_t colon = dirs.find(':');
        std::string dir(dirs.substr(0, colon));
        if (dir.empty())
            dir = ".";
        dir += '/';
        dir += program;
        if (::access(dir.c_str(), X_OK) == 0)
            return true;
        if (colon == std::string_view::npos)
            return false;
        dirs.remove_prefix(colon + 1);
    }
}

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what + ": " + std::strerror(errno)); }

void close_fd(int& fd) noexcept
{
    if (fd >= 0) {
        ::close(fd);
        fd = -1;
    }
}

// Milliseconds until `deadline` for poll(), rounded up, never negative.
int poll_timeout(process::clock::time_point deadline)
{
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - process::clock::now());
    return left.count() <= 0 ? 0 : static_cast<int>(std::min<long long>(left.count(), 60'000));
}

int decode_status(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return WIFSIGNALED(status) ? -WTERMSIG(status) : -1;
}

// Owns the posix_spawn attribute objects for the duration of one spawn.
struct spawn_setup {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;

    spawn_setup()
    {
        if (posix_spawn_file_actions_init(&actions) != 0)
            fail("posix_spawn_file_actions_init");
        if (posix_spawnattr_init(&attr) != 0) {
            posix_spawn_file_actions_destroy(&actions);
            fail("posix_spawnattr_init");
        }
    }
    spawn_setup(const spawn_setup&) = delete;
    spawn_setup& operator=(const spawn_setup&) = delete;
    ~spawn_setup()
    {
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&actions);
    }
};

void check_spawn(int r, const char* what)
{
    if (r != 0) {
        errno = r;
        fail(what);
    }
}

} // namespace

process::process(std::vector<std::string> argv)
{
    if (argv.empty())
        throw std::invalid_argument("support::process: empty argv");
    for (const auto& a : argv)
        command_ += (command_.empty() ? "" : " ") + a;

    // stdin is a socket so that writing to a child that stopped reading
    // fails with EPIPE (send + MSG_NOSIGNAL) instead of raising SIGPIPE.
    int in[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0)
        fail("socketpair");
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
        ::close(in[0]);
        ::close(in[1]);
        fail("pipe2");
    }
    stdin_fd_ = in[0];
    output_fd_ = out[0];
    int child_in = in[1];
    int child_out = out[1];

    try {
        if (::pipe2(wake_fd_, O_CLOEXEC) != 0)
            fail("pipe2");
        spawn_setup s;
        check_spawn(posix_spawn_file_actions_adddup2(&s.actions, child_in, 0), "adddup2");
        check_spawn(posix_spawn_file_actions_adddup2(&s.actions, child_out, 1), "adddup2");
        check_spawn(posix_spawn_file_actions_adddup2(&s.actions, child_out, 2), "adddup2");
        // The test binary holds sockets without FD_CLOEXEC; a child that kept
        // one open would keep that connection alive after the test closed it.
        check_spawn(posix_spawn_file_actions_addclosefrom_np(&s.actions, 3), "addclosefrom_np");

        // Its own group, so that the destructor can end it with whatever it
        // started; default signal handling and an empty mask whatever the
        // calling thread uses (peer threads block SIGPIPE).
        sigset_t defaults;
        sigemptyset(&defaults);
        for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD})
            sigaddset(&defaults, sig);
        sigset_t empty;
        sigemptyset(&empty);
        check_spawn(posix_spawnattr_setpgroup(&s.attr, 0), "setpgroup");
        check_spawn(posix_spawnattr_setsigdefault(&s.attr, &defaults), "setsigdefault");
        check_spawn(posix_spawnattr_setsigmask(&s.attr, &empty), "setsigmask");
        check_spawn(
            posix_spawnattr_setflags(&s.attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK),
            "setflags");

        std::vector<char*> args;
        args.reserve(argv.size() + 1);
        for (auto& a : argv)
            args.push_back(a.data());
        args.push_back(nullptr);
        // posix_spawnp reports a missing program only where the C library
        // can pass the exec failure back (not under valgrind): look first.
        if (!executable_in_path(argv[0])) {
            errno = ENOENT;
            fail("cannot start " + command_);
        }
        const int r = posix_spawnp(&pid_, args[0], &s.actions, &s.attr, args.data(), environ);
        if (r != 0) {
            pid_ = -1;
            errno = r;
            fail("cannot start " + command_);
        }
    } catch (...) {
        close_fd(child_in);
        close_fd(child_out);
        close_fd(stdin_fd_);
        close_fd(output_fd_);
        close_fd(wake_fd_[0]);
        close_fd(wake_fd_[1]);
        throw;
    }
    close_fd(child_in);
    close_fd(child_out);
    reader_ = std::thread([this] { read_output(); });
}

process::~process() { stop(); }

void process::stop() noexcept
{
    if (pid_ > 0 && !status_) {
        ::kill(-pid_, SIGTERM);
        if (!wait(clock::now() + std::chrono::seconds(2))) {
            ::kill(-pid_, SIGKILL);
            int status = 0;
            while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
            }
            status_ = decode_status(status);
        }
    }
    close_stdin();
    if (reader_.joinable()) {
        // A grandchild outside the group could keep the pipe open forever;
        // the reader thread must not wait for it.
        const char stop_byte = 1;
        [[maybe_unused]] const auto w = ::write(wake_fd_[1], &stop_byte, 1);
        reader_.join();
    }
    close_fd(output_fd_);
    close_fd(wake_fd_[0]);
    close_fd(wake_fd_[1]);
}

bool process::write_stdin(std::string_view data)
{
    std::lock_guard lock(stdin_mutex_);
    while (!data.empty()) {
        if (stdin_fd_ < 0)
            return false;
        const ssize_t n = ::send(stdin_fd_, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
}

void process::close_stdin() noexcept
{
    std::lock_guard lock(stdin_mutex_);
    close_fd(stdin_fd_);
}

void process::read_output() noexcept
{
    char buf[4096];
    for (;;) {
        pollfd fds[2] = {{output_fd_, POLLIN, 0}, {wake_fd_[0], POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (fds[1].revents != 0)
            break;
        const ssize_t n = ::read(output_fd_, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        std::lock_guard lock(mutex_);
        output_.append(buf, static_cast<std::size_t>(n));
        changed_.notify_all();
    }
    std::lock_guard lock(mutex_);
    output_ended_ = true;
    changed_.notify_all();
}

bool process::wait_for_output(std::string_view needle, clock::time_point deadline) const
{
    std::unique_lock lock(mutex_);
    changed_.wait_until(lock, deadline, [&] { return output_ended_ || output_.find(needle) != std::string::npos; });
    return output_.find(needle) != std::string::npos;
}

std::optional<std::string> process::wait_for_line(std::string_view needle, clock::time_point deadline) const
{
    std::optional<std::string> line;
    const auto found = [&] {
        const std::size_t at = output_.find(needle);
        if (at == std::string::npos)
            return false;
        const std::size_t end = output_.find('\n', at);
        if (end == std::string::npos)
            return false;
        const std::size_t from = at + needle.size();
        line = output_.substr(from, end - from);
        return true;
    };
    std::unique_lock lock(mutex_);
    changed_.wait_until(lock, deadline, [&] { return found() || output_ended_; });
    return line;
}

std::optional<std::size_t> process::wait_for_first_of(const std::vector<std::string_view>& needles,
                                                      clock::time_point deadline) const
{
    std::optional<std::size_t> first;
    const auto found = [&] {
        std::size_t best = std::string::npos;
        for (std::size_t i = 0; i < needles.size(); ++i) {
            const std::size_t at = output_.find(needles[i]);
            if (at < best) {
                best = at;
                first = i;
            }
        }
        return first.has_value();
    };
    std::unique_lock lock(mutex_);
    changed_.wait_until(lock, deadline, [&] { return found() || output_ended_; });
    return first;
}

bool process::wait_for_output_end(clock::time_point deadline) const
{
    std::unique_lock lock(mutex_);
    return changed_.wait_until(lock, deadline, [&] { return output_ended_; });
}

std::string process::output() const
{
    std::lock_guard lock(mutex_);
    return output_;
}

std::optional<int> process::wait(clock::time_point deadline)
{
    if (status_ || pid_ <= 0)
        return status_;
    // A pidfd becomes readable when the child exits: no polling loop.
    const int pidfd = open_pidfd(pid_);
    if (pidfd < 0)
        return wait_without_pidfd(deadline);
    for (;;) {
        int status = 0;
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == pid_) {
            status_ = decode_status(status);
            break;
        }
        if (r < 0 && errno != EINTR)
            break;
        pollfd p{pidfd, POLLIN, 0};
        const int timeout = poll_timeout(deadline);
        const int k = ::poll(&p, 1, timeout);
        if (k == 0 && timeout == 0)
            break;
        if (k < 0 && errno != EINTR)
            break;
    }
    ::close(pidfd);
    // Exited is not yet read: the reader thread may still be draining the
    // pipe. What the child printed belongs to its result.
    if (status_)
        wait_for_output_end(deadline);
    return status_;
}

// Without pidfd_open (valgrind 3.19 does not know the system call): the
// child's exit closes its output, which the reader thread reports; the
// moment between that and the exit itself is waited out in 1 ms steps.
std::optional<int> process::wait_without_pidfd(clock::time_point deadline)
{
    if (!wait_for_output_end(deadline))
        return std::nullopt;
    for (;;) {
        int status = 0;
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == pid_) {
            status_ = decode_status(status);
            return status_;
        }
        if ((r < 0 && errno != EINTR) || clock::now() >= deadline)
            return std::nullopt;
        ::poll(nullptr, 0, 1);
    }
}

int open_pidfd(pid_t pid) noexcept { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

int free_port()
{
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0
                    && ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
    const int saved = errno;
    ::close(fd);
    errno = saved;
    if (!ok)
        fail("bind/getsockname");
    return ntohs(addr.sin_port);
}

listening_process start_listening(const std::function<std::vector<std::string>(int port)>& make_argv,
                                  std::string_view ready, std::string_view failed, process::clock::time_point deadline,
                                  int attempts)
{
    std::string last;
    for (int i = 0; i < attempts; ++i) {
        const int port = free_port();
        auto server = std::make_unique<process>(make_argv(port));
        if (server->wait_for_first_of({ready, failed}, deadline) == 0u)
            return {std::move(server), port};
        last = server->command() + " printed:\n" + server->output();
        if (process::clock::now() >= deadline)
            break;
        // It failed or exited before listening, most likely because the
        // port was taken in the meantime. Try another.
    }
    throw std::runtime_error("support::start_listening: no server ready; " + last);
}

} // namespace support
