// Crash-safe order of flush barriers, observed at the File seam. Images come from qemu-img;
// the engine opens them through a recording file, and every write a flush issues is classified
// by where it lands (header, refcount block or table, L1 or L2 table; found from the image as
// stored after close). Each barrier must follow
//   [dirty bit] -> refcount blocks -> sync -> refcount table -> sync -> [header: new table]
//   -> sync -> L2 tables -> [sync -> L1 table] -> sync
// with no more syncs than that order needs; the sync before the L2 tables is left out only when
// every new reference is to a cluster whose refcount was durable before the barrier (R22). Also:
// group commit, faults during a barrier, the dirty bit, and the refcount rebuild after a crash.
#include <boost/asio/steady_timer.hpp>
#include <chrono>

#include "qcow2/header.hpp"
#include "tests/unit/barrier_harness.hpp"

using namespace qnbd;
using namespace qnbd::test;
using namespace qnbd::test::barrier;

TEST_CASE("first barrier: dirty bit, refcounts, L2 tables, L1 table, then two syncs", "[barrier]") {
    Session s("", 1024 * MiB);
    const Layout before = read_layout(s.path);
    Window first, second;
    bool dirty_after_flush = false;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x11);
        co_await write_ok(*d, 512 * MiB + 4 * KiB, 8 * KiB, 0x22);  // a second L2 table
        first = co_await flush_window(*d, *s.log, true);
        dirty_after_flush = dirty_bit(s.path);
        co_await write_ok(*d, 128 * KiB, 64 * KiB, 0x33);  // existing L2 table and refblock
        second = co_await flush_window(*d, *s.log, true);
        co_await close_ok(*d);
    });
    CHECK(before.l2.empty());
    CHECK(dirty_after_flush);
    CHECK_FALSE(dirty_bit(s.path));
    const Layout after = read_layout(s.path);
    CHECK(after.l2.size() == 2);
    const Classifier cls{before, after};
    Summary s1 = check_barrier(first, cls);
    CHECK(s1.stages == Stages{Stage::DirtyHeader, Stage::RefBlock, Stage::L2, Stage::L1});
    CHECK(s1.writes[Stage::L2].size() == 2);
    Summary s2 = check_barrier(second, cls);
    CHECK(s2.stages == Stages{Stage::RefBlock, Stage::L2});
    CHECK(s2.syncs == 1);  // R22: the cluster was counted by the first barrier
    require_qemu_check_clean(s.path);
    check_patterns(s.path, {{0, 64 * KiB, 0x11},
                            {512 * MiB + 4 * KiB, 8 * KiB, 0x22},
                            {512 * MiB, 4 * KiB, 0},
                            {128 * KiB, 64 * KiB, 0x33}});
}

TEST_CASE("refcount table growth: new table synced before the header points to it", "[barrier]") {
    // 512-byte clusters with 64-bit refcounts: one table cluster covers 2 MiB of file.
    Session s("cluster_size=512,refcount_bits=64", 4 * MiB);
    const Layout before = read_layout(s.path);
    REQUIRE(before.rt_clusters == 1);
    Window w;
    const uint64_t chunk = 64 * KiB, chunks = 40;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        for (uint64_t i = 0; i < chunks; ++i) co_await write_ok(*d, i * chunk, chunk, int(i + 1));
        REQUIRE(d->stats().barriers == 0);
        w = co_await flush_window(*d, *s.log, true);
        co_await close_ok(*d);
    });
    const Layout after = read_layout(s.path);
    CHECK(after.rt_off != before.rt_off);
    CHECK(after.rt_clusters > before.rt_clusters);
    Summary sum = check_barrier(w, Classifier{before, after});
    CHECK(sum.stages == Stages{Stage::DirtyHeader, Stage::RefBlock, Stage::RefTable,
                               Stage::MovedHeader, Stage::L2, Stage::L1});
    for (const auto& t : sum.writes[Stage::RefTable])
        CHECK(Classifier::within(t, after.rt_off, after.rt_clusters * after.cluster_size()));
    REQUIRE(sum.writes[Stage::MovedHeader].size() == 1);
    const auto& h = sum.writes[Stage::MovedHeader][0].data;
    CHECK(load_be64(h.data() + 48) == after.rt_off);
    CHECK(load_be32(h.data() + 56) == after.rt_clusters);
    require_qemu_check_clean(s.path);
    for (uint64_t i : {0u, 17u, 39u}) check_qemu_pattern(s.path, i * chunk, chunk, int(i + 1));
}

