// R16: autoclear bits qnbd does not keep up to date (persistent bitmaps) are cleared and synced
// before any other write, so that QEMU never trusts a bitmap that missed qnbd's writes.
#include <catch2/catch.hpp>

#include "tests/unit/barrier_harness.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/shell.hpp"

using namespace qnbd;
using namespace qnbd::test;
using namespace qnbd::test::barrier;

TEST_CASE("autoclear: a bitmap's bit is cleared and synced before any other write (R16)",
          "[barrier]") {
    Session s("", 16 * MiB);
    run_ok("qemu-img bitmap --add " + shq(s.path) + " b0");
    REQUIRE(file_be(s.path, 88, 8) == 1);  // the bitmaps extension is valid
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x41);
        require_ok(co_await d->flush(), "flush");
        co_await close_ok(*d);
    });
    std::vector<OpRecord> changes;
    for (const OpRecord& op : s.log->ops())
        if (op.kind != OpKind::Read && op.path == s.path) changes.push_back(op);
    REQUIRE(changes.size() >= 3);
    CHECK(changes[0].kind == OpKind::Write);
    CHECK(changes[0].offset == 0);
    REQUIRE(changes[0].data.size() >= 96);
    CHECK(load_be64(changes[0].data.data() + 88) == 0);
    CHECK(changes[1].kind == OpKind::Sync);
    CHECK(file_be(s.path, 88, 8) == 0);
    // QEMU now ignores the bitmaps, so their directory and table count as leaked clusters, as
    // after any program without bitmap support wrote the image; nothing is corrupt.
    const CheckResult c = qemu_check(s.path);
    INFO(c.json);
    CHECK(c.corruptions == 0);
    CHECK(c.leaks <= 2);
    check_qemu_pattern(s.path, 0, 64 * KiB, 0x41);
}
