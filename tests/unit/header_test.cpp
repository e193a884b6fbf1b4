// Header parsing against images made by qemu-img, patch_header round trips, and build_header
// reproducing qemu-img's first cluster byte for byte.
#include <catch2/catch.hpp>

#include <cstring>
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
using namespace qnbd::test;

namespace {

Header parse_file(const std::string& path) {
    const auto bytes = read_file(path);
    auto h = parse_header(bytes, bytes.size());
    INFO(path << ": " << (h ? std::string("ok") : h.error().message));
    REQUIRE(h);
    return *h;
}

/// L1 entries needed for `size`, computed independently of min_l1_entries.
uint64_t expected_l1(uint64_t size, uint64_t cs, uint64_t l2_entry_size) {
    const uint64_t per_l1 = cs * (cs / l2_entry_size);
    return (size + per_l1 - 1) / per_l1;
}

std::vector<std::byte> first_cluster(const std::string& path, uint64_t cs) {
    auto bytes = read_file(path);
    bytes.resize(cs);
    return bytes;
}

}  // namespace

TEST_CASE("parse_header reads a default qemu-img image", "[header]") {
    TempDir dir;
    qemu_create(dir.file("a.qcow2"), GiB);
    const Header h = parse_file(dir.file("a.qcow2"));
    CHECK(h.version == 3);
    CHECK(h.cluster_bits == 16);
    CHECK(h.size == (uint64_t{1} << 30));
    CHECK(h.crypt_method == 0);
    CHECK(h.l1_size == 2);
    CHECK(h.l1_table_offset.value == 0x30000);
    CHECK(h.refcount_table_offset.value == 0x10000);
    CHECK(h.refcount_table_clusters == 1);
    CHECK(h.nb_snapshots == 0);
    CHECK(h.snapshots_offset.value == 0);
    CHECK(h.incompatible_features == 0);
    CHECK(h.compatible_features == 0);
    CHECK(h.autoclear_features == 0);
    CHECK(h.refcount_order == 4);
    CHECK(h.refcount_bits() == 16);
    CHECK(h.header_length == 112);
    CHECK(h.compression_type == CompressionType::Zlib);
    CHECK(h.backing_file.empty());
    CHECK(h.backing_format.empty());
    CHECK(h.data_file.empty());
    CHECK_FALSE(h.dirty());
    CHECK_FALSE(h.corrupt());
    CHECK_FALSE(h.has_bitmaps_extension());
    REQUIRE(h.extensions.size() == 1);
    CHECK(h.extensions[0].type == kExtFeatureNames);
    CHECK(h.extensions[0].data.size() == 8 * 48);
    REQUIRE(h.feature_names.size() == 8);
    CHECK(feature_name(h, 0, 0) == "dirty bit");
    CHECK(feature_name(h, 0, 1) == "corrupt bit");
    CHECK(feature_name(h, 0, 2) == "external data file");
    CHECK(feature_name(h, 0, 3) == "compression type");
    CHECK(feature_name(h, 0, 4) == "extended L2 entries");
    CHECK(feature_name(h, 1, 0) == "lazy refcounts");
    CHECK(feature_name(h, 2, 0) == "bitmaps");
    CHECK(feature_name(h, 2, 1) == "raw external data");
    CHECK(feature_name(h, 0, 40) == "bit 40");
    CHECK(feature_name(h, 1, 4) == "bit 4");
}

TEST_CASE("parse_header reads every cluster size", "[header]") {
    const uint32_t bits = GENERATE(range(9u, 22u));
    const uint64_t cs = uint64_t{1} << bits;
    const uint64_t size = uint64_t{3} << 30;
    TempDir dir;
    qemu_create(dir.file("a.qcow2"), 3 * GiB, "cluster_size=" + n(cs));
    const Header h = parse_file(dir.file("a.qcow2"));
    CHECK(h.cluster_bits == bits);
    CHECK(h.cluster_size() == cs);
    CHECK(h.size == size);
    CHECK(h.l1_size == expected_l1(size, cs, 8));
    CHECK(h.l1_size == min_l1_entries(size, h.geometry()));
    CHECK(h.refcount_table_offset.value == cs);
    // qemu-img writes the feature name table only for clusters above 4 KiB.
    CHECK(h.feature_names.size() == (cs > 4096 ? 8u : 0u));
    CHECK(feature_name(h, 0, 0) == (cs > 4096 ? "dirty bit" : "bit 0"));
}

