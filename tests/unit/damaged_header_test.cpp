// Every validation rule of parse_header and parse_snapshots: start from a qemu-img image,
// damage one field, and check that the error names the problem and that the file is unchanged.
#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "base/buffer.hpp"
#include "qcow2/header.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/shell.hpp"
#include "tests/unit/support/units.hpp"

using namespace qnbd;
using namespace qnbd::qcow2;
using Catch::Contains;
using namespace qnbd::test;

namespace {

// Offsets of the fixed header fields.
constexpr uint64_t kVersion = 4, kBackingOffset = 8, kBackingSize = 16, kClusterBits = 20,
                   kSize = 24, kCrypt = 32, kL1Size = 36, kL1Offset = 40, kRtOffset = 48,
                   kRtClusters = 56, kNbSnapshots = 60, kSnapOffset = 64, kIncompat = 72,
                   kAutoclear = 88, kRefcountOrder = 96, kHeaderLength = 100,
                   kCompressionType = 104;

/// A qemu-img image in its own directory (with options `opts`, over a raw 1 MiB backing file
/// base.raw if `backing`), and small writers to damage it.
class Image {
  public:
    explicit Image(const std::string& opts, bool backing = false, uint64_t size = GiB) {
        set_file_size(dir_.file("base.raw"), MiB);
        qemu_create(path(), size, opts, backing ? "base.raw" : "", backing ? "raw" : "");
    }
    std::string path() const { return dir_.file("a.qcow2"); }
    void put(uint64_t off, const std::vector<std::byte>& bytes) {
        std::fstream f(path(), std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(off));
        f.write(reinterpret_cast<const char*>(bytes.data()),
                static_cast<std::streamsize>(bytes.size()));
        REQUIRE(f.good());
    }
    void put8(uint64_t off, uint8_t v) { put(off, {std::byte{v}}); }
    void put16(uint64_t off, uint16_t v) { put(off, be(v, 2)); }
    void put32(uint64_t off, uint32_t v) { put(off, be(v, 4)); }
    void put64(uint64_t off, uint64_t v) { put(off, be(v, 8)); }
    void put_str(uint64_t off, const std::string& s) {
        put(off, std::vector<std::byte>(reinterpret_cast<const std::byte*>(s.data()),
                                        reinterpret_cast<const std::byte*>(s.data()) + s.size()));
    }
    void resize(uint64_t size) { set_file_size(path(), size); }
    void qemu(const std::string& cmd) { REQUIRE(sh(cmd + " >/dev/null") == 0); }
    std::vector<std::byte> bytes() const { return read_file(path()); }
    /// File offset of the first extension of `type` (walking the extension list).
    uint64_t ext(uint32_t type) const {
        const auto b = bytes();
        uint64_t off = load_be32(b.data() + kVersion) == 2 ? 72 : load_be32(b.data() + 100);
        while (load_be32(b.data() + off) != type) {
            REQUIRE(load_be32(b.data() + off) != kExtEnd);
            off += 8 + ((load_be32(b.data() + off + 4) + 7) & ~7u);
        }
        return off;
    }

  private:
    static std::vector<std::byte> be(uint64_t v, int n) {
        std::vector<std::byte> out(n);
        for (int i = 0; i < n; ++i) out[i] = std::byte(v >> (8 * (n - 1 - i)));
        return out;
    }
    TempDir dir_;
};

/// parse_header must fail with EINVAL and a message containing `what`; the file is untouched.
std::string expect_error(const Image& img, const std::string& what) {
    const std::string sum_before = sh_output("cksum < " + img.path());
    const auto bytes = img.bytes();
    auto r = parse_header(bytes, bytes.size());
    CHECK(sh_output("cksum < " + img.path()) == sum_before);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == EINVAL);
    REQUIRE_THAT(r.error().message, Contains(what));
    CHECK(r.error().message.find('\n') == std::string::npos);
    return r.error().message;
}

void expect_ok(const Image& img) {
    const auto bytes = img.bytes();
    auto r = parse_header(bytes, bytes.size());
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
}

