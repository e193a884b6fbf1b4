// create_image checked by qemu itself: qemu-img check must be clean before and after qemu-io
// writes data, and qemu-img info must report the requested options.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/buffer.hpp"
#include "qcow2/create.hpp"
#include "qcow2/header.hpp"
#include "tests/unit/support/compare.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/shell.hpp"
#include "tests/unit/support/units.hpp"

using namespace qnbd;
using namespace qnbd::qcow2;
using Catch::Contains;
using namespace qnbd::test;

namespace {

void create(const std::string& path, const CreateOptions& o) {
    auto r = create_image(path, o);
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
}

/// `"key": value` appears in qemu-img's JSON (values as qemu prints them).
void check_info(const std::string& json, const std::string& key, const std::string& value) {
    INFO(json);
    CHECK_THAT(json, Contains("\"" + key + "\": " + value));
}

/// Writes 1 MiB of 0xab at `offset` with qemu-io, reads it back, and checks again.
void write_and_check(const std::string& path, uint64_t offset = 0) {
    qemu_io(path, {"write -P 0xab " + std::to_string(offset) + " 1M"});
    check_qemu_pattern(path, offset, MiB, 0xab);
    require_qemu_check_clean(path);
}

uint64_t file_size(const std::string& path) {
    return std::filesystem::file_size(path);
}

/// The first `n` bytes of a file (fewer if it is shorter).
std::vector<std::byte> read_head(const std::string& path, size_t n) {
    std::ifstream f(path, std::ios::binary);
    std::vector<std::byte> out(n);
    f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n));
    out.resize(static_cast<size_t>(f.gcount()));
    return out;
}

/// Parses the header from the first 2 MiB (the largest cluster) of the image.
Header parse_file(const std::string& path) {
    const auto bytes = read_head(path, 2 << 20);
    auto h = parse_header(bytes, file_size(path));
    INFO((h ? "" : h.error().message));
    REQUIRE(h);
    return *h;
}

uint64_t allocated_bytes(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return static_cast<uint64_t>(st.st_blocks) * 512;
}

}  // namespace

TEST_CASE("create_image makes a default image qemu accepts", "[create]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    CreateOptions o;
    o.size = GiB;
    create(img, o);
    require_qemu_check_clean(img);
    const std::string json = qemu_info_json(img);
    check_info(json, "virtual-size", std::to_string(GiB));
    check_info(json, "cluster-size", "65536");
    check_info(json, "refcount-bits", "16");
    check_info(json, "compat", "\"1.1\"");
    check_info(json, "extended-l2", "false");
    check_info(json, "compression-type", "\"zlib\"");
    check_info(json, "lazy-refcounts", "false");
    CHECK_THAT(json, !Contains("backing-filename"));
    CHECK_THAT(json, !Contains("data-file"));
    write_and_check(img);
    write_and_check(img, GiB - MiB);
}

// While the metadata fits in one refcount block the layouts coincide (qemu-img places
// further refcount blocks after the L1 table; qnbd keeps them before it).
TEST_CASE("create_image matches qemu-img create byte for byte", "[create]") {
    struct Case {
        std::string qemu_opts;  ///< qemu-img's -o; the backing file comes from `opts`.
        CreateOptions opts;
    };
    CreateOptions base;
    base.size = 64 * MiB;
    auto with = [&](auto f) {
        CreateOptions o = base;
        f(o);
        return o;
    };
    const std::vector<Case> cases{
        {"", base},
        {"cluster_size=512", with([](CreateOptions& o) { o.cluster_size = 512; })},
        {"cluster_size=2M,refcount_bits=1", with([](CreateOptions& o) {
             o.cluster_size = 2 * MiB;
             o.refcount_bits = 1;
         })},
        {"compat=0.10", with([](CreateOptions& o) { o.compat_v2 = true; })},
        {"lazy_refcounts=on,extended_l2=on,compression_type=zstd", with([](CreateOptions& o) {
             o.lazy_refcounts = true;
             o.extended_l2 = true;
             o.compression_type = CompressionType::Zstd;
         })},
        {"refcount_bits=64", with([](CreateOptions& o) {
             o.backing_file = "base.raw";
             o.backing_format = "raw";
             o.refcount_bits = 64;
         })},
        {"data_file=q.data", with([](CreateOptions& o) { o.data_file = "q.data"; })},
        {"data_file=q.data,data_file_raw=on", with([](CreateOptions& o) {
             o.data_file = "q.data";
             o.data_file_raw = true;
         })},
    };
    for (const Case& c : cases) {
        TempDir dir;
        INFO(c.qemu_opts);
        set_file_size(dir.file("base.raw"), MiB);
        qemu_create(dir.file("q.qcow2"), 64 * MiB, c.qemu_opts, c.opts.backing_file,
                    c.opts.backing_format);
        std::filesystem::rename(dir.file("q.qcow2"), dir.file("ref.qcow2"));
        std::filesystem::remove(dir.file("q.data"));
        // Same names as qemu-img was given: relative to the working directory.
        const std::string old_cwd = std::filesystem::current_path().string();
        std::filesystem::current_path(dir.path());
        auto r = create_image("q.qcow2", c.opts);
        std::filesystem::current_path(old_cwd);
        INFO((r ? "" : r.error().message));
        REQUIRE(r);
        const auto ours = read_file(dir.file("q.qcow2"));
        const auto ref = read_file(dir.file("ref.qcow2"));
        CHECK(ours.size() == ref.size());
        const auto diff = first_diff(ours, ref);
        INFO("first difference at byte " << diff.value_or(0));
        CHECK_FALSE(diff.has_value());
    }
}

