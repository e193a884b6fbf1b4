// The qcow2 bitmaps extension: the bitmap directory and bitmap tables, parsed and validated
// from bytes (pure functions, fuzzable). The engine loads and stores the bitmaps themselves
// (image_bitmaps.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/result.hpp"
#include "base/types.hpp"
#include "qcow2/header.hpp"

namespace qnbd::qcow2 {

/// Bitmap directory entry flags.
enum : uint32_t {
    kBitmapInUse = 1u << 0,                ///< Not saved consistently: contents untrusted.
    kBitmapAuto = 1u << 1,                 ///< Enabled: must track every write.
    kBitmapExtraDataCompatible = 1u << 2,  ///< Unknown extra data may be ignored.
    kBitmapKnownFlags = 0x7,
};
inline constexpr uint8_t kBitmapTypeDirty = 1;
/// Bits of a bitmap table entry that hold the data cluster's offset.
inline constexpr uint64_t kBitmapTableOffsetMask = 0x00fffffffffffe00ull;
inline constexpr uint32_t kMinBitmapGranularityBits = 9;   ///< As qemu.
inline constexpr uint32_t kMaxBitmapGranularityBits = 31;  ///< As qemu.
inline constexpr uint32_t kMaxBitmapNameSize = 1023;

/// Where the bitmap directory is (the bitmaps header extension).
struct BitmapsExtension {
    uint32_t nb_bitmaps = 0;
    uint64_t directory_size = 0;
    HostOffset directory_offset;
};

/// One bitmap directory entry.
struct BitmapEntry {
    HostOffset table_offset;
    uint32_t table_size = 0;  ///< Entries in the bitmap table.
    uint32_t flags = 0;
    uint8_t type = 0;
    uint8_t granularity_bits = 0;
    std::string name;
    uint32_t extra_data_size = 0;
    uint64_t flags_at = 0;  ///< Byte offset of the flags field in the directory.

    uint64_t granularity() const { return uint64_t{1} << granularity_bits; }
    bool in_use() const { return flags & kBitmapInUse; }
    bool is_auto() const { return flags & kBitmapAuto; }
    /// False when the entry has extra data qnbd does not know and may not ignore: such a
    /// bitmap must be left exactly as it is and never used.
    bool usable() const { return extra_data_size == 0 || (flags & kBitmapExtraDataCompatible); }
};

/// The bitmaps extension of a header whose bitmaps autoclear bit is set; nullopt when there is
/// none or the bit is clear (the bitmaps are then stale and ignored). parse_header validated it.
std::optional<BitmapsExtension> bitmaps_extension(const Header& h);

/// Entries in the bitmap table of a bitmap with these parameters.
uint64_t bitmap_table_entries(uint64_t disk_size, uint32_t granularity_bits, uint64_t cluster_size);

/// Parses and validates the whole directory (`dir` holds directory_size bytes): entry
/// layout, flags, type, granularity, names (unique), padding, table placement and size.
Result<std::vector<BitmapEntry>> parse_bitmap_directory(std::span<const std::byte> dir,
                                                        const BitmapsExtension& ext,
                                                        const Header& h, uint64_t file_size);

/// A decoded bitmap table entry: a data cluster, or a cluster that reads as all zeros or ones.
struct BitmapTableEntry {
    HostOffset cluster;  ///< 0 when unallocated.
    bool all_ones = false;
};

/// Decodes and validates entry `i` of bitmap `name`'s table.
Result<BitmapTableEntry> decode_bitmap_table_entry(uint64_t e, uint64_t i, const std::string& name,
                                                   const Header& h, uint64_t file_size);

}  // namespace qnbd::qcow2
