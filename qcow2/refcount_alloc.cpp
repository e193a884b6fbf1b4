// The allocator: free runs, refcount blocks for new ranges, and refcount table growth.
#include <algorithm>

#include "base/hex.hpp"
#include "qcow2/header.hpp"
#include "qcow2/refcounts.hpp"

namespace qnbd::qcow2 {

awaitable<Result<HostClusterIndex>> Refcounts::find_free_run(ClusterCount n) {
    co_return co_await find_free_run_below(n, HostClusterIndex{UINT64_MAX});
}

awaitable<Result<HostClusterIndex>> Refcounts::find_free_run_below(ClusterCount n,
                                                                   HostClusterIndex limit) {
    HostClusterIndex start = cursor_;
    uint64_t run = 0;
    for (HostClusterIndex c = cursor_;; ++c) {
        if (c >= limit) co_return limit;
        if (run == 0) start = c;
        const uint64_t b = block_of(c);
        bool free = true;  // No block: the whole range is free...
        if (!has_block(b)) {
            // ...but its first cluster will hold the block.
            if (c == first_of_block(b)) {
                run = 0;
                continue;
            }
        } else {
            auto rc = co_await refcount_at(b, c);
            if (!rc) co_return rc.error();
            free = *rc == 0;
        }
        // A metadata cluster counted as free is a damaged refcount: never hand it out.
        if (free && !meta_.overlaps(geo_.host_start_of(c), geo_.cluster_size())) {
            if (++run == n.value) co_return start;
            continue;
        }
        run = 0;
        if (start == cursor_) cursor_ = c + ClusterCount{1};
    }
}

awaitable<Result<bool>> Refcounts::ensure_blocks_for(HostClusterIndex first, ClusterCount n) {
    bool created = false;
    const uint64_t last = block_of(first + ClusterCount{n.value - 1});
    for (uint64_t b = block_of(first); b <= last; ++b) {
        if (has_block(b)) continue;
        auto r = co_await ensure_block(b);
        if (!r) co_return r.error();
        created = true;
    }
    co_return created;
}

Refcounts::AllocLock::~AllocLock() {
    if (!r) return;
    r->alloc_busy_ = false;
    r->alloc_done_.notify_all();
}

awaitable<Refcounts::AllocLock> Refcounts::lock_allocator() {
    while (alloc_busy_) co_await alloc_done_.wait();
    alloc_busy_ = true;
    co_return AllocLock(this);
}

std::optional<Allocation> Refcounts::allocate_reserved(ClusterCount n) {
    // cursor_ at or past the reserve: find_free_run_below(n, res_.next) finds nothing below.
    if (alloc_busy_ || reserve_left() < n.value || cursor_ < res_.next) return std::nullopt;
    return take_reserved(n);
}

awaitable<Result<Allocation>> Refcounts::allocate(ClusterCount n) {
    AllocLock lock = co_await lock_allocator();
    for (;;) {
        // R22: the reserve serves a run when no freed clusters below it can (the file does not
        // grow while it has room); a reserve too short for the run is given back.
        if (reserve_left() >= n.value) {
            auto below = co_await find_free_run_below(n, res_.next);
            if (!below) co_return below.error();
            if (*below == res_.next) co_return take_reserved(n);
        } else if (reserve_left() > 0) {
            if (auto r = co_await drop_reserve_locked(); !r) co_return r.error();
        }
        auto found = co_await find_free_run(n);
        if (!found) co_return found.error();
        const HostClusterIndex first = *found;
        // Every range of the run needs a block; a new block may take a cluster of the run,
        // so then look again.
        auto created = co_await ensure_blocks_for(first, n);
        if (!created) co_return created.error();
        if (*created) continue;
        for (HostClusterIndex c = first; c < first + n; ++c)
            if (auto r = co_await set(c, 1); !r) co_return r.error();
        const bool fresh = first >= fresh_start_;
        fresh_start_ = std::max(fresh_start_, first + n);
        cursor_ = std::max(cursor_, first + n);
        stats_.clusters_allocated += n.value;
        co_return Allocation{first, n, fresh, false};
    }
}

awaitable<Result<void>> Refcounts::release(HostClusterIndex first, ClusterCount n) {
    Result<void> result;
    for (HostClusterIndex c = first; c < first + n; ++c)
        if (auto r = co_await adjust(c, -1); !r && result) result = r;
    co_return result;
}

awaitable<Result<void>> Refcounts::ensure_block(uint64_t b) {
    if (b >= table_.size()) {
        if (auto r = co_await grow_table(b + 1); !r) co_return r;
    }
    if (has_block(b)) co_return ok();
    // A range without a block has no cluster in use: its first cluster holds its block,
    // which counts itself. The table entry is written after the block (R2).
    const HostClusterIndex c = first_of_block(b);
    const HostOffset off = geo_.host_start_of(c);
    // Not so in a damaged image (a zero refcount table entry over the header, say): the block
    // would overwrite metadata, and it could not even be recorded if it went to offset 0.
    if (meta_.overlaps(off, geo_.cluster_size()))
        co_return Error{EIO, "image is corrupt: host cluster at " + hex(off.value) +
                                 " holds metadata but no refcount block covers it"};
    auto e = cache_.create(off);
    meta_.add(off, geo_.cluster_size());
    set_refcount(e->data.data(), 0, order_, 1);
    table_[b] = off.value;
    mark_table_dirty(b);
    note_used(c + ClusterCount{1});
    co_return ok();
}

awaitable<Result<void>> Refcounts::grow_table(uint64_t needed_entries) {
    const RefTableShape shape{per_block_, geo_.cluster_size() / 8,
                              kMaxRefTableBytes / geo_.cluster_size()};
    auto plan = plan_table_growth(needed_entries, table_.size(), end_cluster_, shape,
                                  [this](uint64_t b) { return has_block(b); });
    if (!plan) co_return plan.error();
    std::vector<uint64_t> grown(table_);
    grown.resize(plan->entries, 0);
    HostClusterIndex next = plan->area;
    const uint64_t last = block_of(HostClusterIndex{plan->end().value - 1});
    for (uint64_t b = block_of(plan->area); b <= last; ++b) {
        if (has_block(b)) continue;
        const HostOffset off = geo_.host_start_of(next);
        ++next;
        cache_.create(off);
        meta_.add(off, geo_.cluster_size());
        grown[b] = off.value;
    }
    const RefTableLocation old = loc_;
    table_ = std::move(grown);
    loc_ = RefTableLocation{geo_.host_start_of(plan->table_start()),
                            static_cast<uint32_t>(plan->table_clusters.value)};
    // R3: the new table is written whole, then the header points to it; the old table is
    // freed only after that barrier.
    relocated_ = loc_;
    meta_.add(loc_.offset, geo_.bytes(plan->table_clusters));
    dirty_table_.clear();
    for (uint64_t i = 0; i < plan->table_clusters.value; ++i) dirty_table_.insert(i);
    note_used(plan->end());
    fresh_start_ = std::max(fresh_start_, plan->end());
    for (HostClusterIndex c = plan->area; c < plan->end(); ++c)
        if (auto r = co_await set(c, 1); !r) co_return r;
    if (old.clusters) defer_free(old.offset, geo_.bytes(ClusterCount{old.clusters}), true);
    co_return ok();
}

}  // namespace qnbd::qcow2
