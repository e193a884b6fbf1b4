// Strong integer types: byte offsets and cluster indices of the guest and host address spaces,
// and cluster counts. Values of different spaces never mix implicitly.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>

namespace qnbd {

/// A number of clusters (guest or host): the distance between two cluster indices.
struct ClusterCount {
    uint64_t value = 0;
    constexpr ClusterCount() = default;
    constexpr explicit ClusterCount(uint64_t v) : value(v) {}
    constexpr auto operator<=>(const ClusterCount&) const = default;
};

/// A position in one address space, tagged with what it means: it moves by `Step` (a byte
/// count for offsets, a ClusterCount for cluster indices) and two positions differ by a Step.
/// Positions of different spaces never mix.
template <class Tag, class Step>
struct Position {
    uint64_t value = 0;

    constexpr Position() = default;
    constexpr explicit Position(uint64_t v) : value(v) {}
    constexpr auto operator<=>(const Position&) const = default;
    constexpr Position operator+(Step n) const { return Position{value + raw(n)}; }
    constexpr Position operator-(Step n) const { return Position{value - raw(n)}; }
    constexpr Position& operator+=(Step n) {
        value += raw(n);
        return *this;
    }
    constexpr Position& operator++() {
        ++value;
        return *this;
    }
    /// The distance from `o` up to this position.
    constexpr Step operator-(Position o) const { return Step{value - o.value}; }

  private:
    static constexpr uint64_t raw(uint64_t n) { return n; }
    static constexpr uint64_t raw(ClusterCount n) { return n.value; }
};

struct GuestTag {};
struct HostTag {};
struct GuestClusterTag {};
struct HostClusterTag {};

/// A byte offset in one address space; moves by byte counts.
template <class Tag>
using Offset = Position<Tag, uint64_t>;
/// A byte offset in the virtual disk the client sees.
using GuestOffset = Offset<GuestTag>;
/// A byte offset in the image file (or the external data file).
using HostOffset = Offset<HostTag>;
/// Index of a guest cluster (guest offset >> cluster_bits).
using ClusterIndex = Position<GuestClusterTag, ClusterCount>;
/// Index of a host cluster in the image file (host offset >> cluster_bits).
using HostClusterIndex = Position<HostClusterTag, ClusterCount>;

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
    /// Bytes in `n` clusters.
    constexpr uint64_t bytes(ClusterCount n) const { return n.value << cluster_bits; }
    /// One past the last host cluster that a file of `n` bytes touches.
    constexpr HostClusterIndex host_cluster_end(uint64_t n) const {
        return HostClusterIndex{round_up(n) >> cluster_bits};
    }
};

}  // namespace qnbd

template <class Tag, class Step>
struct std::hash<qnbd::Position<Tag, Step>> {
    size_t operator()(const qnbd::Position<Tag, Step>& p) const noexcept {
        return std::hash<uint64_t>{}(p.value);
    }
};
