// RawDisk: a raw file (or block device) served as a Disk; also a raw backing file.
#pragma once

#include <memory>

#include "disk/disk.hpp"
#include "io/file.hpp"

namespace qnbd {

/// Opens a raw file as a Disk of its current size.
Result<std::shared_ptr<Disk>> make_raw_disk(asio::any_io_executor ex,
                                            std::unique_ptr<io::File> file, bool read_only);

}  // namespace qnbd
