// Refcounts and cluster allocation. The refcount table lives in memory; refcount blocks in a
// MetadataCache. Allocation happens in memory (blocks become dirty) and reaches the disk at a
// barrier, before anything that references the clusters (docs/ARCHITECTURE.md, R2, R3); frees
// are deferred until the barrier that made the removal of the reference durable (R6, R7).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "base/async.hpp"
#include "qcow2/metadata_cache.hpp"
#include "qcow2/metadata_map.hpp"
#include "qcow2/refcount_codec.hpp"
#include "qcow2/refcount_growth.hpp"

namespace qnbd::qcow2 {

/// Where the refcount table is, as the header describes it.
struct RefTableLocation {
    HostOffset offset;
    uint32_t clusters = 0;
    bool operator==(const RefTableLocation&) const = default;
};

/// One encoded cluster of a table (refcount table or L1) to write back.
struct TableWrite {
    uint64_t cluster = 0;  ///< Which cluster of the table.
    HostOffset offset;     ///< Where it goes in the image file.
    Buffer data;
};

/// The refcount metadata one barrier writes back, captured in one step (R9).
struct RefcountWrites {
    std::vector<DirtyCopy> blocks;               ///< Dirty refcount blocks.
    std::vector<TableWrite> table;               ///< Changed refcount table clusters.
    RefTableLocation table_location;             ///< Where `table` was encoded for.
    std::optional<RefTableLocation> relocation;  ///< Set when the table moved: header update.
    uint64_t reserve_generation = 0;             ///< The reserve these blocks count (R22)...
    HostClusterIndex reserve_end;                ///< ... up to here: durable after the barrier.
    bool empty() const { return blocks.empty() && table.empty() && !relocation; }
};

/// A run of host clusters handed out by the allocator, each with refcount 1.
struct Allocation {
    HostClusterIndex first;
    ClusterCount count;
    bool fresh = false;  ///< Never used before (beyond the original end of file): reads as zeros.
    /// Taken from the reserve with its refcount already durable, inside the durable file (R22).
    bool durable = false;
};

/// Refcount bookkeeping and the allocator of host clusters in the image file.
class Refcounts {
  public:
    /// `meta` learns of every refcount block and table cluster this object creates or frees.
    Refcounts(io::File& file, Geometry geo, uint32_t order, RefTableLocation loc,
              std::vector<uint64_t> table, uint64_t cache_budget, uint64_t file_size,
              DiskStats& stats, MetadataMap& meta);

    /// Refcount of host cluster `c` (0 where no refcount block covers it).
    awaitable<Result<uint64_t>> get(HostClusterIndex c);
    /// Adds `delta` to the refcount of `c`; EIO on overflow or underflow.
    awaitable<Result<void>> adjust(HostClusterIndex c, int64_t delta);
    /// Sets the refcount of `c` (creating its refcount block if needed).
    awaitable<Result<void>> set(HostClusterIndex c, uint64_t value);

    /// The longest run allocate() can find: a range without a refcount block gives its first
    /// cluster to the block, so runs never cross into such a range's start.
    ClusterCount max_run() const { return ClusterCount{per_block_ - 1}; }
    /// Allocates `n` (at most max_run()) contiguous free clusters with refcount 1.
    awaitable<Result<Allocation>> allocate(ClusterCount n);
    /// allocate(n) without a coroutine frame where it needs no I/O and no wait: the allocator
    /// is free and the reserve serves the run, with no freed cluster below it (R22). Else
    /// nullopt, and the caller calls allocate().
    std::optional<Allocation> allocate_reserved(ClusterCount n);
    /// The first run of `n` free clusters at or after the allocation cursor (read-only; the
    /// first cluster of a range without a refcount block is never part of a run).
    awaitable<Result<HostClusterIndex>> find_free_run(ClusterCount n);
    /// As find_free_run, but a run that would not end at or before `limit` gives `limit`.
    awaitable<Result<HostClusterIndex>> find_free_run_below(ClusterCount n, HostClusterIndex limit);
    /// R22: extends the reserve of fresh clusters counted ahead of use to `want` clusters,
    /// below `limit` (the end of the file as preallocated). The barrier that captures their
    /// refcount blocks makes them durable (reserve_durable); allocate() hands them out first
    /// when no freed cluster is available below them.
    awaitable<Result<void>> top_up_reserve(HostClusterIndex limit, uint64_t want);
    /// The barrier that captured `w` completed: its reserved clusters' refcounts are durable.
    void reserve_durable(const RefcountWrites& w);
    /// Gives the unused reserve back (refcount 0), as at clean close.
    awaitable<Result<void>> drop_reserve();
    /// Reserved clusters not yet handed out.
    uint64_t reserve_left() const { return (res_.end - res_.next).value; }
    /// Gives back a run allocate() returned whose use failed before anything referenced it.
    /// Best effort: a failure leaves the run allocated (leaked, reclaimed by a rebuild).
    awaitable<Result<void>> release(HostClusterIndex first, ClusterCount n);