TEST_CASE("create_image cluster sizes and refcount widths", "[create]") {
    const uint64_t cs = GENERATE(512u, 1024u, 4096u, 65536u, 2u << 20);
    const uint32_t bits = GENERATE(1u, 2u, 4u, 8u, 16u, 32u, 64u);
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    CreateOptions o;
    o.size = 3 * GiB + 512;
    o.cluster_size = cs;
    o.refcount_bits = bits;
    create(img, o);
    INFO("cluster size " << cs << ", refcount bits " << bits);
    require_qemu_check_clean(img);
    const std::string json = qemu_info_json(img);
    check_info(json, "virtual-size", std::to_string(o.size));
    check_info(json, "cluster-size", std::to_string(cs));
    check_info(json, "refcount-bits", std::to_string(bits));
    const Header h = parse_file(img);
    CHECK(h.refcount_bits() == bits);
    CHECK(h.cluster_size() == cs);
}

TEST_CASE("create_image with 512-byte clusters and a multi-GiB size", "[create]") {
    const uint32_t bits = GENERATE(1u, 16u, 64u);
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    CreateOptions o;
    o.size = 10 * GiB;
    o.cluster_size = 512;
    o.refcount_bits = bits;
    create(img, o);
    INFO("refcount bits " << bits);
    const Header h = parse_file(img);
    CHECK(h.l1_size == 327680);  // 2.5 MiB of L1 table: 5120 clusters
    CHECK(h.refcount_table_offset.value == 512);
    CHECK(h.l1_table_offset.value > 512 * 3);
    // The L1 table is zeros and not written: the file is sparse.
    CHECK(allocated_bytes(img) < file_size(img) / 2);
    require_qemu_check_clean(img);
    check_info(qemu_info_json(img), "virtual-size", std::to_string(10 * GiB));
    write_and_check(img);
    write_and_check(img, 10 * GiB - MiB);
}

TEST_CASE("create_image at the size limits", "[create]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    CreateOptions o;
    SECTION("1 TiB with 64K clusters") {
        o.size = 1024 * GiB;
        create(img, o);
        require_qemu_check_clean(img);
        write_and_check(img, 1024 * GiB - MiB);
    }
    SECTION("2M clusters, 64-bit refcounts, 64 TiB") {
        o.size = 64 * 1024 * GiB;
        o.cluster_size = 2 * MiB;
        o.refcount_bits = 64;
        create(img, o);
        require_qemu_check_clean(img);
        write_and_check(img, o.size - 2 * MiB);
    }
    SECTION("largest L1 table with 512-byte clusters") {
        o.size = 128 * GiB;
        o.cluster_size = 512;
        create(img, o);
        CHECK(parse_file(img).l1_size == (32u << 20) / 8);
        o.size += 512;
        auto r = create_image(img, o);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EINVAL);
        CHECK_THAT(r.error().message, Contains("too large"));
    }
    SECTION("size 0") {
        o.size = 0;
        create(img, o);
        CHECK(parse_file(img).l1_size == 0);
        require_qemu_check_clean(img);
    }
    SECTION("size rounded up to a sector") {
        o.size = 1000;
        create(img, o);
        check_info(qemu_info_json(img), "virtual-size", "1024");
    }
}

TEST_CASE("create_image feature options", "[create]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    CreateOptions o;
    o.size = 4 * GiB;
    SECTION("compat=0.10") {
        o.compat_v2 = true;
        create(img, o);
        require_qemu_check_clean(img);
        check_info(qemu_info_json(img), "compat", "\"0.10\"");
        CHECK(parse_file(img).version == 2);
        write_and_check(img);
    }
    SECTION("lazy refcounts") {
        o.lazy_refcounts = true;
        create(img, o);
        require_qemu_check_clean(img);
        check_info(qemu_info_json(img), "lazy-refcounts", "true");
        write_and_check(img);
    }
    SECTION("extended L2 entries") {
        o.extended_l2 = true;
        o.cluster_size = 16 * KiB;
        create(img, o);
        require_qemu_check_clean(img);
        check_info(qemu_info_json(img), "extended-l2", "true");
        check_info(qemu_info_json(img), "cluster-size", "16384");
        write_and_check(img, 3 * GiB);
    }
    SECTION("zstd compression") {
        o.compression_type = CompressionType::Zstd;
        create(img, o);
        require_qemu_check_clean(img);
        check_info(qemu_info_json(img), "compression-type", "\"zstd\"");
        write_and_check(img);
    }
}

