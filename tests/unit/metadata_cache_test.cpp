// MetadataCache over a real file (io_uring through io::open_file), with every read counted by
// the recording file: shared misses, LRU eviction of clean entries only, pinned and dirty
// entries kept, take_dirty/restore_dirty and create(). Also the recording file itself:
// what it logs and its two fault modes.
#include <catch2/catch.hpp>

#include <set>

#include "qcow2/metadata_cache.hpp"
#include "tests/unit/support/recording_file.hpp"
#include "tests/unit/support/run.hpp"
#include "tests/unit/support/units.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::qcow2;
using test::OpKind;

constexpr uint64_t kCs = 4096;

/// `clusters` clusters, cluster k filled with byte k+1.
test::Bytes numbered_clusters(int clusters) {
    test::Bytes contents;
    for (int k = 0; k < clusters; ++k) contents.insert(contents.end(), kCs, std::byte(k + 1));
    return contents;
}

/// A file of `clusters` numbered clusters opened through a recording file.
struct Fixture : test::RecordedFile {
    DiskStats stats;

    explicit Fixture(int clusters = 16) : RecordedFile(numbered_clusters(clusters), "meta.bin") {}
    /// Reads the cache issued at cluster k.
    size_t reads_of(uint64_t k) const {
        size_t n = 0;
        for (const auto& op : log->ops())
            if (op.kind == OpKind::Read && op.offset == k * kCs) ++n;
        return n;
    }
    template <class F>
    void run(F body) {
        test::run(io, body());
    }
};

HostOffset at(uint64_t k) {
    return HostOffset{k * kCs};
}

/// get() that must succeed.
awaitable<CacheRef> get_ok(MetadataCache& c, uint64_t k) {
    auto r = co_await c.get(at(k));
    if (!r) FAIL("get of cluster " << k << " failed: " << r.error().message);
    co_return *r;
}

/// Loads clusters [from, to) one after another, keeping no reference.
awaitable<void> touch(MetadataCache& c, uint64_t from, uint64_t to) {
    for (uint64_t k = from; k < to; ++k) (void)co_await get_ok(c, k);
}

uint8_t first_byte(const CacheRef& e) {
    return static_cast<uint8_t>(e->data.data()[0]);
}

/// Stores get()'s result; an entry must be fully loaded when get() hands it out.
awaitable<Result<void>> get_into(MetadataCache& c, uint64_t k, Result<CacheRef>& out) {
    out = co_await c.get(at(k));
    if (out && (*out)->loading) co_return Error{EIO, "get() returned an entry still loading"};
    co_return ok();
}

}  // namespace

TEST_CASE("concurrent misses of one cluster share one read", "[metadata_cache]") {
    Fixture fx;
    MetadataCache cache(*fx.file, kCs, 8 * kCs, fx.stats);
    fx.run([&]() -> awaitable<void> {
        std::vector<Result<CacheRef>> got(8);
        JoinSet join(fx.io.get_executor());
        for (auto& g : got) join.spawn(get_into(cache, 5, g));
        auto joined = co_await join.wait();
        REQUIRE(joined);
        std::set<CacheEntry*> entries;
        for (auto& g : got) {
            REQUIRE(g);
            entries.insert(g->get());
            CHECK(first_byte(*g) == 6);
        }
        CHECK(entries.size() == 1);
    });
    CHECK(fx.reads_of(5) == 1);
    CHECK(fx.stats.cache_misses == 1);
    CHECK(fx.stats.cache_hits == 7);
}

TEST_CASE("a failed read reaches every waiter and is not cached", "[metadata_cache]") {
    Fixture fx;
    MetadataCache cache(*fx.file, kCs, 8 * kCs, fx.stats);
    fx.log->fail_nth(OpKind::Read, 1, EIO);
    fx.run([&]() -> awaitable<void> {
        std::vector<Result<CacheRef>> got(4);
        JoinSet join(fx.io.get_executor());
        for (auto& g : got) join.spawn(get_into(cache, 2, g));
        auto joined = co_await join.wait();
        REQUIRE(joined);
        for (auto& g : got) {
            REQUIRE_FALSE(g);
            CHECK(g.error().code == EIO);
        }
        CacheRef e = co_await get_ok(cache, 2);
        CHECK(first_byte(e) == 3);
    });
    CHECK(fx.reads_of(2) == 2);
}

