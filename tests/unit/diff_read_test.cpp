// Differential read tests: images built by real qemu-img/qemu-io with every option that
// changes how data is found (cluster sizes, compat, refcount widths, lazy refcounts, extended
// L2, compression, backing chains, external data files), read through the engine in many
// ways and compared byte for byte with `qemu-img convert -O raw`.
#include <catch2/catch.hpp>

#include <cerrno>

#include "tests/unit/support/compare.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/patterns.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/random.hpp"
#include "tests/unit/support/run.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::test;

// ---- Ways of reading -------------------------------------------------------------------

awaitable<void> read_whole(Disk& disk, const Bytes& want) {
    auto got = co_await read_ok(disk, 0, want.size());
    require_same(got, want, "one read of the whole disk");
}

/// Tiles the disk with reads of odd sizes (1, 511, 4097, cross-cluster, ...).
awaitable<void> read_tiled(Disk& disk, const Bytes& want, uint64_t c) {
    const uint64_t sizes[] = {1, 511, 4097, 65537, 513, 131071, MiB + 3, 2 * c + 1, 3};
    uint64_t off = 0;
    for (size_t i = 0; off < want.size(); ++i) {
        uint64_t len = std::min<uint64_t>(sizes[i % std::size(sizes)], want.size() - off);
        auto got = co_await read_ok(disk, off, len);
        require_same(got, std::span(want).subspan(off, len), "tiled read", off);
        off += len;
    }
}

/// Small reads straddling random cluster and subcluster boundaries.
awaitable<void> read_boundaries(Disk& disk, const Bytes& want, uint64_t c, std::mt19937_64& rng) {
    const uint64_t s = c / 32;
    for (int i = 0; i < 120; ++i) {
        uint64_t b = (rng() % (want.size() / s - 1) + 1) * s;
        if (i % 2) b = b / c * c + (b % c == 0 ? 0 : c);
        if (b >= want.size()) b = want.size() / 2;
        const uint64_t before[] = {1, 7, s / 2 + 1, std::min<uint64_t>(c / 2, 4097)};
        const uint64_t after[] = {1, 9, s + 3, std::min<uint64_t>(c + 1, 8193)};
        uint64_t off = b - std::min(b, before[rng() % 4]);
        uint64_t len = std::min(b + after[rng() % 4], uint64_t(want.size())) - off;
        auto got = co_await read_ok(disk, off, len);
        require_same(got, std::span(want).subspan(off, len), "boundary read", off);
    }
}

awaitable<void> read_one_checked(Disk& disk, const Bytes& want, uint64_t off, uint64_t len) {
    auto got = co_await read_ok(disk, off, len);
    require_same(got, std::span(want).subspan(off, len), "concurrent read", off);
}

/// 64 random reads plus a tiling of the whole disk in 37 pieces, all in flight at once.
awaitable<void> read_concurrent(Disk& disk, const Bytes& want, uint64_t c, std::mt19937_64& rng) {
    std::vector<awaitable<void>> tasks;
    for (int i = 0; i < 64; ++i) {
        uint64_t off = rng() % want.size();
        uint64_t len = 1 + rng() % std::min<uint64_t>(std::min(3 * c, MiB) + 1, want.size() - off);
        tasks.push_back(read_one_checked(disk, want, off, len));
    }
    uint64_t piece = want.size() / 37 + 1;
    for (uint64_t off = 0; off < want.size(); off += piece)
        tasks.push_back(read_one_checked(disk, want, off, std::min(piece, want.size() - off)));
    co_await when_all(std::move(tasks));
}

/// Reads with a ZeroRun list: the runs must be ordered, inside the buffer, and really zero.
awaitable<void> read_zero_runs(Disk& disk, const Bytes& want) {
    const uint64_t chunk = MiB + 4099;
    for (uint64_t off = 0; off < want.size(); off += chunk) {
        uint64_t len = std::min(chunk, want.size() - off);
        std::vector<ZeroRun> zeros;
        auto got = co_await read_ok(disk, off, len, &zeros);
        require_same(got, std::span(want).subspan(off, len), "read with zero runs", off);
        uint64_t prev_end = 0;
        for (const auto& z : zeros) {
            INFO("zero run " << z.offset << "+" << z.length << " in read " << off << "+" << len);
            REQUIRE(z.offset >= prev_end);
            REQUIRE(z.offset + z.length <= len);
            Bytes zero(z.length);
            require_same(std::span(want).subspan(off + z.offset, z.length), zero,
                         "bytes the engine reported as a zero run", off + z.offset);
            prev_end = z.offset + z.length;
        }
    }
}

