// A File decorator for tests: forwards every operation to an inner File and records it (kind,
// file, offset, length, issue and completion order, optionally the written bytes) in a log
// shared by every file of an image. The log can inject faults: fail the Nth operation of a
// kind once (EIO by default), or fail every write after N more succeed (ENOSPC by default, a
// full disk). An injected failure never reaches the inner file, so nothing of it is written.
// The log can also hold operations: a Hold keeps matching operations issued but not forwarded
// until it is released, so that a test can keep one request's I/O in flight while it starts
// others. recording_opener() plugs it into OpenOptions::file_opener.
//
// Holding is for one single-threaded executor (an io_context run by one thread): held
// operations and waiters resume through the executor, never by blocking the thread.
#pragma once

#include <sys/uio.h>

#include <catch2/catch.hpp>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "base/async.hpp"
#include "io/file.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/run.hpp"

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
    bool held = false;            ///< Kept waiting by a Hold before it was forwarded.
    std::vector<std::byte> data;  ///< Bytes written, when OpLog::set_record_data(true).
    io::Fallocate mode = io::Fallocate::PunchHole;  ///< What a fallocate did.

    /// The first byte after the range.
    uint64_t end() const { return offset + length; }
    /// True when the range overlaps [from, to).
    bool overlaps(uint64_t from, uint64_t to) const { return offset < to && from < end(); }
};

/// Which operations a Hold catches.
using OpMatch = std::function<bool(const OpRecord&)>;

/// Matches operations of `kind` on `path` (on any file when `path` is empty).
inline OpMatch op_is(OpKind kind, std::string path = "") {
    return [kind, path](const OpRecord& r) {
        return r.kind == kind && (path.empty() || r.path == path);
    };
}

/// Matches operations of `kind` on `path` whose range overlaps [from, to) of the file.
inline OpMatch op_in(OpKind kind, std::string path, uint64_t from, uint64_t to) {
    return [kind, path, from, to](const OpRecord& r) {
        return r.kind == kind && r.path == path && r.overlaps(from, to);
    };
}

/// How long a test waits for an operation to be caught or a request to finish before it
/// fails instead of hanging.
inline constexpr std::chrono::milliseconds kGateTimeout{10000};

/// What a Hold shares with the log: which operations it catches and which it keeps waiting.
struct HoldState {
    OpMatch match;
    size_t skip = 0;             ///< Matching operations still to let through first.
    size_t limit = SIZE_MAX;     ///< How many more operations it may catch.
    bool released = false;       ///< Released: catches nothing more, holds nothing.
    size_t waiting = 0;          ///< Caught operations still waiting for release.
    std::vector<size_t> caught;  ///< Log indices of the operations it caught, in issue order.
    Notifier changed;            ///< Notified whenever it catches an operation.
    Notifier gate;               ///< Caught operations wait on it until release.
};

class OpLog;

/// A gate on the operations of a log (see OpLog::hold). Releases what it holds when destroyed,
/// so a failing test does not leave requests waiting for ever.
class Hold {
  public:
    Hold(OpLog& log, std::shared_ptr<HoldState> st) : log_(&log), st_(std::move(st)) {}
    Hold(Hold&& o) noexcept : log_(o.log_), st_(std::move(o.st_)) {}
    Hold& operator=(Hold&&) = delete;
    ~Hold() { release(); }

    /// Number of operations caught so far (still held, or released since).
    size_t caught() const { return st_->caught.size(); }
    /// Waits until `n` operations have been caught, at most `timeout`; false if fewer were.
    awaitable<bool> wait_caught(size_t n = 1, std::chrono::milliseconds timeout = kGateTimeout) {
        // A named condition: GCC 12 destroys a temporary that initializes a by-value coroutine
        // parameter inside a co_await expression twice.
        const std::function<bool()> cond = [st = st_, n] { return st->caught.size() >= n; };
        co_return co_await wait_for(st_->changed, cond, timeout);
    }
    /// The records of the operations caught so far, as the log has them now.
    std::vector<OpRecord> records() const;
    /// The record of the first operation caught (the test fails if there is none).
    OpRecord first() const;
    /// Catches nothing more; what it holds stays held until release().
    void freeze() { st_->limit = 0; }
    /// Lets every held operation go on (through the executor) and catches nothing more.
    void release();
    /// True once release() was called.
    bool released() const { return !st_ || st_->released; }

  private:
    OpLog* log_;
    std::shared_ptr<HoldState> st_;
};

