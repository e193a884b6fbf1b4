// Qcow2Image: the qcow2 engine behind a Disk. Requests run concurrently on one executor;
// no lock is held across I/O. Metadata changes stay in memory and reach the disk at flush
// barriers, in the order of docs/ARCHITECTURE.md's rules R1-R21 (image_flush.cpp,
// image_bitmaps.cpp, bitmap_store.cpp).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>
#include <vector>

#include "base/async.hpp"
#include "disk/disk.hpp"
#include "io/file.hpp"
#include "qcow2/bitmaps.hpp"
#include "qcow2/header.hpp"
#include "qcow2/host_runs.hpp"
#include "qcow2/l2_entry.hpp"
#include "qcow2/metadata_cache.hpp"
#include "qcow2/metadata_map.hpp"
#include "qcow2/refcounts.hpp"
#include "qcow2/write_plan.hpp"

namespace qnbd::qcow2 {

/// One run of a guest range with a single plan (host-contiguous for data).
struct Segment {
    GuestOffset guest;
    uint64_t length = 0;
    Plan plan;
};

/// How the engine serves an image (set by the opener from the user's options).
struct EngineOptions {
    bool read_only = false;
    bool writethrough = false;          ///< Every write is durable before it completes.
    uint64_t metadata_cache_bytes = 0;  ///< L2 + refcount cache budget; 0 picks the default.
};

/// Everything needed to construct an image once its files are open and validated.
struct ImageParts {
    asio::any_io_executor ex;
    std::unique_ptr<io::File> file;
    std::unique_ptr<io::File> data_file;  ///< External data file, or null.
    std::shared_ptr<Disk> backing;        ///< Backing image, or null.
    Header header;
    Buffer header_bytes;  ///< The first header_length bytes as read.
    std::vector<uint64_t> l1;
    std::vector<uint64_t> reftable;
    uint64_t file_size = 0;
    EngineOptions opts;
};

class Qcow2Image;
class RefCounter;

/// Marks data I/O of one request as in flight for the duration of a scope (R7).
class IoGuard {
  public:
    explicit IoGuard(Qcow2Image& img);
    ~IoGuard();
    IoGuard(const IoGuard&) = delete;
    IoGuard& operator=(const IoGuard&) = delete;

  private:
    Qcow2Image& img_;
    uint64_t epoch_;
};

/// A guest cluster's busy marker, held for a scope: one allocating writer at a time (R12).
class ClusterLock {
  public:
    ClusterLock(Qcow2Image& img, ClusterIndex c) : img_(&img), c_(c) {}
    ClusterLock(ClusterLock&& o) noexcept : img_(std::exchange(o.img_, nullptr)), c_(o.c_) {}
    ClusterLock& operator=(ClusterLock&&) = delete;
    ~ClusterLock();

  private:
    Qcow2Image* img_;
    ClusterIndex c_;
};

/// A host cluster chosen for an allocating write.
struct DataCluster {
    HostOffset host;
    bool fresh = false;       ///< Never written: reads as zeros without zeroing (R13).
    bool refcounted = false;  ///< Allocated from the refcounts (not an external data file).
    bool durable = false;     ///< Its refcount was durable before it was handed out (R22).
};

/// Everything one barrier makes durable, captured in one step (R9).
struct BarrierWrites {
    uint64_t epoch_cut = 0;  ///< Frees of epochs up to this one apply after the barrier.
    RefcountWrites refcounts;
    std::vector<DirtyCopy> l2;
    std::vector<TableWrite> l1;
    bool data = false;  ///< Data was written since the previous barrier.
    /// Some L2 change references a cluster whose refcount or data must be durable first
    /// (R2, R4); without one the L2 tables need no sync before them (R22).
    bool l2_ordered = false;
    bool has_metadata() const { return !refcounts.empty() || !l2.empty() || !l1.empty(); }
};

/// A qcow2 image opened for serving.
class Qcow2Image final : public Disk, public std::enable_shared_from_this<Qcow2Image> {
  public:
    /// Opens an image from its validated parts; for writable images whose dirty bit is set,
    /// rebuilds the refcounts before any write.
    static awaitable<Result<std::shared_ptr<Qcow2Image>>> create(ImageParts parts);
    ~Qcow2Image() override = default;