TEST_CASE("extended L2: allocating subclusters follows the same order", "[barrier]") {
    Session s("extended_l2=on", 64 * MiB);
    const Layout before = read_layout(s.path);
    Window first, second;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 4 * KiB, 0x44);
        co_await write_ok(*d, MiB + 2 * KiB, 4 * KiB, 0x45);
        first = co_await flush_window(*d, *s.log, true);
        co_await write_ok(*d, 8 * KiB, 2 * KiB, 0x46);  // new subcluster of an owned cluster
        second = co_await flush_window(*d, *s.log, true);
        co_await close_ok(*d);
    });
    const Classifier cls{before, read_layout(s.path)};
    CHECK(check_barrier(first, cls).stages ==
          Stages{Stage::DirtyHeader, Stage::RefBlock, Stage::L2, Stage::L1});
    Summary s2 = check_barrier(second, cls);
    CHECK(s2.stages == Stages{Stage::L2});  // bitmap only: data synced first, then the table
    CHECK(s2.syncs == 2);
    require_qemu_check_clean(s.path);
    check_patterns(s.path, {{0, 4 * KiB, 0x44},
                            {4 * KiB, 4 * KiB, 0},
                            {8 * KiB, 2 * KiB, 0x46},
                            {MiB + 2 * KiB, 4 * KiB, 0x45},
                            {MiB, 2 * KiB, 0}});
}

TEST_CASE("steady state: one sync per allocating barrier, the clusters counted one barrier ahead",
          "[barrier]") {
    Session s("", 16 * MiB);
    const Layout before = read_layout(s.path);
    std::vector<Window> windows;
    DiskStats start, end;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 1);
        (void)co_await flush_window(*d, *s.log, true);
        start = d->stats();
        for (int i = 1; i <= 8; ++i) {
            co_await write_ok(*d, uint64_t(i) * 64 * KiB, 64 * KiB, i + 1);
            windows.push_back(co_await flush_window(*d, *s.log, true));
        }
        end = d->stats();
        co_await close_ok(*d);
    });
    const Classifier cls{before, read_layout(s.path)};
    for (const auto& w : windows) {
        const Stages st = check_barrier(w, cls).stages;  // R22: refcounts, L2, then one sync
        CHECK((st == Stages{Stage::L2} || st == Stages{Stage::RefBlock, Stage::L2}));
    }
    const uint64_t barriers = end.barriers - start.barriers;
    CHECK(barriers == 8);
    CHECK(end.syncs - start.syncs == barriers);
    CHECK(end.syncs_saved - start.syncs_saved == barriers);
    CHECK(end.clusters_allocated - start.clusters_allocated == 8);
    require_qemu_check_clean(s.path);
    for (int i = 0; i <= 8; ++i)
        check_qemu_pattern(s.path, uint64_t(i) * 64 * KiB, 64 * KiB, i + 1);
}

TEST_CASE("the clusters counted one barrier ahead lie inside the file as preallocated (R22)",
          "[barrier]") {
    Session s("", 64 * MiB);  // preallocation steps of 4 MiB: 64 clusters, fewer than asked
    uint64_t reserved = 0, file_clusters = 0, past_end = 0;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        for (int i = 0; i < 8; ++i) co_await write_ok(*d, uint64_t(i) * 64 * KiB, 64 * KiB, i + 1);
        // The preallocation the first allocation started completes (an io_uring fallocate).
        asio::steady_timer settle(co_await asio::this_coro::executor,
                                  std::chrono::milliseconds(200));
        co_await settle.async_wait(asio::use_awaitable);
        (void)co_await flush_window(*d, *s.log, true);
        reserved = d->stats().clusters_reserved;
        const Bytes f = read_file(s.path);
        file_clusters = f.size() / (64 * KiB);
        for (uint64_t c = file_clusters; c < file_clusters + 256; ++c)
            past_end += stored_refcount(f, c * 64 * KiB) != 0;
        co_await close_ok(*d);
    });
    INFO(reserved << " clusters reserved, the file has " << file_clusters);
    CHECK(reserved > 0);
    CHECK(past_end == 0);  // a crash could otherwise leave L2 entries past the end of the file
    require_qemu_check_clean(s.path);
}

TEST_CASE("overwriting in place: one sync, no metadata, the dirty bit stays clear", "[barrier]") {
    Session s("", 16 * MiB);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 128 * KiB, 7);
        co_await close_ok(*d);
    });
    REQUIRE_FALSE(dirty_bit(s.path));
    const Layout before = read_layout(s.path);
    Window overwrite, idle;
    bool dirty = true;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 4 * KiB, 100 * KiB, 8);
        overwrite = co_await flush_window(*d, *s.log, true);
        dirty = dirty_bit(s.path);
        idle = co_await flush_window(*d, *s.log, false);
        co_await close_ok(*d);
    });
    const Classifier cls{before, read_layout(s.path)};
    Summary o = check_barrier(overwrite, cls);
    CHECK(o.stages.empty());
    CHECK(o.syncs == 1);
    CHECK(overwrite.after.metadata_writes == overwrite.before.metadata_writes);
    CHECK_FALSE(dirty);
    Summary i = check_barrier(idle, cls);  // nothing to make durable: no sync at all
    CHECK(i.syncs == 0);
    require_qemu_check_clean(s.path);
    check_patterns(s.path, {{0, 4 * KiB, 7}, {4 * KiB, 100 * KiB, 8}, {104 * KiB, 24 * KiB, 7}});
}

