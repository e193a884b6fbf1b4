// qcow2 header: parsing and validation of the fixed fields and of the tables they point to,
// in-place patching of the fixed fields, and parsing of the snapshot table. The extension area
// and building new headers live in header_extensions.cpp.
#include "qcow2/header.hpp"
#include "base/hex.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "base/buffer.hpp"

namespace qnbd::qcow2 {
namespace {

constexpr size_t kV2HeaderLength = 72;
constexpr size_t kV3MinHeaderLength = 104;
constexpr size_t kV3FixedFieldsEnd = 112;  ///< Fixed fields plus the compression_type byte.
constexpr size_t kCompressionTypeOffset = 104;
constexpr uint32_t kMaxRefcountOrder = 6;
constexpr uint32_t kMinExtendedL2ClusterBits = 14;
constexpr uint64_t kL1EntrySize = 8;
constexpr uint32_t kMaxSnapshots = 65536;
constexpr uint64_t kSnapshotFixedSize = 40;
constexpr uint32_t kMaxSnapshotExtra = 1024;
constexpr uint32_t kSnapshotExtraV3 = 16;  ///< vm_state_size_large + disk_size.
constexpr uint64_t kMaxSnapshotTableBytes = uint64_t{64} << 20;

Error invalid(std::string msg) {
    return Error{EINVAL, std::move(msg)};
}

std::string dec(uint64_t v) {
    return std::to_string(v);
}

uint64_t round_up(uint64_t n, uint64_t align) {
    return (n + align - 1) & ~(align - 1);
}

/// A byte range of the image file occupied by one metadata structure.
struct Region {
    std::string name;
    uint64_t start = 0;
    uint64_t length = 0;
};

/// Checks that `length` bytes at `offset` are cluster-aligned and inside the file.
Result<void> check_region(const std::string& name, uint64_t offset, uint64_t length,
                          const Header& h, uint64_t file_size) {
    if (offset & (h.cluster_size() - 1)) {
        return invalid(name + " offset " + hex(offset) + " is not cluster-aligned");
    }
    if (length > file_size || offset > file_size - length) {
        return invalid(name + " at " + hex(offset) + " (" + dec(length) +
                       " bytes) extends past the end of the file (" + dec(file_size) + " bytes)");
    }
    return ok();
}

/// Fails if any two regions (each rounded up to whole clusters) share a cluster.
Result<void> check_no_overlap(std::vector<Region> regions, const Header& h) {
    std::stable_sort(regions.begin(), regions.end(),
                     [](const Region& a, const Region& b) { return a.start < b.start; });
    for (size_t i = 1; i < regions.size(); ++i) {
        const Region& a = regions[i - 1];
        const Region& b = regions[i];
        if (b.start - a.start < round_up(a.length, h.cluster_size())) {
            return invalid(b.name + " at " + hex(b.start) + " overlaps the " + a.name + " at " +
                           hex(a.start));
        }
    }
    return ok();
}

/// The regions every image has: header cluster, refcount table, active L1 table (if any).
std::vector<Region> fixed_regions(const Header& h) {
    std::vector<Region> r{{"header cluster", 0, h.cluster_size()},
                          {"refcount table", h.refcount_table_offset.value,
                           uint64_t{h.refcount_table_clusters} << h.cluster_bits}};
    if (h.l1_size > 0) {
        r.push_back({"L1 table", h.l1_table_offset.value, uint64_t{h.l1_size} * kL1EntrySize});
    }
    return r;
}

/// Reads the version 2 fields and, for version 3, the feature fields (not yet validated).
Result<Header> read_fixed_fields(std::span<const std::byte> bytes) {
    if (bytes.size() < kV2HeaderLength) {
        return invalid("image is too short for a qcow2 header (" + dec(bytes.size()) + " bytes)");
    }
    const std::byte* p = bytes.data();
    if (const uint32_t magic = load_be32(p); magic != kMagic) {
        return invalid("bad magic " + hex(magic) + " (not a qcow2 image)");
    }
    Header h;
    h.version = load_be32(p + 4);
    if (h.version != 2 && h.version != 3) {
        return invalid("unsupported qcow2 version " + dec(h.version) + " (only 2 and 3)");
    }
    h.backing_file_offset = load_be64(p + 8);
    h.backing_file_size = load_be32(p + 16);
    h.cluster_bits = load_be32(p + 20);
    if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
        return invalid("cluster_bits " + dec(h.cluster_bits) + " is out of range (" +
                       dec(kMinClusterBits) + " to " + dec(kMaxClusterBits) + ")");
    }
    h.size = load_be64(p + 24);
    h.crypt_method = load_be32(p + 32);
    h.l1_size = load_be32(p + 36);
    h.l1_table_offset = HostOffset{load_be64(p + 40)};
    h.refcount_table_offset = HostOffset{load_be64(p + 48)};
    h.refcount_table_clusters = load_be32(p + 56);
    h.nb_snapshots = load_be32(p + 60);
    h.snapshots_offset = HostOffset{load_be64(p + 64)};
    if (h.version == 2) {
        h.refcount_order = 4;
        h.header_length = kV2HeaderLength;
        return h;
    }
    if (bytes.size() < kV3MinHeaderLength) {
        return invalid("version 3 header is truncated (" + dec(bytes.size()) + " of " +
                       dec(kV3MinHeaderLength) + " bytes)");
    }
    h.incompatible_features = load_be64(p + 72);
    h.compatible_features = load_be64(p + 80);
    h.autoclear_features = load_be64(p + 88);
    h.refcount_order = load_be32(p + 96);
    h.header_length = load_be32(p + 100);
    return h;
}

Result<void> check_header_length(const Header& h) {
    if (h.version >= 3) {
        if (h.header_length < kV3MinHeaderLength) {
            return invalid("header_length " + dec(h.header_length) + " is too short (at least " +
                           dec(kV3MinHeaderLength) + ")");
        }
        if (h.header_length % 8 != 0) {
            return invalid("header_length " + dec(h.header_length) + " is not a multiple of 8");
        }
    }
    if (h.header_length > h.cluster_size()) {
        return invalid("header_length " + dec(h.header_length) + " exceeds the cluster size " +
                       dec(h.cluster_size()));
    }
    return ok();
}

/// Reads compression_type (absent means zlib) and checks it against incompatible bit 3.
Result<void> read_compression_type(Header& h, std::span<const std::byte> cluster) {
    uint8_t raw = 0;
    if (h.header_length > kCompressionTypeOffset) {
        raw = static_cast<uint8_t>(cluster[kCompressionTypeOffset]);
    }
    if (raw > static_cast<uint8_t>(CompressionType::Zstd)) {
        return invalid("unknown compression_type " + dec(raw) + " (0 zlib and 1 zstd only)");
    }
    h.compression_type = static_cast<CompressionType>(raw);
    const bool bit = h.incompatible_features & kIncompatCompression;
    if (h.compression_type == CompressionType::Zlib && bit) {
        return invalid("compression type bit is set but compression_type is 0 (zlib)");
    }
    if (h.compression_type != CompressionType::Zlib && !bit) {
        return invalid("compression_type is " + dec(raw) +
                       " (zstd) but the compression type bit is not set");
    }
    return ok();
}

/// Validates the backing file name's place and length and reads it.
Result<void> read_backing_name(Header& h, std::span<const std::byte> cluster) {
    if (h.backing_file_offset == 0) return ok();  // backing_file_size is undefined then
    const uint64_t off = h.backing_file_offset;
    if (off < h.header_length) {
        return invalid("backing file name offset " + hex(off) + " overlaps the header (" +
                       dec(h.header_length) + " bytes)");
    }
    if (off > h.cluster_size()) {
        return invalid("backing file name offset " + hex(off) + " is outside the first cluster");
    }
    if (h.backing_file_size > kMaxBackingNameLen) {
        return invalid("backing file name is " + dec(h.backing_file_size) +
                       " bytes long (at most " + dec(kMaxBackingNameLen) + ")");
    }
    if (off + h.backing_file_size > h.cluster_size()) {
        return invalid("backing file name at " + hex(off) + " (" + dec(h.backing_file_size) +
                       " bytes) runs past the first cluster");
    }
    const char* name = reinterpret_cast<const char*>(cluster.data() + off);
    h.backing_file.assign(name, h.backing_file_size);
    if (h.backing_file.find('\0') != std::string::npos) {
        return invalid("backing file name contains a NUL byte");
    }
    return ok();
}

Result<void> check_unknown_features(const Header& h) {
    const uint64_t unknown = h.incompatible_features & ~uint64_t{kIncompatKnown};
    if (!unknown) return ok();
    std::string names;
    for (uint8_t bit = 0; bit < 64; ++bit) {
        if (!(unknown >> bit & 1)) continue;
        if (!names.empty()) names += ", ";
        names += feature_name(h, 0, bit);
    }
    return invalid("Unsupported qcow2 feature(s): " + names);
}

Result<void> check_features(const Header& h) {
    if (h.extended_l2() && h.cluster_bits < kMinExtendedL2ClusterBits) {
        return invalid(
            "extended L2 entries need cluster_bits >= " + dec(kMinExtendedL2ClusterBits) +
            " (cluster_bits is " + dec(h.cluster_bits) + ")");
    }
    if (h.crypt_method != 0) {
        return invalid("encrypted images are not supported (crypt_method " + dec(h.crypt_method) +
                       ")");
    }
    if (h.refcount_order > kMaxRefcountOrder) {
        return invalid("refcount_order " + dec(h.refcount_order) + " is too large (at most " +
                       dec(kMaxRefcountOrder) + ", 64-bit refcounts)");
    }
    if (h.data_file_raw() && !h.has_data_file()) {
        return invalid("raw external data bit is set but the external data file bit is not");
    }
    return ok();
}

Result<void> check_size_and_l1(const Header& h, uint64_t file_size) {
    if (h.size > uint64_t{INT64_MAX})
        return invalid("virtual size " + dec(h.size) + " is too large");
    const uint64_t l1_bytes = uint64_t{h.l1_size} * kL1EntrySize;
    if (l1_bytes > kMaxL1Bytes) {
        return invalid("L1 table of " + dec(h.l1_size) + " entries is too large (more than " +
                       dec(kMaxL1Bytes) + " bytes)");
    }
    const uint64_t need = min_l1_entries(h.size, h.geometry());
    if (h.l1_size < need) {
        return invalid("L1 table of " + dec(h.l1_size) + " entries is too small for virtual size " +
                       dec(h.size) + " (needs " + dec(need) + ")");
    }
    if (h.l1_size == 0) {
        if (h.l1_table_offset.value & (h.cluster_size() - 1)) {
            return invalid("L1 table offset " + hex(h.l1_table_offset.value) +
                           " is not cluster-aligned");
        }
        return ok();
    }
    return check_region("L1 table", h.l1_table_offset.value, l1_bytes, h, file_size);
}

Result<void> check_tables(const Header& h, uint64_t file_size) {
    if (h.refcount_table_clusters == 0) {
        return invalid("refcount_table_clusters is 0 (the image has no refcount table)");
    }
    const uint64_t rt_bytes = uint64_t{h.refcount_table_clusters} << h.cluster_bits;
    if (rt_bytes > kMaxRefTableBytes) {
        return invalid("refcount table of " + dec(h.refcount_table_clusters) +
                       " clusters is too large (more than " + dec(kMaxRefTableBytes) + " bytes)");
    }
    auto r = check_region("refcount table", h.refcount_table_offset.value, rt_bytes, h, file_size);
    if (!r) return r;
    if (h.nb_snapshots > kMaxSnapshots) {
        return invalid("nb_snapshots " + dec(h.nb_snapshots) + " is too large (at most " +
                       dec(kMaxSnapshots) + ")");
    }
    std::vector<Region> regions = fixed_regions(h);
    if (h.nb_snapshots == 0) {
        if (h.snapshots_offset.value & (h.cluster_size() - 1)) {
            return invalid("snapshot table offset " + hex(h.snapshots_offset.value) +
                           " is not cluster-aligned");
        }
    } else {
        // Entries have variable length: only the fixed parts are known here.
        const uint64_t min_bytes = uint64_t{h.nb_snapshots} * kSnapshotFixedSize;
        r = check_region("snapshot table", h.snapshots_offset.value, min_bytes, h, file_size);
        if (!r) return r;
        regions.push_back({"snapshot table", h.snapshots_offset.value, min_bytes});
    }
    return check_no_overlap(std::move(regions), h);
}

Result<void> check_consistency(const Header& h) {
    if (h.has_data_file() && h.data_file.empty()) {
        return invalid("image has an external data file but no data file name");
    }
    if (!h.has_data_file() && !h.data_file.empty()) {
        return invalid("image has a data file name ('" + h.data_file +
                       "') but the external data file bit is not set");
    }
    if (h.data_file_raw() && !h.backing_file.empty()) {
        return invalid("image has both a backing file ('" + h.backing_file +
                       "') and a raw external data file");
    }
    if (h.has_data_file() && h.nb_snapshots > 0) {
        return invalid("image has an external data file and " + dec(h.nb_snapshots) +
                       " internal snapshots (not allowed together)");
    }
    if ((h.autoclear_features & kAutoclearBitmaps) && !h.has_bitmaps_extension()) {
        return invalid("bitmaps autoclear bit is set but the image has no bitmaps extension");
    }
    return ok();
}

/// Runs the checks that need the whole header, in the order that names the root cause.
Result<void> validate(const Header& h, uint64_t file_size) {
    if (auto r = check_features(h); !r) return r;
    if (auto r = check_size_and_l1(h, file_size); !r) return r;
    if (auto r = check_tables(h, file_size); !r) return r;
    return check_consistency(h);
}

}  // namespace

