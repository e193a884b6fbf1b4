// The sync latch of io/sync_latch.hpp (R18).
#include "io/sync_latch.hpp"

#include <spdlog/spdlog.h>

#include <cstring>

namespace qnbd::io {

namespace {

/// Forwards everything to the wrapped file; sync() latches its first failure.
class SyncLatchFile final : public File {
  public:
    explicit SyncLatchFile(std::unique_ptr<File> inner) : inner_(std::move(inner)) {}

    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        return inner_->readv(off, iov);
    }
    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        return inner_->writev(off, iov);
    }
    awaitable<Result<void>> fallocate(Fallocate mode, HostOffset off, uint64_t len) override {
        return inner_->fallocate(mode, off, len);
    }
    awaitable<Result<void>> sync() override;
    Result<uint64_t> size() const override { return inner_->size(); }
    Result<void> truncate(uint64_t size) override { return inner_->truncate(size); }
    awaitable<Result<uint64_t>> seek(HostOffset from, Seek what) override {
        return inner_->seek(from, what);
    }
    bool direct() const override { return inner_->direct(); }
    const std::string& path() const override { return inner_->path(); }

  private:
    Error latched() const {
        return Error{failed_errno_, "an earlier fdatasync of " + path() + " failed (" +
                                        std::strerror(failed_errno_) +
                                        "): writes since then may be lost; restart qnbd"};
    }

    std::unique_ptr<File> inner_;
    int failed_errno_ = 0;  ///< errno of the first failed sync; 0 while none failed.
};

awaitable<Result<void>> SyncLatchFile::sync() {
    if (failed_errno_) co_return latched();  // R18: never retried into a false success.
    auto r = co_await inner_->sync();
    if (r || failed_errno_) co_return r;
    failed_errno_ = r.error().code != 0 ? r.error().code : EIO;
    spdlog::critical(
        "{}: fdatasync failed ({}); data written since the last good sync may be lost. Every "
        "later flush of this image fails. Check the host's storage, then restart qnbd: opening "
        "the image again checks and repairs its metadata",
        path(), r.error().message);
    co_return r;
}

}  // namespace

std::unique_ptr<File> latch_sync_failures(std::unique_ptr<File> inner) {
    return std::make_unique<SyncLatchFile>(std::move(inner));
}

FileOpener latching_opener(FileOpener inner) {
    return [inner = std::move(inner)](asio::any_io_executor ex, const std::string& path,
                                      OpenFlags flags) -> Result<std::unique_ptr<File>> {
        auto f = inner(ex, path, flags);
        if (!f || !flags.writable) return f;
        return latch_sync_failures(std::move(*f));
    };
}

}  // namespace qnbd::io
