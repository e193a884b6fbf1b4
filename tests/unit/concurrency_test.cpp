// Concurrency tests: many operations in flight at once on one io_context, on disjoint ranges so
// that the final contents are well defined whatever the interleaving. Afterwards the engine,
// qemu-img convert and the reference must agree and `qemu-img check` must find no leaks (a
// cluster allocated twice for the same guest cluster leaks one of them) and no corruption.
#include <catch2/catch.hpp>

#include <algorithm>

#include "tests/unit/support/compare.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/patterns.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/random.hpp"
#include "tests/unit/support/reference_model.hpp"
#include "tests/unit/support/run.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::test;

/// An image under test with its reference and an io_context to drive the engine.
struct Fixture {
    TempDir dir;
    std::string path = dir.file("img.qcow2");
    uint64_t cluster = 65536;
    std::optional<Reference> ref;
    asio::io_context io;

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
        with_disk(io, path, OpenOptions{}, [&](Disk& disk) -> awaitable<void> {
            co_await body(disk);
            co_await check_disk(disk, *ref, "engine read after the concurrent operations");
        });
        require_qemu_check_clean(path);
        ref->observe(qemu_raw(path), "qemu-img convert after close");
        with_disk(path, true, [&](Disk& disk) -> awaitable<void> {
            co_await check_disk(disk, *ref, "engine read after reopening");
        });
    }
};

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
    std::vector<Op> ops;
    for (uint64_t k = 3; k < 100 && (k + 1) * c <= 8 * MiB; k += 3) {
        // A: a small partial write; B: another part of the same cluster, issued right after.
        ops.push_back(write_op(k * c + 512, random_bytes(rng, 512)));
        uint64_t b_off = k * c + c / 2 + rng() % (c / 4);
        if (k % 2)
            ops.push_back(write_op(b_off, random_bytes(rng, c / 8)));
        else
            ops.push_back(Op{Op::Zero, b_off, c / 8, false, {}});
    }
    fx.session([&](Disk& disk) { return all_at_once(disk, *fx.ref, ops); });
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
    fx.session([&](Disk& disk) -> awaitable<void> {
        std::vector<awaitable<void>> tasks;
        for (const auto& op : ops) tasks.push_back(apply(disk, *fx.ref, op));
        for (uint64_t mib = 1; mib < 8; mib += 2)
            for (int r = 0; r < 8; ++r)
                tasks.push_back(
                    reader(disk, snapshot, mib * MiB, (mib + 1) * MiB, seed + mib * 8 + r));
        std::shuffle(tasks.begin(), tasks.end(), rng);
        co_await when_all(std::move(tasks));
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
    fx.session([&](Disk& disk) -> awaitable<void> {
        std::vector<awaitable<void>> tasks;
        for (uint64_t k = 0; k < 40; ++k) {
            // Write the first half of cluster k; read its second half, twice, around it.
            uint64_t half = c / 2, at = k * c + rng() % (c / 8);
            tasks.push_back(read_untouched(disk, snapshot, k * c + half, (k + 1) * c));
            tasks.push_back(
                apply(disk, *fx.ref, write_op(at, random_bytes(rng, half - (at - k * c)))));
            tasks.push_back(read_untouched(disk, snapshot, k * c + half + 1, (k + 1) * c - 1));
        }
        co_await when_all(std::move(tasks));
    });
}

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
    std::vector<Op> ops;
    for (uint64_t k = 0; k < 64; ++k) {
        // In place: the tail of subcluster 2. Allocating: subcluster 0 up to that tail.
        uint64_t split = k * c + 2 * s + 1 + rng() % (s - 2);
        Op in_place = write_op(split, random_bytes(rng, k * c + 3 * s - split));
        Op allocating = write_op(k * c, random_bytes(rng, split - k * c));
        ops.push_back(in_place_first ? in_place : allocating);
        ops.push_back(in_place_first ? allocating : in_place);
    }
    INFO("in-place write issued first: " << in_place_first);
    fx.session([&](Disk& disk) { return all_at_once(disk, *fx.ref, ops); });
}
