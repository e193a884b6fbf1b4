// qcow2 header extensions: parsing and validating the extension area of the first cluster,
// and building the first cluster of a new image (fixed fields, extensions, backing name).
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <set>

#include "base/buffer.hpp"
#include "base/hex.hpp"
#include "qcow2/header.hpp"

namespace qnbd::qcow2 {
namespace {

constexpr uint64_t kExtHeaderSize = 8;    ///< type + length
constexpr size_t kFeatureEntrySize = 48;  ///< type, bit, 46-byte name
constexpr size_t kFeatureNameLen = 46;
constexpr uint8_t kMaxFeatureType = 2;  ///< 0 incompatible, 1 compatible, 2 autoclear
constexpr size_t kMaxBackingFormatLen = 15;
constexpr uint32_t kBitmapsExtSize = 24;
constexpr uint32_t kEncryptionExtSize = 16;
constexpr uint32_t kMaxBitmaps = 65535;
constexpr uint64_t kMaxBitmapDirectoryBytes = uint64_t{1024} * kMaxBitmaps;
constexpr uint32_t kV2HeaderLength = 72;
constexpr uint32_t kV3HeaderLength = 112;  ///< Fixed fields, compression_type and padding.
constexpr uint64_t kSmallestClusterWithFeatureTable = 8192;

Error invalid(std::string msg) {
    return Error{EINVAL, std::move(msg)};
}

std::string dec(uint64_t v) {
    return std::to_string(v);
}

uint64_t round8(uint64_t n) {
    return (n + 7) & ~uint64_t{7};
}

/// Human name of an extension type for messages.
std::string ext_name(uint32_t type) {
    switch (type) {
        case kExtBackingFormat:
            return "backing format extension";
        case kExtFeatureNames:
            return "feature name table";
        case kExtBitmaps:
            return "bitmaps extension";
        case kExtEncryption:
            return "encryption header extension";
        case kExtDataFile:
            return "data file name extension";
        default:
            return "header extension " + hex(type);
    }
}

bool is_known(uint32_t type) {
    return type == kExtBackingFormat || type == kExtFeatureNames || type == kExtBitmaps ||
           type == kExtEncryption || type == kExtDataFile;
}

std::string as_string(std::span<const std::byte> data) {
    return std::string(reinterpret_cast<const char*>(data.data()), data.size());
}

Result<void> parse_feature_table(std::span<const std::byte> data, Header& h) {
    if (data.size() % kFeatureEntrySize != 0) {
        return invalid("feature name table length " + dec(data.size()) + " is not a multiple of " +
                       dec(kFeatureEntrySize));
    }
    for (size_t off = 0; off < data.size(); off += kFeatureEntrySize) {
        FeatureName f;
        f.type = static_cast<uint8_t>(data[off]);
        f.bit = static_cast<uint8_t>(data[off + 1]);
        if (f.type > kMaxFeatureType || f.bit > 63) {
            return invalid("feature name table entry " + dec(off / kFeatureEntrySize) +
                           " has invalid type " + dec(f.type) + " or bit " + dec(f.bit));
        }
        const char* name = reinterpret_cast<const char*>(data.data() + off + 2);
        f.name.assign(name, strnlen(name, kFeatureNameLen));
        h.feature_names.push_back(std::move(f));
    }
    return ok();
}

/// Validates the bitmaps extension; its contents only count when the autoclear bit is set.
Result<void> check_bitmaps(std::span<const std::byte> data, const Header& h, uint64_t file_size) {
    if (data.size() != kBitmapsExtSize) {
        return invalid("bitmaps extension has length " + dec(data.size()) + " (expected " +
                       dec(kBitmapsExtSize) + ")");
    }
    if (!(h.autoclear_features & kAutoclearBitmaps)) return ok();  // stale: ignored
    const uint32_t nb = load_be32(data.data());
    const uint64_t dir_size = load_be64(data.data() + 8);
    const uint64_t dir_off = load_be64(data.data() + 16);
    if (load_be32(data.data() + 4) != 0) {
        return invalid("bitmaps extension reserved field is not zero");
    }
    if (nb == 0 || nb > kMaxBitmaps) {
        return invalid("bitmaps extension has " + dec(nb) + " bitmaps (1 to " + dec(kMaxBitmaps) +
                       ")");
    }
    if (dir_size > kMaxBitmapDirectoryBytes) {
        return invalid("bitmap directory size " + dec(dir_size) + " is too large (more than " +
                       dec(kMaxBitmapDirectoryBytes) + ")");
    }
    if (dir_off == 0 || (dir_off & (h.cluster_size() - 1))) {
        return invalid("bitmap directory offset " + hex(dir_off) + " is not cluster-aligned");
    }
    if (dir_off > file_size || dir_size > file_size - dir_off) {
        return invalid("bitmap directory at " + hex(dir_off) + " (" + dec(dir_size) +
                       " bytes) extends past the end of the file");
    }
    return ok();
}

/// Names must not hide a NUL: they become paths or format names.
Result<void> check_name(const std::string& s, const char* what) {
    if (s.find('\0') != std::string::npos)
        return invalid(std::string(what) + " contains a NUL byte");
    return ok();
}

/// Interprets one known extension into `h`; unknown ones are only kept verbatim.
Result<void> handle_extension(uint32_t type, std::span<const std::byte> data, Header& h,
                              uint64_t file_size) {
    switch (type) {
        case kExtBackingFormat:
            if (data.size() > kMaxBackingFormatLen) {
                return invalid("backing format name is " + dec(data.size()) +
                               " bytes long (at most " + dec(kMaxBackingFormatLen) + ")");
            }
            h.backing_format = as_string(data);
            return check_name(h.backing_format, "backing format name");
        case kExtDataFile:
            if (data.empty()) return invalid("data file name extension is empty");
            h.data_file = as_string(data);
            return check_name(h.data_file, "data file name");
        case kExtFeatureNames:
            return parse_feature_table(data, h);
        case kExtBitmaps:
            return check_bitmaps(data, h, file_size);
        case kExtEncryption:
            if (h.crypt_method == 0) {
                return invalid("encryption header extension present but crypt_method is 0");
            }
            if (data.size() != kEncryptionExtSize) {
                return invalid("encryption header extension has length " + dec(data.size()) +
                               " (expected " + dec(kEncryptionExtSize) + ")");
            }
            return ok();
        default:
            return ok();
    }
}

}  // namespace

Result<void> parse_header_extensions(std::span<const std::byte> bytes, uint64_t start, uint64_t end,
                                     uint64_t file_size, Header& h) {
    h.extensions.clear();
    h.feature_names.clear();
    h.backing_format.clear();
    h.data_file.clear();
    std::set<uint32_t> seen;
    uint64_t off = start;
    end = std::min<uint64_t>(end, bytes.size());
    while (off < end) {
        if (end - off < kExtHeaderSize) {
            return invalid("header extension at " + hex(off) + " is cut off by the end of the " +
                           "extension area at " + hex(end));
        }
        const uint32_t type = load_be32(bytes.data() + off);
        const uint32_t len = load_be32(bytes.data() + off + 4);
        off += kExtHeaderSize;
        if (type == kExtEnd) return ok();
        if (round8(len) > end - off) {
            return invalid(ext_name(type) + " at " + hex(off - kExtHeaderSize) + " has length " +
                           dec(len) + " and runs past the end of the extension area at " +
                           hex(end));
        }
        // Known types appear at most once; unknown ones may be defined as repeatable later.
        if (is_known(type) && !seen.insert(type).second) {
            return invalid("duplicate " + ext_name(type));
        }
        const auto data = bytes.subspan(off, len);
        if (auto r = handle_extension(type, data, h, file_size); !r) return r;
        h.extensions.push_back({type, std::vector<std::byte>(data.begin(), data.end())});
        off += round8(len);
    }
    return ok();
}

bool patch_bitmaps_extension(Header& h, std::span<std::byte> bytes, HostOffset dir,
                             uint64_t dir_size) {
    // The extension area was validated by parse_header: walk it to the bitmaps extension.
    for (uint64_t off = h.header_length; off + kExtHeaderSize <= bytes.size();) {
        const uint32_t type = load_be32(bytes.data() + off);
        const uint32_t len = load_be32(bytes.data() + off + 4);
        if (type == kExtEnd) break;
        if (type == kExtBitmaps && len == kBitmapsExtSize) {
            std::byte* p = bytes.data() + off + kExtHeaderSize;
            store_be64(p + 8, dir_size);
            store_be64(p + 16, dir.value);
            for (HeaderExtension& e : h.extensions)
                if (e.type == kExtBitmaps) e.data.assign(p, p + kBitmapsExtSize);
            return true;
        }
        off += kExtHeaderSize + round8(len);
    }
    return false;
}

namespace {

/// The feature name table qnbd writes into new images (the same names qemu-img writes).
std::vector<std::byte> standard_feature_table() {
    static const FeatureName kNames[] = {
        {0, 0, "dirty bit"},        {0, 1, "corrupt bit"},         {0, 2, "external data file"},
        {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
        {2, 0, "bitmaps"},          {2, 1, "raw external data"},
    };
    std::vector<std::byte> out(std::size(kNames) * kFeatureEntrySize);
    for (size_t i = 0; i < std::size(kNames); ++i) {
        std::byte* e = out.data() + i * kFeatureEntrySize;
        e[0] = std::byte{kNames[i].type};
        e[1] = std::byte{kNames[i].bit};
        std::memcpy(e + 2, kNames[i].name.data(), kNames[i].name.size());
    }
    return out;
}

std::vector<std::byte> bytes_of(const std::string& s) {
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    return {p, p + s.size()};
}

/// The extensions of a new header, in the order qnbd writes them.
std::vector<HeaderExtension> extensions_to_write(const Header& h) {
    std::vector<HeaderExtension> exts;
    if (!h.backing_format.empty()) exts.push_back({kExtBackingFormat, bytes_of(h.backing_format)});
    if (!h.data_file.empty()) exts.push_back({kExtDataFile, bytes_of(h.data_file)});
    if (h.version >= 3 && h.cluster_size() >= kSmallestClusterWithFeatureTable) {
        // Like qemu-img: with clusters of 4 KiB or less the table would crowd out the backing name.
        exts.push_back({kExtFeatureNames, standard_feature_table()});
    }
    for (const HeaderExtension& e : h.extensions) {
        if (e.type == kExtEnd || e.type == kExtBackingFormat || e.type == kExtDataFile ||
            e.type == kExtFeatureNames) {
            continue;
        }
        exts.push_back(e);
    }
    return exts;
}

Result<void> check_buildable(const Header& h) {
    if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
        return invalid("cluster_bits " + dec(h.cluster_bits) + " is out of range");
    }
    if (h.version != 2 && h.version != 3) return invalid("unsupported version " + dec(h.version));
    if (h.version == 2 &&
        (h.incompatible_features || h.compatible_features || h.autoclear_features ||
         h.refcount_order != 4 || h.compression_type != CompressionType::Zlib)) {
        return invalid("version 2 headers have no feature bits, 16-bit refcounts and zlib only");
    }
    if (h.backing_file.size() > kMaxBackingNameLen) {
        return invalid("backing file name is " + dec(h.backing_file.size()) +
                       " bytes long (at most " + dec(kMaxBackingNameLen) + ")");
    }
    if (h.backing_format.size() > kMaxBackingFormatLen) {
        return invalid("backing format name '" + h.backing_format + "' is too long");
    }
    return ok();
}

}  // namespace

Result<std::vector<std::byte>> build_header(const Header& in) {
    if (auto r = check_buildable(in); !r) return r.error();
    Header h = in;
    h.header_length = h.version >= 3 ? kV3HeaderLength : kV2HeaderLength;
    h.backing_file_offset = 0;
    h.backing_file_size = 0;
    const uint64_t cs = h.cluster_size();
    std::vector<std::byte> out(cs);
    uint64_t off = h.header_length;
    for (const HeaderExtension& e : extensions_to_write(h)) {
        // Room for this extension and the end marker after it.
        if (off + kExtHeaderSize + round8(e.data.size()) + kExtHeaderSize > cs) {
            return invalid("header extensions do not fit in one " + dec(cs) + "-byte cluster");
        }
        store_be32(out.data() + off, e.type);
        store_be32(out.data() + off + 4, static_cast<uint32_t>(e.data.size()));
        std::copy(e.data.begin(), e.data.end(), out.begin() + off + kExtHeaderSize);
        off += kExtHeaderSize + round8(e.data.size());
    }
    off += kExtHeaderSize;  // end marker: already zero
    if (!h.backing_file.empty()) {
        if (off + h.backing_file.size() > cs) {
            return invalid("backing file name does not fit in the first cluster");
        }
        std::memcpy(out.data() + off, h.backing_file.data(), h.backing_file.size());
        h.backing_file_offset = off;
        h.backing_file_size = static_cast<uint32_t>(h.backing_file.size());
    }
    patch_header(h, out);
    return out;
}

}  // namespace qnbd::qcow2
