// Data writes: in place where the cluster is owned (COPIED), otherwise allocation with
// copy-on-write of the rest of the (sub)cluster. The data is written before the new L2 entry
// exists in memory; the L2 entry reaches the disk only at a barrier, after the refcounts.
#include <cstring>
#include <deque>

#include "qcow2/image.hpp"

namespace qnbd::qcow2 {
namespace {

/// Bitmask of the subclusters [first, last].
uint32_t sc_mask(uint32_t first, uint32_t last) {
    uint64_t m = ((uint64_t{1} << (last + 1)) - 1) & ~((uint64_t{1} << first) - 1);
    return static_cast<uint32_t>(m);
}

/// True when the guest sees only zeros in the cluster (no read needed for copy-on-write).
bool reads_as_zero(const ClusterInfo& ci, bool has_backing, bool raw_data, const Geometry& geo) {
    if (raw_data) return false;
    switch (ci.kind) {
        case ClusterKind::Zero:
            return true;
        case ClusterKind::Unallocated:
            return !has_backing || (geo.extended_l2 && ci.zero_mask == 0xffffffffu);
        default:
            return false;
    }
}

/// Runs `tasks` concurrently and returns the first error; a single task runs inline.
awaitable<Result<void>> run_all(asio::any_io_executor ex,
                                std::vector<awaitable<Result<void>>> tasks) {
    if (tasks.size() == 1) co_return co_await std::move(tasks[0]);
    JoinSet join(ex);
    for (auto& t : tasks) join.spawn(std::move(t));
    co_return co_await join.wait();
}

/// Makes [off, off+len) read as zeros: fallocate, or written zeros where it is unsupported.
awaitable<Result<void>> zero_range(io::File& f, HostOffset off, uint64_t len) {
    auto r = co_await f.fallocate(io::Fallocate::ZeroRange, off, len);
    if (r || (r.error().code != ENOTSUP && r.error().code != EOPNOTSUPP)) co_return r;
    Buffer zeros(len);
    co_return co_await f.write(off, zeros.span());
}

/// Writes `data` at `host + start` and, unless the range is fresh (never written, so it reads
/// as zeros already), zeroes the rest of [host + ws, host + we) alongside.
awaitable<Result<void>> write_zero_padded(asio::any_io_executor ex, io::File& f, HostOffset host,
                                          uint64_t ws, uint64_t we, uint64_t start,
                                          std::span<const std::byte> data, bool fresh) {
    std::vector<awaitable<Result<void>>> tasks;
    tasks.push_back(f.write(host + start, data));
    const uint64_t end = start + data.size();
    if (!fresh && start > ws) tasks.push_back(zero_range(f, host + ws, start - ws));
    if (!fresh && we > end) tasks.push_back(zero_range(f, host + end, we - end));
    co_return co_await run_all(ex, std::move(tasks));
}

}  // namespace

awaitable<Result<void>> Qcow2Image::check_writable(GuestOffset off, uint64_t len) {
    if (read_only_) co_return Error{EPERM, "the image is read-only"};
    if (closed_) co_return Error{EIO, "the image is closed"};
    if (off.value > header_.size || len > header_.size - off.value)
        co_return Error{ENOSPC, "write beyond the end of the disk"};
    co_return ok();
}

awaitable<void> Qcow2Image::lock_cluster(ClusterIndex c) {
    for (;;) {
        auto it = busy_.find(c);
        if (it == busy_.end()) break;
        auto n = it->second;
        co_await n->wait();
    }
    busy_.emplace(c, std::make_shared<Notifier>());
}

void Qcow2Image::unlock_cluster(ClusterIndex c) {
    auto it = busy_.find(c);
    if (it == busy_.end()) return;
    auto n = std::move(it->second);
    busy_.erase(it);
    n->notify_all();
}

/// True when [start, start+len) of the cluster can be written where it is, with no metadata change.
static bool writable_in_place(const ClusterInfo& ci, const Geometry& geo, uint64_t start,
                              uint64_t len) {
    if (ci.kind != ClusterKind::Normal || !ci.copied) return false;
    if (!geo.extended_l2) return true;
    const uint32_t first = static_cast<uint32_t>(start / geo.subcluster_size());
    const uint32_t last = static_cast<uint32_t>((start + len - 1) / geo.subcluster_size());
    const uint32_t need = sc_mask(first, last);
    return (ci.alloc_mask & need) == need;
}

awaitable<Result<void>> Qcow2Image::write(GuestOffset off, std::span<const std::byte> buf,
                                          WriteFlags flags) {
    if (auto r = co_await check_writable(off, buf.size()); !r) co_return r;
    if (buf.empty()) co_return ok();
    std::optional<IoGuard> guard(std::in_place, *this);
    // The request's I/Os, started together at the end (a single one is awaited directly).
    std::vector<awaitable<Result<void>>> tasks;
    io::File& data = data_file_ ? *data_file_ : *file_;
    // In-place pieces are issued last, merged into one writev per run of contiguous host
    // offsets (in any guest order: a cluster range written backwards is still one write).
    std::vector<HostPiece> in_place;
    // Consecutive clusters that need a new host cluster and read as zeros are allocated
    // together, host-contiguously, and written with one request.
    struct FreshRun {
        ClusterIndex first;
        uint64_t count;
        uint64_t start;
        std::span<const std::byte> data;
    };
    std::optional<FreshRun> fresh;
    auto flush_fresh = [&] {
        if (fresh && fresh->count == 1)
            tasks.push_back(write_cluster(fresh->first, fresh->start, fresh->data));
        else if (fresh)
            tasks.push_back(write_run(fresh->first, fresh->count, fresh->start, fresh->data));
        fresh.reset();
    };
    for (GuestOffset pos = off; pos < off + buf.size();) {
        const ClusterIndex c = geo_.cluster_of(pos);
        const uint64_t start = geo_.offset_in_cluster(pos);
        const uint64_t n = std::min<uint64_t>(geo_.cluster_size() - start, off + buf.size() - pos);
        auto piece = buf.subspan(pos - off, n);
        pos += n;
        ClusterInfo ci;
        if (!busy_.count(c)) {
            auto l = co_await lookup(c);
            if (!l) co_return l.error();
            ci = *l;
        }
        if (!busy_.count(c) && writable_in_place(ci, geo_, start, n)) {
            flush_fresh();
            in_place.push_back(HostPiece{
                ci.host + start, std::span(const_cast<std::byte*>(piece.data()), piece.size())});
            continue;
        }
        if (!busy_.count(c) && joins_fresh_run(ci)) {
            if (fresh && fresh->first.value + fresh->count == c.value &&
                fresh->count < refcounts_->max_run()) {
                ++fresh->count;
                fresh->data = std::span(fresh->data.data(), fresh->data.size() + n);
            } else {
                flush_fresh();
                fresh = FreshRun{c, 1, start, piece};
            }
            continue;
        }
        flush_fresh();
        tasks.push_back(write_cluster(c, start, piece));
    }
    flush_fresh();
    for (auto& r : host_runs(in_place)) tasks.push_back(write_pieces(data, std::move(r)));
    auto r = co_await run_all(ex_, std::move(tasks));
    data_written_ = true;
    guard.reset();  // A FUA flush waits for a barrier, which may wait for this guard.
    if (!r) co_return r;
    co_return co_await after_write(flags.fua);
}

awaitable<Result<void>> Qcow2Image::write_cluster(ClusterIndex c, uint64_t start,
                                                  std::span<const std::byte> data) {
    co_await lock_cluster(c);
    ClusterUnlock unlock{this, c};
    auto l = co_await lookup(c);
    if (!l) co_return l.error();
    if (writable_in_place(*l, geo_, start, data.size())) {
        io::File& f = data_file_ ? *data_file_ : *file_;
        co_return co_await f.write(l->host + start, data);
    }
    co_return co_await write_allocating(c, *l, start, data);
}

awaitable<Result<HostOffset>> Qcow2Image::allocate_data_cluster(ClusterIndex c, bool& fresh) {
    if (data_file_) {
        // Data clusters of an external data file sit at their guest offset, unrefcounted.
        fresh = false;
        co_return HostOffset{geo_.start_of(c).value};
    }
    auto h = co_await refcounts_->allocate(1, fresh);
    if (h) maybe_preallocate(*h + geo_.cluster_size());
    co_return h;
}

void Qcow2Image::release_host(const ClusterInfo& ci) {
    if (data_file_) return;
    if (ci.kind == ClusterKind::Compressed)
        refcounts_->defer_free(ci.host, ci.compressed_len);
    else if (ci.has_host)
        refcounts_->defer_free(ci.host, geo_.cluster_size());
}

awaitable<Result<void>> Qcow2Image::write_allocating(ClusterIndex c, const ClusterInfo& ci,
                                                     uint64_t start,
                                                     std::span<const std::byte> data) {
    const uint64_t cs = geo_.cluster_size();
    const bool reuse = ci.has_host && ci.copied && ci.kind != ClusterKind::Compressed;
    bool fresh = false;
    HostOffset host = ci.host;
    if (!reuse) {
        auto h = co_await allocate_data_cluster(c, fresh);
        if (!h) co_return h.error();
        host = *h;
    }
    // The byte range of the cluster to write, and the subcluster bitmap afterwards.
    uint64_t ws = 0, we = cs;
    uint64_t bitmap = 0;
    if (geo_.extended_l2) {
        const uint64_t scs = geo_.subcluster_size();
        const uint32_t first = static_cast<uint32_t>(start / scs);
        const uint32_t last = static_cast<uint32_t>((start + data.size() - 1) / scs);
        const uint32_t touched = sc_mask(first, last);
        uint32_t alloc = ci.alloc_mask | touched, zero = ci.zero_mask & ~touched;
        if (ci.kind == ClusterKind::Compressed) alloc = 0xffffffffu, zero = 0;
        if (reuse || ci.kind == ClusterKind::Unallocated) ws = first * scs, we = (last + 1) * scs;
        // Allocated edge subclusters may take concurrent in-place writes: never rewrite their
        // bytes outside this request, only fill subclusters that become allocated now.
        if (reuse && ((ci.alloc_mask >> first) & 1)) ws = start;
        if (reuse && ((ci.alloc_mask >> last) & 1)) we = start + data.size();
        bitmap = (uint64_t{zero} << 32) | alloc;
    }
    const bool zero_fill = reads_as_zero(ci, backing_ != nullptr, fmt_.data_file_raw, geo_);
    Result<void> wr;
    io::File& f = data_file_ ? *data_file_ : *file_;
    if (zero_fill) {
        wr = co_await write_zero_padded(ex_, f, host, ws, we, start, data, fresh);
    } else {
        Buffer buf(we - ws);
        auto segs = co_await map_range(geo_.start_of(c) + ws, we - ws);
        if (!segs) wr = segs.error();
        for (size_t i = 0; segs && wr && i < segs->size(); ++i) {
            const Segment& s = (*segs)[i];
            wr = co_await read_segment(
                s, buf.span().subspan(s.guest - (geo_.start_of(c) + ws), s.length));
        }
        if (wr) {
            std::memcpy(buf.data() + (start - ws), data.data(), data.size());
            wr = co_await f.write(host + ws, buf.span());
        }
    }
    if (!wr) {
        if (!reuse && !data_file_)
            (void)co_await refcounts_->adjust(geo_.host_cluster_of(host), -1);
        co_return wr;
    }
    auto t = co_await l2_table(c, true);
    if (!t) {
        if (!reuse && !data_file_)
            (void)co_await refcounts_->adjust(geo_.host_cluster_of(host), -1);
        co_return t.error();
    }
    set_l2_slot(*t, c, encode_normal(host), bitmap);
    if (!reuse) release_host(ci);
    maybe_background_flush();
    co_return ok();
}

awaitable<Result<void>> write_pieces(io::File& f, std::vector<HostPiece> run) {
    if (run.size() == 1) co_return co_await f.write(run[0].host, run[0].bytes);
    const auto iov = run_iovecs(run);
    co_return co_await f.writev(run[0].host, iov);
}

bool Qcow2Image::joins_fresh_run(const ClusterInfo& ci) const {
    return !geo_.extended_l2 && !data_file_ && !ci.has_host &&
           reads_as_zero(ci, backing_ != nullptr, fmt_.data_file_raw, geo_);
}

awaitable<Result<void>> Qcow2Image::write_run(ClusterIndex first, uint64_t n, uint64_t start,
                                              std::span<const std::byte> data) {
    const uint64_t cs = geo_.cluster_size();
    std::deque<ClusterUnlock> locks;
    std::vector<ClusterInfo> infos;
    bool still_fresh = true;
    for (uint64_t i = 0; i < n; ++i) {
        const ClusterIndex c{first.value + i};
        co_await lock_cluster(c);
        locks.emplace_back(this, c);
        auto l = co_await lookup(c);
        if (!l) co_return l.error();
        infos.push_back(*l);
        still_fresh = still_fresh && joins_fresh_run(*l);
    }
    if (!still_fresh) {
        // A concurrent request changed a cluster meanwhile: write cluster by cluster.
        locks.clear();
        std::vector<awaitable<Result<void>>> tasks;
        for (uint64_t i = 0, pos = 0; i < n; ++i) {
            const uint64_t from = i == 0 ? start : 0;
            const uint64_t len = std::min(cs - from, data.size() - pos);
            tasks.push_back(
                write_cluster(ClusterIndex{first.value + i}, from, data.subspan(pos, len)));
            pos += len;
        }
        co_return co_await run_all(ex_, std::move(tasks));
    }
    bool fresh = false;
    auto h = co_await refcounts_->allocate(n, fresh);
    if (!h) co_return h.error();
    maybe_preallocate(*h + n * cs);
    const HostClusterIndex h0 = geo_.host_cluster_of(*h);
    auto release_from = [&](uint64_t i) -> awaitable<void> {
        for (; i < n; ++i) (void)co_await refcounts_->adjust(HostClusterIndex{h0.value + i}, -1);
    };
    auto wr = co_await write_zero_padded(ex_, *file_, *h, 0, n * cs, start, data, fresh);
    if (!wr) {
        co_await release_from(0);
        co_return wr;
    }
    for (uint64_t i = 0; i < n; ++i) {
        const ClusterIndex c{first.value + i};
        auto t = co_await l2_table(c, true);
        if (!t) {
            co_await release_from(i);
            co_return t.error();
        }
        set_l2_slot(*t, c, encode_normal(*h + i * cs), 0);
        release_host(infos[i]);
    }
    maybe_background_flush();
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::after_write(bool fua) {
    if (fua || opts_.writethrough) co_return co_await flush();
    co_return ok();
}

}  // namespace qnbd::qcow2
