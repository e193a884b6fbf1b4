// The fixed point of refcount table growth (see refcount_growth.hpp).
#include "qcow2/refcount_growth.hpp"

#include <algorithm>

namespace qnbd::qcow2 {
namespace {

/// Refcount blocks missing for the ranges that [area, area + clusters) reaches.
uint64_t missing_blocks(HostClusterIndex area, uint64_t clusters, const RefTableShape& shape,
                        const std::function<bool(uint64_t)>& has_block) {
    uint64_t missing = 0;
    const uint64_t last = (area.value + std::max<uint64_t>(clusters, 1) - 1) / shape.per_block;
    for (uint64_t r = area.value / shape.per_block; r <= last; ++r)
        if (!has_block(r)) ++missing;
    return missing;
}

}  // namespace

Result<TableGrowth> plan_table_growth(uint64_t needed_entries, uint64_t current_entries,
                                      HostClusterIndex area, const RefTableShape& shape,
                                      const std::function<bool(uint64_t)>& has_block) {
    TableGrowth g;
    g.area = area;
    uint64_t entries = std::max(needed_entries, current_entries + current_entries / 2);
    // Real shapes settle in a few rounds; a shape where the table can never cover itself
    // (blocks or table clusters too small) must fail rather than loop.
    for (int round = 0;; ++round) {
        if (round == 64) return Error{EIO, "refcount table growth does not settle"};
        const uint64_t per = shape.per_table_cluster;
        entries = (entries + per - 1) / per * per;
        const uint64_t table_clusters = entries / per;
        if (table_clusters > shape.max_table_clusters)
            return Error{ENOSPC, "refcount table would exceed its " +
                                     std::to_string(shape.max_table_clusters) + "-cluster limit"};
        // The new blocks sit inside the area too: count again until the number settles (it
        // only grows, and at most by the ranges the area reaches).
        uint64_t blocks = g.new_blocks.value;
        for (uint64_t before = ~uint64_t{0}, steps = 0; before != blocks; ++steps) {
            if (steps == 64) return Error{EIO, "refcount table growth does not settle"};
            before = blocks;
            blocks = missing_blocks(area, blocks + table_clusters, shape, has_block);
        }
        g.new_blocks = ClusterCount{blocks};
        g.table_clusters = ClusterCount{table_clusters};
        // The table must have an entry for the last range the area reaches.
        const uint64_t last_range = (g.end().value - 1) / shape.per_block;
        if (last_range < entries) break;
        entries = last_range + 1;
    }
    g.entries = entries;
    return g;
}

}  // namespace qnbd::qcow2