    uint64_t size() const override { return header_.size; }
    bool read_only() const override { return read_only_; }
    std::string format_name() const override { return "qcow2"; }
    awaitable<Result<void>> read(GuestOffset off, std::span<std::byte> buf,
                                 std::vector<ZeroRun>* zeros) override;
    awaitable<Result<void>> write(GuestOffset off, std::span<const std::byte> buf,
                                  WriteFlags flags) override;
    awaitable<Result<void>> write_zeroes(GuestOffset off, uint64_t len, ZeroFlags flags) override;
    awaitable<Result<void>> discard(GuestOffset off, uint64_t len, WriteFlags flags) override;
    awaitable<Result<void>> flush() override;
    awaitable<Result<std::vector<Extent>>> block_status(GuestOffset off, uint64_t len) override;
    awaitable<Result<void>> close() override;
    DiskStats stats() const override;
    const DirtyBitmap* dirty_bitmap(std::string_view name) const override;

    const Header& header() const { return header_; }

  private:
    friend class IoGuard;
    friend class ClusterLock;
    explicit Qcow2Image(ImageParts parts);
    /// The file data clusters live in: the external data file, or the image itself.
    io::File& data_io() { return data_file_ ? *data_file_ : *file_; }

    // Mapping (image_map.cpp).
    awaitable<Result<CacheRef>> l2_table(ClusterIndex c, bool allocate);
    awaitable<Result<CacheRef>> new_l2_table(ClusterIndex c);
    /// l2_table(c, false) without a coroutine frame when it can: the table (null for none)
    /// when no read is needed, nullopt when the table must be read from the file first.
    std::optional<CacheRef> l2_table_cached(ClusterIndex c);
    /// l2_table(c, true) without a coroutine frame where the table exists, is owned (COPIED)
    /// and cached; nullopt otherwise (l2_table creates, reads or refuses it).
    std::optional<CacheRef> l2_table_cached_writable(ClusterIndex c);
    awaitable<Result<ClusterInfo>> lookup(ClusterIndex c);
    /// lookup(c) from a cached table (no coroutine frame); nullopt when the table must be read.
    std::optional<Result<ClusterInfo>> lookup_cached(ClusterIndex c);
    /// The entry of `c` in `table`, refused as corrupt where it points past the file's end.
    Result<ClusterInfo> decode_checked(const CacheRef& table, ClusterIndex c) const;
    /// The plan of [off, off + len), reading the L2 tables the cache lacks.
    awaitable<Result<std::vector<Segment>>> map_range(GuestOffset off, uint64_t len);
    /// map_range from cached tables only (no coroutine frame); nullopt when a table is missing.
    std::optional<Result<std::vector<Segment>>> map_range_cached(GuestOffset off, uint64_t len);
    /// Maps from `pos` as far as the cached tables reach (at most to `end`), advancing `pos`.
    Result<void> map_cached(GuestOffset& pos, GuestOffset end, std::vector<Segment>& segs);
    /// Maps from `pos` to the end of `table`'s range (at most to `end`); a null table is an
    /// unallocated range.
    Result<void> map_table(const CacheRef& table, GuestOffset& pos, GuestOffset end,
                           std::vector<Segment>& segs);
    Result<void> map_cluster(const CacheRef& table, ClusterIndex c, GuestOffset& pos,
                             GuestOffset end, std::vector<Segment>& segs);
    std::pair<uint64_t, uint64_t> l2_slot(const CacheRef& t, ClusterIndex c) const;
    void set_l2_slot(const CacheRef& t, ClusterIndex c, uint64_t entry, uint64_t bitmap);

    // Reading (image_read.cpp).
    awaitable<Result<void>> read_segment(Segment seg, std::span<std::byte> out);
    awaitable<Result<void>> read_backing(GuestOffset off, std::span<std::byte> out);
    awaitable<Result<void>> read_compressed(PlanCompressed p, uint64_t in_cluster,
                                            std::span<std::byte> out);

