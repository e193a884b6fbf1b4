// Big-endian helpers, the bounded reader, wire strings and the names used in logs.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "protocol/bytes.hpp"
#include "protocol/constants.hpp"

using namespace qnbd::nbd;

TEST_CASE("protocol: big-endian loads and stores", "[protocol]") {
    std::array<std::byte, 8> b{};
    store_be<uint64_t>(b.data(), 0x0102030405060708);
    CHECK(b[0] == std::byte{1});
    CHECK(b[7] == std::byte{8});
    CHECK(load_be<uint64_t>(b.data()) == 0x0102030405060708);
    CHECK(load_be<uint32_t>(b.data() + 4) == 0x05060708);
    CHECK(load_be<uint16_t>(b.data() + 6) == 0x0708);
    store_be<uint16_t>(b.data(), 0xfffe);
    CHECK(b[0] == std::byte{0xff});
    CHECK(b[1] == std::byte{0xfe});
    static_assert(load_be<uint32_t>(std::array<std::byte, 4>{
                      std::byte{0x25}, std::byte{0x60}, std::byte{0x95},
                      std::byte{0x13}}.data()) == NBD_REQUEST_MAGIC);
}

TEST_CASE("protocol: Reader never reads past the end", "[protocol]") {
    std::vector<std::byte> in{std::byte{0}, std::byte{1}, std::byte{2}};
    Reader r(in);
    CHECK(r.remaining() == 3);
    CHECK_FALSE(r.be<uint32_t>());
    CHECK(r.remaining() == 3);  // A failed read consumes nothing.
    CHECK(r.be<uint16_t>() == 1);
    CHECK_FALSE(r.take(2));
    auto last = r.take(1);
    REQUIRE(last);
    CHECK((*last)[0] == std::byte{2});
    CHECK(r.empty());
    CHECK_FALSE(r.be<uint8_t>());
    CHECK(r.take(0));
}

TEST_CASE("protocol: Writer appends big-endian fields", "[protocol]") {
    ByteVector out{std::byte{0xaa}};
    Writer(out).be(uint16_t{0x0102}).be(uint32_t{3}).bytes(as_bytes("hi")).zeroes(2);
    CHECK(out == ByteVector{std::byte{0xaa}, std::byte{1}, std::byte{2}, std::byte{0}, std::byte{0},
                            std::byte{0}, std::byte{3}, std::byte{'h'}, std::byte{'i'},
                            std::byte{0}, std::byte{0}});
}

TEST_CASE("protocol: wire strings", "[protocol]") {
    CHECK(wire_string("") == "");
    CHECK(wire_string("plain") == "plain");
    CHECK(wire_string(std::string("a\0b\0", 4)) == "a?b?");
    CHECK(wire_string(std::string(4096, 'x')).size() == 4096);
    CHECK(wire_string(std::string(10000, 'x')).size() == 4096);
    SECTION("cut at a character boundary") {
        std::string three = std::string(4094, 'x') + "\xe2\x82\xac";  // U+20AC over the limit.
        CHECK(wire_string(three) == std::string(4094, 'x'));
        std::string four = std::string(4093, 'x') + "\xf0\x9f\x98\x80" + "tail";
        CHECK(wire_string(four) == std::string(4093, 'x'));
        std::string fits = std::string(4093, 'x') + "\xe2\x82\xac" + "tail";
        CHECK(wire_string(fits) == std::string(4093, 'x') + "\xe2\x82\xac");
    }
    SECTION("invalid UTF-8 is cut at the limit") {
        std::string junk(5000, '\x80');
        CHECK(wire_string(junk).size() == 4096);
    }
}

TEST_CASE("protocol: names for logs", "[protocol]") {
    CHECK(option_name(NBD_OPT_GO) == "NBD_OPT_GO");
    CHECK(option_name(NBD_OPT_SET_META_CONTEXT) == "NBD_OPT_SET_META_CONTEXT");
    CHECK(option_name(1000) == "unknown");
    CHECK(reply_type_name(NBD_REP_ERR_TOO_BIG) == "NBD_REP_ERR_TOO_BIG");
    CHECK(reply_type_name(NBD_REP_META_CONTEXT) == "NBD_REP_META_CONTEXT");
    CHECK(reply_type_name(0) == "unknown");
    CHECK(info_name(NBD_INFO_BLOCK_SIZE) == "NBD_INFO_BLOCK_SIZE");
    CHECK(info_name(7) == "unknown");
    CHECK(command_name(NBD_CMD_WRITE_ZEROES) == "NBD_CMD_WRITE_ZEROES");
    CHECK(command_name(77) == "unknown");
    CHECK(chunk_type_name(NBD_REPLY_TYPE_ERROR_OFFSET) == "NBD_REPLY_TYPE_ERROR_OFFSET");
    CHECK(chunk_type_name(3) == "unknown");
    CHECK(error_name(NBD_ESHUTDOWN) == "NBD_ESHUTDOWN");
    CHECK(error_name(NBD_SUCCESS) == "NBD_SUCCESS");
    CHECK(error_name(2) == "unknown");
    for (uint32_t opt = 1; opt <= 11; ++opt) CHECK(option_name(opt) != "unknown");
    for (uint16_t cmd = 0; cmd <= 8; ++cmd) CHECK(command_name(cmd) != "unknown");
}

TEST_CASE("protocol: constants match the specification", "[protocol]") {
    // Spot checks of values typed independently from doc/proto.md.
    CHECK(NBDMAGIC == 0x4e42444d41474943ull);
    CHECK(IHAVEOPT == 0x49484156454F5054ull);
    CHECK(NBD_REP_MAGIC == 0x3e889045565a9ull);
    CHECK(NBD_REP_ERR_TOO_BIG == (1u << 31) + 9);
    CHECK(NBD_REPLY_TYPE_ERROR == 32769);
    CHECK(NBD_REPLY_TYPE_ERROR_OFFSET == 32770);
    CHECK(NBD_FLAG_SEND_FAST_ZERO == 2048);
    CHECK(NBD_CMD_FLAG_FAST_ZERO == 16);
    CHECK(kMaxPayload == 33554432);
}
