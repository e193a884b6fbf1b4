// Handshake framing: greeting, client flags, option headers, payload plans, option replies.
// Expected bytes are written out by hand from the NBD specification.
#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/handshake.hpp"
#include "tests/unit/support/protocol_hex.hpp"

using namespace qnbd::nbd;
using namespace qnbd::nbd::test;

namespace {}  // namespace

TEST_CASE("protocol: greeting is NBDMAGIC then IHAVEOPT then FIXED_NEWSTYLE and NO_ZEROES",
          "[protocol]") {
    CHECK(to_hex(encode_greeting()) == hex("4e42444d41474943 49484156454f5054 0003"));
    CHECK(to_hex(encode_greeting(NBD_FLAG_FIXED_NEWSTYLE)) ==
          hex("4e42444d41474943 49484156454f5054 0001"));
}

TEST_CASE("protocol: client flags decode", "[protocol]") {
    SECTION("both flags") {
        auto f = decode_client_flags(bytes("00000003"));
        REQUIRE(f);
        CHECK(f->fixed_newstyle);
        CHECK(f->no_zeroes);
    }
    SECTION("no flags (plain newstyle client)") {
        auto f = decode_client_flags(bytes("00000000"));
        REQUIRE(f);
        CHECK(*f == ClientFlags{false, false});
    }
    SECTION("fixed newstyle only") {
        auto f = decode_client_flags(bytes("00000001"));
        REQUIRE(f);
        CHECK(*f == ClientFlags{true, false});
    }
    SECTION("unknown flags are fatal") {
        for (const char* in : {"00000004", "80000000", "00000103", "ffffffff"}) {
            auto f = decode_client_flags(bytes(in));
            REQUIRE_FALSE(f);
            CHECK(f.error().fatal());
        }
    }
    SECTION("NO_ZEROES is refused when the server did not offer it") {
        auto f = decode_client_flags(bytes("00000002"), NBD_FLAG_FIXED_NEWSTYLE);
        REQUIRE_FALSE(f);
        CHECK(f.error().fatal());
        CHECK(decode_client_flags(bytes("00000001"), NBD_FLAG_FIXED_NEWSTYLE));
    }
    SECTION("wrong sizes are fatal") {
        CHECK_FALSE(decode_client_flags(bytes("000000")));
        CHECK_FALSE(decode_client_flags(bytes("0000000300")));
        CHECK_FALSE(decode_client_flags({}));
    }
    SECTION("encode round trip") {
        for (bool a : {false, true})
            for (bool b : {false, true}) {
                auto enc = encode_client_flags({a, b});
                auto dec = decode_client_flags(enc);
                REQUIRE(dec);
                CHECK(*dec == ClientFlags{a, b});
            }
        CHECK(to_hex(encode_client_flags({true, true})) == "00000003");
    }
}

TEST_CASE("protocol: option header decode", "[protocol]") {
    auto h = decode_option_header(bytes("49484156454f5054 00000007 00000010"));
    REQUIRE(h);
    CHECK(h->option == NBD_OPT_GO);
    CHECK(h->length == 16);
    CHECK(to_hex(encode_option_header(*h)) == hex("49484156454f5054 00000007 00000010"));

    SECTION("wrong magic is fatal") {
        auto bad = decode_option_header(bytes("49484156454f5055 00000007 00000010"));
        REQUIRE_FALSE(bad);
        CHECK(bad.error().fatal());
        // The reply magic is not an option magic either.
        CHECK_FALSE(decode_option_header(bytes("0003e889045565a9 00000007 00000010")));
    }
    SECTION("short and long buffers are fatal") {
        CHECK_FALSE(decode_option_header(bytes("49484156454f5054 00000007 000000")));
        CHECK_FALSE(decode_option_header(bytes("49484156454f5054 00000007 00000010 00")));
    }
    SECTION("unknown options and huge lengths still decode") {
        auto u = decode_option_header(bytes("49484156454f5054 deadbeef ffffffff"));
        REQUIRE(u);
        CHECK(*u == OptionHeader{0xdeadbeef, 0xffffffff});
    }
}

