// Flush barriers with group commit. A barrier covers every write completed before it started;
// flushes that arrive while one runs share the next. Order on disk:
//   [dirty bit] -> refcount blocks -> sync -> refcount table -> sync -> [header: new table]
//   -> sync -> L2 tables -> [sync -> L1 table] -> sync -> frees applied in memory.
// Empty phases are skipped, so a barrier with allocations costs two fdatasyncs.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include "qcow2/image.hpp"

namespace qnbd::qcow2 {

awaitable<Result<void>> Qcow2Image::flush() {
    ++stats_.flush_requests;
    if (read_only_) co_return ok();
    const uint64_t target = barrier_started_ + 1;
    barrier_requested_ = std::max(barrier_requested_, target);
    if (!barrier_running_) start_barriers();
    while (barrier_done_ < target) co_await barrier_finished_.wait();
    if (auto it = barrier_errors_.find(target); it != barrier_errors_.end()) co_return it->second;
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::run_barriers() {
    while (barrier_started_ < barrier_requested_) {
        const uint64_t id = ++barrier_started_;
        auto r = co_await barrier();
        if (!r) barrier_errors_[id] = r.error();
        barrier_done_ = id;
        while (barrier_errors_.size() > 64) barrier_errors_.erase(barrier_errors_.begin());
        barrier_finished_.notify_all();
    }
    barrier_running_ = false;
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
    // The runner keeps the image alive until it has finished.
    asio::co_spawn(ex_, run_barriers(),
                   [self = shared_from_this()](std::exception_ptr, Result<void>) {});
}

awaitable<Result<void>> Qcow2Image::sync_all() {
    if (data_file_) {
        auto r = co_await data_file_->sync();
        ++stats_.syncs;
        if (!r) co_return r;
    }
    ++stats_.syncs;
    co_return co_await file_->sync();
}

awaitable<Result<void>> Qcow2Image::write_header() {
    patch_header(header_, header_bytes_.span().first(header_.header_length));
    ++stats_.metadata_writes;
    co_return co_await file_->write(HostOffset{0}, header_bytes_.span());
}

awaitable<Result<void>> Qcow2Image::write_copies(std::vector<DirtyCopy>& copies) {
    JoinSet join(ex_);
    for (auto& c : copies) {
        ++stats_.metadata_writes;
        join.spawn(file_->write(c.entry->offset, c.data.span()));
    }
    co_return co_await join.wait();
}

std::vector<TableWrite> Qcow2Image::take_dirty_l1() {
    const uint64_t per_cluster = geo_.cluster_size() / 8;
    std::vector<TableWrite> out;
    for (uint64_t ci : l1_dirty_) {
        const uint64_t first = ci * per_cluster;
        const uint64_t n = std::min<uint64_t>(per_cluster, l1_.size() - first);
        Buffer b(n * 8);
        for (uint64_t i = 0; i < n; ++i) store_be64(b.data() + i * 8, l1_[first + i]);
        out.push_back(TableWrite{header_.l1_table_offset + first * 8, std::move(b)});
    }
    l1_dirty_.clear();
    return out;
}

awaitable<Result<void>> Qcow2Image::write_tables(const std::vector<TableWrite>& tables) {
    JoinSet join(ex_);
    for (auto& t : tables) {
        ++stats_.metadata_writes;
        join.spawn(file_->write(t.offset, t.data.span()));
    }
    co_return co_await join.wait();
}

awaitable<Result<void>> Qcow2Image::barrier() {
    // Capture, without yielding, everything this barrier makes durable.
    const uint64_t cut = refcounts_->close_epoch();
    auto blocks = refcounts_->take_dirty_blocks();
    auto table = refcounts_->take_dirty_table();
    auto relocation = refcounts_->take_relocation();
    auto l2 = l2_cache_.take_dirty();
    auto l1 = take_dirty_l1();
    const bool data = data_written_;
    data_written_ = false;
    const bool meta = !blocks.empty() || !table.empty() || relocation || !l2.empty() || !l1.empty();
    bool pending_sync = data;
    auto fail = [&](Result<void> r) -> Result<void> {
        refcounts_->restore_dirty_blocks(blocks);
        refcounts_->restore_dirty_table(table);
        if (relocation) refcounts_->restore_relocation(*relocation);
        l2_cache_.restore_dirty(l2);
        for (auto& t : l1)
            l1_dirty_.insert((t.offset - header_.l1_table_offset) / geo_.cluster_size());
        data_written_ = data_written_ || data;
        return r;
    };
    auto phase_sync = [&]() -> awaitable<Result<void>> {
        if (!pending_sync) co_return ok();
        pending_sync = false;
        co_return co_await sync_all();
    };
    if (meta && !header_on_disk_dirty_ && header_.version >= 3) {
        header_.incompatible_features |= kIncompatDirty;
        if (auto r = co_await write_header(); !r) co_return fail(r);
        pending_sync = true;
        if (auto r = co_await phase_sync(); !r) co_return fail(r);
        header_on_disk_dirty_ = true;  // Only once the sync made it durable.
    }
    if (!blocks.empty()) {
        if (auto r = co_await write_copies(blocks); !r) co_return fail(r);
        pending_sync = true;
    }
    if (!table.empty()) {
        if (auto r = co_await phase_sync(); !r) co_return fail(r);
        if (auto r = co_await write_tables(table); !r) co_return fail(r);
        pending_sync = true;
    }
    if (relocation) {
        if (auto r = co_await phase_sync(); !r) co_return fail(r);
        header_.refcount_table_offset = relocation->offset;
        header_.refcount_table_clusters = relocation->clusters;
        if (auto r = co_await write_header(); !r) co_return fail(r);
        pending_sync = true;
    }
    if (!l2.empty()) {
        if (auto r = co_await phase_sync(); !r) co_return fail(r);
        if (auto r = co_await write_copies(l2); !r) co_return fail(r);
        pending_sync = true;
    }
    if (!l1.empty()) {
        if (auto r = co_await phase_sync(); !r) co_return fail(r);
        if (auto r = co_await write_tables(l1); !r) co_return fail(r);
        pending_sync = true;
    }
    if (auto r = co_await phase_sync(); !r) co_return fail(r);
    ++stats_.barriers;
    while (!io_by_epoch_.empty() && io_by_epoch_.begin()->first <= cut) co_await io_done_.wait();
    auto freed = co_await refcounts_->apply_frees(cut);
    if (!freed) co_return freed.error();
    co_return ok();
}

}  // namespace qnbd::qcow2
