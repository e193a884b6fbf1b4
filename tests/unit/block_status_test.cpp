// Differential block-status tests: Disk::block_status over whole disks and random windows,
// compared with `qemu-img map --output=json` for chains with allocated, zero, unallocated and
// backing regions, extended L2 subclusters and compressed clusters.
//
// qemu-img map's depth 0 is the top layer and "present" says whether any layer has the
// range; qnbd's Extent::depth is 1 for the top layer and 0 for "no layer". qemu_map() maps
// qemu's runs accordingly and both sides are compared after merging adjacent equal runs.
#include <catch2/catch.hpp>

#include <sstream>

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

/// The engine's map of [off, off+len): block_status called until the range is covered
/// (it may stop early), with the per-call contract checked, merged like qemu_map().
awaitable<std::vector<MapRun>> engine_map(Disk& disk, uint64_t off, uint64_t len) {
    std::vector<MapRun> runs;
    uint64_t pos = off;
    while (pos < off + len) {
        auto r = co_await disk.block_status(GuestOffset{pos}, off + len - pos);
        require_ok(r,
                   "block_status " + std::to_string(pos) + "+" + std::to_string(off + len - pos));
        INFO("block_status at " << pos << " for " << off + len - pos);
        REQUIRE(!r->empty());
        for (const Extent& e : *r) {
            REQUIRE(e.length > 0);
            REQUIRE(e.length <= off + len - pos);
            runs.push_back(MapRun{pos, e.length, e.depth, e.zero, e.data});
            pos += e.length;
        }
    }
    co_return merge_runs(runs);
}

/// qemu's runs restricted to [off, off+len), merged.
std::vector<MapRun> clip(const std::vector<MapRun>& runs, uint64_t off, uint64_t len) {
    std::vector<MapRun> out;
    for (MapRun r : runs) {
        uint64_t b = std::max(r.start, off), e = std::min(r.start + r.length, off + len);
        if (b >= e) continue;
        r.start = b;
        r.length = e - b;
        out.push_back(r);
    }
    return merge_runs(out);
}

std::string describe(const std::vector<MapRun>& runs) {
    std::ostringstream os;
    for (const auto& r : runs) os << "  " << r << "\n";
    return os.str();
}

void require_same_map(const std::vector<MapRun>& got, const std::vector<MapRun>& want,
                      const std::string& what) {
    if (got == want) return;
    size_t i = 0;
    while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
    INFO(what << ": first difference at run " << i << "\nengine:\n"
              << describe(got) << "qemu-img map:\n"
              << describe(want));
    REQUIRE(false);
}

/// Compares the engine's block status with qemu-img map over the whole disk and over 40
/// random windows (odd offsets, cross-cluster lengths).
void verify_map(const std::string& path, uint64_t cluster, uint64_t seed = 3) {
    INFO("image " << path);
    require_qemu_check_clean(path);  // qemu's own image must be sane to be an oracle
    const auto want = qemu_map(path);
    REQUIRE(!want.empty());
    std::mt19937_64 rng(seed);
    with_disk(path, true, [&](Disk& disk) -> awaitable<void> {
        const uint64_t size = disk.size();
        require_same_map(co_await engine_map(disk, 0, size), want, "whole disk");
        for (int i = 0; i < 40; ++i) {
            uint64_t off = rng() % size;
            if (i % 3 == 0) off = off / cluster * cluster;
            uint64_t len = 1 + rng() % std::min<uint64_t>(size - off, 5 * cluster);
            INFO("window " << off << "+" << len);
            require_same_map(co_await engine_map(disk, off, len), clip(want, off, len), "window");
        }
    });
}

/// A raw base fully written with data (no file holes, which qemu reports as zero).
std::string raw_base(const TempDir& dir, uint64_t size, uint64_t seed) {
    std::string path = dir.file("base.raw");
    random_file(path, size, seed);
    return path;
}

}  // namespace

TEST_CASE("block_status: every L2 entry kind in one image", "[block_status]") {
    std::string opts = GENERATE("cluster_size=512", "cluster_size=65536", "compat=0.10",
                                "cluster_size=4096,refcount_bits=1", "compression_type=zstd");
    uint64_t c = opts.find("512") != std::string::npos    ? 512
                 : opts.find("4096") != std::string::npos ? 4096
                                                          : 65536;
    TempDir dir;
    auto img = patterned(dir, opts, c);
    verify_map(img.path, c);
}

