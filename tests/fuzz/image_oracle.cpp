// A minimal walk of a qcow2 image's bytes: its references and its refcounts.
#include "image_oracle.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "base/buffer.hpp"
#include "qcow2/header.hpp"
#include "qcow2/l2_entry.hpp"
#include "qcow2/refcount_codec.hpp"

namespace qnbd::fuzz {
namespace {

using Input = std::span<const std::byte>;
constexpr size_t kMaxReferences = 1u << 16;  ///< The walk stops there (the rest is unchecked).

/// The image's header and tables, read straight from its bytes (out of range reads as 0).
struct View {
    Input f;
    qcow2::Header h;

    uint64_t at(uint64_t off) const {
        return f.size() >= 8 && off <= f.size() - 8 ? load_be64(f.data() + off) : 0;
    }
    uint64_t cs() const { return h.cluster_size(); }
    bool inside(uint64_t off) const { return cs() <= f.size() && off <= f.size() - cs(); }

    uint64_t refcount(uint64_t cluster) const {
        const uint64_t per_block = cs() * 8 >> h.refcount_order;
        const uint64_t b = cluster / per_block;
        if (b >= uint64_t{h.refcount_table_clusters} * cs() / 8) return 0;
        const uint64_t block =
            at(h.refcount_table_offset.value + 8 * b) & ~qcow2::kRefTableReserved;
        if (!block || !inside(block)) return 0;
        return qcow2::get_refcount(f.data() + block, cluster % per_block, h.refcount_order);
    }

    /// Clusters holding [off, off + bytes), added to `out`.
    void add(std::vector<uint64_t>& out, uint64_t off, uint64_t bytes) const {
        for (uint64_t c = off / cs(); c * cs() < off + bytes && out.size() < kMaxReferences; ++c)
            out.push_back(c);
    }

    /// The clusters an L2 table's entries use in the image file.
    void add_l2(std::vector<uint64_t>& out, uint64_t l2) const {
        const bool ext = h.extended_l2();
        const uint64_t step = ext ? 16 : 8;
        const qcow2::EntryFormat fmt{h.geometry(), h.version >= 3, h.has_data_file(),
                                     h.has_data_file() && h.data_file_raw()};
        for (uint64_t j = 0; j + step <= cs() && out.size() < kMaxReferences; j += step) {
            auto ci = qcow2::decode_l2(at(l2 + j), ext ? at(l2 + j + 8) : 0, fmt, ClusterIndex{0});
            if (!ci) continue;  // Reads as EIO; never written in place.
            if (ci->kind == qcow2::ClusterKind::Compressed)
                add(out, ci->host.value, ci->compressed_len);
            else if (ci->has_host && !h.has_data_file())
                add(out, ci->host.value, cs());
        }
    }
};

}  // namespace

bool refcounts_cover_references(Input image) {
    auto h =
        qcow2::parse_header(image.first(std::min<size_t>(image.size(), 2u << 20)), image.size());
    if (!h) return true;  // Refused anyway.
    if (h->dirty()) return true;
    const View v{image, std::move(*h)};
    std::vector<uint64_t> refs{0};
    v.add(refs, v.h.l1_table_offset.value, uint64_t{v.h.l1_size} * 8);
    const uint64_t rt_bytes = uint64_t{v.h.refcount_table_clusters} * v.cs();
    v.add(refs, v.h.refcount_table_offset.value, rt_bytes);
    for (uint64_t i = 0; i < rt_bytes / 8 && refs.size() < kMaxReferences; ++i)
        if (uint64_t b = v.at(v.h.refcount_table_offset.value + 8 * i) & ~qcow2::kRefTableReserved)
            refs.push_back(b / v.cs());
    for (uint64_t i = 0; i < v.h.l1_size && refs.size() < kMaxReferences; ++i) {
        const uint64_t l2 = v.at(v.h.l1_table_offset.value + 8 * i) & qcow2::kOffsetMask;
        if (!l2 || !v.inside(l2)) continue;
        refs.push_back(l2 / v.cs());
        v.add_l2(refs, l2);
    }
    return std::all_of(refs.begin(), refs.end(), [&](uint64_t c) { return v.refcount(c) > 0; });
}

}  // namespace qnbd::fuzz