TEST_CASE("eviction drops the least recently used clean entries", "[metadata_cache]") {
    Fixture fx;
    MetadataCache cache(*fx.file, kCs, 4 * kCs, fx.stats);
    fx.run([&]() -> awaitable<void> {
        co_await touch(cache, 0, 4);  // 0 1 2 3
        co_await touch(cache, 0, 1);  // 0 is now the most recent
        co_await touch(cache, 4, 5);  // over budget: 1 goes
        CHECK(fx.reads_of(1) == 1);
        co_await touch(cache, 0, 1);
        CHECK(fx.reads_of(0) == 1);   // still cached
        co_await touch(cache, 1, 2);  // 1 was evicted: read again; 2 (oldest now) goes
        CHECK(fx.reads_of(1) == 2);
        co_await touch(cache, 3, 5);
        CHECK(fx.reads_of(3) == 1);
        CHECK(fx.reads_of(4) == 1);
        co_await touch(cache, 2, 3);
        CHECK(fx.reads_of(2) == 2);
    });
}

TEST_CASE("dirty entries are never evicted", "[metadata_cache]") {
    Fixture fx;
    MetadataCache cache(*fx.file, kCs, 2 * kCs, fx.stats);
    fx.run([&]() -> awaitable<void> {
        for (uint64_t k = 0; k < 4; ++k) {
            CacheRef e = co_await get_ok(cache, k);
            e->data.data()[1] = std::byte{0xee};
            cache.mark_dirty(e);
        }
        CHECK(cache.dirty_bytes() == 4 * kCs);
        co_await touch(cache, 4, 8);  // clean entries churn through the budget
        for (uint64_t k = 0; k < 4; ++k) {
            CacheRef e = co_await get_ok(cache, k);
            CHECK(e->dirty);
            CHECK(e->data.data()[1] == std::byte{0xee});
        }
        co_await touch(cache, 4, 5);
    });
    for (uint64_t k = 0; k < 4; ++k) CHECK(fx.reads_of(k) == 1);
    CHECK(fx.reads_of(4) == 2);  // clean entries were evicted meanwhile
}

TEST_CASE("held entries are never evicted", "[metadata_cache]") {
    Fixture fx;
    MetadataCache cache(*fx.file, kCs, 2 * kCs, fx.stats);
    fx.run([&]() -> awaitable<void> {
        CacheRef held = co_await get_ok(cache, 0);
        co_await touch(cache, 1, 6);
        CacheRef again = co_await get_ok(cache, 0);
        CHECK(again == held);
        again.reset();
        co_await touch(cache, 1, 2);
    });
    CHECK(fx.reads_of(0) == 1);
    CHECK(fx.reads_of(1) == 2);
}

TEST_CASE("take_dirty copies dirty entries and marks them clean", "[metadata_cache]") {
    Fixture fx;
    MetadataCache cache(*fx.file, kCs, 2 * kCs, fx.stats);
    fx.run([&]() -> awaitable<void> {
        for (uint64_t k : {3u, 1u}) {
            CacheRef e = co_await get_ok(cache, k);
            e->data.data()[7] = std::byte{0x77};
            cache.mark_dirty(e);
        }
        (void)co_await get_ok(cache, 2);  // clean: not taken
        auto copies = cache.take_dirty();
        REQUIRE(copies.size() == 2);
        CHECK(copies[0].entry->offset == at(1));  // sorted by offset
        CHECK(copies[1].entry->offset == at(3));
        CHECK_FALSE(cache.has_dirty());
        CHECK(cache.dirty_bytes() == 0);
        for (auto& c : copies) {
            CHECK_FALSE(c.entry->dirty);
            CHECK(c.data.size() == kCs);
            CHECK(c.data.data()[7] == std::byte{0x77});
            CHECK(c.data.data() != c.entry->data.data());
            c.entry->data.data()[7] = std::byte{0x11};  // later changes do not reach the copy
            CHECK(c.data.data()[7] == std::byte{0x77});
        }
        CHECK(cache.take_dirty().empty());
        copies.clear();
        co_await touch(cache, 4, 8);  // now clean and unheld: evictable
        co_await touch(cache, 1, 2);
    });
    CHECK(fx.reads_of(1) == 2);
}

