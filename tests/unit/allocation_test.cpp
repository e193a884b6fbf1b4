// Cluster allocation for writes: consecutive new clusters of one request are allocated as one
// host-contiguous run and written with one request; recycled clusters read zeros wherever the
// write did not reach. Checked with qemu-img map (host offsets), qemu-img check and qemu's
// reading of the image.
#include <catch2/catch.hpp>

#include <filesystem>

#include "tests/unit/support/compare.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/random.hpp"
#include "tests/unit/support/recording_file.hpp"
#include "tests/unit/support/run.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::test;

/// Options opening an image writable with every file operation recorded in `log`.
OpenOptions recorded(std::shared_ptr<OpLog> log) {
    OpenOptions opts;
    opts.file_opener = recording_opener(std::move(log));
    return opts;
}

/// One run of `qemu-img map --output=json` with its host offset (-1 where none).
struct HostRun {
    uint64_t start, length;
    int64_t offset;
};

/// The runs of `qemu-img map` with their host offsets.
std::vector<HostRun> host_map(const std::string& path) {
    std::vector<HostRun> runs;
    for (const auto& f : qemu_map_json(path))
        runs.push_back(HostRun{std::stoull(f.at("start")), std::stoull(f.at("length")),
                               f.count("offset") ? std::stoll(f.at("offset")) : -1});
    return runs;
}

/// Host offset of guest offset `g`, or -1.
int64_t host_of(const std::string& path, uint64_t g) {
    for (const auto& r : host_map(path))
        if (g >= r.start && g < r.start + r.length)
            return r.offset < 0 ? -1 : r.offset + static_cast<int64_t>(g - r.start);
    return -1;
}

/// Bytes that depend only on their guest offset, so overlapping writes agree in any order.
Bytes by_offset(uint64_t off, uint64_t len) {
    Bytes b(len);
    for (uint64_t i = 0; i < len; ++i)
        b[i] = std::byte(static_cast<uint8_t>(((off + i) * 2654435761u) >> 13));
    return b;
}

/// What the guest must read of a 64 MiB disk after writes of by_offset bytes to `written`.
Bytes written_by_offset(std::initializer_list<Piece> written) {
    Bytes want(64 * MiB);
    for (auto [off, len] : written) {
        const Bytes b = by_offset(off, len);
        std::copy(b.begin(), b.end(), want.begin() + static_cast<ptrdiff_t>(off));
    }
    return want;
}

}  // namespace

TEST_CASE("allocation: a multi-cluster write on a fresh image is one host-contiguous run",
          "[alloc]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    qemu_create(img, 64 * MiB, "");
    auto log = std::make_shared<OpLog>();
    uint64_t size_while_open = 0;
    with_disk(img, recorded(log), [&](Disk& d) -> awaitable<void> {
        co_await write_ok(d, 4 * KiB, by_offset(4 * KiB, 4 * KiB));
        // 1 MiB + 8 KiB starting 4 KiB into a cluster: 17 clusters, partial at both ends.
        // Let the preallocation the first write started finish first.
        REQUIRE(co_await log->settle());
        REQUIRE(log->count(OpKind::Fallocate) > 0);
        const uint64_t from = log->clock();
        co_await write_ok(d, 2 * MiB + 4 * KiB, by_offset(2 * MiB + 4 * KiB, MiB + 8 * KiB));
        auto ops = log->ops_since(from);
        REQUIRE(ops.size() == 1);  // one data write, no zero fill, no metadata yet
        CHECK(ops[0].kind == OpKind::Write);
        CHECK(ops[0].length == MiB + 8 * KiB);
        // The file was reserved ahead of the allocations (4 MiB at least).
        size_while_open = std::filesystem::file_size(img);
    });
    // Clean close gave the unused reserved tail back.
    const auto end_offset =
        json_uint(run_ok("qemu-img check --output=json " + shq(img)), "image-end-offset");
    REQUIRE(end_offset);
    CHECK(size_while_open >= *end_offset + 2 * MiB);
    CHECK(std::filesystem::file_size(img) == *end_offset);
    const int64_t h0 = host_of(img, 2 * MiB);
    REQUIRE(h0 > 0);
    for (uint64_t c = 0; c < 17; ++c)
        CHECK(host_of(img, 2 * MiB + c * 64 * KiB) == h0 + static_cast<int64_t>(c * 64 * KiB));
    require_qemu_check_clean(img);
    require_same(qemu_raw(img),
                 written_by_offset({{4 * KiB, 4 * KiB}, {2 * MiB + 4 * KiB, MiB + 8 * KiB}}),
                 "qemu's read of the image", 0);
}

