// Concurrency tests: many operations in flight at once on one io_context, on disjoint ranges so
// that the final contents are well defined whatever the interleaving. Afterwards the engine,
// qemu-img convert and the reference must agree and `qemu-img check` must find no leaks (a
// cluster allocated twice for the same guest cluster leaks one of them) and no corruption.
// The tests about one operation "in flight" while another runs force that interleaving: the
// image is opened through a recording file whose holds keep chosen I/O issued but unfinished,
// and each test checks from the log that the interleaving it names really happened.
#include <catch2/catch.hpp>

#include <algorithm>

#include "tests/unit/support/compare.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/patterns.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/random.hpp"
#include "tests/unit/support/recording_file.hpp"
#include "tests/unit/support/reference_model.hpp"
#include "tests/unit/support/run.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::test;

/// An image under test with its reference, an io_context to drive the engine and the log of
/// the recording file every session opens the image through.
struct Fixture {
    TempDir dir;
    std::string path = dir.file("img.qcow2");
    uint64_t cluster = 65536;
    std::optional<Reference> ref;
    asio::io_context io;
    std::shared_ptr<OpLog> log = std::make_shared<OpLog>();

    /// Creates the image (over a smaller random raw backing file if `backing`), optionally
    /// prefilled by qemu-io with data, zero and compressed clusters.
    Fixture(const std::string& opts, uint64_t c, uint64_t size, bool backing = false,
            bool prefill = false)
        : cluster(c) {
        Bytes base;
        if (backing) {
            random_file(dir.file("base.raw"), size / 2 + 4096, 404);
            base = read_file(dir.file("base.raw"));
        }
        qemu_create(path, size, opts, backing ? "base.raw" : "", "raw");
        if (prefill) qemu_io(path, pattern_cmds(dir, c, size, true, 405));
        ref.emplace(qemu_raw(path), base, c);
    }

    /// Runs `body` with the image open for writing, then closes it and checks everything.
    template <class F>
    void session(F body) {
        OpenOptions opts;
        opts.file_opener = recording_opener(log);
        with_disk(io, path, opts, [&](Disk& disk) -> awaitable<void> {
            co_await body(disk);
            co_await check_disk(disk, *ref, "engine read after the concurrent operations");
        });
        require_qemu_check_clean(path);
        ref->observe(qemu_raw(path), "qemu-img convert after close");
        with_disk(path, true, [&](Disk& disk) -> awaitable<void> {
            co_await check_disk(disk, *ref, "engine read after reopening");
        });
    }

    /// Starts `op` on the engine and the reference; it runs concurrently with the caller.
    Task start(Disk& disk, Op op) {
        return Task(io.get_executor(), apply(disk, *ref, std::move(op)));
    }
    /// Holds the next `count` writes to the image file (data writes, in these tests).
    Hold hold_writes(size_t count = SIZE_MAX) {
        return log->hold(op_is(OpKind::Write, path), 0, count);
    }
};

/// A write and the write that follows it into the same cluster.
using Pair = std::pair<Op, Op>;

/// The operations of the log after `from` whose range overlaps host cluster `host` (of
/// `cluster` bytes) of the file `w` went to.
std::vector<OpRecord> ops_in_cluster(OpLog& log, uint64_t from, const OpRecord& w,
                                     uint64_t cluster) {
    const uint64_t host = w.offset / cluster * cluster;
    std::vector<OpRecord> out;
    for (const auto& r : log.ops_since(from))
        if (r.path == w.path && r.overlaps(host, host + cluster)) out.push_back(r);
    return out;
}

