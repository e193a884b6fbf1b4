// Completion handlers for coroutines started with asio::co_spawn that nothing waits for: an
// exception escaping one is logged once, where it was spawned, instead of being dropped.
#pragma once

#include <spdlog/spdlog.h>

#include <exception>
#include <string>
#include <utility>

namespace qnbd::server {

/// The message of the exception held by `e` (what(), or a placeholder for other types).
inline std::string exception_message(std::exception_ptr e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "exception of unknown type";
    }
}

/// Use instead of asio::detached: an exception that escapes is logged as an error naming `task`.
inline auto log_if_thrown(std::string task) {
    return [task = std::move(task)](std::exception_ptr e) {
        if (e) spdlog::error("{}: internal error: {}", task, exception_message(e));
    };
}

}  // namespace qnbd::server
