// The O_DIRECT adapter: a File decorator that accepts requests of any offset, length and buffer
// address on a file opened with O_DIRECT, which itself only accepts aligned ones.
//
// Aligned requests (offset, every iovec base and length) pass straight through. Other reads go
// through an aligned bounce buffer. Other writes become read-modify-writes (RMW) of their partial
// first and last blocks, holding those blocks exclusively: an RMW waits for every earlier write
// or fallocate overlapping its blocks and holds back every later one until it is done. Writes
// that need no RMW, and fallocates, only wait for earlier overlapping RMWs, never for each other.
//
// An RMW at the end of the file writes whole blocks and so may leave zeros past the last byte
// written. The adapter remembers the exact end (the size at open or last truncate, raised by the
// end of every completed write) and, as soon as no running write can still extend the file,
// truncates the padding away; until then size() and reads stop at that exact end. That
// truncate is the File's synchronous one: the kernel may make it wait for direct I/O in flight.
//
// Like every File, the adapter is used from one executor at a time (no internal threads).
#pragma once

#include <cstddef>
#include <memory>

#include "io/file.hpp"

namespace qnbd::io {

/// Wraps `inner` (opened with O_DIRECT) so that any request works on it; `alignment` (a power
/// of two, else rounded up to one) is what the kernel demands of offsets, lengths and addresses.
std::unique_ptr<File> make_aligned_file(std::unique_ptr<File> inner, size_t alignment);

/// The alignment direct I/O on `fd` needs: statx STATX_DIOALIGN when the kernel reports it (the
/// larger of the offset and memory alignments), 4096 otherwise.
size_t direct_io_alignment(int fd);

}  // namespace qnbd::io