bool Header::has_bitmaps_extension() const {
    return std::any_of(extensions.begin(), extensions.end(),
                       [](const HeaderExtension& e) { return e.type == kExtBitmaps; });
}

uint64_t min_l1_entries(uint64_t size, const Geometry& g) {
    const uint32_t l2_bits = g.cluster_bits - (g.extended_l2 ? 4 : 3);
    const uint32_t shift = g.cluster_bits + l2_bits;  // bytes mapped by one L1 entry
    return (size >> shift) + ((size & ((uint64_t{1} << shift) - 1)) != 0);
}

std::string feature_name(const Header& h, uint8_t type, uint8_t bit) {
    for (const FeatureName& f : h.feature_names) {
        if (f.type == type && f.bit == bit && !f.name.empty()) return f.name;
    }
    return "bit " + dec(bit);
}

Result<Header> parse_header(std::span<const std::byte> bytes, uint64_t file_size) {
    auto fixed = read_fixed_fields(bytes);
    if (!fixed) return fixed;
    Header h = std::move(fixed).value();
    const uint64_t cs = h.cluster_size();
    if (file_size < cs) {
        return invalid("image file of " + dec(file_size) +
                       " bytes is smaller than its first cluster (" + dec(cs) + " bytes)");
    }
    if (bytes.size() < cs) {
        return invalid("only " + dec(bytes.size()) + " bytes of the first cluster were given (" +
                       dec(cs) + " needed)");
    }
    const auto cluster = bytes.first(cs);
    if (auto r = check_header_length(h); !r) return r.error();
    if (auto r = read_compression_type(h, cluster); !r) return r.error();
    // The extension area ends where the backing file name starts.
    const uint64_t ext_end = h.backing_file_offset ? h.backing_file_offset : cs;
    auto ext = parse_header_extensions(cluster, h.header_length, ext_end, file_size, h);
    // Unknown features win: an image from the future may lay out its extensions differently.
    if (auto r = check_unknown_features(h); !r) return r.error();
    if (!ext) return ext.error();
    if (auto r = read_backing_name(h, cluster); !r) return r.error();
    if (auto r = validate(h, file_size); !r) return r.error();
    return h;
}