    // Writing (image_write.cpp; the plan comes from write_plan.hpp).
    Result<void> check_writable(GuestOffset off, uint64_t len) const;
    WriteContext write_context() const;
    /// Takes the busy marker of `c`, waiting for the request that holds it.
    /// lock_cluster(c) without a coroutine frame when `c` is free; nullopt when it is busy.
    std::optional<ClusterLock> try_lock_cluster(ClusterIndex c);
    awaitable<ClusterLock> lock_cluster(ClusterIndex c);
    void unlock_cluster(ClusterIndex c);
    awaitable<Result<std::vector<ClusterState>>> cluster_states(GuestOffset off, uint64_t len);
    /// cluster_states from cached tables only (no coroutine frame); nullopt when one is missing.
    std::optional<Result<std::vector<ClusterState>>> cluster_states_cached(GuestOffset off,
                                                                           uint64_t len);
    /// The plan's writes, started together (not a coroutine itself: it returns their join).
    awaitable<Result<void>> execute(const WritePlan& plan, std::span<const std::byte> buf);
    awaitable<Result<void>> write_cluster(ClusterIndex c, uint64_t start,
                                          std::span<const std::byte> data);
    awaitable<Result<void>> write_allocating(ClusterIndex c, const ClusterInfo& ci, uint64_t start,
                                             std::span<const std::byte> data);
    awaitable<Result<void>> fill_cluster(ClusterIndex c, const ClusterInfo& ci, DataCluster target,
                                         AllocationShape shape, uint64_t start,
                                         std::span<const std::byte> data);
    /// Points the L2 entry of `c` at `host`; `early` when the cluster was counted at an earlier
    /// barrier and reads as the guest's old contents (zeros) until the data is durable (R22).
    awaitable<Result<void>> set_mapping(ClusterIndex c, HostOffset host, uint64_t bitmap,
                                        bool early);
    /// set_mapping without a coroutine frame where the L2 table is cached and writable; false
    /// (nothing changed) where set_mapping must read or create it.
    bool set_mapping_cached(ClusterIndex c, HostOffset host, uint64_t bitmap, bool early);
    void set_data_entry(const CacheRef& t, ClusterIndex c, HostOffset host, uint64_t bitmap,
                        bool early);
    /// Writes a run of clusters that all need a new host cluster and read as zeros: one
    /// contiguous allocation, one data write (or cluster by cluster if one changed meanwhile).
    awaitable<Result<void>> write_fresh_run(FreshRunStep run, std::span<const std::byte> data);
    awaitable<Result<void>> write_clusters_of(FreshRunStep run, std::span<const std::byte> data);
    awaitable<Result<DataCluster>> allocate_data_cluster(ClusterIndex c);
    /// allocate_data_cluster without a coroutine frame where it needs no I/O and no wait.
    std::optional<DataCluster> allocate_data_cluster_now(ClusterIndex c);
    DataCluster data_cluster_at(const Allocation& a);
    /// Gives back clusters allocated for a write that failed before anything referenced them.
    awaitable<void> give_back(HostOffset host, ClusterCount n);
    void release_host(const ClusterInfo& ci);
    /// True when a write (FUA, or any under writethrough) ends with a flush.
    bool flush_after(bool fua) const { return fua || opts_.writethrough; }
    /// The flush a write ends with where flush_after(fua).
    awaitable<Result<void>> after_write(bool fua);

