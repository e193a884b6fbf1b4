// A Disk that exposes [offset, end) of another Disk (qemu-nbd -o).
#pragma once

#include <memory>

#include "disk/disk.hpp"

namespace qnbd {

/// Wraps `inner` so that guest offset 0 is `offset` of `inner`.
std::shared_ptr<Disk> make_window_disk(std::shared_ptr<Disk> inner, uint64_t offset);

}  // namespace qnbd
