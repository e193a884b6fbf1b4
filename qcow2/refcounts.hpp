// Refcounts and cluster allocation. The refcount table lives in memory; refcount blocks in a
// MetadataCache. Allocation happens in memory (blocks become dirty); frees are deferred until
// the barrier that makes the referencing L2 change durable has completed.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <vector>

#include "base/async.hpp"
#include "qcow2/metadata_cache.hpp"
#include "qcow2/refcount_codec.hpp"

namespace qnbd::qcow2 {

/// Where the refcount table is, as the header describes it.
struct RefTableLocation {
    HostOffset offset;
    uint32_t clusters = 0;
};

/// One encoded cluster of the refcount table to write back.
struct TableWrite {
    HostOffset offset;
    Buffer data;
};

/// Refcount bookkeeping and the allocator of host clusters in the image file.
class Refcounts {
  public:
    Refcounts(io::File& file, Geometry geo, uint32_t order, RefTableLocation loc,
              std::vector<uint64_t> table, uint64_t cache_budget, uint64_t file_size,
              DiskStats& stats);

    /// Refcount of host cluster `c` (0 where no refcount block covers it).
    awaitable<Result<uint64_t>> get(HostClusterIndex c);
    /// Adds `delta` to the refcount of `c`; EIO on overflow or underflow.
    awaitable<Result<void>> adjust(HostClusterIndex c, int64_t delta);
    /// Sets the refcount of `c` (creating its refcount block if needed).
    awaitable<Result<void>> set(HostClusterIndex c, uint64_t value);
    /// The longest run allocate() can find: a range without a refcount block gives its first
    /// cluster to the block, so runs never cross into such a range's start.
    uint64_t max_run() const { return per_block_ - 1; }
    /// Allocates `n` (at most max_run()) contiguous free clusters with refcount 1. `fresh` tells
    /// whether they were never used (beyond the original end of file), so they read as zeros
    /// without writing.
    awaitable<Result<HostOffset>> allocate(uint64_t n, bool& fresh);
    /// Drops one reference from every cluster that [off, off+len) touches, after the next
    /// barrier that starts from now has completed.
    void defer_free(HostOffset off, uint64_t len);
    /// The epoch frees are registered in now; a barrier closes it.
    uint64_t close_epoch() { return epoch_++; }
    /// The epoch currently open for frees.
    uint64_t epoch() const { return epoch_; }
    /// Applies every deferred free registered in epochs <= `cut`. Returns freed cluster runs.
    awaitable<Result<std::vector<std::pair<HostOffset, uint64_t>>>> apply_frees(uint64_t cut);

    /// Sets every refcount to `counts` (index: host cluster), for the rebuild of a dirty image.
    awaitable<Result<void>> reconcile(const std::vector<uint64_t>& counts);
    /// Dirty refcount blocks for the barrier.
    std::vector<DirtyCopy> take_dirty_blocks() { return cache_.take_dirty(); }
    void restore_dirty_blocks(std::vector<DirtyCopy>& c) { cache_.restore_dirty(c); }
    /// Changed refcount table clusters, encoded, at the table's current location.
    std::vector<TableWrite> take_dirty_table();
    void restore_dirty_table(const std::vector<TableWrite>& w);
    /// The new table location if the table moved since the last call.
    std::optional<RefTableLocation> take_relocation();
    void restore_relocation(RefTableLocation loc) { relocated_ = loc; }
    bool has_dirty() const { return cache_.has_dirty() || !dirty_table_.empty() || relocated_; }
    bool has_pending_frees() const { return !pending_.empty(); }
    /// One past the highest cluster known to be in use or allocated.
    uint64_t end_cluster() const { return end_cluster_; }
    RefTableLocation location() const { return loc_; }
    const std::vector<uint64_t>& table() const { return table_; }
    uint64_t entries_per_block() const { return per_block_; }

  private:
    awaitable<Result<CacheRef>> block_for(HostClusterIndex c, bool create);
    awaitable<Result<void>> ensure_block(uint64_t bi);
    awaitable<Result<void>> grow_table(uint64_t needed_entries);
    awaitable<Result<std::optional<uint64_t>>> find_free_run(uint64_t n);
    void mark_table_dirty(uint64_t bi) { dirty_table_.insert(bi * 8 / geo_.cluster_size()); }
    void note_used(uint64_t end) { end_cluster_ = std::max(end_cluster_, end); }

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
    uint64_t cursor_ = 0;       ///< No free cluster below this one.
    uint64_t fresh_start_ = 0;  ///< Clusters from here on were never used.
    uint64_t end_cluster_ = 0;
    uint64_t epoch_ = 1;
    struct PendingFree {
        uint64_t epoch;
        HostOffset off;
        uint64_t len;
    };
    std::vector<PendingFree> pending_;
    bool alloc_busy_ = false;
    Notifier alloc_done_;
};

}  // namespace qnbd::qcow2