/// Issues the first write of every pair and holds each one's data write to the image; then
/// issues every second write, each into the cluster of its first. A second write must wait
/// for its first's allocation: while the data writes are held, no second write issues I/O or
/// finishes, and all later I/O to a cluster comes after its held write completed.
awaitable<void> seconds_wait_for_firsts(Fixture& fx, Disk& disk, std::vector<Pair> pairs) {
    auto held = fx.hold_writes(pairs.size());
    std::vector<Task> firsts, seconds;
    for (auto& p : pairs) firsts.push_back(fx.start(disk, std::move(p.first)));
    REQUIRE(co_await held.wait_caught(pairs.size()));
    REQUIRE(co_await fx.log->settle());  // the rest of their I/O (zeroing, preallocation) is done
    const uint64_t issued = fx.log->clock();
    for (auto& p : pairs) seconds.push_back(fx.start(disk, std::move(p.second)));
    REQUIRE(co_await fx.log->settle());
    for (const auto& t : seconds) CHECK_FALSE(t.done());
    CHECK(fx.log->ops_since(issued).empty());
    held.release();
    for (auto& t : firsts) co_await t.join();
    for (auto& t : seconds) co_await t.join();
    // The interleaving: the second writes were issued while the first ones' data writes were
    // in flight, and touched each cluster only after its data write.
    for (const auto& w : held.records()) {
        CHECK(w.done >= issued);
        for (const auto& r : ops_in_cluster(*fx.log, issued, w, fx.cluster)) CHECK(r.seq > w.done);
    }
}

/// Applies all `ops` concurrently.
awaitable<void> all_at_once(Disk& disk, Reference& ref, const std::vector<Op>& ops) {
    std::vector<awaitable<void>> tasks;
    for (const auto& op : ops) tasks.push_back(apply(disk, ref, op));
    co_await when_all(std::move(tasks));
}

/// Data writes (one in eight a zero write, some with FUA) covering the pieces.
std::vector<Op> writes_for(std::mt19937_64& rng, const std::vector<Piece>& ps) {
    std::vector<Op> ops;
    for (auto [off, len] : ps) {
        Op op = write_op(off, random_bytes(rng, len), rng() % 5 == 0);
        if (rng() % 8 == 0) {
            op.kind = Op::Zero;
            op.data.clear();
        }
        ops.push_back(std::move(op));
    }
    return ops;
}

}  // namespace

TEST_CASE("concurrency: 96 writes into one fresh cluster and its neighbours", "[concurrency]") {
    auto [opts, c, backing] = GENERATE(table<std::string, uint64_t, bool>({
        {"cluster_size=65536", 65536, false},
        {"cluster_size=65536", 65536, true},
        {"extended_l2=on", 65536, false},
        {"extended_l2=on", 65536, true},
        {"cluster_size=512,refcount_bits=64", 512, false},
        {"cluster_size=4096,compat=0.10", 4096, true},
    }));
    uint64_t seed = test_seed(3001);
    INFO("options " << opts << " backing " << backing << " seed " << seed);
    Fixture fx(opts, c, 8 * MiB, backing);
    std::mt19937_64 rng(seed);
    // Cluster k starts an L2 table when clusters are 512 bytes (64 entries per table).
    const uint64_t k = 64;
    // About 64 pieces inside cluster k, 32 more spread over its neighbours; pieces cross the
    // cluster boundaries wherever no cut falls on them.
    const uint64_t from = (k - 1) * c + c / 2, to = (k + 2) * c - c / 3;
    std::vector<uint64_t> cuts{from, to};
    add_cuts(rng, cuts, k * c, (k + 1) * c, 63);
    add_cuts(rng, cuts, from, to, 32);
    auto ps = cut(rng, cuts);
    REQUIRE(ps.size() >= 64);
    auto ops = writes_for(rng, ps);
    fx.session([&](Disk& disk) { return all_at_once(disk, *fx.ref, ops); });
}

TEST_CASE("concurrency: a write lands while a partial write to the same fresh cluster is in flight",
          "[concurrency]") {
    auto [opts, backing] = GENERATE(table<std::string, bool>({
        {"", false},
        {"", true},
        {"extended_l2=on", true},
        {"cluster_size=4096,refcount_bits=1", false},
    }));
    uint64_t seed = test_seed(3002);
    INFO("options '" << opts << "' backing " << backing << " seed " << seed);
    uint64_t c = opts.find("4096") != std::string::npos ? 4096 : 65536;
    Fixture fx(opts, c, 8 * MiB, backing);
    std::mt19937_64 rng(seed);
    std::vector<Pair> pairs;
    for (uint64_t k = 3; k < 100 && (k + 1) * c <= 8 * MiB; k += 3) {
        // A: a small partial write; B: another part of the same cluster, a data write or a
        // zero write, issued while A's data write is held.
        Op a = write_op(k * c + 512, random_bytes(rng, 512));
        uint64_t b_off = k * c + c / 2 + rng() % (c / 4);
        Op b = k % 2 ? write_op(b_off, random_bytes(rng, c / 8))
                     : Op{Op::Zero, b_off, c / 8, false, {}};
        pairs.emplace_back(std::move(a), std::move(b));
    }
    fx.session([&](Disk& disk) { return seconds_wait_for_firsts(fx, disk, pairs); });
}

