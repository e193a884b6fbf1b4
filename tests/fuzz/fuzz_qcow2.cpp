// libFuzzer target for the pure qcow2 decoders: the first input byte picks one, the rest is
// its input (layouts below; tests/fuzz/qcow2_seeds.py cuts seeds out of real images). Each
// checks the decoder's documented contract on what it accepts, and round trips where an
// encoder exists.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/buffer.hpp"
#include "fuzz_check.hpp"
#include "qcow2/compress.hpp"
#include "qcow2/header.hpp"
#include "qcow2/l2_entry.hpp"
#include "qcow2/refcount_codec.hpp"
#include "qcow2/tables.hpp"

using namespace qnbd;
using namespace qnbd::qcow2;

namespace {

using Input = std::span<const std::byte>;

/// The fields build_header must carry over into a header that parses back.
void check_same_image(const Header& a, const Header& b) {
    FUZZ_CHECK(a.version == b.version && a.cluster_bits == b.cluster_bits && a.size == b.size);
    FUZZ_CHECK(a.l1_size == b.l1_size && a.l1_table_offset == b.l1_table_offset);
    FUZZ_CHECK(a.refcount_table_offset == b.refcount_table_offset);
    FUZZ_CHECK(a.refcount_table_clusters == b.refcount_table_clusters);
    FUZZ_CHECK(a.incompatible_features == b.incompatible_features);
    FUZZ_CHECK(a.autoclear_features == b.autoclear_features);
    FUZZ_CHECK(a.refcount_order == b.refcount_order && a.compression_type == b.compression_type);
    FUZZ_CHECK(a.backing_file == b.backing_file && a.backing_format == b.backing_format);
    FUZZ_CHECK(a.data_file == b.data_file);
}

/// u32 bytes of file past the input, then the image's first bytes. Whatever parses is valid
/// (the documented ranges), patches back to its own bytes, and rebuilds into a header that
/// parses to the same image.
void header(Input in) {
    if (in.size() < 4) return;
    const Input head = in.subspan(4);
    const uint64_t file_size = head.size() + load_be32(in.data());
    auto h = parse_header(head, file_size);
    if (!h) return FUZZ_CHECK(h.error().code == EINVAL && !h.error().message.empty());
    const uint64_t cs = h->cluster_size();
    FUZZ_CHECK(h->cluster_bits >= kMinClusterBits && h->cluster_bits <= kMaxClusterBits);
    FUZZ_CHECK(h->version == 2 || h->version == 3);
    FUZZ_CHECK(h->header_length <= cs && h->refcount_order <= 6);
    FUZZ_CHECK(h->l1_size >= min_l1_entries(h->size, h->geometry()));
    FUZZ_CHECK(uint64_t{h->l1_size} * 8 <= kMaxL1Bytes && h->l1_table_offset.value % cs == 0);
    FUZZ_CHECK(h->refcount_table_offset.value % cs == 0 && h->refcount_table_clusters > 0);
    FUZZ_CHECK(h->backing_file.size() <= kMaxBackingNameLen);
    FUZZ_CHECK((h->incompatible_features & ~kIncompatKnown) == 0);
    std::vector<std::byte> copy(head.begin(), head.begin() + cs);
    patch_header(*h, copy);
    FUZZ_CHECK(std::equal(copy.begin(), copy.end(), head.begin()));
    auto built = build_header(*h);
    if (!built) return;
    FUZZ_CHECK(built->size() == cs);
    auto again = parse_header(*built, file_size);
    FUZZ_CHECK(again);
    check_same_image(*h, *again);
}

/// u8 cluster_bits - 9, u32 snapshot count, u64 file size, then the snapshot table.
void snapshots(Input in) {
    if (in.size() < 13) return;
    Header h;
    h.cluster_bits = kMinClusterBits + static_cast<uint8_t>(in[0]) % 13;
    const uint32_t nb = load_be32(in.data() + 1) % 1024;
    const uint64_t file_size = load_be64(in.data() + 5);
    auto s = parse_snapshots(in.subspan(13), nb, h, file_size);
    if (!s) return FUZZ_CHECK(s.error().code == EINVAL);
    FUZZ_CHECK(s->size() == nb);
    for (const Snapshot& sn : *s) {
        FUZZ_CHECK(sn.l1_table_offset.value % h.cluster_size() == 0);
        FUZZ_CHECK(uint64_t{sn.l1_size} * 8 <= kMaxL1Bytes);
        FUZZ_CHECK(sn.l1_size == 0 ||
                   (sn.l1_table_offset.value <= file_size &&
                    uint64_t{sn.l1_size} * 8 <= file_size - sn.l1_table_offset.value));
    }
}

/// What a decoded L2 entry promises about the plans of its subclusters.
void check_plans(const ClusterInfo& ci, const EntryFormat& f) {
    const uint32_t n = f.geo.extended_l2 ? 32 : 1;
    const GuestOffset start{uint64_t{7} << f.geo.cluster_bits};
    for (uint32_t sc = 0; sc < n; ++sc) {
        const Plan p = plan_subcluster(ci, sc, f, start);
        const uint64_t sc_off = uint64_t{sc} * f.geo.subcluster_size();
        if (const auto* d = std::get_if<PlanData>(&p)) {
            // Data is the subcluster's own in the cluster, or where a raw data file keeps it.
            const bool own = ci.kind == ClusterKind::Normal &&
                             (!f.geo.extended_l2 || ((ci.alloc_mask >> sc) & 1));
            if (own)
                FUZZ_CHECK(d->host.value == ci.host.value + sc_off);
            else
                FUZZ_CHECK(f.data_file_raw && d->host.value == start.value + sc_off);
        }
        if (std::holds_alternative<PlanCompressed>(p))
            FUZZ_CHECK(ci.kind == ClusterKind::Compressed);
        if (ci.kind == ClusterKind::Zero) FUZZ_CHECK(std::holds_alternative<PlanZero>(p));
    }
}

/// u8 format (bits 0-3: cluster_bits - 9, 4: data file, 5: extended L2, 6: v3, 7: raw data
/// file), then L2 slots (entry, plus the bitmap with extended L2).
void l2_entries(Input in) {
    if (in.empty()) return;
    const auto b = static_cast<uint8_t>(in[0]);
    EntryFormat f;
    f.geo.cluster_bits = kMinClusterBits + (b & 15) % 13;
    f.data_file = b & 0x10;
    f.geo.extended_l2 = (b & 0x20) && f.geo.cluster_bits >= 14;
    f.v3 = b & 0x40;
    f.data_file_raw = f.data_file && (b & 0x80);
    const size_t step = f.geo.extended_l2 ? 16 : 8;
    for (size_t off = 1; off + step <= in.size() && off < 1 + 256 * step; off += step) {
        const uint64_t e = load_be64(in.data() + off);
        const uint64_t bitmap = step == 16 ? load_be64(in.data() + off + 8) : 0;
        auto ci = decode_l2(e, bitmap, f, ClusterIndex{off / step});
        if (!ci) {
            FUZZ_CHECK(ci.error().code == EIO);
            continue;
        }
        FUZZ_CHECK(!(ci->alloc_mask & ci->zero_mask));
        if (ci->kind == ClusterKind::Compressed) {
            FUZZ_CHECK(!f.data_file && ci->compressed_len > 0 && ci->host.value >> 56 == 0);
            FUZZ_CHECK(ci->compressed_len <= 2 * f.geo.cluster_size() + 512);
        }
        if (ci->kind == ClusterKind::Normal)
            FUZZ_CHECK(ci->has_host && ci->host.value % f.geo.cluster_size() == 0);
        if (ci->kind == ClusterKind::Zero) FUZZ_CHECK(f.v3 && !f.geo.extended_l2);
        check_plans(*ci, f);
        const uint64_t host = e & kOffsetMask & ~(f.geo.cluster_size() - 1);
        if (host == 0) continue;
        auto n = decode_l2(encode_normal(HostOffset{host}), 0, f, ClusterIndex{0});
        FUZZ_CHECK(n && n->kind == ClusterKind::Normal);
        FUZZ_CHECK(n->copied && n->host.value == host);
    }
}

/// u8 refcount order, then a refcount block: set then get round trips, other entries stay.
void refcounts(Input in) {
    if (in.size() < 2) return;
    const uint32_t order = static_cast<uint8_t>(in[0]) % 7;
    std::vector<std::byte> block(in.begin() + 1, in.end());
    const uint64_t entries = block.size() * 8 >> order;
    if (entries == 0) return;
    FuzzedDataProvider p(reinterpret_cast<const uint8_t*>(in.data()), in.size());
    for (int i = 0; i < 16; ++i) {
        const uint64_t idx = p.ConsumeIntegralInRange<uint64_t>(0, entries - 1);
        const uint64_t v = p.ConsumeIntegral<uint64_t>() & max_refcount(order);
        const uint64_t other = (idx + 1) % entries;
        const uint64_t before = get_refcount(block.data(), other, order);
        FUZZ_CHECK(get_refcount(block.data(), idx, order) <= max_refcount(order));
        set_refcount(block.data(), idx, order, v);
        FUZZ_CHECK(get_refcount(block.data(), idx, order) == v);
        if (other != idx) FUZZ_CHECK(get_refcount(block.data(), other, order) == before);
    }
}

/// u8 compression type, u8 cluster_bits - 9, then the compressed stream. Decompression fills the
/// whole cluster or fails with EIO; what compress_cluster makes decompresses back.
void compressed(Input in) {
    if (in.size() < 2) return;
    const auto type = static_cast<CompressionType>(static_cast<uint8_t>(in[0]) & 1);
    const uint64_t cs = uint64_t{1} << (kMinClusterBits + static_cast<uint8_t>(in[1]) % 8);
    const Input stream = in.subspan(2);
    std::vector<std::byte> out(cs, std::byte{0xee});
    auto r = decompress_cluster(type, stream, out);
    if (!r) FUZZ_CHECK(r.error().code == EIO || r.error().code == ENOMEM);
    std::vector<std::byte> data(cs);
    std::memcpy(data.data(), stream.data(), std::min<size_t>(cs, stream.size()));
    auto c = compress_cluster(type, data);
    FUZZ_CHECK(c);
    if (c->empty()) return;
    FUZZ_CHECK(c->size() < cs);
    std::vector<std::byte> back(cs);
    FUZZ_CHECK(decompress_cluster(type, *c, back));
    FUZZ_CHECK(back == data);
}

/// u8 table (0 L1, 1 refcount table), u8 cluster_bits - 9, u8 file size in 64 KiB units, then the
/// table. Accepted tables point only at whole clusters inside the file; a layout accepted for
/// writing gives every cluster one owner.
void tables(Input in) {
    if (in.size() < 3) return;
    Header h;
    h.cluster_bits = kMinClusterBits + static_cast<uint8_t>(in[1]) % 13;
    const uint64_t file_size = (uint64_t{static_cast<uint8_t>(in[2])} + 1) << 16;
    const std::vector<uint64_t> t = decode_table(in.subspan(3));
    FUZZ_CHECK(t.size() == (in.size() - 3) / 8);
    const bool l1 = !(static_cast<uint8_t>(in[0]) & 1);
    auto r = l1 ? check_l1_table(t, h, file_size) : check_refcount_table(t, h, file_size);
    if (!r) return FUZZ_CHECK(r.error().code == EINVAL);
    const uint64_t mask = l1 ? kOffsetMask : ~kRefTableReserved;
    for (uint64_t e : t) {
        FUZZ_CHECK((e & (l1 ? kL1Reserved : kRefTableReserved)) == 0);
        const uint64_t off = e & mask;
        FUZZ_CHECK(off % h.cluster_size() == 0 && off <= h.geometry().round_up(file_size));
        FUZZ_CHECK(off == 0 || off + h.cluster_size() <= h.geometry().round_up(file_size));
    }
    h.l1_table_offset = HostOffset{h.cluster_size()};
    h.refcount_table_offset = HostOffset{2 * h.cluster_size()};
    h.refcount_table_clusters = 1;
    const std::vector<uint64_t> none;
    auto layout = l1 ? check_metadata_layout(h, t, none) : check_metadata_layout(h, none, t);
    if (!layout) return FUZZ_CHECK(layout.error().code == EINVAL);
    std::vector<uint64_t> seen{0, 2};  // The header and the refcount table.
    for (uint64_t c = 1; l1 && !t.empty() && c <= 1 + (t.size() * 8 - 1) / h.cluster_size(); ++c)
        seen.push_back(c);  // The L1 table.
    for (uint64_t e : t)
        if (e & mask) seen.push_back((e & mask) >> h.cluster_bits);
    std::sort(seen.begin(), seen.end());
    FUZZ_CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using Target = void (*)(Input);
    static constexpr Target kTargets[] = {header,    snapshots,  l2_entries,
                                          refcounts, compressed, tables};
    if (size == 0) return 0;
    const Input in(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
    kTargets[data[0] % std::size(kTargets)](in);
    return 0;
}
