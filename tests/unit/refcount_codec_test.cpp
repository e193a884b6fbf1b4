// Refcount entries of every width the format allows (refcount_order 0..6, 1 to 64 bits):
// packing (LSB first below a byte, big-endian from 16 bits up), neighbours left untouched,
// the largest value of each width and the number of entries per block.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "qcow2/refcount_codec.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::qcow2;

using Block = std::vector<std::byte>;

uint8_t byte_at(const Block& b, size_t i) {
    return static_cast<uint8_t>(b[i]);
}

/// An independent encoder: the value's bits placed one by one where the spec says. For widths
/// of 8 bits and more the entry is big-endian; below 8, entry i occupies bits
/// [i*w % 8, i*w % 8 + w) of byte i*w / 8, least significant bit first.
void reference_set(Block& b, uint64_t index, uint32_t order, uint64_t value) {
    const uint32_t w = 1u << order;
    for (uint32_t k = 0; k < w; ++k) {
        const bool bit = value >> k & 1;
        uint64_t pos;  // absolute bit position, bit 0 = LSB of byte 0
        if (w < 8) {
            pos = index * w + k;
        } else {
            const uint64_t byte = index * (w / 8) + (w / 8 - 1 - k / 8);  // big-endian byte
            pos = byte * 8 + k % 8;
        }
        auto& B = b[pos / 8];
        const auto mask = std::byte(static_cast<uint8_t>(1u << (pos % 8)));
        B = bit ? (B | mask) : (B & ~mask);
    }
}

Block patterned(size_t n, uint8_t seed) {
    Block b(n);
    for (size_t i = 0; i < n; ++i) b[i] = std::byte(static_cast<uint8_t>(seed + i * 37));
    return b;
}

}  // namespace

TEST_CASE("max_refcount for every order", "[refcount_codec]") {
    CHECK(max_refcount(0) == 1);
    CHECK(max_refcount(1) == 3);
    CHECK(max_refcount(2) == 15);
    CHECK(max_refcount(3) == 255);
    CHECK(max_refcount(4) == 65535);
    CHECK(max_refcount(5) == 0xffffffffULL);
    CHECK(max_refcount(6) == ~uint64_t{0});
    static_assert(max_refcount(6) == UINT64_MAX, "usable in constant expressions");
}

TEST_CASE("refcount_entries per block", "[refcount_codec]") {
    CHECK(refcount_entries(512, 0) == 4096);
    CHECK(refcount_entries(512, 4) == 256);
    CHECK(refcount_entries(512, 6) == 64);
    CHECK(refcount_entries(65536, 0) == 524288);
    CHECK(refcount_entries(65536, 3) == 65536);
    CHECK(refcount_entries(65536, 4) == 32768);
    CHECK(refcount_entries(65536, 5) == 16384);
    CHECK(refcount_entries(2u << 20, 6) == 262144);
}

TEST_CASE("sub-byte refcounts are packed LSB first", "[refcount_codec]") {
    Block b(4);
    SECTION("1 bit") {
        set_refcount(b.data(), 0, 0, 1);
        CHECK(byte_at(b, 0) == 0x01);
        set_refcount(b.data(), 7, 0, 1);
        CHECK(byte_at(b, 0) == 0x81);
        set_refcount(b.data(), 9, 0, 1);
        CHECK(byte_at(b, 1) == 0x02);
        set_refcount(b.data(), 0, 0, 0);
        CHECK(byte_at(b, 0) == 0x80);
        CHECK(get_refcount(b.data(), 7, 0) == 1);
        CHECK(get_refcount(b.data(), 8, 0) == 0);
        CHECK(get_refcount(b.data(), 9, 0) == 1);
    }
    SECTION("2 bits") {
        set_refcount(b.data(), 0, 1, 3);
        CHECK(byte_at(b, 0) == 0x03);
        set_refcount(b.data(), 1, 1, 2);
        CHECK(byte_at(b, 0) == 0x0b);
        set_refcount(b.data(), 3, 1, 1);
        CHECK(byte_at(b, 0) == 0x4b);
        set_refcount(b.data(), 5, 1, 3);
        CHECK(byte_at(b, 1) == 0x0c);
        CHECK(get_refcount(b.data(), 1, 1) == 2);
        CHECK(get_refcount(b.data(), 2, 1) == 0);
        CHECK(get_refcount(b.data(), 3, 1) == 1);
    }
    SECTION("4 bits") {
        set_refcount(b.data(), 0, 2, 0xa);
        set_refcount(b.data(), 1, 2, 0x5);
        CHECK(byte_at(b, 0) == 0x5a);
        set_refcount(b.data(), 3, 2, 0xf);
        CHECK(byte_at(b, 1) == 0xf0);
        CHECK(get_refcount(b.data(), 0, 2) == 0xa);
        CHECK(get_refcount(b.data(), 1, 2) == 0x5);
        CHECK(get_refcount(b.data(), 2, 2) == 0);
    }
}

