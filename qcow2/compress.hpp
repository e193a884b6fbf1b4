// Decompression of qcow2 compressed clusters (raw deflate or zstd), and compression for tools.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "base/result.hpp"
#include "qcow2/header.hpp"

namespace qnbd::qcow2 {

/// Inflates one compressed cluster from `in` (which may extend past the compressed stream)
/// into exactly `out.size()` bytes. EIO with a message if the stream is damaged or short.
Result<void> decompress_cluster(CompressionType type, std::span<const std::byte> in,
                                std::span<std::byte> out);

/// Compresses one cluster; returns an empty vector if the result would not be smaller.
Result<std::vector<std::byte>> compress_cluster(CompressionType type,
                                                std::span<const std::byte> in);

}  // namespace qnbd::qcow2
