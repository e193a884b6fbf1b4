// The per-connection log limit (server/log_limit.hpp): a burst, then one line per interval, and
// every suppressed line counted exactly once.
#include <catch2/catch.hpp>

#include <thread>

#include "server/log_limit.hpp"
#include "support/log_capture.hpp"

using qnbd::server::ConnectionLog;
using qnbd::server::LogLimiter;
using namespace std::chrono_literals;

namespace {

/// A clock the test moves by hand.
struct FakeClock {
    LogLimiter::Clock::time_point t{std::chrono::hours(1)};
    auto fn() {
        return [this] { return t; };
    }
};

}  // namespace

TEST_CASE("log limit: the burst goes out, then nothing until the interval passes", "[log_limit]") {
    FakeClock clock;
    LogLimiter l({.burst = 3, .interval = 1000ms}, clock.fn());
    for (int i = 0; i < 3; ++i) {
        auto d = l.next();
        CHECK(d.emit);
        CHECK(d.suppressed == 0);
    }
    for (int i = 0; i < 50; ++i) {
        CHECK_FALSE(l.next().emit);
        clock.t += 10ms;  // 500 ms in all: still within the interval
    }
    clock.t += 500ms;
    auto d = l.next();
    CHECK(d.emit);
    CHECK(d.suppressed == 50);
    CHECK_FALSE(l.next().emit);  // the interval starts again at the line just logged
    CHECK(l.total_suppressed() == 51);
    CHECK(l.take_suppressed() == 1);
    CHECK(l.take_suppressed() == 0);
}

TEST_CASE("log limit: a quiet client is never limited", "[log_limit]") {
    FakeClock clock;
    LogLimiter l({.burst = 2, .interval = 1000ms}, clock.fn());
    for (int i = 0; i < 100; ++i) {
        auto d = l.next();
        CHECK(d.emit);
        CHECK(d.suppressed == 0);
        clock.t += 1000ms;
    }
    CHECK(l.total_suppressed() == 0);
}

TEST_CASE("log limit: emitted plus suppressed is every line", "[log_limit]") {
    FakeClock clock;
    LogLimiter l({.burst = 20, .interval = 100ms}, clock.fn());
    uint64_t emitted = 0, reported = 0;
    for (int i = 0; i < 10'000; ++i) {
        auto d = l.next();
        emitted += d.emit;
        reported += d.suppressed;
        clock.t += 1ms;  // 10 s of lines, one per millisecond
    }
    reported += l.take_suppressed();
    CHECK(emitted + reported == 10'000);
    CHECK(emitted <= 20 + 10'000 / 100 + 1);
    CHECK(emitted >= 20 + 10'000 / 100 - 1);
}

TEST_CASE("connection log: lines carry the peer, suppressed ones are counted at the end",
          "[log_limit]") {
    qnbd::test::LogCapture cap;
    {
        ConnectionLog log({.burst = 5, .interval = 3600'000ms});
        for (int i = 0; i < 1000; ++i)
            log.log(spdlog::level::warn, "peer:1", "request {} refused", i);
        log.finish("peer:1");
    }
    const auto lines = cap.lines();
    REQUIRE(lines.size() == 6);
    CHECK(lines[0] == "peer:1: request 0 refused");
    CHECK(lines[4] == "peer:1: request 4 refused");
    CHECK(lines[5].starts_with("peer:1: 995 log lines suppressed before it closed"));
}

TEST_CASE("connection log: the count comes before the next line logged after the interval",
          "[log_limit]") {
    qnbd::test::LogCapture cap;
    ConnectionLog log({.burst = 1, .interval = 50ms});
    log.log(spdlog::level::info, "p", "first");
    for (int i = 0; i < 100; ++i) log.log(spdlog::level::info, "p", "hidden {}", i);
    std::this_thread::sleep_for(60ms);
    log.log(spdlog::level::info, "p", "later");
    log.finish("p");
    const auto lines = cap.lines();
    // Some of the 100 may go out if the machine is slow enough to spend 50 ms on them; the
    // counts must add up either way.
    REQUIRE(lines.size() >= 3);
    CHECK(lines.front() == "p: first");
    CHECK(lines.back() == "p: later");
    uint64_t shown = 0, counted = 0;
    for (const auto& l : lines) {
        if (l.starts_with("p: hidden")) ++shown;
        if (auto pos = l.find(" log line");
            pos != std::string::npos && l.find("suppressed") != std::string::npos)
            counted += std::stoull(l.substr(3, pos - 3));
    }
    CHECK(shown + counted == 100);
    CHECK(lines[lines.size() - 2].find("suppressed since the last one") != std::string::npos);
}
