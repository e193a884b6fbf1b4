// Differential write tests: seeded random sequences of writes, zero writes, discards and
// flushes applied through the engine and to a raw reference, on images of every option that
// changes allocation. After close the image must be clean under `qemu-img check`, read the same
// under qemu, and read the same when the engine reopens it.
#include <catch2/catch.hpp>

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

/// Random operations biased towards boundaries, partial clusters and a hot set of clusters
/// (so data is overwritten, zeroed, discarded and rewritten).
struct OpGenerator {
    std::mt19937_64 rng;
    uint64_t size, cluster;
    bool aligned_discards;  ///< Keep discards cluster-aligned (used with backing files).
    uint64_t hot_clusters = 24;

    uint64_t pick_offset() {
        uint64_t nclusters = size / cluster;
        uint64_t k = rng() % 2 ? rng() % std::min(hot_clusters, nclusters) : rng() % nclusters;
        uint64_t sub = cluster / 32;
        switch (rng() % 5) {
            case 0:
                return k * cluster;
            case 1:
                return k * cluster + (rng() % 32) * sub;
            case 2:
                return k * cluster + cluster - 1 - rng() % std::min<uint64_t>(cluster, 600);
            default:
                return k * cluster + rng() % cluster;
        }
    }
    uint64_t pick_length(uint64_t off, uint64_t max_len) {
        uint64_t cap = std::min(max_len, size - off);
        switch (rng() % 4) {
            case 0:
                return 1 + rng() % std::min<uint64_t>(cap, 16);
            case 1:
                return 1 + rng() % std::min<uint64_t>(cap, cluster / 2 + 1);
            default:
                return 1 + rng() % cap;
        }
    }
    Op next() {
        Op op;
        uint32_t r = rng() % 100;
        op.kind = r < 55   ? Op::Write
                  : r < 65 ? Op::Zero
                  : r < 75 ? Op::ZeroUnmap
                  : r < 79 ? Op::ZeroFast
                  : r < 94 ? Op::Discard
                           : Op::Flush;
        op.fua = rng() % 6 == 0;
        if (op.kind == Op::Flush) return op;
        op.off = pick_offset();
        // Lengths are capped in clusters: the engine handles each cluster on its own and the
        // tests must stay fast in Debug+ASan builds.
        const uint64_t write_cap = std::min(256 * KiB, 64 * cluster);
        const uint64_t zero_cap = std::max(3 * cluster, std::min(256 * KiB, 128 * cluster));
        op.len = pick_length(op.off, op.kind == Op::Write ? write_cap : zero_cap);
        if (op.kind == Op::Discard && aligned_discards) {
            op.off = op.off / cluster * cluster;
            op.len = std::max<uint64_t>(1, op.len / cluster) * cluster;
            op.len = std::min(op.len, size - op.off);
        }
        if (op.kind == Op::Write) {
            op.data = random_bytes(rng, op.len, rng() % 4 == 0);
            if (rng() % 8 == 0)
                std::memset(op.data.data(), static_cast<int>(rng() % 2), op.data.size());
        }
        return op;
    }
};

/// One configuration of the random write test.
struct WriteCase {
    std::string opts;  ///< qemu-img create -o options of the image written to.
    uint64_t cluster = 65536;
    uint64_t size = 8 * MiB;
    std::string backing = "";    ///< "", "raw" (smaller than the image) or "qcow2" (prefilled).
    bool prefill = false;        ///< qemu-io fill first, compressed clusters included.
    std::string data_file = "";  ///< Name of an external data file (added to opts).
    bool data_file_raw = false;
    int ops = 160;
    OpenOptions open = {};  ///< How the engine opens the image for writing (cache, O_DIRECT, ...).
};