TEST_CASE("protocol: option payload plans", "[protocol]") {
    using A = PayloadAction;
    CHECK(plan_option_payload({NBD_OPT_GO, 0}).action == A::Read);
    CHECK(plan_option_payload({NBD_OPT_GO, kMaxOptionPayload}).action == A::Read);
    auto big = plan_option_payload({NBD_OPT_GO, kMaxOptionPayload + 1});
    CHECK(big.action == A::Discard);
    CHECK(big.reply == NBD_REP_ERR_TOO_BIG);
    auto meta = plan_option_payload({NBD_OPT_SET_META_CONTEXT, kMaxOptionDiscard});
    CHECK(meta.action == A::Discard);
    CHECK(meta.reply == NBD_REP_ERR_TOO_BIG);
    CHECK(plan_option_payload({NBD_OPT_GO, kMaxOptionDiscard + 1}).action == A::Disconnect);

    SECTION("unknown options are discarded and answered UNSUP") {
        for (uint32_t opt : {0u, NBD_OPT_PEEK_EXPORT, NBD_OPT_EXTENDED_HEADERS, 12u, 0xffffffffu}) {
            auto p = plan_option_payload({opt, 100});
            CHECK(p.action == A::Discard);
            CHECK(p.reply == NBD_REP_ERR_UNSUP);
        }
        CHECK(plan_option_payload({99, kMaxOptionDiscard + 1}).action == A::Disconnect);
    }
    SECTION("EXPORT_NAME cannot be answered with an error") {
        CHECK(plan_option_payload({NBD_OPT_EXPORT_NAME, kMaxStringLength}).action == A::Read);
        CHECK(plan_option_payload({NBD_OPT_EXPORT_NAME, kMaxStringLength + 1}).action ==
              A::Disconnect);
    }
    SECTION("known option list") {
        for (uint32_t opt = 1; opt <= 10; ++opt)
            CHECK(is_known_option(opt) == (opt != NBD_OPT_PEEK_EXPORT));
        CHECK_FALSE(is_known_option(0));
        CHECK_FALSE(is_known_option(NBD_OPT_EXTENDED_HEADERS));
    }
}

TEST_CASE("protocol: option replies", "[protocol]") {
    const std::string magic = "0003e889045565a9";
    SECTION("ACK") {
        CHECK(to_hex(encode_rep_ack(NBD_OPT_GO)) == hex(magic + "00000007 00000001 00000000"));
        CHECK(to_hex(encode_rep_ack(NBD_OPT_ABORT)) == hex(magic + "00000002 00000001 00000000"));
    }
    SECTION("SERVER: name length, name, description") {
        CHECK(to_hex(encode_rep_server(NBD_OPT_LIST, "a", "bc")) ==
              hex(magic + "00000003 00000002 00000007 00000001 61 6263"));
        CHECK(to_hex(encode_rep_server(NBD_OPT_LIST, "")) ==
              hex(magic + "00000003 00000002 00000004 00000000"));
    }
    SECTION("INFO_EXPORT: length 12, size, transmission flags") {
        CHECK(to_hex(encode_info_export(NBD_OPT_GO, 0x100000, 0x0005)) ==
              hex(magic + "00000007 00000003 0000000c 0000 0000000000100000 0005"));
    }
    SECTION("INFO_NAME and INFO_DESCRIPTION") {
        CHECK(to_hex(encode_info_name(NBD_OPT_INFO, "disk")) ==
              hex(magic + "00000006 00000003 00000006 0001 6469736b"));
        CHECK(to_hex(encode_info_description(NBD_OPT_GO, "hi")) ==
              hex(magic + "00000007 00000003 00000004 0002 6869"));
        CHECK(to_hex(encode_info_name(NBD_OPT_GO, "")) ==
              hex(magic + "00000007 00000003 00000002 0001"));
    }
    SECTION("INFO_BLOCK_SIZE: length 14, minimum, preferred, maximum") {
        CHECK(to_hex(encode_info_block_size(NBD_OPT_GO, {1, 4096, 32u << 20})) ==
              hex(magic + "00000007 00000003 0000000e 0003 00000001 00001000 02000000"));
    }
    SECTION("META_CONTEXT: id and name") {
        CHECK(to_hex(encode_rep_meta_context(NBD_OPT_SET_META_CONTEXT, 1, "base:allocation")) ==
              hex(magic + "0000000a 00000004 00000013 00000001 626173653a616c6c6f636174696f6e"));
        CHECK(to_hex(encode_rep_meta_context(NBD_OPT_LIST_META_CONTEXT, 0, "qemu:")) ==
              hex(magic + "00000009 00000004 00000009 00000000 71656d753a"));
    }
}

