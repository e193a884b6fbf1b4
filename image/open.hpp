// Opening an image as a Disk: qcow2 (with its backing chain and data file) or raw.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <functional>
#include <memory>
#include <string>

#include "base/result.hpp"
#include "disk/disk.hpp"
#include "io/file.hpp"

namespace qnbd {

/// How an image is opened.
struct OpenOptions {
    bool read_only = false;
    /// "qcow2", "raw", or empty: empty requires the qcow2 magic (a raw file is refused unless
    /// "raw" is asked for, so a guest can never make qnbd reinterpret its disk).
    std::string format;
    bool direct = false;        ///< O_DIRECT on the image and data files (--cache=none).
    bool writethrough = false;  ///< Every write is durable before it completes.
    /// Take QEMU-compatible image locks on every file (io/image_lock.hpp), so qemu and qnbd
    /// never write an image another of them uses.
    bool lock = true;
    /// Read-only only: share every permission, as qemu's -U/--force-share.
    bool force_share = false;
    uint64_t metadata_cache_bytes = 0;  ///< L2 + refcount cache budget; 0 picks the default.
    /// Opens every file of the image (image, data file, backing files). Defaults to
    /// io::open_file (io_uring); tests pass recording or fault-injecting files here.
    io::FileOpener file_opener;
};

/// Opens `path` on executor `ex`. Validates everything before trusting it; a damaged image is
/// refused (EINVAL, one line naming the problem) and never modified.
awaitable<Result<std::shared_ptr<Disk>>> open_disk(asio::any_io_executor ex, std::string path,
                                                   OpenOptions opts);

}  // namespace qnbd