namespace {

/// Writes cluster `i` then flushes; afterwards the write's L2 entry must be in the file.
awaitable<Result<void>> write_then_flush(Disk& d, const std::string& path, uint64_t i) {
    if (auto r = co_await write_bytes(d, i * 64 * KiB, filled(64 * KiB, int(i))); !r) co_return r;
    if (auto r = co_await d.flush(); !r) co_return r;
    if (stored_l2_entry(path, i) == 0)
        co_return Error{EIO, "cluster " + std::to_string(i) + " not in the stored L2 table"};
    co_return ok();
}

}  // namespace

TEST_CASE("group commit: 64 concurrent flushes share a few barriers", "[barrier]") {
    Session s("", 16 * MiB);
    DiskStats start, end;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x80);
        (void)co_await flush_window(*d, *s.log, true);
        start = d->stats();
        JoinSet join(co_await asio::this_coro::executor);
        for (uint64_t i = 1; i <= 64; ++i) join.spawn(write_then_flush(*d, s.path, i));
        auto r = co_await join.wait();
        if (!r) FAIL(r.error().message);
        end = d->stats();
        co_await close_ok(*d);
    });
    const uint64_t flushes = end.flush_requests - start.flush_requests;
    const uint64_t barriers = end.barriers - start.barriers;
    INFO(flushes << " flushes, " << barriers << " barriers, " << end.syncs - start.syncs
                 << " syncs");
    CHECK(flushes == 64);
    CHECK(barriers >= 1);
    CHECK(barriers * 4 <= flushes);
    CHECK(end.syncs - start.syncs <= 4 * barriers);
    require_qemu_check_clean(s.path);
    for (uint64_t i : {1u, 33u, 64u}) check_qemu_pattern(s.path, i * 64 * KiB, 64 * KiB, int(i));
}

namespace {

/// Whether the image file's header has the dirty bit set.
bool dirty_on_disk(const std::string& path) {
    const Bytes b = test::read_file(path);
    return (load_be64(b.data() + 72) & qnbd::qcow2::kIncompatDirty) != 0;
}

/// Fails the `nth` sync of the first barrier with EIO, clears the fault and checks that the
/// failure stays (R18): later flushes, FUA writes and the close fail without another sync,
/// while reads and plain writes go on. A clean reopen repairs the image.
void failed_sync_stays_failed(int nth) {
    INFO("failing sync " << nth);
    Session s("", 16 * MiB);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x51);
        co_await write_ok(*d, 3 * MiB, 64 * KiB, 0x52);
        s.log->fail_nth(OpKind::Sync, uint64_t(nth), EIO);
        auto r = co_await d->flush();
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EIO);
        s.log->clear_faults();
        const uint64_t syncs = s.log->count(OpKind::Sync);
        auto again = co_await d->flush();
        REQUIRE_FALSE(again);
        CHECK(again.error().code == EIO);
        co_await write_ok(*d, 6 * MiB, 64 * KiB, 0x53);
        const Bytes fua = filled(4 * KiB, 0x54);
        auto f = co_await d->write(GuestOffset{8 * MiB}, fua, WriteFlags{true});
        REQUIRE_FALSE(f);
        CHECK(f.error().code == EIO);
        const Bytes back = co_await read_ok(*d, 0, 64 * KiB);
        CHECK(back == filled(64 * KiB, 0x51));
        auto c = co_await d->close();
        CHECK_FALSE(c);
        CHECK(s.log->count(OpKind::Sync) == syncs);  // never retried into a false success
    });
    size_t injected = 0;
    for (const auto& op : s.log->ops()) injected += op.injected;
    CHECK(injected == 1);
    CHECK(dirty_on_disk(s.path));  // never marked clean over a failed sync
    // Nothing was ever flushed, so each range holds its old content (zeros) or its new one.
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        for (auto [off, byte] : {std::pair{0 * MiB, 0x51}, {3 * MiB, 0x52}, {6 * MiB, 0x53}}) {
            INFO("range at " << off);
            const Bytes got = co_await read_ok(*d, off, 64 * KiB);
            CHECK((got == filled(64 * KiB, byte) || got == filled(64 * KiB, 0)));
        }
        co_await close_ok(*d);
    });
    CHECK_FALSE(dirty_on_disk(s.path));
    require_qemu_check_clean(s.path);
}

}  // namespace

