// A File decorator for tests: forwards every operation to an inner File and records it (kind,
// file, offset, length, issue and completion order, optionally the written bytes) in a log
// shared by every file of an image. The log can also inject faults: fail the Nth operation of a
// kind once (EIO by default), or fail every write after N more succeed (ENOSPC by default, a
// full disk). An injected failure never reaches the inner file, so nothing of it is written.
// recording_opener() plugs it into OpenOptions::file_opener.
#pragma once

#include <sys/uio.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "io/file.hpp"

namespace qnbd::test {

namespace asio = boost::asio;
using asio::awaitable;

/// Total length of a scatter/gather list.
inline uint64_t iov_bytes(std::span<const iovec> iov) {
    uint64_t n = 0;
    for (const auto& v : iov) n += v.iov_len;
    return n;
}

/// What a recorded operation did.
enum class OpKind { Read, Write, Sync, Fallocate, Truncate };

/// The name of an operation kind, for messages.
inline const char* op_name(OpKind k) {
    switch (k) {
        case OpKind::Read:
            return "read";
        case OpKind::Write:
            return "write";
        case OpKind::Sync:
            return "sync";
        case OpKind::Fallocate:
            return "fallocate";
        case OpKind::Truncate:
            return "truncate";
    }
    return "?";
}

/// One operation on one file. `seq` and `done` come from the same clock, so "a completed
/// before b was issued" is `a.done < b.seq`.
struct OpRecord {
    uint64_t seq = 0;   ///< When it was issued.
    uint64_t done = 0;  ///< When it completed (0 while in flight).
    OpKind kind = OpKind::Read;
    std::string path;
    uint64_t offset = 0;  ///< Read/write/fallocate: start; truncate: new size.
    uint64_t length = 0;
    int error = 0;                ///< errno it failed with, 0 on success.
    bool injected = false;        ///< Failed by fault injection (not forwarded).
    std::vector<std::byte> data;  ///< Bytes written, when OpLog::set_record_data(true).

    uint64_t end() const { return offset + length; }
};

/// The shared log and fault plan. Thread-safe; the engine calls it from its executor.
class OpLog {
  public:
    /// Keeps a copy of every written payload in OpRecord::data.
    void set_record_data(bool on) {
        std::lock_guard g(mu_);
        record_data_ = on;
    }

    /// The `n`-th operation of `kind` from now (1 = the next one), on any file of the log,
    /// fails once with `err`.
    void fail_nth(OpKind kind, uint64_t n, int err = EIO) {
        std::lock_guard g(mu_);
        nth_.push_back(NthFault{kind, n == 0 ? 1 : n, err});
    }
    /// After `n` more successful writes, every write fails with `err` until clear_faults().
    void fail_writes_after(uint64_t n, int err = ENOSPC) {
        std::lock_guard g(mu_);
        writes_left_ = n;
        writes_err_ = err;
    }
    /// Disarms every fault.
    void clear_faults() {
        std::lock_guard g(mu_);
        nth_.clear();
        writes_err_ = 0;
    }

    /// A copy of every record so far, in issue order.
    std::vector<OpRecord> ops() const {
        std::lock_guard g(mu_);
        return ops_;
    }
    /// Records issued at or after clock value `from` (see clock()).
    std::vector<OpRecord> ops_since(uint64_t from) const {
        std::lock_guard g(mu_);
        std::vector<OpRecord> out;
        for (const auto& r : ops_)
            if (r.seq >= from) out.push_back(r);
        return out;
    }
    /// The current clock: every later issue or completion gets a larger value.
    uint64_t clock() const {
        std::lock_guard g(mu_);
        return clock_ + 1;
    }
    /// Number of records of `kind` (on `path`, if not empty).
    size_t count(OpKind kind, const std::string& path = "") const {
        std::lock_guard g(mu_);
        size_t n = 0;
        for (const auto& r : ops_)
            if (r.kind == kind && (path.empty() || r.path == path)) ++n;
        return n;
    }

    /// Records the start of an operation; returns its index and the errno to inject (0: none).
    std::pair<size_t, int> begin(OpKind kind, const std::string& path, uint64_t off, uint64_t len,
                                 std::span<const iovec> payload = {}) {
        std::lock_guard g(mu_);
        OpRecord r;
        r.seq = ++clock_;
        r.kind = kind;
        r.path = path;
        r.offset = off;
        r.length = len;
        if (record_data_ && kind == OpKind::Write) {
            for (const auto& v : payload) {
                auto* p = static_cast<const std::byte*>(v.iov_base);
                r.data.insert(r.data.end(), p, p + v.iov_len);
            }
        }
        const int err = fault_for(kind);
        if (err) {
            r.error = err;
            r.injected = true;
            r.done = ++clock_;
        }
        ops_.push_back(std::move(r));
        return {ops_.size() - 1, err};
    }
    /// Records the completion of operation `index` with `err` (0: success).
    void end(size_t index, int err) {
        std::lock_guard g(mu_);
        ops_[index].done = ++clock_;
        ops_[index].error = err;
    }

