// Disk: what an export serves. Implemented by the qcow2 engine and by raw files; a backing
// file is a Disk too. All methods must be called from the executor the Disk was opened on;
// any number of calls may be in flight at once.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.hpp"
#include "base/types.hpp"
#include "disk/dirty_bitmap.hpp"

namespace qnbd {

namespace asio = boost::asio;
using asio::awaitable;

/// One run of a block-status answer.
struct Extent {
    uint64_t length = 0;  ///< Bytes in this run.
    bool data = false;    ///< Allocated with data in some layer (NBD: not a hole).
    bool zero = false;    ///< Reads as zeros.
    uint32_t depth = 0;   ///< Layer providing it: 1 = this image, 2 = its backing, ...; 0 = none.
    bool operator==(const Extent&) const = default;
};

/// A range known to read as zeros, relative to the start of a read.
struct ZeroRun {
    uint64_t offset = 0;
    uint64_t length = 0;
};

/// Flags of a data write.
struct WriteFlags {
    bool fua = false;  ///< Durable before completion (a flush barrier after the write).
};

/// Flags of a write-zeroes request.
struct ZeroFlags {
    bool may_unmap = false;  ///< Deallocating is allowed (NBD: no NO_HOLE flag).
    bool fua = false;        ///< Durable before completion.
    bool fast_only = false;  ///< Fail with ENOTSUP instead of writing zeros slowly.
};

/// Counters kept by the engine; read by benchmarks and tests.
struct DiskStats {
    uint64_t barriers = 0;            ///< Flush barriers completed.
    uint64_t syncs = 0;               ///< fdatasync calls issued.
    uint64_t syncs_saved = 0;         ///< Barriers whose L2 writes needed no sync before (R22).
    uint64_t flush_requests = 0;      ///< flush() calls (each joins a barrier).
    uint64_t clusters_allocated = 0;  ///< Host clusters allocated.
    uint64_t clusters_freed = 0;      ///< Host clusters freed.
    uint64_t clusters_reserved = 0;   ///< Now counted ahead of use, unreferenced (R22); a gauge.
    uint64_t metadata_writes = 0;     ///< L1/L2/refcount/header writes issued.
    uint64_t cache_hits = 0;          ///< Metadata cache hits.
    uint64_t cache_misses = 0;        ///< Metadata cache misses (reads from disk).
};

/// A virtual disk that serves concurrent asynchronous requests.
class Disk {
  public:
    virtual ~Disk() = default;
    /// Virtual size in bytes.
    virtual uint64_t size() const = 0;
    /// True if writes are refused with EPERM.
    virtual bool read_only() const = 0;
    /// "qcow2" or "raw".
    virtual std::string format_name() const = 0;
    /// Reads buf.size() bytes at off (must lie within size()). When `zeros` is non-null it
    /// receives the runs the engine knows read as zeros, without looking at the data.
    virtual awaitable<Result<void>> read(GuestOffset off, std::span<std::byte> buf,
                                         std::vector<ZeroRun>* zeros = nullptr) = 0;
    /// Writes data at off.
    virtual awaitable<Result<void>> write(GuestOffset off, std::span<const std::byte> buf,
                                          WriteFlags flags) = 0;
    /// Makes [off, off+len) read as zeros.
    virtual awaitable<Result<void>> write_zeroes(GuestOffset off, uint64_t len,
                                                 ZeroFlags flags) = 0;
    /// Frees whole clusters in [off, off+len) where it can; contents become unspecified
    /// (qcow2 makes them read as zeros or as the backing file).
    virtual awaitable<Result<void>> discard(GuestOffset off, uint64_t len, WriteFlags flags) = 0;
    /// A barrier: every write completed before the call is durable when it returns.
    virtual awaitable<Result<void>> flush() = 0;
    /// Describes [off, off+len) as runs; may stop early (at least one run is returned).
    virtual awaitable<Result<std::vector<Extent>>> block_status(GuestOffset off, uint64_t len) = 0;
    /// Writes everything back, syncs, and marks the image clean. No calls may follow.
    virtual awaitable<Result<void>> close() = 0;
    /// Engine counters.
    virtual DiskStats stats() const = 0;
    /// The image's persistent dirty bitmap called `name`, or null (raw files have none).
    /// Enabled bitmaps change as writes are served.
    virtual const DirtyBitmap* dirty_bitmap(std::string_view name) const {
        (void)name;
        return nullptr;
    }
};

}  // namespace qnbd
