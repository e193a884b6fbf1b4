// libFuzzer target for protocol/: the first input byte picks a decoder or validator, the rest is
// its input. Every decoder runs on untrusted bytes; where an encoder exists, whatever decodes
// must re-encode to exactly the bytes it came from, and the documented contract of each
// decoder and of check_request() is asserted.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "protocol/bytes.hpp"
#include "protocol/constants.hpp"
#include "protocol/errors.hpp"
#include "protocol/handshake.hpp"
#include "protocol/meta_context.hpp"
#include "protocol/options.hpp"
#include "protocol/transmission.hpp"
#include "protocol/validate.hpp"

using namespace qnbd::nbd;

namespace {

template <class A>
bool same(const A& encoded, Bytes in) {
    return encoded.size() == in.size() && std::equal(encoded.begin(), encoded.end(), in.begin());
}

bool has_nul(Bytes b) {
    return std::find(b.begin(), b.end(), std::byte{0}) != b.end();
}

void client_flags(Bytes in) {
    uint16_t hs = in.size() >= 2 ? load_be<uint16_t>(in.data()) : kServerHandshakeFlags;
    Bytes word = in.size() >= 2 ? in.subspan(2) : in;
    auto d = decode_client_flags(word, hs);
    if (!d) return FUZZ_CHECK(d.error().fatal());
    FUZZ_CHECK(word.size() == kClientFlagsSize);
    FUZZ_CHECK(same(encode_client_flags(*d), word));
    FUZZ_CHECK(!d->fixed_newstyle || (hs & NBD_FLAG_FIXED_NEWSTYLE));
    FUZZ_CHECK(!d->no_zeroes || (hs & NBD_FLAG_NO_ZEROES));
}

void check_plan(const OptionHeader& h) {
    const PayloadPlan p = plan_option_payload(h);
    switch (p.action) {
        case PayloadAction::Read:
            FUZZ_CHECK(is_known_option(h.option) && h.length <= kMaxOptionPayload);
            FUZZ_CHECK(h.option != NBD_OPT_EXPORT_NAME || h.length <= kMaxStringLength);
            break;
        case PayloadAction::Discard:
            FUZZ_CHECK(h.length <= kMaxOptionDiscard && !p.reason.empty());
            FUZZ_CHECK(p.reply ==
                       (is_known_option(h.option) ? NBD_REP_ERR_TOO_BIG : NBD_REP_ERR_UNSUP));
            break;
        case PayloadAction::Disconnect:
            FUZZ_CHECK(h.length > kMaxOptionDiscard ||
                       (h.option == NBD_OPT_EXPORT_NAME && h.length > kMaxStringLength));
            break;
    }
}

void option_header(Bytes in) {
    if (in.size() >= 8)
        check_plan({load_be<uint32_t>(in.data()), load_be<uint32_t>(in.data() + 4)});
    auto d = decode_option_header(in);
    if (!d) return FUZZ_CHECK(d.error().fatal());
    FUZZ_CHECK(same(encode_option_header(*d), in));
    check_plan(*d);
}

void export_name(Bytes in) {
    auto d = decode_export_name(in);
    const bool valid = in.size() <= kMaxStringLength && !has_nul(in);
    FUZZ_CHECK(bool(d) == valid);
    if (!d) return FUZZ_CHECK(d.error().fatal());
    FUZZ_CHECK(d->name == as_chars(in));
}

void empty(Bytes in) {
    auto d = decode_empty(in);
    FUZZ_CHECK(bool(d) == in.empty());
    if (!d) FUZZ_CHECK(d.error().reply == NBD_REP_ERR_INVALID);
}

void info_request(Bytes in) {
    auto d = decode_info_request(in);
    if (!d) return FUZZ_CHECK(d.error().reply == NBD_REP_ERR_INVALID);
    FUZZ_CHECK(d->name.size() <= kMaxStringLength && !has_nul(as_bytes(d->name)));
    FUZZ_CHECK(same(encode_info_request(*d), in));
    for (uint16_t i : d->requests) FUZZ_CHECK(d->wants(i));
}

void meta_context_request(Bytes in) {
    if (in.empty()) return;
    const auto available = static_cast<uint8_t>(in[0]);
    auto d = decode_meta_context_request(in.subspan(1));
    if (!d) return FUZZ_CHECK(d.error().reply == NBD_REP_ERR_INVALID);
    FUZZ_CHECK(same(encode_meta_context_request(*d), in.subspan(1)));
    FUZZ_CHECK(d->name.size() <= kMaxStringLength);
    MetaContextSet offered;
    for (MetaContext c : kAllMetaContexts)
        if (available & (1u << context_id(c))) offered.add(c);
    const MetaContextSet listed = match_list_queries(d->queries, offered);
    const MetaContextSet set = match_set_queries(d->queries, offered);
    FUZZ_CHECK((listed & offered) == listed && (set & offered) == set);
    FUZZ_CHECK((set & listed) == set);  // An exact name also matches LIST.
    if (d->queries.empty()) FUZZ_CHECK(listed == offered && set.empty());
}

/// decode_option() must agree with the decoder of each option.
void option(Bytes in) {
    if (in.size() < 4) return;
    const uint32_t opt = load_be<uint32_t>(in.data());
    const Bytes payload = in.subspan(4);
    auto d = decode_option(opt, payload);
    switch (opt) {
        case NBD_OPT_EXPORT_NAME:
            FUZZ_CHECK(bool(d) == bool(decode_export_name(payload)));
            if (d) FUZZ_CHECK(std::holds_alternative<ExportNameOption>(*d));
            break;
        case NBD_OPT_ABORT:
            FUZZ_CHECK(d && std::holds_alternative<AbortOption>(*d));
            break;
        case NBD_OPT_LIST:
        case NBD_OPT_STARTTLS:
        case NBD_OPT_STRUCTURED_REPLY:
            FUZZ_CHECK(bool(d) == payload.empty());
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            FUZZ_CHECK(bool(d) == bool(decode_info_request(payload)));
            if (d) FUZZ_CHECK(std::get<InfoRequest>(*d) == *decode_info_request(payload));
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            FUZZ_CHECK(bool(d) == bool(decode_meta_context_request(payload)));
            break;
        default:
            FUZZ_CHECK(d && std::get<UnknownOption>(*d).option == opt);
    }
}

void request(Bytes in) {
    auto d = decode_request(in);
    if (!d) return FUZZ_CHECK(d.error().fatal());
    FUZZ_CHECK(same(encode_request(*d), in));
}

Request fuzzed_request(FuzzedDataProvider& p) {
    Request r;
    r.flags = p.ConsumeIntegral<uint16_t>();
    r.type = p.ConsumeIntegralInRange<uint16_t>(0, 10);
    r.cookie = p.ConsumeIntegral<uint64_t>();
    r.offset = p.ConsumeBool() ? p.ConsumeIntegralInRange<uint64_t>(0, 1u << 22)
                               : p.ConsumeIntegral<uint64_t>();
    r.length = p.ConsumeBool() ? p.ConsumeIntegralInRange<uint32_t>(0, 1u << 22)
                               : p.ConsumeIntegral<uint32_t>();
    return r;
}

Session fuzzed_session(FuzzedDataProvider& p) {
    Session s;
    s.export_size = p.ConsumeBool() ? p.ConsumeIntegralInRange<uint64_t>(0, 1u << 22)
                                    : p.ConsumeIntegral<uint64_t>();
    s.transmission_flags = p.ConsumeIntegral<uint16_t>();
    s.structured_replies = p.ConsumeBool();
    s.meta_contexts = p.ConsumeIntegralInRange<uint32_t>(0, 2);
    s.min_block_size = 1u << p.ConsumeIntegralInRange<uint32_t>(0, 12);
    s.max_payload = p.ConsumeBool() ? kMaxPayload : p.ConsumeIntegral<uint32_t>();
    return s;
}

/// What check_request() promises about a request it lets through.
void check_accepted(const Request& r, const Session& s) {
    auto has = [&](uint16_t f) { return (s.transmission_flags & f) != 0; };
    FUZZ_CHECK(is_known_command(r.type));
    FUZZ_CHECK(!(r.flags & NBD_CMD_FLAG_FUA) || has(NBD_FLAG_SEND_FUA));
    FUZZ_CHECK(!(r.flags & NBD_CMD_FLAG_PAYLOAD_LEN));
    FUZZ_CHECK(!is_write_command(r.type) || !has(NBD_FLAG_READ_ONLY));
    FUZZ_CHECK(!(r.flags & (NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO)) ||
               r.type == NBD_CMD_WRITE_ZEROES);
    FUZZ_CHECK(!(r.flags & NBD_CMD_FLAG_DF) || (r.type == NBD_CMD_READ && s.structured_replies));
    FUZZ_CHECK(!(r.flags & NBD_CMD_FLAG_REQ_ONE) || r.type == NBD_CMD_BLOCK_STATUS);
    if (r.type == NBD_CMD_FLUSH)
        return FUZZ_CHECK(has(NBD_FLAG_SEND_FLUSH) && r.offset == 0 && r.length == 0);
    if (r.type == NBD_CMD_BLOCK_STATUS) FUZZ_CHECK(s.structured_replies && s.meta_contexts);
    if (r.type == NBD_CMD_TRIM) FUZZ_CHECK(has(NBD_FLAG_SEND_TRIM));
    if (r.type == NBD_CMD_WRITE_ZEROES) FUZZ_CHECK(has(NBD_FLAG_SEND_WRITE_ZEROES));
    if (r.type == NBD_CMD_CACHE) FUZZ_CHECK(has(NBD_FLAG_SEND_CACHE));
    FUZZ_CHECK(r.offset <= s.export_size && r.length <= s.export_size - r.offset);
    FUZZ_CHECK(r.offset % s.min_block_size == 0);
    FUZZ_CHECK(r.length % s.min_block_size == 0 || r.offset + r.length == s.export_size);
    if (r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE) FUZZ_CHECK(r.length <= s.max_payload);
}

void check_request_contract(Bytes in) {
    FuzzedDataProvider p(reinterpret_cast<const uint8_t*>(in.data()), in.size());
    const Request r = fuzzed_request(p);
    const Session s = fuzzed_session(p);
    const RequestCheck c = check_request(r, s);
    const bool oversized_write = r.type == NBD_CMD_WRITE && r.length > s.max_payload;
    FUZZ_CHECK(c.disconnect == oversized_write);
    if (c.disconnect) return;
    FUZZ_CHECK(c.payload_length == (r.type == NBD_CMD_WRITE ? r.length : 0));
    if (r.type == NBD_CMD_DISC) return FUZZ_CHECK(c.ok());  // Whatever its flags and range.
    if (c.ok()) return check_accepted(r, s);
    FUZZ_CHECK(!c.reason.empty());
    switch (c.error) {
        case NBD_EINVAL:
            break;
        case NBD_EPERM:
            FUZZ_CHECK(is_write_command(r.type) && (s.transmission_flags & NBD_FLAG_READ_ONLY));
            break;
        case NBD_ENOSPC:
            FUZZ_CHECK(r.type == NBD_CMD_WRITE || r.type == NBD_CMD_WRITE_ZEROES);
            break;
        case NBD_EOVERFLOW:
            FUZZ_CHECK(r.type == NBD_CMD_READ && (r.flags & NBD_CMD_FLAG_DF));
            break;
        default:
            FUZZ_CHECK(c.error == NBD_EINVAL);  // Nothing else may come back.
    }
}

bool is_nbd_error(uint32_t e) {
    switch (e) {
        case NBD_SUCCESS:
        case NBD_EPERM:
        case NBD_EIO:
        case NBD_ENOMEM:
        case NBD_EINVAL:
        case NBD_ENOSPC:
        case NBD_EOVERFLOW:
        case NBD_ENOTSUP:
        case NBD_ESHUTDOWN:
            return true;
        default:
            return false;
    }
}

void errno_mapping(Bytes in) {
    FuzzedDataProvider p(reinterpret_cast<const uint8_t*>(in.data()), in.size());
    const int err =
        p.ConsumeBool() ? p.ConsumeIntegralInRange<int>(-200, 200) : p.ConsumeIntegral<int>();
    const Request r = fuzzed_request(p);
    const uint32_t e = nbd_error(err);
    FUZZ_CHECK(is_nbd_error(e) && (e == NBD_SUCCESS) == (err == 0));
    if (err != INT_MIN) FUZZ_CHECK(nbd_error(-err) == e);
    const uint32_t er = nbd_error(err, r);
    FUZZ_CHECK(is_nbd_error(er) && (er == e || er == NBD_EINVAL));
    if (er == NBD_ENOTSUP)
        FUZZ_CHECK(r.type == NBD_CMD_WRITE_ZEROES && (r.flags & NBD_CMD_FLAG_FAST_ZERO));
    if (er == NBD_EOVERFLOW && r.type != NBD_CMD_READ) FUZZ_CHECK(r.length > kMaxPayload);
    if (er == NBD_EOVERFLOW && r.type == NBD_CMD_READ) FUZZ_CHECK(r.flags & NBD_CMD_FLAG_DF);
}

void option_reply_header(Bytes in) {
    auto d = decode_option_reply_header(in);
    if (!d) return FUZZ_CHECK(d.error().fatal());
    FUZZ_CHECK(same(encode_option_reply_header(d->option, d->type, d->length), in));
}

void chunk_header(Bytes in) {
    auto d = decode_chunk_header(in);
    if (!d) return FUZZ_CHECK(d.error().fatal());
    FUZZ_CHECK(same(encode_chunk_header(*d), in));
}

void simple_reply(Bytes in) {
    auto d = decode_simple_reply(in);
    if (!d) return FUZZ_CHECK(d.error().fatal());
    FUZZ_CHECK(same(encode_simple_reply(d->error, d->cookie), in));
}

bool is_continuation(char c) {
    return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

void wire_strings(Bytes in) {
    const std::string_view s = as_chars(in);
    const std::string w = wire_string(s);
    FUZZ_CHECK(w.size() <= kMaxStringLength && w.find('\0') == std::string::npos);
    for (size_t i = 0; i < w.size(); ++i) FUZZ_CHECK(w[i] == (s[i] == '\0' ? '?' : s[i]));
    if (s.size() <= kMaxStringLength) return FUZZ_CHECK(w.size() == s.size());
    FUZZ_CHECK(w.size() + 3 >= kMaxStringLength);
    if (w.size() < kMaxStringLength) FUZZ_CHECK(!is_continuation(s[w.size()]));
}

void meta_query(Bytes in) {
    const std::string_view q = as_chars(in);
    auto m = parse_meta_query(q);
    if (!m) return;
    FUZZ_CHECK(!m->ns.empty() && m->ns.find(':') == std::string_view::npos);
    FUZZ_CHECK(std::string(m->ns) + ":" + std::string(m->leaf) == q);
    for (char c : m->ns) FUZZ_CHECK(static_cast<unsigned char>(c) > 0x20 && c != 0x7f);
}

void names_and_flags(Bytes in) {
    FuzzedDataProvider p(reinterpret_cast<const uint8_t*>(in.data()), in.size());
    const uint32_t v = p.ConsumeIntegral<uint32_t>();
    const auto v16 = static_cast<uint16_t>(v);
    FUZZ_CHECK(!option_name(v).empty() && !reply_type_name(v).empty());
    FUZZ_CHECK(!info_name(v16).empty() && !command_name(v16).empty());
    FUZZ_CHECK(!chunk_type_name(v16).empty() && !error_name(v).empty());
    if (auto c = context_from_id(v)) FUZZ_CHECK(context_id(*c) == v && !context_name(*c).empty());
    ExportFeatures f;
    f.read_only = p.ConsumeBool();
    f.flush = p.ConsumeBool();
    f.fua = p.ConsumeBool();
    f.trim = p.ConsumeBool();
    f.write_zeroes = p.ConsumeBool();
    f.fast_zero = p.ConsumeBool();
    f.cache = p.ConsumeBool();
    f.multi_conn = p.ConsumeBool();
    f.rotational = p.ConsumeBool();
    const bool structured = p.ConsumeBool();
    const uint16_t t = transmission_flags(f, structured);
    FUZZ_CHECK((t & NBD_FLAG_HAS_FLAGS) && bool(t & NBD_FLAG_READ_ONLY) == f.read_only);
    FUZZ_CHECK(bool(t & NBD_FLAG_SEND_DF) == structured);
    if (f.read_only) FUZZ_CHECK(!(t & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES)));
    if (t & NBD_FLAG_SEND_FAST_ZERO) FUZZ_CHECK(t & NBD_FLAG_SEND_WRITE_ZEROES);
    FUZZ_CHECK(!(t & (NBD_FLAG_SEND_RESIZE | 0xf000)));
}

}  // namespace

void fuzz_reply_encoders(Bytes in);  // fuzz_protocol_encoders.cpp
void fuzz_reader(Bytes in);          // fuzz_protocol_encoders.cpp

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using Target = void (*)(Bytes);
    static constexpr Target kTargets[] = {
        client_flags,
        option_header,
        export_name,
        empty,
        info_request,
        meta_context_request,
        option,
        request,
        check_request_contract,
        errno_mapping,
        option_reply_header,
        chunk_header,
        simple_reply,
        wire_strings,
        meta_query,
        names_and_flags,
        fuzz_reply_encoders,
        fuzz_reader,
    };
    if (size == 0) return 0;
    const Bytes in(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
    kTargets[data[0] % std::size(kTargets)](in);
    return 0;
}