TEST_CASE("parse_header reads compat=0.10 images", "[header]") {
    TempDir dir;
    set_file_size(dir.file("base.raw"), MiB);
    qemu_create(dir.file("a.qcow2"), GiB, "compat=0.10", "base.raw", "raw");
    const Header h = parse_file(dir.file("a.qcow2"));
    CHECK(h.version == 2);
    CHECK(h.header_length == 72);
    CHECK(h.refcount_order == 4);
    CHECK(h.incompatible_features == 0);
    CHECK(h.compatible_features == 0);
    CHECK(h.autoclear_features == 0);
    CHECK(h.compression_type == CompressionType::Zlib);
    CHECK(h.backing_file == "base.raw");
    CHECK(h.backing_format == "raw");
    CHECK(h.backing_file_size == 8);
    CHECK(h.feature_names.empty());
}

TEST_CASE("parse_header reads every refcount width", "[header]") {
    const uint32_t order = GENERATE(range(0u, 7u));
    TempDir dir;
    qemu_create(dir.file("a.qcow2"), 64 * MiB, "refcount_bits=" + n(1u << order));
    const Header h = parse_file(dir.file("a.qcow2"));
    CHECK(h.refcount_order == order);
    CHECK(h.refcount_bits() == (1u << order));
}

TEST_CASE("parse_header reads feature options", "[header]") {
    TempDir dir;
    SECTION("lazy refcounts") {
        qemu_create(dir.file("a.qcow2"), GiB, "lazy_refcounts=on");
        const Header h = parse_file(dir.file("a.qcow2"));
        CHECK(h.compatible_features == kCompatLazyRefcounts);
        CHECK(h.lazy_refcounts());
        CHECK(h.incompatible_features == 0);
    }
    SECTION("extended L2 entries") {
        qemu_create(dir.file("a.qcow2"), 5 * GiB, "extended_l2=on,cluster_size=16k");
        const Header h = parse_file(dir.file("a.qcow2"));
        CHECK(h.incompatible_features == kIncompatExtendedL2);
        CHECK(h.extended_l2());
        CHECK(h.geometry().extended_l2);
        CHECK(h.geometry().l2_entries() == 1024);
        CHECK(h.l1_size == expected_l1(uint64_t{5} << 30, 16384, 16));
    }
    SECTION("zstd compression") {
        qemu_create(dir.file("a.qcow2"), GiB, "compression_type=zstd");
        const Header h = parse_file(dir.file("a.qcow2"));
        CHECK(h.compression_type == CompressionType::Zstd);
        CHECK(h.incompatible_features == kIncompatCompression);
    }
    SECTION("explicit zlib compression") {
        qemu_create(dir.file("a.qcow2"), GiB, "compression_type=zlib");
        const Header h = parse_file(dir.file("a.qcow2"));
        CHECK(h.compression_type == CompressionType::Zlib);
        CHECK(h.incompatible_features == 0);
    }
}

TEST_CASE("parse_header reads backing files and formats", "[header]") {
    TempDir dir;
    set_file_size(dir.file("base.raw"), MiB);
    qemu_create(dir.file("mid.qcow2"), GiB, "", "base.raw", "raw");
    qemu_create(dir.file("top.qcow2"), GiB, "", "mid.qcow2", "qcow2");
    const Header mid = parse_file(dir.file("mid.qcow2"));
    CHECK(mid.backing_file == "base.raw");
    CHECK(mid.backing_format == "raw");
    const Header top = parse_file(dir.file("top.qcow2"));
    CHECK(top.backing_file == "mid.qcow2");
    CHECK(top.backing_format == "qcow2");
    CHECK(top.backing_file_size == 9);
    const auto bytes = read_file(dir.file("top.qcow2"));
    CHECK(std::memcmp(bytes.data() + top.backing_file_offset, "mid.qcow2", 9) == 0);
    REQUIRE(top.extensions.size() == 2);
    CHECK(top.extensions[0].type == kExtBackingFormat);
    CHECK(top.extensions[1].type == kExtFeatureNames);
}

