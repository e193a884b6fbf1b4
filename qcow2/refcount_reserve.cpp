// The reserve of clusters counted one barrier ahead of use (docs/ARCHITECTURE.md, R22). A
// barrier writes the refcount blocks of the next clusters to be handed out together with the L2
// entries of clusters it counted before, and syncs once: a crash leaves reserved clusters with
// refcount 1 and no reference (leaks the dirty bit's rebuild reclaims), never a reference to a
// cluster whose count is not durable.
#include <algorithm>

#include "qcow2/refcounts.hpp"

namespace qnbd::qcow2 {

void Refcounts::restart_reserve() {
    res_ = Reserve{tail(), tail(), tail(), res_.generation + 1};
}

awaitable<Result<bool>> Refcounts::reserve_one() {
    // The next cluster joins the reserve if it is free, fresh and not metadata.
    const HostClusterIndex c = res_.end;
    const uint64_t b = block_of(c);
    if (!has_block(b)) {
        if (auto r = co_await ensure_block(b); !r) co_return r.error();
        if (c == first_of_block(b)) co_return false;  // The new block took the cluster.
    }
    auto rc = co_await refcount_at(b, c);  // A grown table may have taken it, too.
    if (!rc) co_return rc.error();
    if (*rc != 0 || c < fresh_start_ || meta_.overlaps(geo_.host_start_of(c), geo_.cluster_size()))
        co_return false;
    if (auto r = co_await set(c, 1); !r) co_return r.error();
    ++res_.end;
    co_return true;
}

awaitable<Result<void>> Refcounts::top_up_reserve(HostClusterIndex limit, uint64_t want) {
    AllocLock lock = co_await lock_allocator();
    if (reserve_left() == 0)
        restart_reserve();
    else if (res_.end != tail())
        co_return ok();  // Clusters past the reserve are in use: it grows once it is used up.
    for (int restarts = 0; reserve_left() < want && res_.end < limit;) {
        auto grown = co_await reserve_one();
        if (!grown) co_return grown.error();
        if (*grown) continue;
        if (reserve_left() > 0 || ++restarts > 2) break;
        restart_reserve();  // Still empty: start again past what took the cluster.
    }
    co_return ok();
}

void Refcounts::reserve_durable(const RefcountWrites& w) {
    if (w.reserve_generation == res_.generation)
        res_.durable_end = std::max(res_.durable_end, w.reserve_end);
}

Allocation Refcounts::take_reserved(ClusterCount n) {
    // Called with the allocator held and at least `n` clusters reserved.
    const HostClusterIndex first = res_.next;
    res_.next = first + n;
    fresh_start_ = std::max(fresh_start_, res_.next);
    if (cursor_ >= first) cursor_ = std::max(cursor_, res_.next);  // Handed out: not free.
    stats_.clusters_allocated += n.value;
    return Allocation{first, n, true, res_.next <= res_.durable_end};
}

awaitable<Result<void>> Refcounts::drop_reserve() {
    AllocLock lock = co_await lock_allocator();
    co_return co_await drop_reserve_locked();
}

awaitable<Result<void>> Refcounts::drop_reserve_locked() {
    const Reserve r = res_;
    res_ = Reserve{r.next, r.next, r.next, r.generation + 1};
    for (HostClusterIndex c = r.next; c < r.end; ++c)
        if (auto s = co_await set(c, 0); !s) co_return s;
    if (end_cluster_ == r.end) end_cluster_ = r.next;
    co_return ok();
}

}  // namespace qnbd::qcow2
