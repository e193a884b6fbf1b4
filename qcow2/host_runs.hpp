// Data I/O helpers of the engine: pieces of a request grouped into runs of contiguous host
// offsets (one readv/writev each), running a request's I/Os together, zeroing host ranges.
#pragma once

#include <sys/uio.h>

#include <span>
#include <vector>

#include "base/async.hpp"
#include "base/buffer.hpp"
#include "io/file.hpp"

namespace qnbd::qcow2 {

/// A piece of guest data and the host offset it lives at.
struct HostPiece {
    HostOffset host;
    std::span<std::byte> bytes;
};

/// Groups pieces into runs of contiguous host offsets (sorted by host offset; the guest
/// order inside a run may be anything), each at most IOV_MAX pieces: one readv/writev per run.
std::vector<std::vector<HostPiece>> host_runs(std::vector<HostPiece>& pieces);

/// The scatter list of one run of host_runs(), in host order.
std::vector<iovec> run_iovecs(const std::vector<HostPiece>& run);

/// Reads one run of host_runs() with a single readv; bytes past the end of the file read as
/// zeros.
awaitable<Result<void>> read_run(io::File& f, std::vector<HostPiece> run);

/// Writes one run of host_runs() with a single writev.
awaitable<Result<void>> write_run(io::File& f, std::vector<HostPiece> run);

/// Runs `tasks` concurrently and returns the first error; a single task runs inline.
awaitable<Result<void>> run_all(asio::any_io_executor ex,
                                std::vector<awaitable<Result<void>>> tasks);

/// Makes [off, off+len) read as zeros: fallocate, or written zeros where it is unsupported.
awaitable<Result<void>> zero_range(io::File& f, HostOffset off, uint64_t len);

/// Writes `data` at `host + start` and, unless the range is fresh (never written, so it reads
/// as zeros already; R13), zeroes the rest of [host + begin, host + end) alongside.
awaitable<Result<void>> write_zero_padded(asio::any_io_executor ex, io::File& f, HostOffset host,
                                          uint64_t begin, uint64_t end, uint64_t start,
                                          std::span<const std::byte> data, bool fresh);

}  // namespace qnbd::qcow2
