// Handshake phase framing.
#include "protocol/handshake.hpp"

#include <string>

namespace qnbd::nbd {

std::array<std::byte, kGreetingSize> encode_greeting(uint16_t handshake_flags) {
    return FixedWriter<kGreetingSize>{}.be(NBDMAGIC).be(IHAVEOPT).be(handshake_flags).done();
}

Decoded<ClientFlags> decode_client_flags(Bytes in, uint16_t handshake_flags) {
    if (in.size() != kClientFlagsSize) return reject(kDisconnect, "client flags: wrong size");
    uint32_t flags = load_be<uint32_t>(in.data());
    uint32_t allowed = 0;
    if (handshake_flags & NBD_FLAG_FIXED_NEWSTYLE) allowed |= NBD_FLAG_C_FIXED_NEWSTYLE;
    if (handshake_flags & NBD_FLAG_NO_ZEROES) allowed |= NBD_FLAG_C_NO_ZEROES;
    if (flags & ~allowed) return reject(kDisconnect, "client flags: unknown or unoffered flag");
    return ClientFlags{
        .fixed_newstyle = (flags & NBD_FLAG_C_FIXED_NEWSTYLE) != 0,
        .no_zeroes = (flags & NBD_FLAG_C_NO_ZEROES) != 0,
    };
}

std::array<std::byte, kClientFlagsSize> encode_client_flags(ClientFlags flags) {
    uint32_t v = (flags.fixed_newstyle ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) |
                 (flags.no_zeroes ? NBD_FLAG_C_NO_ZEROES : 0);
    return FixedWriter<kClientFlagsSize>{}.be(v).done();
}

Decoded<OptionHeader> decode_option_header(Bytes in) {
    if (in.size() != kOptionHeaderSize) return reject(kDisconnect, "option header: wrong size");
    if (load_be<uint64_t>(in.data()) != IHAVEOPT)
        return reject(kDisconnect, "option header: bad magic");
    return OptionHeader{
        .option = load_be<uint32_t>(in.data() + 8),
        .length = load_be<uint32_t>(in.data() + 12),
    };
}

std::array<std::byte, kOptionHeaderSize> encode_option_header(OptionHeader h) {
    return FixedWriter<kOptionHeaderSize>{}.be(IHAVEOPT).be(h.option).be(h.length).done();
}

bool is_known_option(uint32_t option) {
    switch (option) {
        case NBD_OPT_EXPORT_NAME:
        case NBD_OPT_ABORT:
        case NBD_OPT_LIST:
        case NBD_OPT_STARTTLS:
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
        case NBD_OPT_STRUCTURED_REPLY:
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            return true;
        default:
            return false;
    }
}

PayloadPlan plan_option_payload(const OptionHeader& h) {
    if (h.length > kMaxOptionDiscard)
        return {PayloadAction::Disconnect, 0, "option payload beyond any sane size"};
    if (h.option == NBD_OPT_EXPORT_NAME && h.length > kMaxStringLength)
        return {PayloadAction::Disconnect, 0, "NBD_OPT_EXPORT_NAME name too long"};
    if (!is_known_option(h.option))
        return {PayloadAction::Discard, NBD_REP_ERR_UNSUP, "unsupported option"};
    if (h.length > kMaxOptionPayload)
        return {PayloadAction::Discard, NBD_REP_ERR_TOO_BIG, "option payload too large"};
    return {PayloadAction::Read, 0, {}};
}

// ---- Option replies --------------------------------------------------------------------------

std::array<std::byte, kOptionReplyHeaderSize> encode_option_reply_header(uint32_t option,
                                                                         uint32_t type,
                                                                         uint32_t length) {
    return FixedWriter<kOptionReplyHeaderSize>{}
        .be(NBD_REP_MAGIC)
        .be(option)
        .be(type)
        .be(length)
        .done();
}

ByteVector encode_option_reply(uint32_t option, uint32_t type, Bytes payload) {
    auto header = encode_option_reply_header(option, type, static_cast<uint32_t>(payload.size()));
    ByteVector out(header.begin(), header.end());
    Writer(out).bytes(payload);
    return out;
}

ByteVector encode_rep_ack(uint32_t option) {
    return encode_option_reply(option, NBD_REP_ACK);
}

ByteVector encode_rep_server(uint32_t option, std::string_view name, std::string_view description) {
    std::string n = wire_string(name), d = wire_string(description);
    ByteVector payload;
    Writer(payload).be(static_cast<uint32_t>(n.size())).bytes(as_bytes(n)).bytes(as_bytes(d));
    return encode_option_reply(option, NBD_REP_SERVER, payload);
}

ByteVector encode_info_export(uint32_t option, uint64_t export_size, uint16_t transmission_flags) {
    ByteVector payload;
    Writer(payload).be(NBD_INFO_EXPORT).be(export_size).be(transmission_flags);
    return encode_option_reply(option, NBD_REP_INFO, payload);
}

namespace {

ByteVector encode_info_string(uint32_t option, uint16_t info, std::string_view s) {
    std::string w = wire_string(s);
    ByteVector payload;
    Writer(payload).be(info).bytes(as_bytes(w));
    return encode_option_reply(option, NBD_REP_INFO, payload);
}

}  // namespace

ByteVector encode_info_name(uint32_t option, std::string_view name) {
    return encode_info_string(option, NBD_INFO_NAME, name);
}

ByteVector encode_info_description(uint32_t option, std::string_view description) {
    return encode_info_string(option, NBD_INFO_DESCRIPTION, description);
}

ByteVector encode_info_block_size(uint32_t option, BlockSizes sizes) {
    ByteVector payload;
    Writer(payload).be(NBD_INFO_BLOCK_SIZE).be(sizes.minimum).be(sizes.preferred).be(sizes.maximum);
    return encode_option_reply(option, NBD_REP_INFO, payload);
}

ByteVector encode_rep_meta_context(uint32_t option, uint32_t context_id, std::string_view name) {
    std::string w = wire_string(name);
    ByteVector payload;
    Writer(payload).be(context_id).bytes(as_bytes(w));
    return encode_option_reply(option, NBD_REP_META_CONTEXT, payload);
}

ByteVector encode_rep_error(uint32_t option, uint32_t type, std::string_view message) {
    std::string w = wire_string(message);
    return encode_option_reply(option, type, as_bytes(w));
}

ByteVector encode_export_name_reply(uint64_t export_size, uint16_t transmission_flags,
                                    bool no_zeroes) {
    ByteVector out;
    Writer(out)
        .be(export_size)
        .be(transmission_flags)
        .zeroes(no_zeroes ? 0 : kExportNameReplyZeroes);
    return out;
}

Decoded<OptionReplyHeader> decode_option_reply_header(Bytes in) {
    if (in.size() != kOptionReplyHeaderSize)
        return reject(kDisconnect, "option reply header: wrong size");
    if (load_be<uint64_t>(in.data()) != NBD_REP_MAGIC)
        return reject(kDisconnect, "option reply header: bad magic");
    return OptionReplyHeader{
        .option = load_be<uint32_t>(in.data() + 8),
        .type = load_be<uint32_t>(in.data() + 12),
        .length = load_be<uint32_t>(in.data() + 16),
    };
}

// ---- Transmission flags ----------------------------------------------------------------------

uint16_t transmission_flags(const ExportFeatures& f, bool structured_replies) {
    uint16_t flags = NBD_FLAG_HAS_FLAGS;
    if (f.read_only) flags |= NBD_FLAG_READ_ONLY;
    if (f.flush) flags |= NBD_FLAG_SEND_FLUSH;
    if (f.fua) flags |= NBD_FLAG_SEND_FUA;
    if (f.rotational) flags |= NBD_FLAG_ROTATIONAL;
    if (f.trim && !f.read_only) flags |= NBD_FLAG_SEND_TRIM;
    if (f.write_zeroes && !f.read_only) {
        flags |= NBD_FLAG_SEND_WRITE_ZEROES;
        if (f.fast_zero) flags |= NBD_FLAG_SEND_FAST_ZERO;
    }
    if (structured_replies) flags |= NBD_FLAG_SEND_DF;
    if (f.multi_conn) flags |= NBD_FLAG_CAN_MULTI_CONN;
    if (f.cache) flags |= NBD_FLAG_SEND_CACHE;
    return flags;
}

}  // namespace qnbd::nbd