/// parse_snapshots on the image's own snapshot table must fail naming `what`.
void expect_snapshot_error(const Image& img, const std::string& what) {
    const std::string sum_before = sh_output("cksum < " + img.path());
    const auto bytes = img.bytes();
    auto h = parse_header(bytes, bytes.size());
    INFO((h ? "" : h.error().message));
    REQUIRE(h);
    const auto table = std::span(bytes).subspan(h->snapshots_offset.value);
    auto r = parse_snapshots(table, h->nb_snapshots, *h, bytes.size());
    CHECK(sh_output("cksum < " + img.path()) == sum_before);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == EINVAL);
    REQUIRE_THAT(r.error().message, Contains(what));
}

/// One write into the fixed header: offset, width in bytes (1, 4 or 8) and value.
struct Put {
    uint64_t offset;
    int width;
    uint64_t value;
};

/// A damaged image: qemu-img options, file size to set first (0: keep), writes, expected error.
struct Damage {
    const char* opts;
    uint64_t resize;
    std::vector<Put> puts;
    const char* error;
};

// clang-format off
const std::vector<Damage> kFieldDamages = {
    {"", 0, {{0, 4, 0x514649fa}}, "bad magic 0x514649fa"},
    {"", 0, {{kVersion, 4, 1}}, "unsupported qcow2 version 1"},
    {"", 0, {{kVersion, 4, 4}}, "unsupported qcow2 version 4"},
    {"", 0, {{kClusterBits, 4, 8}}, "cluster_bits 8 is out of range"},
    {"", 0, {{kClusterBits, 4, 22}}, "cluster_bits 22 is out of range"},
    {"", 0, {{kHeaderLength, 4, 96}}, "header_length 96 is too short"},
    {"", 0, {{kHeaderLength, 4, 108}}, "header_length 108 is not a multiple of 8"},
    {"", 0, {{kHeaderLength, 4, 65544}}, "header_length 65544 exceeds the cluster size 65536"},
    {"cluster_size=512", 0, {{kHeaderLength, 4, 1024}},
     "header_length 1024 exceeds the cluster size 512"},
    {"", 50, {}, "too short for a qcow2 header"},
    {"", 90, {}, "version 3 header is truncated"},
    {"", 4096, {}, "smaller than its first cluster"},
    // Feature fields.
    {"", 0, {{kCrypt, 4, 1}}, "encrypted images are not supported (crypt_method 1)"},
    {"", 0, {{kCrypt, 4, 2}}, "encrypted images are not supported (crypt_method 2)"},
    {"", 0, {{kRefcountOrder, 4, 7}}, "refcount_order 7 is too large"},
    {"", 0, {{kCompressionType, 1, 1}}, "compression type bit is not set"},
    {"", 0, {{kIncompat, 8, kIncompatCompression}},
     "compression type bit is set but compression_type is 0"},
    {"compression_type=zstd", 0, {{kCompressionType, 1, 2}}, "unknown compression_type 2"},
    {"compression_type=zstd", 0, {{kIncompat, 8, 0}},
     "compression_type is 1 (zstd) but the compression type bit is not set"},
    {"cluster_size=4k", 0, {{kHeaderLength, 4, 104}, {kIncompat, 8, kIncompatCompression}},
     "compression type bit is set but compression_type is 0"},
    {"cluster_size=8k", 0, {{kIncompat, 8, kIncompatExtendedL2}},
     "extended L2 entries need cluster_bits >= 14 (cluster_bits is 13)"},
    {"", 0, {{kAutoclear, 8, kAutoclearRawData}},
     "raw external data bit is set but the external data file bit is not"},
    {"", 0, {{kAutoclear, 8, kAutoclearBitmaps}},
     "bitmaps autoclear bit is set but the image has no bitmaps extension"},
    // Virtual size and L1 table.
    {"", 0, {{kSize, 8, uint64_t{1} << 63}}, "virtual size 9223372036854775808 is too large"},
    {"", 0, {{kSize, 8, uint64_t{1} << 40}},
     "L1 table of 2 entries is too small for virtual size 1099511627776"},
    {"", 0, {{kL1Size, 4, 1}}, "L1 table of 1 entries is too small"},
    {"", 0, {{kL1Size, 4, (32u << 20) / 8 + 1}}, "L1 table of 4194305 entries is too large"},
    {"", 0, {{kL1Offset, 8, 0x30200}}, "L1 table offset 0x30200 is not cluster-aligned"},
    {"", 0, {{kL1Offset, 8, 0x100000}},
     "L1 table at 0x100000 (16 bytes) extends past the end of the file"},
    {"", 0, {{kL1Offset, 8, 0xffffffffffff0000}}, "extends past the end of the file"},
    {"", 0, {{kL1Offset, 8, 0}}, "L1 table at 0x0 overlaps the header cluster"},
    {"", 0, {{kL1Offset, 8, 0x10000}}, "overlaps the refcount table"},
    {"", 0, {{kSize, 8, 0}, {kL1Size, 4, 0}, {kL1Offset, 8, 0x123}},
     "L1 table offset 0x123 is not cluster-aligned"},
    // Refcount table.
    {"", 0, {{kRtClusters, 4, 0}}, "refcount_table_clusters is 0"},
    {"", 0, {{kRtClusters, 4, 129}}, "refcount table of 129 clusters is too large"},
    {"", 0, {{kRtOffset, 8, 0x10008}}, "refcount table offset 0x10008 is not cluster-aligned"},
    {"", 0, {{kRtClusters, 4, 4}},
     "refcount table at 0x10000 (262144 bytes) extends past the end"},
    {"", 0, {{kRtOffset, 8, 0}}, "refcount table at 0x0 overlaps the header cluster"},
    {"", MiB, {{kRtClusters, 4, 3}},
     "L1 table at 0x30000 overlaps the refcount table at 0x10000"},
    // Snapshot table.
    {"", MiB, {{kNbSnapshots, 4, 65537}, {kSnapOffset, 8, 0x40000}},
     "nb_snapshots 65537 is too large"},
    {"", MiB, {{kSnapOffset, 8, 0x40008}},
     "snapshot table offset 0x40008 is not cluster-aligned"},
    {"", MiB, {{kNbSnapshots, 4, 1}, {kSnapOffset, 8, 0x40008}},
     "snapshot table offset 0x40008 is not cluster-aligned"},
    {"", MiB, {{kNbSnapshots, 4, 1}, {kSnapOffset, 8, 0x100000}},
     "snapshot table at 0x100000 (40 bytes) extends past the end of the file"},
    {"", MiB, {{kNbSnapshots, 4, 1}, {kSnapOffset, 8, 0}}, "overlaps the header cluster"},
    {"", MiB, {{kNbSnapshots, 4, 1}, {kSnapOffset, 8, 0x30000}}, "overlaps the L1 table"},
};
// clang-format on

}  // namespace

