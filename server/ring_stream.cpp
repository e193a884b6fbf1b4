// Socket receives and sends as io_uring operations.
#include "server/ring_stream.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/error.hpp>
#include <cerrno>
#include <climits>

namespace qnbd::server {

RingStream::RingStream(asio::any_io_executor ex, int fd)
    : ex_(std::move(ex)), ring_(io::Ring::of(ex_)), fd_(fd) {}

void RingStream::detach() {
    if (fd_ < 0) return;
    ring_.submit_now();
    fd_ = -1;
}

awaitable<error_code> RingStream::after_failure(int res, short events) {
    if (res == -EINTR) co_return error_code{};
    if (res != -EAGAIN || fd_ < 0) co_return error_code(-res, boost::system::system_category());
    // A non-blocking descriptor: the kernel answers EAGAIN instead of waiting itself. Wait for
    // readiness through the ring too, then try again.
    const int r = co_await ring_.run(
        ex_, [fd = fd_, events](io_uring_sqe* sqe) { io_uring_prep_poll_add(sqe, fd, events); });
    co_return r < 0 ? error_code(-r, boost::system::system_category()) : error_code{};
}

awaitable<std::pair<error_code, size_t>> RingStream::read_some(std::span<std::byte> buf) {
    if (buf.empty()) co_return std::pair{error_code{}, size_t{0}};
    for (;;) {
        if (fd_ < 0) co_return std::pair{error_code(asio::error::bad_descriptor), size_t{0}};
        const int r = co_await ring_.run(ex_, [fd = fd_, buf](io_uring_sqe* sqe) {
            io_uring_prep_recv(sqe, fd, buf.data(), buf.size(), 0);
        });
        if (r > 0) co_return std::pair{error_code{}, static_cast<size_t>(r)};
        if (r == 0) co_return std::pair{error_code(asio::error::eof), size_t{0}};
        if (error_code ec = co_await after_failure(r, POLLIN)) co_return std::pair{ec, size_t{0}};
    }
}

awaitable<error_code> RingStream::read(std::span<std::byte> buf) {
    while (!buf.empty()) {
        auto [ec, n] = co_await read_some(buf);
        if (ec) co_return ec;
        buf = buf.subspan(n);
    }
    co_return error_code{};
}

namespace {

/// Drops the first `n` sent bytes from `iov` starting at `first`; returns the new first entry.
size_t consume(std::vector<iovec>& iov, size_t first, size_t n) {
    for (; first < iov.size() && n >= iov[first].iov_len; ++first) n -= iov[first].iov_len;
    if (n && first < iov.size()) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + n;
        iov[first].iov_len -= n;
    }
    return first;
}

}  // namespace

awaitable<error_code> RingStream::write(std::span<const asio::const_buffer> bufs) {
    // The kept list serves one write at a time; an overlapping one (not made by this server's
    // connections) brings its own.
    std::vector<iovec> own;
    std::vector<iovec>& iov = writing_ ? own : iov_;
    const bool mine = !writing_;
    writing_ = true;
    iov.clear();
    for (const auto& b : bufs)
        if (b.size()) iov.push_back(iovec{const_cast<void*>(b.data()), b.size()});
    error_code ec = co_await send_all(iov);
    if (mine) writing_ = false;
    co_return ec;
}

awaitable<error_code> RingStream::send_all(std::vector<iovec>& iov) {
    size_t first = 0;
    while (first < iov.size()) {
        if (fd_ < 0) co_return error_code(asio::error::bad_descriptor);
        msghdr msg{};
        msg.msg_iov = iov.data() + first;
        msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
        const int r = co_await ring_.run(ex_, [fd = fd_, m = &msg](io_uring_sqe* sqe) {
            io_uring_prep_sendmsg(sqe, fd, m, MSG_NOSIGNAL);
        });
        if (r > 0) {
            first = consume(iov, first, static_cast<size_t>(r));
            continue;
        }
        if (r == 0) co_return error_code(asio::error::broken_pipe);  // Nothing taken: never spin.
        if (error_code ec = co_await after_failure(r, POLLOUT)) co_return ec;
    }
    co_return error_code{};
}

}  // namespace qnbd::server
