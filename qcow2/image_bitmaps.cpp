// Persistent dirty bitmaps: loaded at open, marked in use while a writable image is open,
// updated in memory by every write, zero write and discard, and stored at clean close the
// way qemu stores them (new clusters, a new directory, then the header), rules R19-R21.
#include <algorithm>
#include <cstring>

#include "base/hex.hpp"
#include "qcow2/image.hpp"
#include "qcow2/tables.hpp"

namespace qnbd::qcow2 {
const DirtyBitmap* Qcow2Image::dirty_bitmap(std::string_view name) const {
    for (const PersistentBitmap& b : bitmaps_)
        if (b.entry.name == name) return b.bitmap.get();
    return nullptr;
}

void Qcow2Image::track_dirty(GuestOffset off, uint64_t len) {
    for (PersistentBitmap& b : bitmaps_)
        if (b.tracked) b.bitmap->mark(off.value, len);
}

awaitable<Result<void>> Qcow2Image::load_bitmaps() {
    auto ext = bitmaps_extension(header_);
    if (!ext) co_return ok();
    Buffer dir(ext->directory_size);
    if (auto r = co_await file_->read_zero_padded(ext->directory_offset, dir.span()); !r)
        co_return r.error();
    auto entries = parse_bitmap_directory(dir.span(), *ext, header_, reserved_end_);
    if (!entries) co_return entries.error();
    bitmap_dir_ = std::move(dir);
    bitmap_dir_offset_ = ext->directory_offset;
    for (BitmapEntry& e : *entries) {
        PersistentBitmap b;
        b.entry = std::move(e);
        if (auto r = co_await load_bitmap(b); !r) co_return r;
        bitmaps_.push_back(std::move(b));
    }
    each_bitmap_cluster([this](HostOffset off, uint64_t len) { meta_.add(off, len); });
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::load_bitmap(PersistentBitmap& b) {
    const uint64_t cs = geo_.cluster_size();
    Buffer t(uint64_t{b.entry.table_size} * 8);
    if (auto r = co_await file_->read_zero_padded(b.entry.table_offset, t.span()); !r)
        co_return r.error();
    b.table = decode_table(t.span());
    b.bitmap = std::make_unique<DirtyBitmap>(b.entry.name, header_.size, b.entry.granularity());
    b.bitmap->consistent = !b.entry.in_use() && b.entry.usable();
    std::vector<uint8_t> data(b.bitmap->bits().size(), 0);
    Buffer cluster(cs);
    for (uint64_t i = 0; i < b.table.size(); ++i) {
        auto d = decode_bitmap_table_entry(b.table[i], i, b.entry.name, header_, reserved_end_);
        if (!d) co_return d.error();
        if (!b.bitmap->consistent) continue;  // Its clusters count; its contents do not.
        const uint64_t at = i * cs;
        if (at >= data.size()) continue;
        const uint64_t n = std::min<uint64_t>(cs, data.size() - at);
        if (d->all_ones) std::memset(data.data() + at, 0xff, n);
        if (!d->cluster.value) continue;
        if (auto r = co_await file_->read_zero_padded(d->cluster, cluster.span()); !r)
            co_return r.error();
        std::memcpy(data.data() + at, cluster.data(), n);
    }
    b.bitmap->load(data);
    co_return ok();
}

Result<void> Qcow2Image::check_bitmap_clusters(const std::vector<uint64_t>& counts) const {
    // A damaged image may point a bitmap at clusters that hold something else; storing or
    // freeing them at close would destroy that, so a writable open refuses it.
    Result<void> r = ok();
    each_bitmap_cluster([&](HostOffset off, uint64_t len) {
        if (!r) return;
        const uint64_t first = off.value >> geo_.cluster_bits;
        const uint64_t last = (off.value + len - 1) >> geo_.cluster_bits;
        for (uint64_t c = first; c <= last; ++c)
            if (c < counts.size() && counts[c] > 1) {
                r = Error{EINVAL, "bitmap metadata at " + hex(c << geo_.cluster_bits) +
                                      " is also used by other metadata or data"};
                return;
            }
    });
    return r;
}

awaitable<Result<void>> Qcow2Image::open_bitmaps_writable() {
    for (const PersistentBitmap& b : bitmaps_)
        if (b.entry.is_auto() && !b.entry.usable())
            co_return Error{EINVAL, "bitmap '" + b.entry.name +
                                        "' is enabled but has extra data qnbd does not know; "
                                        "it cannot be kept up to date"};
    // R19: the in_use flags are durable before any write they track is served. Only the
    // 4-byte flags fields change, and none straddles a sector, so the directory is updated
    // in place.
    bool changed = false;
    for (PersistentBitmap& b : bitmaps_) {
        if (!b.entry.is_auto() || b.entry.in_use()) continue;
        b.entry.flags |= kBitmapInUse;
        store_be32(bitmap_dir_.data() + b.entry.flags_at, b.entry.flags);
        b.tracked = true;
        b.bitmap->enabled = true;
        changed = true;
    }
    if (!changed) co_return ok();
    ++stats_.metadata_writes;
    if (auto r = co_await file_->write(bitmap_dir_offset_, bitmap_dir_.span()); !r) co_return r;
    co_return co_await sync_all();
}

}  // namespace qnbd::qcow2
