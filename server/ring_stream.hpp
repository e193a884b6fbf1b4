// A connected stream socket driven through the reactor's io_uring (io/uring.hpp): receives and
// sends are SQEs, handed to the kernel in the same submission as the file I/O of the same
// reactor pass, so a request's socket and file work cost one io_uring_enter between them.
#pragma once

#include <sys/uio.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <span>
#include <utility>
#include <vector>

#include "io/uring.hpp"

namespace qnbd::server {

namespace asio = boost::asio;
using asio::awaitable;
using boost::system::error_code;

/// Receives and sends on a socket descriptor it does not own, through the executor's ring.
/// Reads may overlap writes.
class RingStream {
  public:
    RingStream(asio::any_io_executor ex, int fd);
    RingStream(const RingStream&) = delete;
    RingStream& operator=(const RingStream&) = delete;

    /// Receives at least one byte into `buf` (as many as are ready); eof when the peer or a
    /// local shutdown ended the stream.
    awaitable<std::pair<error_code, size_t>> read_some(std::span<std::byte> buf);
    /// Fills `buf` completely, or fails (eof included).
    awaitable<error_code> read(std::span<std::byte> buf);
    /// Sends every buffer in order (gathered into sendmsg calls), or fails.
    awaitable<error_code> write(std::span<const asio::const_buffer> bufs);
    /// Called before the descriptor is closed: queued operations reach the kernel first (it
    /// holds the socket from then on, so a reused descriptor number is never touched), and
    /// later ones fail with bad_descriptor.
    void detach();

  private:
    /// What a failed operation's -errno leads to: nothing (retry: interrupted, or the socket
    /// was not ready and now is) or the error to report.
    awaitable<error_code> after_failure(int res, short events);
    /// Sends all of `iov` (advanced in place over partial sends).
    awaitable<error_code> send_all(std::vector<iovec>& iov);

    asio::any_io_executor ex_;
    io::Ring& ring_;
    int fd_;
    std::vector<iovec> iov_;  ///< The write in progress's list, kept for its capacity.
    bool writing_ = false;    ///< iov_ is in use.
};

}  // namespace qnbd::server
