// Transmission framing: request headers, simple replies, structured reply chunks. Expected bytes
// are written out by hand from the NBD specification.
#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/transmission.hpp"
#include "tests/unit/support/protocol_hex.hpp"

using namespace qnbd::nbd;
using namespace qnbd::nbd::test;

namespace {

const std::string kCookie = "0102030405060708";
constexpr uint64_t kCookieValue = 0x0102030405060708;

}  // namespace

TEST_CASE("protocol: request header decode", "[protocol]") {
    auto in = bytes("25609513 0001 0001 0102030405060708 0000000000001000 00010000");
    auto r = decode_request(in);
    REQUIRE(r);
    CHECK(r->flags == NBD_CMD_FLAG_FUA);
    CHECK(r->type == NBD_CMD_WRITE);
    CHECK(r->cookie == kCookieValue);
    CHECK(r->offset == 0x1000);
    CHECK(r->length == 0x10000);
    CHECK(to_hex(encode_request(*r)) == to_hex(in));

    SECTION("unknown commands and flags still decode") {
        auto u =
            decode_request(bytes("25609513 ffff 00ff ffffffffffffffff ffffffffffffffff ffffffff"));
        REQUIRE(u);
        CHECK(*u == Request{0xffff, 0x00ff, ~0ull, ~0ull, ~0u});
    }
    SECTION("bad magic is fatal") {
        for (const char* magic : {"25609514", "12560953", "67446698", "21e41c71", "00000000"}) {
            INFO(magic);
            auto bad = decode_request(
                bytes(std::string(magic) + "0000 0000 0000000000000000 0000000000000000 00000000"));
            REQUIRE_FALSE(bad);
            CHECK(bad.error().fatal());
        }
    }
    SECTION("wrong sizes are fatal") {
        CHECK_FALSE(decode_request(Bytes(in).first(27)));
        auto longer = in;
        longer.push_back(std::byte{0});
        CHECK_FALSE(decode_request(longer));
        CHECK_FALSE(decode_request({}));
    }
    SECTION("round trip of every field") {
        Request req{NBD_CMD_FLAG_DF, NBD_CMD_READ, 0xfedcba9876543210, 0x123456789a, 512};
        auto dec = decode_request(encode_request(req));
        REQUIRE(dec);
        CHECK(*dec == req);
    }
}

TEST_CASE("protocol: simple reply", "[protocol]") {
    CHECK(to_hex(encode_simple_reply(0, kCookieValue)) == hex("67446698 00000000" + kCookie));
    CHECK(to_hex(encode_simple_reply(NBD_EINVAL, kCookieValue)) ==
          hex("67446698 00000016" + kCookie));
    auto dec = decode_simple_reply(encode_simple_reply(NBD_ENOSPC, 7));
    REQUIRE(dec);
    CHECK(*dec == SimpleReply{NBD_ENOSPC, 7});
    CHECK_FALSE(decode_simple_reply(bytes("668e33ef 00000000" + kCookie)));
    CHECK_FALSE(decode_simple_reply(bytes("67446698 00000000")));
}

TEST_CASE("protocol: structured reply chunk header", "[protocol]") {
    ChunkHeader h{NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, kCookieValue, 12};
    CHECK(to_hex(encode_chunk_header(h)) == hex("668e33ef 0001 0005" + kCookie + "0000000c"));
    auto dec = decode_chunk_header(encode_chunk_header(h));
    REQUIRE(dec);
    CHECK(*dec == h);
    CHECK_FALSE(decode_chunk_header(bytes("67446698 0001 0005" + kCookie + "0000000c")));
    CHECK_FALSE(decode_chunk_header(bytes("668e33ef 0001 0005" + kCookie + "0000")));
}

TEST_CASE("protocol: NBD_REPLY_TYPE_NONE", "[protocol]") {
    CHECK(to_hex(encode_chunk_none(kCookieValue)) ==
          hex("668e33ef 0001 0000" + kCookie + "00000000"));
}

