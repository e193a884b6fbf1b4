// The encoder half of fuzz_protocol: replies built from fuzzed values must frame themselves
// correctly (their headers decode and announce exactly the bytes that follow), client-side
// encoders must decode back to the value they encoded, and the byte Reader must never read
// past its input.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "protocol/bytes.hpp"
#include "protocol/constants.hpp"
#include "protocol/handshake.hpp"
#include "protocol/options.hpp"
#include "protocol/transmission.hpp"

using namespace qnbd::nbd;

namespace {

/// Checks the framing of an option reply and returns its payload.
Bytes option_reply_payload(const ByteVector& v, uint32_t option, uint32_t type) {
    FUZZ_CHECK(v.size() >= kOptionReplyHeaderSize);
    auto h = decode_option_reply_header(Bytes(v).first(kOptionReplyHeaderSize));
    FUZZ_CHECK(h && h->option == option && h->type == type);
    FUZZ_CHECK(h->length == v.size() - kOptionReplyHeaderSize);
    return Bytes(v).subspan(kOptionReplyHeaderSize);
}

/// Checks the framing of a structured reply chunk and returns its payload.
Bytes chunk_payload(Bytes v, uint16_t flags, uint16_t type, uint64_t cookie) {
    FUZZ_CHECK(v.size() >= kChunkHeaderSize);
    auto h = decode_chunk_header(v.first(kChunkHeaderSize));
    FUZZ_CHECK(h && h->flags == flags && h->type == type && h->cookie == cookie);
    FUZZ_CHECK(h->length == v.size() - kChunkHeaderSize);
    return v.subspan(kChunkHeaderSize);
}

void option_replies(FuzzedDataProvider& p) {
    const uint32_t option = p.ConsumeIntegral<uint32_t>();
    const std::string a = p.ConsumeRandomLengthString(5000);
    const std::string b = p.ConsumeRandomLengthString(5000);
    const std::string wa = wire_string(a), wb = wire_string(b);
    switch (p.ConsumeIntegralInRange(0, 7)) {
        case 0:
            FUZZ_CHECK(option_reply_payload(encode_rep_ack(option), option, NBD_REP_ACK).empty());
            break;
        case 1: {
            auto v = encode_rep_server(option, a, b);
            Bytes pl = option_reply_payload(v, option, NBD_REP_SERVER);
            FUZZ_CHECK(pl.size() == 4 + wa.size() + wb.size());
            FUZZ_CHECK(load_be<uint32_t>(pl.data()) == wa.size());
            FUZZ_CHECK(as_chars(pl.subspan(4)) == wa + wb);
            break;
        }
        case 2: {
            const uint64_t size = p.ConsumeIntegral<uint64_t>();
            const uint16_t flags = p.ConsumeIntegral<uint16_t>();
            auto v = encode_info_export(option, size, flags);
            Bytes pl = option_reply_payload(v, option, NBD_REP_INFO);
            FUZZ_CHECK(pl.size() == 12 && load_be<uint16_t>(pl.data()) == NBD_INFO_EXPORT);
            FUZZ_CHECK(load_be<uint64_t>(pl.data() + 2) == size);
            FUZZ_CHECK(load_be<uint16_t>(pl.data() + 10) == flags);
            break;
        }
        case 3:
        case 4: {
            const bool name = p.ConsumeBool();
            auto v = name ? encode_info_name(option, a) : encode_info_description(option, a);
            Bytes pl = option_reply_payload(v, option, NBD_REP_INFO);
            FUZZ_CHECK(load_be<uint16_t>(pl.data()) ==
                       (name ? NBD_INFO_NAME : NBD_INFO_DESCRIPTION));
            FUZZ_CHECK(as_chars(pl.subspan(2)) == wa);
            break;
        }
        case 5: {
            BlockSizes s{p.ConsumeIntegral<uint32_t>(), p.ConsumeIntegral<uint32_t>(),
                         p.ConsumeIntegral<uint32_t>()};
            auto v = encode_info_block_size(option, s);
            Bytes pl = option_reply_payload(v, option, NBD_REP_INFO);
            FUZZ_CHECK(pl.size() == 14 && load_be<uint16_t>(pl.data()) == NBD_INFO_BLOCK_SIZE);
            FUZZ_CHECK(load_be<uint32_t>(pl.data() + 2) == s.minimum);
            FUZZ_CHECK(load_be<uint32_t>(pl.data() + 10) == s.maximum);
            break;
        }
        case 6: {
            const uint32_t id = p.ConsumeIntegral<uint32_t>();
            auto v = encode_rep_meta_context(option, id, a);
            Bytes pl = option_reply_payload(v, option, NBD_REP_META_CONTEXT);
            FUZZ_CHECK(load_be<uint32_t>(pl.data()) == id && as_chars(pl.subspan(4)) == wa);
            break;
        }
        default: {
            const uint32_t type = p.ConsumeIntegral<uint32_t>() | NBD_REP_FLAG_ERROR;
            auto v = encode_rep_error(option, type, a);
            FUZZ_CHECK(as_chars(option_reply_payload(v, option, type)) == wa);
        }
    }
}

void export_name_reply(FuzzedDataProvider& p) {
    const uint64_t size = p.ConsumeIntegral<uint64_t>();
    const uint16_t flags = p.ConsumeIntegral<uint16_t>();
    const bool no_zeroes = p.ConsumeBool();
    auto v = encode_export_name_reply(size, flags, no_zeroes);
    FUZZ_CHECK(v.size() == 10 + (no_zeroes ? 0 : kExportNameReplyZeroes));
    FUZZ_CHECK(load_be<uint64_t>(v.data()) == size && load_be<uint16_t>(v.data() + 8) == flags);
    FUZZ_CHECK(std::all_of(v.begin() + 10, v.end(), [](std::byte b) { return b == std::byte{0}; }));
    auto g = encode_greeting(flags);
    FUZZ_CHECK(load_be<uint64_t>(g.data()) == NBDMAGIC);
    FUZZ_CHECK(load_be<uint64_t>(g.data() + 8) == IHAVEOPT);
    FUZZ_CHECK(load_be<uint16_t>(g.data() + 16) == flags);
}

void block_status_chunk(FuzzedDataProvider& p, uint16_t flags, uint64_t cookie) {
    const uint32_t ctx = p.ConsumeIntegral<uint32_t>();
    std::vector<BlockDescriptor> d(p.ConsumeIntegralInRange<size_t>(1, 64));
    for (auto& e : d) e = {p.ConsumeIntegral<uint32_t>(), p.ConsumeIntegral<uint32_t>()};
    auto v = encode_block_status(flags, cookie, ctx, d);
    Bytes pl = chunk_payload(v, flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookie);
    FUZZ_CHECK(pl.size() == 4 + 8 * d.size() && load_be<uint32_t>(pl.data()) == ctx);
    for (size_t i = 0; i < d.size(); ++i) {
        FUZZ_CHECK(load_be<uint32_t>(pl.data() + 4 + 8 * i) == d[i].length);
        FUZZ_CHECK(load_be<uint32_t>(pl.data() + 8 + 8 * i) == d[i].status);
    }
}

void error_chunks(FuzzedDataProvider& p, uint16_t flags, uint64_t cookie) {
    const uint32_t error = p.ConsumeIntegral<uint32_t>();
    const uint64_t offset = p.ConsumeIntegral<uint64_t>();
    const std::string m = p.ConsumeRandomLengthString(5000);
    const std::string w = wire_string(m);
    const bool with_offset = p.ConsumeBool();
    auto v = with_offset ? encode_error_offset_chunk(flags, cookie, error, m, offset)
                         : encode_error_chunk(flags, cookie, error, m);
    Bytes pl = chunk_payload(
        v, flags, with_offset ? NBD_REPLY_TYPE_ERROR_OFFSET : NBD_REPLY_TYPE_ERROR, cookie);
    FUZZ_CHECK(pl.size() == 6 + w.size() + (with_offset ? 8 : 0));
    FUZZ_CHECK(load_be<uint32_t>(pl.data()) == error);
    FUZZ_CHECK(load_be<uint16_t>(pl.data() + 4) == w.size());
    FUZZ_CHECK(as_chars(pl.subspan(6, w.size())) == w);
    if (with_offset) FUZZ_CHECK(load_be<uint64_t>(pl.data() + 6 + w.size()) == offset);
}

void chunks(FuzzedDataProvider& p) {
    const uint16_t flags = p.ConsumeIntegral<uint16_t>();
    const uint64_t cookie = p.ConsumeIntegral<uint64_t>();
    const uint64_t offset = p.ConsumeIntegral<uint64_t>();
    switch (p.ConsumeIntegralInRange(0, 4)) {
        case 0: {
            auto v = encode_chunk_none(cookie);
            FUZZ_CHECK(chunk_payload(v, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie).empty());
            break;
        }
        case 1: {
            const uint32_t n = p.ConsumeIntegralInRange<uint32_t>(1, UINT32_MAX - 8);
            auto v = encode_offset_data_header(flags, cookie, offset, n);
            auto h = decode_chunk_header(Bytes(v).first(kChunkHeaderSize));
            FUZZ_CHECK(h && h->type == NBD_REPLY_TYPE_OFFSET_DATA && h->length == n + 8u);
            FUZZ_CHECK(h->flags == flags && load_be<uint64_t>(v.data() + 20) == offset);
            break;
        }
        case 2: {
            const uint32_t n = p.ConsumeIntegral<uint32_t>();
            auto v = encode_offset_hole(flags, cookie, offset, n);
            Bytes pl = chunk_payload(v, flags, NBD_REPLY_TYPE_OFFSET_HOLE, cookie);
            FUZZ_CHECK(load_be<uint64_t>(pl.data()) == offset);
            FUZZ_CHECK(load_be<uint32_t>(pl.data() + 8) == n);
            break;
        }
        case 3:
            block_status_chunk(p, flags, cookie);
            break;
        default:
            error_chunks(p, flags, cookie);
    }
}

/// Client-side encoders: a valid value encodes to bytes that decode back to it.
void client_round_trips(FuzzedDataProvider& p) {
    Request r{p.ConsumeIntegral<uint16_t>(), p.ConsumeIntegral<uint16_t>(),
              p.ConsumeIntegral<uint64_t>(), p.ConsumeIntegral<uint64_t>(),
              p.ConsumeIntegral<uint32_t>()};
    auto rd = decode_request(encode_request(r));
    FUZZ_CHECK(rd && *rd == r);
    OptionHeader oh{p.ConsumeIntegral<uint32_t>(), p.ConsumeIntegral<uint32_t>()};
    auto od = decode_option_header(encode_option_header(oh));
    FUZZ_CHECK(od && *od == oh);
    ClientFlags cf{p.ConsumeBool(), p.ConsumeBool()};
    auto cd = decode_client_flags(encode_client_flags(cf));
    FUZZ_CHECK(cd && *cd == cf);
    auto valid = [](const std::string& s) {
        return s.size() <= kMaxStringLength && s.find('\0') == std::string::npos;
    };
    InfoRequest ir{p.ConsumeRandomLengthString(5000), {}};
    ir.requests.resize(p.ConsumeIntegralInRange<size_t>(0, 40));
    for (auto& i : ir.requests) i = p.ConsumeIntegral<uint16_t>();
    auto id = decode_info_request(encode_info_request(ir));
    FUZZ_CHECK(bool(id) == valid(ir.name));
    if (id) FUZZ_CHECK(*id == ir);
    MetaContextRequest mr{p.ConsumeRandomLengthString(5000), {}};
    mr.queries.resize(p.ConsumeIntegralInRange<size_t>(1, 8));
    bool all_valid = valid(mr.name);
    for (auto& q : mr.queries) {
        q = p.ConsumeRandomLengthString(5000);
        all_valid = all_valid && valid(q);
    }
    auto md = decode_meta_context_request(encode_meta_context_request(mr));
    FUZZ_CHECK(bool(md) == all_valid);
    if (md) FUZZ_CHECK(*md == mr);
}

}  // namespace

