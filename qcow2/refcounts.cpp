#include "qcow2/refcounts.hpp"
#include "base/hex.hpp"

#include <algorithm>
#include <cstdio>

namespace qnbd::qcow2 {
namespace {}  // namespace

Refcounts::Refcounts(io::File& file, Geometry geo, uint32_t order, RefTableLocation loc,
                     std::vector<uint64_t> table, uint64_t cache_budget, uint64_t file_size,
                     DiskStats& stats)
    : file_(file),
      geo_(geo),
      order_(order),
      per_block_(refcount_entries(geo.cluster_size(), order)),
      loc_(loc),
      table_(std::move(table)),
      cache_(file, geo.cluster_size(), cache_budget, stats),
      stats_(stats) {
    fresh_start_ = geo.round_up(file_size) >> geo.cluster_bits;
    end_cluster_ = fresh_start_;
}

awaitable<Result<CacheRef>> Refcounts::block_for(HostClusterIndex c, bool create) {
    const uint64_t bi = c.value / per_block_;
    if (create) {
        auto r = co_await ensure_block(bi);
        if (!r) co_return r.error();
    }
    if (bi >= table_.size() || table_[bi] == 0) co_return CacheRef{};
    co_return co_await cache_.get(HostOffset{table_[bi]});
}

awaitable<Result<uint64_t>> Refcounts::get(HostClusterIndex c) {
    auto b = co_await block_for(c, false);
    if (!b) co_return b.error();
    if (!*b) co_return uint64_t{0};
    co_return get_refcount((*b)->data.data(), c.value % per_block_, order_);
}

awaitable<Result<void>> Refcounts::set(HostClusterIndex c, uint64_t value) {
    if (value > max_refcount(order_))
        co_return Error{EIO, "refcount of cluster " + hex(c.value) + " would overflow"};
    auto b = co_await block_for(c, value != 0);
    if (!b) co_return b.error();
    if (!*b) co_return ok();  // Setting 0 where no block exists: already 0.
    set_refcount((*b)->data.data(), c.value % per_block_, order_, value);
    cache_.mark_dirty(*b);
    if (value) note_used(c.value + 1);
    if (!value) cursor_ = std::min(cursor_, c.value);
    co_return ok();
}

awaitable<Result<void>> Refcounts::adjust(HostClusterIndex c, int64_t delta) {
    auto b = co_await block_for(c, delta > 0);
    if (!b) co_return b.error();
    uint64_t cur = *b ? get_refcount((*b)->data.data(), c.value % per_block_, order_) : 0;
    if (delta < 0 && cur < static_cast<uint64_t>(-delta))
        co_return Error{EIO, "image is corrupt: refcount of host cluster at " +
                                 hex(c.value << geo_.cluster_bits) + " would drop below zero"};
    if (delta > 0 && max_refcount(order_) - cur < static_cast<uint64_t>(delta))
        co_return Error{EIO, "refcount of host cluster at " + hex(c.value << geo_.cluster_bits) +
                                 " would overflow " + std::to_string(1u << order_) + " bits"};
    co_return co_await set(c, cur + delta);
}

awaitable<Result<void>> Refcounts::ensure_block(uint64_t bi) {
    if (bi >= table_.size()) {
        auto r = co_await grow_table(bi + 1);
        if (!r) co_return r;
    }
    if (table_[bi] != 0) co_return ok();
    // A range without a block has no cluster in use: its first cluster holds its block,
    // which counts itself.
    const uint64_t c = bi * per_block_;
    HostOffset off = geo_.host_start_of(HostClusterIndex{c});
    auto e = cache_.create(off);
    set_refcount(e->data.data(), 0, order_, 1);
    table_[bi] = off.value;
    mark_table_dirty(bi);
    note_used(c + 1);
    co_return ok();
}

awaitable<Result<void>> Refcounts::grow_table(uint64_t needed) {
    const uint64_t per_cluster = geo_.cluster_size() / 8;
    uint64_t entries = std::max(needed, table_.size() + table_.size() / 2);
    uint64_t L = end_cluster_, B = 0, T = 0;
    for (;;) {
        entries = (entries + per_cluster - 1) / per_cluster * per_cluster;
        T = entries / per_cluster;
        if (T * geo_.cluster_size() > (8u << 20))
            co_return Error{ENOSPC, "refcount table would exceed its 8 MiB limit"};
        // Blocks for the ranges the new area touches that have none, placed before the table.
        for (uint64_t prev = ~uint64_t{0}; prev != B;) {
            prev = B;
            B = 0;
            for (uint64_t r = L / per_block_; r <= (L + prev + T - 1) / per_block_; ++r)
                if (r >= table_.size() || table_[r] == 0) ++B;
        }
        if ((L + B + T - 1) / per_block_ < entries) break;
        entries = (L + B + T - 1) / per_block_ + 1;
    }
    std::vector<uint64_t> nt(table_);
    nt.resize(entries, 0);
    uint64_t k = L;
    std::vector<CacheRef> fresh_blocks;
    for (uint64_t r = L / per_block_; r <= (L + B + T - 1) / per_block_; ++r) {
        if (r < table_.size() && table_[r] != 0) continue;
        HostOffset off = geo_.host_start_of(HostClusterIndex{k++});
        fresh_blocks.push_back(cache_.create(off));
        nt[r] = off.value;
    }
    RefTableLocation old = loc_;
    table_ = std::move(nt);
    loc_ = RefTableLocation{geo_.host_start_of(HostClusterIndex{L + B}), static_cast<uint32_t>(T)};
    relocated_ = loc_;
    dirty_table_.clear();
    for (uint64_t i = 0; i < T; ++i) dirty_table_.insert(i);
    note_used(L + B + T);
    fresh_start_ = std::max(fresh_start_, L + B + T);
    for (uint64_t c = L; c < L + B + T; ++c) {
        auto r = co_await set(HostClusterIndex{c}, 1);
        if (!r) co_return r;
    }
    if (old.clusters) defer_free(old.offset, uint64_t{old.clusters} << geo_.cluster_bits);
    co_return ok();
}

awaitable<Result<std::optional<uint64_t>>> Refcounts::find_free_run(uint64_t n) {
    uint64_t start = cursor_, run = 0;
    for (uint64_t c = cursor_;; ++c) {
        if (run == 0) start = c;
        const uint64_t bi = c / per_block_;
        if (bi >= table_.size() || table_[bi] == 0) {
            // No block: the whole range is free. Its first cluster will hold the block.
            if (c % per_block_ == 0) {
                run = 0;
                continue;
            }
            if (++run == n) co_return std::optional<uint64_t>{start};
            continue;
        }
        auto b = co_await cache_.get(HostOffset{table_[bi]});
        if (!b) co_return b.error();
        if (get_refcount((*b)->data.data(), c % per_block_, order_) == 0) {
            if (++run == n) co_return std::optional<uint64_t>{start};
        } else {
            run = 0;
            if (start == cursor_) cursor_ = c + 1;
        }
    }
}

awaitable<Result<HostOffset>> Refcounts::allocate(uint64_t n, bool& fresh) {
    while (alloc_busy_) co_await alloc_done_.wait();
    alloc_busy_ = true;
    struct Release {
        Refcounts* r;
        ~Release() {
            r->alloc_busy_ = false;
            r->alloc_done_.notify_all();
        }
    } release{this};
    for (;;) {
        auto found = co_await find_free_run(n);
        if (!found) co_return found.error();
        const uint64_t s = **found;
        // Make sure every range of the run has a block; a new block may take a run cluster.
        bool moved = false;
        for (uint64_t bi = s / per_block_; bi <= (s + n - 1) / per_block_; ++bi) {
            if (bi < table_.size() && table_[bi] != 0) continue;
            auto r = co_await ensure_block(bi);
            if (!r) co_return r.error();
            moved = true;
        }
        if (moved) continue;
        for (uint64_t c = s; c < s + n; ++c) {
            auto r = co_await set(HostClusterIndex{c}, 1);
            if (!r) co_return r.error();
        }
        fresh = s >= fresh_start_;
        fresh_start_ = std::max(fresh_start_, s + n);
        cursor_ = std::max(cursor_, s + n);
        stats_.clusters_allocated += n;
        co_return geo_.host_start_of(HostClusterIndex{s});
    }
}

void Refcounts::defer_free(HostOffset off, uint64_t len) {
    if (len) pending_.push_back(PendingFree{epoch_, off, len});
}

awaitable<Result<std::vector<std::pair<HostOffset, uint64_t>>>> Refcounts::apply_frees(
    uint64_t cut) {
    std::vector<PendingFree> now;
    std::erase_if(pending_, [&](const PendingFree& p) {
        if (p.epoch > cut) return false;
        now.push_back(p);
        return true;
    });
    std::vector<std::pair<HostOffset, uint64_t>> freed;
    for (auto& p : now) {
        uint64_t first = p.off.value >> geo_.cluster_bits;
        uint64_t last = (p.off.value + p.len - 1) >> geo_.cluster_bits;
        for (uint64_t c = first; c <= last; ++c) {
            auto r = co_await adjust(HostClusterIndex{c}, -1);
            if (!r) co_return r.error();
            auto v = co_await get(HostClusterIndex{c});
            if (v && *v == 0) {
                ++stats_.clusters_freed;
                freed.emplace_back(geo_.host_start_of(HostClusterIndex{c}), geo_.cluster_size());
            }
        }
    }
    co_return freed;
}

std::vector<TableWrite> Refcounts::take_dirty_table() {
    std::vector<TableWrite> out;
    const uint64_t per_cluster = geo_.cluster_size() / 8;
    for (uint64_t ci : dirty_table_) {
        Buffer b(geo_.cluster_size());
        for (uint64_t i = 0; i < per_cluster && ci * per_cluster + i < table_.size(); ++i)
            store_be64(b.data() + i * 8, table_[ci * per_cluster + i]);
        out.push_back(TableWrite{loc_.offset + ci * geo_.cluster_size(), std::move(b)});
    }
    dirty_table_.clear();
    return out;
}

void Refcounts::restore_dirty_table(const std::vector<TableWrite>& w) {
    for (auto& t : w) {
        if (t.offset < loc_.offset) continue;
        dirty_table_.insert((t.offset - loc_.offset) / geo_.cluster_size());
    }
}

std::optional<RefTableLocation> Refcounts::take_relocation() {
    auto r = relocated_;
    relocated_.reset();
    return r;
}

}  // namespace qnbd::qcow2

