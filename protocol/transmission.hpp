// Transmission phase framing: request headers, simple replies and structured reply chunks.
// Fixed-size headers are returned as std::array so the server can send header + payload as
// scatter-gather without copying read data; variable chunks are returned as byte vectors.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "protocol/bytes.hpp"
#include "protocol/constants.hpp"

namespace qnbd::nbd {

// ---- Requests --------------------------------------------------------------------------------

/// One transmission request header (the WRITE payload, if any, follows on the wire).
struct Request {
    uint16_t flags = 0;   ///< NBD_CMD_FLAG_* bits, unvalidated.
    uint16_t type = 0;    ///< NBD_CMD_*, possibly unknown.
    uint64_t cookie = 0;  ///< Opaque; echoed in every reply (called "handle" in older specs).
    uint64_t offset = 0;
    uint32_t length = 0;
    bool operator==(const Request&) const = default;
};

/// Decodes a 28-byte request header. Only a wrong size or magic is an error (fatal: the stream
/// cannot be resynchronised); unknown types and flags decode so the server can answer EINVAL.
Decoded<Request> decode_request(Bytes in);

/// Client side of the above (tests, fuzz seeds).
std::array<std::byte, kRequestHeaderSize> encode_request(const Request& r);

// ---- Simple replies --------------------------------------------------------------------------

/// Simple reply: magic, error (NBD_E*), cookie. For a successful READ the data follows.
std::array<std::byte, kSimpleReplySize> encode_simple_reply(uint32_t error, uint64_t cookie);

// ---- Structured reply chunks -----------------------------------------------------------------

/// Header of a structured reply chunk whose `length` payload bytes follow.
struct ChunkHeader {
    uint16_t flags = 0;  ///< NBD_REPLY_FLAG_DONE on the last chunk of a reply.
    uint16_t type = 0;   ///< NBD_REPLY_TYPE_*.
    uint64_t cookie = 0;
    uint32_t length = 0;
    bool operator==(const ChunkHeader&) const = default;
};

std::array<std::byte, kChunkHeaderSize> encode_chunk_header(const ChunkHeader& h);

/// Decodes a 20-byte chunk header (client side; tests and tools); a wrong magic is fatal.
Decoded<ChunkHeader> decode_chunk_header(Bytes in);

/// NBD_REPLY_TYPE_NONE with NBD_REPLY_FLAG_DONE: the final chunk of a successful reply.
std::array<std::byte, kChunkHeaderSize> encode_chunk_none(uint64_t cookie);

/// Chunk header + 8-byte offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk; the caller sends the
/// `data_length` bytes of data right after it from its own buffer. `data_length` must be at
/// least 1 and at most 2^32 - 9.
std::array<std::byte, kChunkHeaderSize + 8> encode_offset_data_header(uint16_t flags,
                                                                      uint64_t cookie,
                                                                      uint64_t offset,
                                                                      uint32_t data_length);

/// Complete NBD_REPLY_TYPE_OFFSET_HOLE chunk: `size` (nonzero) bytes at `offset` read as zeros.
std::array<std::byte, kChunkHeaderSize + 12> encode_offset_hole(uint16_t flags, uint64_t cookie,
                                                                uint64_t offset, uint32_t size);

/// One block status extent: length (nonzero) and context-defined status flags.
struct BlockDescriptor {
    uint32_t length = 0;
    uint32_t status = 0;
    bool operator==(const BlockDescriptor&) const = default;
};

/// Complete NBD_REPLY_TYPE_BLOCK_STATUS chunk (32-bit form) for one context. The caller
/// provides 1..kMaxBlockStatusDescriptors descriptors.
ByteVector encode_block_status(uint16_t flags, uint64_t cookie, uint32_t context_id,
                               std::span<const BlockDescriptor> descriptors);

/// Complete NBD_REPLY_TYPE_ERROR chunk: error (nonzero NBD_E*), message (via wire_string()).
ByteVector encode_error_chunk(uint16_t flags, uint64_t cookie, uint32_t error,
                              std::string_view message = {});

/// Complete NBD_REPLY_TYPE_ERROR_OFFSET chunk: error, message, offset where it happened.
ByteVector encode_error_offset_chunk(uint16_t flags, uint64_t cookie, uint32_t error,
                                     std::string_view message, uint64_t offset);

/// Decoded simple reply (client side; tests and tools).
struct SimpleReply {
    uint32_t error = 0;
    uint64_t cookie = 0;
    bool operator==(const SimpleReply&) const = default;
};

/// Decodes a 16-byte simple reply; a wrong magic is fatal.
Decoded<SimpleReply> decode_simple_reply(Bytes in);

}  // namespace qnbd::nbd