void patch_header(const Header& h, std::span<std::byte> bytes) {
    const size_t fixed_end =
        h.version >= 3 ? std::min<size_t>(h.header_length, kV3FixedFieldsEnd) : kV2HeaderLength;
    const size_t limit = std::min(bytes.size(), fixed_end);
    std::byte* p = bytes.data();
    auto put32 = [&](size_t off, uint32_t v) {
        if (off + 4 <= limit) store_be32(p + off, v);
    };
    auto put64 = [&](size_t off, uint64_t v) {
        if (off + 8 <= limit) store_be64(p + off, v);
    };
    put32(0, kMagic);
    put32(4, h.version);
    put64(8, h.backing_file_offset);
    put32(16, h.backing_file_size);
    put32(20, h.cluster_bits);
    put64(24, h.size);
    put32(32, h.crypt_method);
    put32(36, h.l1_size);
    put64(40, h.l1_table_offset.value);
    put64(48, h.refcount_table_offset.value);
    put32(56, h.refcount_table_clusters);
    put32(60, h.nb_snapshots);
    put64(64, h.snapshots_offset.value);
    if (h.version < 3) return;
    put64(72, h.incompatible_features);
    put64(80, h.compatible_features);
    put64(88, h.autoclear_features);
    put32(96, h.refcount_order);
    put32(100, h.header_length);
    if (kCompressionTypeOffset < limit) {
        p[kCompressionTypeOffset] = static_cast<std::byte>(h.compression_type);
    }
}