namespace {

/// Eight reads of a region nobody writes, checked against a snapshot of the reference.
awaitable<void> reader(Disk& disk, const Bytes& snapshot, uint64_t from, uint64_t to,
                       uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (int i = 0; i < 8; ++i) {
        uint64_t off = from + rng() % (to - from);
        uint64_t len = 1 + rng() % std::min<uint64_t>(to - off, 200000);
        auto got = co_await read_ok(disk, off, len);
        require_same(got, std::span(snapshot).subspan(off, len), "read during writes", off);
    }
}

}  // namespace

TEST_CASE("concurrency: reads of stable regions while other regions are written", "[concurrency]") {
    uint64_t seed = test_seed(3003);
    INFO("seed " << seed);
    // Prefilled: data, zero and compressed clusters in the first 21 clusters, more scattered.
    Fixture fx("cluster_size=65536", 65536, 8 * MiB, false, true);
    const Bytes snapshot = fx.ref->data;
    std::mt19937_64 rng(seed);
    // Writers own even MiBs, readers read odd MiBs (so they share L2 tables and refcount blocks).
    std::vector<Op> ops;
    for (uint64_t mib = 0; mib < 8; mib += 2) {
        auto ws = writes_for(rng, random_pieces(rng, mib * MiB, (mib + 1) * MiB, 24));
        ops.insert(ops.end(), ws.begin(), ws.end());
    }
    auto ex = fx.io.get_executor();
    // Four readers on each odd MiB, starting with reader `first`.
    auto readers = [&](Disk& disk, int first) {
        std::vector<Task> out;
        for (uint64_t mib = 1; mib < 8; mib += 2)
            for (int r = first; r < first + 4; ++r)
                out.emplace_back(
                    ex, reader(disk, snapshot, mib * MiB, (mib + 1) * MiB, seed + mib * 8 + r));
        return out;
    };
    fx.session([&](Disk& disk) -> awaitable<void> {
        // Every L2 table into the cache first: below, every read of the image is a data read.
        (void)co_await read_ok(disk, 0, disk.size());
        // The writers' data writes are held; reads of the other regions complete meanwhile.
        auto writes = fx.hold_writes();
        std::vector<Task> writers;
        for (const auto& op : ops) writers.push_back(fx.start(disk, op));
        REQUIRE(co_await fx.log->settle());
        INFO(writes.caught() << " data writes held");
        REQUIRE(writes.caught() >= 16);
        auto early = readers(disk, 0);
        for (auto& t : early) REQUIRE(co_await t.finished_within(kGateTimeout));
        const uint64_t early_done = fx.log->clock();
        for (auto& t : early) co_await t.join();
        // Then reads are held in flight while the writes complete.
        auto reads = fx.log->hold(op_is(OpKind::Read, fx.path));
        auto late = readers(disk, 4);
        REQUIRE(co_await fx.log->settle());
        reads.freeze();
        INFO(reads.caught() << " reads held");
        REQUIRE(reads.caught() >= 8);
        writes.release();
        // A FUA write also waits for its barrier, which waits for the reads in flight.
        for (size_t i = 0; i < writers.size(); ++i)
            if (!ops[i].fua) REQUIRE(co_await writers[i].finished_within(kGateTimeout));
        const uint64_t writes_done = fx.log->clock();
        reads.release();
        for (auto& t : writers) co_await t.join();
        for (auto& t : late) co_await t.join();
        // The interleavings: every held write was still in flight when the early reads had
        // finished; every held read was issued before the last held write completed and was
        // still in flight when the writes without FUA had finished.
        uint64_t last_write = 0;
        for (const auto& w : writes.records()) {
            CHECK(w.done >= early_done);
            last_write = std::max(last_write, w.done);
        }
        for (const auto& r : reads.records()) {
            CHECK(r.seq < last_write);
            CHECK(r.done >= writes_done);
        }
    });
}

