// L1/L2 entry decoding and encoding: pure functions from table entries to read plans.
#pragma once

#include <cstdint>
#include <string>
#include <variant>

#include "base/result.hpp"
#include "base/types.hpp"

namespace qnbd::qcow2 {

inline constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ULL;  ///< Bits 9-55.
inline constexpr uint64_t kOflagCopied = 1ULL << 63;
inline constexpr uint64_t kOflagCompressed = 1ULL << 62;
inline constexpr uint64_t kOflagZero = 1ULL;
inline constexpr uint64_t kL1Reserved = 0x7f000000000001ffULL;  ///< Bits 0-8, 56-62.
inline constexpr uint64_t kL2Reserved = 0x3f000000000001feULL;  ///< Bits 1-8, 56-61.
inline constexpr uint64_t kRefTableReserved = 0x1ffULL;         ///< Bits 0-8.

/// What the image layer says about a guest cluster.
enum class ClusterKind { Unallocated, Zero, Normal, Compressed };

/// How the entry of one L2 table slot is to be interpreted (format options of the image).
struct EntryFormat {
    Geometry geo;
    bool v3 = true;          ///< Zero flag allowed.
    bool data_file = false;  ///< Host offset 0 is valid when COPIED is set.
    bool data_file_raw = false;
};

/// A decoded L2 entry (standard descriptor plus the extended-L2 bitmap).
struct ClusterInfo {
    ClusterKind kind = ClusterKind::Unallocated;
    HostOffset host;              ///< Normal: cluster start. Compressed: exact byte offset.
    uint64_t compressed_len = 0;  ///< Compressed: bytes to read (whole sectors).
    bool copied = false;          ///< Refcount is exactly one: may be written in place.
    bool has_host = false;        ///< Normal or zero cluster with a (preallocated) host cluster.
    uint32_t alloc_mask = 0;      ///< Extended L2: allocated subclusters.
    uint32_t zero_mask = 0;       ///< Extended L2: subclusters reading as zeros.
};

/// Decodes a raw L2 entry; EIO naming the guest cluster if the entry is corrupt.
Result<ClusterInfo> decode_l2(uint64_t entry, uint64_t bitmap, const EntryFormat& f,
                              ClusterIndex c);

/// Encodes a normal cluster owned only by this table (COPIED).
inline uint64_t encode_normal(HostOffset host) {
    return host.value | kOflagCopied;
}

/// Where the bytes of one subcluster (or a whole cluster without extended L2) come from.
struct PlanUnallocated {};  ///< From the backing file, or zeros without one.
struct PlanZero {};         ///< Zeros.
struct PlanData {
    HostOffset host;
};                       ///< Raw data at `host` (start of the subcluster).
struct PlanCompressed {  ///< The whole cluster is compressed at `host`.
    HostOffset host;
    uint64_t length = 0;
};
using Plan = std::variant<PlanUnallocated, PlanZero, PlanData, PlanCompressed>;

/// The plan for subcluster `sc` (0 without extended L2) of a decoded cluster at guest `start`.
Plan plan_subcluster(const ClusterInfo& ci, uint32_t sc, const EntryFormat& f, GuestOffset start);

}  // namespace qnbd::qcow2
