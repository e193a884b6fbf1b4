// The holds of the recording file: a held operation is issued but not forwarded until it is
// released, while other operations pass; skip, limit and offset ranges choose which matching
// operations are held; freeze stops catching; waits give up after their timeout; a Hold destroyed
// releases what it holds; settle() returns only once nothing but held operations is in flight.
#include <catch2/catch.hpp>

#include <chrono>
#include <optional>

#include "tests/unit/support/compare.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/recording_file.hpp"
#include "tests/unit/support/run.hpp"
#include "tests/unit/support/units.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::test;
using namespace std::chrono_literals;

/// A 64 KiB file of zeros opened through a recording file.
struct Fixture : RecordedFile {
    Fixture() : RecordedFile(Bytes(64 * KiB)) {}
    /// Starts writing 4 KiB of `byte` at 4 KiB block `block`.
    Task write(uint64_t block, int byte) {
        return Task(io.get_executor(), write_block(*file, block * 4 * KiB, filled(4 * KiB, byte)));
    }
    /// The first byte of 4 KiB block `block` as the file has it now.
    int stored(uint64_t block) const { return int(read_file(path).at(block * 4 * KiB)); }

  private:
    static awaitable<void> write_block(io::File& f, uint64_t off, Bytes data) {
        require_ok(co_await f.write(HostOffset{off}, data), "write");
    }
};

}  // namespace

TEST_CASE("recording file: a held write waits for release while other operations pass",
          "[recording_file]") {
    Fixture fx;
    run_co(fx.io, [&]() -> awaitable<void> {
        auto writes = fx.log->hold(op_is(OpKind::Write, fx.path));
        Task w = fx.write(0, 0x11);
        REQUIRE(co_await writes.wait_caught());
        REQUIRE(co_await fx.log->settle());
        CHECK_FALSE(w.done());
        CHECK(writes.first().held);
        CHECK(writes.first().done == 0);
        CHECK(fx.stored(0) == 0);  // not forwarded to the file
        Bytes got(4 * KiB, std::byte{0x77});
        require_ok(co_await fx.file->read_zero_padded(HostOffset{0}, got), "read");
        CHECK(got == Bytes(4 * KiB));  // a read is not held and sees the old bytes
        require_ok(co_await fx.file->sync(), "sync");
        writes.release();
        co_await w.join();
        CHECK(writes.first().done > writes.first().seq);
        CHECK(fx.stored(0) == 0x11);
    });
    CHECK(fx.log->count(OpKind::Read) == 1);
    CHECK(fx.log->count(OpKind::Sync) == 1);
}

TEST_CASE("recording file: skip and limit choose the held operations, freeze stops catching",
          "[recording_file]") {
    Fixture fx;
    run_co(fx.io, [&]() -> awaitable<void> {
        auto second = fx.log->hold(op_is(OpKind::Write, fx.path), 1, 1);
        Task a = fx.write(0, 0x21);
        REQUIRE(co_await a.finished_within(kGateTimeout));  // skipped
        Task b = fx.write(1, 0x22);
        REQUIRE(co_await second.wait_caught());
        Task c = fx.write(2, 0x23);
        REQUIRE(co_await c.finished_within(kGateTimeout));  // past the limit
        auto any = fx.log->hold(op_is(OpKind::Write));
        Task d = fx.write(3, 0x24);
        REQUIRE(co_await any.wait_caught());
        any.freeze();
        Task e = fx.write(4, 0x25);
        REQUIRE(co_await e.finished_within(kGateTimeout));  // frozen: not caught
        REQUIRE(co_await fx.log->settle());
        CHECK_FALSE(b.done());
        CHECK_FALSE(d.done());
        CHECK(second.caught() == 1);
        CHECK(any.caught() == 1);
        CHECK(fx.stored(1) == 0);
        CHECK(fx.stored(3) == 0);
        second.release();
        any.release();
        co_await b.join();
        co_await d.join();
        for (uint64_t k = 0; k < 5; ++k) CHECK(fx.stored(k) == 0x21 + int(k));
    });
}

TEST_CASE("recording file: an offset range chooses the held writes", "[recording_file]") {
    Fixture fx;
    run_co(fx.io, [&]() -> awaitable<void> {
        auto block5 = fx.log->hold(op_in(OpKind::Write, fx.path, 20 * KiB, 24 * KiB));
        Task before = fx.write(4, 0x54);
        Task in = fx.write(5, 0x55);
        Task after = fx.write(6, 0x56);
        REQUIRE(co_await before.finished_within(kGateTimeout));
        REQUIRE(co_await after.finished_within(kGateTimeout));
        REQUIRE(co_await block5.wait_caught());
        CHECK_FALSE(in.done());
        CHECK(block5.first().offset == 20 * KiB);
        block5.release();
        co_await in.join();
        for (uint64_t k = 4; k < 7; ++k) CHECK(fx.stored(k) == 0x50 + int(k));
    });
}

TEST_CASE("recording file: waits time out and a Hold destroyed releases what it holds",
          "[recording_file]") {
    Fixture fx;
    run_co(fx.io, [&]() -> awaitable<void> {
        auto syncs = fx.log->hold(op_is(OpKind::Sync));
        const auto start = std::chrono::steady_clock::now();
        CHECK_FALSE(co_await syncs.wait_caught(1, 50ms));  // no sync is issued
        CHECK(std::chrono::steady_clock::now() - start >= 50ms);
        std::optional<Task> w;
        {
            auto writes = fx.log->hold(op_is(OpKind::Write));
            w.emplace(fx.write(0, 0x31));
            REQUIRE(co_await writes.wait_caught());
            CHECK_FALSE(co_await w->finished_within(50ms));
        }
        REQUIRE(co_await w->finished_within(kGateTimeout));
        co_await w->join();
        CHECK(fx.stored(0) == 0x31);
    });
}

TEST_CASE("recording file: settle waits for the operations in flight", "[recording_file]") {
    Fixture fx;
    run_co(fx.io, [&]() -> awaitable<void> {
        std::vector<Task> writes;
        for (uint64_t k = 0; k < 16; ++k) writes.push_back(fx.write(k, 0x40 + int(k)));
        REQUIRE(co_await fx.log->settle());
        for (const auto& t : writes) CHECK(t.done());
        for (const auto& r : fx.log->ops()) CHECK(r.done != 0);
        CHECK(fx.log->ops().size() == 16);
    });
}
