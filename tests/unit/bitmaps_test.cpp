// Persistent dirty bitmaps (R16, R19-R21): which writes qnbd makes to keep them, in which order,
// what qemu finds afterwards, and damaged bitmap metadata refused before anything is written.
#include <catch2/catch.hpp>

#include <filesystem>

#include "tests/unit/barrier_harness.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/shell.hpp"

using namespace qnbd;
using namespace qnbd::test;
using namespace qnbd::test::barrier;

namespace {

constexpr uint64_t kAutoclearAt = 88;
constexpr uint32_t kBitmapsExtType = 0x23852875;

/// Where the data of the image's bitmaps extension is in the file (0 if it has none).
uint64_t bitmaps_ext_at(const std::string& path) {
    for (uint64_t off = file_be(path, 100, 4); off < 65536;) {
        const uint64_t type = file_be(path, off, 4), len = file_be(path, off + 4, 4);
        if (type == 0) break;
        if (type == kBitmapsExtType) return off + 8;
        off += 8 + (len + 7) / 8 * 8;
    }
    return 0;
}

/// The bitmap directory's offset from the image's bitmaps extension, as stored (0 if none).
uint64_t bitmap_dir_offset(const std::string& path) {
    const uint64_t at = bitmaps_ext_at(path);
    return at ? file_be(path, at + 16, 8) : 0;
}

/// The writes, syncs and other changes made to the image file, in order.
std::vector<OpRecord> changes(const Session& s) {
    std::vector<OpRecord> out;
    for (const OpRecord& op : s.log->ops())
        if (op.kind != OpKind::Read && op.path == s.path) out.push_back(op);
    return out;
}

/// qemu-img info's flags of bitmap `name`, e.g. "auto" or "in-use,auto".
std::string qemu_bitmap_flags(const std::string& path, const std::string& name) {
    std::string out =
        sh_output("qemu-img info -U --output=json " + shq(path) +
                  " | python3 -c 'import json,sys; d=json.load(sys.stdin); "
                  "b=[x for x in d[\"format-specific\"][\"data\"].get(\"bitmaps\",[]) "
                  "if x[\"name\"]==\"" +
                  name + "\"]; print(\",\".join(b[0][\"flags\"]) if b else \"missing\")'");
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

/// The runs of bitmap `name` over the whole disk as qnbd reads it (read-only open).
awaitable<std::vector<DirtyRun>> runs_of(std::string path, std::string name, bool& consistent) {
    auto d = co_await open_ok(path, true);
    const DirtyBitmap* b = d->dirty_bitmap(name);
    REQUIRE(b);
    consistent = b->consistent;
    auto runs = b->runs(0, d->size());
    co_await close_ok(d);
    co_return runs;
}

}  // namespace

TEST_CASE("bitmaps: in_use is set and synced before any other write (R19)", "[bitmaps]") {
    Session s("", 16 * MiB);
    run_ok("qemu-img bitmap --add " + shq(s.path) + " b0");
    run_ok("qemu-img bitmap --add --disable " + shq(s.path) + " b1");
    const uint64_t dir = bitmap_dir_offset(s.path);
    REQUIRE(dir != 0);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 1 * MiB, 64 * KiB, 0x41);
        require_ok(co_await d->flush(), "flush");
        CHECK(qemu_bitmap_flags(s.path, "b0") == "in-use,auto");
        CHECK(qemu_bitmap_flags(s.path, "b1") == "");  // Disabled: left alone.
        co_await close_ok(*d);
    });
    const auto ch = changes(s);
    REQUIRE(ch.size() >= 3);
    CHECK(ch[0].kind == OpKind::Write);
    CHECK(ch[0].offset == dir);
    CHECK(ch[1].kind == OpKind::Sync);
    CHECK(file_be(s.path, kAutoclearAt, 8) == 1);  // R16 keeps the bitmaps bit.
    // R21: the close wrote a new directory and pointed the header at it.
    CHECK(bitmap_dir_offset(s.path) != dir);
    CHECK(qemu_bitmap_flags(s.path, "b0") == "auto");
    const CheckResult c = qemu_check(s.path);
    INFO(c.json);
    CHECK(c.corruptions == 0);
    CHECK(c.leaks == 0);
    check_qemu_pattern(s.path, 1 * MiB, 64 * KiB, 0x41);
    bool consistent = false;
    std::vector<DirtyRun> b0, b1;
    s.run([&]() -> awaitable<void> { b0 = co_await runs_of(s.path, "b0", consistent); });
    CHECK(consistent);
    CHECK(b0 ==
          std::vector<DirtyRun>{{1 * MiB, false}, {64 * KiB, true}, {15 * MiB - 64 * KiB, false}});
    s.run([&]() -> awaitable<void> { b1 = co_await runs_of(s.path, "b1", consistent); });
    CHECK(b1 == std::vector<DirtyRun>{{16 * MiB, false}});
}