TEST_CASE("block_status: extended L2 subclusters", "[block_status]") {
    uint64_t c = GENERATE(65536, 2 * MiB);
    TempDir dir;
    auto img = patterned(dir, "extended_l2=on,cluster_size=" + n(c), c);
    // Subcluster-granular state inside one cluster: data, zero, unallocated, data.
    uint64_t s = c / 32, k = 22 * c;
    qemu_io(img.path,
            {"write -q -P 1 " + n(k) + " " + n(s), "write -q -z " + n(k + 2 * s) + " " + n(3 * s),
             "write -q -P 2 " + n(k + 9 * s + 1) + " 5",
             "write -q -z -u " + n(k + 31 * s) + " " + n(s)});
    verify_map(img.path, c);
}

TEST_CASE("block_status: backing chain qcow2 > qcow2 > raw", "[block_status]") {
    bool ext = GENERATE(false, true);
    TempDir dir;
    raw_base(dir, 2 * MiB + 4096, 71);
    qemu_create(dir.file("mid.qcow2"), 3 * MiB, "cluster_size=4096", "base.raw", "raw");
    std::mt19937_64 rng(72);
    random_file(dir.file("pat.bin"), 7919, 73);
    qemu_io(dir.file("mid.qcow2"),
            scattered_cmds(rng, 0, 3 * MiB, 40, 4096, dir.file("pat.bin"), true));
    std::string top = dir.file("top.qcow2");
    qemu_create(top, 4 * MiB, ext ? "extended_l2=on" : "cluster_size=65536", "mid.qcow2", "qcow2");
    qemu_io(top, {"write -q -P 3 0 100k", "write -q -z 128k 64k", "write -q -z -u 256k 70k",
                  "discard -q 512k 128k", "write -q -c -P 4 1M 64k",
                  "write -q -P 5 " + n(2 * MiB + 1000) + " 3000",
                  "write -q -z " + n(3 * MiB - 2048) + " 4096"});
    qemu_io(top, scattered_cmds(rng, 0, 4 * MiB, 30, 65536, dir.file("pat.bin"), false));
    verify_map(top, 65536);
}

TEST_CASE("block_status: overlay larger than its backing (past the backing's end)",
          "[block_status]") {
    TempDir dir;
    raw_base(dir, MiB, 81);
    std::string top = dir.file("top.qcow2");
    qemu_create(top, 3 * MiB, "cluster_size=4096", "base.raw", "raw");
    qemu_io(top,
            {"write -q -P 6 " + n(MiB - 2048) + " 4096", "write -q -z " + n(2 * MiB) + " 8192"});
    verify_map(top, 4096);
}

TEST_CASE("block_status: compressed clusters from qemu-img convert -c", "[block_status]") {
    std::string type = GENERATE("zlib", "zstd");
    TempDir dir;
    std::mt19937_64 rng(91);
    Bytes raw;
    for (int i = 0; i < 30; ++i) {
        auto part = random_bytes(rng, 1 + rng() % 200000, i % 2 == 0);
        if (i % 3 == 2) std::fill(part.begin(), part.end(), std::byte{0});
        raw.insert(raw.end(), part.begin(), part.end());
    }
    raw.resize((raw.size() + 511) / 512 * 512);
    write_file(dir.file("src.raw"), raw);
    std::string img = dir.file("c.qcow2");
    run_ok("qemu-img convert -c -f raw -O qcow2 -o compression_type=" + type + " " +
           shq(dir.file("src.raw")) + " " + shq(img));
    REQUIRE(qemu_check(img).compressed_clusters > 0);
    verify_map(img, 65536);
}

TEST_CASE("block_status: external data file", "[block_status]") {
    bool raw = GENERATE(false, true);
    TempDir dir;
    auto img = patterned(
        dir,
        "cluster_size=4096,data_file=" + dir.file("data.bin") + (raw ? ",data_file_raw=on" : ""),
        4096, false);
    verify_map(img.path, 4096);
}

TEST_CASE("block_status: fresh empty image is one unallocated zero run", "[block_status]") {
    TempDir dir;
    std::string img = dir.file("empty.qcow2");
    qemu_create(img, 64 * MiB, "");
    with_disk(img, true, [&](Disk& disk) -> awaitable<void> {
        auto got = co_await engine_map(disk, 0, disk.size());
        require_same_map(got, {MapRun{0, 64 * MiB, 0, true, false}}, "empty image");
    });
}
