// Small coroutine synchronisation primitives for a single-threaded executor: an event that
// wakes every waiter, and a join set that runs sub-operations concurrently and collects the
// first error. None of them blocks the thread; waiters resume through the executor.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <exception>
#include <memory>
#include <optional>
#include <vector>

#include "base/result.hpp"

namespace qnbd {

namespace asio = boost::asio;
using asio::awaitable;

/// Wakes every coroutine waiting on it when notified. Waiters that arrive later wait for the
/// next notification.
class Notifier {
  public:
    /// Waits until the next notify_all().
    awaitable<void> wait() {
        auto ex = co_await asio::this_coro::executor;
        co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
            [this, ex](auto handler) {
                waiters_.push_back(Waiter{ex, std::move(handler)});
            },
            asio::use_awaitable);
    }
    /// Resumes every current waiter (through its executor, never inline).
    void notify_all() {
        auto waiters = std::move(waiters_);
        waiters_.clear();
        for (auto& w : waiters)
            asio::post(w.ex, [h = std::move(w.handler)]() mutable { std::move(h)(); });
    }
    bool has_waiters() const { return !waiters_.empty(); }

  private:
    struct Waiter {
        asio::any_io_executor ex;
        asio::any_completion_handler<void()> handler;
    };
    std::vector<Waiter> waiters_;
};

/// Runs sub-operations concurrently and waits for all of them; remembers the first error.
class JoinSet {
  public:
    explicit JoinSet(asio::any_io_executor ex) : state_(std::make_shared<State>()), ex_(ex) {}

    /// Starts `op` now; it runs concurrently with the caller.
    void spawn(awaitable<Result<void>> op) {
        ++state_->pending;
        asio::co_spawn(ex_, std::move(op), [s = state_](std::exception_ptr e, Result<void> r) {
            if (e && !s->error)
                s->error = Error{EIO, "internal error in I/O sub-operation"};
            else if (!e && !r && !s->error)
                s->error = r.error();
            if (--s->pending == 0) s->done.notify_all();
        });
    }
    /// Waits for every spawned operation; returns the first error, if any.
    awaitable<Result<void>> wait() {
        while (state_->pending > 0) co_await state_->done.wait();
        if (state_->error) co_return *state_->error;
        co_return ok();
    }

  private:
    struct State {
        size_t pending = 0;
        std::optional<Error> error;
        Notifier done;
    };
    std::shared_ptr<State> state_;
    asio::any_io_executor ex_;
};

}  // namespace qnbd
