// Which host clusters of the image file hold metadata (header, L1 table, refcount table and
// blocks, L2 tables): before data is written to a host cluster the engine checks it is not one
// of them, as qemu's overlap checks do, so a damaged L2 entry or refcount can never make a
// guest write overwrite metadata (docs/ARCHITECTURE.md, R17).
#pragma once

#include <cstdint>
#include <unordered_set>

#include "base/types.hpp"

namespace qnbd::qcow2 {

/// The set of host clusters that hold metadata.
class MetadataMap {
  public:
    explicit MetadataMap(Geometry geo) : geo_(geo) {}
    /// Marks every cluster [off, off + len) touches as metadata.
    void add(HostOffset off, uint64_t len);
    /// Forgets the clusters [off, off + len) touches (freed metadata, e.g. an old refcount table).
    void remove(HostOffset off, uint64_t len);
    /// True when [off, off + len) touches a metadata cluster.
    bool overlaps(HostOffset off, uint64_t len) const;

  private:
    Geometry geo_;
    std::unordered_set<uint64_t> clusters_;
};

}  // namespace qnbd::qcow2