TEST_CASE("concurrency: flushes interleaved with writes", "[concurrency]") {
    std::string opts = GENERATE("", "lazy_refcounts=on");
    uint64_t seed = test_seed(3004);
    INFO("options '" << opts << "' seed " << seed);
    Fixture fx(opts, 65536, 8 * MiB);
    std::mt19937_64 rng(seed);
    auto ops = writes_for(rng, random_pieces(rng, 0, 8 * MiB, 64));
    for (int i = 0; i < 40; ++i) ops.push_back(Op{Op::Flush, 0, 0, false, {}});
    std::shuffle(ops.begin(), ops.end(), rng);
    uint64_t flushes_before = 0;
    fx.session([&](Disk& disk) -> awaitable<void> {
        flushes_before = disk.stats().flush_requests;
        co_await all_at_once(disk, *fx.ref, ops);
        std::vector<awaitable<void>> burst;  // flushes with nothing to write
        for (int i = 0; i < 16; ++i)
            burst.push_back(apply(disk, *fx.ref, Op{Op::Flush, 0, 0, false, {}}));
        co_await when_all(std::move(burst));
        CHECK(disk.stats().flush_requests - flushes_before >= 56);
        CHECK(disk.stats().barriers >= 1);
    });
}

TEST_CASE("concurrency: writes needing new L2 tables and refcount blocks at once",
          "[concurrency]") {
    uint64_t seed = test_seed(3005);
    INFO("seed " << seed);
    // 512-byte clusters, 64-bit refcounts: an L2 table maps 32 KiB, a refcount block 64
    // clusters; each write below needs its own L2 table and most need new refcount blocks.
    Fixture fx("cluster_size=512,refcount_bits=64", 512, 16 * MiB);
    std::mt19937_64 rng(seed);
    std::vector<Op> ops;
    for (uint64_t t = 0; t < 16 * MiB / (32 * KiB); t += 2) {
        uint64_t off = t * 32 * KiB + rng() % (31 * KiB);
        ops.push_back(write_op(off, random_bytes(rng, 1 + rng() % 1024), rng() % 7 == 0));
    }
    fx.session([&](Disk& disk) { return all_at_once(disk, *fx.ref, ops); });
}

TEST_CASE("concurrency: discards and zero writes freeing clusters while others allocate",
          "[concurrency]") {
    std::string opts = GENERATE("cluster_size=4096", "extended_l2=on,cluster_size=65536");
    uint64_t c = opts.find("4096") != std::string::npos ? 4096 : 65536;
    uint64_t seed = test_seed(3006);
    INFO("options " << opts << " seed " << seed);
    // Prefilled with data, zero and compressed clusters: freed clusters may be reused at once.
    Fixture fx(opts, c, 8 * MiB, false, true);
    std::mt19937_64 rng(seed);
    std::vector<Op> ops;
    for (uint64_t k = 0; k + 1 < 8 * MiB / c && ops.size() < 160; ++k) {
        uint64_t off = k * c;
        switch (rng() % 4) {
            case 0:
                ops.push_back(Op{Op::Discard, off, c, false, {}});
                break;
            case 1:
                ops.push_back(Op{Op::ZeroUnmap, off, c, false, {}});
                break;
            case 2:
                ops.push_back(Op{Op::Zero, off + c / 4, c / 2, false, {}});
                break;
            default:
                ops.push_back(write_op(off + rng() % (c / 2), random_bytes(rng, c / 3)));
        }
    }
    fx.session([&](Disk& disk) { return all_at_once(disk, *fx.ref, ops); });
}

