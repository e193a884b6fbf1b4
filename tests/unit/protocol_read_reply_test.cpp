// The reply to a successful READ: simple reply, or structured OFFSET_DATA / OFFSET_HOLE / NONE
// chunks. Expected header bytes are written out by hand from the NBD specification
// (doc/proto.md, "Structured reply chunk message", "Structured reply types", NBD_CMD_READ).
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "protocol/read_reply.hpp"
#include "protocol/transmission.hpp"
#include "tests/unit/support/protocol_hex.hpp"

using namespace qnbd::nbd;
using namespace qnbd::nbd::test;

namespace {

const std::string kCookie = "0102030405060708";
constexpr uint64_t kCookieValue = 0x0102030405060708;
constexpr uint64_t kOffset = 0x100000;  // The request's offset: chunk offsets include it.

// Spaced hex of the fixed parts of each header; the 64-bit offset comes last in both content
// chunks, so absolute offsets stand out.
const std::string kData = "668e33ef 0000 0001" + kCookie;
const std::string kDataDone = "668e33ef 0001 0001" + kCookie;
const std::string kHole = "668e33ef 0000 0002" + kCookie + "0000000c";
const std::string kHoleDone = "668e33ef 0001 0002" + kCookie + "0000000c";

/// One expected part: header bytes as hex, then the read buffer range that follows it.
struct Want {
    std::string header;
    uint64_t data_offset = 0;
    uint64_t data_length = 0;
};

/// A structured read of 0x1000 bytes at kOffset.
ReadReply structured(uint32_t length = 0x1000) {
    return ReadReply{
        .cookie = kCookieValue, .offset = kOffset, .length = length, .structured = true};
}

void check_parts(const std::vector<ReadReplyPart>& got, const std::vector<Want>& want) {
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
        INFO("part " << i);
        CHECK(to_hex(got[i].header()) == hex(want[i].header));
        CHECK(got[i].data_offset == want[i].data_offset);
        CHECK(got[i].data_length == want[i].data_length);
    }
}

}  // namespace

TEST_CASE("read reply: no holes is one data chunk with DONE", "[protocol]") {
    check_parts(encode_read_reply(structured(), {}),
                {{kDataDone + "00001008 0000000000100000", 0, 0x1000}});
}

TEST_CASE("read reply: hole at the start", "[protocol]") {
    std::vector<ReadHole> holes{{0, 0x400}};
    check_parts(encode_read_reply(structured(), holes),
                {{kHole + "0000000000100000 00000400"},
                 {kDataDone + "00000c08 0000000000100400", 0x400, 0xc00}});
}

TEST_CASE("read reply: hole in the middle", "[protocol]") {
    std::vector<ReadHole> holes{{0x400, 0x400}};
    check_parts(encode_read_reply(structured(), holes),
                {{kData + "00000408 0000000000100000", 0, 0x400},
                 {kHole + "0000000000100400 00000400"},
                 {kDataDone + "00000808 0000000000100800", 0x800, 0x800}});
}

TEST_CASE("read reply: hole at the end carries DONE", "[protocol]") {
    std::vector<ReadHole> holes{{0xc00, 0x400}};
    check_parts(encode_read_reply(structured(), holes),
                {{kData + "00000c08 0000000000100000", 0, 0xc00},
                 {kHoleDone + "0000000000100c00 00000400"}});
}

TEST_CASE("read reply: adjacent holes are separate chunks with no data between", "[protocol]") {
    std::vector<ReadHole> holes{{0x200, 0x200}, {0x400, 0x600}, {0xa00, 0x200}};
    check_parts(encode_read_reply(structured(), holes),
                {{kData + "00000208 0000000000100000", 0, 0x200},
                 {kHole + "0000000000100200 00000200"},
                 {kHole + "0000000000100400 00000600"},
                 {kHole + "0000000000100a00 00000200"},
                 {kDataDone + "00000408 0000000000100c00", 0xc00, 0x400}});
}

TEST_CASE("read reply: all hole is one hole chunk with DONE", "[protocol]") {
    std::vector<ReadHole> holes{{0, 0x1000}};
    check_parts(encode_read_reply(structured(), holes),
                {{kHoleDone + "0000000000100000 00001000"}});
}

TEST_CASE("read reply: zero length is NBD_REPLY_TYPE_NONE", "[protocol]") {
    check_parts(encode_read_reply(structured(0), {}),
                {{"668e33ef 0001 0000" + kCookie + "00000000"}});
}

