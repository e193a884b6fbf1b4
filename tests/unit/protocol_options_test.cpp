// Option payload decoders: well-formed payloads written out by hand from the specification,
// and every kind of malformed payload.
#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/options.hpp"

using namespace qnbd::nbd;

namespace {

/// Bytes from hex text; spaces group fields and are ignored.
std::vector<std::byte> bytes(std::string_view s) {
    std::string h;
    for (char c : s)
        if (c != ' ') h += c;
    std::vector<std::byte> out;
    for (size_t i = 0; i + 1 < h.size(); i += 2)
        out.push_back(static_cast<std::byte>(std::stoul(h.substr(i, 2), nullptr, 16)));
    return out;
}

/// Big-endian bytes of a 32-bit value.
std::vector<std::byte> be32(uint32_t v) {
    return {std::byte(v >> 24), std::byte(v >> 16), std::byte(v >> 8), std::byte(v)};
}

std::vector<std::byte> cat(std::initializer_list<std::vector<std::byte>> parts) {
    std::vector<std::byte> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

std::vector<std::byte> text(std::string_view s) {
    Bytes b = as_bytes(s);
    return {b.begin(), b.end()};
}

/// Checks that `d` was rejected with NBD_REP_ERR_INVALID.
template <class T>
void require_invalid(const Decoded<T>& d) {
    REQUIRE_FALSE(d);
    CHECK(d.error().reply == NBD_REP_ERR_INVALID);
    CHECK_FALSE(d.error().message.empty());
}

}  // namespace

TEST_CASE("protocol: NBD_OPT_EXPORT_NAME payload", "[protocol]") {
    auto d = decode_export_name(bytes("6469736b"));
    REQUIRE(d);
    CHECK(d->name == "disk");
    auto empty = decode_export_name({});
    REQUIRE(empty);
    CHECK(empty->name.empty());
    CHECK(decode_export_name(std::vector<std::byte>(4096, std::byte{'a'})));

    SECTION("too long or NUL is fatal: EXPORT_NAME cannot be answered with an error") {
        auto too_long = decode_export_name(std::vector<std::byte>(4097, std::byte{'a'}));
        REQUIRE_FALSE(too_long);
        CHECK(too_long.error().fatal());
        auto nul = decode_export_name(bytes("6100 62"));
        REQUIRE_FALSE(nul);
        CHECK(nul.error().fatal());
    }
}

TEST_CASE("protocol: options without payload", "[protocol]") {
    CHECK(decode_empty({}));
    require_invalid(decode_empty(bytes("00")));
    for (uint32_t opt : {NBD_OPT_LIST, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY}) {
        INFO(option_name(opt));
        CHECK(decode_option(opt, {}));
        require_invalid(decode_option(opt, bytes("00000000")));
    }
    SECTION("ABORT ignores any data") {
        auto a = decode_option(NBD_OPT_ABORT, bytes("01020304"));
        REQUIRE(a);
        CHECK(std::holds_alternative<AbortOption>(*a));
        CHECK(decode_option(NBD_OPT_ABORT, {}));
    }
}

TEST_CASE("protocol: NBD_OPT_INFO / NBD_OPT_GO payload", "[protocol]") {
    SECTION("name and three info requests") {
        auto d = decode_info_request(bytes("00000004 6469736b 0003 0003 0001 0000"));
        REQUIRE(d);
        CHECK(d->name == "disk");
        CHECK(d->requests ==
              std::vector<uint16_t>{NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME, NBD_INFO_EXPORT});
        CHECK(d->wants(NBD_INFO_BLOCK_SIZE));
        CHECK_FALSE(d->wants(NBD_INFO_DESCRIPTION));
    }
    SECTION("default export, no info requests") {
        auto d = decode_info_request(bytes("00000000 0000"));
        REQUIRE(d);
        CHECK(*d == InfoRequest{"", {}});
    }
    SECTION("unknown info types are kept (and ignored by the server)") {
        auto d = decode_info_request(bytes("00000000 0001 beef"));
        REQUIRE(d);
        CHECK(d->requests == std::vector<uint16_t>{0xbeef});
    }
    SECTION("round trip through the client encoder") {
        InfoRequest r{"some export", {NBD_INFO_EXPORT, NBD_INFO_DESCRIPTION}};
        auto enc = encode_info_request(r);
        CHECK(enc == bytes("0000000b 736f6d65206578706f7274 0002 0000 0002"));
        auto d = decode_option(NBD_OPT_GO, enc);
        REQUIRE(d);
        REQUIRE(std::holds_alternative<InfoRequest>(*d));
        CHECK(std::get<InfoRequest>(*d) == r);
    }
    SECTION("malformed") {
        require_invalid(decode_info_request({}));
        require_invalid(decode_info_request(bytes("00000000 00")));             // Shorter than 6.
        require_invalid(decode_info_request(bytes("00000005 6469736b 0000")));  // Name past end.
        require_invalid(decode_info_request(bytes("ffffffff 0000")));           // Huge name length.
        require_invalid(decode_info_request(bytes("00000004 6469736b 00")));  // No room for count.
        require_invalid(decode_info_request(bytes("00000005 6469736b00 00")));
        require_invalid(decode_info_request(bytes("00000004 6469736b 0002 0001")));       // 1 of 2.
        require_invalid(decode_info_request(bytes("00000004 6469736b 0001 0001 0002")));  // Extra.
        require_invalid(decode_info_request(bytes("00000004 6469736b 0001 0001 00")));    // Odd.
        require_invalid(decode_info_request(bytes("00000004 6469736b 0000 00")));  // Trailing.
        require_invalid(decode_info_request(bytes("00000003 6469736b 0000")));  // Name too short.
        require_invalid(decode_info_request(bytes("00000004 64690073 0000")));  // NUL in name.
    }
    SECTION("names up to 4096 bytes; longer is invalid") {
        auto ok = cat({be32(4096), std::vector<std::byte>(4096, std::byte{'n'}), bytes("0000")});
        CHECK(decode_info_request(ok));
        auto too_long =
            cat({be32(4097), std::vector<std::byte>(4097, std::byte{'n'}), bytes("0000")});
        require_invalid(decode_info_request(too_long));
    }
}

TEST_CASE("protocol: meta context option payload", "[protocol]") {
    SECTION("two queries") {
        auto in = bytes(
            "00000004 6469736b 00000002 0000000f 626173653a616c6c6f636174696f6e"
            "00000005 71656d753a");
        auto d = decode_meta_context_request(in);
        REQUIRE(d);
        CHECK(d->name == "disk");
        CHECK(d->queries == std::vector<std::string>{"base:allocation", "qemu:"});
    }
    SECTION("no queries, default export") {
        auto d = decode_meta_context_request(bytes("00000000 00000000"));
        REQUIRE(d);
        CHECK(*d == MetaContextRequest{"", {}});
    }
    SECTION("empty query string") {
        auto d = decode_meta_context_request(bytes("00000000 00000001 00000000"));
        REQUIRE(d);
        CHECK(d->queries == std::vector<std::string>{""});
    }
    SECTION("round trip through the client encoder") {
        MetaContextRequest r{"x", {"base:allocation", "qemu:allocation-depth", "other:"}};
        for (uint32_t opt : {NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT}) {
            auto d = decode_option(opt, encode_meta_context_request(r));
            REQUIRE(d);
            REQUIRE(std::holds_alternative<MetaContextRequest>(*d));
            CHECK(std::get<MetaContextRequest>(*d) == r);
        }
    }
    SECTION("strings up to 4096 bytes; longer is invalid") {
        auto q = [](uint32_t n) {
            return cat(
                {bytes("00000000 00000001"), be32(n), std::vector<std::byte>(n, std::byte{'q'})});
        };
        CHECK(decode_meta_context_request(q(4096)));
        require_invalid(decode_meta_context_request(q(4097)));
        auto long_name =
            cat({be32(4097), std::vector<std::byte>(4097, std::byte{'n'}), bytes("00000000")});
        require_invalid(decode_meta_context_request(long_name));
    }
}

TEST_CASE("protocol: meta context option malformed payloads", "[protocol]") {
    require_invalid(decode_meta_context_request({}));
    require_invalid(decode_meta_context_request(bytes("00000000 000000")));    // < 8 bytes.
    require_invalid(decode_meta_context_request(bytes("00000001 00000000")));  // Name past end.
    require_invalid(decode_meta_context_request(bytes("fffffff0 00000000")));
    // Count says 3 queries, only 2 present.
    require_invalid(
        decode_meta_context_request(bytes("00000000 00000003 00000002 613a 00000002 623a")));
    // Count says 1, 2 present: trailing bytes.
    require_invalid(
        decode_meta_context_request(bytes("00000000 00000001 00000002 613a 00000002 623a")));
    // Query length past the end.
    require_invalid(decode_meta_context_request(bytes("00000000 00000001 00000003 613a")));
    // Query length field itself truncated.
    require_invalid(decode_meta_context_request(bytes("00000000 00000001 000000")));
    // Trailing garbage after the last query.
    require_invalid(decode_meta_context_request(bytes("00000000 00000001 00000002 613a 00")));
    // Trailing garbage with no queries.
    require_invalid(decode_meta_context_request(bytes("00000000 00000000 00")));
    // Absurd count with little data must not allocate or read out of bounds.
    require_invalid(decode_meta_context_request(bytes("00000000 ffffffff 00000000")));
    // NUL inside a query or the name.
    require_invalid(decode_meta_context_request(bytes("00000000 00000001 00000002 6100")));
    require_invalid(decode_meta_context_request(bytes("00000001 00 00000000")));
}

TEST_CASE("protocol: decode_option dispatch", "[protocol]") {
    auto name = decode_option(NBD_OPT_EXPORT_NAME, text("disk"));
    REQUIRE(name);
    CHECK(std::get<ExportNameOption>(*name).name == "disk");
    CHECK(std::holds_alternative<ListOption>(*decode_option(NBD_OPT_LIST, {})));
    CHECK(std::holds_alternative<StartTlsOption>(*decode_option(NBD_OPT_STARTTLS, {})));
    CHECK(std::holds_alternative<StructuredReplyOption>(
        *decode_option(NBD_OPT_STRUCTURED_REPLY, {})));
    CHECK(std::holds_alternative<InfoRequest>(*decode_option(NBD_OPT_INFO, bytes("000000000000"))));

    for (uint32_t opt : {0u, NBD_OPT_PEEK_EXPORT, NBD_OPT_EXTENDED_HEADERS, 0x12345678u}) {
        auto u = decode_option(opt, bytes("ffffffff"));
        REQUIRE(u);
        REQUIRE(std::holds_alternative<UnknownOption>(*u));
        CHECK(std::get<UnknownOption>(*u).option == opt);
    }
    auto bad_export = decode_option(NBD_OPT_EXPORT_NAME, bytes("00"));
    REQUIRE_FALSE(bad_export);
    CHECK(bad_export.error().fatal());
    require_invalid(decode_option(NBD_OPT_GO, bytes("00")));
    require_invalid(decode_option(NBD_OPT_SET_META_CONTEXT, bytes("00")));
}
