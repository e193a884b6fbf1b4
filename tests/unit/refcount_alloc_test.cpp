// The allocator's core on its own: the fixed point of refcount table growth
// (plan_table_growth, pure) and the free-run search and allocation of Refcounts over a real
// file whose refcount blocks the test writes itself.
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <random>
#include <set>

#include "io/file.hpp"
#include "qcow2/refcounts.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/run.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::qcow2;

/// Checks every promise of plan_table_growth for one input.
void check_growth(uint64_t needed, uint64_t current, uint64_t area, const RefTableShape& shape,
                  const std::set<uint64_t>& blocks) {
    auto has = [&](uint64_t r) { return blocks.count(r) != 0; };
    auto g = plan_table_growth(needed, current, HostClusterIndex{area}, shape, has);
    REQUIRE(g);
    INFO("needed " << needed << " current " << current << " area " << area << " per_block "
                   << shape.per_block << " per_table_cluster " << shape.per_table_cluster);
    CHECK(g->area == HostClusterIndex{area});
    CHECK(g->entries >= needed);
    CHECK(g->entries >= current + current / 2);
    CHECK(g->entries % shape.per_table_cluster == 0);
    CHECK(g->table_clusters.value == g->entries / shape.per_table_cluster);
    const uint64_t last = (g->end().value - 1) / shape.per_block;
    CHECK(last < g->entries);  // the table covers the area it lives in
    uint64_t missing = 0;
    for (uint64_t r = area / shape.per_block; r <= last; ++r) missing += !has(r);
    CHECK(g->new_blocks.value == missing);  // exactly the blocks the area needs
}

/// A raw file of `clusters` clusters whose first refcount block (at cluster `block_at`) holds
/// `counts`; returns the opened File.
std::unique_ptr<io::File> refcount_file(asio::io_context& io, const std::string& path,
                                        const Geometry& geo, uint32_t order, uint64_t clusters,
                                        uint64_t block_at, const std::vector<uint64_t>& counts) {
    Buffer block(geo.cluster_size());
    for (size_t i = 0; i < counts.size(); ++i) set_refcount(block.data(), i, order, counts[i]);
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(clusters * geo.cluster_size())) == 0);
    REQUIRE(::pwrite(fd, block.data(), block.size(),
                     static_cast<off_t>(block_at * geo.cluster_size())) ==
            static_cast<ssize_t>(block.size()));
    ::close(fd);
    auto f =
        io::open_file(io.get_executor(), path, io::OpenFlags{true, false, false, std::nullopt});
    REQUIRE(f);
    return std::move(*f);
}

}  // namespace

TEST_CASE("refcount growth: a table reaching into a range without a block brings the block",
          "[refcounts]") {
    // 512-byte clusters, 16-bit refcounts: a block covers 256 clusters; a table cluster holds
    // 64 entries. A two-cluster table placed one cluster before range 1 reaches into it, so
    // it needs range 1's block, which goes first.
    const RefTableShape shape{256, 64, 16384};
    auto has0 = [](uint64_t r) { return r == 0; };
    auto g = plan_table_growth(100, 1, HostClusterIndex{255}, shape, has0);
    REQUIRE(g);
    CHECK(g->new_blocks == ClusterCount{1});
    CHECK(g->table_clusters == ClusterCount{2});
    CHECK(g->entries == 128);
    CHECK(g->table_start() == HostClusterIndex{256});
    CHECK(g->end() == HostClusterIndex{258});
    // A one-cluster table that ends exactly on the boundary needs no new block.
    auto fits = plan_table_growth(2, 1, HostClusterIndex{255}, shape, has0);
    REQUIRE(fits);
    CHECK(fits->new_blocks == ClusterCount{0});
    CHECK(fits->end() == HostClusterIndex{256});
    check_growth(100, 1, 255, shape, {0});
    check_growth(2, 1, 255, shape, {0});
    check_growth(2, 1, 256, shape, {0});
}

TEST_CASE("refcount growth: the fixed point settles when the table itself needs more entries",
          "[refcounts]") {
    // The smallest real shape (512-byte clusters, 64-bit refcounts): 64 clusters per block and
    // 64 entries per table cluster. A table for 200 ranges needs 4 clusters; placed at the
    // start of range 70 (no block yet), the area needs that block too.
    const RefTableShape shape{64, 64, 16384};
    auto below70 = [](uint64_t r) { return r < 70; };
    auto g = plan_table_growth(200, 70, HostClusterIndex{70 * 64}, shape, below70);
    REQUIRE(g);
    CHECK(g->new_blocks == ClusterCount{1});
    CHECK(g->table_clusters == ClusterCount{4});
    std::set<uint64_t> blocks;
    for (uint64_t r = 0; r < 70; ++r) blocks.insert(r);
    check_growth(200, 70, 70 * 64, shape, blocks);
}

TEST_CASE("refcount growth: random shapes keep every promise", "[refcounts]") {
    std::mt19937_64 rng(2024);
    for (int i = 0; i < 2000; ++i) {
        // Every shape qcow2 allows: clusters of 2^9..2^21 bytes, refcounts of 2^0..2^6 bits.
        const uint32_t cluster_bits = 9 + rng() % 13, order = rng() % 7;
        const RefTableShape shape{uint64_t{1} << (cluster_bits + 3 - order),
                                  uint64_t{1} << (cluster_bits - 3), uint64_t{1} << 30};
        const uint64_t current = rng() % 64;
        const uint64_t needed = current + 1 + rng() % 8;
        const uint64_t area = rng() % (shape.per_block * (current + 4));
        std::set<uint64_t> blocks;
        for (uint64_t r = 0; r < current; ++r)
            if (rng() % 4) blocks.insert(r);
        check_growth(needed, current, area, shape, blocks);
    }
}

