#include "qcow2/l2_entry.hpp"
#include "base/hex.hpp"

#include <cstdio>

namespace qnbd::qcow2 {
namespace {

Error corrupt(ClusterIndex c, const EntryFormat& f, const std::string& what) {
    return Error{EIO, "image is corrupt: L2 entry for guest offset " +
                          hex(f.geo.start_of(c).value) + " " + what};
}

Result<ClusterInfo> decode_compressed(uint64_t entry, uint64_t bitmap, const EntryFormat& f,
                                      ClusterIndex c) {
    if (f.data_file) return corrupt(c, f, "is compressed in an image with an external data file");
    if (f.geo.extended_l2 && bitmap != 0)
        return corrupt(c, f, "is compressed but has a subcluster bitmap");
    const uint32_t x = 62 - (f.geo.cluster_bits - 8);
    ClusterInfo ci;
    ci.kind = ClusterKind::Compressed;
    ci.host = HostOffset{entry & ((1ULL << x) - 1)};
    if (ci.host.value >> 56) return corrupt(c, f, "has a compressed offset beyond 2^56");
    uint64_t sectors = ((entry & ~(kOflagCopied | kOflagCompressed)) >> x) + 1;
    ci.compressed_len = sectors * 512 - (ci.host.value & 511);
    if (entry & kOflagCopied) return corrupt(c, f, "is compressed with the COPIED flag set");
    return ci;
}

}  // namespace

Result<ClusterInfo> decode_l2(uint64_t entry, uint64_t bitmap, const EntryFormat& f,
                              ClusterIndex c) {
    if (entry & kOflagCompressed) return decode_compressed(entry, bitmap, f, c);
    if (entry & kL2Reserved) return corrupt(c, f, "has reserved bits set (" + hex(entry) + ")");
    ClusterInfo ci;
    ci.copied = entry & kOflagCopied;
    ci.host = HostOffset{entry & kOffsetMask};
    ci.has_host = ci.host.value != 0 || (f.data_file && ci.copied);
    if (ci.has_host && !f.geo.host_aligned(ci.host))
        return corrupt(c, f, "has an unaligned host offset " + hex(ci.host.value));
    if (f.geo.extended_l2) {
        if (entry & kOflagZero) return corrupt(c, f, "has bit 0 set with extended L2 entries");
        ci.alloc_mask = static_cast<uint32_t>(bitmap);
        ci.zero_mask = static_cast<uint32_t>(bitmap >> 32);
        if (ci.alloc_mask & ci.zero_mask)
            return corrupt(c, f, "has subclusters both allocated and zero");
        if (!ci.has_host && ci.alloc_mask)
            return corrupt(c, f, "has allocated subclusters but no host offset");
        ci.kind = ci.has_host ? ClusterKind::Normal : ClusterKind::Unallocated;
        return ci;
    }
    if (entry & kOflagZero) {
        if (!f.v3) return corrupt(c, f, "has the zero flag in a version 2 image");
        ci.kind = ClusterKind::Zero;
        return ci;
    }
    ci.kind = ci.has_host ? ClusterKind::Normal : ClusterKind::Unallocated;
    return ci;
}

Plan plan_subcluster(const ClusterInfo& ci, uint32_t sc, const EntryFormat& f, GuestOffset start) {
    const uint64_t sc_size = f.geo.subcluster_size();
    switch (ci.kind) {
        case ClusterKind::Compressed:
            return PlanCompressed{ci.host, ci.compressed_len};
        case ClusterKind::Zero:
            return PlanZero{};
        case ClusterKind::Normal:
            if (!f.geo.extended_l2 || (ci.alloc_mask >> sc) & 1)
                return PlanData{ci.host + sc * sc_size};
            if ((ci.zero_mask >> sc) & 1) return PlanZero{};
            break;
        case ClusterKind::Unallocated:
            if (f.geo.extended_l2 && ((ci.zero_mask >> sc) & 1)) return PlanZero{};
            break;
    }
    if (f.data_file_raw) return PlanData{HostOffset{start.value + sc * sc_size}};
    return PlanUnallocated{};
}

}  // namespace qnbd::qcow2