namespace qnbd::qcow2 {

awaitable<Result<void>> Refcounts::reconcile(const std::vector<uint64_t>& counts) {
    const uint64_t covered = table_.size() * per_block_;
    for (uint64_t c = covered; c < counts.size(); ++c)
        if (counts[c])
            co_return Error{EINVAL, "image is corrupt: host cluster at " +
                                        hex(c << geo_.cluster_bits) +
                                        " is in use but no refcount block covers it; "
                                        "repair it with 'qemu-img check -r all'"};
    for (uint64_t bi = 0; bi < table_.size(); ++bi) {
        const uint64_t first = bi * per_block_;
        if (table_[bi] == 0) {
            for (uint64_t c = first; c < std::min<uint64_t>(counts.size(), first + per_block_); ++c)
                if (counts[c])
                    co_return Error{EINVAL, "image is corrupt: host cluster at " +
                                                hex(c << geo_.cluster_bits) +
                                                " is in use but has no refcount block; "
                                                "repair it with 'qemu-img check -r all'"};
            continue;
        }
        auto b = co_await cache_.get(HostOffset{table_[bi]});
        if (!b) co_return b.error();
        for (uint64_t i = 0; i < per_block_; ++i) {
            const uint64_t want = first + i < counts.size() ? counts[first + i] : 0;
            if (want > max_refcount(order_))
                co_return Error{EINVAL, "image is corrupt: cluster " +
                                            hex((first + i) << geo_.cluster_bits) +
                                            " has more references than refcounts can hold"};
            if (get_refcount((*b)->data.data(), i, order_) == want) continue;
            set_refcount((*b)->data.data(), i, order_, want);
            cache_.mark_dirty(*b);
            if (want == 0) cursor_ = std::min(cursor_, first + i);
        }
    }
    co_return ok();
}

}  // namespace qnbd::qcow2