TEST_CASE("parse_header reads external data files", "[header]") {
    TempDir dir;
    SECTION("data_file") {
        qemu_create(dir.file("a.qcow2"), GiB, "data_file=a.data");
        const Header h = parse_file(dir.file("a.qcow2"));
        CHECK(h.has_data_file());
        CHECK_FALSE(h.data_file_raw());
        CHECK(h.data_file == "a.data");
        CHECK(h.incompatible_features == kIncompatDataFile);
    }
    SECTION("data_file_raw") {
        qemu_create(dir.file("b.qcow2"), 16 * MiB, "data_file=b.data,data_file_raw=on");
        const Header h = parse_file(dir.file("b.qcow2"));
        CHECK(h.has_data_file());
        CHECK(h.data_file_raw());
        CHECK(h.autoclear_features == kAutoclearRawData);
        CHECK(h.data_file == "b.data");
    }
}

TEST_CASE("parse_header keeps every extension verbatim in file order", "[header]") {
    TempDir dir;
    set_file_size(dir.file("base.raw"), MiB);
    qemu_create(dir.file("a.qcow2"), GiB, "data_file=x.data", "base.raw", "raw");
    const auto bytes = read_file(dir.file("a.qcow2"));
    const Header h = parse_file(dir.file("a.qcow2"));
    REQUIRE(h.extensions.size() == 3);
    CHECK(h.extensions[0].type == kExtBackingFormat);
    CHECK(h.extensions[1].type == kExtDataFile);
    CHECK(h.extensions[2].type == kExtFeatureNames);
    size_t off = h.header_length;
    for (const HeaderExtension& e : h.extensions) {
        CHECK(load_be32(bytes.data() + off) == e.type);
        REQUIRE(load_be32(bytes.data() + off + 4) == e.data.size());
        CHECK(std::memcmp(bytes.data() + off + 8, e.data.data(), e.data.size()) == 0);
        off += 8 + ((e.data.size() + 7) & ~size_t{7});
    }
    CHECK(load_be32(bytes.data() + off) == kExtEnd);
}

TEST_CASE("parse_header keeps unknown extensions and accepts unknown autoclear bits", "[header]") {
    TempDir dir;
    qemu_create(dir.file("a.qcow2"), GiB, "cluster_size=4k");
    auto bytes = read_file(dir.file("a.qcow2"));
    // 4K clusters: no feature table, so the extension area starts with the end marker.
    store_be32(bytes.data() + 112, 0x12345678);
    store_be32(bytes.data() + 116, 5);
    std::memcpy(bytes.data() + 120, "hello", 5);
    store_be64(bytes.data() + 88, uint64_t{1} << 40);
    auto h = parse_header(bytes, bytes.size());
    REQUIRE(h);
    REQUIRE(h->extensions.size() == 1);
    CHECK(h->extensions[0].type == 0x12345678);
    CHECK(h->extensions[0].data.size() == 5);
    CHECK(std::memcmp(h->extensions[0].data.data(), "hello", 5) == 0);
    CHECK(h->autoclear_features == uint64_t{1} << 40);
}

TEST_CASE("parse_header parses but does not refuse the dirty and corrupt bits", "[header]") {
    TempDir dir;
    qemu_create(dir.file("a.qcow2"), GiB);
    auto bytes = read_file(dir.file("a.qcow2"));
    store_be64(bytes.data() + 72, kIncompatDirty | kIncompatCorrupt);
    auto h = parse_header(bytes, bytes.size());
    REQUIRE(h);
    CHECK(h->dirty());
    CHECK(h->corrupt());
}

