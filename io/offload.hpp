// Running a blocking system call off the reactor thread: the few file operations io_uring has
// no opcode for (lseek's SEEK_DATA/SEEK_HOLE) run on one shared helper thread, and the
// coroutine resumes on its own executor with the result.
#pragma once

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <type_traits>
#include <utility>

namespace qnbd::io {

namespace asio = boost::asio;

/// The helper thread blocking calls run on (created on first use, one per process).
asio::thread_pool& offload_pool();

/// Runs `fn()` on the helper thread and returns its result on the awaiting coroutine's
/// executor, which counts as busy meanwhile (its io_context does not run out of work). `fn` must
/// not touch state of the caller's thread (it runs concurrently with it). Not a coroutine
/// itself: `fn` is held by the operation, never by a coroutine parameter.
template <class Fn>
auto offload(Fn fn) {
    using R = std::invoke_result_t<Fn>;
    return asio::async_initiate<decltype(asio::use_awaitable), void(R)>(
        [](auto handler, Fn fn) {
            auto work = asio::make_work_guard(asio::get_associated_executor(handler));
            asio::post(offload_pool(), [fn = std::move(fn), h = std::move(handler),
                                        work = std::move(work)]() mutable {
                R result = fn();
                auto ex = work.get_executor();
                asio::post(ex, [h = std::move(h), result = std::move(result)]() mutable {
                    std::move(h)(std::move(result));
                });
            });
        },
        asio::use_awaitable, std::move(fn));
}

}  // namespace qnbd::io
