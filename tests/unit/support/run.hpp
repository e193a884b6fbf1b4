// Running coroutines from the tests: to completion on an io_context, several at once, or
// started now and joined later; waiting for a condition with a deadline.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "base/async.hpp"

namespace qnbd::test {

namespace asio = boost::asio;
using asio::awaitable;

/// Runs one coroutine to completion on `io` (restarted first) and returns its result.
template <class T>
T run(asio::io_context& io, awaitable<T> aw) {
    auto fut = asio::co_spawn(io, std::move(aw), asio::use_future);
    io.restart();
    io.run();
    return fut.get();
}

/// Runs a coroutine-returning callable to completion on `io`.
template <class F>
void run_co(asio::io_context& io, F&& f) {
    run(io, std::forward<F>(f)());
}

/// Lets every other ready handler of the current executor run once before resuming.
inline awaitable<void> yield_once() {
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
}

/// Runs all `tasks` concurrently on the current executor and waits for every one; rethrows
/// the first exception (e.g. a failed REQUIRE) after all have finished.
inline awaitable<void> when_all(std::vector<awaitable<void>> tasks) {
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer done(ex, asio::steady_timer::time_point::max());
    size_t left = tasks.size();
    std::exception_ptr first;
    for (auto& t : tasks) {
        asio::co_spawn(ex, std::move(t), [&](std::exception_ptr e) {
            if (e && !first) first = e;
            if (--left == 0) done.cancel();
        });
    }
    if (left > 0) {
        boost::system::error_code ec;
        co_await done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (first) std::rethrow_exception(first);
}

/// Waits until `cond()` holds, checking it again whenever `changed` is notified; false if it
/// still does not hold after `timeout`. Never blocks the thread.
inline awaitable<bool> wait_for(Notifier& changed, std::function<bool()> cond,
                                std::chrono::milliseconds timeout) {
    if (cond()) co_return true;
    struct State {
        bool waiting = true, expired = false;
    };
    auto st = std::make_shared<State>();
    asio::steady_timer timer(co_await asio::this_coro::executor, timeout);
    timer.async_wait([st, &changed](boost::system::error_code ec) {
        if (ec || !st->waiting) return;
        st->expired = true;
        changed.notify_all();
    });
    while (!cond() && !st->expired) co_await changed.wait();
    st->waiting = false;
    timer.cancel();
    co_return cond();
}

/// A coroutine started on an executor at construction and joined later; whether it has
/// finished can be asked at any time.
class Task {
  public:
    /// Starts `body` on `ex`; called on that executor's thread, it runs `body` up to its first
    /// suspension before returning.
    Task(asio::any_io_executor ex, awaitable<void> body) : st_(std::make_shared<State>()) {
        asio::co_spawn(ex, std::move(body), [st = st_](std::exception_ptr e) {
            st->error = e;
            st->done = true;
            st->finished.notify_all();
        });
    }
    /// True once the coroutine has returned or thrown.
    bool done() const { return st_->done; }
    /// Waits up to `timeout` for the coroutine to finish; true if it did.
    awaitable<bool> finished_within(std::chrono::milliseconds timeout) {
        const std::function<bool()> cond = [st = st_] { return st->done; };  // named: see open_ok
        co_return co_await wait_for(st_->finished, cond, timeout);
    }
    /// Waits for the coroutine to finish and rethrows what it threw (e.g. a failed REQUIRE).
    awaitable<void> join() {
        while (!st_->done) co_await st_->finished.wait();
        if (st_->error) std::rethrow_exception(st_->error);
    }

  private:
    struct State {
        bool done = false;
        std::exception_ptr error;
        Notifier finished;
    };
    std::shared_ptr<State> st_;
};

}  // namespace qnbd::test
