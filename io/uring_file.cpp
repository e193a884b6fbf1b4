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
#include "io/offload.hpp"
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
    UringFile(asio::any_io_executor ex, int fd, std::string path, bool direct, ImageLock lock)
        : ex_(ex),
          ring_(Ring::of(ex)),
          fd_(fd),
          path_(std::move(path)),
          direct_(direct),
          lock_(std::move(lock)) {}
    ~UringFile() override { ::close(fd_); }

    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        return transfer_all(false, off.value, iov);
    }

    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        auto n = co_await transfer_all(true, off.value, iov);
        if (!n) co_return n.error();
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

    awaitable<Result<uint64_t>> seek(HostOffset from, Seek what) override {
        // lseek has no io_uring opcode and may block (NFS, FUSE): run it off the reactor.
        // pread/pwrite-style I/O elsewhere never uses the file position, so sharing it is safe.
        const int fd = fd_;
        const int whence = what == Seek::Data ? SEEK_DATA : SEEK_HOLE;
        const auto [pos, err] = co_await offload([fd, from, whence] {
            const off_t p = ::lseek(fd, static_cast<off_t>(from.value), whence);
            return std::pair<off_t, int>{p, p < 0 ? errno : 0};
        });
        if (pos >= 0) co_return static_cast<uint64_t>(pos);
        if (err == ENXIO) {  // No data at or after `from`: the rest is a hole up to the end.
            auto s = size();
            if (!s) co_return s.error();
            co_return what == Seek::Data ? *s : std::max(*s, from.value);
        }
        if (err == EINVAL || err == ENOTSUP || err == EOPNOTSUPP)
            co_return co_await File::seek(from, what);  // no hole support: all data
        co_return errno_error(err, "lseek in", path_);
    }

    bool direct() const override { return direct_; }
    const std::string& path() const override { return path_; }

  private:
    /// Reads or writes the whole list at `at`: a single operation over the caller's list in
    /// the common case, then (for lists over IOV_MAX entries, short writes, EINTR) the rest.
    /// A read stops at its first short transfer: the end of the file (going on at an unaligned
    /// offset would fail under O_DIRECT if a concurrent write has grown the file).
    awaitable<Result<size_t>> transfer_all(bool write, uint64_t at, std::span<const iovec> iov) {
        const size_t want = total(iov);
        std::vector<iovec> rest;  // the part not transferred yet, once it differs from `iov`
        std::span<const iovec> left = iov;
        size_t done = 0;
        while (done < want) {
            const auto batch = left.first(std::min<size_t>(left.size(), IOV_MAX));
            const int r = co_await transfer(write, at + done, batch);
            if (r == -EINTR || r == -EAGAIN) continue;
            if (r < 0) co_return errno_error(-r, write ? "write to" : "read from", path_);
            if (r == 0 && write) co_return Error{EIO, "write to " + path_ + " made no progress"};
            done += static_cast<size_t>(r);
            if (r == 0 || (!write && static_cast<size_t>(r) < total(batch))) break;
            if (rest.empty()) rest.assign(left.begin(), left.end());
            consume(rest, static_cast<size_t>(r));
            left = rest;
        }
        co_return done;
    }

    /// One read or write of `iov` (at most IOV_MAX entries) at `at`; the CQE result. Not a
    /// coroutine: what the SQE needs is captured by value (the list itself stays the caller's).
    awaitable<int> transfer(bool write, uint64_t at, std::span<const iovec> iov) {
        return ring_.run(ex_, [fd = fd_, write, at, iov](io_uring_sqe* sqe) {
            const unsigned n = static_cast<unsigned>(iov.size());
            if (n == 1 && write)
                io_uring_prep_write(sqe, fd, iov[0].iov_base, iov[0].iov_len, at);
            else if (n == 1)
                io_uring_prep_read(sqe, fd, iov[0].iov_base, iov[0].iov_len, at);
            else if (write)
                io_uring_prep_writev(sqe, fd, iov.data(), n, at);
            else
                io_uring_prep_readv(sqe, fd, iov.data(), n, at);
        });
    }

    asio::any_io_executor ex_;
    Ring& ring_;
    int fd_;
    std::string path_;
    bool direct_;
    ImageLock lock_;  ///< Held for as long as the file is open.
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
    ImageLock lock;
    if (flags.lock) {
        auto l = ImageLock::acquire(fd, path, *flags.lock);
        if (!l) {
            ::close(fd);
            return l.error();
        }
        lock = std::move(*l);
    }
    std::unique_ptr<File> file;
    try {
        file.reset(new UringFile(ex, fd, path, flags.direct, std::move(lock)));
    } catch (const std::system_error& e) {
        ::close(fd);
        return Error{e.code().value(), "cannot set up io_uring for " + path + ": " + e.what()};
    }
    if (flags.direct) return make_aligned_file(std::move(file), direct_io_alignment(fd));
    return file;
}

}  // namespace qnbd::io
