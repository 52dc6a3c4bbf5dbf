// tls_stream over Asio: the asynchronous members of
// tls::tls_stream<asio::ip::tcp::socket, Policy> (any Asio socket), for
// callbacks and C++20 coroutines alike.
//
// Include this header instead of <tls_stream.hpp> (it includes both
// <asio.hpp> and <tls_stream.hpp>). The members are declared by
// tls_stream.hpp and defined here; without this header they do not compile
// (an incomplete tls::detail::asio_ops).
//
// Each operation is the stream's own non-blocking step (try_connect,
// try_read_some, ...) in a loop: the step never waits; when it needs the
// descriptor readable or writable, the socket's async_wait does the waiting.
// The close that async_shutdown runs is bounded by the policy's timeout with
// an asio::steady_timer.
//
// Destructor rule: a stream on which no asynchronous operation was ever
// started keeps the blocking close. Once one was started (async_connect,
// async_accept, async_read_some, async_write_some, async_close_write or
// async_shutdown), the destructor of an open stream does what needs no
// waiting (our close_notify out) and, if the policy still has to wait, moves
// the whole stream (SSL and socket) into a detached job on the socket's
// executor that finishes the close within the policy's deadline and then
// closes the socket. It never blocks. If the io_context is stopped, the job
// waits with it; if it is destroyed, the job is freed without waiting (the
// socket closes, what the policy had not finished is abandoned).
#ifndef TLS_STREAM_ASIO_HPP
#define TLS_STREAM_ASIO_HPP

#include <asio.hpp>

#include <tls_stream.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace tls::detail {

inline asio::socket_base::wait_type asio_wait_type(want w) noexcept
{
    return w == want::write ? asio::socket_base::wait_write : asio::socket_base::wait_read;
}

// Like asio::ssl::stream: an operation moves the first non-empty buffer of
// the sequence; asio::async_read / async_write loop over the rest.
template <class Buffers>
std::span<std::byte> first_mutable(const Buffers& buffers) noexcept
{
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers); ++it) {
        const asio::mutable_buffer b(*it);
        if (b.size() != 0)
            return {static_cast<std::byte*>(b.data()), b.size()};
    }
    return {};
}
template <class Buffers>
std::span<const std::byte> first_const(const Buffers& buffers) noexcept
{
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers); ++it) {
        const asio::const_buffer b(*it);
        if (b.size() != 0)
            return {static_cast<const std::byte*>(b.data()), b.size()};
    }
    return {};
}

template <class Stream>
struct asio_ops {
    using socket_type = typename Stream::socket_type;
    using phase = typename Stream::phase;
    using clock = std::chrono::steady_clock;

    // ------------------------------------------------ one step, then a wait

    // The loop every operation but async_shutdown runs. `Step` makes one
    // step (`want step(Stream&, std::error_code&)`), says what a
    // cancellation or a failed wait does to the stream
    // (`abort(Stream&, std::error_code)`) and completes
    // (`complete(Self&, std::error_code)`).
    template <class Step>
    struct step_op {
        Stream& s;
        Step step;
        bool started = false;   // an intermediate wait happened: completing now is not inline
        bool completed = false; // the first step finished: complete from the posted call
        std::error_code ec{};

        template <class Self>
        void operator()(Self& self, std::error_code waited = {})
        {
            if (completed)
                return step.complete(self, ec);
            if (!started && Step::any_cancellation)
                self.reset_cancellation_state(asio::enable_total_cancellation());
            if (waited) { // cancelled (slot or socket.cancel()), or the socket failed
                step.abort(s, waited);
                return step.complete(self, waited);
            }
            const want w = step.run(s, ec);
            if (w == want::nothing) {
                if (started)
                    return step.complete(self, ec);
                // A handler is never called from inside its initiating function.
                completed = true;
                auto ex = s.get_executor();
                return asio::post(ex, std::move(self));
            }
            started = true;
            s.socket().async_wait(asio_wait_type(w), std::move(self));
        }
    };

    // A cancelled handshake or write leaves OpenSSL mid-record: the stream
    // fails with that error, as with a blocking I/O timeout.
    static void fail(Stream& s, std::error_code cause) noexcept
    {
        if (s.st_.stage == phase::handshaking || s.st_.stage == phase::open) {
            std::error_code ignored;
            s.fail(cause, ignored);
        }
    }

    struct handshake_step {
        std::string host; // owned: a deferred operation starts after the caller's string is gone
        bool client;
        bool check_host;
        static constexpr bool any_cancellation = false; // terminal only: it fails the stream
        want run(Stream& s, std::error_code& ec)
        {
            if (!client)
                return s.try_accept(ec);
            return check_host ? s.try_connect(host, ec) : s.try_connect(ec);
        }
        static void abort(Stream& s, std::error_code cause) noexcept { fail(s, cause); }
        template <class Self>
        static void complete(Self& self, std::error_code ec)
        {
            self.complete(ec);
        }
    };

