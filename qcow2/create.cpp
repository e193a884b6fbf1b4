// Creating new qcow2 images: option parsing, validation like qemu-img, and a layout of header
// cluster, refcount table, refcount blocks, L1 table (and, for raw external data files, the
// preallocated L2 tables), all with refcount 1. Only metadata is written; the rest is sparse.
#include "qcow2/create.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <vector>

#include "base/buffer.hpp"
#include "qcow2/refcount_codec.hpp"

namespace qnbd::qcow2 {
namespace {

constexpr uint64_t kSectorSize = 512;
constexpr uint64_t kMinClusterSize = uint64_t{1} << kMinClusterBits;
constexpr uint64_t kMaxClusterSize = uint64_t{1} << kMaxClusterBits;
constexpr uint64_t kMinExtendedL2ClusterSize = 16384;
constexpr uint64_t kL1EntrySize = 8;
constexpr uint64_t kRefTableEntrySize = 8;
constexpr uint64_t kCopiedFlag = uint64_t{1} << 63;  ///< Refcount is exactly one.
constexpr uint64_t kAllSubclustersAllocated = 0xffffffff;

Error invalid(std::string msg) {
    return Error{EINVAL, std::move(msg)};
}

std::string dec(uint64_t v) {
    return std::to_string(v);
}

uint64_t div_round_up(uint64_t n, uint64_t d) {
    return n / d + (n % d != 0);
}

bool is_pow2(uint64_t v) {
    return v && !(v & (v - 1));
}

uint32_t log2_of(uint64_t v) {
    return static_cast<uint32_t>(__builtin_ctzll(v));
}

/// Options that only version 3 images can carry.
Result<void> check_v2(const CreateOptions& o) {
    const char* what = nullptr;
    if (o.refcount_bits != 16) what = "refcount widths other than 16 bits";
    if (o.lazy_refcounts) what = "lazy refcounts";
    if (o.extended_l2) what = "extended L2 entries";
    if (!o.data_file.empty()) what = "external data files";
    if (o.compression_type != CompressionType::Zlib) what = "compression types other than zlib";
    if (what) return invalid(std::string(what) + " need compat=1.1 (not compat=0.10)");
    return ok();
}

Result<void> check_options(const CreateOptions& o) {
    if (!is_pow2(o.cluster_size) || o.cluster_size < kMinClusterSize ||
        o.cluster_size > kMaxClusterSize) {
        return invalid("cluster size " + dec(o.cluster_size) +
                       " must be a power of two between 512 and 2M");
    }
    if (o.extended_l2 && o.cluster_size < kMinExtendedL2ClusterSize) {
        return invalid("extended L2 entries need a cluster size of at least 16K (cluster size is " +
                       dec(o.cluster_size) + ")");
    }
    if (!is_pow2(o.refcount_bits) || o.refcount_bits > 64) {
        return invalid("refcount bits " + dec(o.refcount_bits) +
                       " must be a power of two between 1 and 64");
    }
    if (o.compat_v2) {
        if (auto r = check_v2(o); !r) return r;
    }
    if (!o.backing_format.empty() && o.backing_file.empty()) {
        return invalid("a backing format needs a backing file");
    }
    if (!o.backing_format.empty() && o.backing_format != "qcow2" && o.backing_format != "raw") {
        return invalid("backing format '" + o.backing_format + "' is not supported (qcow2 or raw)");
    }
    if (o.backing_file.size() > kMaxBackingNameLen) {
        return invalid("backing file name is " + dec(o.backing_file.size()) +
                       " bytes long (at most " + dec(kMaxBackingNameLen) + ")");
    }
    if (o.data_file_raw && o.data_file.empty()) return invalid("data_file_raw needs a data_file");
    if (o.data_file_raw && !o.backing_file.empty()) {
        return invalid("a backing file and data_file_raw cannot be used together");
    }
    return ok();
}

/// Where everything goes, in clusters: header 0, then refcount table, refcount blocks, L1 and
/// the preallocated L2 tables, back to back.
struct Layout {
    uint32_t cluster_bits = 16;
    uint64_t size = 0;  ///< Virtual size, rounded up to a sector.
    uint64_t l1_entries = 0;
    uint64_t l1_clusters = 0;
    uint64_t l2_clusters = 0;  ///< Preallocated L2 tables (raw external data only).
    uint64_t reftable_clusters = 0;
    uint64_t refblocks = 0;
    uint64_t total_clusters = 0;