TEST_CASE("parse_header accepts a version 3 header of 104 bytes", "[header]") {
    TempDir dir;
    qemu_create(dir.file("a.qcow2"), GiB, "cluster_size=4k");
    auto bytes = read_file(dir.file("a.qcow2"));
    // Shift the (empty) extension area down to 104 and shorten the header.
    store_be32(bytes.data() + 100, 104);
    std::memset(bytes.data() + 104, 0, 8);
    auto h = parse_header(bytes, bytes.size());
    REQUIRE(h);
    CHECK(h->header_length == 104);
    CHECK(h->compression_type == CompressionType::Zlib);
    // qemu agrees that this is a valid image.
    write_file(dir.file("a.qcow2"), bytes);
    CHECK(qemu_check(dir.file("a.qcow2")).exit_status == 0);
}

TEST_CASE("parse_header reads the bitmaps extension", "[header]") {
    TempDir dir;
    qemu_create(dir.file("a.qcow2"), GiB);
    REQUIRE(sh("qemu-img bitmap --add " + dir.file("a.qcow2") + " b0") == 0);
    const Header h = parse_file(dir.file("a.qcow2"));
    CHECK(h.has_bitmaps_extension());
    CHECK(h.autoclear_features & kAutoclearBitmaps);
}

TEST_CASE("min_l1_entries covers the virtual size exactly", "[header]") {
    const Geometry g64k{16, false};
    CHECK(min_l1_entries(0, g64k) == 0);
    CHECK(min_l1_entries(1, g64k) == 1);
    CHECK(min_l1_entries(uint64_t{512} << 20, g64k) == 1);
    CHECK(min_l1_entries((uint64_t{512} << 20) + 1, g64k) == 2);
    const Geometry g512{9, false};
    CHECK(min_l1_entries(uint64_t{10} << 30, g512) == 327680);
    const Geometry g2m_ext{21, true};
    CHECK(min_l1_entries(uint64_t{1} << 40, g2m_ext) == 4);
    CHECK(min_l1_entries(UINT64_MAX, Geometry{21, false}) == uint64_t{1} << 25);
}

TEST_CASE("patch_header round trips the fixed fields", "[header]") {
    TempDir dir;
    set_file_size(dir.file("base.raw"), MiB);
    qemu_create(dir.file("a.qcow2"), GiB, "", "base.raw", "raw");
    const auto orig = read_file(dir.file("a.qcow2"));
    Header h = parse_file(dir.file("a.qcow2"));
    h.size = uint64_t{2} << 30;
    h.l1_size = 7;
    h.incompatible_features |= kIncompatDirty;
    h.compatible_features |= kCompatLazyRefcounts;
    h.autoclear_features |= kAutoclearBitmaps;
    h.nb_snapshots = 3;
    h.snapshots_offset = HostOffset{0x50000};
    auto bytes = orig;
    patch_header(h, std::span(bytes).first(h.header_length));
    // Everything past the fixed fields is untouched.
    CHECK(std::equal(bytes.begin() + 112, bytes.end(), orig.begin() + 112));
    CHECK(load_be64(bytes.data() + 24) == h.size);
    CHECK(load_be32(bytes.data() + 36) == 7);
    CHECK(load_be64(bytes.data() + 72) == kIncompatDirty);
    CHECK(load_be64(bytes.data() + 80) == kCompatLazyRefcounts);
    CHECK(load_be64(bytes.data() + 88) == kAutoclearBitmaps);
    CHECK(load_be32(bytes.data() + 60) == 3);
    CHECK(load_be64(bytes.data() + 64) == 0x50000);
    // Patching the unchanged header reproduces the original bytes.
    auto again = orig;
    patch_header(parse_file(dir.file("a.qcow2")), again);
    CHECK(again == orig);
}

TEST_CASE("patch_header writes no more than the header holds", "[header]") {
    TempDir dir;
    qemu_create(dir.file("a.qcow2"), GiB, "compat=0.10");
    const auto orig = read_file(dir.file("a.qcow2"));
    Header h = parse_file(dir.file("a.qcow2"));
    h.size = uint64_t{4} << 30;
    h.incompatible_features = ~uint64_t{0};  // not representable in version 2: not written
    auto bytes = orig;
    patch_header(h, bytes);
    CHECK(load_be64(bytes.data() + 24) == h.size);
    CHECK(std::equal(bytes.begin() + 72, bytes.end(), orig.begin() + 72));

    Header v3;
    v3.header_length = 104;
    v3.compression_type = CompressionType::Zstd;
    std::vector<std::byte> buf(112, std::byte{0xee});
    patch_header(v3, buf);
    CHECK(buf[104] == std::byte{0xee});  // no compression_type field in a 104-byte header
    std::vector<std::byte> small(40, std::byte{0xee});
    patch_header(v3, small);  // a short buffer only gets the fields that fit
    CHECK(load_be32(small.data()) == kMagic);
}

