// What the fuzz targets that run the engine share: one io_context per process (so its io_uring
// is set up once), a scratch directory on tmpfs, a file opener suited to it, and logging that
// stays silent but aborts on the engine's and server's internal-error messages.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/file.hpp"

namespace qnbd::fuzz {

namespace asio = boost::asio;

/// The io_context every iteration runs on.
asio::io_context& io();

/// Runs `aw` on io() until the io_context runs out of work: the coroutine, and every operation
/// it started, has finished. An exception escaping it is rethrown (libFuzzer then reports the
/// input); a coroutine that never completes, or a wait left pending after it, shows up as a
/// libFuzzer timeout.
void run(asio::awaitable<void> aw);

/// Path of `name` in this process's scratch directory (on /dev/shm when it is writable),
/// which is created on first use and removed at exit.
std::string scratch(const std::string& name);

/// Replaces the file at `path` with `bytes`.
void write_file(const std::string& path, std::span<const std::byte> bytes);

/// The contents of the file at `path` (empty if it cannot be read).
std::vector<std::byte> read_file(const std::string& path);

/// Copies the file at `from` over `to`.
void copy_file(const std::string& from, const std::string& to);

/// Log messages about internal errors (exceptions inside the engine or a request, critical
/// messages) abort with the message; everything else is dropped.
void abort_on_internal_errors();

/// io::open_file for the scratch directory on tmpfs, with two changes: fallocate(Allocate)
/// past 64 MiB of file fails with ENOTSUP (the engine then stops preallocating), so a fuzzed
/// virtual size cannot fill tmpfs; and sync() only yields to the reactor once and succeeds
/// (tmpfs has nothing to write back; io_uring would hand the fdatasync to a kernel worker
/// thread and cost a wake-up per call).
Result<std::unique_ptr<io::File>> open_file(asio::any_io_executor ex, const std::string& path,
                                            io::OpenFlags flags);

}  // namespace qnbd::fuzz