/// qemu-io commands that leave data, zero, unallocated and (optionally) compressed clusters in
/// the first 20 clusters; overwrites then hit every kind of L2 entry.
std::vector<std::string> prefill_cmds(const TempDir& dir, uint64_t c, bool compress,
                                      uint64_t seed) {
    std::string pat = dir.file("pat.bin"), cpat = dir.file("cpat.bin");
    random_file(pat, 7919, seed);
    random_file(cpat, c, seed + 1, true);
    std::vector<std::string> cmds = {
        "write -q -s " + pat + " 0 " + n(3 * c + 100),
        "write -q -z " + n(4 * c) + " " + n(2 * c),
        "write -q -z -u " + n(6 * c) + " " + n(c),
        "write -q -P 0x5a " + n(7 * c + 7) + " 1000",
        "write -q -s " + pat + " " + n(9 * c) + " " + n(2 * c),
        "discard -q " + n(10 * c) + " " + n(c),
    };
    if (compress) {
        for (uint64_t k = 12; k < 20; k += 2)
            cmds.push_back("write -q -c -s " + cpat + " " + n(k * c) + " " + n(c));
        cmds.push_back("write -q -c -P 0x3c " + n(13 * c) + " " + n(c));
    }
    return cmds;
}

/// Builds the backing file the case asks for; returns its guest view (empty when none).
Bytes make_backing(const TempDir& dir, const WriteCase& wc) {
    if (wc.backing == "raw") {
        random_file(dir.file("base.raw"), wc.size * 3 / 4 + 512, 99);
        return read_file(dir.file("base.raw"));
    }
    if (wc.backing == "qcow2") {
        qemu_create(dir.file("base.qcow2"), wc.size, "cluster_size=4096");
        qemu_io(dir.file("base.qcow2"), prefill_cmds(dir, 4096, true, 98));
        qemu_io(dir.file("base.qcow2"), {"write -q -s " + dir.file("pat.bin") + " 1M 2M"});
        return qemu_raw(dir.file("base.qcow2"));
    }
    return {};
}

/// Applies `count` generated operations, checking the whole disk every 64 operations.
awaitable<void> apply_random(Disk& disk, Reference& ref, OpGenerator& gen, int count) {
    for (int i = 0; i < count; ++i) {
        co_await apply(disk, ref, gen.next());
        if (i % 64 == 63) co_await check_disk(disk, ref, "engine read during the sequence");
    }
}

/// qemu's checks after the engine closed the image: clean, same contents as the reference,
/// and with data_file_raw the external data file is itself the guest image.
void check_with_qemu(const TempDir& dir, const std::string& path, const WriteCase& wc,
                     Reference& ref) {
    require_qemu_check_clean(path);
    ref.observe(qemu_raw(path), "qemu-img convert after close");
    if (wc.data_file_raw) {
        Bytes raw = read_file(dir.file(wc.data_file));
        raw.resize(ref.data.size());
        require_same(raw, ref.data, "raw external data file");
    }
}

/// Two sessions of random operations (the second on the reopened image), each checked by
/// qemu after close, then a read-only reopen compared once more.
void run_write_case(const WriteCase& wc, uint64_t seed) {
    INFO("options '" << wc.opts << "' backing '" << wc.backing << "' cache "
                     << wc.open.metadata_cache_bytes << " direct " << wc.open.direct
                     << " writethrough " << wc.open.writethrough << " seed " << seed
                     << " (rerun with QNBD_TEST_SEED=" << seed << ")");
    TempDir dir;
    Bytes backing = make_backing(dir, wc);
    std::string path = dir.file("img.qcow2");
    // Absolute: qemu 7.2 resolves a relative data_file against its working directory.
    std::string opts =
        wc.opts + (wc.data_file.empty() ? "" : ",data_file=" + dir.file(wc.data_file));
    qemu_create(path, wc.size, opts, wc.backing.empty() ? "" : "base." + wc.backing, wc.backing);
    if (wc.prefill) qemu_io(path, prefill_cmds(dir, wc.cluster, wc.data_file.empty(), seed));
    Reference ref(qemu_raw(path), backing, wc.cluster);
    ref.discard_may_keep = wc.data_file_raw;
    OpGenerator gen{std::mt19937_64(seed), wc.size, wc.cluster, !wc.backing.empty()};
    for (int session = 0; session < 2; ++session) {
        INFO("session " << session);
        with_disk(path, wc.open, [&](Disk& disk) -> awaitable<void> {
            REQUIRE(disk.size() == wc.size);
            REQUIRE(!disk.read_only());
            co_await apply_random(disk, ref, gen, session == 0 ? wc.ops : wc.ops / 2);
            co_await check_disk(disk, ref, "engine read before close");
        });
        check_with_qemu(dir, path, wc, ref);
    }
    with_disk(path, true, [&](Disk& disk) -> awaitable<void> {
        co_await check_disk(disk, ref, "engine read after reopening");
    });
}

}  // namespace

