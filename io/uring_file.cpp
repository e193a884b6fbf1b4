// File over io_uring: every read, write, fallocate and fdatasync is one operation on the
// io_context's ring (io/uring.hpp), so any number of them run at once on one file.
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <system_error>
#include <vector>

#include "base/buffer.hpp"
#include "io/aligned_file.hpp"
#include "io/file.hpp"
#include "io/uring.hpp"

namespace qnbd::io {
namespace {

Error errno_error(int err, const std::string& what, const std::string& path) {
    return Error{err, what + " " + path + ": " + std::strerror(err)};
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

size_t total(std::span<const iovec> iov) {
    size_t n = 0;
    for (auto& v : iov) n += v.iov_len;
    return n;
}

class UringFile final : public File {
  public:
    UringFile(asio::any_io_executor ex, int fd, std::string path, bool direct)
        : ex_(ex), ring_(Ring::of(ex)), fd_(fd), path_(std::move(path)), direct_(direct) {}
    ~UringFile() override { ::close(fd_); }

    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        const size_t want = total(iov);
        if (iov.size() <= IOV_MAX) {
            // One operation over the caller's list: the common case, no copy of the list.
            int r = co_await transfer(false, off.value, iov);
            if (r >= 0) co_return static_cast<size_t>(r);  // short only at end of file
            if (r != -EINTR && r != -EAGAIN) co_return errno_error(-r, "read from", path_);
        }
        std::vector<iovec> rest(iov.begin(), iov.end());
        size_t done = 0;
        while (done < want) {
            const unsigned cnt = static_cast<unsigned>(std::min<size_t>(rest.size(), IOV_MAX));
            const uint64_t at = off.value + done;
            int r = co_await ring_.run(ex_, [&](io_uring_sqe* sqe) {
                io_uring_prep_readv(sqe, fd_, rest.data(), cnt, at);
            });
            if (r == -EINTR || r == -EAGAIN) continue;
            if (r < 0) co_return errno_error(-r, "read from", path_);
            const size_t n = static_cast<size_t>(r);
            if (n == 0) break;
            done += n;
            // A short read of a regular file means end of file: reading on at an unaligned
            // offset would fail under O_DIRECT if a concurrent write has grown the file.
            if (n < total(std::span(rest).first(cnt))) break;
            consume(rest, n);
        }
        co_return done;
    }

    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        const size_t want = total(iov);
        size_t done = 0;
        if (iov.size() <= IOV_MAX) {
            int r = co_await transfer(true, off.value, iov);
            if (r >= 0 && static_cast<size_t>(r) == want) co_return ok();
            if (r < 0 && r != -EINTR && r != -EAGAIN) co_return errno_error(-r, "write to", path_);
            if (r > 0) done = static_cast<size_t>(r);
        }
        std::vector<iovec> rest(iov.begin(), iov.end());
        consume(rest, done);
        while (done < want) {
            const unsigned cnt = static_cast<unsigned>(std::min<size_t>(rest.size(), IOV_MAX));
            const uint64_t at = off.value + done;
            int r = co_await ring_.run(ex_, [&](io_uring_sqe* sqe) {
                io_uring_prep_writev(sqe, fd_, rest.data(), cnt, at);
            });
            if (r == -EINTR || r == -EAGAIN) continue;
            if (r < 0) co_return errno_error(-r, "write to", path_);
            if (r == 0) co_return Error{EIO, "write to " + path_ + " made no progress"};
            done += static_cast<size_t>(r);
            consume(rest, static_cast<size_t>(r));
        }
        co_return ok();
    }

    awaitable<Result<void>> fallocate(Fallocate mode, HostOffset off, uint64_t len) override {
        const int flags = mode == Fallocate::Allocate ? 0
                          : mode == Fallocate::PunchHole
                              ? FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
                              : FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE;
        int r = co_await ring_.run(ex_, [&](io_uring_sqe* sqe) {
            io_uring_prep_fallocate(sqe, fd_, flags, static_cast<off_t>(off.value),
                                    static_cast<off_t>(len));
        });
        if (r < 0) co_return errno_error(-r, "fallocate on", path_);
        co_return ok();
    }

    awaitable<Result<void>> sync() override {
        int r = co_await ring_.run(
            ex_, [&](io_uring_sqe* sqe) { io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC); });
        if (r < 0) co_return errno_error(-r, "fdatasync of", path_);
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
    /// One read or write of `iov` (at most IOV_MAX entries) at `at`; the CQE result.
    awaitable<int> transfer(bool write, uint64_t at, std::span<const iovec> iov) {
        co_return co_await ring_.run(ex_, [&](io_uring_sqe* sqe) {
            const unsigned n = static_cast<unsigned>(iov.size());
            if (n == 1 && write)
                io_uring_prep_write(sqe, fd_, iov[0].iov_base, iov[0].iov_len, at);
            else if (n == 1)
                io_uring_prep_read(sqe, fd_, iov[0].iov_base, iov[0].iov_len, at);
            else if (write)
                io_uring_prep_writev(sqe, fd_, iov.data(), n, at);
            else
                io_uring_prep_readv(sqe, fd_, iov.data(), n, at);
        });
    }

    asio::any_io_executor ex_;
    Ring& ring_;
    int fd_;
    std::string path_;
    bool direct_;
};

}  // namespace

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
    std::unique_ptr<File> file;
    try {
        file.reset(new UringFile(ex, fd, path, flags.direct));
    } catch (const std::system_error& e) {
        ::close(fd);
        return Error{e.code().value(), "cannot set up io_uring for " + path + ": " + e.what()};
    }
    if (flags.direct) return make_aligned_file(std::move(file), direct_io_alignment(fd));
    return file;
}

}  // namespace qnbd::io
