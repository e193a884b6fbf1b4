// The write planner (see write_plan.hpp).
#include "qcow2/write_plan.hpp"

#include <algorithm>
#include <optional>

namespace qnbd::qcow2 {
namespace {

/// Bitmask of the subclusters [first, last].
uint32_t sc_mask(uint32_t first, uint32_t last) {
    uint64_t m = ((uint64_t{1} << (last + 1)) - 1) & ~((uint64_t{1} << first) - 1);
    return static_cast<uint32_t>(m);
}

/// The subclusters [first, last] that [start, start + len) touches.
std::pair<uint32_t, uint32_t> touched(const Geometry& geo, uint64_t start, uint64_t len) {
    return {static_cast<uint32_t>(start / geo.subcluster_size()),
            static_cast<uint32_t>((start + len - 1) / geo.subcluster_size())};
}

bool writable_in_place(const ClusterInfo& ci, const Geometry& geo, uint64_t start, uint64_t len) {
    if (ci.kind != ClusterKind::Normal || !ci.copied) return false;
    if (!geo.extended_l2) return true;
    const auto [first, last] = touched(geo, start, len);
    const uint32_t need = sc_mask(first, last);
    return (ci.alloc_mask & need) == need;
}

}  // namespace

bool reads_as_zero(const ClusterInfo& ci, const WriteContext& ctx) {
    if (ctx.data_file_raw) return false;
    switch (ci.kind) {
        case ClusterKind::Zero:
            return true;
        case ClusterKind::Unallocated:
            return !ctx.has_backing || (ctx.geo.extended_l2 && ci.zero_mask == 0xffffffffu);
        default:
            return false;
    }
}

WriteKind classify_write(const ClusterInfo& ci, uint64_t start, uint64_t len,
                         const WriteContext& ctx) {
    if (writable_in_place(ci, ctx.geo, start, len)) return WriteKind::InPlace;
    if (!ctx.geo.extended_l2 && !ctx.data_file && !ci.has_host && reads_as_zero(ci, ctx))
        return WriteKind::FreshRun;
    return WriteKind::Allocate;
}

WritePlan plan_write(GuestOffset off, uint64_t len, const std::vector<ClusterState>& clusters,
                     const WriteContext& ctx) {
    WritePlan plan;
    std::optional<FreshRunStep> run;
    auto end_run = [&] {
        if (run && run->count.value == 1)
            plan.clusters.push_back(
                ClusterStep{run->first, run->start, run->buf_offset, run->length});
        else if (run)
            plan.fresh_runs.push_back(*run);
        run.reset();
    };
    size_t i = 0;
    for (GuestOffset pos = off; pos < off + len; ++i) {
        const ClusterIndex c = ctx.geo.cluster_of(pos);
        const uint64_t start = ctx.geo.offset_in_cluster(pos);
        const uint64_t n = std::min<uint64_t>(ctx.geo.cluster_size() - start, off + len - pos);
        const uint64_t at = pos - off;
        pos += n;
        const ClusterState& st = clusters.at(i);
        const WriteKind kind =
            st.busy ? WriteKind::Allocate : classify_write(st.info, start, n, ctx);
        if (kind == WriteKind::FreshRun && run && run->first + run->count == c &&
            run->count < ctx.max_run) {
            run->count = ClusterCount{run->count.value + 1};
            run->length += n;
            continue;
        }
        end_run();
        if (kind == WriteKind::FreshRun)
            run = FreshRunStep{c, ClusterCount{1}, start, at, n};
        else if (kind == WriteKind::InPlace)
            plan.in_place.push_back(InPlacePiece{st.info.host + start, at, n});
        else
            plan.clusters.push_back(ClusterStep{c, start, at, n});
    }
    end_run();
    return plan;
}

bool reuses_host(const ClusterInfo& ci) {
    return ci.has_host && ci.copied && ci.kind != ClusterKind::Compressed;
}

AllocationShape shape_allocation(const ClusterInfo& ci, uint64_t start, uint64_t len, bool reuse,
                                 const Geometry& geo) {
    AllocationShape s{0, geo.cluster_size(), 0};
    if (!geo.extended_l2) return s;
    const uint64_t scs = geo.subcluster_size();
    const auto [first, last] = touched(geo, start, len);
    const uint32_t mask = sc_mask(first, last);
    uint32_t alloc = ci.alloc_mask | mask, zero = ci.zero_mask & ~mask;
    if (ci.kind == ClusterKind::Compressed) alloc = 0xffffffffu, zero = 0;
    if (reuse || ci.kind == ClusterKind::Unallocated)
        s.begin = first * scs, s.end = (last + 1) * scs;
    if (reuse && ((ci.alloc_mask >> first) & 1)) s.begin = start;
    if (reuse && ((ci.alloc_mask >> last) & 1)) s.end = start + len;
    s.bitmap = (uint64_t{zero} << 32) | alloc;
    return s;
}

}  // namespace qnbd::qcow2
