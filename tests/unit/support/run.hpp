// Running coroutines from the tests: to completion on an io_context, or several at once.
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
#include <exception>
#include <utility>
#include <vector>

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

}  // namespace qnbd::test
