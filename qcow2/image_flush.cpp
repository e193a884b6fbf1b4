// Flush barriers with group commit, in the order of docs/ARCHITECTURE.md's rules R1-R11.
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>

#include "qcow2/image.hpp"

namespace qnbd::qcow2 {

awaitable<Result<void>> Qcow2Image::flush() {
    ++stats_.flush_requests;
    if (read_only_) co_return ok();
    // R9: the next barrier to start covers every write completed before this call.
    const uint64_t target = barrier_started_ + 1;
    barrier_requested_ = std::max(barrier_requested_, target);
    if (!barrier_running_) start_barriers();
    while (barrier_done_ < target) co_await barrier_finished_.wait();
    if (auto it = barrier_errors_.find(target); it != barrier_errors_.end()) co_return it->second;
    co_return ok();
}

void Qcow2Image::maybe_background_flush() {
    if (barrier_running_ || closed_) return;
    if (l2_cache_.dirty_bytes() * 2 < l2_cache_.budget()) return;
    barrier_requested_ = std::max(barrier_requested_, barrier_started_ + 1);
    start_barriers();
}

void Qcow2Image::start_barriers() {
    barrier_running_ = true;
    asio::co_spawn(ex_, run_barriers(shared_from_this()), [](std::exception_ptr e) {
        // run_barriers() turns failures into flush errors; nothing should get here.
        if (e) spdlog::critical("flush barrier runner ended with an exception");
    });
}

awaitable<void> Qcow2Image::run_barriers(std::shared_ptr<Qcow2Image> self) {
    // However the runner ends (an exception, or destruction at shutdown), the flushes still
    // waiting get an error instead of waiting forever, and a later flush starts a new runner.
    struct Done {
        Qcow2Image& img;
        ~Done() {
            for (uint64_t id = img.barrier_done_ + 1; id <= img.barrier_started_; ++id)
                img.barrier_errors_.emplace(id, Error{EIO, "the flush barrier was aborted"});
            img.barrier_done_ = img.barrier_started_;
            img.barrier_running_ = false;
            img.barrier_finished_.notify_all();
        }
    } done{*self};
    while (barrier_started_ < barrier_requested_) {
        const uint64_t id = ++barrier_started_;
        finish_barrier(id, co_await barrier());
    }
}

void Qcow2Image::finish_barrier(uint64_t id, const Result<void>& r) {
    if (!r) barrier_errors_[id] = r.error();
    barrier_done_ = id;
    while (barrier_errors_.size() > 64) barrier_errors_.erase(barrier_errors_.begin());
    barrier_finished_.notify_all();
}

awaitable<Result<void>> Qcow2Image::barrier() {
    // R22: the next clusters to hand out are counted before the capture, so their refcounts
    // go out (and become durable) with this barrier.
    if (auto t = co_await top_up_reserve(); !t) co_return t;
    BarrierWrites w = take_barrier_writes();
    Result<void> r = Error{EIO, "internal error in the flush barrier"};
    try {
        r = co_await write_back(w);
    } catch (const std::exception& e) {
        spdlog::error("{}: internal error in a flush barrier: {}", file_->path(), e.what());
    }
    if (!r) {
        restore(w);  // R10
        co_return r;
    }
    ++stats_.barriers;
    refcounts_->reserve_durable(w.refcounts);  // R22: what it counted may now be referenced.
    // R6, R7: frees of the closed epochs apply now that their L2 changes are durable, once
    // no data I/O that started in those epochs is in flight.
    while (!io_by_epoch_.empty() && io_by_epoch_.begin()->first <= w.epoch_cut)
        co_await io_done_.wait();
    co_return co_await refcounts_->apply_frees(w.epoch_cut);
}

BarrierWrites Qcow2Image::take_barrier_writes() {
    // R9: one step, no yielding; later changes belong to the next barrier.
    BarrierWrites w;
    w.epoch_cut = refcounts_->close_epoch();
    w.refcounts = refcounts_->take_dirty();
    w.l2 = l2_cache_.take_dirty();
    w.l1 = take_dirty_l1();
    w.data = std::exchange(data_written_, false);
    w.l2_ordered = std::exchange(l2_ordered_, false);
    return w;
}

void Qcow2Image::restore(BarrierWrites& w) {
    refcounts_->restore(w.refcounts);
    l2_cache_.restore_dirty(w.l2);
    for (const TableWrite& t : w.l1) l1_dirty_.insert(t.cluster);
    data_written_ = data_written_ || w.data;
    l2_ordered_ = l2_ordered_ || w.l2_ordered;
}

awaitable<Result<void>> Qcow2Image::write_back(BarrierWrites& w) {
    bool unsynced = w.data;  // The data writes are made durable by the first sync below.
    if (w.has_metadata())
        if (auto r = co_await mark_dirty_on_disk(); !r) co_return r;  // R1
    if (!w.refcounts.blocks.empty()) {
        if (auto r = co_await write_copies(w.refcounts.blocks); !r) co_return r;
        unsynced = true;
    }
    if (!w.refcounts.table.empty()) {  // R2: blocks durable before the table points to them.
        if (auto r = co_await sync_pending(unsynced); !r) co_return r;
        if (auto r = co_await write_tables(w.refcounts.table); !r) co_return r;
        unsynced = true;
    }
    if (w.refcounts.relocation) {  // R3: the whole new table durable before the header moves.
        if (auto r = co_await sync_pending(unsynced); !r) co_return r;
        if (auto r = co_await write_relocation(*w.refcounts.relocation); !r) co_return r;
        unsynced = true;
    }
    if (!w.l2.empty()) {
        // R2, R4: refcounts and data durable before L2 references them; R22: unless every new
        // reference is to a cluster counted at an earlier barrier that reads as zeros until
        // its data is durable. Then one sync covers data, refcounts and L2 together.
        if (w.l2_ordered) {
            if (auto r = co_await sync_pending(unsynced); !r) co_return r;
        } else if (unsynced) {
            ++stats_.syncs_saved;
        }
        if (auto r = co_await write_copies(w.l2); !r) co_return r;
        unsynced = true;
    }
    if (!w.l1.empty()) {  // R5: new L2 tables durable before L1 points to them.
        if (auto r = co_await sync_pending(unsynced); !r) co_return r;
        if (auto r = co_await write_tables(w.l1); !r) co_return r;
        unsynced = true;
    }
    co_return co_await sync_pending(unsynced);
}

awaitable<Result<void>> Qcow2Image::mark_dirty_on_disk() {
    if (header_on_disk_dirty_ || header_.version < 3) co_return ok();
    header_.incompatible_features |= kIncompatDirty;
    if (auto r = co_await write_header(); !r) co_return r;
    if (auto r = co_await sync_all(); !r) co_return r;
    header_on_disk_dirty_ = true;  // R1: only once the sync made it durable.
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::write_relocation(RefTableLocation loc) {
    const HostOffset old_offset = header_.refcount_table_offset;
    const uint32_t old_clusters = header_.refcount_table_clusters;
    header_.refcount_table_offset = loc.offset;
    header_.refcount_table_clusters = loc.clusters;
    auto r = co_await write_header();
    if (!r) {
        // Later header writes must not point at a table that may not be durable yet.
        header_.refcount_table_offset = old_offset;
        header_.refcount_table_clusters = old_clusters;
    }
    co_return r;
}

awaitable<Result<void>> Qcow2Image::sync_pending(bool& unsynced) {
    if (!unsynced) co_return ok();
    unsynced = false;
    co_return co_await sync_all();
}

awaitable<Result<void>> Qcow2Image::sync_all() {
    if (data_file_) {
        ++stats_.syncs;
        if (auto r = co_await data_file_->sync(); !r) co_return r;
    }
    ++stats_.syncs;
    co_return co_await file_->sync();
}

awaitable<Result<void>> Qcow2Image::write_header() {
    patch_header(header_, header_bytes_.span().first(header_.header_length));
    ++stats_.metadata_writes;
    co_return co_await file_->write(HostOffset{0}, header_bytes_.span());
}

awaitable<Result<void>> Qcow2Image::write_copies(const std::vector<DirtyCopy>& copies) {
    JoinSet join(ex_);
    for (auto& c : copies) {
        ++stats_.metadata_writes;
        join.spawn(file_->write(c.entry->offset, c.data.span()));
    }
    co_return co_await join.wait();
}

awaitable<Result<void>> Qcow2Image::write_tables(const std::vector<TableWrite>& tables) {
    JoinSet join(ex_);
    for (auto& t : tables) {
        ++stats_.metadata_writes;
        join.spawn(file_->write(t.offset, t.data.span()));
    }
    co_return co_await join.wait();
}

std::vector<TableWrite> Qcow2Image::take_dirty_l1() {
    const uint64_t per_cluster = geo_.cluster_size() / 8;
    std::vector<TableWrite> out;
    for (uint64_t tc : l1_dirty_) {
        const uint64_t first = tc * per_cluster;
        const uint64_t n = std::min<uint64_t>(per_cluster, l1_.size() - first);
        Buffer b(n * 8);
        for (uint64_t i = 0; i < n; ++i) store_be64(b.data() + i * 8, l1_[first + i]);
        out.push_back(TableWrite{tc, header_.l1_table_offset + first * 8, std::move(b)});
    }
    l1_dirty_.clear();
    return out;
}

}  // namespace qnbd::qcow2