namespace {

/// Validates one snapshot's L1 table reference.
Result<void> check_snapshot_l1(const Snapshot& sn, uint32_t i, const Header& h,
                               uint64_t file_size) {
    const std::string what = "snapshot " + dec(i) + " L1 table";
    const uint64_t l1_bytes = uint64_t{sn.l1_size} * kL1EntrySize;
    if (l1_bytes > kMaxL1Bytes) {
        return invalid(what + " of " + dec(sn.l1_size) + " entries is too large (more than " +
                       dec(kMaxL1Bytes) + " bytes)");
    }
    if (sn.l1_size == 0) {
        if (sn.l1_table_offset.value & (h.cluster_size() - 1)) {
            return invalid(what + " offset " + hex(sn.l1_table_offset.value) +
                           " is not cluster-aligned");
        }
        return ok();
    }
    return check_region(what, sn.l1_table_offset.value, l1_bytes, h, file_size);
}

/// Parses the entry at `pos` (rounded up to 8) of the snapshot table and advances `pos`.
Result<Snapshot> parse_snapshot_entry(std::span<const std::byte> table, uint64_t& pos, uint32_t i,
                                      const Header& h, uint64_t file_size) {
    pos = round_up(pos, 8);
    if (pos > table.size() || table.size() - pos < kSnapshotFixedSize) {
        return invalid("snapshot " + dec(i) + " at table offset " + dec(pos) +
                       " is past the end of the snapshot table");
    }
    const std::byte* p = table.data() + pos;
    Snapshot sn;
    sn.l1_table_offset = HostOffset{load_be64(p)};
    sn.l1_size = load_be32(p + 8);
    const uint16_t id_len = load_be16(p + 12);
    const uint16_t name_len = load_be16(p + 14);
    const uint32_t extra = load_be32(p + 36);
    if (extra > kMaxSnapshotExtra) {
        return invalid("snapshot " + dec(i) + " has " + dec(extra) +
                       " bytes of extra data (at most " + dec(kMaxSnapshotExtra) + ")");
    }
    if (h.version >= 3 && extra < kSnapshotExtraV3) {
        return invalid("snapshot " + dec(i) + " has " + dec(extra) +
                       " bytes of extra data (version 3 needs at least " + dec(kSnapshotExtraV3) +
                       ")");
    }
    const uint64_t len = kSnapshotFixedSize + extra + id_len + name_len;
    if (table.size() - pos < len) {
        return invalid("snapshot " + dec(i) + " (" + dec(len) + " bytes at table offset " +
                       dec(pos) + ") runs past the end of the snapshot table");
    }
    if (extra >= kSnapshotExtraV3) {
        const uint64_t disk_size = load_be64(p + kSnapshotFixedSize + 8);
        if (sn.l1_size < min_l1_entries(disk_size, h.geometry())) {
            return invalid("snapshot " + dec(i) + " L1 table of " + dec(sn.l1_size) +
                           " entries is too small for its disk size " + dec(disk_size));
        }
    }
    const char* strings = reinterpret_cast<const char*>(p + kSnapshotFixedSize + extra);
    sn.id.assign(strings, id_len);
    sn.name.assign(strings + id_len, name_len);
    pos += len;
    if (auto r = check_snapshot_l1(sn, i, h, file_size); !r) return r.error();
    return sn;
}

}  // namespace

