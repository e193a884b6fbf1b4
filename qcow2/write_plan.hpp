// Planning a data write: pure functions from a guest range and the L2 state of its clusters to
// the steps that carry it out (Qcow2Image::write executes them, image_write.cpp). Reads have
// their counterpart in l2_entry.hpp's Plan.
#pragma once

#include <cstdint>
#include <vector>

#include "base/types.hpp"
#include "qcow2/l2_entry.hpp"

namespace qnbd::qcow2 {

/// What the planner needs to know about the image.
struct WriteContext {
    Geometry geo;
    bool has_backing = false;    ///< Unallocated clusters read from a backing file.
    bool data_file = false;      ///< Data clusters live in an external data file.
    bool data_file_raw = false;  ///< ... at their guest offset, readable as a raw image.
    ClusterCount max_run;        ///< Longest host-contiguous allocation (Refcounts::max_run).
};

/// How the piece of a write that falls into one cluster is carried out.
enum class WriteKind {
    InPlace,   ///< The cluster is owned (COPIED) and allocated where written: no metadata change.
    FreshRun,  ///< Needs a new host cluster and reads as zeros: may share one allocation.
    Allocate,  ///< Needs a new (or reused) cluster with copy-on-write of the rest.
};

/// Classifies the write of [start, start + len) of a cluster looked up as `ci`.
WriteKind classify_write(const ClusterInfo& ci, uint64_t start, uint64_t len,
                         const WriteContext& ctx);

/// True when the guest sees only zeros in the cluster (nothing to copy on write).
bool reads_as_zero(const ClusterInfo& ci, const WriteContext& ctx);

/// One cluster of the range, as looked up before planning.
struct ClusterState {
    ClusterInfo info;
    bool busy = false;  ///< Another request holds its busy marker: its state may change.
};

/// Bytes [buf_offset, buf_offset + length) of the request go to `host`.
struct InPlacePiece {
    HostOffset host;
    uint64_t buf_offset = 0;
    uint64_t length = 0;
};

/// Consecutive guest clusters that all take new clusters and read as zeros: one contiguous
/// allocation and one data write. The data starts at `start` of the first cluster.
struct FreshRunStep {
    ClusterIndex first;
    ClusterCount count;
    uint64_t start = 0;
    uint64_t buf_offset = 0;
    uint64_t length = 0;
};

/// One cluster written under its busy marker (looked up again there; R12).
struct ClusterStep {
    ClusterIndex cluster;
    uint64_t start = 0;
    uint64_t buf_offset = 0;
    uint64_t length = 0;
};

/// The steps of one write; they run concurrently (they touch disjoint clusters).
struct WritePlan {
    std::vector<InPlacePiece> in_place;  ///< Merged by host offset at execution.
    std::vector<FreshRunStep> fresh_runs;
    std::vector<ClusterStep> clusters;
};

/// Plans the write of `len` bytes at `off`; `clusters[i]` is the state of the i-th cluster the
/// range touches. A fresh run of one cluster becomes a ClusterStep.
WritePlan plan_write(GuestOffset off, uint64_t len, const std::vector<ClusterState>& clusters,
                     const WriteContext& ctx);

/// The part of a cluster an allocating write fills and the L2 bitmap it leaves.
struct AllocationShape {
    uint64_t begin = 0;   ///< First byte of the cluster written (data, copy or zeros).
    uint64_t end = 0;     ///< One past the last.
    uint64_t bitmap = 0;  ///< Extended L2: the subcluster bitmap afterwards; 0 otherwise.
};

/// The shape of writing [start, start + len) into a cluster looked up as `ci`; `reuse` when
/// the cluster's own host cluster is written (owned but not all subclusters allocated).
/// Allocated edge subclusters may take concurrent in-place writes, so their bytes outside the
/// request are never rewritten (R14).
AllocationShape shape_allocation(const ClusterInfo& ci, uint64_t start, uint64_t len, bool reuse,
                                 const Geometry& geo);

/// True when an allocating write of `ci` writes into the cluster's own host cluster.
bool reuses_host(const ClusterInfo& ci);

}  // namespace qnbd::qcow2
