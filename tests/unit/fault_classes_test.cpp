// Host faults by class of write, as qemu's blkdebug events inject them (write_aio, l2_update,
// refblock_update, refblock_alloc/reftable, l1_update, the header): EIO and ENOSPC, once and
// persistent, on a run that writes data, allocates L2 tables and refcount blocks and moves the
// refcount table. The request that meets the fault fails with its errno, nothing hangs, the
// image keeps serving reads, a fault that passes lets a retried flush and the close succeed
// with everything in place, and a fault that stays leaves the image dirty (never marked clean
// over a failed metadata write) and repairable with nothing acknowledged lost. A failed sync
// is in barrier_order_test (R18).
#include <catch2/catch.hpp>

#include <algorithm>

#include <set>

#include "tests/unit/barrier_harness.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/qemu.hpp"

using namespace qnbd;
using namespace qnbd::test;
using namespace qnbd::test::barrier;

namespace {

constexpr uint64_t kChunk = 64 * KiB, kChunks = 40;
const char* const kOpts = "cluster_size=512,refcount_bits=64";  // the table moves (R3)

/// What the run writes at chunk `i`: a pattern of its own.
int pattern(uint64_t i) {
    return int(i + 1);
}

/// Offsets of the writes of each class in a run without faults (the engine allocates the same
/// way every time for the same requests).
std::map<Stage, std::set<uint64_t>> classes_of_a_clean_run() {
    Session s(kOpts, 4 * MiB);
    const Layout before = read_layout(s.path);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        for (uint64_t i = 0; i < kChunks; ++i)
            co_await write_ok(*d, i * kChunk, kChunk, pattern(i));
        require_ok(co_await d->flush(), "flush");
        co_await close_ok(*d);
    });
    const Classifier classify{before, read_layout(s.path)};
    std::map<Stage, std::set<uint64_t>> out;
    bool flushing = false;  // data writes all come before the first metadata write
    for (const OpRecord& op : s.log->ops()) {
        if (op.kind == OpKind::Sync) flushing = true;
        if (op.kind != OpKind::Write) continue;
        const Stage st = classify(op);
        if (st != Stage::Other || !flushing) out[st].insert(op.offset);
    }
    return out;
}

/// One row of the table: the class hit, the errno, whether the fault stays.
struct Fault {
    Stage stage;
    int err;
    bool persistent;
};

/// Matches the writes of `stage`: at `offsets`, and for the header, the write that marks the
/// image dirty (refcount table still at `rt_off`) or the one that moves the table.
OpMatch matcher(Stage stage, std::set<uint64_t> offsets, uint64_t rt_off) {
    return [stage, offsets = std::move(offsets), rt_off](const OpRecord& r) {
        if (r.kind != OpKind::Write || !offsets.count(r.offset)) return false;
        if (stage != Stage::DirtyHeader && stage != Stage::MovedHeader) return true;
        const bool same_table = r.data.size() >= 56 && load_be64(r.data.data() + 48) == rt_off;
        return same_table == (stage == Stage::DirtyHeader);
    };
}

/// Writes the chunks; returns how many were acknowledged (a data fault stops the run).
awaitable<uint64_t> write_chunks(Disk& d, const Fault& f) {
    for (uint64_t i = 0; i < kChunks; ++i) {
        auto r = co_await write_bytes(d, i * kChunk, filled(kChunk, pattern(i)));
        if (r) continue;
        CHECK(f.stage == Stage::Other);
        CHECK(r.error().code == f.err);
        co_return i;
    }
    co_return kChunks;
}

/// Every acknowledged chunk reads back through the engine.
awaitable<void> read_chunks(Disk& d, uint64_t acked) {
    for (uint64_t i = 0; i < acked; ++i) {
        const Bytes got = co_await read_ok(d, i * kChunk, kChunk);
        INFO("chunk " << i);
        CHECK(std::count(got.begin(), got.end(), std::byte(pattern(i))) == kChunk);
    }
}

/// Runs the workload with fault `f` armed on the writes at `offsets`.
void run_with_fault(const Fault& f, const std::set<uint64_t>& offsets) {
    INFO("fault on " << stage_name(f.stage) << " writes, errno " << f.err
                     << (f.persistent ? ", persistent" : ", once"));
    Session s(kOpts, 4 * MiB);
    s.log->fail_matching(matcher(f.stage, offsets, read_layout(s.path).rt_off), f.err,
                         f.persistent);
    uint64_t acked = 0;
    bool flushed = false;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        acked = co_await write_chunks(*d, f);
        auto r = co_await d->flush();
        if (f.stage != Stage::Other) {
            REQUIRE_FALSE(r);
            CHECK(r.error().code == f.err);
            r = co_await d->flush();  // a retry: fails only while the fault stays
        }
        CHECK(bool(r) == (!f.persistent || f.stage == Stage::Other));
        flushed = bool(r);
        co_await read_chunks(*d, acked);  // the export keeps serving what it can
        auto c = co_await d->close();
        CHECK(bool(c) == flushed);
    });
    if (f.persistent && f.stage != Stage::Other && f.stage != Stage::DirtyHeader)
        CHECK((file_be(s.path, 72, 8) & 1) == 1);  // dirty: never marked clean over a failure
    s.log->clear_faults();
    s.run([&]() -> awaitable<void> {  // the next open repairs what the fault left
        auto d = co_await s.open();
        if (flushed) co_await read_chunks(*d, acked);
        co_await close_ok(*d);
    });
    require_qemu_check_clean(s.path);
}

}  // namespace

TEST_CASE("host faults: EIO and ENOSPC once or persistent on each class of write", "[fault]") {
    static const auto classes = classes_of_a_clean_run();
    const Stage stage = GENERATE(Stage::Other, Stage::DirtyHeader, Stage::RefBlock, Stage::RefTable,
                                 Stage::MovedHeader, Stage::L2, Stage::L1);
    const int err = GENERATE(EIO, ENOSPC);
    const bool persistent = GENERATE(false, true);
    REQUIRE(classes.count(stage));
    run_with_fault(Fault{stage, err, persistent}, classes.at(stage));
}