TEST_CASE("diff_write: fresh images with cluster sizes 512 64K 2M", "[diff][write]") {
    auto [opts, c, size] = GENERATE(table<std::string, uint64_t, uint64_t>({
        {"cluster_size=512", 512, 4 * MiB},
        {"cluster_size=65536", 65536, 8 * MiB},
        {"cluster_size=2M", 2 * MiB, 16 * MiB},
    }));
    run_write_case({.opts = opts, .cluster = c, .size = size}, test_seed(1001));
}

TEST_CASE("diff_write: refcount_bits 1 16 64", "[diff][write]") {
    int bits = GENERATE(1, 16, 64);
    run_write_case({.opts = "cluster_size=4096,refcount_bits=" + n(bits), .cluster = 4096},
                   test_seed(1002));
}

TEST_CASE("diff_write: extended_l2 (subcluster allocation)", "[diff][write]") {
    uint64_t c = GENERATE(16384, 65536, 2 * MiB);
    run_write_case({.opts = "extended_l2=on,cluster_size=" + n(c),
                    .cluster = c,
                    .size = std::max<uint64_t>(8 * MiB, 8 * c)},
                   test_seed(1003));
}

TEST_CASE("diff_write: compat=0.10 (no zero clusters)", "[diff][write]") {
    uint64_t c = GENERATE(512, 65536);
    run_write_case({.opts = "compat=0.10,cluster_size=" + n(c), .cluster = c, .prefill = true},
                   test_seed(1004));
}

TEST_CASE("diff_write: lazy_refcounts=on", "[diff][write]") {
    run_write_case(
        {.opts = "lazy_refcounts=on,cluster_size=4096", .cluster = 4096, .prefill = true},
        test_seed(1005));
}

TEST_CASE("diff_write: copy-on-write from a backing file", "[diff][write]") {
    auto [opts, c, backing] = GENERATE(table<std::string, uint64_t, std::string>({
        {"cluster_size=4096", 4096, "raw"},
        {"cluster_size=65536", 65536, "qcow2"},
        {"extended_l2=on,cluster_size=65536", 65536, "raw"},
        {"extended_l2=on,cluster_size=65536", 65536, "qcow2"},
        {"compat=0.10,cluster_size=512", 512, "raw"},
    }));
    run_write_case({.opts = opts, .cluster = c, .backing = backing, .prefill = true},
                   test_seed(1006));
}

TEST_CASE("diff_write: external data file", "[diff][write]") {
    bool raw = GENERATE(false, true);
    run_write_case({.opts = raw ? "cluster_size=4096,data_file_raw=on" : "cluster_size=4096",
                    .cluster = 4096,
                    .prefill = true,
                    .data_file = "data.bin",
                    .data_file_raw = raw},
                   test_seed(1007));
}

TEST_CASE("diff_write: overwriting compressed clusters (zlib and zstd)", "[diff][write]") {
    std::string type = GENERATE("zlib", "zstd");
    uint64_t c = GENERATE(4096, 65536);
    run_write_case({.opts = "compression_type=" + type + ",cluster_size=" + n(c),
                    .cluster = c,
                    .prefill = true},
                   test_seed(1008));
}

