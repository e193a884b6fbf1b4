// A bounded cache of metadata clusters (L2 tables or refcount blocks) with dirty tracking.
// Entries are shared_ptrs: holding one pins the entry (it is never evicted while held).
// Dirty entries are never evicted (docs/ARCHITECTURE.md, R8); they leave the dirty state only
// through take_dirty(), which the flush barrier calls to write them back in crash-safe order.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "base/async.hpp"
#include "base/buffer.hpp"
#include "disk/disk.hpp"
#include "io/file.hpp"

namespace qnbd::qcow2 {

/// One cached metadata cluster.
struct CacheEntry {
    HostOffset offset;
    Buffer data;
    bool dirty = false;
    bool loading = false;
    std::optional<Error> load_error;
    Notifier loaded;
    uint64_t last_use = 0;
};
using CacheRef = std::shared_ptr<CacheEntry>;

/// A dirty entry's contents captured for write-back.
struct DirtyCopy {
    CacheRef entry;
    Buffer data;
};

/// Cache of whole metadata clusters read from one file.
class MetadataCache {
  public:
    /// `budget` is the byte size above which clean entries are evicted (least recently used).
    MetadataCache(io::File& file, uint64_t cluster_size, uint64_t budget, DiskStats& stats)
        : file_(file), cluster_size_(cluster_size), budget_(budget), stats_(stats) {}

    /// The cluster at `off`, read from the file on a miss; concurrent misses share one read.
    awaitable<Result<CacheRef>> get(HostOffset off);
    /// The cluster at `off` if it is cached and loaded (a hit, as get() counts it), else null:
    /// the lookup that needs no coroutine frame; the caller falls back to get().
    CacheRef find(HostOffset off);
    /// A new zero-filled dirty entry for a freshly allocated cluster (nothing is read).
    CacheRef create(HostOffset off);
    /// Marks an entry as modified.
    void mark_dirty(const CacheRef& e);
    /// Copies every dirty entry and marks it clean; the copies are what a barrier writes.
    std::vector<DirtyCopy> take_dirty();
    /// Marks the entries of a failed write-back dirty again.
    void restore_dirty(std::vector<DirtyCopy>& copies);
    /// Bytes held by dirty entries.
    uint64_t dirty_bytes() const { return dirty_count_ * cluster_size_; }
    bool has_dirty() const { return dirty_count_ > 0; }
    uint64_t budget() const { return budget_; }

  private:
    void touch(CacheEntry& e) { e.last_use = ++clock_; }
    void evict();

    io::File& file_;
    uint64_t cluster_size_;
    uint64_t budget_;
    DiskStats& stats_;
    std::unordered_map<HostOffset, CacheRef> map_;
    uint64_t clock_ = 0;
    uint64_t dirty_count_ = 0;
};

}  // namespace qnbd::qcow2