    uint64_t cs() const { return uint64_t{1} << cluster_bits; }
    uint64_t reftable_start() const { return 1; }
    uint64_t refblock_start() const { return reftable_start() + reftable_clusters; }
    uint64_t l1_start() const { return refblock_start() + refblocks; }
    uint64_t l2_start() const { return l1_start() + l1_clusters; }
    /// The file ends right after the last metadata byte, as with qemu-img.
    uint64_t file_length() const {
        if (l2_clusters > 0) return total_clusters * cs();
        if (l1_entries > 0) return l1_start() * cs() + l1_entries * 8;
        return l1_start() * cs();
    }
};

Result<Layout> plan_layout(const CreateOptions& o, const Geometry& g) {
    Layout l;
    l.cluster_bits = g.cluster_bits;
    l.size = div_round_up(o.size, kSectorSize) * kSectorSize;
    if (l.size < o.size || l.size > uint64_t{INT64_MAX}) return invalid("size is too large");
    l.l1_entries = min_l1_entries(l.size, g);
    if (l.l1_entries * kL1EntrySize > kMaxL1Bytes) {
        return invalid("size " + dec(l.size) + " is too large for a cluster size of " +
                       dec(l.cs()) + " (the L1 table would exceed " + dec(kMaxL1Bytes) + " bytes)");
    }
    l.l1_clusters = div_round_up(l.l1_entries * kL1EntrySize, l.cs());
    l.l2_clusters = o.data_file_raw ? l.l1_entries : 0;
    // Refcount metadata covers itself: iterate to the fixed point (it only grows).
    const uint64_t per_block = refcount_entries(l.cs(), log2_of(o.refcount_bits));
    const uint64_t fixed = 1 + l.l1_clusters + l.l2_clusters;
    l.reftable_clusters = 1;
    for (;;) {
        const uint64_t total = fixed + l.reftable_clusters + l.refblocks;
        const uint64_t blocks = div_round_up(total, per_block);
        const uint64_t table =
            std::max<uint64_t>(1, div_round_up(blocks * kRefTableEntrySize, l.cs()));
        if (blocks == l.refblocks && table == l.reftable_clusters) break;
        l.refblocks = blocks;
        l.reftable_clusters = table;
    }
    l.total_clusters = fixed + l.reftable_clusters + l.refblocks;
    if (l.reftable_clusters * l.cs() > kMaxRefTableBytes) {
        return invalid("size " + dec(l.size) + " needs a refcount table larger than " +
                       dec(kMaxRefTableBytes) + " bytes (use larger clusters)");
    }
    return l;
}

Header make_header(const CreateOptions& o, const Layout& l) {
    Header h;
    h.version = o.compat_v2 ? 2 : 3;
    h.cluster_bits = l.cluster_bits;
    h.size = l.size;
    h.l1_size = static_cast<uint32_t>(l.l1_entries);
    h.l1_table_offset = HostOffset{l.l1_entries ? l.l1_start() << l.cluster_bits : 0};
    h.refcount_table_offset = HostOffset{l.reftable_start() << l.cluster_bits};
    h.refcount_table_clusters = static_cast<uint32_t>(l.reftable_clusters);
    h.refcount_order = log2_of(o.refcount_bits);
    h.compression_type = o.compression_type;
    if (o.compression_type != CompressionType::Zlib)
        h.incompatible_features |= kIncompatCompression;
    if (o.extended_l2) h.incompatible_features |= kIncompatExtendedL2;
    if (!o.data_file.empty()) h.incompatible_features |= kIncompatDataFile;
    if (o.data_file_raw) h.autoclear_features |= kAutoclearRawData;
    if (o.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
    h.backing_file = o.backing_file;
    h.backing_format = o.backing_format;
    h.data_file = o.data_file;
    return h;
}

/// A file descriptor closed on scope exit.
class Fd {
  public:
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() {
        if (fd_ >= 0) ::close(fd_);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }
    /// Closes now, reporting the error close() may carry.
    int close() {
        const int r = ::close(fd_);
        fd_ = -1;
        return r;
    }

  private:
    int fd_;
};

Error sys_error(const std::string& what, const std::string& path) {
    const int e = errno;
    return Error{e, what + " " + path + ": " + std::strerror(e)};
}

Result<void> write_at(int fd, const std::string& path, uint64_t off,
                      std::span<const std::byte> data) {
    while (!data.empty()) {
        const ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(off));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return sys_error("cannot write", path);
        data = data.subspan(static_cast<size_t>(n));
        off += static_cast<uint64_t>(n);
    }
    return ok();
}

/// Refcount table and blocks: every cluster of the image is used exactly once.
Result<void> write_refcounts(int fd, const std::string& path, const Layout& l, uint32_t order) {
    const uint64_t cs = l.cs();
    std::vector<std::byte> table(l.reftable_clusters * cs);
    for (uint64_t b = 0; b < l.refblocks; ++b) {
        store_be64(table.data() + b * kRefTableEntrySize, (l.refblock_start() + b) * cs);
    }
    if (auto r = write_at(fd, path, l.reftable_start() * cs, table); !r) return r;
    const uint64_t per_block = refcount_entries(cs, order);
    std::vector<std::byte> block(cs);
    for (uint64_t b = 0; b < l.refblocks; ++b) {
        const uint64_t first = b * per_block;
        const uint64_t used = std::min(per_block, l.total_clusters - first);
        if (b == 0 || used < per_block) {
            std::fill(block.begin(), block.end(), std::byte{0});
            for (uint64_t i = 0; i < used; ++i) set_refcount(block.data(), i, order, 1);
        }
        if (auto r = write_at(fd, path, (l.refblock_start() + b) * cs, block); !r) return r;
    }
    return ok();
}

/// For a raw external data file: an L1 and L2 tables mapping every guest cluster to the same
/// offset in the data file, so the metadata agrees with the raw file.
Result<void> write_identity_map(int fd, const std::string& path, const Layout& l,
                                const Geometry& g) {
    const uint64_t cs = l.cs();
    std::vector<std::byte> l1(l.l1_clusters * cs);
    for (uint64_t i = 0; i < l.l1_entries; ++i) {
        store_be64(l1.data() + i * kL1EntrySize, ((l.l2_start() + i) * cs) | kCopiedFlag);
    }
    if (auto r = write_at(fd, path, l.l1_start() * cs, l1); !r) return r;
    const uint64_t guest_clusters = div_round_up(l.size, cs);
    std::vector<std::byte> l2(cs);
    for (uint64_t t = 0; t < l.l2_clusters; ++t) {
        std::fill(l2.begin(), l2.end(), std::byte{0});
        for (uint64_t i = 0; i < g.l2_entries(); ++i) {
            const uint64_t c = t * g.l2_entries() + i;
            if (c >= guest_clusters) break;
            std::byte* e = l2.data() + i * g.l2_entry_size();
            store_be64(e, (c * cs) | kCopiedFlag);
            if (g.extended_l2) store_be64(e + 8, kAllSubclustersAllocated);
        }
        if (auto r = write_at(fd, path, (l.l2_start() + t) * cs, l2); !r) return r;
    }
    return ok();
}

/// Creates the external data file if missing and extends it (sparsely) to the virtual size.
Result<void> prepare_data_file(const std::string& path, uint64_t size) {
    Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
    if (fd.get() < 0) return sys_error("cannot create data file", path);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return sys_error("cannot stat data file", path);
    if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) < size &&
        ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
        return sys_error("cannot extend data file", path);
    }
    if (fd.close() != 0) return sys_error("cannot close data file", path);
    return ok();
}