Result<std::vector<Snapshot>> parse_snapshots(std::span<const std::byte> bytes, uint32_t nb,
                                              const Header& h, uint64_t file_size) {
    if (nb > kMaxSnapshots) {
        return invalid("nb_snapshots " + dec(nb) + " is too large (at most " + dec(kMaxSnapshots) +
                       ")");
    }
    std::vector<Snapshot> out;
    std::vector<Region> regions = fixed_regions(h);
    uint64_t pos = 0;
    for (uint32_t i = 0; i < nb; ++i) {
        auto sn = parse_snapshot_entry(bytes, pos, i, h, file_size);
        if (!sn) return sn.error();
        if (sn->l1_size > 0) {
            regions.push_back({"snapshot " + dec(i) + " L1 table", sn->l1_table_offset.value,
                               uint64_t{sn->l1_size} * kL1EntrySize});
        }
        out.push_back(std::move(sn).value());
    }
    if (nb == 0) return out;
    if (pos > kMaxSnapshotTableBytes) {
        return invalid("snapshot table of " + dec(pos) + " bytes is too large (more than " +
                       dec(kMaxSnapshotTableBytes) + " bytes)");
    }
    if (auto r = check_region("snapshot table", h.snapshots_offset.value, pos, h, file_size); !r) {
        return r.error();
    }
    regions.push_back({"snapshot table", h.snapshots_offset.value, pos});
    if (auto r = check_no_overlap(std::move(regions), h); !r) return r.error();
    return out;
}

}  // namespace qnbd::qcow2
