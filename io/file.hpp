// The engine's I/O seam: every byte the engine reads or writes goes through File.
// Production uses io_uring (UringFile); tests may substitute a recording or fault-injecting File.
#pragma once

#include <sys/uio.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "base/result.hpp"
#include "base/types.hpp"
#include "io/image_lock.hpp"

namespace qnbd::io {

namespace asio = boost::asio;
using asio::awaitable;

/// How fallocate() changes a range.
enum class Fallocate {
    PunchHole,  ///< Deallocate the range (reads as zeros), keep the file size.
    ZeroRange,  ///< Make the range read as zeros, keep it allocated if possible.
    Allocate,   ///< Reserve blocks (reading as zeros) for the range, growing the file to cover it.
};

/// How the file is opened: page cache or O_DIRECT, and the image lock it holds.
struct OpenFlags {
    bool writable = false;
    bool create = false;  ///< Create (or truncate) the file.
    bool direct = false;  ///< O_DIRECT; open_file wraps the file so any request still works.
    /// QEMU-compatible locks taken right after open and held while the file is open
    /// (io/image_lock.hpp); none when empty.
    std::optional<LockRequest> lock;
};

/// Which kind of region seek() looks for.
enum class Seek {
    Data,  ///< The next byte that holds data (SEEK_DATA).
    Hole,  ///< The next byte of a hole, or the end of the file (SEEK_HOLE).
};

/// Asynchronous random-access file: transfers (readv, writev), space management (fallocate,
/// truncate), durability (sync), the layout of holes (seek) and its size. Every file the engine
/// touches is one of these; tests wrap them to record operations and inject faults.
class File {
  public:
    virtual ~File() = default;
    /// Reads into the scatter list at `off`; returns bytes read, short only at end of file.
    virtual awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) = 0;
    /// Writes the gather list at `off`, all of it or an error.
    virtual awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) = 0;
    /// Punches a hole or zeroes a range; ENOTSUP/EOPNOTSUPP if the file system cannot.
    virtual awaitable<Result<void>> fallocate(Fallocate mode, HostOffset off, uint64_t len) = 0;
    /// Makes every completed write durable (fdatasync).
    virtual awaitable<Result<void>> sync() = 0;
    /// Current size of the file in bytes.
    virtual Result<uint64_t> size() const = 0;
    /// Sets the file size (trimming the reserved tail at close, O_DIRECT padding).
    virtual Result<void> truncate(uint64_t size) = 0;
    /// The first offset at or after `from` that starts `what`; the file size when there is no
    /// more data. Files that cannot tell report data everywhere (the default).
    virtual awaitable<Result<uint64_t>> seek(HostOffset from, Seek what);
    /// True when the file was opened with O_DIRECT.
    virtual bool direct() const = 0;
    /// The path the file was opened from (for messages).
    virtual const std::string& path() const = 0;

    /// Reads into one buffer; returns bytes read (short only at end of file).
    awaitable<Result<size_t>> read(HostOffset off, std::span<std::byte> buf);
    /// Reads exactly buf.size() bytes; bytes past end of file read as zeros.
    awaitable<Result<void>> read_zero_padded(HostOffset off, std::span<std::byte> buf);
    /// Writes one buffer.
    awaitable<Result<void>> write(HostOffset off, std::span<const std::byte> buf);
};

/// Opens one file of an image. io::open_file in production; tests substitute recording or
/// fault-injecting files through it.
using FileOpener = std::function<Result<std::unique_ptr<File>>(asio::any_io_executor,
                                                               const std::string&, OpenFlags)>;

/// Opens `path` for asynchronous I/O on the io_uring of `ex`'s io_context (fdatasync and
/// fallocate included, so the reactor thread never blocks).
Result<std::unique_ptr<File>> open_file(asio::any_io_executor ex, const std::string& path,
                                        OpenFlags flags);

}  // namespace qnbd::io