    struct read_step {
        std::span<std::byte> buf;
        std::size_t n = 0;
        static constexpr bool any_cancellation = true; // nothing is lost: the read can be retried
        want run(Stream& s, std::error_code& ec)
        {
            const want w = s.try_read_some(buf, n, ec);
            if (w == want::nothing && !ec && n == 0 && !buf.empty())
                ec = asio::error::eof; // the peer's close_notify, as Asio's streams say it
            return w;
        }
        static void abort(Stream&, std::error_code) noexcept {} // a read can be retried
        template <class Self>
        void complete(Self& self, std::error_code ec)
        {
            self.complete(ec, ec ? 0 : n);
        }
    };

    struct write_step {
        std::span<const std::byte> buf;
        std::size_t n = 0;
        static constexpr bool any_cancellation = false; // terminal only: it fails the stream
        want run(Stream& s, std::error_code& ec) { return s.try_write_some(buf, n, ec); }
        static void abort(Stream& s, std::error_code cause) noexcept { fail(s, cause); }
        template <class Self>
        void complete(Self& self, std::error_code ec)
        {
            self.complete(ec, ec ? 0 : n);
        }
    };

    struct close_write_step {
        static constexpr bool any_cancellation = false; // terminal only: it fails the stream
        static want run(Stream& s, std::error_code& ec) { return s.try_close_write(ec); }
        static void abort(Stream& s, std::error_code cause) noexcept { fail(s, cause); }
        template <class Self>
        static void complete(Self& self, std::error_code ec)
        {
            self.complete(ec);
        }
    };

    template <class Signature, class Step, class Token>
    static auto start(Stream& s, Step step, Token&& token)
    {
        mark(s);
        return asio::async_compose<Token, Signature>(step_op<Step>{s, std::move(step)}, token, s.socket());
    }

    template <class Token>
    static auto connect(Stream& s, std::string_view host, Token&& token)
    {
        return start<void(std::error_code)>(s, handshake_step{std::string(host), true, true},
                                            std::forward<Token>(token));
    }
    template <class Token>
    static auto connect(Stream& s, Token&& token)
    {
        return start<void(std::error_code)>(s, handshake_step{{}, true, false}, std::forward<Token>(token));
    }
    template <class Token>
    static auto accept(Stream& s, Token&& token)
    {
        return start<void(std::error_code)>(s, handshake_step{{}, false, false}, std::forward<Token>(token));
    }
    template <class Buffers, class Token>
    static auto read_some(Stream& s, const Buffers& buffers, Token&& token)
    {
        return start<void(std::error_code, std::size_t)>(s, read_step{first_mutable(buffers)},
                                                         std::forward<Token>(token));
    }
    template <class Buffers, class Token>
    static auto write_some(Stream& s, const Buffers& buffers, Token&& token)
    {
        return start<void(std::error_code, std::size_t)>(s, write_step{first_const(buffers)},
                                                         std::forward<Token>(token));
    }
    template <class Token>
    static auto close_write(Stream& s, Token&& token)
    {
        return start<void(std::error_code)>(s, close_write_step{}, std::forward<Token>(token));
    }

    // ------------------------------------------------ async_shutdown: the close with its deadline

    // The deadline's timer, shared with its handler so that a handler that
    // runs after the operation ended touches nothing that is gone.
    struct deadline_timer {
        explicit deadline_timer(socket_type& sock) : timer(sock.get_executor()), socket(&sock) {}
        asio::steady_timer timer;
        socket_type* socket;
        clock::time_point armed = clock::time_point::max();
        bool fired = false; // the wait on the socket was cancelled to run the step again
        bool done = false;
    };

    struct shutdown_op {
        Stream& s;
        std::shared_ptr<deadline_timer> timer{};
        bool started = false;
        bool completed = false;
        shutdown_result r = shutdown_result::none;
        std::error_code ec{};

        template <class Self>
        void operator()(Self& self, std::error_code waited = {})
        {
            if (completed)
                return self.complete(ec, r);
            if (!started) // any cancellation ends the close now, as its deadline would
                self.reset_cancellation_state(asio::enable_total_cancellation());
            // Woken by the timer (the deadline, or a lingering close's look
            // at its send queue): the step runs again.
            const bool woken = timer && std::exchange(timer->fired, false);
            if (waited && !woken) { // cancelled, or the socket failed: the close ends now
                s.end_close(s.st_.sent_cn ? shutdown_result::sent : shutdown_result::none, waited);
                return finish(self);
            }
            const want w = s.try_shutdown(r, ec);
            if (w == want::nothing)
                return finish(self);
            if (!arm(s.close_wake()))
                return finish(self); // no memory for the timer: try_shutdown ended the close
            started = true;
            s.socket().async_wait(asio_wait_type(w), std::move(self));
        }

