// Deferred frees (R6) and I/O epochs (R7): a host cluster whose guest reference was removed
// is not handed out again while the on-disk L2 table may still point to it, nor while a
// request that looked it up still has I/O in flight. Each test discards guest cluster A (held
// at host cluster X since a completed flush), forces one interleaving with holds on the
// recording file, then makes an allocating write B that the allocator would place at X (the
// lowest free cluster) if X were free: no write may reach X in the window the rule covers.
#include <catch2/catch.hpp>

#include <algorithm>

#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/recording_file.hpp"
#include "tests/unit/support/run.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::test;

constexpr uint64_t kCluster = 64 * KiB;
constexpr uint64_t kGuestA = 0, kGuestB = 1 * MiB, kGuestC = 2 * MiB;

awaitable<void> flush_ok(Disk& disk) {
    require_ok(co_await disk.flush(), "flush");
}

awaitable<void> read_a_into(Disk& disk, Bytes& out) {
    out = co_await read_ok(disk, kGuestA, kCluster);
}

/// A 4 MiB image with 64 KiB clusters, opened through a recording file.
struct Frees {
    TempDir dir;
    std::string path = dir.file("img.qcow2");
    asio::io_context io;
    std::shared_ptr<OpLog> log = std::make_shared<OpLog>();
    uint64_t x = 0;  ///< Host offset of guest cluster A's data.

    Frees() {
        qemu_create(path, 4 * MiB, "cluster_size=65536");
        log->set_record_data(true);
    }

    /// Runs `body` on the open image, then closes it and checks it with qemu.
    template <class F>
    void session(F body) {
        OpenOptions opts;
        opts.file_opener = recording_opener(log);
        with_disk(io, path, opts, [&](Disk& disk) -> awaitable<void> {
            co_await write_durable_a(disk);
            co_await body(disk);
        });
        require_qemu_check_clean(path);
        check_qemu_pattern(path, kGuestA, kCluster, 0);
        check_qemu_pattern(path, kGuestB, kCluster, 0x22);
    }

    /// Writes A (0x11) and flushes; finds its host cluster X in the log.
    awaitable<void> write_durable_a(Disk& disk) {
        const uint64_t from = log->clock();
        co_await write_ok(disk, kGuestA, kCluster, 0x11);
        co_await flush_ok(disk);
        for (const OpRecord& r : log->ops_since(from))
            if (r.kind == OpKind::Write && r.path == path && r.length == kCluster &&
                std::all_of(r.data.begin(), r.data.end(),
                            [](std::byte b) { return b == std::byte{0x11}; }))
                x = r.offset;
        REQUIRE(x != 0);
    }

    awaitable<void> discard_a(Disk& disk) {
        require_ok(co_await disk.discard(GuestOffset{kGuestA}, kCluster, WriteFlags{}), "discard");
    }

    /// Starts the allocating write B.
    Task start_b(Disk& disk) {
        return Task(io.get_executor(), write_ok(disk, kGuestB, kCluster, 0x22));
    }

    /// The writes issued since clock value `from` that reach X.
    std::vector<OpRecord> writes_to_x(uint64_t from) const {
        std::vector<OpRecord> out;
        for (const OpRecord& r : log->ops_since(from))
            if ((r.kind == OpKind::Write || r.kind == OpKind::Fallocate) && r.path == path &&
                r.overlaps(x, x + kCluster))
                out.push_back(r);
        return out;
    }
};

}  // namespace

TEST_CASE("deferred frees: a discarded cluster is not reused before its barrier has synced (R6)",
          "[frees]") {
    Frees f;
    f.session([&](Disk& disk) -> awaitable<void> {
        co_await f.discard_a(disk);
        const uint64_t from = f.log->clock();
        // The barrier that makes the discard durable has written the L2 table; its sync is held.
        auto syncs = f.log->hold(op_is(OpKind::Sync));
        Task flush(f.io.get_executor(), flush_ok(disk));
        REQUIRE(co_await syncs.wait_caught(1));
        Task b = f.start_b(disk);
        REQUIRE(co_await f.log->settle());
        CHECK_FALSE(flush.done());
        CHECK(b.done());  // B was placed and written meanwhile, somewhere else than X.
        CHECK(f.writes_to_x(from).empty());
        syncs.release();
        co_await flush.join();
        co_await b.join();
    });
}

TEST_CASE("deferred frees: a cluster discarded after a barrier's capture stays in use (R6)",
          "[frees]") {
    Frees f;
    f.session([&](Disk& disk) -> awaitable<void> {
        // A barrier captures a write to C and is held at its first sync...
        co_await write_ok(disk, kGuestC, kCluster, 0x33);
        auto syncs = f.log->hold(op_is(OpKind::Sync));
        Task flush(f.io.get_executor(), flush_ok(disk));
        REQUIRE(co_await syncs.wait_caught(1));
        // ...when A is discarded: the barrier does not carry that change, so it must not free X.
        co_await f.discard_a(disk);
        syncs.release();
        co_await flush.join();
        const uint64_t from = f.log->clock();
        Task b = f.start_b(disk);
        co_await b.join();
        CHECK(f.writes_to_x(from).empty());
        co_await flush_ok(disk);
    });
    check_qemu_pattern(f.path, kGuestC, kCluster, 0x33);
}

TEST_CASE("I/O epochs: a discarded cluster is not reused while a read of it is in flight (R7)",
          "[frees]") {
    Frees f;
    f.session([&](Disk& disk) -> awaitable<void> {
        auto reads = f.log->hold(op_in(OpKind::Read, f.path, f.x, f.x + kCluster));
        Bytes got;
        Task read(f.io.get_executor(), read_a_into(disk, got));
        REQUIRE(co_await reads.wait_caught(1));
        co_await f.discard_a(disk);
        const uint64_t from = f.log->clock();
        // The discard becomes durable, but the read that looked X up is still in flight.
        Task flush(f.io.get_executor(), flush_ok(disk));
        REQUIRE(co_await f.log->settle());
        CHECK_FALSE(flush.done());  // its frees wait for the read
        Task b = f.start_b(disk);
        REQUIRE(co_await f.log->settle());
        CHECK(f.writes_to_x(from).empty());
        reads.release();
        co_await read.join();
        co_await flush.join();
        co_await b.join();
        // What A held when the read began.
        CHECK(std::count(got.begin(), got.end(), std::byte{0x11}) == kCluster);
        for (const OpRecord& r : f.writes_to_x(from)) CHECK(r.seq > reads.first().done);
    });
}