TEST_CASE("concurrency: partial writes into compressed, zero and backed clusters at once",
          "[concurrency]") {
    auto [opts, c, backing] = GENERATE(table<std::string, uint64_t, bool>({
        {"cluster_size=65536", 65536, false},
        {"cluster_size=4096", 4096, true},
        {"extended_l2=on,cluster_size=65536", 65536, true},
    }));
    uint64_t seed = test_seed(3007);
    INFO("options " << opts << " backing " << backing << " seed " << seed);
    // Clusters 0..20 hold every L2 entry kind (compressed ones at 14..18), see pattern_cmds.
    Fixture fx(opts, c, 8 * MiB, backing, true);
    std::mt19937_64 rng(seed);
    std::vector<Op> ops;
    for (uint64_t k = 0; k <= 20; ++k) {
        std::vector<uint64_t> cuts{k * c, (k + 1) * c};
        add_cuts(rng, cuts, k * c, (k + 1) * c, 11);
        auto ps = cut(rng, cuts);
        ps.resize(6);  // six disjoint partial writes per cluster, gaps left untouched
        auto ws = writes_for(rng, ps);
        ops.insert(ops.end(), ws.begin(), ws.end());
    }
    std::shuffle(ops.begin(), ops.end(), rng);
    fx.session([&](Disk& disk) { return all_at_once(disk, *fx.ref, ops); });
}

namespace {

/// Reads the bytes of [from, to) that no operation writes, comparing with their old value.
awaitable<void> read_untouched(Disk& disk, const Bytes& snapshot, uint64_t from, uint64_t to) {
    auto got = co_await read_ok(disk, from, to - from);
    require_same(got, std::span(snapshot).subspan(from, to - from), "untouched bytes", from);
}

}  // namespace

TEST_CASE("concurrency: reads of untouched bytes of clusters being allocated", "[concurrency]") {
    auto [opts, c] = GENERATE(table<std::string, uint64_t>({
        {"cluster_size=65536", 65536},
        {"extended_l2=on,cluster_size=65536", 65536},
        {"cluster_size=4096,compression_type=zstd", 4096},
    }));
    uint64_t seed = test_seed(3008);
    INFO("options " << opts << " seed " << seed);
    // Over a backing file and prefilled: copy-on-write brings backing, compressed or zero
    // data into the new clusters while the untouched halves are read.
    Fixture fx(opts, c, 8 * MiB, true, true);
    const Bytes snapshot = fx.ref->data;
    std::mt19937_64 rng(seed);
    auto ex = fx.io.get_executor();
    fx.session([&](Disk& disk) -> awaitable<void> {
        const uint64_t count = 40, half = c / 2;
        // The first halves of clusters 0..39 are written, their data writes held.
        auto writes = fx.hold_writes(count);
        std::vector<Task> writers;
        for (uint64_t k = 0; k < count; ++k) {
            const uint64_t at = k * c + rng() % (c / 8);
            writers.push_back(fx.start(disk, write_op(at, random_bytes(rng, half - (at - k * c)))));
        }
        REQUIRE(co_await writes.wait_caught(count));
        // The second halves are read meanwhile...
        std::vector<Task> early, late;
        for (uint64_t k = 0; k < count; ++k)
            early.emplace_back(ex, read_untouched(disk, snapshot, k * c + half, (k + 1) * c));
        for (auto& t : early) REQUIRE(co_await t.finished_within(kGateTimeout));
        const uint64_t early_done = fx.log->clock();
        for (auto& t : early) co_await t.join();
        // ...and again with the reads' I/O (of the backing file, a compressed cluster or the
        // old data) held while the writes complete and map the new clusters.
        auto reads = fx.log->hold([](const OpRecord& r) { return r.kind == OpKind::Read; });
        for (uint64_t k = 0; k < count; ++k)
            late.emplace_back(ex,
                              read_untouched(disk, snapshot, k * c + half + 1, (k + 1) * c - 1));
        REQUIRE(co_await fx.log->settle());
        reads.freeze();
        INFO(reads.caught() << " reads held");
        REQUIRE(reads.caught() >= count / 2);  // zero clusters need no I/O
        writes.release();
        for (auto& t : writers) REQUIRE(co_await t.finished_within(kGateTimeout));
        const uint64_t writes_done = fx.log->clock();
        reads.release();
        for (auto& t : writers) co_await t.join();
        for (auto& t : late) co_await t.join();
        // The interleavings: the early reads finished while every data write was held; the
        // late reads' I/O, issued before any data write completed, was still in flight when
        // the write requests had finished.
        uint64_t first_write = UINT64_MAX;
        for (const auto& w : writes.records()) {
            CHECK(w.done >= early_done);
            first_write = std::min(first_write, w.done);
        }
        for (const auto& r : reads.records()) {
            CHECK(r.seq < first_write);
            CHECK(r.done >= writes_done);
        }
    });
}