Result<void> write_image(const std::string& path, const CreateOptions& o, const Layout& l,
                         const Geometry& g) {
    auto header = build_header(make_header(o, l));
    if (!header) return header.error();
    Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) return sys_error("cannot create", path);
    if (::ftruncate(fd.get(), static_cast<off_t>(l.file_length())) != 0) {
        return sys_error("cannot size", path);
    }
    if (auto r = write_at(fd.get(), path, 0, *header); !r) return r;
    if (auto r = write_refcounts(fd.get(), path, l, log2_of(o.refcount_bits)); !r) return r;
    if (l.l2_clusters > 0) {
        if (auto r = write_identity_map(fd.get(), path, l, g); !r) return r;
    }
    if (::fsync(fd.get()) != 0) return sys_error("cannot sync", path);
    if (fd.close() != 0) return sys_error("cannot close", path);
    return ok();
}

/// Size multipliers by suffix letter (binary, like qemu-img): b, k, m, g, t, p, e.
uint64_t size_multiplier(char c) {
    static constexpr std::string_view kSuffixes = "bkmgtpe";
    const size_t i = kSuffixes.find(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    return i == std::string_view::npos ? 0 : uint64_t{1} << (10 * i);
}

/// Parses a run of decimal digits at `pos`; false on overflow or if there are none.
bool parse_digits(const std::string& s, size_t& pos, uint64_t& value, uint64_t& scale) {
    const size_t start = pos;
    value = 0;
    scale = 1;
    for (; pos < s.size() && std::isdigit(static_cast<unsigned char>(s[pos])); ++pos) {
        if (__builtin_mul_overflow(value, 10, &value) ||
            __builtin_add_overflow(value, static_cast<uint64_t>(s[pos] - '0'), &value) ||
            __builtin_mul_overflow(scale, 10, &scale)) {
            return false;
        }
    }
    return pos > start;
}

Result<bool> parse_bool(const std::string& key, const std::string& v) {
    if (v == "on" || v == "true" || v == "yes") return true;
    if (v == "off" || v == "false" || v == "no") return false;
    return invalid("invalid value '" + v + "' for " + key + " (on or off)");
}

/// Splits "a=1,b=2" at single commas; ",," stands for a literal comma.
std::vector<std::string> split_options(const std::string& text) {
    std::vector<std::string> items(1);
    for (size_t i = 0; i < text.size(); ++i) {
        if (text[i] != ',') {
            items.back() += text[i];
        } else if (i + 1 < text.size() && text[i + 1] == ',') {
            items.back() += ',';
            ++i;
        } else {
            items.emplace_back();
        }
    }
    return items;
}

Result<void> set_bool_option(const std::string& key, const std::string& v, CreateOptions& o) {
    auto b = parse_bool(key, v);
    if (!b) return b.error();
    if (key == "lazy_refcounts") o.lazy_refcounts = *b;
    if (key == "extended_l2") o.extended_l2 = *b;
    if (key == "data_file_raw") o.data_file_raw = *b;
    return ok();
}

Result<void> set_option(const std::string& key, const std::string& v, CreateOptions& o) {
    const Error bad = invalid("invalid value '" + v + "' for " + key);
    if (key == "lazy_refcounts" || key == "extended_l2" || key == "data_file_raw") {
        return set_bool_option(key, v, o);
    }
    if (key == "size" || key == "cluster_size") {
        auto n = parse_size(v);
        if (!n) return bad;
        (key == "size" ? o.size : o.cluster_size) = *n;
    } else if (key == "refcount_bits") {
        size_t pos = 0;
        uint64_t n = 0, scale = 0;
        if (!parse_digits(v, pos, n, scale) || pos != v.size() || n > 64) return bad;
        o.refcount_bits = static_cast<uint32_t>(n);
    } else if (key == "compat") {
        if (v != "0.10" && v != "1.1" && v != "v2" && v != "v3") return bad;
        o.compat_v2 = v == "0.10" || v == "v2";
    } else if (key == "compression_type") {
        if (v != "zlib" && v != "zstd") return bad;
        o.compression_type = v == "zstd" ? CompressionType::Zstd : CompressionType::Zlib;
    } else if (key == "backing_file") {
        o.backing_file = v;
    } else if (key == "backing_fmt") {
        o.backing_format = v;
    } else if (key == "data_file") {
        o.data_file = v;
    } else {
        return invalid("unknown create option '" + key + "'");
    }
    return ok();
}

}  // namespace

