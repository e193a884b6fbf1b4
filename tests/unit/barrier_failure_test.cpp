// No lost failures: a flush barrier that throws (an internal error, not an I/O error) fails
// the flushes waiting on it instead of leaving them, and every later flush, waiting forever
// (docs/ARCHITECTURE.md, R10). The image stays consistent and later flushes work again.
#include <catch2/catch.hpp>
#include <future>

#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/run.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::test;

/// Forwards to `inner`; while armed, a write at offset 0 (the header) throws.
class ThrowingFile final : public io::File {
  public:
    ThrowingFile(std::unique_ptr<io::File> inner, std::shared_ptr<bool> armed)
        : inner_(std::move(inner)), armed_(std::move(armed)) {}
    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        return inner_->readv(off, iov);
    }
    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        if (*armed_ && off.value == 0) throw std::runtime_error("header write exploded");
        return inner_->writev(off, iov);
    }
    awaitable<Result<void>> fallocate(io::Fallocate m, HostOffset off, uint64_t len) override {
        return inner_->fallocate(m, off, len);
    }
    awaitable<Result<void>> sync() override { return inner_->sync(); }
    Result<uint64_t> size() const override { return inner_->size(); }
    Result<void> truncate(uint64_t size) override { return inner_->truncate(size); }
    bool direct() const override { return inner_->direct(); }
    const std::string& path() const override { return inner_->path(); }

  private:
    std::unique_ptr<io::File> inner_;
    std::shared_ptr<bool> armed_;
};

/// Runs `aw` on `io` until the context has nothing left to do; true if it completed.
bool completes(asio::io_context& io, awaitable<void> aw) {
    auto fut = asio::co_spawn(io, std::move(aw), asio::use_future);
    io.restart();
    io.run();
    if (fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return false;
    fut.get();
    return true;
}

}  // namespace

TEST_CASE("barrier: a barrier that throws fails its flushes instead of hanging them", "[barrier]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    qemu_create(path, 8 * MiB, "");
    auto armed = std::make_shared<bool>(false);
    OpenOptions opts;
    opts.file_opener = [armed](asio::any_io_executor ex, const std::string& p,
                               io::OpenFlags f) -> Result<std::unique_ptr<io::File>> {
        auto inner = io::open_file(ex, p, f);
        if (!inner) return inner.error();
        return std::unique_ptr<io::File>(std::make_unique<ThrowingFile>(std::move(*inner), armed));
    };
    asio::io_context io;
    const Bytes data(3 * 65536, std::byte{0x5a});
    const bool done = completes(io, [&]() -> awaitable<void> {
        auto disk = co_await open_ok(path, opts);
        auto w = co_await disk->write(GuestOffset{65536}, data, WriteFlags{});
        REQUIRE(w);
        *armed = true;  // the first barrier writes the dirty bit into the header first (R1)
        auto f1 = co_await disk->flush();
        REQUIRE_FALSE(f1);
        CHECK(f1.error().code == EIO);
        auto f2 = co_await disk->flush();  // a later flush runs a new barrier, which fails too
        CHECK_FALSE(f2);
        *armed = false;
        auto f3 = co_await disk->flush();  // and once the fault is gone, everything is written
        CHECK(f3);
        auto back = co_await read_ok(*disk, 65536, data.size());
        CHECK(back == data);
        co_await close_ok(disk);
    }());
    REQUIRE(done);
    require_qemu_check_clean(path);
    const Bytes raw = qemu_raw(path);
    CHECK(std::equal(data.begin(), data.end(), raw.begin() + 65536));
}
