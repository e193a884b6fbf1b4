// The L1 and refcount tables as read at open: decoding, the checks of every entry, and the
// layout of the metadata clusters they point to. Pure functions over the decoded entries
// (fuzzed by tests/fuzz/fuzz_qcow2.cpp).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/result.hpp"
#include "qcow2/header.hpp"

namespace qnbd::qcow2 {

/// The big-endian 64-bit entries of a table (a trailing partial entry is ignored).
std::vector<uint64_t> decode_table(std::span<const std::byte> bytes);

/// Every L1 entry has no reserved bits, and a cluster-aligned L2 table offset inside the file
/// (or 0 and no flags). EINVAL naming the first bad entry otherwise.
Result<void> check_l1_table(const std::vector<uint64_t>& l1, const Header& h, uint64_t file_size);

/// Every refcount table entry has no reserved bits and a cluster-aligned refcount block offset
/// inside the file (or 0). EINVAL naming the first bad entry otherwise.
Result<void> check_refcount_table(const std::vector<uint64_t>& rt, const Header& h,
                                  uint64_t file_size);

/// No refcount block or L2 table shares a cluster with the header, the L1 table, the refcount
/// table or another refcount block or L2 table: an engine writing such an image would overwrite
/// one table with another. EINVAL naming the two otherwise.
Result<void> check_metadata_layout(const Header& h, const std::vector<uint64_t>& l1,
                                   const std::vector<uint64_t>& rt);

}  // namespace qnbd::qcow2
