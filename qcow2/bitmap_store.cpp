// Storing the tracked persistent bitmaps at clean close, as qemu does: every table, data
// cluster and the directory go to newly allocated clusters, the header then points at the new
// directory, and only after that are the old clusters freed (rules R20, R21).
#include <algorithm>
#include <cstring>

#include "qcow2/image.hpp"

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

/// What a close stores: for each tracked bitmap its new table, and every cluster to write.
struct Qcow2Image::BitmapStage {
    struct Bitmap {
        PersistentBitmap* b;
        HostOffset table_at;
        std::vector<uint64_t> table;
    };
    std::vector<Bitmap> bitmaps;
    std::vector<std::pair<HostOffset, Buffer>> writes;
    HostOffset dir_at;
};

awaitable<Result<void>> Qcow2Image::stage_bitmap(PersistentBitmap& b, BitmapStage& stage) {
    const uint64_t cs = geo_.cluster_size();
    BitmapStage::Bitmap s{&b, HostOffset{}, std::vector<uint64_t>(b.table.size(), 0)};
    const std::span<const uint8_t> bits = b.bitmap->bits();
    for (uint64_t j = 0; j < s.table.size(); ++j) {
        const uint64_t at = std::min<uint64_t>(j * cs, bits.size());
        const auto chunk = bits.subspan(at, std::min<uint64_t>(cs, bits.size() - at));
        if (all_zero(chunk)) continue;  // Stored as a 0 entry: reads as all zeros.
        auto c = co_await allocate_bitmap_run(cs);
        if (!c) co_return c.error();
        s.table[j] = c->value;
        stage.writes.emplace_back(*c, padded(std::as_bytes(chunk), cs));
    }
    auto t = co_await allocate_bitmap_run(s.table.size() * 8);
    if (!t) co_return t.error();
    s.table_at = *t;
    std::vector<std::byte> table(s.table.size() * 8);
    for (size_t i = 0; i < s.table.size(); ++i) store_be64(table.data() + i * 8, s.table[i]);
    stage.writes.emplace_back(s.table_at, padded(table, cs));
    stage.bitmaps.push_back(std::move(s));
    co_return ok();
}

awaitable<Result<void>> Qcow2Image::store_bitmaps() {
    if (std::none_of(bitmaps_.begin(), bitmaps_.end(),
                     [](const PersistentBitmap& b) { return b.tracked; }))
        co_return ok();
    // R20: new clusters for the tables, the non-zero data clusters and the directory; their
    // refcounts are durable (the flush) before anything written below references them.
    BitmapStage stage;
    for (PersistentBitmap& b : bitmaps_)
        if (b.tracked)
            if (auto r = co_await stage_bitmap(b, stage); !r) co_return r;
    auto dir_at = co_await allocate_bitmap_run(bitmap_dir_.size());
    if (!dir_at) co_return dir_at.error();
    stage.dir_at = *dir_at;
    if (auto r = co_await flush_until_quiet(); !r) co_return r;

    Buffer dir = padded(bitmap_dir_.span(), geo_.cluster_size());
    for (const BitmapStage::Bitmap& s : stage.bitmaps) {
        store_be64(dir.data() + s.b->entry.flags_at - 12, s.table_at.value);
        store_be32(dir.data() + s.b->entry.flags_at, s.b->entry.flags & ~kBitmapInUse);
    }
    std::memcpy(bitmap_dir_.data(), dir.data(), bitmap_dir_.size());
    stage.writes.emplace_back(stage.dir_at, std::move(dir));
    {
        JoinSet join(ex_);
        for (auto& [at, buf] : stage.writes) {
            ++stats_.metadata_writes;
            join.spawn(file_->write(at, buf.span()));
        }
        if (auto r = co_await join.wait(); !r) co_return r;
    }
    if (auto r = co_await sync_all(); !r) co_return r;

    // R21: the header names the new directory once it and everything it references are
    // durable; until then the old directory (bitmaps in use) stays in force.
    if (!patch_bitmaps_extension(header_, header_bytes_.span(), stage.dir_at, bitmap_dir_.size()))
        co_return Error{EIO, "the header lost its bitmaps extension"};
    if (auto r = co_await write_header(); !r) co_return r;
    if (auto r = co_await sync_all(); !r) co_return r;
    free_old_bitmap_clusters(stage);
    co_return co_await flush_until_quiet();
}

void Qcow2Image::free_old_bitmap_clusters(BitmapStage& stage) {
    // Unreferenced since the header write; freed after the next barrier (R6). The file may
    // then end in freed clusters: the close cuts them (R11).
    const uint64_t cs = geo_.cluster_size();
    trim_tail_ = true;
    refcounts_->defer_free(bitmap_dir_offset_, bitmap_dir_.size(), true);
    bitmap_dir_offset_ = stage.dir_at;
    for (BitmapStage::Bitmap& s : stage.bitmaps) {
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
}

}  // namespace qnbd::qcow2