TEST_CASE("damaged: fixed header fields", "[header][damaged]") {
    for (const Damage& d : kFieldDamages) {
        DYNAMIC_SECTION(d.error << " (" << d.opts << ")") {
            Image img(d.opts);
            expect_ok(img);
            if (d.resize) img.resize(d.resize);
            for (const Put& p : d.puts) {
                if (p.width == 1) img.put8(p.offset, static_cast<uint8_t>(p.value));
                if (p.width == 4) img.put32(p.offset, static_cast<uint32_t>(p.value));
                if (p.width == 8) img.put64(p.offset, p.value);
            }
            expect_error(img, d.error);
        }
    }
}

TEST_CASE("damaged: the caller must pass the whole first cluster", "[header][damaged]") {
    Image img("");
    auto bytes = img.bytes();
    auto r = parse_header(std::span(bytes).first(4096), bytes.size());
    REQUIRE_FALSE(r);
    REQUIRE_THAT(r.error().message, Contains("of the first cluster were given"));
}

TEST_CASE("damaged: unknown incompatible features are named", "[header][damaged]") {
    SECTION("without a feature table entry") {
        Image img("");
        img.put64(kIncompat, uint64_t{1} << 5);
        CHECK(expect_error(img, "bit 5") == "Unsupported qcow2 feature(s): bit 5");
    }
    SECTION("with names from the feature table") {
        Image img("");
        // Turn the table's "compression type" entry into bit 9 named "fancy future feature".
        const uint64_t entry = img.ext(kExtFeatureNames) + 8 + 3 * 48;
        img.put8(entry + 1, 9);
        std::string name = "fancy future feature";
        name.resize(46, '\0');
        img.put_str(entry + 2, name);
        img.put64(kIncompat, (uint64_t{1} << 9) | (uint64_t{1} << 12) | kIncompatDirty);
        CHECK(expect_error(img, "fancy") ==
              "Unsupported qcow2 feature(s): fancy future feature, bit 12");
    }
    SECTION("a name of the full 46 bytes") {
        Image img("");
        const uint64_t entry = img.ext(kExtFeatureNames) + 8;
        img.put8(entry + 1, 63);
        img.put_str(entry + 2, std::string(46, 'x'));
        img.put64(kIncompat, uint64_t{1} << 63);
        CHECK(expect_error(img, "xxx") == "Unsupported qcow2 feature(s): " + std::string(46, 'x'));
    }
}