TEST_CASE("create_image with a backing file", "[create]") {
    TempDir dir;
    const std::string base = dir.file("base.qcow2");
    const std::string img = dir.file("top.qcow2");
    CreateOptions b;
    b.size = GiB;
    create(base, b);
    qemu_io(base, {"write -P 0x5a 2M 1M"});
    CreateOptions o;
    o.size = GiB;
    o.backing_file = base;
    o.backing_format = "qcow2";
    create(img, o);
    require_qemu_check_clean(img);
    const std::string json = qemu_info_json(img);
    check_info(json, "backing-filename", "\"" + base + "\"");
    check_info(json, "backing-filename-format", "\"qcow2\"");
    write_and_check(img);
    // Unwritten ranges come from the backing file.
    check_qemu_pattern(img, 2 * MiB, MiB, 0x5a);
    // A raw backing file without a format works too.
    set_file_size(dir.file("base.raw"), MiB);
    o.backing_file = dir.file("base.raw");
    o.backing_format.clear();
    create(img, o);
    require_qemu_check_clean(img);
    CHECK(parse_file(img).backing_format.empty());
}

TEST_CASE("create_image with an external data file", "[create]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    const std::string data = dir.file("a.data");
    CreateOptions o;
    o.size = GiB;
    o.data_file = data;
    SECTION("created when missing, sparse") {
        create(img, o);
        struct stat st {};
        REQUIRE(::stat(data.c_str(), &st) == 0);
        CHECK(static_cast<uint64_t>(st.st_size) == GiB);
        CHECK(st.st_blocks == 0);
        require_qemu_check_clean(img);
        const std::string json = qemu_info_json(img);
        check_info(json, "data-file", "\"" + data + "\"");
        check_info(json, "data-file-raw", "false");
        const Header h = parse_file(img);
        CHECK(h.has_data_file());
        CHECK(h.data_file == data);
        write_and_check(img);
    }
    SECTION("a relative name is next to the image") {
        o.data_file = "rel.data";
        create(img, o);  // the working directory is not the image's directory
        CHECK(std::filesystem::exists(dir.file("rel.data")));
        CHECK_FALSE(std::filesystem::exists("rel.data"));
        CHECK(parse_file(img).data_file == "rel.data");
        REQUIRE(sh("cd '" + dir.path().string() + "' && qemu-img check -q a.qcow2") == 0);
    }
    SECTION("existing contents are kept") {
        REQUIRE(sh("printf hello > " + data) == 0);
        create(img, o);
        CHECK(file_size(data) == GiB);
        const auto bytes = read_head(data, 5);
        CHECK(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()) == "hello");
    }
}

TEST_CASE("create_image with a raw external data file", "[create]") {
    TempDir dir;
    const std::string img = dir.file("a.qcow2");
    const std::string data = dir.file("a.data");
    CreateOptions o;
    o.size = GiB;
    o.data_file = data;
    o.data_file_raw = true;
    SECTION("standard L2 entries") {
        create(img, o);
        require_qemu_check_clean(img);
        check_info(qemu_info_json(img), "data-file-raw", "true");
        // The metadata maps every guest cluster to the same data file offset.
        const std::string map = sh_output("qemu-img map --output=json " + img);
        CHECK_THAT(map, Contains("\"start\": 0, \"length\": " + std::to_string(GiB) +
                                 ", \"depth\": 0, \"present\": true, \"zero\": false, "
                                 "\"data\": true, \"offset\": 0"));
        write_and_check(img, 5 * MiB);
        check_qemu_pattern(data, 5 * MiB, MiB, 0xab, "raw");
    }
    SECTION("extended L2 entries") {
        o.extended_l2 = true;
        create(img, o);
        require_qemu_check_clean(img);
        write_and_check(img, 7 * MiB);
    }
}

/// create_image must refuse `o` with EINVAL and a message containing `what`.
void expect_refused(const CreateOptions& o, const std::string& what) {
    TempDir dir;
    auto r = create_image(dir.file("a.qcow2"), o);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == EINVAL);
    CHECK_THAT(r.error().message, Contains(what));
    CHECK_FALSE(std::filesystem::exists(dir.file("a.qcow2")));
}