/// Index of the first op in `ops` from `from` on matching `pred`, or ops.size().
template <class P>
size_t find_op(const std::vector<OpRecord>& ops, size_t from, P pred) {
    for (size_t i = from; i < ops.size(); ++i)
        if (pred(ops[i])) return i;
    return ops.size();
}

/// True if a successful sync lies strictly between ops a and b.
bool sync_between(const std::vector<OpRecord>& ops, size_t a, size_t b) {
    for (size_t i = a + 1; i < b && i < ops.size(); ++i)
        if (ops[i].kind == OpKind::Sync && ops[i].error == 0) return true;
    return false;
}

TEST_CASE("bitmaps: close counts the new clusters first and moves the header last (R20, R21)",
          "[bitmaps][barrier]") {
    Session s("", 16 * MiB);
    run_ok("qemu-img bitmap --add " + shq(s.path) + " b0");
    const uint64_t old_dir = bitmap_dir_offset(s.path);
    const uint64_t ext = bitmaps_ext_at(s.path);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 3 * MiB, 4 * KiB, 0x41);
        co_await close_ok(*d);
    });
    const uint64_t dir = bitmap_dir_offset(s.path);
    REQUIRE(dir != old_dir);
    const Layout l = read_layout(s.path);
    const uint64_t per_block = l.cluster_size() * 8 / 16;
    const uint64_t block = file_be(s.path, l.rt_off + dir / l.cluster_size() / per_block * 8, 8);
    const auto ops = changes(s);
    const size_t dir_write = find_op(
        ops, 0, [&](const OpRecord& o) { return o.kind == OpKind::Write && o.offset == dir; });
    REQUIRE(dir_write < ops.size());
    // R20: the refcount block counting the new directory was written, then synced, before it.
    const uint64_t slot = dir / l.cluster_size() % per_block * 2;  // 16-bit refcounts
    size_t counted = ops.size();
    for (size_t i = 0; i < dir_write; ++i)
        if (ops[i].kind == OpKind::Write && ops[i].offset == block &&
            ops[i].data.size() >= slot + 2 && load_be16(ops[i].data.data() + slot) == 1)
            counted = i;
    REQUIRE(counted < dir_write);
    CHECK(sync_between(ops, counted, dir_write));
    // R21: the header names the new directory only after a sync that follows its write, and
    // the old directory's refcount drops only after that header write.
    const size_t moved = find_op(ops, dir_write, [&](const OpRecord& o) {
        return o.kind == OpKind::Write && o.offset == 0 && o.data.size() >= ext + 24 &&
               load_be64(o.data.data() + ext + 16) == dir;
    });
    REQUIRE(moved < ops.size());
    CHECK(sync_between(ops, dir_write, moved));
    const size_t freed = find_op(ops, moved, [&](const OpRecord& o) {
        return o.kind == OpKind::Write && l.blocks.count(o.offset);
    });
    CHECK(freed < ops.size());
    CHECK(sync_between(ops, moved, freed));
    const CheckResult c = qemu_check(s.path);
    INFO(c.json);
    CHECK(c.corruptions == 0);
    CHECK(c.leaks == 0);
}