TEST_CASE("restore_dirty marks a failed write-back dirty again", "[metadata_cache]") {
    Fixture fx;
    MetadataCache cache(*fx.file, kCs, 2 * kCs, fx.stats);
    fx.run([&]() -> awaitable<void> {
        for (uint64_t k : {0u, 1u}) cache.mark_dirty(co_await get_ok(cache, k));
        auto copies = cache.take_dirty();
        REQUIRE(copies.size() == 2);
        cache.restore_dirty(copies);
        CHECK(cache.has_dirty());
        CHECK(cache.dirty_bytes() == 2 * kCs);
        for (auto& c : copies) CHECK(c.entry->dirty);
        copies.clear();
        co_await touch(cache, 4, 8);  // restored entries must survive eviction pressure
        CacheRef e0 = co_await get_ok(cache, 0);
        CHECK(e0->dirty);
        auto again = cache.take_dirty();
        CHECK(again.size() == 2);
    });
    CHECK(fx.reads_of(0) == 1);
    CHECK(fx.reads_of(1) == 1);
}

TEST_CASE("create gives a zeroed dirty entry without reading", "[metadata_cache]") {
    Fixture fx;
    MetadataCache cache(*fx.file, kCs, 4 * kCs, fx.stats);
    fx.run([&]() -> awaitable<void> {
        CacheRef e = cache.create(at(3));
        REQUIRE(e->data.size() == kCs);
        for (size_t i = 0; i < kCs; ++i) REQUIRE(e->data.data()[i] == std::byte{0});
        CHECK(e->dirty);
        CHECK(cache.dirty_bytes() == kCs);
        CacheRef again = co_await get_ok(cache, 3);
        CHECK(again == e);
        // Replacing a cached clean entry, then a dirty one: counted once each.
        (void)co_await get_ok(cache, 1);
        CacheRef fresh = cache.create(at(1));
        CHECK(first_byte(fresh) == 0);
        CHECK(cache.dirty_bytes() == 2 * kCs);
        CacheRef replaced = cache.create(at(3));
        CHECK(replaced != e);
        CHECK(cache.dirty_bytes() == 2 * kCs);
        CHECK(cache.take_dirty().size() == 2);
    });
    CHECK(fx.reads_of(3) == 0);
    CHECK(fx.reads_of(1) == 1);
}

// ---- The recording file itself ----

