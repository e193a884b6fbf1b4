// Qcow2Image: the qcow2 engine behind a Disk. Requests run concurrently on one executor;
// no lock is held across I/O. Metadata changes stay in memory and reach the disk at flush
// barriers in crash-safe order (refcounts, sync, L2 tables, L1/header, sync).
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
#include "qcow2/header.hpp"
#include "qcow2/l2_entry.hpp"
#include "qcow2/metadata_cache.hpp"
#include "qcow2/refcounts.hpp"

namespace qnbd::qcow2 {

/// One run of a guest range with a single plan (host-contiguous for data).
struct Segment {
    GuestOffset guest;
    uint64_t length = 0;
    Plan plan;
};

/// A piece of guest data and the host offset it lives at.
struct HostPiece {
    HostOffset host;
    std::span<std::byte> bytes;
};

/// Groups pieces into runs of contiguous host offsets (sorted by host offset; the guest
/// order inside a run may be anything), each at most IOV_MAX pieces: one readv/writev per run.
std::vector<std::vector<HostPiece>> host_runs(std::vector<HostPiece>& pieces);

/// The scatter list of one run of host_runs(), in host order.
std::vector<iovec> run_iovecs(const std::vector<HostPiece>& run);

/// Reads one run of host_runs() with a single readv; bytes past the end of the file read as
/// zeros.
awaitable<Result<void>> read_run(io::File& f, std::vector<HostPiece> run);

/// Writes one run of host_runs() with a single writev.
awaitable<Result<void>> write_pieces(io::File& f, std::vector<HostPiece> run);

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

/// Marks data I/O of one request as in flight for the duration of a scope.
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
    DiskStats stats() const override { return stats_; }

    const Header& header() const { return header_; }

  private:
    explicit Qcow2Image(ImageParts parts);

    // Mapping (image_map.cpp).
    awaitable<Result<CacheRef>> l2_table(ClusterIndex c, bool allocate);
    awaitable<Result<ClusterInfo>> lookup(ClusterIndex c);
    awaitable<Result<std::vector<Segment>>> map_range(GuestOffset off, uint64_t len);
    std::pair<uint64_t, uint64_t> l2_slot(const CacheRef& t, ClusterIndex c) const;
    void set_l2_slot(const CacheRef& t, ClusterIndex c, uint64_t entry, uint64_t bitmap);

    // Reading (image_read.cpp).
    awaitable<Result<void>> read_segment(Segment seg, std::span<std::byte> out);
    awaitable<Result<void>> read_backing(GuestOffset off, std::span<std::byte> out);
    awaitable<Result<void>> read_compressed(PlanCompressed p, uint64_t in_cluster,
                                            std::span<std::byte> out);

    // Writing (image_write.cpp, image_cow.cpp).
    awaitable<Result<void>> check_writable(GuestOffset off, uint64_t len);
    awaitable<void> lock_cluster(ClusterIndex c);
    void unlock_cluster(ClusterIndex c);
    /// Releases a cluster taken with lock_cluster() when the scope ends.
    struct ClusterUnlock {
        Qcow2Image* img;
        ClusterIndex c;
        ~ClusterUnlock() { img->unlock_cluster(c); }
    };
    awaitable<Result<void>> write_cluster(ClusterIndex c, uint64_t start,
                                          std::span<const std::byte> data);
    awaitable<Result<void>> write_allocating(ClusterIndex c, const ClusterInfo& ci, uint64_t start,
                                             std::span<const std::byte> data);
    /// Writes `data` at `start` of the `n` clusters from `first`, which all need a new host
    /// cluster and read as zeros: one contiguous allocation, one data write.
    awaitable<Result<void>> write_run(ClusterIndex first, uint64_t n, uint64_t start,
                                      std::span<const std::byte> data);
    /// True when a cluster looked up as `ci` may join such a run.
    bool joins_fresh_run(const ClusterInfo& ci) const;
    awaitable<Result<void>> zero_cluster(ClusterIndex c, uint64_t start, uint64_t len,
                                         ZeroFlags flags);
    awaitable<Result<void>> discard_cluster(ClusterIndex c);
    awaitable<Result<HostOffset>> allocate_data_cluster(ClusterIndex c, bool& fresh);
    void release_host(const ClusterInfo& ci);
    awaitable<Result<void>> after_write(bool fua);

    // File preallocation ahead of allocation (image_prealloc.cpp).
    /// Starts reserving the next chunk of the image file when allocations reach within half a
    /// chunk of the reserved end, so writes into new clusters overwrite reserved blocks
    /// instead of extending the file or filling holes (which the file system serialises).
    void maybe_preallocate(HostOffset allocated_end);
    awaitable<void> preallocate(uint64_t from, uint64_t len);
    /// Waits for a preallocation in flight, then gives back the reserved tail nothing uses.
    awaitable<Result<void>> trim_preallocation();

    // Barriers (image_flush.cpp).
    awaitable<Result<void>> run_barriers();
    awaitable<Result<void>> barrier();
    awaitable<Result<void>> sync_all();
    awaitable<Result<void>> write_header();
    awaitable<Result<void>> write_copies(std::vector<DirtyCopy>& copies);
    std::vector<TableWrite> take_dirty_l1();
    awaitable<Result<void>> write_tables(const std::vector<TableWrite>& tables);
    void maybe_background_flush();
    void start_barriers();

    // Refcount rebuild of a dirty image (rebuild.cpp).
    awaitable<Result<void>> rebuild_refcounts();

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
    bool preallocated_ = false;   ///< The file was grown ahead of use.
    Notifier prealloc_done_;

    std::vector<uint64_t> l1_;
    std::set<uint64_t> l1_dirty_;  ///< Indices of changed L1 table clusters.
    MetadataCache l2_cache_;
    std::unique_ptr<Refcounts> refcounts_;

    std::unordered_map<ClusterIndex, std::shared_ptr<Notifier>>
        busy_;  ///< Clusters being reallocated.

    /// Data I/O in flight by the free epoch it started in. Frees of an epoch wait for it, so a
    /// host cluster is never reused while a request that looked it up still uses it.
    std::map<uint64_t, size_t> io_by_epoch_;
    Notifier io_done_;
    friend class IoGuard;

    bool header_on_disk_dirty_ = false;  ///< The on-disk header has the dirty bit set.
    bool header_changed_ = false;        ///< Header fields differ from disk.
    bool data_written_ = false;          ///< Data was written since the last sync.
    uint64_t barrier_requested_ = 0;
    uint64_t barrier_started_ = 0;
    uint64_t barrier_done_ = 0;
    bool barrier_running_ = false;
    std::map<uint64_t, Error> barrier_errors_;
    Notifier barrier_finished_;
    bool closed_ = false;
};

}  // namespace qnbd::qcow2
