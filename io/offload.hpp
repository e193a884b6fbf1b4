// Running a blocking system call off the reactor thread: the few file operations io_uring has
// no opcode for (lseek's SEEK_DATA/SEEK_HOLE) run on one shared helper thread, and the
// coroutine resumes on its own executor with the result.
#pragma once

#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <optional>
#include <utility>

namespace qnbd::io {

namespace asio = boost::asio;

/// The helper thread blocking calls run on (created on first use, one per process).
asio::thread_pool& offload_pool();

/// Runs `fn()` on the helper thread and returns its result on the caller's executor. `fn` must
/// not touch state of the caller's thread (it runs concurrently with it).
template <class Fn>
asio::awaitable<std::invoke_result_t<Fn>> offload(Fn fn) {
    using R = std::invoke_result_t<Fn>;
    auto ex = co_await asio::this_coro::executor;
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(R)>(
        [ex, fn = std::move(fn)](auto handler) mutable {
            asio::post(offload_pool(), [ex, fn = std::move(fn), h = std::move(handler)]() mutable {
                R result = fn();
                asio::post(ex, [h = std::move(h), result = std::move(result)]() mutable {
                    std::move(h)(std::move(result));
                });
            });
        },
        asio::use_awaitable);
}

}  // namespace qnbd::io
