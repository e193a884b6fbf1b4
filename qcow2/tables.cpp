// Checks of the L1 and refcount tables (see tables.hpp).
#include "qcow2/tables.hpp"

#include <string>
#include <unordered_map>

#include "base/buffer.hpp"
#include "base/hex.hpp"
#include "qcow2/l2_entry.hpp"

namespace qnbd::qcow2 {
namespace {

Error bad_entry(const char* table, size_t i, const std::string& what) {
    return Error{EINVAL, std::string(table) + " entry " + std::to_string(i) + " " + what};
}

/// Checks the entries of a table of cluster offsets: `reserved` bits clear, the offset
/// (`mask`) cluster-aligned and its whole cluster inside the file.
Result<void> check_offsets(const std::vector<uint64_t>& t, uint64_t reserved, uint64_t mask,
                           const Header& h, uint64_t file_size, const char* what) {
    const uint64_t cs = h.cluster_size();
    const uint64_t end = h.geometry().round_up(file_size);
    for (size_t i = 0; i < t.size(); ++i) {
        if (t[i] & reserved) return bad_entry(what, i, "has reserved bits set (" + hex(t[i]) + ")");
        const uint64_t off = t[i] & mask;
        if (off & (cs - 1))
            return bad_entry(what, i, "offset " + hex(off) + " is not cluster-aligned");
        if (off && (end < cs || off > end - cs))
            return bad_entry(what, i, "offset " + hex(off) + " is beyond the end of the file");
    }
    return ok();
}

/// What a metadata cluster holds: a table, or entry `index`'s refcount block or L2 table.
struct Owner {
    enum Kind { Header, L1, RefTable, RefBlock, L2 } kind;
    uint64_t index = 0;
    bool operator==(const Owner&) const = default;
};

std::string name(const Owner& o) {
    switch (o.kind) {
        case Owner::Header:
            return "the header";
        case Owner::L1:
            return "the L1 table";
        case Owner::RefTable:
            return "the refcount table";
        case Owner::RefBlock:
            return "the refcount block of refcount table entry " + std::to_string(o.index);
        case Owner::L2:
            break;
    }
    return "the L2 table of L1 entry " + std::to_string(o.index);
}

}  // namespace

std::vector<uint64_t> decode_table(std::span<const std::byte> bytes) {
    std::vector<uint64_t> t(bytes.size() / 8);
    for (size_t i = 0; i < t.size(); ++i) t[i] = load_be64(bytes.data() + i * 8);
    return t;
}

Result<void> check_l1_table(const std::vector<uint64_t>& l1, const Header& h, uint64_t file_size) {
    if (auto r = check_offsets(l1, kL1Reserved, kOffsetMask, h, file_size, "L1 table"); !r)
        return r;
    for (size_t i = 0; i < l1.size(); ++i)
        if ((l1[i] & kOffsetMask) == 0 && l1[i] != 0)
            return bad_entry("L1 table", i, "has flags but no offset");
    return ok();
}

Result<void> check_refcount_table(const std::vector<uint64_t>& rt, const Header& h,
                                  uint64_t file_size) {
    return check_offsets(rt, kRefTableReserved, ~kRefTableReserved, h, file_size, "refcount table");
}

Result<void> check_metadata_layout(const Header& h, const std::vector<uint64_t>& l1,
                                   const std::vector<uint64_t>& rt) {
    const Geometry geo = h.geometry();
    std::unordered_map<uint64_t, Owner> owner;  // host cluster -> what holds it
    auto claim = [&](uint64_t off, uint64_t len, Owner what) -> Result<void> {
        if (len == 0) return ok();
        const uint64_t last = geo.host_cluster_of(HostOffset{off + (len - 1)}).value;
        for (uint64_t c = geo.host_cluster_of(HostOffset{off}).value; c <= last; ++c) {
            auto [it, fresh] = owner.emplace(c, what);
            if (!fresh && !(it->second == what))
                return Error{EINVAL, "image is corrupt: " + name(what) + " and " +
                                         name(it->second) + " share the host cluster at " +
                                         hex(c << geo.cluster_bits)};
        }
        return ok();
    };
    if (auto r = claim(0, h.cluster_size(), {Owner::Header}); !r) return r;
    if (auto r = claim(h.l1_table_offset.value, uint64_t{l1.size()} * 8, {Owner::L1}); !r) return r;
    const uint64_t rt_bytes = geo.bytes(ClusterCount{h.refcount_table_clusters});
    if (auto r = claim(h.refcount_table_offset.value, rt_bytes, {Owner::RefTable}); !r) return r;
    for (size_t i = 0; i < rt.size(); ++i)
        if (const uint64_t b = rt[i] & ~kRefTableReserved; b)
            if (auto r = claim(b, h.cluster_size(), {Owner::RefBlock, i}); !r) return r;
    for (size_t i = 0; i < l1.size(); ++i)
        if (const uint64_t t = l1[i] & kOffsetMask; t)
            if (auto r = claim(t, h.cluster_size(), {Owner::L2, i}); !r) return r;
    return ok();
}

}  // namespace qnbd::qcow2
