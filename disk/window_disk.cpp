#include "disk/window_disk.hpp"

namespace qnbd {
namespace {

class WindowDisk final : public Disk {
  public:
    WindowDisk(std::shared_ptr<Disk> inner, uint64_t offset)
        : inner_(std::move(inner)), offset_(offset) {}
    uint64_t size() const override { return inner_->size() - offset_; }
    bool read_only() const override { return inner_->read_only(); }
    std::string format_name() const override { return inner_->format_name(); }
    awaitable<Result<void>> read(GuestOffset off, std::span<std::byte> buf,
                                 std::vector<ZeroRun>* z) override {
        return inner_->read(off + offset_, buf, z);
    }
    awaitable<Result<void>> write(GuestOffset off, std::span<const std::byte> buf,
                                  WriteFlags f) override {
        return inner_->write(off + offset_, buf, f);
    }
    awaitable<Result<void>> write_zeroes(GuestOffset off, uint64_t len, ZeroFlags f) override {
        return inner_->write_zeroes(off + offset_, len, f);
    }
    awaitable<Result<void>> discard(GuestOffset off, uint64_t len, WriteFlags f) override {
        return inner_->discard(off + offset_, len, f);
    }
    awaitable<Result<void>> flush() override { return inner_->flush(); }
    awaitable<Result<std::vector<Extent>>> block_status(GuestOffset off, uint64_t len) override {
        return inner_->block_status(off + offset_, len);
    }
    awaitable<Result<void>> close() override { return inner_->close(); }
    DiskStats stats() const override { return inner_->stats(); }

  private:
    std::shared_ptr<Disk> inner_;
    uint64_t offset_;
};

}  // namespace

std::shared_ptr<Disk> make_window_disk(std::shared_ptr<Disk> inner, uint64_t offset) {
    if (offset == 0) return inner;
    return std::make_shared<WindowDisk>(std::move(inner), offset);
}

}  // namespace qnbd
