// Decoders fed with random and mutated bytes (fixed seed): they must never crash or read out of
// bounds (run under ASan/UBSan), and whatever they accept must re-encode to the same bytes.
#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <vector>

#include "protocol/handshake.hpp"
#include "protocol/meta_context.hpp"
#include "protocol/options.hpp"
#include "protocol/transmission.hpp"
#include "protocol/validate.hpp"
#include "tests/unit/support/random.hpp"

using namespace qnbd::nbd;

namespace {

using Buffer = std::vector<std::byte>;

/// Random bytes of a random length up to `max_len`.
Buffer random_buffer(std::mt19937_64& rng, size_t max_len) {
    return qnbd::test::random_bytes(rng, std::uniform_int_distribution<size_t>(0, max_len)(rng));
}

/// Flips, truncates or extends a valid encoding a little.
Buffer mutate(std::mt19937_64& rng, Buffer b) {
    switch (rng() % 4) {
        case 0:
            if (!b.empty()) b[rng() % b.size()] ^= static_cast<std::byte>(1u << (rng() % 8));
            break;
        case 1:
            if (!b.empty()) b.resize(rng() % b.size());
            break;
        case 2:
            b.push_back(static_cast<std::byte>(rng() & 0xff));
            break;
        default:
            // Small length fields are where the interesting bugs hide.
            if (b.size() >= 4) b[rng() % (b.size() - 3) + 3] = static_cast<std::byte>(rng() % 8);
            break;
    }
    return b;
}

/// Checks the canonical-encoding property of one option payload.
void check_option(uint32_t option, const Buffer& in) {
    auto d = decode_option(option, in);
    if (!d) {
        CHECK_FALSE(d.error().message.empty());
        return;
    }
    if (auto* info = std::get_if<InfoRequest>(&*d)) CHECK(encode_info_request(*info) == in);
    if (auto* meta = std::get_if<MetaContextRequest>(&*d)) {
        CHECK(encode_meta_context_request(*meta) == in);
        (void)match_list_queries(meta->queries, MetaContextSet::all());
        (void)match_set_queries(meta->queries, MetaContextSet::all());
    }
}

}  // namespace

TEST_CASE("protocol: option decoders survive arbitrary bytes", "[protocol]") {
    std::mt19937_64 rng(20240601);
    const Buffer seeds[] = {
        encode_info_request({"disk", {NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE}}),
        encode_info_request({"", {}}),
        encode_meta_context_request({"disk", {"base:allocation", "qemu:"}}),
        encode_meta_context_request({"", {}}),
    };
    for (int i = 0; i < 20000; ++i) {
        auto option = static_cast<uint32_t>(rng() % 12);
        Buffer in = (i % 2) ? random_buffer(rng, 64) : mutate(rng, seeds[rng() % 4]);
        check_option(option, in);
    }
}

TEST_CASE("protocol: header decoders survive arbitrary bytes", "[protocol]") {
    std::mt19937_64 rng(7);
    Session session;
    session.export_size = 1 << 30;
    session.transmission_flags = transmission_flags(ExportFeatures{}, true);
    session.structured_replies = true;
    session.meta_contexts = 1;
    for (int i = 0; i < 20000; ++i) {
        Buffer in = random_buffer(rng, 32);
        if (auto h = decode_option_header(in)) {
            auto again = encode_option_header(*h);
            CHECK(Buffer(again.begin(), again.end()) == in);
        }
        if (auto f = decode_client_flags(in)) {
            auto again = encode_client_flags(*f);
            CHECK(Buffer(again.begin(), again.end()) == in);
        }
        (void)decode_option_reply_header(in);
        (void)decode_chunk_header(in);
        (void)decode_simple_reply(in);
        // Requests with a valid magic and random fields: decode, re-encode, validate.
        if (in.size() >= kRequestHeaderSize) {
            Buffer req(in.begin(), in.begin() + kRequestHeaderSize);
            auto magic = encode_request({});
            std::copy(magic.begin(), magic.begin() + 4, req.begin());
            auto r = decode_request(req);
            REQUIRE(r);
            auto again = encode_request(*r);
            CHECK(Buffer(again.begin(), again.end()) == req);
            RequestCheck c = check_request(*r, session);
            CHECK((c.ok() || !c.reason.empty()));
            CHECK(c.payload_length <= session.max_payload);
        }
    }
}
