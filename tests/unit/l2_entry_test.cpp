// decode_l2 and plan_subcluster against the qcow2 specification (docs/interop/qcow2.txt):
// every cluster kind, the compressed descriptor arithmetic for small, default and large
// clusters, extended L2 subcluster bitmaps, external data files, and every corruption.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>

#include "qcow2/l2_entry.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::qcow2;

constexpr uint64_t kCopied = 1ULL << 63;
constexpr uint64_t kCompressed = 1ULL << 62;

EntryFormat format(uint32_t bits, bool extended = false, bool v3 = true) {
    EntryFormat f;
    f.geo = Geometry{bits, extended};
    f.v3 = v3;
    return f;
}

EntryFormat data_file_format(bool raw, bool extended = false) {
    EntryFormat f = format(16, extended);
    f.data_file = true;
    f.data_file_raw = raw;
    return f;
}

ClusterInfo decode_ok(uint64_t entry, uint64_t bitmap, const EntryFormat& f, uint64_t c = 3) {
    auto r = decode_l2(entry, bitmap, f, ClusterIndex{c});
    INFO("entry 0x" << std::hex << entry << " bitmap 0x" << bitmap);
    if (!r) FAIL("decode failed: " << r.error().message);
    return *r;
}

/// Decoding must fail with EIO and name the guest offset of cluster `c`.
void require_corrupt(uint64_t entry, uint64_t bitmap, const EntryFormat& f, uint64_t c = 5) {
    auto r = decode_l2(entry, bitmap, f, ClusterIndex{c});
    INFO("entry 0x" << std::hex << entry << " bitmap 0x" << bitmap);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == EIO);
    char want[32];
    std::snprintf(want, sizeof want, "0x%llx",
                  static_cast<unsigned long long>(c << f.geo.cluster_bits));
    CHECK_THAT(r.error().message, Catch::Contains(want));
}

Plan plan(const ClusterInfo& ci, uint32_t sc, const EntryFormat& f, uint64_t start = 0x30000) {
    return plan_subcluster(ci, sc, f, GuestOffset{start});
}

uint64_t data_host(const Plan& p) {
    REQUIRE(std::holds_alternative<PlanData>(p));
    return std::get<PlanData>(p).host.value;
}

}  // namespace

TEST_CASE("decode_l2: unallocated entry", "[l2_entry]") {
    for (bool v3 : {false, true}) {
        const EntryFormat f = format(16, false, v3);
        ClusterInfo ci = decode_ok(0, 0, f);
        CHECK(ci.kind == ClusterKind::Unallocated);
        CHECK_FALSE(ci.has_host);
        CHECK_FALSE(ci.copied);
        CHECK(std::holds_alternative<PlanUnallocated>(plan(ci, 0, f)));
    }
    // COPIED without an offset (and without a data file) is still unallocated.
    const EntryFormat f = format(16);
    CHECK(decode_ok(kCopied, 0, f).kind == ClusterKind::Unallocated);
    CHECK_FALSE(decode_ok(kCopied, 0, f).has_host);
}

TEST_CASE("decode_l2: zero flag in a version 3 image", "[l2_entry]") {
    const EntryFormat f = format(16);
    SECTION("without a host cluster") {
        ClusterInfo ci = decode_ok(1, 0, f);
        CHECK(ci.kind == ClusterKind::Zero);
        CHECK_FALSE(ci.has_host);
        CHECK(std::holds_alternative<PlanZero>(plan(ci, 0, f)));
    }
    SECTION("with a preallocated host cluster") {
        ClusterInfo ci = decode_ok(0x50000 | kCopied | 1, 0, f);
        CHECK(ci.kind == ClusterKind::Zero);
        CHECK(ci.has_host);
        CHECK(ci.copied);
        CHECK(ci.host.value == 0x50000);
        CHECK(std::holds_alternative<PlanZero>(plan(ci, 0, f)));
    }
    SECTION("preallocated, shared (no COPIED)") {
        ClusterInfo ci = decode_ok(0x70000 | 1, 0, f);
        CHECK(ci.kind == ClusterKind::Zero);
        CHECK(ci.has_host);
        CHECK_FALSE(ci.copied);
    }
    SECTION("preallocated but unaligned") {
        require_corrupt(0x50200 | 1, 0, f);
    }
}

