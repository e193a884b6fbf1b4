// Parsing and validation of the bitmaps extension's directory and tables.
#include "qcow2/bitmaps.hpp"

#include <algorithm>
#include <set>

#include "base/buffer.hpp"
#include "base/hex.hpp"

namespace qnbd::qcow2 {
namespace {

constexpr uint64_t kEntryFixedSize = 24;
constexpr uint64_t kTableReservedMask = 0xff000000000001feull;
constexpr uint64_t kMaxBitmapDataBytes = uint64_t{512} << 20;  ///< Per bitmap, as qemu.

Error invalid(std::string msg) {
    return Error{EINVAL, std::move(msg)};
}

std::string dec(uint64_t v) {
    return std::to_string(v);
}

/// Checks an entry's fields other than its name and layout.
Result<void> check_entry(const BitmapEntry& e, const Header& h, uint64_t file_size) {
    const std::string what = "bitmap '" + e.name + "'";
    if (e.flags & ~kBitmapKnownFlags)
        return invalid(what + " has unknown flags " + hex(e.flags & ~kBitmapKnownFlags));
    if (e.type != kBitmapTypeDirty)
        return invalid(what + " has type " + dec(e.type) + " (only 1, dirty tracking, exists)");
    if (e.granularity_bits < kMinBitmapGranularityBits ||
        e.granularity_bits > kMaxBitmapGranularityBits)
        return invalid(what + " has granularity bits " + dec(e.granularity_bits) + " (9 to 31)");
    const uint64_t data_bytes = (h.size / e.granularity() + 8) / 8;
    if (data_bytes > kMaxBitmapDataBytes)
        return invalid(what + " needs more than 512 MiB of memory");
    const uint64_t want = bitmap_table_entries(h.size, e.granularity_bits, h.cluster_size());
    if (e.table_size != want)
        return invalid(what + " has a table of " + dec(e.table_size) + " entries (the disk needs " +
                       dec(want) + ")");
    const uint64_t off = e.table_offset.value;
    if (off == 0 || (off & (h.cluster_size() - 1)))
        return invalid(what + " table offset " + hex(off) + " is not cluster-aligned");
    if (off > file_size || uint64_t{e.table_size} * 8 > file_size - off)
        return invalid(what + " table at " + hex(off) + " extends past the end of the file");
    return ok();
}

/// Decodes the entry at `pos` (the fixed part fits); sets `next` to the following entry.
Result<BitmapEntry> decode_entry(std::span<const std::byte> dir, uint64_t pos, uint64_t& next) {
    const std::byte* p = dir.data() + pos;
    BitmapEntry e;
    e.table_offset = HostOffset{load_be64(p)};
    e.table_size = load_be32(p + 8);
    e.flags = load_be32(p + 12);
    e.type = static_cast<uint8_t>(p[16]);
    e.granularity_bits = static_cast<uint8_t>(p[17]);
    const uint16_t name_size = load_be16(p + 18);
    e.extra_data_size = load_be32(p + 20);
    e.flags_at = pos + 12;
    if (name_size == 0 || name_size > kMaxBitmapNameSize)
        return invalid("bitmap directory entry at byte " + dec(pos) + " has a name of " +
                       dec(name_size) + " bytes (1 to 1023)");
    const uint64_t body = kEntryFixedSize + uint64_t{e.extra_data_size} + name_size;
    const uint64_t size = (body + 7) & ~uint64_t{7};
    if (size > dir.size() - pos)
        return invalid("bitmap directory entry at byte " + dec(pos) +
                       " runs past the end of the directory");
    const char* name = reinterpret_cast<const char*>(p + kEntryFixedSize + e.extra_data_size);
    e.name.assign(name, name_size);
    for (uint64_t i = body; i < size; ++i)
        if (p[i] != std::byte{0})
            return invalid("bitmap '" + e.name + "' directory entry has non-zero padding");
    next = pos + size;
    return e;
}

}  // namespace

std::optional<BitmapsExtension> bitmaps_extension(const Header& h) {
    if (!(h.autoclear_features & kAutoclearBitmaps)) return std::nullopt;
    for (const HeaderExtension& x : h.extensions) {
        if (x.type != kExtBitmaps || x.data.size() != 24) continue;
        return BitmapsExtension{load_be32(x.data.data()), load_be64(x.data.data() + 8),
                                HostOffset{load_be64(x.data.data() + 16)}};
    }
    return std::nullopt;
}

uint64_t bitmap_table_entries(uint64_t disk_size, uint32_t granularity_bits,
                              uint64_t cluster_size) {
    const uint64_t bits = (disk_size + (uint64_t{1} << granularity_bits) - 1) >> granularity_bits;
    const uint64_t bytes = (bits + 7) / 8;
    return (bytes + cluster_size - 1) / cluster_size;
}

Result<std::vector<BitmapEntry>> parse_bitmap_directory(std::span<const std::byte> dir,
                                                        const BitmapsExtension& ext,
                                                        const Header& h, uint64_t file_size) {
    std::vector<BitmapEntry> out;
    std::set<std::string> names;
    uint64_t pos = 0;
    while (out.size() < ext.nb_bitmaps) {
        if (dir.size() - pos < kEntryFixedSize)
            return invalid("bitmap directory holds fewer than the " + dec(ext.nb_bitmaps) +
                           " bitmaps the header announces");
        uint64_t next = 0;
        auto e = decode_entry(dir, pos, next);
        if (!e) return e.error();
        if (auto r = check_entry(*e, h, file_size); !r) return r.error();
        if (!names.insert(e->name).second)
            return invalid("bitmap name '" + e->name + "' is used twice");
        out.push_back(std::move(*e));
        pos = next;
    }
    if (pos != dir.size())
        return invalid("bitmap directory has " + dec(dir.size() - pos) +
                       " bytes after its last entry");
    return out;
}

Result<BitmapTableEntry> decode_bitmap_table_entry(uint64_t e, uint64_t i, const std::string& name,
                                                   const Header& h, uint64_t file_size) {
    const std::string what = "bitmap '" + name + "' table entry " + dec(i);
    if (e & kTableReservedMask) return invalid(what + " has reserved bits set");
    const uint64_t off = e & kBitmapTableOffsetMask;
    if (off == 0) return BitmapTableEntry{HostOffset{0}, (e & 1) != 0};
    if (e & 1) return invalid(what + " has both a cluster and the all-ones bit");
    if (off & (h.cluster_size() - 1))
        return invalid(what + " offset " + hex(off) + " is not cluster-aligned");
    if (off > file_size || h.cluster_size() > file_size - off)
        return invalid(what + " at " + hex(off) + " is past the end of the file");
    return BitmapTableEntry{HostOffset{off}, false};
}

}  // namespace qnbd::qcow2