Result<uint64_t> parse_size(const std::string& text) {
    const Error bad = invalid("invalid size '" + text + "'");
    size_t pos = 0;
    uint64_t whole = 0, frac = 0, scale = 1, unused = 0;
    if (!parse_digits(text, pos, whole, unused)) return bad;
    if (pos < text.size() && text[pos] == '.') {
        ++pos;
        if (!parse_digits(text, pos, frac, scale)) return bad;
    }
    uint64_t mult = 1;
    if (pos < text.size()) {
        mult = size_multiplier(text[pos++]);
        if (mult == 0 || pos != text.size()) return bad;
    }
    uint64_t bytes = 0, frac_bytes = 0;
    if (__builtin_mul_overflow(whole, mult, &bytes) ||
        __builtin_mul_overflow(frac, mult, &frac_bytes) || frac_bytes % scale != 0 ||
        __builtin_add_overflow(bytes, frac_bytes / scale, &bytes)) {
        return invalid("size '" + text + "' is not a whole number of bytes or is too large");
    }
    return bytes;
}

Result<void> parse_create_options(const std::string& text, CreateOptions& opts) {
    if (text.empty()) return ok();
    for (const std::string& item : split_options(text)) {
        if (item.empty()) continue;
        const size_t eq = item.find('=');
        std::string key = item.substr(0, eq);
        std::replace(key.begin(), key.end(), '-', '_');
        // A bare boolean key means "on", as in qemu-img.
        const std::string value = eq == std::string::npos ? "on" : item.substr(eq + 1);
        if (auto r = set_option(key, value, opts); !r) return r;
    }
    return ok();
}

Result<void> create_image(const std::string& path, const CreateOptions& opts) {
    if (auto r = check_options(opts); !r) return r;
    const Geometry g{log2_of(opts.cluster_size), opts.extended_l2};
    auto layout = plan_layout(opts, g);
    if (!layout) return layout.error();
    if (!opts.data_file.empty()) {
        // A relative data file name is stored as given and means "next to the image".
        std::filesystem::path data = opts.data_file;
        if (data.is_relative()) data = std::filesystem::path(path).parent_path() / data;
        if (auto r = prepare_data_file(data.string(), layout->size); !r) return r;
    }
    return write_image(path, opts, *layout, g);
}

}  // namespace qnbd::qcow2