TEST_CASE("create_image refuses version 3 options with compat=0.10", "[create]") {
    CreateOptions v2;
    v2.size = GiB;
    v2.compat_v2 = true;
    auto x = v2;
    x.extended_l2 = true;
    expect_refused(x, "extended L2 entries need compat=1.1");
    x = v2;
    x.compression_type = CompressionType::Zstd;
    expect_refused(x, "compression types other than zlib need compat=1.1");
    x = v2;
    x.data_file = "d";
    expect_refused(x, "external data files need compat=1.1");
    x = v2;
    x.lazy_refcounts = true;
    expect_refused(x, "lazy refcounts need compat=1.1");
    x = v2;
    x.refcount_bits = 8;
    expect_refused(x, "refcount widths other than 16 bits need compat=1.1");
}

TEST_CASE("create_image refuses invalid options", "[create]") {
    CreateOptions o;
    o.size = GiB;
    for (uint64_t cs : {0ul, 256ul, 1000ul, 4ul << 20}) {
        auto x = o;
        x.cluster_size = cs;
        expect_refused(x, "must be a power of two between 512 and 2M");
    }
    auto x = o;
    x.cluster_size = 8192;
    x.extended_l2 = true;
    expect_refused(x, "extended L2 entries need a cluster size of at least 16K");
    for (uint32_t bits : {0u, 3u, 128u}) {
        x = o;
        x.refcount_bits = bits;
        expect_refused(x, "must be a power of two between 1 and 64");
    }
    x = o;
    x.backing_format = "raw";
    expect_refused(x, "a backing format needs a backing file");
    x.backing_file = "b";
    x.backing_format = "vmdk";
    expect_refused(x, "backing format 'vmdk' is not supported");
    x = o;
    x.backing_file = std::string(1024, 'b');
    expect_refused(x, "at most 1023");
    x = o;
    x.data_file_raw = true;
    expect_refused(x, "data_file_raw needs a data_file");
    x.data_file = "d";
    x.backing_file = "b";
    expect_refused(x, "a backing file and data_file_raw cannot be used together");
    TempDir dir;
    auto r = create_image(dir.file("no/such/dir/a.qcow2"), o);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == ENOENT);
}

TEST_CASE("parse_size", "[create]") {
    CHECK(*parse_size("4096") == 4096);
    CHECK(*parse_size("10G") == 10 * GiB);
    CHECK(*parse_size("512M") == 512 * MiB);
    CHECK(*parse_size("64k") == 64 * KiB);
    CHECK(*parse_size("64K") == 64 * KiB);
    CHECK(*parse_size("1T") == 1024 * GiB);
    CHECK(*parse_size("2P") == uint64_t{2} << 50);
    CHECK(*parse_size("1.5k") == 1536);
    CHECK(*parse_size("100b") == 100);
    CHECK(*parse_size("0") == 0);
    for (const char* bad :
         {"", "G", "-1", "1x", "1GG", "1.", "0.1", "16E", "99999999999999999999", "1 G"}) {
        INFO(bad);
        auto r = parse_size(bad);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EINVAL);
    }
}

TEST_CASE("parse_create_options", "[create]") {
    CreateOptions o;
    REQUIRE(parse_create_options(
        "cluster_size=16k,refcount_bits=8,compat=1.1,lazy_refcounts=on,extended_l2=on,"
        "compression_type=zstd,backing_file=a,,b.qcow2,backing_fmt=qcow2,data_file=d.raw,"
        "data_file_raw=off,size=2G",
        o));
    CHECK(o.cluster_size == 16 * KiB);
    CHECK(o.refcount_bits == 8);
    CHECK_FALSE(o.compat_v2);
    CHECK(o.lazy_refcounts);
    CHECK(o.extended_l2);
    CHECK(o.compression_type == CompressionType::Zstd);
    CHECK(o.backing_file == "a,b.qcow2");
    CHECK(o.backing_format == "qcow2");
    CHECK(o.data_file == "d.raw");
    CHECK_FALSE(o.data_file_raw);
    CHECK(o.size == 2 * GiB);
    REQUIRE(parse_create_options("compat=0.10,data_file_raw,lazy_refcounts=off", o));
    CHECK(o.compat_v2);
    CHECK(o.data_file_raw);
    CHECK_FALSE(o.lazy_refcounts);
    REQUIRE(parse_create_options("", o));
    for (const char* bad : {"cluster_size=abc", "refcount_bits=x", "compat=2.0",
                            "compression_type=lz4", "lazy_refcounts=maybe", "colour=blue"}) {
        INFO(bad);
        auto r = parse_create_options(bad, o);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EINVAL);
        const std::string key = std::string(bad).substr(0, std::string(bad).find('='));
        CHECK_THAT(r.error().message, Contains(key));
    }
}