TEST_CASE("allocation: concurrent overlapping multi-cluster writes on a fresh image", "[alloc]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    qemu_create(img, 64 * MiB, "");
    with_disk(img, false, [&](Disk& d) -> awaitable<void> {
        std::vector<awaitable<void>> tasks;
        // Runs that overlap by whole and partial clusters: the later one finds some of its
        // clusters taken meanwhile and writes those in place.
        for (uint64_t i = 0; i < 8; ++i) {
            const uint64_t off = i * 300 * KiB, len = 700 * KiB + i * 1000;
            tasks.push_back(write_ok(d, off, by_offset(off, len)));
        }
        co_await when_all(std::move(tasks));
    });
    require_qemu_check_clean(img);
    const uint64_t end = 7 * 300 * KiB + 700 * KiB + 7000;
    Bytes want = by_offset(0, end);
    want.resize(64 * MiB);
    require_same(qemu_raw(img), want, "qemu's read of the image", 0);
}

TEST_CASE("allocation: recycled clusters read zeros where the write did not reach", "[alloc]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    qemu_create(img, 64 * MiB, "");
    qemu_io(img, {"write -P 0xaa 0 1M"});
    const int64_t old = host_of(img, 0);
    REQUIRE(old > 0);
    auto log = std::make_shared<OpLog>();
    with_disk(img, recorded(log), [&](Disk& d) -> awaitable<void> {
        require_ok(co_await d.discard(GuestOffset{0}, MiB, WriteFlags{}), "discard");
        require_ok(co_await d.flush(), "flush");  // the freed clusters become reusable
        // One cluster written in part, then a three-cluster run with partial ends.
        co_await write_ok(d, 8 * MiB + 8 * KiB, by_offset(8 * MiB + 8 * KiB, 4 * KiB));
        co_await write_ok(d, 16 * MiB + 4 * KiB, by_offset(16 * MiB + 4 * KiB, 184 * KiB));
    });
    // The unwritten parts of the recycled clusters were zeroed by fallocate, not written.
    size_t zeroings = 0;
    for (const auto& r : log->ops())
        if (r.kind == OpKind::Fallocate && r.error == 0 &&
            static_cast<int64_t>(r.offset) < old + static_cast<int64_t>(MiB))
            ++zeroings;
    CHECK(zeroings == 4);
    // Both landed in the clusters the discard freed (so they were not fresh).
    const int64_t a = host_of(img, 8 * MiB), b = host_of(img, 16 * MiB);
    CHECK(a >= old);
    CHECK(a < old + static_cast<int64_t>(MiB));
    CHECK(b >= old);
    CHECK(b < old + static_cast<int64_t>(MiB));
    require_qemu_check_clean(img);
    require_same(qemu_raw(img),
                 written_by_offset({{8 * MiB + 8 * KiB, 4 * KiB}, {16 * MiB + 4 * KiB, 184 * KiB}}),
                 "qemu's read of the image", 0);
}

TEST_CASE("clusters written in reverse order are read and rewritten with one request each",
          "[alloc]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    qemu_create(img, 64 * MiB, "");
    std::vector<std::string> cmds;
    for (int c = 15; c >= 0; --c)
        cmds.push_back("write -P " + std::to_string(0x10 + c) + " " + n(c * 64 * KiB) + " 64k");
    qemu_io(img, cmds);
    auto log = std::make_shared<OpLog>();
    with_disk(img, recorded(log), [&](Disk& d) -> awaitable<void> {
        (void)co_await read_ok(d, 0, 4 * KiB);  // loads the L2 table
        uint64_t from = log->clock();
        Bytes got = co_await read_ok(d, 0, MiB);
        auto ops = log->ops_since(from);
        REQUIRE(ops.size() == 1);
        CHECK(ops[0].kind == OpKind::Read);
        CHECK(ops[0].length == MiB);
        for (uint64_t c = 0; c < 16; ++c)
            CHECK(got[c * 64 * KiB + 100] == std::byte(static_cast<uint8_t>(0x10 + c)));
        from = log->clock();
        co_await write_ok(d, 0, by_offset(0, MiB));
        ops = log->ops_since(from);
        REQUIRE(ops.size() == 1);
        CHECK(ops[0].kind == OpKind::Write);
        CHECK(ops[0].length == MiB);
    });
    require_qemu_check_clean(img);
    require_same(qemu_raw(img), written_by_offset({{0, MiB}}), "qemu's read of the image", 0);
}
