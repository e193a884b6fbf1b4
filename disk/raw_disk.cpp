#include "disk/raw_disk.hpp"

#include <cstring>

#include "base/buffer.hpp"

namespace qnbd {
namespace {

class RawDisk final : public Disk {
  public:
    RawDisk(std::unique_ptr<io::File> file, uint64_t size, bool read_only)
        : file_(std::move(file)), size_(size), read_only_(read_only) {}

    uint64_t size() const override { return size_; }
    bool read_only() const override { return read_only_; }
    std::string format_name() const override { return "raw"; }

    awaitable<Result<void>> read(GuestOffset off, std::span<std::byte> buf,
                                 std::vector<ZeroRun>*) override {
        if (off.value > size_ || buf.size() > size_ - off.value)
            co_return Error{EINVAL, "read beyond the end of the disk"};
        co_return co_await file_->read_zero_padded(HostOffset{off.value}, buf);
    }

    awaitable<Result<void>> write(GuestOffset off, std::span<const std::byte> buf,
                                  WriteFlags flags) override {
        if (auto r = check(off, buf.size()); !r) co_return r;
        if (auto r = co_await file_->write(HostOffset{off.value}, buf); !r) co_return r;
        co_return co_await done(flags.fua);
    }

    awaitable<Result<void>> write_zeroes(GuestOffset off, uint64_t len, ZeroFlags flags) override {
        if (auto r = check(off, len); !r) co_return r;
        auto mode = flags.may_unmap ? io::Fallocate::PunchHole : io::Fallocate::ZeroRange;
        auto r = co_await file_->fallocate(mode, HostOffset{off.value}, len);
        if (!r && flags.may_unmap)
            r = co_await file_->fallocate(io::Fallocate::ZeroRange, HostOffset{off.value}, len);
        if (!r) {
            if (flags.fast_only) co_return Error{ENOTSUP, "the file system cannot zero quickly"};
            for (uint64_t done_bytes = 0; done_bytes < len;) {
                uint64_t n = std::min<uint64_t>(len - done_bytes, kZeroPageSize);
                r = co_await file_->write(HostOffset{off.value + done_bytes}, {zero_page(), n});
                if (!r) co_return r;
                done_bytes += n;
            }
        }
        co_return co_await done(flags.fua);
    }

    awaitable<Result<void>> discard(GuestOffset off, uint64_t len, WriteFlags flags) override {
        if (auto r = check(off, len); !r) co_return r;
        // Discard is advisory: where the file system cannot punch holes the data stays.
        (void)co_await file_->fallocate(io::Fallocate::PunchHole, HostOffset{off.value}, len);
        co_return co_await done(flags.fua);
    }

    awaitable<Result<void>> flush() override {
        if (read_only_) co_return ok();
        co_return co_await file_->sync();
    }

    awaitable<Result<std::vector<Extent>>> block_status(GuestOffset off, uint64_t len) override;

    awaitable<Result<void>> close() override {
        if (read_only_) co_return ok();
        co_return co_await file_->sync();
    }

    DiskStats stats() const override { return {}; }

  private:
    Result<void> check(GuestOffset off, uint64_t len) const {
        if (read_only_) return Error{EPERM, "the image is read-only"};
        if (off.value > size_ || len > size_ - off.value)
            return Error{ENOSPC, "write beyond the end of the disk"};
        return ok();
    }
    awaitable<Result<void>> done(bool fua) {
        if (fua) co_return co_await file_->sync();
        co_return ok();
    }

    std::unique_ptr<io::File> file_;
    uint64_t size_;
    bool read_only_;
};

awaitable<Result<std::vector<Extent>>> RawDisk::block_status(GuestOffset off, uint64_t len) {
    if (off.value >= size_) co_return Error{EINVAL, "block status beyond the end of the disk"};
    len = std::min<uint64_t>(len, size_ - off.value);
    // Holes reported by the file system read as zeros; everything else is data.
    std::vector<Extent> out;
    const uint64_t end = off.value + len;
    for (uint64_t pos = off.value; pos < end;) {
        auto data = co_await file_->seek(HostOffset{pos}, io::Seek::Data);
        if (!data) co_return data.error();
        const uint64_t d = std::min(*data, end);
        if (d > pos) {
            out.push_back(Extent{d - pos, false, true, 1});
            pos = d;
            continue;
        }
        auto hole = co_await file_->seek(HostOffset{pos}, io::Seek::Hole);
        if (!hole) co_return hole.error();
        const uint64_t h = *hole <= pos ? end : std::min(*hole, end);
        out.push_back(Extent{h - pos, true, false, 1});
        pos = h;
    }
    co_return out;
}

}  // namespace

Result<std::shared_ptr<Disk>> make_raw_disk(asio::any_io_executor, std::unique_ptr<io::File> file,
                                            bool read_only) {
    auto size = file->size();
    if (!size) return size.error();
    return std::shared_ptr<Disk>(std::make_shared<RawDisk>(std::move(file), *size, read_only));
}

}  // namespace qnbd
