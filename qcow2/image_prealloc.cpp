// Preallocation of the image file ahead of cluster allocation. New clusters are taken from the
// end of the file; writing into them extends the file or fills holes, which file systems
// serialise on the inode and which io_uring cannot issue without blocking. Reserving the next
// chunk with fallocate turns those writes into overwrites of reserved (zero-reading) blocks.
// The unused reserved tail is cut off again at clean close.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>

#include "qcow2/image.hpp"

namespace qnbd::qcow2 {
namespace {

/// Bytes reserved per step: 1/16 of the virtual size, between 4 MiB and 256 MiB, in clusters.
uint64_t chunk_for(uint64_t virtual_size, const Geometry& geo) {
    return geo.round_up(std::clamp<uint64_t>(virtual_size / 16, 4u << 20, 256u << 20));
}

/// The fewest clusters a top-up of the reserve asks for.
constexpr uint64_t kMinReserve = 64;

}  // namespace

void Qcow2Image::maybe_preallocate(HostOffset allocated_end) {
    if (prealloc_off_ || preallocating_ || closed_ || read_only_ || data_file_) return;
    const uint64_t chunk = chunk_for(header_.size, geo_);
    if (allocated_end.value + chunk / 2 <= reserved_end_) return;
    const uint64_t from = std::max(reserved_end_, geo_.round_up(allocated_end.value));
    preallocating_ = true;
    asio::co_spawn(ex_, preallocate(shared_from_this(), from, chunk), [](std::exception_ptr e) {
        if (e) spdlog::critical("preallocation ended with an exception");
    });
}

awaitable<void> Qcow2Image::preallocate(std::shared_ptr<Qcow2Image> self, uint64_t from,
                                        uint64_t len) {
    // However this ends, close() must not wait for it forever.
    struct Done {
        Qcow2Image& img;
        ~Done() {
            img.preallocating_ = false;
            img.prealloc_done_.notify_all();
        }
    } done{*self};
    Result<void> r;
    try {
        r = co_await file_->fallocate(io::Fallocate::Allocate, HostOffset{from}, len);
    } catch (const std::exception& e) {
        r = Error{EIO, e.what()};
        spdlog::error("{}: internal error while preallocating: {}", file_->path(), e.what());
    }
    if (r) {
        reserved_end_ = from + len;
        trim_tail_ = true;
    } else {
        // Unsupported, or no space left: new clusters extend the file as they are written,
        // and a real shortage of space surfaces on those writes.
        prealloc_off_ = true;
    }
}

awaitable<Result<void>> Qcow2Image::top_up_reserve() {
    if (read_only_ || closing_ || corrupt_ || data_file_) co_return ok();
    const uint64_t used = stats_.clusters_allocated - allocated_at_top_up_;
    if (used == 0) co_return ok();  // No allocation since the last barrier: nothing to count.
    allocated_at_top_up_ = stats_.clusters_allocated;
    // At most half a preallocation chunk: a crash leaks at most that much until the rebuild.
    const uint64_t most =
        std::max<uint64_t>(kMinReserve, chunk_for(header_.size, geo_) / geo_.cluster_size() / 2);
    const uint64_t want = std::clamp<uint64_t>(2 * used, kMinReserve, most);
    // Only clusters the file already covers (fallocate has completed): the barrier's sync makes
    // the file's size durable with their counts, so no L2 entry can point past the file's end.
    const HostClusterIndex limit = geo_.host_cluster_of(HostOffset{reserved_end_});
    co_return co_await refcounts_->top_up_reserve(limit, want);
}

awaitable<Result<void>> Qcow2Image::trim_preallocation() {
    while (preallocating_) co_await prealloc_done_.wait();
    if (!trim_tail_) co_return ok();
    trim_tail_ = false;
    uint64_t used = geo_.host_start_of(refcounts_->end_cluster()).value;
    auto size = file_->size();
    if (!size) co_return size.error();
    if (quiet()) {
        // Every refcount is durable: clusters freed at the end (old bitmap clusters) go too.
        auto last = co_await refcounts_->used_end(geo_.host_cluster_end(*size));
        if (!last) co_return last.error();
        if (last->value) used = std::min(used, geo_.host_start_of(*last).value);
    }
    if (*size <= used) co_return ok();
    co_return file_->truncate(used);
}

awaitable<void> Qcow2Image::check_file_tail() {
    // A crash after clusters were reserved or allocated but before the dirty bit was durable
    // leaves a clean image whose file runs past its last counted cluster. Those clusters are
    // unused unless the image is damaged, so at close the references are counted again (as
    // after a crash) and, if that finds nothing wrong, the tail is cut (R11). The open never
    // writes for it: an image refused later was left alone (R15).
    if (data_file_ || trim_tail_ || corrupt_) co_return;
    auto size = file_->size();
    if (!size) co_return;
    const HostClusterIndex file_end = geo_.host_cluster_end(*size);
    auto used = co_await refcounts_->used_end(file_end);
    // Nothing counted at all (not even the header) is damage, not an interrupted allocation.
    if (!used || *used == file_end || used->value == 0) co_return;
    if (auto r = co_await rebuild_refcounts(); !r) {
        spdlog::warn(
            "{}: the file runs past its last used cluster and its references could "
            "not be counted ({}); the tail is kept",
            file_->path(), r.error().message);
        co_return;
    }
    trim_tail_ = true;
}

}  // namespace qnbd::qcow2
