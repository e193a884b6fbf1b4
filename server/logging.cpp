// The server's log sinks (see logging.hpp).
#include "server/logging.hpp"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>
#include <syslog.h>

#include <cstdio>
#include <mutex>

#include "io/image_lock.hpp"
#include "server/systemd.hpp"

namespace qnbd::server {
namespace {

/// Lines for the journal's stream protocol: "<priority>message", no timestamp (the journal
/// stamps each entry itself).
class JournalStreamSink final : public spdlog::sinks::base_sink<std::mutex> {
  protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        spdlog::memory_buf_t line;
        formatter_->format(msg, line);
        std::fprintf(stderr, "<%d>%.*s", priority(msg.level), static_cast<int>(line.size()),
                     line.data());
    }
    void flush_() override { std::fflush(stderr); }

  private:
    static int priority(spdlog::level::level_enum l) {
        switch (l) {
            case spdlog::level::trace:
            case spdlog::level::debug:
                return LOG_DEBUG;
            case spdlog::level::info:
                return LOG_INFO;
            case spdlog::level::warn:
                return LOG_WARNING;
            case spdlog::level::err:
                return LOG_ERR;
            default:
                return LOG_CRIT;
        }
    }
};

void install(std::shared_ptr<spdlog::logger> logger, const char* pattern) {
    const auto level =
        spdlog::default_logger() ? spdlog::default_logger()->level() : spdlog::level::info;
    logger->set_pattern(pattern);
    logger->set_level(level);
    spdlog::set_default_logger(std::move(logger));
}

}  // namespace

void setup_logging(bool verbose) {
    if (stderr_is_journal()) {
        auto sink = std::make_shared<JournalStreamSink>();
        install(std::make_shared<spdlog::logger>("qnbd", sink), "%v");
    } else {
        install(spdlog::stderr_color_mt("qnbd"), "%Y-%m-%d %H:%M:%S.%e qnbd[%P] %l: %v");
    }
    spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);
    io::set_image_lock_warning_handler([](const std::string& m) { spdlog::warn("{}", m); });
}

void log_to_syslog() {
    auto sink = std::make_shared<spdlog::sinks::syslog_sink_mt>("qnbd", LOG_PID, LOG_DAEMON, true);
    install(std::make_shared<spdlog::logger>("qnbd", sink), "%v");
}

}  // namespace qnbd::server
