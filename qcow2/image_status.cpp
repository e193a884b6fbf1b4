// Block status: data / zero / unallocated runs and the backing-chain depth providing them.
#include "qcow2/image.hpp"

namespace qnbd::qcow2 {
namespace {

void push(std::vector<Extent>& out, Extent e) {
    if (!out.empty()) {
        Extent& l = out.back();
        if (l.data == e.data && l.zero == e.zero && l.depth == e.depth) {
            l.length += e.length;
            return;
        }
    }
    out.push_back(e);
}

}  // namespace

awaitable<Result<std::vector<Extent>>> Qcow2Image::block_status(GuestOffset off, uint64_t len) {
    if (off.value >= header_.size)
        co_return Error{EINVAL, "block status beyond the end of the disk"};
    // Answer at most 16 L2 tables' worth (at least 1 GiB) per call; callers ask again for the rest.
    const uint64_t l2_span = geo_.l2_entries() * geo_.cluster_size();
    const uint64_t limit = std::max<uint64_t>(16 * l2_span, uint64_t{1} << 30);
    len = std::min({len, header_.size - off.value, limit});
    auto segs = co_await map_range(off, len);
    if (!segs) co_return segs.error();
    std::vector<Extent> out;
    for (const Segment& s : *segs) {
        if (std::holds_alternative<PlanZero>(s.plan)) {
            push(out, Extent{s.length, false, true, 1});
        } else if (!std::holds_alternative<PlanUnallocated>(s.plan)) {
            push(out, Extent{s.length, true, false, 1});
        } else if (!backing_) {
            push(out, Extent{s.length, false, true, 0});
        } else {
            const uint64_t bsize = backing_->size();
            uint64_t pos = s.guest.value;
            const uint64_t end = s.guest.value + s.length;
            while (pos < end && pos < bsize) {
                auto sub =
                    co_await backing_->block_status(GuestOffset{pos}, std::min(end, bsize) - pos);
                if (!sub) co_return sub.error();
                for (Extent e : *sub) {
                    e.depth = e.depth ? e.depth + 1 : 0;
                    pos += e.length;
                    push(out, e);
                }
            }
            if (pos < end) push(out, Extent{end - pos, false, true, 0});
        }
    }
    co_return out;
}

}  // namespace qnbd::qcow2