TEST_CASE("damaged: backing file name", "[header][damaged]") {
    Image img("", true);
    expect_ok(img);
    SECTION("offset inside the fixed header") {
        img.put64(kBackingOffset, 0x10);
        expect_error(img, "backing file name offset 0x10 overlaps the header (112 bytes)");
    }
    SECTION("offset outside the first cluster") {
        img.put64(kBackingOffset, 0x20000);
        expect_error(img, "backing file name offset 0x20000 is outside the first cluster");
    }
    SECTION("name too long") {
        img.put32(kBackingSize, 1024);
        expect_error(img, "backing file name is 1024 bytes long (at most 1023)");
    }
    SECTION("name past the cluster") {
        img.put64(kBackingOffset, 65536 - 4);
        expect_error(img, "backing file name at 0xfffc (8 bytes) runs past the first cluster");
    }
    SECTION("NUL inside the name") {
        img.put8(load_be64(img.bytes().data() + kBackingOffset) + 2, 0);
        expect_error(img, "backing file name contains a NUL byte");
    }
    SECTION("backing name over the extensions") {
        img.put64(kBackingOffset, 0x90);  // inside the feature name table
        expect_error(img, "runs past the end of the extension area at 0x90");
    }
}

TEST_CASE("damaged: header extension structure", "[header][damaged]") {
    SECTION("length beyond the cluster") {
        Image img("");
        img.put32(img.ext(kExtFeatureNames) + 4, 0x10000);
        expect_error(img, "feature name table at 0x70 has length 65536 and runs past the end");
    }
    SECTION("padding beyond the extension area") {
        Image img("compat=0.10", true);
        // The backing format "raw" ends at 83; its padding up to 88 would cross offset 84.
        img.put64(kBackingOffset, 84);
        img.put32(kBackingSize, 4);
        expect_error(img, "backing format extension at 0x48 has length 3 and runs past");
    }
    SECTION("extension header cut off") {
        Image img("compat=0.10", true);
        img.put64(kBackingOffset, 76);
        img.put32(kBackingSize, 4);
        expect_error(img, "header extension at 0x48 is cut off");
    }
    SECTION("duplicate extension") {
        Image img("data_file=x.data", true);
        img.put32(img.ext(kExtDataFile), kExtBackingFormat);
        expect_error(img, "duplicate backing format extension");
    }
    SECTION("repeated unknown extensions are kept") {
        Image img("cluster_size=4k");
        img.put(112, std::vector<std::byte>(32));
        img.put32(112, 0xabcdef01);
        img.put32(120, 0xabcdef01);
        const auto bytes = img.bytes();
        auto h = parse_header(bytes, bytes.size());
        REQUIRE(h);
        CHECK(h->extensions.size() == 2);
    }
}

