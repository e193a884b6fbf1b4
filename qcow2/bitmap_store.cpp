// Storing the tracked persistent bitmaps at clean close, as qemu does: every table, data
// cluster and the directory go to newly allocated clusters, the header then points at the new
// directory, and only after that are the old clusters freed (rules R20, R21).
#include <algorithm>
#include <cstring>

#include "base/hex.hpp"
#include "qcow2/image.hpp"
#include "qcow2/tables.hpp"

namespace qnbd::qcow2 {
namespace {

bool all_zero(std::span<const uint8_t> s) {
    return std::all_of(s.begin(), s.end(), [](uint8_t b) { return b == 0; });
}

/// `bytes` rounded up to whole clusters, zero-padded.
Buffer padded(std::span<const std::byte> bytes, uint64_t cs) {
    Buffer b((bytes.size() + cs - 1) / cs * cs);
    std::memset(b.data(), 0, b.size());
    if (!bytes.empty()) std::memcpy(b.data(), bytes.data(), bytes.size());
    return b;
}

}  // namespace

awaitable<Result<HostOffset>> Qcow2Image::allocate_bitmap_run(uint64_t bytes) {
    const uint64_t n =
        std::max<uint64_t>(1, (bytes + geo_.cluster_size() - 1) / geo_.cluster_size());
    if (n > refcounts_->max_run().value)
        co_return Error{EIO, "bitmap metadata of " + std::to_string(bytes) +
                                 " bytes does not fit in one allocation"};
    auto a = co_await refcounts_->allocate(ClusterCount{n});
    if (!a) co_return a.error();
    const HostOffset at = geo_.host_start_of(a->first);
    meta_.add(at, n * geo_.cluster_size());
    co_return at;
}

awaitable<Result<void>> Qcow2Image::store_bitmaps() {
    if (std::none_of(bitmaps_.begin(), bitmaps_.end(),
                     [](const PersistentBitmap& b) { return b.tracked; }))
        co_return ok();
    const uint64_t cs = geo_.cluster_size();
    // R20: new clusters for the tables, the non-zero data clusters and the directory; their
    // refcounts are durable (the flush) before anything written below references them.
    struct Staged {
        PersistentBitmap* b;
        HostOffset table_at;
        std::vector<uint64_t> table;
    };
    std::vector<Staged> staged;
    std::vector<std::pair<HostOffset, Buffer>> writes;
    for (PersistentBitmap& b : bitmaps_) {
        if (!b.tracked) continue;
        Staged s{&b, HostOffset{}, std::vector<uint64_t>(b.table.size(), 0)};
        const std::span<const uint8_t> bits = b.bitmap->bits();
        for (uint64_t j = 0; j < s.table.size(); ++j) {
            const uint64_t at = j * cs;
            const auto chunk = bits.subspan(
                std::min<uint64_t>(at, bits.size()),
                std::min<uint64_t>(cs, bits.size() - std::min<uint64_t>(at, bits.size())));
            if (all_zero(chunk)) continue;
            auto c = co_await allocate_bitmap_run(cs);
            if (!c) co_return c.error();
            s.table[j] = c->value;
            writes.emplace_back(*c, padded(std::as_bytes(chunk), cs));
        }
        auto t = co_await allocate_bitmap_run(s.table.size() * 8);
        if (!t) co_return t.error();
        s.table_at = *t;
        staged.push_back(std::move(s));
    }
    Buffer dir = padded(bitmap_dir_.span(), cs);
    auto dir_at = co_await allocate_bitmap_run(bitmap_dir_.size());
    if (!dir_at) co_return dir_at.error();
    if (auto r = co_await flush_until_quiet(); !r) co_return r;

    for (Staged& s : staged) {
        std::vector<std::byte> table(s.table.size() * 8);
        for (size_t i = 0; i < s.table.size(); ++i) store_be64(table.data() + i * 8, s.table[i]);
        writes.emplace_back(s.table_at, padded(table, cs));
        const uint64_t entry = s.b->entry.flags_at - 12;
        store_be64(dir.data() + entry, s.table_at.value);
        store_be32(dir.data() + s.b->entry.flags_at, s.b->entry.flags & ~kBitmapInUse);
    }
    writes.emplace_back(*dir_at, std::move(dir));
    {
        JoinSet join(ex_);
        for (auto& [at, buf] : writes) {
            ++stats_.metadata_writes;
            join.spawn(file_->write(at, buf.span()));
        }
        if (auto r = co_await join.wait(); !r) co_return r;
    }
    if (auto r = co_await sync_all(); !r) co_return r;

    // R21: the header names the new directory once it and everything it references are
    // durable; until then the old directory (bitmaps in use) stays in force.
    const HostOffset old_dir = bitmap_dir_offset_;
    const uint64_t dir_size = bitmap_dir_.size();
    if (!patch_bitmaps_extension(header_, header_bytes_.span(), *dir_at, dir_size))
        co_return Error{EIO, "the header lost its bitmaps extension"};
    if (auto r = co_await write_header(); !r) co_return r;
    if (auto r = co_await sync_all(); !r) co_return r;

    // The old clusters are unreferenced now; they are freed after the next barrier (R6).
    refcounts_->defer_free(old_dir, dir_size, true);
    Buffer& new_dir = writes.back().second;
    std::memcpy(bitmap_dir_.data(), new_dir.data(), dir_size);
    bitmap_dir_offset_ = *dir_at;
    for (Staged& s : staged) {
        PersistentBitmap& b = *s.b;
        refcounts_->defer_free(b.entry.table_offset, b.table.size() * 8, true);
        for (uint64_t e : b.table)
            if (e & kBitmapTableOffsetMask)
                refcounts_->defer_free(HostOffset{e & kBitmapTableOffsetMask}, cs, true);
        b.entry.table_offset = s.table_at;
        b.entry.flags &= ~kBitmapInUse;
        b.table = std::move(s.table);
        b.tracked = false;
    }
    co_return co_await flush_until_quiet();
}

}  // namespace qnbd::qcow2
