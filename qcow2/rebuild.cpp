// Refcount rebuild for an image left dirty by a crash: every cluster reachable from the header
// is counted, and refcounts that differ (leaks above all) are corrected before any write.
#include <algorithm>

#include "qcow2/image.hpp"

namespace qnbd::qcow2 {

/// Reference counts computed from the metadata, indexed by host cluster.
class RefCounter {
  public:
    /// Only clusters below `end` (the end of the image file) exist to be counted.
    RefCounter(const Geometry& geo, HostClusterIndex end) : geo_(geo), end_(end.value) {}
    /// Counts one reference to every cluster [off, off+len) touches inside the file. A damaged
    /// L2 entry may point anywhere below 2^56: what lies past the end of the file reads as EIO
    /// and is never written (decode_checked), so it is not counted.
    void add(HostOffset off, uint64_t len) {
        if (len == 0) return;
        const uint64_t first = off.value >> geo_.cluster_bits;
        const uint64_t last = std::min((off.value + len - 1) >> geo_.cluster_bits, end_ - 1);
        if (first >= end_) return;
        if (last >= counts_.size()) counts_.resize(last + 1, 0);
        for (uint64_t c = first; c <= last; ++c) ++counts_[c];
    }
    std::vector<uint64_t>& counts() { return counts_; }

  private:
    Geometry geo_;
    uint64_t end_;
    std::vector<uint64_t> counts_;
};

awaitable<Result<std::vector<uint64_t>>> Qcow2Image::count_references() {
    RefCounter rc(geo_, geo_.host_cluster_end(reserved_end_));
    each_fixed_metadata([&rc](HostOffset off, uint64_t len) { rc.add(off, len); });
    for (uint64_t l1i = 0; l1i < l1_.size(); ++l1i)
        if (auto r = co_await count_l2_references(l1i, rc); !r) co_return r.error();
    co_return std::move(rc.counts());
}

awaitable<Result<void>> Qcow2Image::rebuild_refcounts() {
    auto counts = co_await count_references();
    if (!counts) co_return counts.error();
    co_return co_await refcounts_->reconcile(*counts);
}

awaitable<Result<void>> Qcow2Image::count_l2_references(uint64_t l1i, RefCounter& rc) {
    const uint64_t l2off = l1_[l1i] & kOffsetMask;
    if (!l2off) co_return ok();
    rc.add(HostOffset{l2off}, geo_.cluster_size());
    auto t = co_await l2_cache_.get(HostOffset{l2off});
    if (!t) co_return t.error();
    for (uint64_t i = 0; i < geo_.l2_entries(); ++i) {
        const ClusterIndex c{l1i * geo_.l2_entries() + i};
        auto [entry, bitmap] = l2_slot(*t, c);
        auto d = decode_l2(entry, bitmap, fmt_, c);
        if (!d) co_return d.error();
        if (d->kind == ClusterKind::Compressed)
            rc.add(d->host, d->compressed_len);
        else if (d->has_host && !data_file_)
            rc.add(d->host, geo_.cluster_size());
    }
    co_return ok();
}

}  // namespace qnbd::qcow2
