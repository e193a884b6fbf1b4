// Reads: one request's segments are issued all at once and complete in any order.
#include <cstring>

#include "qcow2/compress.hpp"
#include "qcow2/image.hpp"

namespace qnbd::qcow2 {

awaitable<Result<void>> Qcow2Image::read(GuestOffset off, std::span<std::byte> buf,
                                         std::vector<ZeroRun>* zeros) {
    if (off.value > header_.size || buf.size() > header_.size - off.value)
        co_return Error{EINVAL, "read beyond the end of the disk"};
    if (buf.empty()) co_return ok();
    IoGuard guard(*this);
    auto cached = map_range_cached(off, buf.size());
    if (!cached) cached = co_await map_range(off, buf.size());
    auto& segs = *cached;
    if (!segs) co_return segs.error();
    std::optional<JoinSet> join;
    std::optional<Segment> single;
    std::vector<HostPiece> data;  // plain data segments, issued below merged by host offset
    for (Segment& seg : *segs) {
        auto out = buf.subspan(seg.guest - off, seg.length);
        const bool zero = std::holds_alternative<PlanZero>(seg.plan) ||
                          (std::holds_alternative<PlanUnallocated>(seg.plan) && !backing_);
        if (zero) {
            std::memset(out.data(), 0, out.size());
            if (zeros) zeros->push_back(ZeroRun{seg.guest - off, seg.length});
            continue;
        }
        if (segs->size() == 1) {
            single = seg;
            break;
        }
        if (auto* d = std::get_if<PlanData>(&seg.plan)) {
            data.push_back(HostPiece{d->host, out});
            continue;
        }
        if (!join) join.emplace(ex_);
        join->spawn(read_segment(seg, out));
    }
    if (single) {
        // One plain data segment (most small reads): straight to the file, one frame fewer.
        if (auto* d = std::get_if<PlanData>(&single->plan))
            co_return co_await data_io().read_zero_padded(d->host, buf);
        co_return co_await read_segment(*single, buf);
    }
    for (auto& run : host_runs(data)) {
        if (!join) join.emplace(ex_);
        join->spawn(read_run(data_io(), std::move(run)));
    }
    if (join) co_return co_await join->wait();
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::read_segment(Segment seg, std::span<std::byte> out) {
    if (auto* d = std::get_if<PlanData>(&seg.plan))
        co_return co_await data_io().read_zero_padded(d->host, out);
    if (auto* c = std::get_if<PlanCompressed>(&seg.plan))
        co_return co_await read_compressed(*c, geo_.offset_in_cluster(seg.guest), out);
    if (std::holds_alternative<PlanUnallocated>(seg.plan) && backing_)
        co_return co_await read_backing(seg.guest, out);
    std::memset(out.data(), 0, out.size());
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::read_backing(GuestOffset off, std::span<std::byte> out) {
    const uint64_t bsize = backing_->size();
    uint64_t n = off.value >= bsize ? 0 : std::min<uint64_t>(out.size(), bsize - off.value);
    if (n < out.size()) std::memset(out.data() + n, 0, out.size() - n);
    if (n == 0) co_return ok();
    co_return co_await backing_->read(off, out.first(n), nullptr);
}

awaitable<Result<void>> Qcow2Image::read_compressed(PlanCompressed p, uint64_t in_cluster,
                                                    std::span<std::byte> out) {
    Buffer in(p.length);
    auto r = co_await file_->read_zero_padded(p.host, in.span());
    if (!r) co_return r;
    Buffer cluster(geo_.cluster_size());
    auto d = decompress_cluster(header_.compression_type, in.span(), cluster.span());
    if (!d) co_return d;
    std::memcpy(out.data(), cluster.data() + in_cluster, out.size());
    co_return ok();
}

}  // namespace qnbd::qcow2
