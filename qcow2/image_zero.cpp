// Write-zeroes and discard: whole clusters (or subclusters) change metadata only; partial
// pieces are written as zeros through the data path.
#include "qcow2/image.hpp"

namespace qnbd::qcow2 {

namespace {

/// Clusters of one zero or discard request in flight at once. A request may cover 4 GiB
/// (65,536 clusters of 64 KiB, a million of 4 KiB): one coroutine per cluster for all of them
/// at once would cost hundreds of MiB for a single request.
constexpr uint64_t kClustersAtOnce = 256;

}  // namespace

awaitable<Result<void>> Qcow2Image::write_zeroes(GuestOffset off, uint64_t len, ZeroFlags flags) {
    if (auto r = check_writable(off, len); !r) co_return r;
    track_dirty(off, len);
    for (GuestOffset pos = off; pos < off + len;) {
        JoinSet join(ex_);
        for (uint64_t k = 0; k < kClustersAtOnce && pos < off + len; ++k) {
            const ClusterIndex c = geo_.cluster_of(pos);
            const uint64_t start = geo_.offset_in_cluster(pos);
            const uint64_t n = std::min<uint64_t>(geo_.cluster_size() - start, off + len - pos);
            join.spawn(zero_cluster(c, start, n, flags));
            pos += n;
        }
        auto r = co_await join.wait();
        data_written_ = true;
        if (!r) co_return r;
    }
    co_return co_await after_write(flags.fua);
}

awaitable<Result<void>> Qcow2Image::zero_cluster(ClusterIndex c, uint64_t start, uint64_t len,
                                                 ZeroFlags flags) {
    std::optional<ClusterLock> lock = try_lock_cluster(c);
    if (!lock) lock.emplace(co_await lock_cluster(c));
    auto l = co_await lookup(c);
    if (!l) co_return l.error();
    const ClusterInfo ci = *l;
    auto done = co_await zero_by_metadata(c, ci, start, len, flags);
    if (!done) co_return done.error();
    if (*done) co_return ok();
    // Written as data. Pieces that already read as zeros need nothing.
    if (ci.kind == ClusterKind::Zero || (ci.kind == ClusterKind::Unallocated && !backing_ &&
                                         !fmt_.data_file_raw && !geo_.extended_l2))
        co_return ok();
    if (flags.fast_only) co_return Error{ENOTSUP, "zeroing this range would write data"};
    Buffer zeros(len);
    if (ci.kind == ClusterKind::Normal && ci.copied && !geo_.extended_l2) {
        if (hits_metadata(ci.host + start, len))
            co_return co_await refuse_overlap(ci.host + start, len, "a zero write");
        co_return co_await data_io().write(ci.host + start, zeros.span());
    }
    co_return co_await write_allocating(c, ci, start, zeros.span());
}

awaitable<Result<bool>> Qcow2Image::zero_by_metadata(ClusterIndex c, const ClusterInfo& ci,
                                                     uint64_t start, uint64_t len,
                                                     ZeroFlags flags) {
    const uint64_t cs = geo_.cluster_size(), scs = geo_.subcluster_size();
    const bool whole = start == 0 && len == cs;
    const bool sc_aligned = geo_.extended_l2 && start % scs == 0 && len % scs == 0;
    const bool compressed = ci.kind == ClusterKind::Compressed;
    const bool meta_only =
        (whole && (header_.version >= 3 || geo_.extended_l2)) || (sc_aligned && !compressed);
    // Version 2 has no zero flag: only a whole cluster without a backing file can be dropped.
    const bool v2_unmap = whole && header_.version < 3 && !backing_ && flags.may_unmap;
    if (fmt_.data_file_raw || (!meta_only && !v2_unmap)) co_return false;
    auto t = co_await l2_table(c, true);
    if (!t) co_return t.error();
    const bool unmap = flags.may_unmap || !ci.copied;
    uint64_t entry = unmap || !ci.has_host ? 0 : (ci.host.value | kOflagCopied);
    if (!meta_only) {
        entry = 0;
        set_l2_slot(*t, c, 0, 0);
    } else if (geo_.extended_l2) {
        const uint32_t first = static_cast<uint32_t>(start / scs);
        const uint32_t count = static_cast<uint32_t>(len / scs);
        const uint32_t m = static_cast<uint32_t>(((uint64_t{1} << count) - 1) << first);
        const uint32_t alloc = ci.alloc_mask & ~m, zero = ci.zero_mask | m;
        if (alloc != 0 || !unmap)
            entry = ci.has_host ? (ci.host.value | (ci.copied ? kOflagCopied : 0)) : 0;
        set_l2_slot(*t, c, entry, (uint64_t{zero} << 32) | alloc);
    } else {
        set_l2_slot(*t, c, entry | kOflagZero, 0);
    }
    if (entry == 0 && (ci.has_host || compressed)) release_host(ci);
    maybe_background_flush();
    co_return true;
}

awaitable<Result<void>> Qcow2Image::discard(GuestOffset off, uint64_t len, WriteFlags flags) {
    if (auto r = check_writable(off, len); !r) co_return r;
    track_dirty(off, len);
    if (fmt_.data_file_raw) co_return co_await after_write(flags.fua);
    const uint64_t cs = geo_.cluster_size();
    uint64_t first = (off.value + cs - 1) / cs;
    uint64_t last = (off.value + len) / cs;  // exclusive
    if (off.value + len == header_.size) last = (header_.size + cs - 1) / cs;
    for (uint64_t c = first; c < last;) {
        JoinSet join(ex_);
        for (const uint64_t end = std::min(last, c + kClustersAtOnce); c < end; ++c)
            join.spawn(discard_cluster(ClusterIndex{c}));
        auto r = co_await join.wait();
        if (!r) co_return r;
    }
    co_return co_await after_write(flags.fua);
}

awaitable<Result<void>> Qcow2Image::discard_cluster(ClusterIndex c) {
    auto lock = co_await lock_cluster(c);
    auto t = co_await l2_table(c, false);
    if (!t) co_return t.error();
    if (!*t) co_return ok();  // Nothing allocated in this L2 range.
    auto [entry, bitmap] = l2_slot(*t, c);
    auto d = decode_l2(entry, bitmap, fmt_, c);
    if (!d) co_return d.error();
    if (!(l1_[geo_.l1_index(c)] & kOflagCopied)) co_return ok();  // Shared with a snapshot.
    // With a backing file the cluster must not fall through to it: it becomes zero instead.
    uint64_t new_entry = 0, new_bitmap = 0;
    if (backing_ && header_.version >= 3) {
        if (geo_.extended_l2)
            new_bitmap = uint64_t{0xffffffffu} << 32;
        else
            new_entry = kOflagZero;
    }
    if (entry == new_entry && bitmap == new_bitmap) co_return ok();
    set_l2_slot(*t, c, new_entry, new_bitmap);
    release_host(*d);
    maybe_background_flush();
    co_return ok();
}

}  // namespace qnbd::qcow2