TEST_CASE("damaged: header extension contents", "[header][damaged]") {
    SECTION("backing format too long") {
        Image img("", true);
        img.put32(img.ext(kExtBackingFormat) + 4, 16);
        expect_error(img, "backing format name is 16 bytes long (at most 15)");
    }
    SECTION("feature table length") {
        Image img("");
        img.put32(img.ext(kExtFeatureNames) + 4, 8 * 48 - 8);
        expect_error(img, "feature name table length 376 is not a multiple of 48");
    }
    SECTION("feature table entry type") {
        Image img("");
        img.put8(img.ext(kExtFeatureNames) + 8 + 48, 3);
        expect_error(img, "feature name table entry 1 has invalid type 3");
    }
    SECTION("feature table entry bit") {
        Image img("");
        img.put8(img.ext(kExtFeatureNames) + 8 + 1, 64);
        expect_error(img, "feature name table entry 0 has invalid type 0 or bit 64");
    }
    SECTION("empty data file name") {
        Image img("data_file=x.data");
        img.put32(img.ext(kExtDataFile) + 4, 0);
        expect_error(img, "data file name extension is empty");
    }
    SECTION("NUL in the data file name") {
        Image img("data_file=x.data");
        img.put8(img.ext(kExtDataFile) + 9, 0);
        expect_error(img, "data file name contains a NUL byte");
    }
    SECTION("NUL in the backing format") {
        Image img("", true);
        img.put8(img.ext(kExtBackingFormat) + 9, 0);
        expect_error(img, "backing format name contains a NUL byte");
    }
    SECTION("encryption extension in a plain image") {
        Image img("data_file=x.data");
        img.put32(img.ext(kExtDataFile), kExtEncryption);
        expect_error(img, "encryption header extension present but crypt_method is 0");
    }
}

TEST_CASE("damaged: external data file consistency", "[header][damaged]") {
    SECTION("bit without a name") {
        Image img("data_file=x.data");
        expect_ok(img);
        img.put32(img.ext(kExtDataFile), 0x12345678);
        expect_error(img, "image has an external data file but no data file name");
    }
    SECTION("name without the bit") {
        Image img("data_file=x.data");
        img.put64(kIncompat, 0);
        expect_error(img, "data file name ('x.data') but the external data file bit is not set");
    }
    SECTION("raw data file with a backing file") {
        Image img("data_file=x.data,data_file_raw=on");
        img.put_str(0x400, "base.raw");
        img.put64(kBackingOffset, 0x400);
        img.put32(kBackingSize, 8);
        expect_error(img,
                     "image has both a backing file ('base.raw') and a raw external data file");
    }
    SECTION("data file with internal snapshots") {
        Image img("data_file=x.data");
        img.resize(1 << 20);
        img.put32(kNbSnapshots, 1);
        img.put64(kSnapOffset, 0x50000);
        expect_error(img, "image has an external data file and 1 internal snapshots");
    }
}

TEST_CASE("damaged: bitmaps extension", "[header][damaged]") {
    Image img("");
    img.qemu("qemu-img bitmap --add " + img.path() + " b0");
    expect_ok(img);
    const uint64_t ext = img.ext(kExtBitmaps);
    SECTION("length") {
        img.put32(ext + 4, 16);
        expect_error(img, "bitmaps extension has length 16 (expected 24)");
    }
    SECTION("reserved field") {
        img.put32(ext + 8 + 4, 1);
        expect_error(img, "bitmaps extension reserved field is not zero");
    }
    SECTION("no bitmaps") {
        img.put32(ext + 8, 0);
        expect_error(img, "bitmaps extension has 0 bitmaps");
    }
    SECTION("too many bitmaps") {
        img.put32(ext + 8, 65536);
        expect_error(img, "bitmaps extension has 65536 bitmaps");
    }
    SECTION("directory too large") {
        img.put64(ext + 8 + 8, uint64_t{1} << 40);
        expect_error(img, "bitmap directory size 1099511627776 is too large");
    }
    SECTION("directory offset not aligned") {
        img.put64(ext + 8 + 16, 0x50008);
        expect_error(img, "bitmap directory offset 0x50008 is not cluster-aligned");
    }
    SECTION("directory past the end of the file") {
        img.put64(ext + 8 + 16, uint64_t{1} << 40);
        expect_error(img, "bitmap directory at 0x10000000000");
    }
    SECTION("stale extension without the autoclear bit is ignored") {
        img.put64(kAutoclear, 0);
        img.put32(ext + 8, 0);
        expect_ok(img);
    }
}