TEST_CASE("refcount growth: a shape that can never cover itself fails instead of looping",
          "[refcounts]") {
    // Two clusters per block and one entry per table cluster: every entry costs more than it
    // covers.
    auto g = plan_table_growth(10, 8, HostClusterIndex{100}, RefTableShape{2, 1, 1u << 30},
                               [](uint64_t r) { return r < 8; });
    REQUIRE_FALSE(g);
}

TEST_CASE("refcount growth: a table over the limit is refused with ENOSPC", "[refcounts]") {
    const RefTableShape shape{256, 64, 2};
    auto g =
        plan_table_growth(1000, 100, HostClusterIndex{10}, shape, [](uint64_t) { return true; });
    REQUIRE_FALSE(g);
    CHECK(g.error().code == ENOSPC);
}

TEST_CASE("free runs: used clusters are skipped and the first long enough run is found",
          "[refcounts]") {
    test::TempDir dir;
    asio::io_context io;
    const Geometry geo{9, false};  // 512-byte clusters: 256 refcounts of 16 bits per block
    DiskStats stats;
    // Cluster 0: header, 1: the block, 2: table; 3 free, 4 used, 5.. free.
    auto file = refcount_file(io, dir.file("rc"), geo, 4, 8, 1, {1, 1, 1, 0, 1});
    MetadataMap meta(geo);
    Refcounts rc(*file, geo, 4, RefTableLocation{HostOffset{2 * 512}, 1}, {512}, 1 << 20, 8 * 512,
                 stats, meta);
    test::run(io, [&]() -> awaitable<void> {
        auto one = co_await rc.find_free_run(ClusterCount{1});
        REQUIRE(one);
        CHECK(*one == HostClusterIndex{3});
        auto two = co_await rc.find_free_run(ClusterCount{2});
        REQUIRE(two);
        CHECK(*two == HostClusterIndex{5});
        auto a = co_await rc.allocate(ClusterCount{2});
        REQUIRE(a);
        CHECK(a->first == HostClusterIndex{5});
        CHECK_FALSE(a->fresh);  // inside the file as it was opened
        auto b = co_await rc.allocate(ClusterCount{3});
        REQUIRE(b);
        CHECK(b->first == HostClusterIndex{7});
        CHECK_FALSE(b->fresh);  // starts inside the file as opened
        auto c = co_await rc.allocate(ClusterCount{1});
        REQUIRE(c);
        CHECK(c->first == HostClusterIndex{10});
        CHECK(c->fresh);  // past the end of the file and of every earlier allocation
        auto three = co_await rc.get(HostClusterIndex{3});
        REQUIRE(three);
        CHECK(*three == 0);
        co_return;
    }());
    CHECK(stats.clusters_allocated == 6);
}

TEST_CASE("free runs: the first cluster of a range without a block is left for the block",
          "[refcounts]") {
    test::TempDir dir;
    asio::io_context io;
    const Geometry geo{9, false};
    DiskStats stats;
    std::vector<uint64_t> full(256, 1);  // range 0 completely used
    auto file = refcount_file(io, dir.file("rc"), geo, 4, 256, 1, full);
    MetadataMap meta(geo);
    Refcounts rc(*file, geo, 4, RefTableLocation{HostOffset{2 * 512}, 1}, {512}, 1 << 20, 256 * 512,
                 stats, meta);
    test::run(io, [&]() -> awaitable<void> {
        auto run = co_await rc.find_free_run(ClusterCount{4});
        REQUIRE(run);
        CHECK(*run == HostClusterIndex{257});
        // The one-entry table must grow for range 1's block: the grown table goes after the
        // new block, at 257, so the run moves on to 258.
        auto a = co_await rc.allocate(ClusterCount{4});
        REQUIRE(a);
        CHECK(a->first == HostClusterIndex{258});
        // The new block for range 1 sits at its first cluster and counts itself.
        auto block = co_await rc.get(HostClusterIndex{256});
        REQUIRE(block);
        CHECK(*block == 1);
        auto table = co_await rc.get(HostClusterIndex{257});
        REQUIRE(table);
        CHECK(*table == 1);
        co_return;
    }());
    CHECK(rc.table().at(1) == 256 * 512);
    auto w = rc.take_dirty();
    CHECK(w.blocks.size() == 1);  // only range 1's block changed
    REQUIRE(w.relocation);
    CHECK(w.relocation->offset == HostOffset{257 * 512});
    CHECK(w.relocation->clusters == 1);
    CHECK(w.table.size() == 1);
    CHECK(rc.has_pending_frees());  // the old table, freed after the barrier (R3, R6)
    CHECK(meta.overlaps(HostOffset{256 * 512}, 512));  // the new block
    CHECK(meta.overlaps(HostOffset{257 * 512}, 512));  // the new table
    CHECK_FALSE(rc.has_dirty());
    rc.restore(w);
    CHECK(rc.has_dirty());
}