    /// R17: true when data written to [host, host + len) would overwrite metadata (a damaged
    /// L2 entry or refcount); the write must then be refused with refuse_overlap().
    bool hits_metadata(HostOffset host, uint64_t len) const {
        return !data_file_ && meta_.overlaps(host, len);
    }
    /// R17: the EIO of a write that hits_metadata(), after marking the image corrupt.
    awaitable<Result<void>> refuse_overlap(HostOffset host, uint64_t len, const char* what);
    /// Marks the image corrupt on disk (as qemu does when it finds damage while writing);
    /// every later write fails with EIO. Returns the error for the request that found it.
    awaitable<Error> signal_corruption(std::string what);
    void map_metadata();
    /// Calls `add(offset, length)` for the header cluster, the L1 table, the refcount table
    /// and every refcount block: the metadata whose place the header and tables give.
    template <class F>
    void each_fixed_metadata(F add) const {
        const uint64_t cs = geo_.cluster_size();
        add(HostOffset{0}, cs);
        add(header_.l1_table_offset, uint64_t{header_.l1_size} * 8);
        add(header_.refcount_table_offset,
            geo_.bytes(ClusterCount{header_.refcount_table_clusters}));
        for (uint64_t b : refcounts_->table())
            if (b) add(HostOffset{b}, cs);
        each_bitmap_cluster(add);
    }
    /// Calls `add(offset, length)` for the bitmap directory, every bitmap table and every
    /// bitmap data cluster.
    template <class F>
    void each_bitmap_cluster(F add) const {
        if (bitmaps_.empty()) return;
        add(bitmap_dir_offset_, bitmap_dir_.size());
        for (const PersistentBitmap& b : bitmaps_) {
            add(b.entry.table_offset, uint64_t{b.entry.table_size} * 8);
            for (uint64_t e : b.table)
                if (e & kBitmapTableOffsetMask)
                    add(HostOffset{e & kBitmapTableOffsetMask}, geo_.cluster_size());
        }
    }

    // Write-zeroes and discard (image_zero.cpp).
    awaitable<Result<void>> zero_cluster(ClusterIndex c, uint64_t start, uint64_t len,
                                         ZeroFlags flags);
    awaitable<Result<bool>> zero_by_metadata(ClusterIndex c, const ClusterInfo& ci, uint64_t start,
                                             uint64_t len, ZeroFlags flags);
    awaitable<Result<void>> discard_cluster(ClusterIndex c);

    // File preallocation ahead of allocation (image_prealloc.cpp).
    /// Starts reserving the next chunk of the image file when allocations reach within half a
    /// chunk of the reserved end, so writes into new clusters overwrite reserved blocks
    /// instead of extending the file or filling holes (which the file system serialises).
    void maybe_preallocate(HostOffset allocated_end);
    awaitable<void> preallocate(std::shared_ptr<Qcow2Image> self, uint64_t from, uint64_t len);
    /// Waits for a preallocation in flight, then cuts the file after its last used cluster
    /// (the reserved tail, or after a crash whatever lies past the last referenced cluster).
    awaitable<Result<void>> trim_preallocation();
    awaitable<void> check_file_tail();
    /// R22: before a barrier captures, counts the next clusters to hand out, inside the
    /// preallocated tail: twice what was handed out since the previous top-up.
    awaitable<Result<void>> top_up_reserve();

    // Barriers (image_flush.cpp).
    void start_barriers();
    awaitable<void> run_barriers(std::shared_ptr<Qcow2Image> self);
    void finish_barrier(uint64_t id, const Result<void>& r);
    awaitable<Result<void>> barrier();
    BarrierWrites take_barrier_writes();
    void restore(BarrierWrites& w);
    awaitable<Result<void>> write_back(BarrierWrites& w);
    awaitable<Result<void>> mark_dirty_on_disk();
    awaitable<Result<void>> write_relocation(RefTableLocation loc);
    awaitable<Result<void>> sync_pending(bool& unsynced);
    awaitable<Result<void>> sync_all();
    awaitable<Result<void>> write_header();
    awaitable<Result<void>> write_copies(const std::vector<DirtyCopy>& copies);
    awaitable<Result<void>> write_tables(const std::vector<TableWrite>& tables);
    std::vector<TableWrite> take_dirty_l1();
    void maybe_background_flush();

