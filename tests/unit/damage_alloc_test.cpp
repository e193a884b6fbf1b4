// Regression tests of damage the fuzz targets found (tests/fuzz): metadata that the refcounts
// or tables describe wrongly must never be overwritten or hang the allocator, and tables that
// cannot be right are refused when the image is opened. Images made by qemu, then patched.
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

void put_be(const std::string& path, uint64_t off, uint64_t v, int bytes) {
    Bytes b(8);
    store_be64(b.data(), v << (64 - 8 * bytes));
    int fd = ::open(path.c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(::pwrite(fd, b.data(), bytes, static_cast<off_t>(off)) == bytes);
    ::close(fd);
}

struct Layout {
    uint64_t l1, reftable, block, l2;
};

/// A 16 MiB image with 64 KiB clusters and data at 0 and 1 MiB, and where its tables are.
Layout image_with_data(const std::string& path) {
    qemu_create(path, 16 * MiB, "cluster_size=65536");
    qemu_io(path, {"write -P 0x33 0 64k", "write -P 0x44 1M 64k"});
    Layout l{file_be(path, 40, 8), file_be(path, 48, 8), 0, 0};
    l.block = file_be(path, l.reftable, 8);
    l.l2 = file_be(path, l.l1, 8) & 0x00fffffffffffe00ULL;
    REQUIRE((l.block != 0 && l.l2 != 0));
    return l;
}

/// Opens `path` writable; returns the error (or an empty one if it opened).
Error open_error(const std::string& path) {
    asio::io_context io;
    return run(io, [&]() -> awaitable<Error> {
        auto ex = co_await asio::this_coro::executor;
        OpenOptions o;
        auto d = co_await open_disk(ex, path, o);
        if (!d) co_return d.error();
        (void)co_await (*d)->close();
        co_return Error{};
    }());
}

}  // namespace

TEST_CASE(
    "l2-table-on-refcount-table: a writable open refuses an L2 table that shares a "
    "cluster with the refcount table",
    "[damage]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    const Layout l = image_with_data(path);
    put_be(path, l.l1, l.reftable | (1ULL << 63), 8);
    const Bytes before = read_file(path);
    const Error e = open_error(path);
    CHECK(e.code == EINVAL);
    CHECK(e.message.find("share the host cluster") != std::string::npos);
    CHECK(read_file(path) == before);
    // Read-only, it still serves (guest cluster 0's table now reads the refcount table).
    with_disk(path, true, [](Disk& d) -> awaitable<void> { (void)co_await read_ok(d, 0, 65536); });
    CHECK(read_file(path) == before);
}

TEST_CASE(
    "refcount-table-offset-wraps: a refcount block offset that wraps past 2^64 with "
    "its cluster is refused",
    "[damage]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    const Layout l = image_with_data(path);
    put_be(path, l.reftable + 8, 0xffffffffffff0000ULL, 8);
    const Error e = open_error(path);
    CHECK(e.code == EINVAL);
    CHECK(e.message.find("refcount table entry 1 offset 0xffffffffffff0000 is beyond the end") !=
          std::string::npos);
}