namespace {

OpenOptions open_options(uint64_t cache_bytes, bool direct, bool writethrough) {
    OpenOptions o;
    o.metadata_cache_bytes = cache_bytes;
    o.direct = direct;
    o.writethrough = writethrough;
    return o;
}

}  // namespace

TEST_CASE("diff_write: tiny metadata cache (L2 and refcount evictions)", "[diff][write]") {
    auto [opts, c, backing] = GENERATE(table<std::string, uint64_t, std::string>({
        {"cluster_size=4096,refcount_bits=64", 4096, ""},
        {"cluster_size=512", 512, "raw"},
        {"extended_l2=on,cluster_size=16384", 16384, "qcow2"},
    }));
    WriteCase wc{.opts = opts, .cluster = c, .backing = backing, .prefill = true};
    wc.open = open_options(4 * c, false, false);  // a few tables at most
    run_write_case(wc, test_seed(1009));
}

TEST_CASE("diff_write: O_DIRECT and writethrough", "[diff][write]") {
    auto [opts, c, direct, writethrough] = GENERATE(table<std::string, uint64_t, bool, bool>({
        {"cluster_size=512", 512, true, false},
        {"cluster_size=65536", 65536, true, true},
        {"extended_l2=on,cluster_size=65536", 65536, false, true},
    }));
    WriteCase wc{.opts = opts, .cluster = c, .backing = "raw", .prefill = true, .ops = 100};
    wc.open = open_options(0, direct, writethrough);
    run_write_case(wc, test_seed(1010));
}

// ---- Metadata growth ---------------------------------------------------------------------

namespace {

/// Scattered cluster-aligned 4 KiB writes (plus odd small ones), applied in batches of 16
/// concurrent operations.
awaitable<void> scattered_writes(Disk& disk, Reference& ref, std::mt19937_64& rng, int count) {
    for (int i = 0; i < count; i += 16) {
        std::vector<awaitable<void>> batch;
        std::vector<uint64_t> used;
        for (int k = 0; k < 16; ++k) {
            uint64_t off = rng() % (disk.size() / 4096) * 4096;
            if (std::find(used.begin(), used.end(), off) != used.end()) continue;
            used.push_back(off);
            batch.push_back(apply(
                disk, ref,
                write_op(off + (k % 4 == 0 ? 3 : 0), random_bytes(rng, k % 4 == 0 ? 700 : 4096))));
        }
        co_await when_all(std::move(batch));
    }
}

}  // namespace

TEST_CASE("diff_write: L2 tables and refcount blocks and the refcount table grow",
          "[diff][write]") {
    uint64_t seed = test_seed(2001);
    INFO("seed " << seed);
    TempDir dir;
    std::string path = dir.file("grow.qcow2");
    const uint64_t size = 32 * MiB;
    // 512-byte clusters with 64-bit refcounts: a refcount block covers 64 clusters (32 KiB)
    // and the one-cluster refcount table 2 MiB of image file.
    qemu_create(path, size, "cluster_size=512,refcount_bits=64");
    const uint64_t table_clusters_before = file_be(path, 56, 4);
    Reference ref(Bytes(size), {}, 512);
    std::mt19937_64 rng(seed);
    with_disk(path, false, [&](Disk& disk) -> awaitable<void> {
        co_await scattered_writes(disk, ref, rng, 800);
        co_await check_disk(disk, ref, "engine read after growth");
    });
    CHECK(file_be(path, 56, 4) > table_clusters_before);  // the test really grew the table
    require_qemu_check_clean(path);
    ref.observe(qemu_raw(path), "qemu-img convert after growth");
    with_disk(path, false, [&](Disk& disk) -> awaitable<void> {
        co_await scattered_writes(disk, ref, rng, 200);  // grow again from the reopened state
        co_await check_disk(disk, ref, "engine read after reopening");
    });
    require_qemu_check_clean(path);
    ref.observe(qemu_raw(path), "qemu-img convert after the second session");
}

