// Damage found while serving: an L2 entry that points at metadata makes a write fail with EIO
// and marks the image corrupt instead of overwriting the metadata (R17); an L2 entry past the
// end of the file reads as EIO on its own range only. Images made by qemu, then patched.
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "base/buffer.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/run.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::test;

constexpr uint64_t kCs = 65536;

void put_be64(const std::string& path, uint64_t off, uint64_t v) {
    Bytes b(8);
    store_be64(b.data(), v);
    int fd = ::open(path.c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(::pwrite(fd, b.data(), 8, static_cast<off_t>(off)) == 8);
    ::close(fd);
}

/// An image whose guest cluster 0 is allocated by qemu; returns where its L2 entry is.
uint64_t image_with_cluster0(const std::string& path) {
    qemu_create(path, 16 * MiB, "cluster_size=65536");
    qemu_io(path, {"write -P 0x33 0 64k", "write -P 0x44 1M 64k"});
    const uint64_t l1 = file_be(path, 40, 8);
    const uint64_t l2 = file_be(path, l1, 8) & 0x00fffffffffffe00ULL;
    REQUIRE(l2 != 0);
    return l2;
}

}  // namespace

TEST_CASE("damage: a write through an L2 entry pointing at metadata marks the image corrupt",
          "[damage]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    const uint64_t l2 = image_with_cluster0(path);
    const uint64_t reftable = file_be(path, 48, 8);
    const uint64_t block = file_be(path, reftable, 8);
    // Guest cluster 0 now claims to live in the first refcount block.
    put_be64(path, l2, block | (1ULL << 63));
    const Bytes file_before = read_file(path);
    const Bytes block_before(file_before.begin() + block, file_before.begin() + block + kCs);
    asio::io_context io;
    run_co(io, [&]() -> awaitable<void> {
        auto disk = co_await open_ok(path, false);
        const Bytes data(4096, std::byte{0x77});
        auto w = co_await disk->write(GuestOffset{0}, data, WriteFlags{});
        REQUIRE_FALSE(w);
        CHECK(w.error().code == EIO);
        CHECK(w.error().message.find("would overwrite metadata") != std::string::npos);
        // Every later write is refused; reads go on.
        auto w2 = co_await disk->write(GuestOffset{8 * MiB}, data, WriteFlags{});
        REQUIRE_FALSE(w2);
        CHECK(w2.error().code == EIO);
        auto back = co_await read_ok(*disk, 1 * MiB, 4096);
        CHECK(back == Bytes(4096, std::byte{0x44}));
        (void)co_await disk->close();
        disk.mark_closed();
    });
    const Bytes after = read_file(path);
    CHECK(Bytes(after.begin() + block, after.begin() + block + kCs) == block_before);
    CHECK((file_be(path, 72, 8) & 2) != 0);  // the corrupt bit
}

TEST_CASE("damage: an L2 entry past the end of the file reads as EIO on its range only",
          "[damage]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    const uint64_t l2 = image_with_cluster0(path);
    put_be64(path, l2, (1ULL << 30) | (1ULL << 63));  // 1 GiB: past the end of the file
    const Bytes before = read_file(path);
    asio::io_context io;
    run_co(io, [&]() -> awaitable<void> {
        auto disk = co_await open_ok(path, true);
        Bytes buf(4096);
        auto r = co_await disk->read(GuestOffset{0}, buf);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EIO);
        CHECK(r.error().message.find("past the end of the file") != std::string::npos);
        auto other = co_await read_ok(*disk, 1 * MiB, 4096);
        CHECK(other == Bytes(4096, std::byte{0x44}));
        co_await close_ok(disk);
    });
    CHECK(read_file(path) == before);  // read-only: never written
}