/// The shared log, fault plan and holds. Recording and faults are thread-safe; holds and
/// settle() belong to one single-threaded executor.
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
    /// Operations matching `match` fail with `err`: the first one only, or with `persistent`
    /// every one until clear_faults().
    void fail_matching(OpMatch match, int err, bool persistent) {
        std::lock_guard g(mu_);
        matching_.push_back(MatchFault{std::move(match), err, persistent});
    }
    /// Disarms every fault.
    void clear_faults() {
        std::lock_guard g(mu_);
        nth_.clear();
        matching_.clear();
        writes_err_ = 0;
    }

    /// Holds operations matching `match` issued from now on: after letting `skip` of them
    /// through, it keeps up to `limit` of them issued but not forwarded to the file until the
    /// returned Hold is released. An operation failed by fault injection is never held.
    Hold hold(OpMatch match, size_t skip = 0, size_t limit = SIZE_MAX) {
        auto st = std::make_shared<HoldState>();
        st->match = std::move(match);
        st->skip = skip;
        st->limit = limit;
        std::lock_guard g(mu_);
        holds_.push_back(st);
        return Hold(*this, st);
    }
    /// Lets the held operations of `st` go on and stops it catching more.
    void release(HoldState& st) {
        {
            std::lock_guard g(mu_);
            if (st.released) return;
            st.released = true;
            held_now_ -= st.waiting;
            st.waiting = 0;
            std::erase_if(holds_, [&](const auto& h) { return h.get() == &st; });
        }
        st.gate.notify_all();
        st.changed.notify_all();
    }
    /// Waits while a Hold keeps operation `index` (just begun) from being forwarded.
    awaitable<void> pass(size_t index) {
        std::shared_ptr<HoldState> st;
        {
            std::lock_guard g(mu_);
            auto it = gates_.find(index);
            if (it != gates_.end()) {
                st = std::move(it->second);
                gates_.erase(it);
            }
        }
        while (st && !st->released) co_await st->gate.wait();
    }
    /// Lets the executor run until every operation issued so far has completed or is held and
    /// nothing was issued or completed for `quiet_turns` turns in a row: whatever can run
    /// without the held operations has then run as far as it can. False after `timeout`.
    awaitable<bool> settle(int quiet_turns = 32, std::chrono::milliseconds timeout = kGateTimeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        uint64_t last = UINT64_MAX;
        for (int quiet = 0; quiet < quiet_turns;) {
            if (std::chrono::steady_clock::now() > deadline) co_return false;
            co_await yield_once();
            std::lock_guard g(mu_);
            const bool idle = in_flight_ == held_now_ && clock_ == last;
            quiet = idle ? quiet + 1 : 0;
            last = clock_;
        }
        co_return true;
    }
    /// The record at log index `index`.
    OpRecord at(size_t index) const {
        std::lock_guard g(mu_);
        return ops_.at(index);
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
    /// The clock value the next issue or completion gets (later ones get larger values), so
    /// "x happened after this call" is `x >= clock()`.
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
                                 std::span<const iovec> payload = {},
                                 io::Fallocate mode = io::Fallocate::PunchHole) {
        std::lock_guard g(mu_);
        OpRecord r;
        r.seq = ++clock_;
        r.kind = kind;
        r.mode = mode;
        r.path = path;
        r.offset = off;
        r.length = len;
        if (record_data_ && kind == OpKind::Write) {
            for (const auto& v : payload) {
                auto* p = static_cast<const std::byte*>(v.iov_base);
                r.data.insert(r.data.end(), p, p + v.iov_len);
            }
        }
        const int err = fault_for(r);
        if (err) {
            r.error = err;
            r.injected = true;
            r.done = ++clock_;
        } else {
            ++in_flight_;
            if (kind != OpKind::Truncate)
                catch_in_holds(r, ops_.size());  // truncate is synchronous
        }
        ops_.push_back(std::move(r));
        return {ops_.size() - 1, err};
    }
    /// Records the completion of operation `index` with `err` (0: success).
    void end(size_t index, int err) {
        std::lock_guard g(mu_);
        ops_[index].done = ++clock_;
        ops_[index].error = err;
        --in_flight_;
    }

  private:
    /// Offers the new operation `r` (to become log index `index`) to every hold.
    void catch_in_holds(OpRecord& r, size_t index) {
        for (const auto& st : holds_) {
            if (st->released || st->limit == 0 || !st->match(r)) continue;
            if (st->skip > 0) {
                --st->skip;
                continue;
            }
            --st->limit;
            ++st->waiting;
            ++held_now_;
            st->caught.push_back(index);
            gates_[index] = st;
            r.held = true;
            st->changed.notify_all();
            return;
        }
    }

    struct NthFault {
        OpKind kind;
        uint64_t left;
        int err;
    };

    struct MatchFault {
        OpMatch match;
        int err;
        bool persistent;
    };

    /// The errno to inject into operation `r` (0: none); counts the faults down.
    int fault_for(const OpRecord& r) {
        const OpKind kind = r.kind;
        int err = 0;
        for (auto it = matching_.begin(); it != matching_.end();) {
            if (!it->match(r)) {
                ++it;
                continue;
            }
            err = it->err;
            if (it->persistent) return err;
            matching_.erase(it);
            return err;
        }
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
    std::vector<MatchFault> matching_;
    uint64_t writes_left_ = 0;
    int writes_err_ = 0;
    std::vector<std::shared_ptr<HoldState>> holds_;
    std::map<size_t, std::shared_ptr<HoldState>> gates_;  ///< Held operations by log index.
    size_t in_flight_ = 0;                                ///< Issued, not yet completed.
    size_t held_now_ = 0;                                 ///< Of those, kept by a hold.
};

