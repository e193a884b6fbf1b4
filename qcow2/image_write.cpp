// Data writes: the executor of write_plan.hpp's plans. In place where the cluster is owned
// (COPIED); otherwise allocation with copy-on-write of the rest of the (sub)cluster. The data is
// written before the new L2 entry exists in memory, and the L2 entry reaches the disk only at a
// barrier, after the refcounts and a sync (docs/ARCHITECTURE.md, R2, R4).
#include <spdlog/spdlog.h>

#include <cstring>

#include "base/hex.hpp"
#include "qcow2/image.hpp"

namespace qnbd::qcow2 {

Result<void> Qcow2Image::check_writable(GuestOffset off, uint64_t len) const {
    if (read_only_) return Error{EPERM, "the image is read-only"};
    if (closed_) return Error{EIO, "the image is closed"};
    if (corrupt_) return Error{EIO, "the image is marked corrupt; writes are refused"};
    if (off.value > header_.size || len > header_.size - off.value)
        return Error{ENOSPC, "write beyond the end of the disk"};
    return ok();
}

WriteContext Qcow2Image::write_context() const {
    return WriteContext{geo_, backing_ != nullptr, data_file_ != nullptr, fmt_.data_file_raw,
                        refcounts_->max_run()};
}

awaitable<Result<void>> Qcow2Image::write(GuestOffset off, std::span<const std::byte> buf,
                                          WriteFlags flags) {
    if (auto r = check_writable(off, buf.size()); !r) co_return r;
    if (buf.empty()) co_return ok();
    track_dirty(off, buf.size());
    std::optional<IoGuard> guard(std::in_place, *this);
    auto states = cluster_states_cached(off, buf.size());
    if (!states) states = co_await cluster_states(off, buf.size());
    if (!*states) co_return states->error();
    auto r = co_await execute(plan_write(off, buf.size(), **states, write_context()), buf);
    data_written_ = true;
    guard.reset();  // A FUA flush waits for a barrier, which may wait for this guard (R7).
    if (!r) co_return r;
    if (flush_after(flags.fua)) co_return co_await flush();  // after_write() without its frame
    co_return ok();
}

awaitable<Result<std::vector<ClusterState>>> Qcow2Image::cluster_states(GuestOffset off,
                                                                        uint64_t len) {
    std::vector<ClusterState> out;
    const ClusterIndex last = geo_.cluster_of(off + (len - 1));
    for (ClusterIndex c = geo_.cluster_of(off); c <= last; ++c) {
        ClusterState st;
        if (!busy_.count(c)) {
            auto l = co_await lookup(c);
            if (!l) co_return l.error();
            st.info = *l;
        }
        st.busy = busy_.count(c) != 0;  // The lookup may have let another request take it.
        out.push_back(st);
    }
    co_return out;
}

std::optional<Result<std::vector<ClusterState>>> Qcow2Image::cluster_states_cached(GuestOffset off,
                                                                                   uint64_t len) {
    std::vector<ClusterState> out;
    const ClusterIndex last = geo_.cluster_of(off + (len - 1));
    for (ClusterIndex c = geo_.cluster_of(off); c <= last; ++c) {
        ClusterState st;
        st.busy = busy_.count(c) != 0;
        if (!st.busy) {
            auto l = lookup_cached(c);
            if (!l) return std::nullopt;
            if (!*l) return Result<std::vector<ClusterState>>(l->error());
            st.info = **l;
        }
        out.push_back(st);
    }
    return Result<std::vector<ClusterState>>(std::move(out));
}

awaitable<Result<void>> Qcow2Image::execute(const WritePlan& plan, std::span<const std::byte> buf) {
    for (const InPlacePiece& p : plan.in_place)
        if (hits_metadata(p.host, p.length)) return refuse_overlap(p.host, p.length, "a write");
    std::vector<awaitable<Result<void>>> tasks;
    for (const ClusterStep& s : plan.clusters)
        tasks.push_back(write_cluster(s.cluster, s.start, buf.subspan(s.buf_offset, s.length)));
    for (const FreshRunStep& r : plan.fresh_runs)
        tasks.push_back(write_fresh_run(r, buf.subspan(r.buf_offset, r.length)));
    // In-place pieces merge into one writev per run of contiguous host offsets, in any guest
    // order: a cluster range written backwards is still one write.
    std::vector<HostPiece> pieces;
    for (const InPlacePiece& p : plan.in_place)
        pieces.push_back(HostPiece{
            p.host, std::span(const_cast<std::byte*>(buf.data()) + p.buf_offset, p.length)});
    for (auto& run : host_runs(pieces)) tasks.push_back(write_run(data_io(), std::move(run)));
    return run_all(ex_, std::move(tasks));
}

awaitable<Result<void>> Qcow2Image::write_cluster(ClusterIndex c, uint64_t start,
                                                  std::span<const std::byte> data) {
    std::optional<ClusterLock> lock = try_lock_cluster(c);
    if (!lock) lock.emplace(co_await lock_cluster(c));
    // Looked up again: it may have changed while the request waited (R12).
    auto l = lookup_cached(c);
    if (!l) l = co_await lookup(c);
    if (!*l) co_return l->error();
    const ClusterInfo& ci = **l;
    if (classify_write(ci, start, data.size(), write_context()) == WriteKind::InPlace) {
        if (hits_metadata(ci.host + start, data.size()))
            co_return co_await refuse_overlap(ci.host + start, data.size(), "a write");
        co_return co_await data_io().write(ci.host + start, data);
    }
    co_return co_await write_allocating(c, ci, start, data);
}

std::optional<DataCluster> Qcow2Image::allocate_data_cluster_now(ClusterIndex c) {
    if (data_file_) {
        // Data clusters of an external data file sit at their guest offset, unrefcounted.
        return DataCluster{HostOffset{geo_.start_of(c).value}, false, false};
    }
    if (auto a = refcounts_->allocate_reserved(ClusterCount{1})) return data_cluster_at(*a);
    return std::nullopt;
}

awaitable<Result<DataCluster>> Qcow2Image::allocate_data_cluster(ClusterIndex c) {
    if (auto d = allocate_data_cluster_now(c)) co_return *d;
    auto a = co_await refcounts_->allocate(ClusterCount{1});
    if (!a) co_return a.error();
    co_return data_cluster_at(*a);
}

DataCluster Qcow2Image::data_cluster_at(const Allocation& a) {
    const HostOffset host = geo_.host_start_of(a.first);
    maybe_preallocate(host + geo_.cluster_size());
    return DataCluster{host, a.fresh, true, a.durable};
}

void Qcow2Image::release_host(const ClusterInfo& ci) {
    if (data_file_) return;
    // R6: the refcount drops only after the barrier that makes the new L2 entry durable.
    if (ci.kind == ClusterKind::Compressed)
        refcounts_->defer_free(ci.host, ci.compressed_len);
    else if (ci.has_host)
        refcounts_->defer_free(ci.host, geo_.cluster_size());
}

awaitable<void> Qcow2Image::give_back(HostOffset host, ClusterCount n) {
    // Nothing references the clusters yet. If lowering their refcounts fails as well, they stay
    // allocated and unreferenced: a leak that qemu-img check reports and a rebuild reclaims.
    auto r = co_await refcounts_->release(geo_.host_cluster_of(host), n);
    if (!r)
        spdlog::warn("{}: {} cluster(s) at {} leaked after a failed write: {}", file_->path(),
                     n.value, hex(host.value), r.error().message);
}

awaitable<Result<void>> Qcow2Image::write_allocating(ClusterIndex c, const ClusterInfo& ci,
                                                     uint64_t start,
                                                     std::span<const std::byte> data) {
    const bool reuse = reuses_host(ci);
    DataCluster target{ci.host, false, false};
    if (!reuse) {
        std::optional<DataCluster> now = allocate_data_cluster_now(c);
        if (!now) {
            auto a = co_await allocate_data_cluster(c);
            if (!a) co_return a.error();
            now = *a;
        }
        target = *now;
    }
    const AllocationShape shape = shape_allocation(ci, start, data.size(), reuse, geo_);
    auto r = co_await fill_cluster(c, ci, target, shape, start, data);
    // R22: a fresh cluster counted at an earlier barrier, where the guest saw only zeros, reads
    // the same whether or not its data became durable: no sync needed between data and L2.
    const bool early =
        !reuse && target.fresh && target.durable && reads_as_zero(ci, write_context());
    if (r && !set_mapping_cached(c, target.host, shape.bitmap, early))
        r = co_await set_mapping(c, target.host, shape.bitmap, early);
    if (!r) {
        if (target.refcounted) co_await give_back(target.host, ClusterCount{1});
        co_return r;
    }
    if (!reuse) release_host(ci);
    maybe_background_flush();
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::fill_cluster(ClusterIndex c, const ClusterInfo& ci,
                                                 DataCluster target, AllocationShape shape,
                                                 uint64_t start, std::span<const std::byte> data) {
    if (hits_metadata(target.host + shape.begin, shape.end - shape.begin))
        co_return co_await refuse_overlap(target.host + shape.begin, shape.end - shape.begin,
                                          "an allocating write");
    io::File& f = data_io();
    if (reads_as_zero(ci, write_context()))
        co_return co_await write_zero_padded(ex_, f, target.host, shape.begin, shape.end, start,
                                             data, target.fresh);
    // Copy-on-write: the rest of [begin, end) is what the guest sees there now.
    Buffer buf(shape.end - shape.begin);
    const GuestOffset from = geo_.start_of(c) + shape.begin;
    auto segs = co_await map_range(from, buf.size());
    if (!segs) co_return segs.error();
    for (const Segment& s : *segs)
        if (auto r = co_await read_segment(s, buf.span().subspan(s.guest - from, s.length)); !r)
            co_return r;
    std::memcpy(buf.data() + (start - shape.begin), data.data(), data.size());
    co_return co_await f.write(target.host + shape.begin, buf.span());
}

awaitable<Result<void>> Qcow2Image::set_mapping(ClusterIndex c, HostOffset host, uint64_t bitmap,
                                                bool early) {
    auto t = co_await l2_table(c, true);
    if (!t) co_return t.error();
    set_data_entry(*t, c, host, bitmap, early);
    co_return ok();
}

void Qcow2Image::set_data_entry(const CacheRef& t, ClusterIndex c, HostOffset host, uint64_t bitmap,
                                bool early) {
    set_l2_slot(t, c, encode_normal(host), bitmap);
    if (!early) l2_ordered_ = true;  // R2, R4: the barrier syncs before this L2 entry.
}

bool Qcow2Image::set_mapping_cached(ClusterIndex c, HostOffset host, uint64_t bitmap, bool early) {
    std::optional<CacheRef> t = l2_table_cached_writable(c);
    if (!t) return false;
    set_data_entry(*t, c, host, bitmap, early);
    return true;
}

awaitable<Result<void>> Qcow2Image::write_fresh_run(FreshRunStep run,
                                                    std::span<const std::byte> data) {
    std::vector<ClusterLock> locks;
    std::vector<ClusterInfo> infos;
    bool still_fresh = true;
    for (ClusterIndex c = run.first; c < run.first + run.count; ++c) {
        if (auto now = try_lock_cluster(c))
            locks.push_back(std::move(*now));
        else
            locks.push_back(co_await lock_cluster(c));
        auto l = co_await lookup(c);
        if (!l) co_return l.error();
        infos.push_back(*l);
        const uint64_t from = c == run.first ? run.start : 0;
        still_fresh =
            still_fresh && classify_write(*l, from, 1, write_context()) == WriteKind::FreshRun;
    }
    if (!still_fresh) {
        // A concurrent request changed a cluster meanwhile: write cluster by cluster.
        locks.clear();
        co_return co_await write_clusters_of(run, data);
    }
    auto a = co_await refcounts_->allocate(run.count);
    if (!a) co_return a.error();
    const HostOffset host = geo_.host_start_of(a->first);
    maybe_preallocate(host + geo_.bytes(run.count));
    Result<void> wr;
    if (hits_metadata(host, geo_.bytes(run.count)))
        wr = co_await refuse_overlap(host, geo_.bytes(run.count), "an allocating write");
    else
        wr = co_await write_zero_padded(ex_, *file_, host, 0, geo_.bytes(run.count), run.start,
                                        data, a->fresh);
    if (!wr) {
        co_await give_back(host, run.count);
        co_return wr;
    }
    for (uint64_t i = 0; i < run.count.value; ++i) {
        const ClusterIndex c = run.first + ClusterCount{i};
        const HostOffset to = host + geo_.bytes(ClusterCount{i});
        Result<void> r;
        if (!set_mapping_cached(c, to, 0, a->durable))
            r = co_await set_mapping(c, to, 0, a->durable);
        if (!r) {
            co_await give_back(host + geo_.bytes(ClusterCount{i}),
                               ClusterCount{run.count.value - i});
            co_return r;
        }
        release_host(infos[i]);
    }
    maybe_background_flush();
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::write_clusters_of(FreshRunStep run,
                                                      std::span<const std::byte> data) {
    std::vector<awaitable<Result<void>>> tasks;
    uint64_t pos = 0;
    for (ClusterIndex c = run.first; c < run.first + run.count; ++c) {
        const uint64_t from = c == run.first ? run.start : 0;
        const uint64_t len = std::min(geo_.cluster_size() - from, data.size() - pos);
        tasks.push_back(write_cluster(c, from, data.subspan(pos, len)));
        pos += len;
    }
    co_return co_await run_all(ex_, std::move(tasks));
}

awaitable<Result<void>> Qcow2Image::after_write(bool fua) {
    if (flush_after(fua)) co_return co_await flush();
    co_return ok();
}

}  // namespace qnbd::qcow2