TEST_CASE("decode_l2: zero flag in a version 2 image is corrupt", "[l2_entry]") {
    const EntryFormat v2 = format(16, false, false);
    require_corrupt(1, 0, v2);
    require_corrupt(0x50000 | kCopied | 1, 0, v2);
}

TEST_CASE("decode_l2: normal clusters", "[l2_entry]") {
    const auto v3 = GENERATE(false, true);
    const EntryFormat f = format(16, false, v3);
    SECTION("with COPIED") {
        ClusterInfo ci = decode_ok(0x12340000 | kCopied, 0, f);
        CHECK(ci.kind == ClusterKind::Normal);
        CHECK(ci.has_host);
        CHECK(ci.copied);
        CHECK(ci.host.value == 0x12340000);
        CHECK(data_host(plan(ci, 0, f)) == 0x12340000);
    }
    SECTION("without COPIED") {
        ClusterInfo ci = decode_ok(0x12340000, 0, f);
        CHECK(ci.kind == ClusterKind::Normal);
        CHECK_FALSE(ci.copied);
        CHECK(data_host(plan(ci, 0, f)) == 0x12340000);
    }
    SECTION("highest offset the mask allows") {
        const uint64_t host = 0x00ffffffffff0000ULL;
        ClusterInfo ci = decode_ok(host | kCopied, 0, f);
        CHECK(ci.host.value == host);
    }
    SECTION("encode_normal round-trips") {
        ClusterInfo ci = decode_ok(encode_normal(HostOffset{0xa0000}), 0, f);
        CHECK(ci.kind == ClusterKind::Normal);
        CHECK(ci.copied);
        CHECK(ci.host.value == 0xa0000);
    }
}

TEST_CASE("decode_l2: unaligned host offsets are corrupt", "[l2_entry]") {
    require_corrupt(0x10200 | kCopied, 0, format(16));
    require_corrupt(0x10200, 0, format(16));
    require_corrupt(0x1f0000 | kCopied, 0, format(21));
    require_corrupt(0x10200 | kCopied, 0x1, format(16, true));
    // The same offset is aligned for 512-byte clusters.
    CHECK(decode_ok(0x10200 | kCopied, 0, format(9)).host.value == 0x10200);
}

TEST_CASE("decode_l2: reserved bits are corrupt", "[l2_entry]") {
    for (uint32_t bit = 1; bit < 62; ++bit) {
        if (!(kL2Reserved >> bit & 1)) continue;
        INFO("bit " << bit);
        require_corrupt((1ULL << bit), 0, format(16));
        require_corrupt(0x20000 | kCopied | (1ULL << bit), 0, format(16));
        require_corrupt(0x20000 | kCopied | (1ULL << bit), 1, format(16, true));
    }
    // Bits 1-8 and 56-61: exactly 14 reserved bits.
    CHECK(__builtin_popcountll(kL2Reserved) == 14);
}

namespace {

/// A compressed descriptor: x = 62 - (cluster_bits - 8) offset bits, then the sector count - 1.
uint64_t compressed(uint32_t bits, uint64_t host, uint64_t extra_sectors) {
    const uint32_t x = 62 - (bits - 8);
    return kCompressed | (extra_sectors << x) | host;
}

void check_compressed(uint32_t bits, uint64_t host, uint64_t extra_sectors) {
    const EntryFormat f = format(bits);
    INFO("cluster_bits " << bits << " host 0x" << std::hex << host << " extra sectors " << std::dec
                         << extra_sectors);
    ClusterInfo ci = decode_ok(compressed(bits, host, extra_sectors), 0, f);
    CHECK(ci.kind == ClusterKind::Compressed);
    CHECK(ci.host.value == host);
    CHECK(ci.compressed_len == (extra_sectors + 1) * 512 - (host & 511));
    CHECK_FALSE(ci.copied);
    Plan p = plan(ci, 0, f);
    REQUIRE(std::holds_alternative<PlanCompressed>(p));
    CHECK(std::get<PlanCompressed>(p).host.value == host);
    CHECK(std::get<PlanCompressed>(p).length == ci.compressed_len);
}

}  // namespace

