// The metadata clusters of an image (see metadata_map.hpp).
#include "qcow2/metadata_map.hpp"

namespace qnbd::qcow2 {

void MetadataMap::add(HostOffset off, uint64_t len) {
    if (len == 0) return;
    const uint64_t last = geo_.host_cluster_of(off + (len - 1)).value;
    for (uint64_t c = geo_.host_cluster_of(off).value; c <= last; ++c) clusters_.insert(c);
}

void MetadataMap::remove(HostOffset off, uint64_t len) {
    if (len == 0) return;
    const uint64_t last = geo_.host_cluster_of(off + (len - 1)).value;
    for (uint64_t c = geo_.host_cluster_of(off).value; c <= last; ++c) clusters_.erase(c);
}

bool MetadataMap::overlaps(HostOffset off, uint64_t len) const {
    if (len == 0) return false;
    const uint64_t last = geo_.host_cluster_of(off + (len - 1)).value;
    for (uint64_t c = geo_.host_cluster_of(off).value; c <= last; ++c)
        if (clusters_.count(c)) return true;
    return false;
}

}  // namespace qnbd::qcow2
