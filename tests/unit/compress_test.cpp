// Compressed cluster round trips (raw deflate and zstd), damaged and truncated input, and the
// trailing bytes that the sector-granular compressed size leaves after the stream.
#include <catch2/catch.hpp>

#include <zstd.h>

#include <cstring>
#include <string>
#include <vector>

#include "qcow2/compress.hpp"
#include "tests/unit/support/random.hpp"
#include "tests/unit/support/units.hpp"

using namespace qnbd;
using namespace qnbd::qcow2;
using Catch::Contains;
using namespace qnbd::test;

namespace {

/// Compressible data: runs from a small alphabet.
Bytes compressible(size_t n, uint64_t seed) {
    return random_bytes(n, seed, true);
}

Bytes compress(CompressionType t, const Bytes& in) {
    auto r = compress_cluster(t, in);
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
    return *r;
}

Result<void> decompress(CompressionType t, const Bytes& in, Bytes& out) {
    return decompress_cluster(t, in, out);
}

const char* name(CompressionType t) {
    return t == CompressionType::Zlib ? "zlib" : "zstd";
}

}  // namespace

TEST_CASE("compressed clusters round trip", "[compress]") {
    const auto type = GENERATE(CompressionType::Zlib, CompressionType::Zstd);
    const size_t cs = GENERATE(512u, 4096u, 65536u, 2u << 20);
    INFO(name(type) << " cluster size " << cs);
    for (const Bytes& data : {Bytes(cs), compressible(cs, 1), compressible(cs, 2)}) {
        const Bytes packed = compress(type, data);
        REQUIRE_FALSE(packed.empty());
        CHECK(packed.size() < data.size());
        Bytes out(cs, std::byte{0x77});
        REQUIRE(decompress(type, packed, out));
        CHECK(out == data);
    }
}

TEST_CASE("compressed data is what the format expects", "[compress]") {
    const Bytes data = compressible(65536, 3);
    SECTION("zlib is raw deflate without a zlib header") {
        const Bytes packed = compress(CompressionType::Zlib, data);
        // A zlib header would start with 0x78; raw deflate of this data starts a block.
        const bool zlib_header =
            (static_cast<unsigned>(packed[0]) & 0x0f) == 8 &&
            ((static_cast<unsigned>(packed[0]) << 8 | static_cast<unsigned>(packed[1])) % 31) == 0;
        CHECK_FALSE(zlib_header);
    }
    SECTION("zstd is a zstd frame") {
        const Bytes packed = compress(CompressionType::Zstd, data);
        REQUIRE(packed.size() > 4);
        uint32_t magic = 0;
        std::memcpy(&magic, packed.data(), 4);
        CHECK(magic == ZSTD_MAGICNUMBER);  // little-endian frame magic
        CHECK(ZSTD_getFrameContentSize(packed.data(), packed.size()) == data.size());
    }
}

TEST_CASE("incompressible clusters are not compressed", "[compress]") {
    const auto type = GENERATE(CompressionType::Zlib, CompressionType::Zstd);
    INFO(name(type));
    auto r = compress_cluster(type, random_bytes(65536, 4));
    REQUIRE(r);
    CHECK(r->empty());
    auto empty = compress_cluster(type, {});
    REQUIRE(empty);
    CHECK(empty->empty());
}

TEST_CASE("trailing bytes after the stream are ignored", "[compress]") {
    const auto type = GENERATE(CompressionType::Zlib, CompressionType::Zstd);
    INFO(name(type));
    const Bytes data = compressible(65536, 5);
    Bytes packed = compress(type, data);
    // The compressed size is only known in 512-byte sectors: pad with garbage past a sector.
    const Bytes garbage = random_bytes(512 + 511 - packed.size() % 512, 6);
    packed.insert(packed.end(), garbage.begin(), garbage.end());
    Bytes out(data.size());
    auto r = decompress(type, packed, out);
    INFO((r ? "" : r.error().message));
    REQUIRE(r);
    CHECK(out == data);
}

TEST_CASE("zstd data may span several frames", "[compress]") {
    const Bytes data = compressible(65536, 7);
    const Bytes first(data.begin(), data.begin() + 20000);
    const Bytes second(data.begin() + 20000, data.end());
    Bytes packed = compress(CompressionType::Zstd, first);
    const Bytes more = compress(CompressionType::Zstd, second);
    packed.insert(packed.end(), more.begin(), more.end());
    Bytes out(data.size());
    REQUIRE(decompress(CompressionType::Zstd, packed, out));
    CHECK(out == data);
}

TEST_CASE("a stream longer than the cluster fills the cluster", "[compress]") {
    const auto type = GENERATE(CompressionType::Zlib, CompressionType::Zstd);
    INFO(name(type));
    const Bytes data = compressible(131072, 8);
    const Bytes packed = compress(type, data);
    Bytes out(65536);
    REQUIRE(decompress(type, packed, out));
    CHECK(std::equal(out.begin(), out.end(), data.begin()));
}

TEST_CASE("truncated streams are errors", "[compress]") {
    const auto type = GENERATE(CompressionType::Zlib, CompressionType::Zstd);
    INFO(name(type));
    const Bytes data = compressible(65536, 9);
    const Bytes packed = compress(type, data);
    for (size_t keep : {size_t{0}, size_t{1}, packed.size() / 2, packed.size() * 3 / 4}) {
        INFO("kept " << keep << " of " << packed.size());
        const Bytes cut(packed.begin(), packed.begin() + static_cast<long>(keep));
        Bytes out(data.size());
        auto r = decompress(type, cut, out);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EIO);
        CHECK_THAT(r.error().message, Contains("compressed cluster"));
    }
    // Without its last byte a deflate stream may still hold every data byte (only the
    // end-of-block code is lost); then the cluster is complete and correct.
    {
        const Bytes cut(packed.begin(), packed.end() - 1);
        Bytes out(data.size());
        if (decompress(type, cut, out)) CHECK(out == data);
    }
    // A stream that ends before the cluster is full is short too.
    const Bytes small = compress(type, compressible(32768, 10));
    Bytes out(65536);
    auto r = decompress(type, small, out);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Contains("short of a cluster"));
}

TEST_CASE("garbage is an error", "[compress]") {
    const auto type = GENERATE(CompressionType::Zlib, CompressionType::Zstd);
    INFO(name(type));
    for (uint32_t seed = 0; seed < 20; ++seed) {
        const Bytes junk = random_bytes(4096, 100 + seed);
        Bytes out(65536);
        auto r = decompress(type, junk, out);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EIO);
    }
    // A damaged byte in the middle of a valid stream.
    const Bytes data = compressible(65536, 11);
    Bytes packed = compress(type, data);
    if (type == CompressionType::Zstd) {
        packed[0] ^= std::byte{0xff};  // frame magic
    } else {
        packed[0] = std::byte{0xff};  // reserved deflate block type 3
    }
    Bytes out(data.size());
    auto r = decompress(type, packed, out);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Contains("damaged"));
}

TEST_CASE("zstd garbage after a frame that did not fill the cluster is an error", "[compress]") {
    Bytes packed = compress(CompressionType::Zstd, compressible(32768, 12));
    const Bytes junk = random_bytes(600, 13);
    packed.insert(packed.end(), junk.begin(), junk.end());
    Bytes out(65536);
    auto r = decompress(CompressionType::Zstd, packed, out);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == EIO);
}