        // The timer cancels the wait on the socket at `wake`, so the step
        // runs again; past the deadline it ends the close with errc::timeout.
        bool arm(clock::time_point wake)
        {
            try {
                if (!timer)
                    timer = std::make_shared<deadline_timer>(s.socket());
            } catch (...) { // std::bad_alloc: end the close rather than wait without a deadline
                s.end_close(s.st_.sent_cn ? shutdown_result::sent : shutdown_result::none, errc::timeout);
                return false;
            }
            if (timer->armed == wake)
                return true;
            timer->armed = wake;
            timer->timer.expires_at(wake);
            timer->timer.async_wait([t = timer](std::error_code e) {
                if (e || t->done)
                    return;
                t->armed = clock::time_point::max();
                t->fired = true;
                std::error_code ignored;
                t->socket->cancel(ignored);
            });
            return true;
        }

        template <class Self>
        void finish(Self& self)
        {
            s.outcome(r, ec);
            if (timer) {
                timer->done = true;
                timer->timer.cancel();
            }
            if (started)
                return self.complete(ec, r);
            completed = true;
            auto ex = s.get_executor();
            asio::post(ex, std::move(self));
        }
    };

    template <class Token>
    static auto shutdown(Stream& s, Token&& token)
    {
        mark(s);
        return asio::async_compose<Token, void(std::error_code, shutdown_result)>(shutdown_op{s}, token, s.socket());
    }

    // ------------------------------------------------ the destructor's close, detached

    // The stream, moved out of its destructor, with what drives its close.
    // Shared by the pending waits; the last one to end frees it, which frees
    // the SSL and closes the socket. An io_context destroyed first destroys
    // the waits, and with them the job, without waiting.
    struct close_job {
        close_job(Stream&& stream, asio::strand<typename socket_type::executor_type> st)
            : strand(std::move(st)), timer(strand), s(std::move(stream))
        {
        }
        close_job(const close_job&) = delete;
        close_job& operator=(const close_job&) = delete;
        ~close_job()
        {
            if (!done) // abandoned (the io_context went away): free, do not wait
                s.st_.stage = phase::finished;
        }

        asio::strand<typename socket_type::executor_type> strand;
        asio::steady_timer timer;
        Stream s; // after the timer: if the timer's constructor throws, the stream has not moved
        clock::time_point armed = clock::time_point::max();
        want waiting = want::nothing;
        bool socket_waits = false;
        bool done = false;
    };

    static void advance(const std::shared_ptr<close_job>& job, want w) noexcept
    {
        try {
            wait_for(job, w);
        } catch (...) { // Asio could not allocate a wait: give up the close, free the stream
            end(*job);
        }
    }

    static void wait_for(const std::shared_ptr<close_job>& job, want w)
    {
        close_job& j = *job;
        std::error_code ignored;
        if (w == want::nothing) {
            j.done = true;
            j.timer.cancel();
            if (j.socket_waits)
                j.s.socket().cancel(ignored);
            return;
        }
        if (!j.socket_waits) {
            j.socket_waits = true;
            j.waiting = w;
            j.s.socket().async_wait(asio_wait_type(w), asio::bind_executor(j.strand, [job](std::error_code e) {
                                        job->socket_waits = false;
                                        if (job->done)
                                            return;
                                        if (e && e != asio::error::operation_aborted) // the socket failed
                                            return end(*job);
                                        advance(job, job->s.close_step());
                                    }));
        } else if (w != j.waiting) {
            j.s.socket().cancel(ignored); // its handler waits again, the other way
        }
        const clock::time_point wake = j.s.close_wake();
        if (wake == j.armed)
            return;
        j.armed = wake;
        j.timer.expires_at(wake);
        j.timer.async_wait(asio::bind_executor(j.strand, [job](std::error_code e) {
            if (e || job->done)
                return;
            job->armed = clock::time_point::max();
            advance(job, job->s.close_step());
        }));
    }

    static void end(close_job& j) noexcept
    {
        j.s.end_close(j.s.st_.sent_cn ? shutdown_result::sent : shutdown_result::none, errc::closed);
        j.done = true;
        std::error_code ignored;
        try {
            j.timer.cancel();
        } catch (...) { // Asio's cancel() reports by throwing; a handler that still runs sees done
        }
        j.s.socket().cancel(ignored);
    }

    // The destructor's hand-off: one step here; if the policy must still
    // wait, the stream moves into a close_job. false: nothing was taken
    // (the close ended, or no memory: the destructor closes as usual).
    static bool detach_close(Stream& s) noexcept
    {
        const want w = s.close_step();
        if (w == want::nothing)
            return false;
        std::shared_ptr<close_job> job;
        try {
            job = std::make_shared<close_job>(std::move(s), asio::make_strand(s.socket().get_executor()));
        } catch (...) {
            return false;
        }
        job->s.st_.async_close = nullptr;
        advance(job, w);
        return true;
    }

    static void mark(Stream& s) noexcept { s.st_.async_close = &detach_close; }
};

} // namespace tls::detail

#endif // TLS_STREAM_ASIO_HPP