/// A read-only Disk refuses every kind of write with EPERM.
awaitable<void> writes_refused(Disk& disk) {
    Bytes one(512, std::byte{1});
    auto w = co_await disk.write(GuestOffset{0}, one, WriteFlags{});
    REQUIRE(!w);
    CHECK(w.error().code == EPERM);
    auto z = co_await disk.write_zeroes(GuestOffset{0}, 512, ZeroFlags{});
    REQUIRE(!z);
    CHECK(z.error().code == EPERM);
    auto d = co_await disk.discard(GuestOffset{0}, disk.size(), WriteFlags{});
    REQUIRE(!d);
    CHECK(d.error().code == EPERM);
}

/// Opens `img` read-only and checks every way of reading against qemu's view; the image
/// file must come out unchanged.
void verify_reads(const Image& img, uint64_t seed = 7) {
    INFO("image " << img.path << " cluster " << img.cluster << " seed " << seed);
    require_qemu_check_clean(img.path);  // qemu's own image must be sane to be an oracle
    const Bytes want = qemu_raw(img.path);
    const uint64_t vsize = qemu_virtual_size(img.path);
    REQUIRE(want.size() == vsize);
    const Bytes file_before = read_file(img.path);
    std::mt19937_64 rng(seed);
    with_disk(img.path, true, [&](Disk& disk) -> awaitable<void> {
        REQUIRE(disk.size() == vsize);
        REQUIRE(disk.read_only());
        REQUIRE(disk.format_name() == "qcow2");
        co_await read_whole(disk, want);
        co_await read_tiled(disk, want, img.cluster);
        co_await read_boundaries(disk, want, img.cluster, rng);
        co_await read_concurrent(disk, want, img.cluster, rng);
        co_await read_zero_runs(disk, want);
        co_await writes_refused(disk);
    });
    require_same(read_file(img.path), file_before, "image file after a read-only session");
}

}  // namespace

TEST_CASE("diff_read: cluster sizes 512 4K 64K 2M", "[diff][read]") {
    uint64_t c = GENERATE(512, 4096, 65536, 2 * MiB);
    TempDir dir;
    verify_reads(patterned(dir, "cluster_size=" + n(c), c));
}

TEST_CASE("diff_read: compat=0.10", "[diff][read]") {
    uint64_t c = GENERATE(512, 65536);
    TempDir dir;
    verify_reads(patterned(dir, "compat=0.10,cluster_size=" + n(c), c));
}

TEST_CASE("diff_read: refcount_bits 1 8 64", "[diff][read]") {
    int bits = GENERATE(1, 8, 64);
    TempDir dir;
    verify_reads(patterned(dir, "cluster_size=4096,refcount_bits=" + n(bits), 4096));
}

TEST_CASE("diff_read: lazy_refcounts=on", "[diff][read]") {
    TempDir dir;
    verify_reads(patterned(dir, "lazy_refcounts=on,cluster_size=4096", 4096));
}

TEST_CASE("diff_read: extended_l2 with 64K and 2M clusters", "[diff][read]") {
    uint64_t c = GENERATE(65536, 2 * MiB);
    TempDir dir;
    verify_reads(patterned(dir, "extended_l2=on,cluster_size=" + n(c), c));
}

TEST_CASE("diff_read: compression_type=zstd", "[diff][read]") {
    uint64_t c = GENERATE(4096, 65536);
    TempDir dir;
    auto img = patterned(dir, "compression_type=zstd,cluster_size=" + n(c), c);
    REQUIRE(qemu_check(img.path).compressed_clusters > 0);
    verify_reads(img);
}

TEST_CASE("diff_read: qemu-img convert -c of seeded data (zlib and zstd)", "[diff][read]") {
    std::string type = GENERATE("zlib", "zstd");
    uint64_t c = GENERATE(512, 65536);
    TempDir dir;
    std::mt19937_64 rng(11);
    Bytes raw;
    for (int i = 0; i < 48; ++i) {  // compressible, incompressible and zero stretches
        auto part = random_bytes(rng, 1 + rng() % (3 * c), i % 3 == 0);
        if (i % 3 == 2) std::fill(part.begin(), part.end(), std::byte{0});
        raw.insert(raw.end(), part.begin(), part.end());
    }
    raw.resize((raw.size() + 511) / 512 * 512);
    write_file(dir.file("src.raw"), raw);
    Image img{dir.file("c.qcow2"), c};
    run_ok("qemu-img convert -c -f raw -O qcow2 -o compression_type=" + type +
           ",cluster_size=" + n(c) + " " + shq(dir.file("src.raw")) + " " + shq(img.path));
    REQUIRE(qemu_check(img.path).compressed_clusters > 0);
    REQUIRE(qemu_raw(img.path) == raw);
    verify_reads(img);
}

