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
    "refcount-table-entry0-zero-hang: an allocating write without the first refcount "
    "block fails instead of looping",
    "[damage]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    const Layout l = image_with_data(path);
    put_be(path, l.reftable, 0, 8);  // The header's cluster is left without a refcount block.
    const Bytes file = read_file(path);
    const Bytes header_before(file.begin(), file.begin() + 65536);
    asio::io_context io;
    run_co(io, [&]() -> awaitable<void> {
        auto disk = co_await open_ok(path, false);
        auto w = co_await write_bytes(*disk, 4 * MiB, filled(4096, 0x55));
        REQUIRE_FALSE(w);
        CHECK(w.error().code == EIO);
        CHECK(w.error().message.find("no refcount block covers it") != std::string::npos);
        CHECK(co_await read_ok(*disk, 0, 4096) == filled(4096, 0x33));
        (void)co_await disk->close();
        disk.mark_closed();
    });
    const Bytes after = read_file(path);
    CHECK(Bytes(after.begin(), after.begin() + 65536) == header_before);
}

TEST_CASE(
    "metadata-refcount-zero-overwrite: the allocator skips a metadata cluster whose "
    "refcount is 0",
    "[damage]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    const Layout l = image_with_data(path);
    put_be(path, l.block + 2 * (l.l2 / 65536), 0, 2);  // The L2 table's refcount: 0.
    with_disk(path, false, [](Disk& d) -> awaitable<void> {
        co_await write_ok(d, 2 * MiB, 65536, 0x66);  // Needs a new data cluster.
        CHECK(co_await read_ok(d, 0, 4096) == filled(4096, 0x33));
    });
    CHECK((file_be(path, 72, 8) & 2) == 0);  // Not marked corrupt: nothing hit metadata.
    check_qemu_pattern(path, 0, 65536, 0x33);
    check_qemu_pattern(path, 1 * MiB, 65536, 0x44);
    check_qemu_pattern(path, 2 * MiB, 65536, 0x66);
}

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

TEST_CASE(
    "dirty-rebuild-entry-past-eof-oom: the refcount rebuild of a dirty image does not "
    "count an L2 entry far past the end of the file",
    "[damage]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    const Layout l = image_with_data(path);
    put_be(path, l.l2 + 8 * 16, (1ULL << 46) | (1ULL << 63), 8);  // Guest 1 MiB, at 64 TiB.
    put_be(path, 72, file_be(path, 72, 8) | 1, 8);                // The dirty bit.
    with_disk(path, false, [](Disk& d) -> awaitable<void> {
        Bytes buf(4096);
        auto r = co_await d.read(GuestOffset{1 * MiB}, buf);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EIO);
        CHECK(co_await read_ok(d, 0, 4096) == filled(4096, 0x33));
        co_await write_ok(d, 4 * MiB, 4096, 0x77);
    });
    CHECK((file_be(path, 72, 8) & 1) == 0);  // Rebuilt and closed cleanly.
}

TEST_CASE(
    "refused-dirty-image-autoclear-cleared: a dirty image whose rebuild finds a damaged L2 "
    "entry is refused before its autoclear bits are cleared",
    "[damage]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    const Layout l = image_with_data(path);
    put_be(path, 88, 1ULL << 40, 8);                // an autoclear bit qnbd does not know
    put_be(path, 72, file_be(path, 72, 8) | 1, 8);  // dirty: a writable open rebuilds refcounts
    put_be(path, l.l2 + 8 * 4, 0x9999999999999999ULL, 8);  // reserved bits in an L2 entry
    const Bytes before = read_file(path);
    const Error e = open_error(path);
    INFO("open: " << e.message);
    CHECK(e.message.find("reserved bits") != std::string::npos);
    const bool unchanged = read_file(path) == before;  // a bool: Catch would print 16 MiB
    CHECK(unchanged);  // R15: nothing written, not even the autoclear bits
}