TEST_CASE("decode_l2: compressed descriptors", "[l2_entry]") {
    SECTION("512-byte clusters: 61 offset bits, 1 sector-count bit") {
        check_compressed(9, 0x1234567, 0);
        check_compressed(9, 0x1234567, 1);
        check_compressed(9, 0x00ffffffffffffffULL, 1);
        check_compressed(9, 0x200, 1);
    }
    SECTION("64 KiB clusters: 54 offset bits, 8 sector-count bits") {
        check_compressed(16, 0x50123, 0);
        check_compressed(16, 0x50123, 127);
        check_compressed(16, 0x50000, 255);  // 256 sectors: two clusters' worth, the maximum
        check_compressed(16, (1ULL << 54) - 1, 255);
        check_compressed(16, 0x501ff, 3);  // 511 bytes into its sector: 4*512-511 bytes
    }
    SECTION("2 MiB clusters: 49 offset bits, 13 sector-count bits") {
        check_compressed(21, 0x12345678, 0);
        check_compressed(21, 0x12345678, 8191);
        check_compressed(21, (1ULL << 49) - 1, 4096);
    }
    SECTION("the sector count never leaks into the offset") {
        const ClusterInfo ci = decode_ok(compressed(16, 0x10000, 0xff), 0, format(16));
        CHECK(ci.host.value == 0x10000);
        CHECK(ci.compressed_len == 256 * 512);
    }
}

TEST_CASE("decode_l2: corrupt compressed descriptors", "[l2_entry]") {
    // COPIED must be clear on compressed clusters.
    require_corrupt(compressed(16, 0x50000, 3) | kCopied, 0, format(16));
    // 512-byte clusters have room for offsets past 2^56, which the format forbids.
    require_corrupt(compressed(9, 1ULL << 56, 0), 0, format(9));
    require_corrupt(compressed(9, 1ULL << 60, 1), 0, format(9));
    // Compression is not allowed with an external data file.
    require_corrupt(compressed(16, 0x50000, 3), 0, data_file_format(false));
    // Extended L2: the bitmap of a compressed cluster must be zero.
    require_corrupt(compressed(16, 0x50000, 3), 1, format(16, true));
    require_corrupt(compressed(16, 0x50000, 3), 1ULL << 40, format(16, true));
    ClusterInfo ci = decode_ok(compressed(16, 0x50000, 3), 0, format(16, true));
    CHECK(ci.kind == ClusterKind::Compressed);
    for (uint32_t sc : {0u, 17u, 31u})
        CHECK(std::holds_alternative<PlanCompressed>(plan(ci, sc, format(16, true))));
}

TEST_CASE("decode_l2: extended L2 subcluster bitmaps", "[l2_entry]") {
    const EntryFormat f = format(16, true);
    const uint64_t sc = f.geo.subcluster_size();
    REQUIRE(sc == 2048);
    SECTION("allocated, zero and unallocated subclusters of one cluster") {
        const uint64_t alloc = 0x80000005;  // subclusters 0, 2, 31
        const uint64_t zero = 0x00000002;   // subcluster 1
        ClusterInfo ci = decode_ok(0x60000 | kCopied, zero << 32 | alloc, f);
        CHECK(ci.kind == ClusterKind::Normal);
        CHECK(ci.copied);
        CHECK(ci.alloc_mask == alloc);
        CHECK(ci.zero_mask == zero);
        CHECK(data_host(plan(ci, 0, f)) == 0x60000);
        CHECK(data_host(plan(ci, 2, f)) == 0x60000 + 2 * sc);
        CHECK(data_host(plan(ci, 31, f)) == 0x60000 + 31 * sc);
        CHECK(std::holds_alternative<PlanZero>(plan(ci, 1, f)));
        for (uint32_t s : {3u, 4u, 30u})
            CHECK(std::holds_alternative<PlanUnallocated>(plan(ci, s, f)));
    }
    SECTION("host cluster with no subcluster allocated yet") {
        ClusterInfo ci = decode_ok(0x60000 | kCopied, 0, f);
        CHECK(ci.kind == ClusterKind::Normal);
        CHECK(std::holds_alternative<PlanUnallocated>(plan(ci, 0, f)));
    }
    SECTION("no host cluster: zero bits only") {
        ClusterInfo ci = decode_ok(0, 0xffff0000ULL << 32, f);
        CHECK(ci.kind == ClusterKind::Unallocated);
        CHECK_FALSE(ci.has_host);
        CHECK(std::holds_alternative<PlanUnallocated>(plan(ci, 15, f)));
        CHECK(std::holds_alternative<PlanZero>(plan(ci, 16, f)));
        CHECK(std::holds_alternative<PlanZero>(plan(ci, 31, f)));
    }
    SECTION("a subcluster both allocated and zero is corrupt") {
        require_corrupt(0x60000 | kCopied, (1ULL << 32 | 1), f);
        require_corrupt(0x60000 | kCopied, (0x80000000ULL << 32 | 0x80000000ULL), f);
    }
    SECTION("allocated subclusters without a host cluster are corrupt") {
        require_corrupt(0, 1, f);
        require_corrupt(kCopied, 0x100, f);
    }
    SECTION("bit 0 (the standard zero flag) is corrupt with extended L2") {
        require_corrupt(1, 0, f);
        require_corrupt(0x60000 | kCopied | 1, 1, f);
    }
}

