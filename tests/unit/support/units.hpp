// Size units and the byte-vector type shared by the tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qnbd::test {

/// A byte buffer: file contents, guest data, expected reads.
using Bytes = std::vector<std::byte>;

inline constexpr uint64_t KiB = 1024;        ///< 2^10 bytes.
inline constexpr uint64_t MiB = 1024 * KiB;  ///< 2^20 bytes.
inline constexpr uint64_t GiB = 1024 * MiB;  ///< 2^30 bytes.

}  // namespace qnbd::test