inline std::vector<OpRecord> Hold::records() const {
    std::vector<OpRecord> out;
    for (size_t i : st_->caught) out.push_back(log_->at(i));
    return out;
}

inline OpRecord Hold::first() const {
    REQUIRE(!st_->caught.empty());
    return log_->at(st_->caught.front());
}

inline void Hold::release() {
    if (st_) log_->release(*st_);
}

/// Forwards to `inner` and records everything in `log`.
class RecordingFile final : public io::File {
  public:
    RecordingFile(std::unique_ptr<io::File> inner, std::shared_ptr<OpLog> log)
        : inner_(std::move(inner)), log_(std::move(log)) {}

    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        auto [i, err] = log_->begin(OpKind::Read, path(), off.value, iov_bytes(iov));
        if (err) co_return co_await fail_later(err, "read", off.value);
        co_await log_->pass(i);
        auto r = co_await inner_->readv(off, iov);
        log_->end(i, r ? 0 : r.error().code);
        co_return r;
    }

    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        auto [i, err] = log_->begin(OpKind::Write, path(), off.value, iov_bytes(iov), iov);
        if (err) co_return co_await fail_later(err, "write", off.value);
        co_await log_->pass(i);
        co_return finish(i, co_await inner_->writev(off, iov));
    }

    awaitable<Result<void>> fallocate(io::Fallocate mode, HostOffset off, uint64_t len) override {
        auto [i, err] = log_->begin(OpKind::Fallocate, path(), off.value, len, {}, mode);
        if (err) co_return co_await fail_later(err, "fallocate", off.value);
        co_await log_->pass(i);
        co_return finish(i, co_await inner_->fallocate(mode, off, len));
    }

    awaitable<Result<void>> sync() override {
        auto [i, err] = log_->begin(OpKind::Sync, path(), 0, 0);
        if (err) co_return co_await fail_later(err, "sync", 0);
        co_await log_->pass(i);
        co_return finish(i, co_await inner_->sync());
    }

    Result<uint64_t> size() const override { return inner_->size(); }

    Result<void> truncate(uint64_t size) override {
        auto [i, err] = log_->begin(OpKind::Truncate, path(), size, 0);
        if (err) return injected(err, "truncate", size);
        return finish(i, inner_->truncate(size));
    }

    awaitable<Result<uint64_t>> seek(HostOffset from, io::Seek what) override {
        co_return co_await inner_->seek(from, what);
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

/// A file holding `contents` in a temporary directory, opened writable through a recording
/// file on an io_context of its own.
struct RecordedFile {
    TempDir dir;
    std::string path;
    asio::io_context io;
    std::shared_ptr<OpLog> log = std::make_shared<OpLog>();
    std::unique_ptr<io::File> file;

    /// Writes `contents` to `name` in the directory and opens it.
    explicit RecordedFile(const Bytes& contents, const std::string& name = "recorded.bin")
        : path(dir.file(name)) {
        write_file(path, contents);
        auto r = recording_opener(log)(io.get_executor(), path,
                                       io::OpenFlags{true, false, false, std::nullopt});
        REQUIRE(r);
        file = std::move(*r);
    }
};

}  // namespace qnbd::test