// After fdatasync fails the kernel may have dropped the pages it could not write and marked
// them clean, so a later fdatasync that succeeds proves nothing (R18).
TEST_CASE("an EIO on any sync of a barrier fails every later flush until the image is reopened",
          "[barrier][fault]") {
    failed_sync_stays_failed(GENERATE(1, 2, 3, 4));  // the first barrier has four syncs
}

TEST_CASE("ENOSPC on every write after a point fails flush and writes until cleared",
          "[barrier][fault]") {
    const int allowed = GENERATE(0, 1, 2);
    INFO(allowed << " writes allowed");
    Session s("", 16 * MiB);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x61);
        co_await write_ok(*d, 2 * MiB, 64 * KiB, 0x62);
        s.log->fail_writes_after(uint64_t(allowed));
        auto f = co_await d->flush();
        REQUIRE_FALSE(f);
        CHECK(f.error().code == ENOSPC);
        auto w = co_await write_bytes(*d, 5 * MiB, filled(64 * KiB, 0x63));
        REQUIRE_FALSE(w);
        CHECK(w.error().code == ENOSPC);
        s.log->clear_faults();
        auto again = co_await d->flush();
        CHECK(again);
        co_await write_ok(*d, 6 * MiB, 64 * KiB, 0x64);
        co_await close_ok(*d);
    });
    require_qemu_check_clean(s.path);
    check_patterns(s.path, {{0, 64 * KiB, 0x61},
                            {2 * MiB, 64 * KiB, 0x62},
                            {5 * MiB, 64 * KiB, 0},
                            {6 * MiB, 64 * KiB, 0x64}});
}

namespace {

/// Writes clusters 0-3, flushes, discards cluster 1 and flushes again: the cleared L2 entry is
/// durable but the refcount decrement is only applied in memory after that barrier, so the file
/// now holds one leaked cluster and the dirty bit.
awaitable<void> leak_one_cluster(Disk& d, OpLog& log) {
    for (int i = 0; i < 4; ++i) co_await write_ok(d, uint64_t(i) * 64 * KiB, 64 * KiB, 0x70 + i);
    (void)co_await flush_window(d, log, true);
    auto r = co_await d.discard(GuestOffset{64 * KiB}, 64 * KiB, WriteFlags{});
    if (!r) FAIL("discard failed: " << r.error().message);
    (void)co_await flush_window(d, log, true);
}

/// Opens `path` writable (rebuilding its refcounts) and closes it; it must then be clean.
void repair_and_check(Session& s, const std::string& path) {
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open(path);
        co_await close_ok(*d);
    });
    CHECK_FALSE(dirty_bit(path));
    require_qemu_check_clean(path);
    for (int i = 0; i < 4; ++i)
        check_qemu_pattern(path, uint64_t(i) * 64 * KiB, 64 * KiB, i == 1 ? 0 : 0x70 + i);
}

}  // namespace

TEST_CASE("a copy taken after a flush is dirty and open_disk rebuilds its refcounts",
          "[barrier][dirty]") {
    Session s("", 16 * MiB);
    const std::string copy = s.dir.file("crash.qcow2");
    uint64_t reserved = 0;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await leak_one_cluster(*d, *s.log);
        std::filesystem::copy_file(s.path, copy);
        reserved = d->stats().clusters_reserved;
        co_await write_ok(*d, 4 * MiB, 64 * KiB, 0x7f);  // the original goes on
        co_await close_ok(*d);
    });
    require_qemu_check_clean(s.path);
    CHECK(dirty_bit(copy));
    const auto check = qemu_check(copy);
    INFO(check.json);
    CHECK(check.exit_status == 3);  // leaks only
    CHECK(reserved > 0);
    CHECK(check.leaks == 1 + reserved);  // and the clusters counted ahead (R22)
    repair_and_check(s, copy);
}

TEST_CASE("a Disk destroyed without close leaves the dirty bit and reopening repairs",
          "[barrier][dirty]") {
    Session s("", 16 * MiB);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await leak_one_cluster(*d, *s.log);
        d.reset();  // a crash: no close
    });
    CHECK(dirty_bit(s.path));
    const auto check = qemu_check(s.path);
    INFO(check.json);
    CHECK(check.exit_status == 3);
    const uint64_t before = s.log->count(OpKind::Write);
    repair_and_check(s, s.path);
    CHECK(s.log->count(OpKind::Write) > before);  // the rebuild wrote the refcount block
}
