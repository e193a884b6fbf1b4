// What fuzz_image may expect of a damaged image, decided from its bytes alone.
#pragma once

#include <cstddef>
#include <span>

namespace qnbd::fuzz {

/// True when every host cluster the active tables reference (header, L1 table, refcount table
/// and blocks, L2 tables, data and compressed clusters in the image file) has a nonzero
/// refcount, or the image is dirty (the engine then rebuilds the refcounts when it opens it).
/// Like qemu, the engine trusts the refcounts of a clean image: where they undercount a data
/// cluster, an allocation hands that cluster out again and the data it held is overwritten, so
/// fuzz_image checks written data only on images for which this holds. (Metadata clusters are
/// protected either way: the allocator skips every cluster of the engine's metadata map.)
bool refcounts_cover_references(std::span<const std::byte> image);

}  // namespace qnbd::fuzz