namespace {

/// Issues the in-place write (first) of every pair and holds its data write; then issues the
/// allocating writes (second), which read their copy-on-write data and issue their own data
/// writes, held too. The in-place writes are released and land first; each allocating write,
/// whose copy was read before that, lands after and must not carry old bytes over the range
/// of the in-place write into its cluster.
awaitable<void> allocations_copy_around(Fixture& fx, Disk& disk, std::vector<Pair> pairs) {
    auto in_place = fx.hold_writes(pairs.size());
    std::vector<Task> firsts, seconds;
    for (auto& p : pairs) firsts.push_back(fx.start(disk, std::move(p.first)));
    REQUIRE(co_await in_place.wait_caught(pairs.size()));
    const uint64_t issued = fx.log->clock();
    auto allocating = fx.hold_writes(pairs.size());
    for (auto& p : pairs) seconds.push_back(fx.start(disk, std::move(p.second)));
    REQUIRE(co_await allocating.wait_caught(pairs.size()));
    in_place.release();
    for (auto& t : firsts) REQUIRE(co_await t.finished_within(kGateTimeout));
    allocating.release();
    for (auto& t : firsts) co_await t.join();
    for (auto& t : seconds) co_await t.join();
    // The interleaving: each allocating write was issued (its copy read) while the in-place
    // write into its cluster was in flight, and landed after it.
    for (const auto& w1 : in_place.records()) {
        size_t writes = 0;
        for (const auto& w2 : ops_in_cluster(*fx.log, issued, w1, fx.cluster)) {
            if (w2.kind != OpKind::Write) continue;
            ++writes;
            CHECK(w2.seq < w1.done);
            CHECK(w1.done < w2.done);
        }
        CHECK(writes == 1);
    }
}

}  // namespace

// Regression: with extended L2, a write that must allocate a zero subcluster of an allocated
// cluster rewrote whole subclusters [first, last] from a copy read beforehand, including the
// already-allocated subcluster it only partly covers; an in-place write to the rest of that
// subcluster, issued just before and still in flight, was overwritten with the old bytes.
TEST_CASE("concurrency: regression: subcluster allocation lost a concurrent in-place write",
          "[concurrency]") {
    bool in_place_first = GENERATE(true, false);
    const uint64_t c = 65536, s = c / 32;
    Fixture fx("extended_l2=on,cluster_size=65536", c, 8 * MiB);
    std::vector<std::string> fill = {"write -q -P 0x11 0 4M"};
    for (uint64_t k = 0; k < 64; ++k) fill.push_back("write -q -z -u " + n(k * c) + " " + n(s));
    qemu_io(fx.path, fill);
    fx.ref.emplace(qemu_raw(fx.path), Bytes{}, c);
    std::mt19937_64 rng(3009);
    std::vector<Pair> pairs;
    for (uint64_t k = 0; k < 64; ++k) {
        // In place: the tail of subcluster 2. Allocating: subcluster 0 up to that tail.
        uint64_t split = k * c + 2 * s + 1 + rng() % (s - 2);
        Op in_place = write_op(split, random_bytes(rng, k * c + 3 * s - split));
        Op allocating = write_op(k * c, random_bytes(rng, split - k * c));
        if (in_place_first)
            pairs.emplace_back(std::move(in_place), std::move(allocating));
        else
            pairs.emplace_back(std::move(allocating), std::move(in_place));
    }
    INFO("in-place write issued first: " << in_place_first);
    fx.session([&](Disk& disk) {
        return in_place_first ? allocations_copy_around(fx, disk, pairs)
                              : seconds_wait_for_firsts(fx, disk, pairs);
    });
}