    // Persistent dirty bitmaps (image_bitmaps.cpp, bitmap_store.cpp).
    /// One bitmap of the directory as loaded.
    struct PersistentBitmap {
        BitmapEntry entry;
        std::vector<uint64_t> table;          ///< Bitmap table entries as stored.
        std::unique_ptr<DirtyBitmap> bitmap;  ///< Contents (all clean if inconsistent).
        bool tracked = false;  ///< Marked in use by this open: updated and stored at close.
    };
    awaitable<Result<void>> load_bitmaps();
    awaitable<Result<void>> load_bitmap(PersistentBitmap& b);
    /// Refuses bitmap clusters that `counts` (references by host cluster) shows shared.
    Result<void> check_bitmap_clusters(const std::vector<uint64_t>& counts) const;
    awaitable<Result<void>> open_bitmaps_writable();
    void track_dirty(GuestOffset off, uint64_t len);
    struct BitmapStage;
    awaitable<Result<void>> store_bitmaps();
    awaitable<Result<void>> stage_bitmap(PersistentBitmap& b, BitmapStage& stage);
    void free_old_bitmap_clusters(BitmapStage& stage);
    awaitable<Result<HostOffset>> allocate_bitmap_run(uint64_t bytes);

    // Open-time repairs and clean close (image.cpp, rebuild.cpp).
    awaitable<Result<void>> open_writable();
    awaitable<Result<void>> clear_autoclear_bits();
    awaitable<Result<std::vector<uint64_t>>> count_references();
    awaitable<Result<void>> rebuild_refcounts();
    awaitable<Result<void>> count_l2_references(uint64_t l1i, RefCounter& rc);
    awaitable<Result<void>> flush_until_quiet();
    bool quiet() const;

    asio::any_io_executor ex_;
    std::unique_ptr<io::File> file_;
    std::unique_ptr<io::File> data_file_;
    std::shared_ptr<Disk> backing_;
    Header header_;
    Buffer header_bytes_;
    Geometry geo_;
    EntryFormat fmt_;
    EngineOptions opts_;
    bool read_only_;
    DiskStats stats_;

    uint64_t reserved_end_ = 0;   ///< End of the image file including preallocation.
    bool preallocating_ = false;  ///< A preallocate() is in flight.
    bool prealloc_off_ = false;   ///< The file system refused: no more preallocation.
    bool trim_tail_ = false;      ///< The file may run past its last used cluster (R11).
    Notifier prealloc_done_;

    std::vector<uint64_t> l1_;
    std::set<uint64_t> l1_dirty_;  ///< Indices of changed L1 table clusters.
    MetadataMap meta_;             ///< Host clusters holding metadata (R17).
    bool corrupt_ = false;         ///< Damage was found while writing: writes fail.
    MetadataCache l2_cache_;
    std::unique_ptr<Refcounts> refcounts_;

    std::vector<PersistentBitmap> bitmaps_;  ///< In directory order; empty without bitmaps.
    Buffer bitmap_dir_;                      ///< The bitmap directory as on disk.
    HostOffset bitmap_dir_offset_;

    /// Clusters being written by an allocating request (R12).
    std::unordered_map<ClusterIndex, std::shared_ptr<Notifier>> busy_;

    /// Data I/O in flight by the free epoch it started in. Frees of an epoch wait for it, so a
    /// host cluster is never reused while a request that looked it up still uses it (R7).
    std::map<uint64_t, size_t> io_by_epoch_;
    Notifier io_done_;

    bool header_on_disk_dirty_ = false;  ///< The dirty bit is set on disk and synced (R1).
    bool data_written_ = false;          ///< Data was written since the last sync.
    bool l2_ordered_ = false;            ///< See BarrierWrites::l2_ordered.
    bool closing_ = false;               ///< close() has begun: no reserve any more (R22).
    uint64_t allocated_at_top_up_ = 0;   ///< stats_.clusters_allocated at the last top-up.
    uint64_t barrier_requested_ = 0;
    uint64_t barrier_started_ = 0;
    uint64_t barrier_done_ = 0;
    bool barrier_running_ = false;
    std::map<uint64_t, Error> barrier_errors_;
    Notifier barrier_finished_;
    bool closed_ = false;
};

}  // namespace qnbd::qcow2
