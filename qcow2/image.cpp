// Qcow2Image construction, open-time repairs and clean close.
#include "qcow2/image.hpp"

#include <algorithm>

namespace qnbd::qcow2 {
namespace {

/// Default metadata cache: enough L2 tables for the whole disk, capped at 128 MiB.
uint64_t l2_budget(const Header& h, const EngineOptions& o) {
    const uint64_t cs = h.cluster_size();
    if (o.metadata_cache_bytes) return std::max<uint64_t>(o.metadata_cache_bytes * 4 / 5, 4 * cs);
    const uint64_t need = uint64_t{h.l1_size} * cs;
    return std::clamp<uint64_t>(need, 4 * cs, std::max<uint64_t>(128u << 20, 4 * cs));
}

uint64_t refcount_budget(const Header& h, const EngineOptions& o) {
    const uint64_t cs = h.cluster_size();
    if (o.metadata_cache_bytes) return std::max<uint64_t>(o.metadata_cache_bytes / 5, 4 * cs);
    return std::max<uint64_t>(l2_budget(h, o) / 4, 4 * cs);
}

}  // namespace

IoGuard::IoGuard(Qcow2Image& img) : img_(img), epoch_(img.refcounts_->epoch()) {
    ++img_.io_by_epoch_[epoch_];
}

IoGuard::~IoGuard() {
    auto it = img_.io_by_epoch_.find(epoch_);
    if (--it->second == 0) {
        img_.io_by_epoch_.erase(it);
        img_.io_done_.notify_all();
    }
}

ClusterLock::~ClusterLock() {
    if (img_) img_->unlock_cluster(c_);
}

std::optional<ClusterLock> Qcow2Image::try_lock_cluster(ClusterIndex c) {
    if (!busy_.try_emplace(c).second) return std::nullopt;
    return ClusterLock(*this, c);
}

awaitable<ClusterLock> Qcow2Image::lock_cluster(ClusterIndex c) {
    for (auto it = busy_.find(c); it != busy_.end(); it = busy_.find(c)) {
        // The first waiter brings the notifier: an uncontended lock allocates none.
        if (!it->second) it->second = std::make_shared<Notifier>();
        auto n = it->second;
        co_await n->wait();
    }
    busy_.emplace(c, nullptr);
    co_return ClusterLock(*this, c);
}

void Qcow2Image::unlock_cluster(ClusterIndex c) {
    auto it = busy_.find(c);
    if (it == busy_.end()) return;
    auto n = std::move(it->second);
    busy_.erase(it);
    if (n) n->notify_all();
}

Qcow2Image::Qcow2Image(ImageParts p)
    : ex_(p.ex),
      file_(std::move(p.file)),
      data_file_(std::move(p.data_file)),
      backing_(std::move(p.backing)),
      header_(std::move(p.header)),
      header_bytes_(std::move(p.header_bytes)),
      geo_(header_.geometry()),
      fmt_{geo_, header_.version >= 3, header_.has_data_file(),
           header_.has_data_file() && header_.data_file_raw()},
      opts_(p.opts),
      read_only_(p.opts.read_only),
      l1_(std::move(p.l1)),
      meta_(geo_),
      l2_cache_(*file_, geo_.cluster_size(), l2_budget(header_, p.opts), stats_) {
    refcounts_ = std::make_unique<Refcounts>(
        *file_, geo_, header_.refcount_order,
        RefTableLocation{header_.refcount_table_offset, header_.refcount_table_clusters},
        std::move(p.reftable), refcount_budget(header_, p.opts), p.file_size, stats_, meta_);
    map_metadata();
    header_on_disk_dirty_ = header_.dirty();
    reserved_end_ = p.file_size;
}

void Qcow2Image::map_metadata() {
    const uint64_t cs = geo_.cluster_size();
    each_fixed_metadata([this](HostOffset off, uint64_t len) { meta_.add(off, len); });
    for (uint64_t e : l1_)
        if (e & kOffsetMask) meta_.add(HostOffset{e & kOffsetMask}, cs);
}

awaitable<Result<std::shared_ptr<Qcow2Image>>> Qcow2Image::create(ImageParts parts) {
    std::shared_ptr<Qcow2Image> img(new Qcow2Image(std::move(parts)));
    if (auto r = co_await img->load_bitmaps(); !r) co_return r.error();
    if (img->read_only_) co_return img;  // R15: nothing is written.
    if (auto r = co_await img->open_writable(); !r) co_return r.error();
    co_return img;
}

awaitable<Result<void>> Qcow2Image::open_writable() {
    // R15: the checks and the rebuild of a dirty image walk every table and may refuse the
    // image; they only change memory, so they run before the first write (R16's).
    const bool dirty = header_.dirty();
    if (dirty || !bitmaps_.empty()) {
        auto counts = co_await count_references();
        if (!counts) co_return counts.error();
        if (auto r = check_bitmap_clusters(*counts); !r) co_return r;
        if (dirty)
            if (auto r = co_await refcounts_->reconcile(*counts); !r) co_return r;
    }
    if (auto r = co_await clear_autoclear_bits(); !r) co_return r;
    if (auto r = co_await open_bitmaps_writable(); !r) co_return r;
    if (dirty) {
        trim_tail_ = true;
        if (auto r = co_await flush(); !r) co_return r;
    }
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::clear_autoclear_bits() {
    // R16: bits this engine does not keep up to date are cleared before anything is written.
    // It keeps the bitmaps it loaded (R19-R21) and a raw external data file.
    uint64_t kept = header_.autoclear_features & kAutoclearRawData;
    if (bitmaps_extension(header_)) kept |= kAutoclearBitmaps;
    if (kept == header_.autoclear_features) co_return ok();
    header_.autoclear_features = kept;
    if (auto r = co_await write_header(); !r) co_return r;
    co_return co_await sync_all();
}

DiskStats Qcow2Image::stats() const {
    DiskStats s = stats_;
    s.clusters_reserved = refcounts_ ? refcounts_->reserve_left() : 0;
    return s;
}

bool Qcow2Image::quiet() const {
    return !refcounts_->has_dirty() && !refcounts_->has_pending_frees() && !l2_cache_.has_dirty() &&
           l1_dirty_.empty();
}

awaitable<Result<void>> Qcow2Image::flush_until_quiet() {
    // Frees applied after a barrier dirty the refcounts again: repeat until nothing is left.
    for (int i = 0; i < 4; ++i) {
        if (auto r = co_await flush(); !r) co_return r;
        if (quiet()) break;
    }
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::close() {
    if (closed_) co_return ok();
    Result<void> result;
    if (!read_only_) {
        // R22: the clusters counted ahead are given back first, so the refcounts end exact.
        // If that fails the data is still flushed; the dirty bit stays and the leak is rebuilt.
        closing_ = true;
        Result<void> dropped = ok();
        if (!corrupt_) dropped = co_await refcounts_->drop_reserve();
        co_await check_file_tail();
        result = co_await flush_until_quiet();
        if (result && !dropped) result = dropped;
        if (result && !corrupt_) result = co_await store_bitmaps();
        // R11: the dirty bit is cleared only over fully written metadata.
        if (result && header_on_disk_dirty_ && quiet()) {
            header_.incompatible_features &= ~kIncompatDirty;
            result = co_await write_header();
            if (result) result = co_await sync_all();
            if (result) header_on_disk_dirty_ = false;
        }
        if (auto r = co_await trim_preallocation(); result && !r) result = r;
    }
    closed_ = true;
    if (backing_) {
        auto r = co_await backing_->close();
        if (result && !r) result = r;
    }
    co_return result;
}

}  // namespace qnbd::qcow2