TEST_CASE("diff_write: writes at the last cluster of a large L1 table", "[diff][write]") {
    TempDir dir;
    std::string path = dir.file("far.qcow2");
    const uint64_t size = 64 * MiB;
    qemu_create(path, size, "cluster_size=512");
    Reference ref(Bytes(size), {}, 512);
    with_disk(path, false, [&](Disk& disk) -> awaitable<void> {
        for (uint64_t off : {size - 512, size - 1, uint64_t{0}, size / 2 - 1, size - 33 * KiB}) {
            Bytes data(std::min<uint64_t>(size - off, 1000), std::byte(off % 251 + 1));
            co_await apply(disk, ref, write_op(off, std::move(data)));
        }
    });
    require_qemu_check_clean(path);
    ref.observe(qemu_raw(path), "qemu-img convert");
}

// ---- Header state ------------------------------------------------------------------------

TEST_CASE("diff_write: dirty bit set while open for writing and cleared by close",
          "[diff][write]") {
    std::string opts = GENERATE("", "lazy_refcounts=on");
    TempDir dir;
    std::string path = dir.file("dirty.qcow2");
    qemu_create(path, 4 * MiB, opts);
    REQUIRE((file_be(path, 72, 8) & 1) == 0);
    with_disk(path, false, [&](Disk& disk) -> awaitable<void> {
        Bytes data(5000, std::byte{0x42});
        require_ok(co_await disk.write(GuestOffset{70000}, data, WriteFlags{}), "write");
        require_ok(co_await disk.flush(), "flush");
        CHECK((file_be(path, 72, 8) & 1) == 1);
    });
    CHECK((file_be(path, 72, 8) & 1) == 0);
    require_qemu_check_clean(path);
    auto view = qemu_raw(path);
    REQUIRE(view.size() == 4 * MiB);
    require_same(std::span(view).subspan(70000, 5000), Bytes(5000, std::byte{0x42}), "written data",
                 70000);
}

TEST_CASE("diff_write: compat=0.10 images stay version 2", "[diff][write]") {
    TempDir dir;
    std::string path = dir.file("v2.qcow2");
    qemu_create(path, 4 * MiB, "compat=0.10");
    with_disk(path, false, [&](Disk& disk) -> awaitable<void> {
        Bytes data(70000, std::byte{0x43});
        require_ok(co_await disk.write(GuestOffset{1000}, data, WriteFlags{true}), "write");
        require_ok(co_await disk.write_zeroes(GuestOffset{0}, 65536, ZeroFlags{true}), "zeroes");
    });
    CHECK(file_be(path, 4, 4) == 2);
    require_qemu_check_clean(path);
    auto view = qemu_raw(path);
    Bytes want(4 * MiB);
    std::fill_n(want.begin() + 65536, 70000 + 1000 - 65536, std::byte{0x43});
    require_same(view, want, "qemu-img convert");
}

TEST_CASE("diff_write: a read-only session leaves a written image byte-identical",
          "[diff][write]") {
    // Clean, dirty (a writable open would rebuild its refcounts) and with a persistent bitmap
    // (a writable open would clear its autoclear bit): read-only, nothing is written (R15).
    const std::string kind = GENERATE("clean", "dirty", "bitmap");
    INFO("image: " << kind);
    TempDir dir;
    std::string path = dir.file("ro.qcow2");
    qemu_create(path, 4 * MiB, "cluster_size=4096");
    qemu_io(path, prefill_cmds(dir, 4096, true, 5));
    if (kind == "bitmap") run_ok("qemu-img bitmap --add " + shq(path) + " b0");
    Bytes before = read_file(path);
    if (kind == "dirty") {
        before[79] |= std::byte{1};  // incompatible feature bit 0
        write_file(path, before);
    }
    with_disk(path, true, [&](Disk& disk) -> awaitable<void> {
        (void)co_await read_ok(disk, 0, disk.size());
        require_ok(co_await disk.flush(), "flush of a read-only disk");
    });
    require_same(read_file(path), before, "image file");
}