TEST_CASE("bitmaps: a crash while open leaves them in use and the image reopens", "[bitmaps]") {
    Session s("", 16 * MiB);
    run_ok("qemu-img bitmap --add " + shq(s.path) + " b0");
    const std::string crashed = s.dir.file("crashed.qcow2");
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x42);
        require_ok(co_await d->flush(), "flush");
        std::filesystem::copy_file(s.path, crashed);  // What a crash now would leave.
        co_await close_ok(*d);
    });
    CHECK(qemu_bitmap_flags(crashed, "b0") == "in-use,auto");
    bool consistent = true;
    s.run([&]() -> awaitable<void> { (void)co_await runs_of(crashed, "b0", consistent); });
    CHECK_FALSE(consistent);
    // A writable open of the dirty image counts the bitmap's clusters in its rebuild and
    // leaves the inconsistent bitmap as it is.
    s.run([&]() -> awaitable<void> {
        auto d = co_await open_ok(crashed, false);
        co_await write_ok(*d, 2 * MiB, 64 * KiB, 0x43);
        co_await close_ok(d);
    });
    require_qemu_check_clean(crashed);
    CHECK(qemu_bitmap_flags(crashed, "b0") == "in-use,auto");
    check_qemu_pattern(crashed, 0, 64 * KiB, 0x42);
    check_qemu_pattern(crashed, 2 * MiB, 64 * KiB, 0x43);
}

TEST_CASE("autoclear: an unknown bit is cleared and synced before any other write (R16)",
          "[barrier]") {
    Session s("", 16 * MiB);
    store_file_be(s.path, kAutoclearAt, 8, uint64_t{1} << 5);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x41);
        require_ok(co_await d->flush(), "flush");
        co_await close_ok(*d);
    });
    const auto ch = changes(s);
    REQUIRE(ch.size() >= 3);
    CHECK(ch[0].kind == OpKind::Write);
    CHECK(ch[0].offset == 0);
    REQUIRE(ch[0].data.size() >= 96);
    CHECK(load_be64(ch[0].data.data() + kAutoclearAt) == 0);
    CHECK(ch[1].kind == OpKind::Sync);
    CHECK(file_be(s.path, kAutoclearAt, 8) == 0);
    require_qemu_check_clean(s.path);
}

TEST_CASE("bitmaps: damaged bitmap metadata is refused before anything is written",
          "[bitmaps][damaged]") {
    TempDir dir;
    const std::string path = dir.file("img.qcow2");
    qemu_create(path, 16 * MiB);
    run_ok("qemu-img bitmap --add " + shq(path) + " b0");
    const uint64_t entry = bitmap_dir_offset(path);
    std::string want;
    bool read_only_too = true;
    SECTION("table shared with the L1 table") {
        store_file_be(path, entry, 8, file_be(path, 40, 8));
        want = "is also used by other metadata or data";
        read_only_too = false;
    }
    SECTION("granularity below 512 bytes") {
        store_file_be(path, entry + 17, 1, 8);
        want = "bitmap 'b0' has granularity bits 8 (9 to 31)";
    }
    SECTION("table of the wrong size") {
        store_file_be(path, entry + 8, 4, 7);
        want = "bitmap 'b0' has a table of 7 entries (the disk needs 1)";
    }
    SECTION("unknown flags") {
        store_file_be(path, entry + 12, 4, 0x12);
        want = "bitmap 'b0' has unknown flags 0x10";
    }
    SECTION("enabled with unknown extra data") {
        store_file_be(path, entry + 20, 4, 8);  // The entry grows by 8 bytes, and so the
        store_file_be(path, bitmaps_ext_at(path) + 8, 8, 40);  // directory.
        set_file_size(path, std::filesystem::file_size(path) + 4096);
        want = "has extra data qnbd does not know";
        read_only_too = false;
    }
    const Bytes before = read_file(path);
    asio::io_context ctx;
    for (bool ro : {false, true}) {
        OpenOptions o;
        o.read_only = ro;
        Result<std::shared_ptr<Disk>> r = Error{0, ""};
        run(ctx, [&]() -> awaitable<void> {
            r = co_await open_disk(co_await asio::this_coro::executor, path, o);
        }());
        if (ro && !read_only_too) {
            CHECK(r);
            if (r) run(ctx, [&]() -> awaitable<void> { co_await close_ok(**r); }());
            continue;
        }
        REQUIRE_FALSE(r);
        INFO(r.error().message);
        CHECK(r.error().message.find(want) != std::string::npos);
    }
    CHECK(read_file(path) == before);
}
