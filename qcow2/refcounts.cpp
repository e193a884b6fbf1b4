// Refcount reads and updates, deferred frees, write-back snapshots and the rebuild's reconcile.
// Allocation and table growth are in refcount_alloc.cpp.
#include "qcow2/refcounts.hpp"

#include <algorithm>

#include "base/hex.hpp"

namespace qnbd::qcow2 {

Refcounts::Refcounts(io::File& file, Geometry geo, uint32_t order, RefTableLocation loc,
                     std::vector<uint64_t> table, uint64_t cache_budget, uint64_t file_size,
                     DiskStats& stats, MetadataMap& meta)
    : file_(file),
      geo_(geo),
      order_(order),
      per_block_(refcount_entries(geo.cluster_size(), order)),
      loc_(loc),
      table_(std::move(table)),
      cache_(file, geo.cluster_size(), cache_budget, stats),
      stats_(stats),
      fresh_start_(geo.host_cluster_end(file_size)),
      end_cluster_(fresh_start_),
      meta_(meta) {}

awaitable<Result<CacheRef>> Refcounts::block_for(HostClusterIndex c, bool create) {
    const uint64_t b = block_of(c);
    if (create) {
        auto r = co_await ensure_block(b);
        if (!r) co_return r.error();
    }
    if (!has_block(b)) co_return CacheRef{};
    co_return co_await cache_.get(HostOffset{table_[b]});
}

awaitable<Result<HostClusterIndex>> Refcounts::used_end(HostClusterIndex end) {
    uint64_t c = end.value;
    while (c > 0) {
        const uint64_t b = block_of(HostClusterIndex{c - 1});
        const uint64_t first = first_of_block(b).value;
        if (!has_block(b)) {
            c = first;
            continue;
        }
        auto block = co_await cache_.get(HostOffset{table_[b]});
        if (!block) co_return block.error();
        for (; c > first; --c)
            if (get_refcount((*block)->data.data(), (c - 1) % per_block_, order_) != 0)
                co_return HostClusterIndex{c};
    }
    co_return HostClusterIndex{0};
}

awaitable<Result<uint64_t>> Refcounts::get(HostClusterIndex c) {
    auto b = co_await block_for(c, false);
    if (!b) co_return b.error();
    if (!*b) co_return uint64_t{0};
    co_return get_refcount((*b)->data.data(), c.value % per_block_, order_);
}

awaitable<Result<void>> Refcounts::set(HostClusterIndex c, uint64_t value) {
    if (value > max_refcount(order_))
        co_return Error{EIO, "refcount of cluster " + hex(c.value) + " would overflow"};
    auto b = co_await block_for(c, value != 0);
    if (!b) co_return b.error();
    if (!*b) co_return ok();  // Setting 0 where no block exists: already 0.
    set_refcount((*b)->data.data(), c.value % per_block_, order_, value);
    cache_.mark_dirty(*b);
    if (value) note_used(c + ClusterCount{1});
    if (!value) cursor_ = std::min(cursor_, c);
    co_return ok();
}

awaitable<Result<void>> Refcounts::adjust(HostClusterIndex c, int64_t delta) {
    auto b = co_await block_for(c, delta > 0);
    if (!b) co_return b.error();
    uint64_t cur = *b ? get_refcount((*b)->data.data(), c.value % per_block_, order_) : 0;
    const std::string where = hex(geo_.host_start_of(c).value);
    if (delta < 0 && cur < static_cast<uint64_t>(-delta))
        co_return Error{EIO, "image is corrupt: refcount of host cluster at " + where +
                                 " would drop below zero"};
    if (delta > 0 && max_refcount(order_) - cur < static_cast<uint64_t>(delta))
        co_return Error{EIO, "refcount of host cluster at " + where + " would overflow " +
                                 std::to_string(1u << order_) + " bits"};
    co_return co_await set(c, cur + delta);
}

void Refcounts::defer_free(HostOffset off, uint64_t len, bool metadata) {
    if (len) pending_.push_back(PendingFree{epoch_, off, len, metadata});
}

awaitable<Result<void>> Refcounts::apply_frees(uint64_t cut) {
    std::vector<PendingFree> now;
    std::erase_if(pending_, [&](const PendingFree& p) {
        if (p.epoch > cut) return false;
        now.push_back(p);
        return true;
    });
    for (auto& p : now) {
        if (p.metadata) meta_.remove(p.off, p.len);
        const HostClusterIndex first = geo_.host_cluster_of(p.off);
        const HostClusterIndex last = geo_.host_cluster_of(p.off + (p.len - 1));
        for (HostClusterIndex c = first; c <= last; ++c) {
            auto r = co_await adjust(c, -1);
            if (!r) co_return r;
            auto v = co_await get(c);
            if (v && *v == 0) ++stats_.clusters_freed;
        }
    }
    co_return ok();
}

RefcountWrites Refcounts::take_dirty() {
    RefcountWrites w;
    w.blocks = cache_.take_dirty();
    w.table_location = loc_;
    const uint64_t per_cluster = geo_.cluster_size() / 8;
    for (uint64_t tc : dirty_table_) {
        Buffer b(geo_.cluster_size());
        for (uint64_t i = 0; i < per_cluster && tc * per_cluster + i < table_.size(); ++i)
            store_be64(b.data() + i * 8, table_[tc * per_cluster + i]);
        w.table.push_back(TableWrite{tc, loc_.offset + geo_.bytes(ClusterCount{tc}), std::move(b)});
    }
    dirty_table_.clear();
    w.relocation = std::exchange(relocated_, std::nullopt);
    w.reserve_generation = res_.generation;  // Every reserved refcount is in a block by now.
    w.reserve_end = res_.end;
    return w;
}

void Refcounts::restore(RefcountWrites& w) {
    cache_.restore_dirty(w.blocks);
    // A table that moved since has every cluster of its new location dirty already.
    if (w.table_location == loc_)
        for (const TableWrite& t : w.table) dirty_table_.insert(t.cluster);
    if (w.relocation && !relocated_) relocated_ = w.relocation;
}

awaitable<Result<uint64_t>> Refcounts::refcount_at(uint64_t b, HostClusterIndex c) {
    auto block = co_await cache_.get(HostOffset{table_[b]});
    if (!block) co_return block.error();
    co_return get_refcount((*block)->data.data(), c.value % per_block_, order_);
}

awaitable<Result<void>> Refcounts::reconcile(const std::vector<uint64_t>& counts) {
    auto uncovered = [&](uint64_t c, const char* why) {
        return Error{EINVAL, "image is corrupt: host cluster at " + hex(c << geo_.cluster_bits) +
                                 " is in use but " + why +
                                 "; repair it with 'qemu-img check -r all'"};
    };
    const uint64_t covered = table_.size() * per_block_;
    for (uint64_t c = covered; c < counts.size(); ++c)
        if (counts[c]) co_return uncovered(c, "no refcount block covers it");
    for (uint64_t b = 0; b < table_.size(); ++b) {
        const uint64_t first = first_of_block(b).value;
        const uint64_t end = std::min<uint64_t>(counts.size(), first + per_block_);
        if (!has_block(b)) {
            for (uint64_t c = first; c < end; ++c)
                if (counts[c]) co_return uncovered(c, "has no refcount block");
            continue;
        }
        auto block = co_await cache_.get(HostOffset{table_[b]});
        if (!block) co_return block.error();
        for (uint64_t i = 0; i < per_block_; ++i) {
            const uint64_t want = first + i < counts.size() ? counts[first + i] : 0;
            if (want > max_refcount(order_))
                co_return Error{EINVAL, "image is corrupt: cluster " +
                                            hex((first + i) << geo_.cluster_bits) +
                                            " has more references than refcounts can hold"};
            if (get_refcount((*block)->data.data(), i, order_) == want) continue;
            set_refcount((*block)->data.data(), i, order_, want);
            cache_.mark_dirty(*block);
            if (want == 0) cursor_ = std::min(cursor_, HostClusterIndex{first + i});
        }
    }
    // After a crash the file may run past its last referenced cluster (a reserved tail, or
    // clusters whose references never became durable): only referenced clusters are in use.
    uint64_t last = counts.size();
    while (last > 0 && counts[last - 1] == 0) --last;
    end_cluster_ = HostClusterIndex{last};
    restart_reserve();  // Reserved clusters have no references: their counts are 0 now.
    co_return ok();
}

}  // namespace qnbd::qcow2
