// The reply to a successful NBD_CMD_READ as a plan: the headers to send and, after each, which
// bytes of the read buffer follow it. The server turns the plan into a gather write over its
// own buffer, so read data is never copied.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "protocol/bytes.hpp"
#include "protocol/constants.hpp"

namespace qnbd::nbd {

/// A successful READ to answer.
struct ReadReply {
    uint64_t cookie = 0;
    uint64_t offset = 0;      ///< The request's offset; chunk offsets are absolute (offset + ...).
    uint32_t length = 0;      ///< The request's length, at most 2^32 - 9 (check_request caps it).
    bool structured = false;  ///< NBD_OPT_STRUCTURED_REPLY was negotiated.
    bool dont_fragment = false;  ///< NBD_CMD_FLAG_DF: one data chunk, holes sent as zeros.

    /// True when holes can be sent as NBD_REPLY_TYPE_OFFSET_HOLE chunks, so are worth finding.
    bool uses_holes() const { return structured && !dont_fragment; }
};

/// A range of the read known to read as zeros, relative to the start of the read.
struct ReadHole {
    uint64_t offset = 0;
    uint64_t length = 0;
};

/// Size of the largest header a read reply sends (an NBD_REPLY_TYPE_OFFSET_HOLE chunk).
constexpr size_t kMaxReadReplyHeader = kChunkHeaderSize + 12;

/// One piece of a read reply: `header`, then `data_length` bytes of the read buffer from
/// `data_offset` (relative to the start of the read; no data when `data_length` is 0).
struct ReadReplyPart {
    std::array<std::byte, kMaxReadReplyHeader> bytes{};
    size_t size = 0;  ///< Bytes of `bytes` used.
    uint64_t data_offset = 0;
    uint64_t data_length = 0;

    Bytes header() const { return Bytes(bytes).first(size); }
};

/// The reply to `r`, in sending order. Without structured replies: one simple reply followed by
/// all the data. With them: NBD_REPLY_TYPE_OFFSET_DATA chunks for the data between `holes` and
/// NBD_REPLY_TYPE_OFFSET_HOLE chunks for the holes (unless dont_fragment), NBD_REPLY_FLAG_DONE
/// on the last chunk; a zero-length read is a single NBD_REPLY_TYPE_NONE chunk. `holes` should
/// be in order and within the read; empty, overlapping or out-of-range ones are sent as data.
std::vector<ReadReplyPart> encode_read_reply(const ReadReply& r, std::span<const ReadHole> holes);

/// The structured chunks for bytes [from, to) of `r` alone, for a reply sent in pieces: data and
/// hole chunks as encode_read_reply() makes them, NBD_REPLY_FLAG_DONE only on the chunk that
/// reaches the end of the read. `holes` are relative to the start of the read, as there; those
/// not within [from, to) are ignored. Requires r.structured and from < to <= r.length.
std::vector<ReadReplyPart> encode_read_reply_range(const ReadReply& r, uint64_t from, uint64_t to,
                                                   std::span<const ReadHole> holes);

}  // namespace qnbd::nbd
