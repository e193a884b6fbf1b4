// Creating new qcow2 images (qnbd create).
#pragma once

#include <cstdint>
#include <string>

#include "base/result.hpp"
#include "qcow2/header.hpp"

namespace qnbd::qcow2 {

/// Options of a new image, spelled like qemu-img's -o options.
struct CreateOptions {
    uint64_t size = 0;              ///< Virtual size in bytes.
    uint64_t cluster_size = 65536;  ///< 512 B to 2 MiB, a power of two.
    uint32_t refcount_bits = 16;    ///< 1, 2, 4, ..., 64.
    bool compat_v2 = false;         ///< compat=0.10 (version 2).
    bool lazy_refcounts = false;
    bool extended_l2 = false;
    CompressionType compression_type = CompressionType::Zlib;
    std::string backing_file;
    std::string backing_format;  ///< "qcow2" or "raw"; empty to leave unset.
    std::string data_file;       ///< External data file; created empty if missing.
    bool data_file_raw = false;
};

/// Parses "key=value,key=value" (cluster_size, refcount_bits, compat, lazy_refcounts,
/// extended_l2, compression_type, backing_file, backing_fmt, data_file, data_file_raw)
/// into `opts`; sizes accept k/M/G suffixes. EINVAL naming the bad key or value.
Result<void> parse_create_options(const std::string& text, CreateOptions& opts);

/// Parses a size like "10G", "512M", "4096".
Result<uint64_t> parse_size(const std::string& text);

/// Writes a new image at `path` (truncating any file there). The result is clean under
/// `qemu-img check`.
Result<void> create_image(const std::string& path, const CreateOptions& opts);

}  // namespace qnbd::qcow2
