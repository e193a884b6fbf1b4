// The reply to a successful NBD_CMD_READ.
#include "protocol/read_reply.hpp"

#include <algorithm>

#include "protocol/transmission.hpp"

namespace qnbd::nbd {

namespace {

/// A part with header `h` followed by `length` bytes of the read from `from`.
template <size_t N>
ReadReplyPart make_part(const std::array<std::byte, N>& h, uint64_t from = 0, uint64_t length = 0) {
    static_assert(N <= kMaxReadReplyHeader);
    ReadReplyPart p;
    std::copy(h.begin(), h.end(), p.bytes.begin());
    p.size = N;
    p.data_offset = from;
    p.data_length = length;
    return p;
}

/// Appends the chunks of a structured reply with data in [from, to) of `r`.
class ChunkPlan {
  public:
    ChunkPlan(const ReadReply& r, std::vector<ReadReplyPart>& out) : r_(r), out_(out) {}

    void data(uint64_t from, uint64_t to) {
        auto h = encode_offset_data_header(flags(to), r_.cookie, r_.offset + from,
                                           static_cast<uint32_t>(to - from));
        out_.push_back(make_part(h, from, to - from));
    }
    void hole(uint64_t from, uint64_t to) {
        out_.push_back(make_part(encode_offset_hole(flags(to), r_.cookie, r_.offset + from,
                                                    static_cast<uint32_t>(to - from))));
    }

  private:
    /// NBD_REPLY_FLAG_DONE for the chunk that reaches the end of the read.
    uint16_t flags(uint64_t to) const { return to == r_.length ? NBD_REPLY_FLAG_DONE : 0; }

    const ReadReply& r_;
    std::vector<ReadReplyPart>& out_;
};

}  // namespace

std::vector<ReadReplyPart> encode_read_reply(const ReadReply& r, std::span<const ReadHole> holes) {
    std::vector<ReadReplyPart> out;
    if (!r.structured) {
        out.push_back(make_part(encode_simple_reply(NBD_SUCCESS, r.cookie), 0, r.length));
        return out;
    }
    if (r.length == 0) {
        out.push_back(make_part(encode_chunk_none(r.cookie)));
        return out;
    }
    return encode_read_reply_range(r, 0, r.length, holes);
}

std::vector<ReadReplyPart> encode_read_reply_range(const ReadReply& r, uint64_t from, uint64_t to,
                                                   std::span<const ReadHole> holes) {
    std::vector<ReadReplyPart> out;
    if (r.dont_fragment) holes = {};
    out.reserve(holes.size() * 2 + 1);
    ChunkPlan plan(r, out);
    uint64_t pos = from;  // Everything before pos has been planned.
    for (const ReadHole& h : holes) {
        const bool usable =
            h.length && h.offset >= pos && h.offset <= to && h.length <= to - h.offset;
        if (!usable) continue;
        if (h.offset > pos) plan.data(pos, h.offset);
        plan.hole(h.offset, h.offset + h.length);
        pos = h.offset + h.length;
    }
    if (pos < to) plan.data(pos, to);
    return out;
}

}  // namespace qnbd::nbd
