// Driving a Disk from test coroutines: opening, reading, writing and closing, each failing the
// test with the engine's message when it does not succeed.
#pragma once

#include <catch2/catch.hpp>

#include <boost/asio/this_coro.hpp>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "disk/disk.hpp"
#include "image/open.hpp"
#include "tests/unit/support/compare.hpp"
#include "tests/unit/support/run.hpp"
#include "tests/unit/support/units.hpp"

namespace qnbd::test {

/// An open Disk. If the test fails while it is open (a REQUIRE throwing through the
/// coroutine), the Disk is kept alive for good instead of being destroyed under engine work
/// still in flight, so that the failure is reported rather than a crash.
class OpenDisk {
  public:
    explicit OpenDisk(std::shared_ptr<Disk> d) : d_(std::move(d)) {}
    OpenDisk(OpenDisk&& o) noexcept : d_(std::move(o.d_)), closed_(o.closed_) {}
    OpenDisk& operator=(OpenDisk&&) = delete;
    ~OpenDisk() {
        // Kept reachable from a never-destroyed static, so LeakSanitizer stays quiet too.
        static auto* graveyard = new std::vector<std::shared_ptr<Disk>>();
        if (d_ && !closed_) graveyard->push_back(std::move(d_));
    }
    Disk& operator*() const { return *d_; }
    Disk* operator->() const { return d_.get(); }
    /// Records that the Disk was closed, so it may be destroyed.
    void mark_closed() { closed_ = true; }

  private:
    std::shared_ptr<Disk> d_;
    bool closed_ = false;
};

/// Opens `path` with the engine or fails the test. (Pass OpenOptions as a named object:
/// GCC 12 frees a braced temporary like `OpenOptions{}` twice when it initializes a
/// by-value coroutine parameter inside a co_await expression.)
inline awaitable<OpenDisk> open_ok(std::string path, OpenOptions opts) {
    auto ex = co_await asio::this_coro::executor;
    auto r = co_await open_disk(ex, path, opts);
    require_ok(r, "open_disk " + path);
    co_return OpenDisk(std::shared_ptr<Disk>(std::move(r).value()));
}

/// Opens `path` read-only or writable with default options, or fails the test.
inline awaitable<OpenDisk> open_ok(std::string path, bool read_only) {
    OpenOptions opts;
    opts.read_only = read_only;
    co_return co_await open_ok(std::move(path), opts);
}

/// Reads [off, off+len) through the engine into a buffer pre-filled with junk (so that a
/// read which leaves bytes untouched cannot pass by accident).
inline awaitable<Bytes> read_ok(Disk& disk, uint64_t off, uint64_t len,
                                std::vector<ZeroRun>* zeros = nullptr) {
    Bytes buf(len, std::byte{0xa5});
    auto r = co_await disk.read(GuestOffset{off}, buf, zeros);
    require_ok(r, "read " + std::to_string(off) + "+" + std::to_string(len));
    co_return buf;
}

/// `len` bytes of value `byte`.
inline Bytes filled(uint64_t len, int byte) {
    Bytes b(len);
    std::memset(b.data(), byte, len);
    return b;
}

/// Writes `data` at `off` (a copy is kept by the coroutine) and returns the engine's result.
inline awaitable<Result<void>> write_bytes(Disk& d, uint64_t off, Bytes data) {
    co_return co_await d.write(GuestOffset{off}, data, WriteFlags{});
}

/// Writes `data` at `off` or fails the test.
inline awaitable<void> write_ok(Disk& d, uint64_t off, Bytes data) {
    require_ok(co_await write_bytes(d, off, std::move(data)), "write at " + std::to_string(off));
}

/// Writes `len` bytes of value `byte` at `off` or fails the test.
inline awaitable<void> write_ok(Disk& d, uint64_t off, uint64_t len, int byte) {
    co_await write_ok(d, off, filled(len, byte));
}

/// Closes `d` or fails the test.
inline awaitable<void> close_ok(Disk& d) {
    require_ok(co_await d.close(), "close");
}

/// Closes `disk` or fails the test; afterwards the Disk may be destroyed.
inline awaitable<void> close_ok(OpenDisk& disk) {
    auto r = co_await disk->close();
    disk.mark_closed();
    require_ok(r, "close");
}

/// Opens `path` with `opts` on `io`, runs `body(disk)` (a coroutine) to completion and closes
/// the disk; fails the test if any of it fails.
template <class F>
void with_disk(asio::io_context& io, const std::string& path, OpenOptions opts, F body) {
    run_co(io, [&]() -> awaitable<void> {
        auto disk = co_await open_ok(path, opts);
        co_await body(*disk);
        co_await close_ok(disk);
    });
}

/// with_disk on a fresh io_context.
template <class F>
void with_disk(const std::string& path, OpenOptions opts, F body) {
    asio::io_context io;
    with_disk(io, path, std::move(opts), std::move(body));
}

/// with_disk on a fresh io_context with default options, read-only or writable.
template <class F>
void with_disk(const std::string& path, bool read_only, F body) {
    OpenOptions opts;
    opts.read_only = read_only;
    with_disk(path, std::move(opts), std::move(body));
}

}  // namespace qnbd::test