TEST_CASE("decode_l2: external data file", "[l2_entry]") {
    SECTION("host offset 0 with COPIED is an allocated cluster") {
        const EntryFormat f = data_file_format(false);
        ClusterInfo ci = decode_ok(kCopied, 0, f);
        CHECK(ci.kind == ClusterKind::Normal);
        CHECK(ci.has_host);
        CHECK(ci.host.value == 0);
        CHECK(data_host(plan(ci, 0, f)) == 0);
    }
    SECTION("host offset 0 without COPIED is unallocated") {
        const EntryFormat f = data_file_format(false);
        ClusterInfo ci = decode_ok(0, 0, f);
        CHECK(ci.kind == ClusterKind::Unallocated);
        CHECK(std::holds_alternative<PlanUnallocated>(plan(ci, 0, f)));
    }
    SECTION("extended L2, host offset 0 with COPIED may have allocated subclusters") {
        const EntryFormat f = data_file_format(false, true);
        ClusterInfo ci = decode_ok(kCopied, 0x3, f);
        CHECK(ci.kind == ClusterKind::Normal);
        CHECK(data_host(plan(ci, 1, f)) == 2048);
    }
    SECTION("data_file_raw: unallocated clusters are data at the guest offset") {
        const EntryFormat f = data_file_format(true);
        ClusterInfo ci = decode_ok(0, 0, f);
        CHECK(ci.kind == ClusterKind::Unallocated);
        CHECK(data_host(plan(ci, 0, f, 0x30000)) == 0x30000);
        CHECK(data_host(plan(ci, 0, f, 0x7770000)) == 0x7770000);
        // A zero flag still reads as zeros.
        CHECK(std::holds_alternative<PlanZero>(plan(decode_ok(1, 0, f), 0, f)));
    }
    SECTION("data_file_raw with extended L2: unallocated subclusters at the guest offset") {
        const EntryFormat f = data_file_format(true, true);
        ClusterInfo ci = decode_ok(0, 2ULL << 32, f);
        CHECK(data_host(plan(ci, 0, f, 0x40000)) == 0x40000);
        CHECK(std::holds_alternative<PlanZero>(plan(ci, 1, f, 0x40000)));
        CHECK(data_host(plan(ci, 5, f, 0x40000)) == 0x40000 + 5 * 2048);
    }
}

TEST_CASE("plan_subcluster without extended L2 covers the whole cluster", "[l2_entry]") {
    const EntryFormat f = format(16);
    ClusterInfo normal = decode_ok(0x90000 | kCopied, 0, f);
    CHECK(data_host(plan(normal, 0, f, 0)) == 0x90000);
    CHECK(data_host(plan(normal, 0, f, 0x123450000)) == 0x90000);
    ClusterInfo zero = decode_ok(0x90000 | kCopied | 1, 0, f);
    CHECK(std::holds_alternative<PlanZero>(plan(zero, 0, f)));
    ClusterInfo none = decode_ok(0, 0, f);
    CHECK(std::holds_alternative<PlanUnallocated>(plan(none, 0, f)));
}