void fuzz_reply_encoders(Bytes in) {
    FuzzedDataProvider p(reinterpret_cast<const uint8_t*>(in.data()), in.size());
    switch (p.ConsumeIntegralInRange(0, 3)) {
        case 0:
            return option_replies(p);
        case 1:
            return export_name_reply(p);
        case 2:
            return chunks(p);
        default:
            return client_round_trips(p);
    }
}

/// Reader: every read either returns the big-endian value at the cursor or consumes nothing.
void fuzz_reader(Bytes in) {
    if (in.size() < 2) return;
    const Bytes ops = in.first(in.size() / 2), data = in.subspan(in.size() / 2);
    Reader r(data);
    size_t pos = 0;
    for (std::byte op : ops) {
        const auto o = static_cast<uint8_t>(op);
        const size_t want = o & 3 ? size_t{1} << (o & 3) : o >> 2;
        const size_t before = r.remaining();
        FUZZ_CHECK(before == data.size() - pos && r.empty() == (before == 0));
        bool got = false;
        switch (o & 3) {
            case 1:
                if (auto v = r.be<uint16_t>()) got = *v == load_be<uint16_t>(data.data() + pos);
                break;
            case 2:
                if (auto v = r.be<uint32_t>()) got = *v == load_be<uint32_t>(data.data() + pos);
                break;
            case 3:
                if (auto v = r.be<uint64_t>()) got = *v == load_be<uint64_t>(data.data() + pos);
                break;
            default:
                if (auto b = r.take(want)) got = b->data() == data.data() + pos;
        }
        FUZZ_CHECK(got == (want <= before));
        FUZZ_CHECK(r.remaining() == (got ? before - want : before));
        if (got) pos += want;
    }
    ByteVector out;
    Writer(out).be(uint16_t{0x1234}).bytes(data).zeroes(3);
    FUZZ_CHECK(out.size() == data.size() + 5 && load_be<uint16_t>(out.data()) == 0x1234);
}