TEST_CASE("protocol: option error replies", "[protocol]") {
    const std::string magic = "0003e889045565a9";
    CHECK(to_hex(encode_rep_error(99, NBD_REP_ERR_UNSUP)) ==
          hex(magic + "00000063 80000001 00000000"));
    CHECK(to_hex(encode_rep_error(NBD_OPT_LIST, NBD_REP_ERR_INVALID, "nope")) ==
          hex(magic + "00000003 80000003 00000004 6e6f7065"));

    struct Case {
        uint32_t type;
        const char* hex_type;
    };
    for (Case c :
         {Case{NBD_REP_ERR_UNSUP, "80000001"}, Case{NBD_REP_ERR_POLICY, "80000002"},
          Case{NBD_REP_ERR_INVALID, "80000003"}, Case{NBD_REP_ERR_PLATFORM, "80000004"},
          Case{NBD_REP_ERR_TLS_REQD, "80000005"}, Case{NBD_REP_ERR_UNKNOWN, "80000006"},
          Case{NBD_REP_ERR_SHUTDOWN, "80000007"}, Case{NBD_REP_ERR_BLOCK_SIZE_REQD, "80000008"},
          Case{NBD_REP_ERR_TOO_BIG, "80000009"}, Case{NBD_REP_ERR_EXT_HEADER_REQD, "8000000a"}}) {
        INFO(reply_type_name(c.type));
        CHECK(to_hex(encode_rep_error(NBD_OPT_GO, c.type, "x")) ==
              hex(magic + "00000007" + c.hex_type + "00000001 78"));
        CHECK(reply_type_name(c.type) != "unknown");
    }

    SECTION("messages are limited to 4096 bytes and never carry NUL") {
        auto long_reply = encode_rep_error(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, std::string(5000, 'x'));
        CHECK(long_reply.size() == kOptionReplyHeaderSize + 4096);
        auto header = decode_option_reply_header(Bytes(long_reply).first(kOptionReplyHeaderSize));
        REQUIRE(header);
        CHECK(header->length == 4096);
        auto nul = encode_rep_error(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, std::string("a\0b", 3));
        CHECK(to_hex(Bytes(nul).subspan(kOptionReplyHeaderSize)) == "613f62");
    }
}

TEST_CASE("protocol: option reply header round trip", "[protocol]") {
    auto enc = encode_option_reply_header(NBD_OPT_GO, NBD_REP_INFO, 12);
    CHECK(to_hex(enc) == hex("0003e889045565a9 00000007 00000003 0000000c"));
    auto dec = decode_option_reply_header(enc);
    REQUIRE(dec);
    CHECK(*dec == OptionReplyHeader{NBD_OPT_GO, NBD_REP_INFO, 12});
    enc[0] = std::byte{1};
    CHECK_FALSE(decode_option_reply_header(enc));
    CHECK_FALSE(decode_option_reply_header(Bytes(enc).first(19)));
}

TEST_CASE("protocol: NBD_OPT_EXPORT_NAME reply", "[protocol]") {
    auto with_zeroes = encode_export_name_reply(0x40000000, 0x0c6d, false);
    CHECK(with_zeroes.size() == 134);
    CHECK(to_hex(with_zeroes) == hex("0000000040000000 0c6d") + std::string(248, '0'));
    auto without = encode_export_name_reply(0x40000000, 0x0c6d, true);
    CHECK(to_hex(without) == hex("0000000040000000 0c6d"));
}

TEST_CASE("protocol: transmission flags", "[protocol]") {
    ExportFeatures rw;  // Defaults: writable, flush, fua, trim, zeroes, fast zero, cache.
    CHECK(transmission_flags(rw, false) ==
          (NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
           NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_CACHE | NBD_FLAG_SEND_FAST_ZERO));
    CHECK(transmission_flags(rw, false) == 0x0c6d);
    CHECK(transmission_flags(rw, true) == 0x0ced);  // SEND_DF only with structured replies.

    ExportFeatures ro;
    ro.read_only = true;
    ro.multi_conn = true;
    CHECK(transmission_flags(ro, true) ==
          (NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
           NBD_FLAG_SEND_DF | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE));

    ExportFeatures bare{.flush = false,
                        .fua = false,
                        .trim = false,
                        .write_zeroes = false,
                        .fast_zero = true,  // Ignored without write_zeroes.
                        .cache = false,
                        .rotational = true};
    CHECK(transmission_flags(bare, false) == (NBD_FLAG_HAS_FLAGS | NBD_FLAG_ROTATIONAL));
}
