// Guest-to-host mapping: L1/L2 lookups and the plan of a guest range as segments.
#include <algorithm>

#include "base/hex.hpp"
#include "qcow2/image.hpp"

namespace qnbd::qcow2 {
namespace {

/// Appends a piece to the segment list, merging it with the last one when they continue.
void append(std::vector<Segment>& segs, GuestOffset g, uint64_t len, const Plan& p) {
    if (!segs.empty()) {
        Segment& last = segs.back();
        if (last.guest + last.length == g && last.plan.index() == p.index()) {
            if (std::holds_alternative<PlanUnallocated>(p) || std::holds_alternative<PlanZero>(p)) {
                last.length += len;
                return;
            }
            if (auto* d = std::get_if<PlanData>(&p);
                d && std::get<PlanData>(last.plan).host + last.length == d->host) {
                last.length += len;
                return;
            }
        }
    }
    segs.push_back(Segment{g, len, p});
}

}  // namespace

std::pair<uint64_t, uint64_t> Qcow2Image::l2_slot(const CacheRef& t, ClusterIndex c) const {
    const uint64_t i = geo_.l2_index(c);
    const std::byte* p = t->data.data() + i * geo_.l2_entry_size();
    return {load_be64(p), geo_.extended_l2 ? load_be64(p + 8) : 0};
}

void Qcow2Image::set_l2_slot(const CacheRef& t, ClusterIndex c, uint64_t entry, uint64_t bitmap) {
    const uint64_t i = geo_.l2_index(c);
    std::byte* p = t->data.data() + i * geo_.l2_entry_size();
    store_be64(p, entry);
    if (geo_.extended_l2) store_be64(p + 8, bitmap);
    l2_cache_.mark_dirty(t);
}

awaitable<Result<CacheRef>> Qcow2Image::l2_table(ClusterIndex c, bool allocate) {
    const uint64_t l1i = geo_.l1_index(c);
    if (l1i >= l1_.size()) {
        if (allocate)
            co_return Error{
                EIO, "guest offset " + hex(geo_.start_of(c).value) + " is beyond the L1 table"};
        co_return CacheRef{};
    }
    const uint64_t entry = l1_[l1i];
    if ((entry & kOffsetMask) == 0) {
        if (!allocate) co_return CacheRef{};
        co_return co_await new_l2_table(c);
    }
    if (allocate && !(entry & kOflagCopied))
        co_return Error{EIO, "L2 table for guest offset " + hex(geo_.start_of(c).value) +
                                 " is shared with a snapshot; writing it is not supported"};
    co_return co_await l2_cache_.get(HostOffset{entry & kOffsetMask});
}

awaitable<Result<CacheRef>> Qcow2Image::new_l2_table(ClusterIndex c) {
    const uint64_t l1i = geo_.l1_index(c);
    auto a = co_await refcounts_->allocate(ClusterCount{1});
    if (!a) co_return a.error();
    const HostOffset host = geo_.host_start_of(a->first);
    if ((l1_[l1i] & kOffsetMask) != 0) {
        // Another request created this table while we allocated: give ours back.
        if (auto r = co_await refcounts_->release(a->first, ClusterCount{1}); !r)
            co_return r.error();
        co_return co_await l2_table(c, true);
    }
    // The table is a fresh dirty cache entry: written at the next barrier before the L1
    // entry that points to it (R5), after its own refcount (R2).
    CacheRef t = l2_cache_.create(host);
    meta_.add(host, geo_.cluster_size());
    l1_[l1i] = host.value | kOflagCopied;
    l1_dirty_.insert(l1i * 8 / geo_.cluster_size());
    co_return t;
}

Result<ClusterInfo> Qcow2Image::decode_checked(const CacheRef& table, ClusterIndex c) const {
    auto [entry, bitmap] = l2_slot(table, c);
    auto ci = decode_l2(entry, bitmap, fmt_, c);
    if (!ci || data_file_) return ci;
    // Data past the end of the image file: a damaged entry (the file always covers the
    // clusters the engine allocated, reserved or not).
    const uint64_t end =
        std::max(reserved_end_, geo_.host_start_of(refcounts_->end_cluster()).value);
    const bool past = ci->kind == ClusterKind::Compressed
                          ? ci->host.value >= end
                          : ci->has_host && ci->host.value + geo_.cluster_size() > end;
    if (past)
        return Error{EIO, "image is corrupt: L2 entry for guest offset " +
                              hex(geo_.start_of(c).value) + " points past the end of the file (" +
                              hex(ci->host.value) + ")"};
    return ci;
}

std::optional<CacheRef> Qcow2Image::l2_table_cached(ClusterIndex c) {
    const uint64_t l1i = geo_.l1_index(c);
    if (l1i >= l1_.size()) return CacheRef{};
    const uint64_t entry = l1_[l1i];
    if ((entry & kOffsetMask) == 0) return CacheRef{};
    if (CacheRef t = l2_cache_.find(HostOffset{entry & kOffsetMask})) return t;
    return std::nullopt;
}

std::optional<CacheRef> Qcow2Image::l2_table_cached_writable(ClusterIndex c) {
    const uint64_t l1i = geo_.l1_index(c);
    if (l1i >= l1_.size() || !(l1_[l1i] & kOflagCopied)) return std::nullopt;
    std::optional<CacheRef> t = l2_table_cached(c);
    if (!t || !*t) return std::nullopt;  // Not cached, or no table yet: l2_table creates it.
    return t;
}

std::optional<Result<ClusterInfo>> Qcow2Image::lookup_cached(ClusterIndex c) {
    std::optional<CacheRef> t = l2_table_cached(c);
    if (!t) return std::nullopt;
    if (!*t) return Result<ClusterInfo>(ClusterInfo{});
    return decode_checked(*t, c);
}

awaitable<Result<ClusterInfo>> Qcow2Image::lookup(ClusterIndex c) {
    if (auto cached = lookup_cached(c)) co_return std::move(*cached);
    auto t = co_await l2_table(c, false);
    if (!t) co_return t.error();
    if (!*t) co_return ClusterInfo{};
    co_return decode_checked(*t, c);
}

awaitable<Result<std::vector<Segment>>> Qcow2Image::map_range(GuestOffset off, uint64_t len) {
    std::vector<Segment> segs;
    const GuestOffset end = off + len;
    for (GuestOffset pos = off; pos < end;) {
        if (auto r = map_cached(pos, end, segs); !r) co_return r.error();
        if (pos >= end) break;
        // The table of `pos` is not cached: read it and map its range from what was read (the
        // cache may evict it again before the next lookup).
        auto t = co_await l2_table(geo_.cluster_of(pos), false);
        if (!t) co_return t.error();
        if (auto r = map_table(*t, pos, end, segs); !r) co_return r.error();
    }
    co_return segs;
}

std::optional<Result<std::vector<Segment>>> Qcow2Image::map_range_cached(GuestOffset off,
                                                                         uint64_t len) {
    std::vector<Segment> segs;
    GuestOffset pos = off;
    if (auto r = map_cached(pos, off + len, segs); !r)
        return Result<std::vector<Segment>>(r.error());
    if (pos < off + len) return std::nullopt;
    return Result<std::vector<Segment>>(std::move(segs));
}

Result<void> Qcow2Image::map_cached(GuestOffset& pos, GuestOffset end, std::vector<Segment>& segs) {
    while (pos < end) {
        std::optional<CacheRef> t = l2_table_cached(geo_.cluster_of(pos));
        if (!t) return ok();
        if (auto r = map_table(*t, pos, end, segs); !r) return r;
    }
    return ok();
}

Result<void> Qcow2Image::map_table(const CacheRef& table, GuestOffset& pos, GuestOffset end,
                                   std::vector<Segment>& segs) {
    const uint64_t l1i = geo_.l1_index(geo_.cluster_of(pos));
    const GuestOffset range_end =
        std::min(end, GuestOffset{(l1i + 1) * geo_.l2_entries() << geo_.cluster_bits});
    if (!table) {
        // No L2 table: the whole rest of its range is unallocated in this layer.
        Plan p =
            fmt_.data_file_raw ? Plan{PlanData{HostOffset{pos.value}}} : Plan{PlanUnallocated{}};
        append(segs, pos, range_end - pos, p);
        pos = range_end;
        return ok();
    }
    while (pos < range_end)
        if (auto r = map_cluster(table, geo_.cluster_of(pos), pos, range_end, segs); !r) return r;
    return ok();
}

Result<void> Qcow2Image::map_cluster(const CacheRef& table, ClusterIndex c, GuestOffset& pos,
                                     GuestOffset end, std::vector<Segment>& segs) {
    auto ci = decode_checked(table, c);
    if (!ci) return ci.error();
    const GuestOffset cstart = geo_.start_of(c);
    const uint64_t sc_size = geo_.subcluster_size();
    const GuestOffset cend = std::min(end, cstart + geo_.cluster_size());
    while (pos < cend) {
        const uint32_t sc = static_cast<uint32_t>((pos - cstart) / sc_size);
        const GuestOffset sc_end = std::min(cend, cstart + (sc + 1) * sc_size);
        Plan p = plan_subcluster(*ci, sc, fmt_, cstart);
        if (auto* d = std::get_if<PlanData>(&p)) d->host += (pos - cstart) - sc * sc_size;
        append(segs, pos, sc_end - pos, p);
        pos = sc_end;
    }
    return ok();
}

}  // namespace qnbd::qcow2