    /// Drops one reference from every cluster that [off, off+len) touches, after the next
    /// barrier that starts from now has completed (R6). Freed `metadata` stops counting as
    /// metadata only then.
    void defer_free(HostOffset off, uint64_t len, bool metadata = false);
    /// The epoch frees are registered in now; a barrier closes it (R7).
    uint64_t close_epoch() { return epoch_++; }
    /// The epoch currently open for frees.
    uint64_t epoch() const { return epoch_; }
    /// Applies every deferred free registered in epochs <= `cut`.
    awaitable<Result<void>> apply_frees(uint64_t cut);
    bool has_pending_frees() const { return !pending_.empty(); }

    /// Sets every refcount to `counts` (index: host cluster), for the rebuild of a dirty image;
    /// the end of the used clusters becomes the last one referenced.
    awaitable<Result<void>> reconcile(const std::vector<uint64_t>& counts);

    /// Captures every dirty block, changed table cluster and a table move, and marks them
    /// clean: what a barrier writes.
    RefcountWrites take_dirty();
    /// Marks what a failed barrier captured dirty again (R10).
    void restore(RefcountWrites& w);
    bool has_dirty() const { return cache_.has_dirty() || !dirty_table_.empty() || relocated_; }

    /// One past the highest cluster known to be in use or allocated.
    HostClusterIndex end_cluster() const { return end_cluster_; }
    /// One past the last cluster below `end` whose refcount is not zero (0 if none): scans
    /// the refcount blocks backwards from `end`.
    awaitable<Result<HostClusterIndex>> used_end(HostClusterIndex end);
    RefTableLocation location() const { return loc_; }
    /// The refcount table: host offsets of the refcount blocks (0: none).
    const std::vector<uint64_t>& table() const { return table_; }
    uint64_t entries_per_block() const { return per_block_; }

  private:
    /// Index of the refcount table entry (and block) that covers `c`.
    uint64_t block_of(HostClusterIndex c) const { return c.value / per_block_; }
    /// The first host cluster a refcount block covers.
    HostClusterIndex first_of_block(uint64_t b) const { return HostClusterIndex{b * per_block_}; }
    bool has_block(uint64_t b) const { return b < table_.size() && table_[b] != 0; }

    awaitable<Result<CacheRef>> block_for(HostClusterIndex c, bool create);
    awaitable<Result<void>> ensure_block(uint64_t b);
    awaitable<Result<bool>> ensure_blocks_for(HostClusterIndex first, ClusterCount n);
    awaitable<Result<void>> grow_table(uint64_t needed_entries);
    awaitable<Result<uint64_t>> refcount_at(uint64_t b, HostClusterIndex c);
    void mark_table_dirty(uint64_t b) { dirty_table_.insert(b * 8 / geo_.cluster_size()); }
    void note_used(HostClusterIndex end) { end_cluster_ = std::max(end_cluster_, end); }

    io::File& file_;
    Geometry geo_;
    uint32_t order_;
    uint64_t per_block_;
    RefTableLocation loc_;
    std::vector<uint64_t> table_;
    MetadataCache cache_;
    DiskStats& stats_;
    std::set<uint64_t> dirty_table_;  ///< Indices of changed table clusters.
    std::optional<RefTableLocation> relocated_;
    HostClusterIndex cursor_;       ///< No free cluster below this one.
    HostClusterIndex fresh_start_;  ///< Clusters from here on were never used.
    HostClusterIndex end_cluster_;
    uint64_t epoch_ = 1;
    struct PendingFree {
        uint64_t epoch;
        HostOffset off;
        uint64_t len;
        bool metadata;
    };
    MetadataMap& meta_;
    std::vector<PendingFree> pending_;
    bool alloc_busy_ = false;
    Notifier alloc_done_;
    /// R22: fresh clusters [next, end) counted (refcount 1) but not handed out; those below
    /// durable_end have their refcounts durable. A new generation starts with every new range.
    struct Reserve {
        HostClusterIndex next, end, durable_end;
        uint64_t generation = 0;
    } res_;
    Allocation take_reserved(ClusterCount n);
    /// Where a new reserve starts: past every cluster in use and every cluster ever used.
    HostClusterIndex tail() const { return std::max(end_cluster_, fresh_start_); }
    awaitable<Result<bool>> reserve_one();
    awaitable<Result<void>> drop_reserve_locked();
    void restart_reserve();

    /// Holds the allocator: allocation, the reserve's top-up and its drop take turns.
    class AllocLock {
      public:
        explicit AllocLock(Refcounts* owner) : r(owner) {}
        AllocLock(AllocLock&& o) noexcept : r(std::exchange(o.r, nullptr)) {}
        AllocLock& operator=(AllocLock&&) = delete;
        ~AllocLock();

      private:
        Refcounts* r;
    };
    awaitable<AllocLock> lock_allocator();
};

}  // namespace qnbd::qcow2
