// The per-connection log limit (see log_limit.hpp).
#include "server/log_limit.hpp"

namespace qnbd::server {

LogLimiter::Decision LogLimiter::next() {
    const Clock::time_point t = now_();
    if (logged_ < policy_.burst || t - last_ >= policy_.interval) {
        ++logged_;
        last_ = t;
        return Decision{true, take_suppressed()};
    }
    ++suppressed_;
    ++total_suppressed_;
    return Decision{false, 0};
}

void ConnectionLog::report(std::string_view peer, uint64_t n, std::string_view when) const {
    const LogLimiter::Policy& p = limiter_.policy();
    spdlog::warn("{}: {} log line{} suppressed {} (a client gets {} lines, then one per {} ms)",
                 peer, n, n == 1 ? "" : "s", when, p.burst, p.interval.count());
}

void ConnectionLog::finish(std::string_view peer) {
    if (const uint64_t n = limiter_.take_suppressed()) report(peer, n, "before it closed");
}

}  // namespace qnbd::server