TEST_CASE("read reply: without structured replies, a simple reply then all data", "[protocol]") {
    ReadReply r{.cookie = kCookieValue, .offset = kOffset, .length = 0x1000};
    std::vector<ReadHole> holes{{0, 0x400}};
    CHECK_FALSE(r.uses_holes());
    check_parts(encode_read_reply(r, holes), {{"67446698 00000000" + kCookie, 0, 0x1000}});
    r.length = 0;
    check_parts(encode_read_reply(r, {}), {{"67446698 00000000" + kCookie, 0, 0}});
}

TEST_CASE("read reply: DF sends holes as data in one chunk", "[protocol]") {
    ReadReply r = structured();
    r.dont_fragment = true;
    CHECK_FALSE(r.uses_holes());
    CHECK(structured().uses_holes());
    std::vector<ReadHole> holes{{0, 0x400}, {0x800, 0x400}};
    check_parts(encode_read_reply(r, holes),
                {{kDataDone + "00001008 0000000000100000", 0, 0x1000}});
}

TEST_CASE("read reply: chunk offsets are absolute", "[protocol]") {
    ReadReply r = structured(0x3000);
    r.offset = 0x123456789a00;
    std::vector<ReadHole> holes{{0x1000, 0x1000}};
    check_parts(encode_read_reply(r, holes),
                {{kData + "00001008 0000123456789a00", 0, 0x1000},
                 {kHole + "000012345678aa00 00001000"},
                 {kDataDone + "00001008 000012345678ba00", 0x2000, 0x1000}});
}

TEST_CASE("read reply: holes that are empty, out of order or outside the read are data",
          "[protocol]") {
    std::vector<ReadHole> holes{{0x100, 0}, {0x400, 0x400}, {0x600, 0x400}, {0xe00, 0x400}};
    check_parts(encode_read_reply(structured(), holes),
                {{kData + "00000408 0000000000100000", 0, 0x400},
                 {kHole + "0000000000100400 00000400"},
                 {kDataDone + "00000808 0000000000100800", 0x800, 0x800}});
}

TEST_CASE("read reply: chunks tile the read and only the last carries DONE", "[protocol]") {
    const std::vector<std::vector<ReadHole>> cases{
        {},
        {{0, 0x200}},
        {{0xe00, 0x200}},
        {{0, 0x200}, {0x200, 0x200}, {0x800, 0x800}},
        {{0x200, 0x200}, {0x600, 0x200}, {0xa00, 0x200}}};
    for (const auto& holes : cases) {
        auto parts = encode_read_reply(structured(), holes);
        INFO(holes.size() << " holes");
        uint64_t pos = kOffset;
        for (size_t i = 0; i < parts.size(); ++i) {
            auto h = decode_chunk_header(parts[i].header().first(kChunkHeaderSize));
            REQUIRE(h);
            CHECK(h->cookie == kCookieValue);
            CHECK(h->flags == (i + 1 == parts.size() ? NBD_REPLY_FLAG_DONE : 0));
            const uint64_t at = load_be<uint64_t>(parts[i].header().data() + kChunkHeaderSize);
            CHECK(at == pos);
            if (h->type == NBD_REPLY_TYPE_OFFSET_DATA) {
                CHECK(h->length == parts[i].data_length + 8);
                CHECK(parts[i].data_offset == pos - kOffset);
                pos += parts[i].data_length;
            } else {
                REQUIRE(h->type == NBD_REPLY_TYPE_OFFSET_HOLE);
                CHECK(parts[i].data_length == 0);
                pos += load_be<uint32_t>(parts[i].header().data() + kChunkHeaderSize + 8);
            }
        }
        CHECK(pos == kOffset + 0x1000);
    }
}

TEST_CASE("read reply: a reply sent in pieces has DONE only on the last piece's last chunk",
          "[protocol]") {
    // Pieces [0, 0x800) and [0x800, 0x1000); a hole straddling the boundary is split by the
    // server into one run per piece, and a hole of the other piece is ignored.
    std::vector<ReadHole> first{{0x600, 0x200}, {0x900, 0x100}};
    check_parts(
        encode_read_reply_range(structured(), 0, 0x800, first),
        {{kData + "00000608 0000000000100000", 0, 0x600}, {kHole + "0000000000100600 00000200"}});
    std::vector<ReadHole> second{{0x800, 0x200}};
    check_parts(encode_read_reply_range(structured(), 0x800, 0x1000, second),
                {{kHole + "0000000000100800 00000200"},
                 {kDataDone + "00000608 0000000000100a00", 0xa00, 0x600}});
    check_parts(encode_read_reply_range(structured(), 0x800, 0x1000, {}),
                {{kDataDone + "00000808 0000000000100800", 0x800, 0x800}});
}