TEST_CASE("the recording file logs every operation in order", "[recording_file]") {
    Fixture fx(4);
    fx.log->set_record_data(true);
    const uint64_t before = fx.log->clock();
    fx.run([&]() -> awaitable<void> {
        Buffer b(kCs);
        std::memset(b.data(), 0x42, kCs);
        auto w = co_await fx.file->write(HostOffset{2 * kCs}, b.span());
        REQUIRE(w);
        auto r = co_await fx.file->read(HostOffset{100}, b.span().first(10));
        REQUIRE(r);
        CHECK(*r == 10);
        auto s = co_await fx.file->sync();
        REQUIRE(s);
        auto z = co_await fx.file->fallocate(io::Fallocate::ZeroRange, HostOffset{0}, kCs);
        REQUIRE(z);
    });
    REQUIRE(fx.file->truncate(8 * kCs));
    auto ops = fx.log->ops_since(before);
    REQUIRE(ops.size() == 5);
    const OpKind kinds[] = {OpKind::Write, OpKind::Read, OpKind::Sync, OpKind::Fallocate,
                            OpKind::Truncate};
    for (size_t i = 0; i < 5; ++i) {
        INFO("op " << i);
        CHECK(ops[i].kind == kinds[i]);
        CHECK(ops[i].path == fx.path);
        CHECK(ops[i].error == 0);
        CHECK(ops[i].seq < ops[i].done);
        if (i) CHECK(ops[i - 1].done < ops[i].seq);  // each awaited before the next
    }
    CHECK(ops[0].offset == 2 * kCs);
    CHECK(ops[0].length == kCs);
    REQUIRE(ops[0].data.size() == kCs);
    CHECK(ops[0].data[17] == std::byte{0x42});
    CHECK(ops[1].offset == 100);
    CHECK(ops[1].length == 10);
    CHECK(ops[1].data.empty());
    CHECK(ops[3].length == kCs);
    CHECK(ops[4].offset == 8 * kCs);
    CHECK(test::read_file(fx.path)[2 * kCs] == std::byte{0x42});
    CHECK(fx.log->count(OpKind::Write) == 1);
    CHECK(fx.log->count(OpKind::Write, "/elsewhere") == 0);
}

TEST_CASE("fail_nth fails exactly one operation of its kind", "[recording_file]") {
    Fixture fx(4);
    fx.log->fail_nth(OpKind::Write, 2, EIO);
    fx.log->fail_nth(OpKind::Sync, 1);
    fx.run([&]() -> awaitable<void> {
        Buffer b(kCs);
        std::memset(b.data(), 0x99, kCs);
        auto first = co_await fx.file->write(HostOffset{0}, b.span());
        CHECK(first);
        auto second = co_await fx.file->write(HostOffset{kCs}, b.span());
        REQUIRE_FALSE(second);
        CHECK(second.error().code == EIO);
        auto third = co_await fx.file->write(HostOffset{2 * kCs}, b.span());
        CHECK(third);
        auto s1 = co_await fx.file->sync();
        REQUIRE_FALSE(s1);
        CHECK(s1.error().code == EIO);
        auto s2 = co_await fx.file->sync();
        CHECK(s2);
    });
    auto data = test::read_file(fx.path);
    CHECK(data[0] == std::byte{0x99});
    CHECK(data[kCs] == std::byte{2});  // the failed write never reached the file
    CHECK(data[2 * kCs] == std::byte{0x99});
    auto ops = fx.log->ops();
    REQUIRE(ops.size() == 5);
    CHECK(ops[1].injected);
    CHECK(ops[1].error == EIO);
    CHECK(ops[3].injected);
    CHECK_FALSE(ops[0].injected);
    CHECK_FALSE(ops[4].injected);
}

TEST_CASE("fail_writes_after fails every later write until cleared", "[recording_file]") {
    Fixture fx(8);
    fx.log->fail_writes_after(2);
    fx.run([&]() -> awaitable<void> {
        Buffer b(kCs);
        std::memset(b.data(), 0x33, kCs);
        for (uint64_t k = 0; k < 5; ++k) {
            auto r = co_await fx.file->write(at(k), b.span());
            INFO("write " << k);
            CHECK(bool(r) == (k < 2));
            if (!r) CHECK(r.error().code == ENOSPC);
        }
        auto s = co_await fx.file->sync();  // only writes fail
        CHECK(s);
        auto r = co_await fx.file->read(at(4), b.span());
        CHECK(r);
        fx.log->clear_faults();
        std::memset(b.data(), 0x33, kCs);
        auto w = co_await fx.file->write(at(6), b.span());
        CHECK(w);
    });
    auto data = test::read_file(fx.path);
    for (uint64_t k : {0u, 1u, 6u}) CHECK(data[k * kCs] == std::byte{0x33});
    for (uint64_t k : {2u, 3u, 4u}) CHECK(data[k * kCs] == std::byte(static_cast<uint8_t>(k + 1)));
}
