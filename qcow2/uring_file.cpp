// File over io_uring: reads and writes through Asio's random_access_file (io_uring backend);
// fdatasync and fallocate run on a small thread pool so the reactor thread never blocks.
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/random_access_file.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstring>
#include <vector>

#include "qcow2/aligned_file.hpp"
#include "qcow2/buffer.hpp"
#include "qcow2/io.hpp"

namespace qnbd {

const std::byte* zero_page() {
    static const Buffer page(kZeroPageSize);
    return page.data();
}

}  // namespace qnbd

namespace qnbd::io {
namespace {

using asio::as_tuple;
using asio::use_awaitable;

Error errno_error(int err, const std::string& what, const std::string& path) {
    return Error{err, what + " " + path + ": " + std::strerror(err)};
}

/// The pool that runs blocking file system calls.
asio::thread_pool& blocking_pool() {
    static asio::thread_pool pool(2);
    return pool;
}

/// Runs `fn` (returning an errno, 0 on success) on the blocking pool and resumes on the
/// caller's executor.
template <class Fn>
awaitable<int> run_blocking(Fn fn) {
    co_return co_await asio::async_initiate<decltype(use_awaitable), void(int)>(
        [fn = std::move(fn)](auto handler) mutable {
            auto ex = asio::get_associated_executor(handler);
            asio::post(
                blocking_pool(), [fn = std::move(fn), handler = std::move(handler), ex]() mutable {
                    int err = fn();
                    asio::post(ex, [handler = std::move(handler), err]() mutable { handler(err); });
                });
        },
        use_awaitable);
}

/// Advances a scatter list past `n` bytes.
void consume(std::vector<iovec>& iov, size_t n) {
    size_t i = 0;
    while (i < iov.size() && n >= iov[i].iov_len) n -= iov[i++].iov_len;
    iov.erase(iov.begin(), iov.begin() + static_cast<ptrdiff_t>(i));
    if (n && !iov.empty()) {
        iov[0].iov_base = static_cast<char*>(iov[0].iov_base) + n;
        iov[0].iov_len -= n;
    }
}

/// Asio buffer views over an iovec list (at most IOV_MAX entries per call).
std::vector<asio::mutable_buffer> to_buffers(const std::vector<iovec>& iov) {
    std::vector<asio::mutable_buffer> b;
    b.reserve(std::min<size_t>(iov.size(), IOV_MAX));
    for (size_t i = 0; i < iov.size() && i < IOV_MAX; ++i)
        b.emplace_back(iov[i].iov_base, iov[i].iov_len);
    return b;
}

size_t total(std::span<const iovec> iov) {
    size_t n = 0;
    for (auto& v : iov) n += v.iov_len;
    return n;
}

class UringFile final : public File {
  public:
    UringFile(asio::any_io_executor ex, int fd, std::string path, bool direct)
        : file_(ex), fd_(fd), path_(std::move(path)), direct_(direct) {
        file_.assign(fd);
    }

    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        std::vector<iovec> rest(iov.begin(), iov.end());
        size_t done = 0;
        const size_t want = total(iov);
        while (done < want) {
            auto [ec, n] = co_await file_.async_read_some_at(off.value + done, to_buffers(rest),
                                                             as_tuple(use_awaitable));
            if (ec == asio::error::eof || (!ec && n == 0)) break;
            if (ec) co_return errno_error(ec.value(), "read from", path_);
            done += n;
            // A short read of a regular file means end of file: reading on at an unaligned
            // offset would fail under O_DIRECT if a concurrent write has grown the file.
            if (n < total(rest)) break;
            consume(rest, n);
        }
        co_return done;
    }

    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        std::vector<iovec> rest(iov.begin(), iov.end());
        size_t done = 0;
        const size_t want = total(iov);
        while (done < want) {
            std::vector<asio::const_buffer> bufs;
            for (auto& b : to_buffers(rest)) bufs.emplace_back(b.data(), b.size());
            auto [ec, n] =
                co_await file_.async_write_some_at(off.value + done, bufs, as_tuple(use_awaitable));
            if (ec) co_return errno_error(ec.value(), "write to", path_);
            if (n == 0) co_return Error{EIO, "write to " + path_ + " made no progress"};
            done += n;
            consume(rest, n);
        }
        co_return ok();
    }

    awaitable<Result<void>> fallocate(Fallocate mode, HostOffset off, uint64_t len) override {
        int fd = fd_;
        int flags = FALLOC_FL_KEEP_SIZE |
                    (mode == Fallocate::PunchHole ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE);
        int err = co_await run_blocking([=] {
            return ::fallocate(fd, flags, static_cast<off_t>(off.value), static_cast<off_t>(len)) ==
                           0
                       ? 0
                       : errno;
        });
        if (err) co_return errno_error(err, "fallocate on", path_);
        co_return ok();
    }

    awaitable<Result<void>> sync() override {
        int fd = fd_;
        int err = co_await run_blocking([fd] { return ::fdatasync(fd) == 0 ? 0 : errno; });
        if (err) co_return errno_error(err, "fdatasync of", path_);
        co_return ok();
    }

    Result<uint64_t> size() const override {
        struct stat st;
        if (::fstat(fd_, &st) != 0) return errno_error(errno, "fstat of", path_);
        return static_cast<uint64_t>(st.st_size);
    }

    Result<void> truncate(uint64_t size) override {
        if (::ftruncate(fd_, static_cast<off_t>(size)) != 0)
            return errno_error(errno, "truncate of", path_);
        return ok();
    }

    bool direct() const override { return direct_; }
    const std::string& path() const override { return path_; }

  private:
    asio::random_access_file file_;
    int fd_;
    std::string path_;
    bool direct_;
};

}  // namespace

awaitable<Result<size_t>> File::read(HostOffset off, std::span<std::byte> buf) {
    iovec v{buf.data(), buf.size()};
    co_return co_await readv(off, std::span<const iovec>(&v, 1));
}

awaitable<Result<void>> File::read_zero_padded(HostOffset off, std::span<std::byte> buf) {
    auto n = co_await read(off, buf);
    if (!n) co_return n.error();
    if (*n < buf.size()) std::memset(buf.data() + *n, 0, buf.size() - *n);
    co_return ok();
}

awaitable<Result<void>> File::write(HostOffset off, std::span<const std::byte> buf) {
    iovec v{const_cast<std::byte*>(buf.data()), buf.size()};
    co_return co_await writev(off, std::span<const iovec>(&v, 1));
}

Result<std::unique_ptr<File>> open_file(asio::any_io_executor ex, const std::string& path,
                                        OpenFlags flags) {
    int oflags = O_CLOEXEC | (flags.writable ? O_RDWR : O_RDONLY);
    if (flags.create) oflags |= O_CREAT | O_TRUNC;
    if (flags.direct) oflags |= O_DIRECT;
    int fd = ::open(path.c_str(), oflags, 0644);
    if (fd < 0) return errno_error(errno, "cannot open", path);
    struct stat st;
    if (::fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
        ::close(fd);
        return Error{EINVAL, path + " is not a regular file or block device"};
    }
    auto file = std::unique_ptr<File>(new UringFile(ex, fd, path, flags.direct));
    if (flags.direct) return make_aligned_file(std::move(file), direct_io_alignment(fd));
    return file;
}

}  // namespace qnbd::io