TEST_CASE("build_header reproduces qemu-img's first cluster", "[header]") {
    auto [opts, backing] = GENERATE(table<std::string, bool>({
        {"", false},
        {"cluster_size=512", false},
        {"cluster_size=2M,refcount_bits=64", false},
        {"compat=0.10", true},
        {"data_file=x.data", true},
        {"compression_type=zstd,extended_l2=on,lazy_refcounts=on", false},
        {"data_file=y.data,data_file_raw=on", false},
        {"cluster_size=4k", true},
    }));
    TempDir dir;
    set_file_size(dir.file("base.raw"), MiB);
    qemu_create(dir.file("a.qcow2"), GiB, opts, backing ? "base.raw" : "", backing ? "raw" : "");
    const Header h = parse_file(dir.file("a.qcow2"));
    auto built = build_header(h);
    INFO("options '" << opts << "' backing " << backing);
    REQUIRE(built);
    CHECK(*built == first_cluster(dir.file("a.qcow2"), h.cluster_size()));
    auto reparsed = parse_header(*built, uint64_t{1} << 30);
    REQUIRE(reparsed);
    CHECK(reparsed->backing_file == h.backing_file);
    CHECK(reparsed->backing_format == h.backing_format);
    CHECK(reparsed->data_file == h.data_file);
}

TEST_CASE("build_header refuses what does not fit", "[header]") {
    Header h;
    h.cluster_bits = 9;
    h.l1_size = 1;
    h.backing_file = std::string(1024, 'a');
    auto r = build_header(h);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("at most 1023"));
    h.backing_file = std::string(390, 'a');
    h.data_file = "some-data-file";
    r = build_header(h);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("first cluster"));
    h.backing_file.clear();
    h.extensions.push_back({0x1234, std::vector<std::byte>(400)});
    r = build_header(h);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("do not fit"));
    Header v2;
    v2.version = 2;
    v2.compatible_features = kCompatLazyRefcounts;
    r = build_header(v2);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("version 2"));
}

TEST_CASE("parse_snapshots reads qemu-img snapshots", "[header]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    qemu_create(dir.file("a.qcow2"), GiB);
    qemu_io(img, {"write -P 0x11 0 64k"});
    REQUIRE(sh("qemu-img snapshot -c first " + img) == 0);
    REQUIRE(sh("qemu-img resize -q " + img + " 3G") == 0);
    REQUIRE(sh("qemu-img snapshot -c second-snapshot " + img) == 0);
    const auto bytes = read_file(img);
    const Header h = parse_file(img);
    REQUIRE(h.nb_snapshots == 2);
    const auto table = std::span(bytes).subspan(h.snapshots_offset.value);
    auto sn = parse_snapshots(table, h.nb_snapshots, h, bytes.size());
    INFO((sn ? "" : sn.error().message));
    REQUIRE(sn);
    REQUIRE(sn->size() == 2);
    CHECK((*sn)[0].id == "1");
    CHECK((*sn)[0].name == "first");
    CHECK((*sn)[0].l1_size == 2);
    CHECK((*sn)[1].id == "2");
    CHECK((*sn)[1].name == "second-snapshot");
    CHECK((*sn)[1].l1_size == 6);
    for (const Snapshot& s : *sn) {
        CHECK(s.l1_table_offset.value % h.cluster_size() == 0);
        CHECK(s.l1_table_offset != h.l1_table_offset);
    }
    auto none = parse_snapshots({}, 0, h, bytes.size());
    REQUIRE(none);
    CHECK(none->empty());
}
