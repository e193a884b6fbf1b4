// Planning the growth of the refcount table: a pure computation, unit-tested on its own.
//
// A table that must cover more refcount blocks moves to a new area at the end of the image:
// first the refcount blocks the area itself needs (ranges it reaches that have no block yet),
// then the new table. Both sizes depend on each other (a bigger area may reach another range
// without a block; more entries may need another table cluster), so the plan is a fixed point.
#pragma once

#include <cstdint>
#include <functional>

#include "base/result.hpp"
#include "base/types.hpp"

namespace qnbd::qcow2 {

/// Where a grown refcount table goes and which new refcount blocks come with it.
struct TableGrowth {
    uint64_t entries = 0;         ///< Table entries after growth (whole table clusters).
    HostClusterIndex area;        ///< First cluster of the new area: the new blocks.
    ClusterCount new_blocks;      ///< Blocks for the ranges the area reaches that have none.
    ClusterCount table_clusters;  ///< Size of the new table.

    /// Where the new table starts: right after the new blocks.
    HostClusterIndex table_start() const { return area + new_blocks; }
    /// One past the last cluster of the area.
    HostClusterIndex end() const { return table_start() + table_clusters; }
};

/// The shape of a refcount table: entries per block and per table cluster, and a size limit.
struct RefTableShape {
    uint64_t per_block = 0;           ///< Refcounts in one block (clusters one entry covers).
    uint64_t per_table_cluster = 0;   ///< Table entries in one cluster.
    uint64_t max_table_clusters = 0;  ///< qemu's limit (8 MiB of table).
};

/// Plans a table of at least `needed_entries` (and at least 1.5 times `current_entries`)
/// placed at `area`, the end of the used image. `has_block(i)` tells whether range `i` has a
/// refcount block today. ENOSPC if the table would exceed the shape's limit.
Result<TableGrowth> plan_table_growth(uint64_t needed_entries, uint64_t current_entries,
                                      HostClusterIndex area, const RefTableShape& shape,
                                      const std::function<bool(uint64_t)>& has_block);

}  // namespace qnbd::qcow2
