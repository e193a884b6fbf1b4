// The write planner on its own: which steps a guest range becomes for each L2 state, and the
// shape of an allocating write (qcow2/write_plan.hpp). Pure functions, no image.
#include <catch2/catch.hpp>

#include "qcow2/write_plan.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::qcow2;

constexpr uint64_t kCs = 65536;

WriteContext context(bool extended = false, bool backing = false, uint64_t max_run = 100) {
    return WriteContext{Geometry{16, extended}, backing, false, false, ClusterCount{max_run}};
}

ClusterState unallocated() {
    return ClusterState{};
}

ClusterState owned(uint64_t host, uint32_t alloc_mask = 0xffffffffu) {
    ClusterState s;
    s.info.kind = ClusterKind::Normal;
    s.info.host = HostOffset{host};
    s.info.copied = true;
    s.info.has_host = true;
    s.info.alloc_mask = alloc_mask;
    return s;
}

ClusterState compressed() {
    ClusterState s;
    s.info.kind = ClusterKind::Compressed;
    s.info.host = HostOffset{12345};
    s.info.compressed_len = 1000;
    return s;
}

}  // namespace

TEST_CASE("write plan: unallocated clusters without a backing file form one fresh run",
          "[write_plan]") {
    const GuestOffset off{kCs + 100};
    const uint64_t len = 3 * kCs;  // touches clusters 1..4
    std::vector<ClusterState> st(4, unallocated());
    const WritePlan p = plan_write(off, len, st, context());
    REQUIRE(p.fresh_runs.size() == 1);
    CHECK(p.in_place.empty());
    CHECK(p.clusters.empty());
    const FreshRunStep& r = p.fresh_runs[0];
    CHECK(r.first == ClusterIndex{1});
    CHECK(r.count == ClusterCount{4});
    CHECK(r.start == 100);
    CHECK(r.buf_offset == 0);
    CHECK(r.length == len);
}

TEST_CASE("write plan: owned clusters are written in place at their host offsets", "[write_plan]") {
    std::vector<ClusterState> st{owned(10 * kCs), owned(3 * kCs)};
    const WritePlan p = plan_write(GuestOffset{kCs - 10}, 20, st, context());
    REQUIRE(p.in_place.size() == 2);
    CHECK(p.in_place[0].host == HostOffset{10 * kCs + kCs - 10});
    CHECK(p.in_place[0].buf_offset == 0);
    CHECK(p.in_place[0].length == 10);
    CHECK(p.in_place[1].host == HostOffset{3 * kCs});
    CHECK(p.in_place[1].buf_offset == 10);
    CHECK(p.in_place[1].length == 10);
    CHECK(p.fresh_runs.empty());
    CHECK(p.clusters.empty());
}

TEST_CASE("write plan: an in-place cluster ends a fresh run, a lone fresh cluster is a step",
          "[write_plan]") {
    std::vector<ClusterState> st{owned(8 * kCs), unallocated(), unallocated(), owned(9 * kCs),
                                 unallocated()};
    const WritePlan p = plan_write(GuestOffset{0}, 5 * kCs, st, context());
    CHECK(p.in_place.size() == 2);
    REQUIRE(p.fresh_runs.size() == 1);
    CHECK(p.fresh_runs[0].first == ClusterIndex{1});
    CHECK(p.fresh_runs[0].count == ClusterCount{2});
    CHECK(p.fresh_runs[0].buf_offset == kCs);
    REQUIRE(p.clusters.size() == 1);
    CHECK(p.clusters[0].cluster == ClusterIndex{4});
    CHECK(p.clusters[0].buf_offset == 4 * kCs);
    CHECK(p.clusters[0].length == kCs);
}

TEST_CASE("write plan: a busy cluster is always a step under its marker", "[write_plan]") {
    ClusterState busy = owned(8 * kCs);
    busy.busy = true;
    ClusterState busy_fresh;
    busy_fresh.busy = true;
    std::vector<ClusterState> st{busy, unallocated(), busy_fresh, unallocated()};
    const WritePlan p = plan_write(GuestOffset{0}, 4 * kCs, st, context());
    CHECK(p.in_place.empty());
    CHECK(p.fresh_runs.empty());
    REQUIRE(p.clusters.size() == 4);
    for (size_t i = 0; i < 4; ++i) CHECK(p.clusters[i].cluster == ClusterIndex{i});
}

TEST_CASE("write plan: fresh runs stop at the allocator's longest run", "[write_plan]") {
    std::vector<ClusterState> st(5, unallocated());
    const WritePlan p = plan_write(GuestOffset{0}, 5 * kCs, st, context(false, false, 2));
    REQUIRE(p.fresh_runs.size() == 2);
    CHECK(p.fresh_runs[0].count == ClusterCount{2});
    CHECK(p.fresh_runs[1].first == ClusterIndex{2});
    CHECK(p.fresh_runs[1].count == ClusterCount{2});
    REQUIRE(p.clusters.size() == 1);
    CHECK(p.clusters[0].cluster == ClusterIndex{4});
}

TEST_CASE("write plan: with a backing file or a compressed cluster every cluster copies on write",
          "[write_plan]") {
    std::vector<ClusterState> st{unallocated(), compressed(), unallocated()};
    const WritePlan p = plan_write(GuestOffset{0}, 3 * kCs, st, context(false, true));
    CHECK(p.fresh_runs.empty());
    CHECK(p.in_place.empty());
    CHECK(p.clusters.size() == 3);
    CHECK(classify_write(compressed().info, 0, kCs, context()) == WriteKind::Allocate);
}

TEST_CASE("write plan: extended L2 writes in place only over allocated subclusters",
          "[write_plan]") {
    const WriteContext ctx = context(true);
    const uint64_t sc = kCs / 32;
    const ClusterInfo half = owned(4 * kCs, 0x0000ffffu).info;  // subclusters 0-15
    CHECK(classify_write(half, 0, 16 * sc, ctx) == WriteKind::InPlace);
    CHECK(classify_write(half, 15 * sc, 2 * sc, ctx) == WriteKind::Allocate);
    // No fresh runs with extended L2: unallocated clusters are single steps.
    CHECK(classify_write(unallocated().info, 0, kCs, ctx) == WriteKind::Allocate);
}

TEST_CASE("write plan: allocation shape keeps allocated edge subclusters untouched",
          "[write_plan]") {
    const Geometry geo{16, true};
    const uint64_t sc = kCs / 32;
    // Subclusters 2 and 5 allocated; the write covers part of 2 through part of 5.
    ClusterInfo ci = owned(4 * kCs, (1u << 2) | (1u << 5)).info;
    const uint64_t start = 2 * sc + 100, len = 3 * sc;  // ends inside subcluster 5
    const AllocationShape s = shape_allocation(ci, start, len, reuses_host(ci), geo);
    CHECK(s.begin == start);      // subcluster 2 is allocated: not rewritten before the data
    CHECK(s.end == start + len);  // subcluster 5 likewise
    CHECK((s.bitmap & 0xffffffffu) == 0x3cu);
    // An unallocated cluster is filled to whole subclusters.
    const AllocationShape u = shape_allocation(ClusterInfo{}, start, len, false, geo);
    CHECK(u.begin == 2 * sc);
    CHECK(u.end == 6 * sc);
    CHECK((u.bitmap & 0xffffffffu) == 0x3cu);
    // Without extended L2 an allocation writes the whole cluster.
    const AllocationShape w = shape_allocation(ClusterInfo{}, 100, 10, false, Geometry{16, false});
    CHECK(w.begin == 0);
    CHECK(w.end == kCs);
    CHECK(w.bitmap == 0);
}