  private:
    struct NthFault {
        OpKind kind;
        uint64_t left;
        int err;
    };

    /// The errno to inject into the next operation of `kind` (0: none); counts it down.
    int fault_for(OpKind kind) {
        int err = 0;
        for (auto it = nth_.begin(); it != nth_.end();) {
            if (it->kind == kind && --it->left == 0) {
                if (!err) err = it->err;
                it = nth_.erase(it);
            } else {
                ++it;
            }
        }
        if (kind == OpKind::Write && writes_err_ && !err) {
            if (writes_left_ == 0) return writes_err_;
            --writes_left_;
        }
        return err;
    }

    mutable std::mutex mu_;
    std::vector<OpRecord> ops_;
    uint64_t clock_ = 0;
    bool record_data_ = false;
    std::vector<NthFault> nth_;
    uint64_t writes_left_ = 0;
    int writes_err_ = 0;
};

/// Forwards to `inner` and records everything in `log`.
class RecordingFile final : public io::File {
  public:
    RecordingFile(std::unique_ptr<io::File> inner, std::shared_ptr<OpLog> log)
        : inner_(std::move(inner)), log_(std::move(log)) {}

    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        auto [i, err] = log_->begin(OpKind::Read, path(), off.value, iov_bytes(iov));
        if (err) co_return co_await fail_later(err, "read", off.value);
        auto r = co_await inner_->readv(off, iov);
        log_->end(i, r ? 0 : r.error().code);
        co_return r;
    }

    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        auto [i, err] = log_->begin(OpKind::Write, path(), off.value, iov_bytes(iov), iov);
        if (err) co_return co_await fail_later(err, "write", off.value);
        co_return finish(i, co_await inner_->writev(off, iov));
    }

    awaitable<Result<void>> fallocate(io::Fallocate mode, HostOffset off, uint64_t len) override {
        auto [i, err] = log_->begin(OpKind::Fallocate, path(), off.value, len);
        if (err) co_return co_await fail_later(err, "fallocate", off.value);
        co_return finish(i, co_await inner_->fallocate(mode, off, len));
    }

    awaitable<Result<void>> sync() override {
        auto [i, err] = log_->begin(OpKind::Sync, path(), 0, 0);
        if (err) co_return co_await fail_later(err, "sync", 0);
        co_return finish(i, co_await inner_->sync());
    }

    Result<uint64_t> size() const override { return inner_->size(); }

    Result<void> truncate(uint64_t size) override {
        auto [i, err] = log_->begin(OpKind::Truncate, path(), size, 0);
        if (err) return injected(err, "truncate", size);
        return finish(i, inner_->truncate(size));
    }

    bool direct() const override { return inner_->direct(); }
    const std::string& path() const override { return inner_->path(); }

  private:
    /// An injected failure completes asynchronously, as a real one would: other coroutines
    /// run before the caller sees it.
    awaitable<Error> fail_later(int err, const char* what, uint64_t off) const {
        co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
        co_return injected(err, what, off);
    }
    /// The error an injected fault reports.
    Error injected(int err, const char* what, uint64_t off) const {
        return Error{err, std::string("injected fault: ") + what + " of " + path() + " at " +
                              std::to_string(off) + ": " + std::strerror(err)};
    }
    /// Records the completion of operation `index` and passes its result on.
    Result<void> finish(size_t index, Result<void> r) {
        log_->end(index, r ? 0 : r.error().code);
        return r;
    }

    std::unique_ptr<io::File> inner_;
    std::shared_ptr<OpLog> log_;
};

/// The signature of OpenOptions::file_opener.
using FileOpener = std::function<Result<std::unique_ptr<io::File>>(
    asio::any_io_executor, const std::string&, io::OpenFlags)>;

/// A file opener that opens with io::open_file (io_uring) and records into `log`.
inline FileOpener recording_opener(std::shared_ptr<OpLog> log) {
    return [log](asio::any_io_executor ex, const std::string& path,
                 io::OpenFlags flags) -> Result<std::unique_ptr<io::File>> {
        auto f = io::open_file(ex, path, flags);
        if (!f) return f.error();
        return std::unique_ptr<io::File>(std::make_unique<RecordingFile>(std::move(*f), log));
    };
}

}  // namespace qnbd::test
