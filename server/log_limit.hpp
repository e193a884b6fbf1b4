// Rate limit for the log lines one client can cause: every refused request or bad option is
// worth a line, and without a limit one client could fill the disk with them. The first `burst`
// lines of a connection are logged; after that one line per `interval`, preceded by the count of
// lines suppressed since the last one, and the count still unreported is logged when the
// connection ends.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string_view>
#include <utility>

namespace qnbd::server {

/// How much one connection may log.
struct LogPolicy {
    uint32_t burst = 20;                         ///< Lines logged before any is suppressed.
    std::chrono::milliseconds interval{10'000};  ///< Then at most one line per interval.
};

/// The pure decision: whether the next line goes out, and what was swallowed before it.
class LogLimiter {
  public:
    using Clock = std::chrono::steady_clock;
    using Policy = LogPolicy;
    /// What to do with one line.
    struct Decision {
        bool emit = false;        ///< Log this line.
        uint64_t suppressed = 0;  ///< When emitting: lines suppressed since the last logged one.
    };

    explicit LogLimiter(Policy p = {}, std::function<Clock::time_point()> now = Clock::now)
        : policy_(p), now_(std::move(now)) {}

    /// Called once per line the connection wants to log.
    Decision next();
    /// Lines suppressed and not yet reported; resets the count (for the end of the connection).
    uint64_t take_suppressed() { return std::exchange(suppressed_, 0); }
    const Policy& policy() const { return policy_; }
    /// Lines suppressed over the connection's life, reported or not.
    uint64_t total_suppressed() const { return total_suppressed_; }

  private:
    Policy policy_;
    std::function<Clock::time_point()> now_;
    uint64_t logged_ = 0;
    uint64_t suppressed_ = 0;
    uint64_t total_suppressed_ = 0;
    Clock::time_point last_{};  ///< When the last logged line went out.
};

/// A connection's log: lines named by the peer and limited by a LogLimiter.
class ConnectionLog {
  public:
    explicit ConnectionLog(LogLimiter::Policy p = {}) : limiter_(p) {}

    /// Logs "PEER: MESSAGE" at `level` unless the limit says otherwise. The message is only
    /// formatted when it is logged.
    template <class... Args>
    void log(spdlog::level::level_enum level, std::string_view peer, fmt::format_string<Args...> f,
             Args&&... args) {
        if (!spdlog::should_log(level)) return;
        const LogLimiter::Decision d = limiter_.next();
        if (!d.emit) return;
        if (d.suppressed) report(peer, d.suppressed, "since the last one");
        spdlog::log(level, "{}: {}", peer, fmt::format(f, std::forward<Args>(args)...));
    }
    /// At the end of the connection: logs how many lines were suppressed and not yet counted.
    void finish(std::string_view peer);

  private:
    void report(std::string_view peer, uint64_t n, std::string_view when) const;

    LogLimiter limiter_;
};

}  // namespace qnbd::server
