// A failed fdatasync is final: after it the kernel may have dropped the dirty pages it could not
// write (and marked them clean), so a later fdatasync that succeeds proves nothing about them.
// The latch remembers the first failure of a file and fails every later sync with it, as qemu's
// file-posix does; only reopening the file (restarting qnbd) clears it. Rule R18.
#pragma once

#include <memory>

#include "io/file.hpp"

namespace qnbd::io {

/// Wraps `inner` so that once one sync() fails, every later sync() fails with the same errno
/// without reaching the file. The first failure is logged once, with what the operator must do.
std::unique_ptr<File> latch_sync_failures(std::unique_ptr<File> inner);

/// An opener whose writable files are wrapped by latch_sync_failures (read-only ones never sync).
FileOpener latching_opener(FileOpener inner);

}  // namespace qnbd::io
