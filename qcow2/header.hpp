// qcow2 header: parsing with full validation, in-place patching of the mutable fields, and
// building a fresh header for new images. Pure functions over byte buffers (fuzzable).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/result.hpp"
#include "base/types.hpp"

namespace qnbd::qcow2 {

inline constexpr uint32_t kMagic = 0x514649fb;  ///< "QFI\xfb"
inline constexpr uint32_t kMinClusterBits = 9;
inline constexpr uint32_t kMaxClusterBits = 21;
inline constexpr uint64_t kMaxL1Bytes = 32u << 20;       ///< qemu's QCOW_MAX_L1_SIZE.
inline constexpr uint64_t kMaxRefTableBytes = 8u << 20;  ///< qemu's QCOW_MAX_REFTABLE_SIZE.
inline constexpr uint32_t kMaxBackingNameLen = 1023;

/// Incompatible feature bits.
enum : uint64_t {
    kIncompatDirty = 1u << 0,
    kIncompatCorrupt = 1u << 1,
    kIncompatDataFile = 1u << 2,
    kIncompatCompression = 1u << 3,
    kIncompatExtendedL2 = 1u << 4,
    kIncompatKnown = 0x1f,
};
/// Compatible feature bits.
enum : uint64_t { kCompatLazyRefcounts = 1u << 0 };
/// Autoclear feature bits.
enum : uint64_t {
    kAutoclearBitmaps = 1u << 0,
    kAutoclearRawData = 1u << 1,
    kAutoclearKnown = 0x3,
};

/// Header extension types.
enum : uint32_t {
    kExtEnd = 0,
    kExtBackingFormat = 0xe2792aca,
    kExtFeatureNames = 0x6803f857,
    kExtBitmaps = 0x23852875,
    kExtEncryption = 0x0537be77,
    kExtDataFile = 0x44415441,
};

enum class CompressionType : uint8_t { Zlib = 0, Zstd = 1 };

/// One entry of the feature name table extension.
struct FeatureName {
    uint8_t type = 0;  ///< 0 incompatible, 1 compatible, 2 autoclear.
    uint8_t bit = 0;
    std::string name;
};

/// A header extension kept verbatim (every one, known or not, in file order).
struct HeaderExtension {
    uint32_t type = 0;
    std::vector<std::byte> data;
};

/// The parsed, validated header of a qcow2 image.
struct Header {
    uint32_t version = 3;
    uint64_t backing_file_offset = 0;
    uint32_t backing_file_size = 0;
    uint32_t cluster_bits = 16;
    uint64_t size = 0;  ///< Virtual disk size in bytes.
    uint32_t crypt_method = 0;
    uint32_t l1_size = 0;  ///< Entries in the active L1 table.
    HostOffset l1_table_offset;
    HostOffset refcount_table_offset;
    uint32_t refcount_table_clusters = 0;
    uint32_t nb_snapshots = 0;
    HostOffset snapshots_offset;
    uint64_t incompatible_features = 0;
    uint64_t compatible_features = 0;
    uint64_t autoclear_features = 0;
    uint32_t refcount_order = 4;
    uint32_t header_length = 104;  ///< 72 for version 2.
    CompressionType compression_type = CompressionType::Zlib;

    std::string backing_file;    ///< Backing file name as stored; empty if none.
    std::string backing_format;  ///< From the backing format extension; empty if absent.
    std::string data_file;       ///< From the external data file extension; empty if absent.
    std::vector<FeatureName> feature_names;
    std::vector<HeaderExtension> extensions;  ///< All extensions, verbatim, in file order.

    Geometry geometry() const { return Geometry{cluster_bits, extended_l2()}; }
    uint64_t cluster_size() const { return uint64_t{1} << cluster_bits; }
    uint32_t refcount_bits() const { return 1u << refcount_order; }
    bool extended_l2() const { return incompatible_features & kIncompatExtendedL2; }
    bool has_data_file() const { return incompatible_features & kIncompatDataFile; }
    bool data_file_raw() const { return autoclear_features & kAutoclearRawData; }
    bool dirty() const { return incompatible_features & kIncompatDirty; }
    bool corrupt() const { return incompatible_features & kIncompatCorrupt; }
    bool lazy_refcounts() const { return compatible_features & kCompatLazyRefcounts; }
    bool has_bitmaps_extension() const;
};

/// One internal snapshot's table entry (only what the engine needs).
struct Snapshot {
    HostOffset l1_table_offset;
    uint32_t l1_size = 0;
    std::string id;
    std::string name;
};

/// Parses and validates the header from the first bytes of the image (at least the first
/// cluster, or the whole file if smaller). `file_size` is the image file's size. On failure the
/// error is EINVAL with one line naming the problem (e.g. "L1 table offset 0x1234 is not
/// cluster-aligned", "Unsupported qcow2 feature(s): <name from the feature table>").
Result<Header> parse_header(std::span<const std::byte> bytes, uint64_t file_size);

/// Writes the header's fixed fields (everything up to min(header_length, 112) bytes) into
/// `bytes`, the original first header_length bytes of the image, leaving extensions untouched.
void patch_header(const Header& h, std::span<std::byte> bytes);

/// Builds the complete first cluster (fixed fields, extensions in `h.extensions` order plus
/// backing format, data file and feature names derived from `h`, end marker, backing name)
/// for a new image. Fails if it does not fit in one cluster.
Result<std::vector<std::byte>> build_header(const Header& h);

/// Points the bitmaps extension at a new directory of `dir_size` bytes at `dir`, in `h` and in
/// `bytes` (the first cluster of the image as parse_header read it); false if it has none.
bool patch_bitmaps_extension(Header& h, std::span<std::byte> bytes, HostOffset dir,
                             uint64_t dir_size);

/// Parses and validates `nb` snapshot table entries from `bytes` (the snapshot table).
Result<std::vector<Snapshot>> parse_snapshots(std::span<const std::byte> bytes, uint32_t nb,
                                              const Header& h, uint64_t file_size);

/// Name of an unsupported feature bit from the image's feature table, or "bit N" if absent.
std::string feature_name(const Header& h, uint8_t type, uint8_t bit);

/// Fewest L1 entries that map a virtual disk of `size` bytes with geometry `g`.
uint64_t min_l1_entries(uint64_t size, const Geometry& g);

/// Parses and validates the header extension area `bytes[start, end)` of the first cluster
/// into h.extensions, backing_format, data_file and feature_names (h's fixed fields must
/// already be set; `file_size` bounds the bitmap directory). Used by parse_header.
Result<void> parse_header_extensions(std::span<const std::byte> bytes, uint64_t start, uint64_t end,
                                     uint64_t file_size, Header& h);

}  // namespace qnbd::qcow2
