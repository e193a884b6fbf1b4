// Capturing what the code under test logs through spdlog: while a LogCapture lives, the default
// logger writes the bare messages (no timestamp or level) into memory, at every level.
#pragma once

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <vector>

namespace qnbd::test {

class LogCapture {
  public:
    explicit LogCapture(size_t max_lines = 100'000)
        : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(max_lines)),
          saved_(spdlog::default_logger()) {
        auto logger = std::make_shared<spdlog::logger>("capture", sink_);
        logger->set_pattern("%v");
        logger->set_level(spdlog::level::trace);
        spdlog::set_default_logger(logger);
    }
    ~LogCapture() { spdlog::set_default_logger(saved_); }
    LogCapture(const LogCapture&) = delete;
    LogCapture& operator=(const LogCapture&) = delete;

    /// Every line logged so far, oldest first.
    std::vector<std::string> lines() const {
        std::vector<std::string> out = sink_->last_formatted();
        for (std::string& l : out)
            while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
        return out;
    }

  private:
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
    std::shared_ptr<spdlog::logger> saved_;
};

}  // namespace qnbd::test