TEST_CASE("protocol: NBD_REPLY_TYPE_OFFSET_DATA header", "[protocol]") {
    // Length covers the 8-byte offset plus the data the caller sends separately.
    auto h = encode_offset_data_header(0, kCookieValue, 0x200000, 4096);
    CHECK(to_hex(h) == hex("668e33ef 0000 0001" + kCookie + "00001008 0000000000200000"));
    auto done = encode_offset_data_header(NBD_REPLY_FLAG_DONE, kCookieValue, 0, 1);
    CHECK(to_hex(done) == hex("668e33ef 0001 0001" + kCookie + "00000009 0000000000000000"));
    auto biggest = encode_offset_data_header(0, 0, 0, 0xffffffffu - 8);
    CHECK(to_hex(Bytes(biggest).subspan(16, 4)) == "ffffffff");
}

TEST_CASE("protocol: NBD_REPLY_TYPE_OFFSET_HOLE", "[protocol]") {
    auto h = encode_offset_hole(NBD_REPLY_FLAG_DONE, kCookieValue, 0x10000, 0x20000);
    CHECK(to_hex(h) == hex("668e33ef 0001 0002" + kCookie + "0000000c 0000000000010000 00020000"));
}

TEST_CASE("protocol: NBD_REPLY_TYPE_BLOCK_STATUS", "[protocol]") {
    std::vector<BlockDescriptor> d{{0x10000, 0}, {0x30000, NBD_STATE_HOLE | NBD_STATE_ZERO}};
    auto c = encode_block_status(NBD_REPLY_FLAG_DONE, kCookieValue, 1, d);
    CHECK(to_hex(c) == hex("668e33ef 0001 0005" + kCookie + "00000014 00000001" +
                           "00010000 00000000 00030000 00000003"));
    auto one = encode_block_status(0, kCookieValue, 2, std::vector<BlockDescriptor>{{512, 2}});
    CHECK(to_hex(one) ==
          hex("668e33ef 0000 0005" + kCookie + "0000000c 00000002 00000200 00000002"));
    auto header = decode_chunk_header(Bytes(c).first(kChunkHeaderSize));
    REQUIRE(header);
    CHECK(header->length + kChunkHeaderSize == c.size());
}

TEST_CASE("protocol: NBD_REPLY_TYPE_ERROR", "[protocol]") {
    auto c = encode_error_chunk(NBD_REPLY_FLAG_DONE, kCookieValue, NBD_EIO, "bad");
    CHECK(to_hex(c) == hex("668e33ef 0001 8001" + kCookie + "00000009 00000005 0003 626164"));
    auto bare = encode_error_chunk(NBD_REPLY_FLAG_DONE, kCookieValue, NBD_EINVAL);
    CHECK(to_hex(bare) == hex("668e33ef 0001 8001" + kCookie + "00000006 00000016 0000"));

    SECTION("messages are cut to 4096 bytes at a character boundary") {
        std::string m(4095, 'a');
        m += "\xc3\xa9";  // A 2-byte character straddling the limit.
        auto cut = encode_error_chunk(NBD_REPLY_FLAG_DONE, 1, NBD_EIO, m);
        CHECK(cut.size() == kChunkHeaderSize + 6 + 4095);
        CHECK(to_hex(Bytes(cut).subspan(kChunkHeaderSize + 4, 2)) == "0fff");
        auto full = encode_error_chunk(NBD_REPLY_FLAG_DONE, 1, NBD_EIO, std::string(9000, 'b'));
        CHECK(to_hex(Bytes(full).subspan(kChunkHeaderSize + 4, 2)) == "1000");
    }
}

TEST_CASE("protocol: NBD_REPLY_TYPE_ERROR_OFFSET", "[protocol]") {
    auto c = encode_error_offset_chunk(0, kCookieValue, NBD_EIO, "io", 0x4000);
    CHECK(to_hex(c) ==
          hex("668e33ef 0000 8002" + kCookie + "00000010 00000005 0002 696f" + "0000000000004000"));
    auto bare = encode_error_offset_chunk(NBD_REPLY_FLAG_DONE, kCookieValue, NBD_ENOSPC, "", 1);
    CHECK(to_hex(bare) ==
          hex("668e33ef 0001 8002" + kCookie + "0000000e 0000001c 0000 0000000000000001"));
}
