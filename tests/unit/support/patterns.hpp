// Images for the differential tests: qemu-io command lists that place every kind of L2 entry
// around cluster and subcluster boundaries, and images made and filled with them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/unit/support/files.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/random.hpp"
#include "tests/unit/support/units.hpp"

namespace qnbd::test {

/// Seeded scattered operations over [from, to): data (random pattern file or fixed byte),
/// zero writes with and without unmap, discards and (when allowed) compressed clusters.
inline std::vector<std::string> scattered_cmds(std::mt19937_64& rng, uint64_t from, uint64_t to,
                                               int count, uint64_t cluster, const std::string& pat,
                                               bool compress) {
    std::vector<std::string> cmds;
    std::set<uint64_t> touched;  // qemu writes compressed clusters only where none is allocated
    // qemu 7.2 marks 512-byte-cluster images corrupt after a compressed write, a partial
    // write and a compressed write needing a new L2 table; keep compression to >= 4K there.
    compress = compress && cluster >= 4096;
    for (int i = 0; i < count; ++i) {
        uint64_t off = from + rng() % (to - from);
        uint64_t len = 1 + rng() % std::min<uint64_t>(3 * cluster, to - off);
        uint64_t c0 = off / cluster * cluster;
        switch (rng() % 6) {
            case 0:
                cmds.push_back("write -q -P " + n(1 + rng() % 255) + " " + n(off) + " " + n(len));
                break;
            case 1:
                cmds.push_back("write -q -z " + n(off) + " " + n(len));
                break;
            case 2:
                cmds.push_back("write -q -z -u " + n(off) + " " + n(len));
                break;
            case 3:
                cmds.push_back("discard -q " + n(off) + " " + n(len));
                break;
            default:
                if (compress && c0 + cluster <= to && !touched.count(c0 / cluster)) {
                    cmds.push_back("write -q -c -P " + n(rng() % 256) + " " + n(c0) + " " +
                                   n(cluster));
                    touched.insert(c0 / cluster);
                    if (rng() % 2) continue;  // leave it whole; else overwrite part of it
                }
                cmds.push_back("write -q -s " + pat + " " + n(off) + " " + n(len));
        }
        for (uint64_t k = off / cluster; k <= (off + len - 1) / cluster; ++k) touched.insert(k);
    }
    return cmds;
}

/// qemu-io commands placing every kind of L2 entry around cluster and subcluster boundaries
/// in clusters 0..20, then seeded scattered operations over the rest of the disk.
inline std::vector<std::string> pattern_cmds(const TempDir& dir, uint64_t c, uint64_t size,
                                             bool compress, uint64_t seed) {
    std::string pat = dir.file("pat.bin"), cpat = dir.file("cpat.bin");
    random_file(pat, 7919, seed);
    random_file(cpat, c, seed + 1, true);
    uint64_t s = c / 32;  // subcluster size with extended L2
    std::vector<std::string> cmds = {
        "write -q -P 0x11 0 " + n(c / 2),
        "write -q -s " + pat + " " + n(c - 100) + " " + n(c + 300),
        "write -q -P 0x22 " + n(3 * c + 7) + " " + n(s + 1),
        "write -q -P 0x23 " + n(3 * c + 5 * s - 3) + " " + n(2 * s + 5),
        "write -q -s " + pat + " " + n(4 * c) + " " + n(3 * c),
        "write -q -z " + n(5 * c - s) + " " + n(c + 2 * s),
        "write -q -z " + n(7 * c + s) + " " + n(s),
        "write -q -s " + pat + " " + n(8 * c) + " " + n(2 * c),
        "write -q -z -u " + n(8 * c) + " " + n(2 * c),
        "write -q -s " + pat + " " + n(10 * c) + " " + n(3 * c),
        "discard -q " + n(11 * c) + " " + n(c),
        "write -q -z -u " + n(13 * c) + " " + n(c),
        "write -q -s " + pat + " " + n(19 * c + 1) + " " + n(2 * c - 2),
    };
    if (compress) {
        for (auto cmd : {"write -q -c -s " + cpat + " " + n(14 * c) + " " + n(c),
                         "write -q -c -P 0x44 " + n(15 * c) + " " + n(c),
                         "write -q -c -s " + cpat + " " + n(16 * c) + " " + n(c),
                         "write -q -P 0x55 " + n(16 * c + 100) + " 200",
                         "write -q -c -P 0x66 " + n(17 * c) + " " + n(c),
                         "write -q -z " + n(17 * c + s) + " " + n(s),
                         "write -q -c -s " + cpat + " " + n(18 * c) + " " + n(c),
                         "discard -q " + n(18 * c) + " " + n(c)})
            cmds.push_back(cmd);
    }
    std::mt19937_64 rng(seed);
    for (auto& cmd : scattered_cmds(rng, 21 * c, size - c - 700, 24, c, pat, compress))
        cmds.push_back(cmd);
    cmds.push_back("write -q -s " + pat + " " + n(size - c - 700) + " " + n(c + 700));
    return cmds;
}

/// One image under test: its top file and the cluster size used for boundary reads.
struct Image {
    std::string path;
    uint64_t cluster = 65536;
};

/// A fresh qcow2 image with options `opts` and cluster size `c`, filled by pattern_cmds.
inline Image patterned(const TempDir& dir, const std::string& opts, uint64_t c,
                       bool compress = true, uint64_t seed = 1) {
    uint64_t size = std::max<uint64_t>(4 * MiB, 24 * c);
    Image img{dir.file("img.qcow2"), c};
    qemu_create(img.path, size, opts);
    qemu_io(img.path, pattern_cmds(dir, c, size, compress, seed));
    return img;
}

}  // namespace qnbd::test
