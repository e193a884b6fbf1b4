// Strong integer types for the two address spaces of a qcow2 image: guest offsets (what the
// client sees) and host offsets (positions in the image or data file). They never mix implicitly.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>

namespace qnbd {

/// A uint64_t tagged with what it means; arithmetic with plain byte counts only.
template <class Tag>
struct Offset {
    uint64_t value = 0;

    constexpr Offset() = default;
    constexpr explicit Offset(uint64_t v) : value(v) {}
    constexpr auto operator<=>(const Offset&) const = default;
    constexpr Offset operator+(uint64_t n) const { return Offset{value + n}; }
    constexpr Offset operator-(uint64_t n) const { return Offset{value - n}; }
    constexpr Offset& operator+=(uint64_t n) {
        value += n;
        return *this;
    }
    /// Distance in bytes from `o` up to this offset.
    constexpr uint64_t operator-(Offset o) const { return value - o.value; }
};

struct GuestTag {};
struct HostTag {};
struct ClusterTag {};
struct HostClusterTag {};

/// A byte offset in the virtual disk the client sees.
using GuestOffset = Offset<GuestTag>;
/// A byte offset in the image file (or the external data file).
using HostOffset = Offset<HostTag>;

/// Index of a guest cluster (guest offset >> cluster_bits).
struct ClusterIndex {
    uint64_t value = 0;
    constexpr ClusterIndex() = default;
    constexpr explicit ClusterIndex(uint64_t v) : value(v) {}
    constexpr auto operator<=>(const ClusterIndex&) const = default;
};

/// Index of a host cluster in the image file (host offset >> cluster_bits).
struct HostClusterIndex {
    uint64_t value = 0;
    constexpr HostClusterIndex() = default;
    constexpr explicit HostClusterIndex(uint64_t v) : value(v) {}
    constexpr auto operator<=>(const HostClusterIndex&) const = default;
};

/// Cluster geometry of one image: every offset/index conversion goes through it.
struct Geometry {
    uint32_t cluster_bits = 16;
    bool extended_l2 = false;

    constexpr uint64_t cluster_size() const { return uint64_t{1} << cluster_bits; }
    constexpr uint32_t l2_entry_size() const { return extended_l2 ? 16 : 8; }
    constexpr uint64_t l2_entries() const { return cluster_size() / l2_entry_size(); }
    constexpr uint32_t subclusters() const { return extended_l2 ? 32 : 1; }
    constexpr uint64_t subcluster_size() const { return cluster_size() / subclusters(); }
    constexpr ClusterIndex cluster_of(GuestOffset o) const {
        return ClusterIndex{o.value >> cluster_bits};
    }
    constexpr GuestOffset start_of(ClusterIndex c) const {
        return GuestOffset{c.value << cluster_bits};
    }
    constexpr uint64_t offset_in_cluster(GuestOffset o) const {
        return o.value & (cluster_size() - 1);
    }
    constexpr uint64_t l1_index(ClusterIndex c) const { return c.value / l2_entries(); }
    constexpr uint64_t l2_index(ClusterIndex c) const { return c.value % l2_entries(); }
    constexpr HostClusterIndex host_cluster_of(HostOffset o) const {
        return HostClusterIndex{o.value >> cluster_bits};
    }
    constexpr HostOffset host_start_of(HostClusterIndex c) const {
        return HostOffset{c.value << cluster_bits};
    }
    constexpr bool host_aligned(HostOffset o) const {
        return (o.value & (cluster_size() - 1)) == 0;
    }
    constexpr uint64_t round_up(uint64_t n) const {
        return (n + cluster_size() - 1) & ~(cluster_size() - 1);
    }
};

}  // namespace qnbd

template <class Tag>
struct std::hash<qnbd::Offset<Tag>> {
    size_t operator()(const qnbd::Offset<Tag>& o) const noexcept {
        return std::hash<uint64_t>{}(o.value);
    }
};
template <>
struct std::hash<qnbd::ClusterIndex> {
    size_t operator()(const qnbd::ClusterIndex& c) const noexcept {
        return std::hash<uint64_t>{}(c.value);
    }
};
template <>
struct std::hash<qnbd::HostClusterIndex> {
    size_t operator()(const qnbd::HostClusterIndex& c) const noexcept {
        return std::hash<uint64_t>{}(c.value);
    }
};