TEST_CASE("diff_read: backing chain qcow2 > qcow2 > qcow2 > raw with relative paths",
          "[diff][read]") {
    TempDir dir;
    std::filesystem::create_directories(dir.path() / "base");
    std::filesystem::create_directories(dir.path() / "mid");
    random_file(dir.file("base/base.raw"), 3 * MiB, 21);
    // mid.qcow2 names its backing relative to its own directory; top names mid relatively.
    qemu_create(dir.file("mid/mid.qcow2"), 4 * MiB, "cluster_size=4096", "../base/base.raw", "raw");
    qemu_io(dir.file("mid/mid.qcow2"), pattern_cmds(dir, 4096, 4 * MiB, true, 22));
    qemu_create(dir.file("mid/mid2.qcow2"), 5 * MiB, "extended_l2=on", "mid.qcow2", "qcow2");
    std::mt19937_64 rng(23);
    auto pat = dir.file("pat.bin");
    qemu_io(dir.file("mid/mid2.qcow2"), scattered_cmds(rng, 0, 5 * MiB, 40, 65536, pat, true));
    Image top{dir.file("top.qcow2"), 512};
    qemu_create(top.path, 6 * MiB, "cluster_size=512", "mid/mid2.qcow2", "qcow2");
    qemu_io(top.path, scattered_cmds(rng, 0, 6 * MiB, 60, 512, pat, true));
    verify_reads(top);
}

TEST_CASE("diff_read: overlay larger than its backing reads zeros past the backing's end",
          "[diff][read]") {
    uint64_t c = GENERATE(512, 65536);
    TempDir dir;
    random_file(dir.file("small.raw"), MiB + 1536, 31);
    qemu_create(dir.file("small.qcow2"), MiB + 1536, "cluster_size=4096", "small.raw", "raw");
    qemu_io(dir.file("small.qcow2"), {"write -q -P 0x77 " + n(MiB) + " 1536"});
    Image top{dir.file("top.qcow2"), c};
    qemu_create(top.path, 3 * MiB, "cluster_size=" + n(c), "small.qcow2", "qcow2");
    // Partial writes in the cluster straddling the backing's end: the rest must be zeros.
    qemu_io(top.path, {"write -q -P 0x12 " + n(MiB + 1024) + " 100",
                       "write -q -P 0x13 " + n(2 * MiB + 5) + " 10"});
    verify_reads(top);
}

TEST_CASE("diff_read: compat=0.10 overlay: discard and zero writes over backing data",
          "[diff][read]") {
    TempDir dir;
    random_file(dir.file("base.raw"), 2 * MiB, 41);
    Image top{dir.file("top.qcow2"), 4096};
    qemu_create(top.path, 2 * MiB, "compat=0.10,cluster_size=4096", "base.raw", "raw");
    qemu_io(top.path, {"write -q -P 0x21 0 64k", "discard -q 8k 16k", "write -q -z 100k 10000",
                       "write -q -z -u 200k 64k", "write -q -c -P 0x22 512k 8k",
                       "write -q -P 0x23 516k 100"});
    verify_reads(top);
}

TEST_CASE("diff_read: compressed and zero clusters in an overlay over qcow2 backing",
          "[diff][read]") {
    bool ext = GENERATE(false, true);
    TempDir dir;
    auto base = patterned(dir, "cluster_size=65536", 65536, true, 51);
    Image top{dir.file("top.qcow2"), 65536};
    qemu_create(top.path, 4 * MiB, ext ? "extended_l2=on" : "", base.path, "qcow2");
    qemu_io(top.path,
            {"write -q -c -P 0x31 64k 64k", "write -q -z 200k 3000", "write -q -z -u 256k 128k",
             "discard -q 512k 128k", "write -q -P 0x32 " + n(14 * 65536 + 2048) + " 2048",
             "write -q -P 0x33 " + n(16 * 65536 + 33) + " 4000"});
    verify_reads(top);
}

TEST_CASE("diff_read: external data file with and without data_file_raw", "[diff][read]") {
    bool raw = GENERATE(false, true);
    TempDir dir;
    // Absolute: qemu 7.2 resolves a relative data_file against its working directory.
    std::string opts = "data_file=" + dir.file("data.bin") + ",cluster_size=4096";
    if (raw) opts += ",data_file_raw=on";
    auto img = patterned(dir, opts, 4096, false, 61);
    verify_reads(img);
}

TEST_CASE("diff_read: virtual size not a multiple of the cluster size", "[diff][read]") {
    TempDir dir;
    Image img{dir.file("odd.qcow2"), 65536};
    uint64_t size = 3 * MiB + 3 * 512;
    qemu_create(img.path, size, "");
    qemu_io(img.path, {"write -q -P 0x41 " + n(size - 70000) + " 70000",
                       "write -q -z " + n(size - 1000) + " 500"});
    verify_reads(img);
}
