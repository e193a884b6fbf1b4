// NBD_CMD_BLOCK_STATUS: one chunk per selected metadata context.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "protocol/errors.hpp"
#include "server/request.hpp"

namespace qnbd::server {

using namespace qnbd::nbd;

namespace {

/// The status bits of an extent in context `m`.
uint32_t status_of(const Extent& e, MetaContext m) {
    if (m == MetaContext::qemu_allocation_depth) return e.depth;
    return (e.data ? 0 : NBD_STATE_HOLE) | (e.zero ? NBD_STATE_ZERO : 0);
}

/// Descriptors of `extents` in context `m`, adjacent equal statuses merged; with `one`
/// (NBD_CMD_FLAG_REQ_ONE) only the first.
std::vector<BlockDescriptor> describe(const std::vector<Extent>& extents, MetaContext m, bool one) {
    std::vector<BlockDescriptor> out;
    for (const Extent& e : extents) {
        const uint32_t st = status_of(e, m);
        if (!out.empty() && out.back().status == st) {
            out.back().length += static_cast<uint32_t>(e.length);
            continue;
        }
        if (one && !out.empty()) break;
        out.push_back(BlockDescriptor{static_cast<uint32_t>(e.length), st});
    }
    return out;
}

/// Descriptors of a dirty bitmap over [off, off+len): NBD_STATE_DIRTY where it is dirty.
std::vector<BlockDescriptor> describe_bitmap(const DirtyBitmap& b, uint64_t off, uint64_t len,
                                             bool one) {
    std::vector<BlockDescriptor> out;
    for (const DirtyRun& r : b.runs(off, len, one ? 1 : 65536))
        out.push_back(
            BlockDescriptor{static_cast<uint32_t>(r.length), r.dirty ? NBD_STATE_DIRTY : 0u});
    return out;
}

}  // namespace

awaitable<void> RequestHandler::block_status() {
    Disk& d = *exp().disk;
    const bool one = r_.flags & NBD_CMD_FLAG_REQ_ONE;
    if (r_.length == 0) co_return co_await reply_error(NBD_EINVAL, "block status of zero length");
    // Ask the disk until the range is covered (the disk may answer in pieces).
    std::vector<Extent> extents;
    uint64_t pos = r_.offset;
    const uint64_t end = r_.offset + r_.length;
    // Bitmap contexts are answered from memory: the disk is asked only for the others.
    const auto contexts = c_.neg_->contexts.list();
    const bool need_extents = std::any_of(contexts.begin(), contexts.end(),
                                          [](MetaContext m) { return !dirty_bitmap_index(m); });
    while (need_extents && pos < end && extents.size() < 65536) {
        auto r = co_await d.block_status(GuestOffset{pos}, end - pos);
        if (!r) {
            spdlog::warn("{}: BLOCK_STATUS at offset {} failed: {}", c_.peer(), pos,
                         r.error().message);
            co_return co_await reply_error(nbd_error(r.error().code, r_), r.error().message);
        }
        for (Extent e : *r) {
            e.length = std::min(e.length, end - pos);
            if (!e.length) break;
            pos += e.length;
            extents.push_back(e);
        }
        if (one) break;
    }
    std::vector<ByteVector> chunks;
    for (size_t i = 0; i < contexts.size(); ++i) {
        auto bitmap = dirty_bitmap_index(contexts[i]);
        auto desc = bitmap ? describe_bitmap(*exp().bitmaps.at(*bitmap), r_.offset, r_.length, one)
                           : describe(extents, contexts[i], one);
        const uint16_t flags = i + 1 == contexts.size() ? NBD_REPLY_FLAG_DONE : 0;
        chunks.push_back(encode_block_status(flags, r_.cookie, context_id(contexts[i]), desc));
    }
    std::vector<asio::const_buffer> out;
    for (auto& c : chunks) out.emplace_back(c.data(), c.size());
    co_await send_reply(out, NBD_SUCCESS);
}

}  // namespace qnbd::server
