// Transmission phase framing.
#include "protocol/transmission.hpp"

#include <string>

namespace qnbd::nbd {

Decoded<Request> decode_request(Bytes in) {
    if (in.size() != kRequestHeaderSize) return reject(kDisconnect, "request: wrong size");
    if (load_be<uint32_t>(in.data()) != NBD_REQUEST_MAGIC)
        return reject(kDisconnect, "request: bad magic");
    return Request{
        .flags = load_be<uint16_t>(in.data() + 4),
        .type = load_be<uint16_t>(in.data() + 6),
        .cookie = load_be<uint64_t>(in.data() + 8),
        .offset = load_be<uint64_t>(in.data() + 16),
        .length = load_be<uint32_t>(in.data() + 24),
    };
}

std::array<std::byte, kRequestHeaderSize> encode_request(const Request& r) {
    return FixedWriter<kRequestHeaderSize>{}
        .be(NBD_REQUEST_MAGIC)
        .be(r.flags)
        .be(r.type)
        .be(r.cookie)
        .be(r.offset)
        .be(r.length)
        .done();
}

std::array<std::byte, kSimpleReplySize> encode_simple_reply(uint32_t error, uint64_t cookie) {
    return FixedWriter<kSimpleReplySize>{}.be(NBD_SIMPLE_REPLY_MAGIC).be(error).be(cookie).done();
}

Decoded<SimpleReply> decode_simple_reply(Bytes in) {
    if (in.size() != kSimpleReplySize) return reject(kDisconnect, "simple reply: wrong size");
    if (load_be<uint32_t>(in.data()) != NBD_SIMPLE_REPLY_MAGIC)
        return reject(kDisconnect, "simple reply: bad magic");
    return SimpleReply{.error = load_be<uint32_t>(in.data() + 4),
                       .cookie = load_be<uint64_t>(in.data() + 8)};
}

std::array<std::byte, kChunkHeaderSize> encode_chunk_header(const ChunkHeader& h) {
    return FixedWriter<kChunkHeaderSize>{}
        .be(NBD_STRUCTURED_REPLY_MAGIC)
        .be(h.flags)
        .be(h.type)
        .be(h.cookie)
        .be(h.length)
        .done();
}

Decoded<ChunkHeader> decode_chunk_header(Bytes in) {
    if (in.size() != kChunkHeaderSize) return reject(kDisconnect, "chunk header: wrong size");
    if (load_be<uint32_t>(in.data()) != NBD_STRUCTURED_REPLY_MAGIC)
        return reject(kDisconnect, "chunk header: bad magic");
    return ChunkHeader{
        .flags = load_be<uint16_t>(in.data() + 4),
        .type = load_be<uint16_t>(in.data() + 6),
        .cookie = load_be<uint64_t>(in.data() + 8),
        .length = load_be<uint32_t>(in.data() + 16),
    };
}

std::array<std::byte, kChunkHeaderSize> encode_chunk_none(uint64_t cookie) {
    return encode_chunk_header({NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0});
}

std::array<std::byte, kChunkHeaderSize + 8> encode_offset_data_header(uint16_t flags,
                                                                      uint64_t cookie,
                                                                      uint64_t offset,
                                                                      uint32_t data_length) {
    return FixedWriter<kChunkHeaderSize + 8>{}
        .be(NBD_STRUCTURED_REPLY_MAGIC)
        .be(flags)
        .be(NBD_REPLY_TYPE_OFFSET_DATA)
        .be(cookie)
        .be(static_cast<uint32_t>(data_length + 8))
        .be(offset)
        .done();
}

std::array<std::byte, kChunkHeaderSize + 12> encode_offset_hole(uint16_t flags, uint64_t cookie,
                                                                uint64_t offset, uint32_t size) {
    return FixedWriter<kChunkHeaderSize + 12>{}
        .be(NBD_STRUCTURED_REPLY_MAGIC)
        .be(flags)
        .be(NBD_REPLY_TYPE_OFFSET_HOLE)
        .be(cookie)
        .be(uint32_t{12})
        .be(offset)
        .be(size)
        .done();
}

ByteVector encode_block_status(uint16_t flags, uint64_t cookie, uint32_t context_id,
                               std::span<const BlockDescriptor> descriptors) {
    auto length = static_cast<uint32_t>(4 + 8 * descriptors.size());
    auto header = encode_chunk_header({flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, length});
    ByteVector out;
    out.reserve(header.size() + length);
    out.assign(header.begin(), header.end());
    Writer w(out);
    w.be(context_id);
    for (const BlockDescriptor& d : descriptors) w.be(d.length).be(d.status);
    return out;
}

namespace {

/// Error chunk of `type`: error, message length, message, then `tail` (the offset, if any).
ByteVector encode_error_like(uint16_t flags, uint16_t type, uint64_t cookie, uint32_t error,
                             std::string_view message, Bytes tail) {
    std::string m = wire_string(message);
    auto length = static_cast<uint32_t>(4 + 2 + m.size() + tail.size());
    auto header = encode_chunk_header({flags, type, cookie, length});
    ByteVector out(header.begin(), header.end());
    Writer(out).be(error).be(static_cast<uint16_t>(m.size())).bytes(as_bytes(m)).bytes(tail);
    return out;
}

}  // namespace

ByteVector encode_error_chunk(uint16_t flags, uint64_t cookie, uint32_t error,
                              std::string_view message) {
    return encode_error_like(flags, NBD_REPLY_TYPE_ERROR, cookie, error, message, {});
}

ByteVector encode_error_offset_chunk(uint16_t flags, uint64_t cookie, uint32_t error,
                                     std::string_view message, uint64_t offset) {
    std::array<std::byte, 8> tail{};
    store_be(tail.data(), offset);
    return encode_error_like(flags, NBD_REPLY_TYPE_ERROR_OFFSET, cookie, error, message, tail);
}

}  // namespace qnbd::nbd