TEST_CASE("byte and wider refcounts are big-endian", "[refcount_codec]") {
    Block b(32);
    SECTION("8 bits") {
        set_refcount(b.data(), 5, 3, 0xc3);
        CHECK(byte_at(b, 5) == 0xc3);
        CHECK(get_refcount(b.data(), 5, 3) == 0xc3);
    }
    SECTION("16 bits") {
        set_refcount(b.data(), 1, 4, 0x1234);
        CHECK(byte_at(b, 2) == 0x12);
        CHECK(byte_at(b, 3) == 0x34);
        CHECK(get_refcount(b.data(), 1, 4) == 0x1234);
    }
    SECTION("32 bits") {
        set_refcount(b.data(), 1, 5, 0x12345678);
        CHECK(byte_at(b, 4) == 0x12);
        CHECK(byte_at(b, 7) == 0x78);
        CHECK(get_refcount(b.data(), 1, 5) == 0x12345678);
    }
    SECTION("64 bits") {
        set_refcount(b.data(), 1, 6, 0x0102030405060708ULL);
        for (int i = 0; i < 8; ++i) CHECK(byte_at(b, 8 + i) == i + 1);
        CHECK(get_refcount(b.data(), 1, 6) == 0x0102030405060708ULL);
    }
    for (size_t i = 0; i < 2; ++i) CHECK(byte_at(b, i) == 0);  // entry 0 untouched
}

TEST_CASE("set_refcount changes only its own entry, for every order", "[refcount_codec]") {
    const uint32_t order = GENERATE(0u, 1u, 2u, 3u, 4u, 5u, 6u);
    INFO("refcount_order " << order);
    const size_t bytes = 64;
    const uint64_t entries = bytes * 8 >> order;
    const Block start = patterned(bytes, static_cast<uint8_t>(order * 11 + 1));
    // Every entry set to 0, to max and to a middle value, on a block of noise.
    for (uint64_t i = 0; i < entries; ++i) {
        for (uint64_t v : {uint64_t{0}, max_refcount(order), max_refcount(order) / 3 + 1}) {
            Block b = start;
            Block want = start;
            set_refcount(b.data(), i, order, v);
            reference_set(want, i, order, v);
            INFO("index " << i << " value " << v);
            REQUIRE(b == want);
            REQUIRE(get_refcount(b.data(), i, order) == v);
        }
    }
}

TEST_CASE("refcount blocks agree with a model after random updates", "[refcount_codec]") {
    const uint32_t order = GENERATE(0u, 1u, 2u, 3u, 4u, 5u, 6u);
    INFO("refcount_order " << order);
    const size_t bytes = 512;
    const uint64_t entries = refcount_entries(bytes, order);
    std::mt19937_64 rng(order + 1234);
    Block b(bytes), want(bytes);
    std::vector<uint64_t> model(entries, 0);
    for (int step = 0; step < 4000; ++step) {
        const uint64_t i = rng() % entries;
        const uint64_t v = order >= 6 ? rng() : rng() % (max_refcount(order) + 1);
        set_refcount(b.data(), i, order, v);
        reference_set(want, i, order, v);
        model[i] = v;
    }
    REQUIRE(b == want);
    for (uint64_t i = 0; i < entries; ++i) {
        INFO("index " << i);
        REQUIRE(get_refcount(b.data(), i, order) == model[i]);
    }
}

TEST_CASE("the last entry of a block is addressable", "[refcount_codec]") {
    const uint32_t order = GENERATE(0u, 1u, 2u, 3u, 4u, 5u, 6u);
    const size_t bytes = 512;
    const uint64_t last = refcount_entries(bytes, order) - 1;
    Block b(bytes);
    set_refcount(b.data(), last, order, max_refcount(order));
    CHECK(get_refcount(b.data(), last, order) == max_refcount(order));
    // The highest bits of the last byte hold it; nothing before them changed.
    CHECK((byte_at(b, bytes - 1) & 0x80) != 0);
    for (size_t i = 0; i + 8 < bytes; ++i) REQUIRE(byte_at(b, i) == 0);
}
