// Shared machinery of the engine-running fuzz targets.
#include "fuzz_support.hpp"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <string_view>

#include "fuzz_check.hpp"

namespace qnbd::fuzz {

namespace fs = std::filesystem;
using asio::awaitable;

asio::io_context& io() {
    // Never destroyed: nothing at exit depends on the order of static destructors.
    static asio::io_context* ctx = new asio::io_context(1);
    return *ctx;
}

void run(asio::awaitable<void> aw) {
    bool done = false;
    std::exception_ptr error;
    asio::co_spawn(io(), std::move(aw), [&](std::exception_ptr e) {
        done = true;
        error = e;
    });
    io().restart();
    io().run();  // Returns once nothing is pending: every coroutine and I/O has finished.
    if (error) std::rethrow_exception(error);
    FUZZ_CHECK(done);
}

namespace {

std::string make_scratch_dir() {
    std::string base = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : fs::temp_directory_path();
    std::string dir = base + "/qnbd-fuzz-XXXXXX";
    if (!::mkdtemp(dir.data())) throw std::runtime_error("mkdtemp failed in " + base);
    static std::string removed_at_exit = dir;
    std::atexit([] {
        std::error_code ec;
        fs::remove_all(removed_at_exit, ec);
    });
    return dir;
}

}  // namespace

std::string scratch(const std::string& name) {
    static const std::string dir = make_scratch_dir();
    return dir + "/" + name;
}

void write_file(const std::string& path, std::span<const std::byte> bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    FUZZ_CHECK(f.good());
}

std::vector<std::byte> read_file(const std::string& path) {
    std::vector<std::byte> out;
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) return out;
    out.resize(size);
    std::ifstream f(path, std::ios::binary);
    f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(size));
    out.resize(static_cast<size_t>(f.gcount()));
    return out;
}

void copy_file(const std::string& from, const std::string& to) {
    fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

namespace {

/// Aborts on the first message about an internal error (an exception inside the engine or a
/// request, or any critical message); damage the engine reports (an image marked corrupt) is
/// an expected outcome of a fuzzed image and only dropped.
class AbortSink final : public spdlog::sinks::base_sink<std::mutex> {
  protected:
    void sink_it_(const spdlog::details::log_msg& msg) override {
        const std::string_view text(msg.payload.data(), msg.payload.size());
        if (msg.level < spdlog::level::critical && text.find("internal error") == text.npos) return;
        std::fprintf(stderr, "qnbd logged an internal error: %.*s\n", static_cast<int>(text.size()),
                     text.data());
        std::abort();
    }
    void flush_() override {}
};

}  // namespace

void abort_on_internal_errors() {
    auto logger = std::make_shared<spdlog::logger>("qnbd-fuzz", std::make_shared<AbortSink>());
    logger->set_level(spdlog::level::err);  // Below that nothing is even formatted.
    spdlog::set_default_logger(logger);
}

namespace {

constexpr uint64_t kAllocateBudget = 64u << 20;

/// Forwards to the real file; large reservations are refused as unsupported.
class BudgetFile final : public io::File {
  public:
    explicit BudgetFile(std::unique_ptr<io::File> f) : f_(std::move(f)) {}
    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        return f_->readv(off, iov);
    }
    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        return f_->writev(off, iov);
    }
    awaitable<Result<void>> fallocate(io::Fallocate mode, HostOffset off, uint64_t len) override {
        if (mode == io::Fallocate::Allocate &&
            (off.value > kAllocateBudget || len > kAllocateBudget - off.value))
            return refuse();
        return f_->fallocate(mode, off, len);
    }
    awaitable<Result<void>> sync() override {
        // tmpfs has nothing to write back: yield once, as a real sync would, and succeed.
        co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
        co_return ok();
    }
    Result<uint64_t> size() const override { return f_->size(); }
    Result<void> truncate(uint64_t size) override { return f_->truncate(size); }
    awaitable<Result<uint64_t>> seek(HostOffset from, io::Seek what) override {
        return f_->seek(from, what);
    }
    bool direct() const override { return f_->direct(); }
    const std::string& path() const override { return f_->path(); }

  private:
    static awaitable<Result<void>> refuse() { co_return Error{ENOTSUP, "over the fuzz budget"}; }
    std::unique_ptr<io::File> f_;
};

}  // namespace

Result<std::unique_ptr<io::File>> open_file(asio::any_io_executor ex, const std::string& path,
                                            io::OpenFlags flags) {
    auto f = io::open_file(ex, path, flags);
    if (!f) return f.error();
    return std::unique_ptr<io::File>(std::make_unique<BudgetFile>(std::move(*f)));
}

}  // namespace qnbd::fuzz