TEST_CASE("damaged: snapshot table entries", "[header][damaged]") {
    Image img("");
    img.qemu("qemu-img snapshot -c snap " + img.path());
    const uint64_t table = load_be64(img.bytes().data() + kSnapOffset);
    SECTION("extra data too large") {
        img.put32(table + 36, 1025);
        expect_snapshot_error(img, "snapshot 0 has 1025 bytes of extra data (at most 1024)");
    }
    SECTION("extra data too small for version 3") {
        img.put32(table + 36, 8);
        expect_snapshot_error(img, "version 3 needs at least 16");
    }
    SECTION("name beyond the table") {
        img.put16(table + 14, 0xffff);
        expect_snapshot_error(img, "runs past the end of the snapshot table");
    }
    SECTION("L1 offset not aligned") {
        img.put64(table, load_be64(img.bytes().data() + table) + 8);
        expect_snapshot_error(img, "snapshot 0 L1 table offset");
    }
    SECTION("L1 past the end of the file") {
        img.put64(table, uint64_t{1} << 40);
        expect_snapshot_error(img, "snapshot 0 L1 table at 0x10000000000 (16 bytes) extends past");
    }
    SECTION("L1 too large") {
        img.put32(table + 8, 5u << 20);
        expect_snapshot_error(img, "snapshot 0 L1 table of 5242880 entries is too large");
    }
    SECTION("L1 too small for the snapshot's disk size") {
        img.put32(table + 8, 1);
        expect_snapshot_error(img, "snapshot 0 L1 table of 1 entries is too small");
    }
    SECTION("L1 on the active L1 table") {
        img.put64(table, 0x30000);
        expect_snapshot_error(img, "overlaps the L1 table");
    }
    SECTION("L1 on the header") {
        img.put64(table, 0);
        expect_snapshot_error(img, "overlaps the header cluster");
    }
}

TEST_CASE("damaged: snapshot table bounds", "[header][damaged]") {
    Image img("");
    img.qemu("qemu-img snapshot -c snap " + img.path());
    const uint64_t table = load_be64(img.bytes().data() + kSnapOffset);
    const auto bytes = img.bytes();
    auto h = parse_header(bytes, bytes.size());
    REQUIRE(h);
    // Bytes of the first entry: fixed part, extra data, id and name.
    const std::byte* e = bytes.data() + table;
    const uint64_t len = 40 + load_be32(e + 36) + uint64_t{load_be16(e + 12)} + load_be16(e + 14);
    SECTION("more snapshots than the table holds") {
        auto h = parse_header(bytes, bytes.size());
        auto r = parse_snapshots(std::span(bytes).subspan(table, len), 2, *h, bytes.size());
        REQUIRE_FALSE(r);
        REQUIRE_THAT(r.error().message,
                     Contains("snapshot 1 at table offset " + std::to_string((len + 7) & ~7ull) +
                              " is past the end"));
    }
    SECTION("table past the end of the file") {
        auto r = parse_snapshots(std::span(bytes).subspan(table), 1, *h, table + len - 1);
        REQUIRE_FALSE(r);
        REQUIRE_THAT(r.error().message, Contains("snapshot table at 0x") &&
                                            Contains("extends past the end of the file"));
    }
    SECTION("too many snapshots") {
        auto r = parse_snapshots(bytes, 65537, *h, bytes.size());
        REQUIRE_FALSE(r);
        REQUIRE_THAT(r.error().message, Contains("nb_snapshots 65537 is too large"));
    }
}
