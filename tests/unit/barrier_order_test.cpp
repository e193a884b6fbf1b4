// Crash-safe order of flush barriers, observed at the File seam. Images come from qemu-img;
// the engine opens them through a recording file, and every write a flush issues is classified
// by where it lands (header, refcount block or table, L1 or L2 table; found from the image as
// stored after close). Each barrier must follow
//   [dirty bit] -> refcount blocks -> sync -> refcount table -> sync -> [header: new table]
//   -> sync -> L2 tables -> [sync -> L1 table] -> sync
// with no more syncs than that order needs. Also: group commit, faults during a barrier, the
// dirty bit, and the refcount rebuild after a crash.
#include <catch2/catch.hpp>

#include <boost/asio/this_coro.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "qcow2/async.hpp"
#include "qcow2/buffer.hpp"
#include "qcow2/open.hpp"
#include "tests/unit/recording_file.hpp"
#include "tests/unit/test_util.hpp"

namespace {

using namespace qnbd;
using test::OpKind;
using test::OpRecord;

constexpr uint64_t KiB = 1024;
constexpr uint64_t MiB = 1024 * KiB;
constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ULL;

// ---- Reading an image as stored ----

uint64_t file_be(const std::string& path, uint64_t off, int bytes) {
    std::ifstream f(path, std::ios::binary);
    f.seekg(static_cast<std::streamoff>(off));
    unsigned char b[8] = {};
    f.read(reinterpret_cast<char*>(b), bytes);
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = v << 8 | b[i];
    return v;
}

bool dirty_bit(const std::string& path) {
    return file_be(path, 72, 8) & 1;
}

/// Where an image's metadata is, from its header and tables as stored in the file.
struct Layout {
    uint32_t cluster_bits = 0;
    uint64_t l1_off = 0, l1_size = 0;
    uint64_t rt_off = 0, rt_clusters = 0;
    std::set<uint64_t> l2;      ///< L2 tables (from the L1 table).
    std::set<uint64_t> blocks;  ///< Refcount blocks (from the refcount table).
    uint64_t cluster_size() const { return uint64_t{1} << cluster_bits; }
};

Layout read_layout(const std::string& path) {
    const auto b = test::read_file(path);
    auto be64 = [&](uint64_t off) { return off + 8 <= b.size() ? load_be64(b.data() + off) : 0; };
    REQUIRE(b.size() >= 104);
    Layout l;
    l.cluster_bits = load_be32(b.data() + 20);
    l.l1_size = load_be32(b.data() + 36);
    l.l1_off = be64(40);
    l.rt_off = be64(48);
    l.rt_clusters = load_be32(b.data() + 56);
    for (uint64_t i = 0; i < l.l1_size; ++i)
        if (uint64_t e = be64(l.l1_off + i * 8) & kOffsetMask) l.l2.insert(e);
    for (uint64_t i = 0; i < l.rt_clusters * l.cluster_size() / 8; ++i)
        if (uint64_t e = be64(l.rt_off + i * 8) & ~uint64_t{0x1ff}) l.blocks.insert(e);
    return l;
}

/// The on-disk L2 entry of guest cluster `c` (0 when its L2 table does not exist).
uint64_t stored_l2_entry(const std::string& path, uint64_t c) {
    const uint32_t bits = static_cast<uint32_t>(file_be(path, 20, 4));
    const uint64_t per_table = (uint64_t{1} << bits) / 8;
    const uint64_t l2 = file_be(path, file_be(path, 40, 8) + c / per_table * 8, 8) & kOffsetMask;
    return l2 ? file_be(path, l2 + c % per_table * 8, 8) : 0;
}

// ---- Classifying the writes of a barrier ----

enum class Stage { DirtyHeader, RefBlock, RefTable, MovedHeader, L2, L1, Other };

const char* stage_name(Stage s) {
    static const char* names[] = {"dirty-header", "refblock", "reftable", "moved-header",
                                  "L2",           "L1",       "OTHER"};
    return names[static_cast<int>(s)];
}
std::ostream& operator<<(std::ostream& os, Stage s) {
    return os << stage_name(s);
}

/// Tells metadata writes apart by offset. `before`: the image before it was opened (the old
/// refcount table); `after`: after close (every L2 table and refcount block ever used).
struct Classifier {
    Layout before, after;

    static bool within(const OpRecord& w, uint64_t start, uint64_t len) {
        return w.offset >= start && w.end() <= start + len;
    }
    Stage operator()(const OpRecord& w) const {
        const uint64_t cs = after.cluster_size();
        if (w.offset < cs) {
            const uint64_t rt = w.data.size() >= 56 ? load_be64(w.data.data() + 48) : 0;
            return rt == before.rt_off ? Stage::DirtyHeader : Stage::MovedHeader;
        }
        if (after.l2.count(w.offset)) return Stage::L2;
        if (after.blocks.count(w.offset)) return Stage::RefBlock;
        if (within(w, after.l1_off, after.l1_size * 8)) return Stage::L1;
        if (within(w, after.rt_off, after.rt_clusters * cs) ||
            within(w, before.rt_off, before.rt_clusters * cs))
            return Stage::RefTable;
        return Stage::Other;
    }
};

/// What one flush did: its operations and the engine counters around it.
struct Window {
    std::vector<OpRecord> ops;
    DiskStats before, after;
    bool data = false;  ///< Guest data was written since the previous barrier.
};

struct Summary {
    std::vector<Stage> stages;  ///< Non-empty stages, in barrier order.
    std::map<Stage, std::vector<OpRecord>> writes;
    size_t syncs = 0;
};

std::string describe(const std::vector<OpRecord>& ops, const Classifier& cls) {
    std::ostringstream os;
    for (const auto& op : ops) {
        if (op.kind == OpKind::Read) continue;
        os << op.seq << "-" << op.done << " " << test::op_name(op.kind);
        if (op.kind == OpKind::Write)
            os << " " << stage_name(cls(op)) << " @0x" << std::hex << op.offset << std::dec << "+"
               << op.length;
        if (op.error) os << " error " << op.error;
        os << "\n";
    }
    return os.str();
}

/// True if some successful sync was issued after `after_done` and completed before `before_seq`.
bool sync_between(const std::vector<const OpRecord*>& syncs, uint64_t after_done,
                  uint64_t before_seq) {
    for (const auto* s : syncs)
        if (!s->error && s->seq > after_done && s->done < before_seq) return true;
    return false;
}

/// Checks the order of one barrier's operations and returns what it contained.
Summary check_barrier(const Window& w, const Classifier& cls) {
    INFO("barrier operations (seq-done):\n" << describe(w.ops, cls));
    Summary s;
    std::vector<const OpRecord*> syncs;
    for (const auto& op : w.ops) {
        if (op.kind == OpKind::Sync) syncs.push_back(&op);
        if (op.kind == OpKind::Write) s.writes[cls(op)].push_back(op);
        CHECK(op.kind != OpKind::Fallocate);
    }
    s.syncs = syncs.size();
    CHECK(s.writes[Stage::Other].empty());
    for (const auto& h : s.writes[Stage::DirtyHeader])
        CHECK((load_be64(h.data.data() + 72) & 1) == 1);
    for (auto st : {Stage::DirtyHeader, Stage::RefBlock, Stage::RefTable, Stage::MovedHeader,
                    Stage::L2, Stage::L1})
        if (!s.writes[st].empty()) s.stages.push_back(st);
    auto first_seq = [&](Stage st) {  // the first issue of a stage's writes
        uint64_t v = UINT64_MAX;
        for (const auto& op : s.writes[st]) v = std::min(v, op.seq);
        return v;
    };
    auto last_done = [&](Stage st) {  // the last completion of a stage's writes
        uint64_t v = 0;
        for (const auto& op : s.writes[st]) v = std::max(v, op.done);
        return v;
    };
    for (size_t i = 0; i < s.stages.size(); ++i) {
        const bool last = i + 1 == s.stages.size();
        INFO(stage_name(s.stages[i]) << " -> " << (last ? "end" : stage_name(s.stages[i + 1])));
        CHECK(sync_between(syncs, last_done(s.stages[i]),
                           last ? UINT64_MAX : first_seq(s.stages[i + 1])));
    }
    // Data written before the barrier must be durable before any table can point to it.
    const bool merges =
        !s.stages.empty() && (s.stages[0] == Stage::DirtyHeader || s.stages[0] == Stage::RefBlock);
    if (w.data && !s.stages.empty() && !merges)
        CHECK(sync_between(syncs, 0, first_seq(s.stages[0])));
    const size_t need =
        s.stages.empty() ? (w.data ? 1 : 0) : s.stages.size() + (w.data && !merges ? 1 : 0);
    CHECK(s.syncs == need);
    // The engine's counters agree with what reached the file.
    size_t writes = 0;
    for (const auto& [st, v] : s.writes) writes += v.size();
    CHECK(w.after.barriers - w.before.barriers == 1);
    CHECK(w.after.syncs - w.before.syncs == s.syncs);
    CHECK(w.after.metadata_writes - w.before.metadata_writes == writes);
    return s;
}

// ---- Driving images ----

void qemu_create(const std::string& path, const std::string& opts, uint64_t size) {
    test::sh_output("qemu-img create -q -f qcow2 " + (opts.empty() ? "" : "-o " + opts + " ") +
                    path + " " + std::to_string(size) + " 2>&1");
}

/// `qemu-img check`: its exit status (0 clean, 2 corrupt, 3 leaks only) and its output.
std::pair<int, std::string> qemu_check(const std::string& path) {
    auto out = test::sh_output("qemu-img check " + path + " 2>&1; echo \"rc=$?\"");
    return {std::stoi(out.substr(out.rfind("rc=") + 3)), out.substr(0, 4000)};
}

void require_clean(const std::string& path) {
    const auto [rc, out] = qemu_check(path);
    INFO(out);
    REQUIRE(rc == 0);
    CHECK_THAT(out, Catch::Contains("No errors were found"));
}

/// qemu-io confirms that [off, off+len) reads as `pattern`.
void require_pattern(const std::string& path, uint64_t off, uint64_t len, int pattern) {
    const std::string n = std::to_string(len);
    const auto out =
        test::sh_output("qemu-io -r -f qcow2 -c 'read -P " + std::to_string(pattern) + " " +
                        std::to_string(off) + " " + n + "' " + path + " 2>&1; true");
    INFO("offset " << off << " length " << len << " pattern " << pattern << "\n" << out);
    CHECK_THAT(out, !Catch::Contains("failed") && Catch::Contains("read " + n + "/" + n));
}

struct Expect {
    uint64_t off, len;
    int pattern;
};
void require_patterns(const std::string& path, std::initializer_list<Expect> want) {
    for (const auto& e : want) require_pattern(path, e.off, e.len, e.pattern);
}

/// An image made by qemu-img, opened through a recording file.
struct Session {
    test::TempDir dir;
    std::string path = dir.file("img.qcow2");
    asio::io_context ctx;
    std::shared_ptr<test::OpLog> log = std::make_shared<test::OpLog>();
    /// Large enough that no background barrier starts while a test writes.
    uint64_t cache_bytes = 64 * MiB;

    Session(const std::string& opts, uint64_t size) {
        qemu_create(path, opts, size);
        log->set_record_data(true);
    }
    template <class F>
    void run(F body) {
        test::run(ctx, body());
    }
    awaitable<std::shared_ptr<Disk>> open(std::string p = "") {
        OpenOptions o;
        o.file_opener = test::recording_opener(log);
        o.metadata_cache_bytes = cache_bytes;
        auto d = co_await open_disk(co_await asio::this_coro::executor, p.empty() ? path : p, o);
        if (!d) FAIL("open_disk failed: " << d.error().message);
        co_return std::move(*d);
    }
};

awaitable<Result<void>> write_byte(Disk& d, uint64_t off, uint64_t len, int byte) {
    Buffer b(len);
    std::memset(b.data(), byte, len);
    co_return co_await d.write(GuestOffset{off}, b.span(), WriteFlags{});
}

awaitable<void> write_ok(Disk& d, uint64_t off, uint64_t len, int byte) {
    auto r = co_await write_byte(d, off, len, byte);
    if (!r) FAIL("write at " << off << " failed: " << r.error().message);
}

awaitable<Window> flush_window(Disk& d, test::OpLog& log, bool data) {
    Window w;
    w.data = data;
    w.before = d.stats();
    const uint64_t from = log.clock();
    auto r = co_await d.flush();
    if (!r) FAIL("flush failed: " << r.error().message);
    w.after = d.stats();
    w.ops = log.ops_since(from);
    co_return w;
}

awaitable<void> close_ok(Disk& d) {
    auto r = co_await d.close();
    if (!r) FAIL("close failed: " << r.error().message);
}

using Stages = std::vector<Stage>;

}  // namespace

TEST_CASE("first barrier: dirty bit, refcounts, L2 tables, L1 table; then two syncs", "[barrier]") {
    Session s("", 1024 * MiB);
    const Layout before = read_layout(s.path);
    Window first, second;
    bool dirty_after_flush = false;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x11);
        co_await write_ok(*d, 512 * MiB + 4 * KiB, 8 * KiB, 0x22);  // a second L2 table
        first = co_await flush_window(*d, *s.log, true);
        dirty_after_flush = dirty_bit(s.path);
        co_await write_ok(*d, 128 * KiB, 64 * KiB, 0x33);  // existing L2 table and refblock
        second = co_await flush_window(*d, *s.log, true);
        co_await close_ok(*d);
    });
    CHECK(before.l2.empty());
    CHECK(dirty_after_flush);
    CHECK_FALSE(dirty_bit(s.path));
    const Layout after = read_layout(s.path);
    CHECK(after.l2.size() == 2);
    const Classifier cls{before, after};
    Summary s1 = check_barrier(first, cls);
    CHECK(s1.stages == Stages{Stage::DirtyHeader, Stage::RefBlock, Stage::L2, Stage::L1});
    CHECK(s1.writes[Stage::L2].size() == 2);
    Summary s2 = check_barrier(second, cls);
    CHECK(s2.stages == Stages{Stage::RefBlock, Stage::L2});
    CHECK(s2.syncs == 2);
    require_clean(s.path);
    require_patterns(s.path, {{0, 64 * KiB, 0x11},
                              {512 * MiB + 4 * KiB, 8 * KiB, 0x22},
                              {512 * MiB, 4 * KiB, 0},
                              {128 * KiB, 64 * KiB, 0x33}});
}

TEST_CASE("refcount table growth: new table synced before the header points to it", "[barrier]") {
    // 512-byte clusters with 64-bit refcounts: one table cluster covers 2 MiB of file.
    Session s("cluster_size=512,refcount_bits=64", 4 * MiB);
    const Layout before = read_layout(s.path);
    REQUIRE(before.rt_clusters == 1);
    Window w;
    const uint64_t chunk = 64 * KiB, chunks = 40;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        for (uint64_t i = 0; i < chunks; ++i) co_await write_ok(*d, i * chunk, chunk, int(i + 1));
        REQUIRE(d->stats().barriers == 0);
        w = co_await flush_window(*d, *s.log, true);
        co_await close_ok(*d);
    });
    const Layout after = read_layout(s.path);
    CHECK(after.rt_off != before.rt_off);
    CHECK(after.rt_clusters > before.rt_clusters);
    Summary sum = check_barrier(w, Classifier{before, after});
    CHECK(sum.stages == Stages{Stage::DirtyHeader, Stage::RefBlock, Stage::RefTable,
                               Stage::MovedHeader, Stage::L2, Stage::L1});
    for (const auto& t : sum.writes[Stage::RefTable])
        CHECK(Classifier::within(t, after.rt_off, after.rt_clusters * after.cluster_size()));
    REQUIRE(sum.writes[Stage::MovedHeader].size() == 1);
    const auto& h = sum.writes[Stage::MovedHeader][0].data;
    CHECK(load_be64(h.data() + 48) == after.rt_off);
    CHECK(load_be32(h.data() + 56) == after.rt_clusters);
    require_clean(s.path);
    for (uint64_t i : {0u, 17u, 39u}) require_pattern(s.path, i * chunk, chunk, int(i + 1));
}

TEST_CASE("extended L2: allocating subclusters follows the same order", "[barrier]") {
    Session s("extended_l2=on", 64 * MiB);
    const Layout before = read_layout(s.path);
    Window first, second;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 4 * KiB, 0x44);
        co_await write_ok(*d, MiB + 2 * KiB, 4 * KiB, 0x45);
        first = co_await flush_window(*d, *s.log, true);
        co_await write_ok(*d, 8 * KiB, 2 * KiB, 0x46);  // new subcluster of an owned cluster
        second = co_await flush_window(*d, *s.log, true);
        co_await close_ok(*d);
    });
    const Classifier cls{before, read_layout(s.path)};
    CHECK(check_barrier(first, cls).stages ==
          Stages{Stage::DirtyHeader, Stage::RefBlock, Stage::L2, Stage::L1});
    Summary s2 = check_barrier(second, cls);
    CHECK(s2.stages == Stages{Stage::L2});  // bitmap only: data synced first, then the table
    CHECK(s2.syncs == 2);
    require_clean(s.path);
    require_patterns(s.path, {{0, 4 * KiB, 0x44},
                              {4 * KiB, 4 * KiB, 0},
                              {8 * KiB, 2 * KiB, 0x46},
                              {MiB + 2 * KiB, 4 * KiB, 0x45},
                              {MiB, 2 * KiB, 0}});
}

TEST_CASE("steady state: at most two syncs per allocating barrier", "[barrier]") {
    Session s("", 16 * MiB);
    const Layout before = read_layout(s.path);
    std::vector<Window> windows;
    DiskStats start, end;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 1);
        (void)co_await flush_window(*d, *s.log, true);
        start = d->stats();
        for (int i = 1; i <= 8; ++i) {
            co_await write_ok(*d, uint64_t(i) * 64 * KiB, 64 * KiB, i + 1);
            windows.push_back(co_await flush_window(*d, *s.log, true));
        }
        end = d->stats();
        co_await close_ok(*d);
    });
    const Classifier cls{before, read_layout(s.path)};
    for (const auto& w : windows)
        CHECK(check_barrier(w, cls).stages == Stages{Stage::RefBlock, Stage::L2});
    const uint64_t barriers = end.barriers - start.barriers;
    CHECK(barriers == 8);
    CHECK(end.syncs - start.syncs <= 2 * barriers);
    CHECK(end.clusters_allocated - start.clusters_allocated == 8);
    require_clean(s.path);
    for (int i = 0; i <= 8; ++i) require_pattern(s.path, uint64_t(i) * 64 * KiB, 64 * KiB, i + 1);
}

TEST_CASE("overwriting in place: one sync, no metadata, the dirty bit stays clear", "[barrier]") {
    Session s("", 16 * MiB);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 128 * KiB, 7);
        co_await close_ok(*d);
    });
    REQUIRE_FALSE(dirty_bit(s.path));
    const Layout before = read_layout(s.path);
    Window overwrite, idle;
    bool dirty = true;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 4 * KiB, 100 * KiB, 8);
        overwrite = co_await flush_window(*d, *s.log, true);
        dirty = dirty_bit(s.path);
        idle = co_await flush_window(*d, *s.log, false);
        co_await close_ok(*d);
    });
    const Classifier cls{before, read_layout(s.path)};
    Summary o = check_barrier(overwrite, cls);
    CHECK(o.stages.empty());
    CHECK(o.syncs == 1);
    CHECK(overwrite.after.metadata_writes == overwrite.before.metadata_writes);
    CHECK_FALSE(dirty);
    Summary i = check_barrier(idle, cls);  // nothing to make durable: no sync at all
    CHECK(i.syncs == 0);
    require_clean(s.path);
    require_patterns(s.path, {{0, 4 * KiB, 7}, {4 * KiB, 100 * KiB, 8}, {104 * KiB, 24 * KiB, 7}});
}

namespace {

/// Writes cluster `i` then flushes; afterwards the write's L2 entry must be in the file.
awaitable<Result<void>> write_then_flush(Disk& d, const std::string& path, uint64_t i) {
    if (auto r = co_await write_byte(d, i * 64 * KiB, 64 * KiB, int(i)); !r) co_return r;
    if (auto r = co_await d.flush(); !r) co_return r;
    if (stored_l2_entry(path, i) == 0)
        co_return Error{EIO, "cluster " + std::to_string(i) + " not in the stored L2 table"};
    co_return ok();
}

}  // namespace

TEST_CASE("group commit: 64 concurrent flushes share a few barriers", "[barrier]") {
    Session s("", 16 * MiB);
    DiskStats start, end;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x80);
        (void)co_await flush_window(*d, *s.log, true);
        start = d->stats();
        JoinSet join(co_await asio::this_coro::executor);
        for (uint64_t i = 1; i <= 64; ++i) join.spawn(write_then_flush(*d, s.path, i));
        auto r = co_await join.wait();
        if (!r) FAIL(r.error().message);
        end = d->stats();
        co_await close_ok(*d);
    });
    const uint64_t flushes = end.flush_requests - start.flush_requests;
    const uint64_t barriers = end.barriers - start.barriers;
    INFO(flushes << " flushes, " << barriers << " barriers, " << end.syncs - start.syncs
                 << " syncs");
    CHECK(flushes == 64);
    CHECK(barriers >= 1);
    CHECK(barriers * 4 <= flushes);
    CHECK(end.syncs - start.syncs <= 4 * barriers);
    require_clean(s.path);
    for (uint64_t i : {1u, 33u, 64u}) require_pattern(s.path, i * 64 * KiB, 64 * KiB, int(i));
}

namespace {

/// Fails the `nth` sync of the first barrier with EIO, then flushes again without faults.
/// Returns what the retry barrier wrote; the image must end up clean with its data.
Summary retry_after_failed_sync(int nth) {
    INFO("failing sync " << nth);
    Session s("", 16 * MiB);
    const Layout before = read_layout(s.path);
    Window retry;
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x51);
        co_await write_ok(*d, 3 * MiB, 64 * KiB, 0x52);
        s.log->fail_nth(OpKind::Sync, uint64_t(nth), EIO);
        auto r = co_await d->flush();
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EIO);
        s.log->clear_faults();
        retry = co_await flush_window(*d, *s.log, true);
        co_await close_ok(*d);
    });
    size_t injected = 0;
    for (const auto& op : s.log->ops()) injected += op.injected;
    CHECK(injected == 1);
    Summary sum = check_barrier(retry, Classifier{before, read_layout(s.path)});
    require_clean(s.path);
    require_patterns(s.path, {{0, 64 * KiB, 0x51}, {3 * MiB, 64 * KiB, 0x52}});
    return sum;
}

}  // namespace

TEST_CASE("an EIO on a barrier's sync fails flush; a retry rewrites and succeeds",
          "[barrier][fault]") {
    const int nth = GENERATE(2, 3, 4);  // the first barrier has four syncs
    INFO("failing sync " << nth);
    CHECK(retry_after_failed_sync(nth).stages == Stages{Stage::RefBlock, Stage::L2, Stage::L1});
}

// After fdatasync fails, the written header page may be dropped from the page cache without
// reaching the disk, so the retry must write and sync the dirty bit again before any other
// metadata.
TEST_CASE("an EIO on the dirty-bit sync: the retry writes and syncs the header again",
          "[barrier][fault]") {
    CHECK(retry_after_failed_sync(1).stages ==
          Stages{Stage::DirtyHeader, Stage::RefBlock, Stage::L2, Stage::L1});
}

TEST_CASE("ENOSPC on every write after a point fails flush and writes until cleared",
          "[barrier][fault]") {
    const int allowed = GENERATE(0, 1, 2);
    INFO(allowed << " writes allowed");
    Session s("", 16 * MiB);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await write_ok(*d, 0, 64 * KiB, 0x61);
        co_await write_ok(*d, 2 * MiB, 64 * KiB, 0x62);
        s.log->fail_writes_after(uint64_t(allowed));
        auto f = co_await d->flush();
        REQUIRE_FALSE(f);
        CHECK(f.error().code == ENOSPC);
        auto w = co_await write_byte(*d, 5 * MiB, 64 * KiB, 0x63);
        REQUIRE_FALSE(w);
        CHECK(w.error().code == ENOSPC);
        s.log->clear_faults();
        auto again = co_await d->flush();
        CHECK(again);
        co_await write_ok(*d, 6 * MiB, 64 * KiB, 0x64);
        co_await close_ok(*d);
    });
    require_clean(s.path);
    require_patterns(s.path, {{0, 64 * KiB, 0x61},
                              {2 * MiB, 64 * KiB, 0x62},
                              {5 * MiB, 64 * KiB, 0},
                              {6 * MiB, 64 * KiB, 0x64}});
}

namespace {

/// Writes clusters 0-3, flushes, discards cluster 1 and flushes again: the cleared L2 entry is
/// durable but the refcount decrement is only applied in memory after that barrier, so the file
/// now holds one leaked cluster and the dirty bit.
awaitable<void> leak_one_cluster(Disk& d, test::OpLog& log) {
    for (int i = 0; i < 4; ++i) co_await write_ok(d, uint64_t(i) * 64 * KiB, 64 * KiB, 0x70 + i);
    (void)co_await flush_window(d, log, true);
    auto r = co_await d.discard(GuestOffset{64 * KiB}, 64 * KiB, WriteFlags{});
    if (!r) FAIL("discard failed: " << r.error().message);
    (void)co_await flush_window(d, log, true);
}

/// Opens `path` writable (rebuilding its refcounts) and closes it; it must then be clean.
void repair_and_check(Session& s, const std::string& path) {
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open(path);
        co_await close_ok(*d);
    });
    CHECK_FALSE(dirty_bit(path));
    require_clean(path);
    for (int i = 0; i < 4; ++i)
        require_pattern(path, uint64_t(i) * 64 * KiB, 64 * KiB, i == 1 ? 0 : 0x70 + i);
}

}  // namespace

TEST_CASE("a copy taken after a flush is dirty; open_disk rebuilds its refcounts",
          "[barrier][dirty]") {
    Session s("", 16 * MiB);
    const std::string copy = s.dir.file("crash.qcow2");
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await leak_one_cluster(*d, *s.log);
        std::filesystem::copy_file(s.path, copy);
        co_await write_ok(*d, 4 * MiB, 64 * KiB, 0x7f);  // the original goes on
        co_await close_ok(*d);
    });
    require_clean(s.path);
    CHECK(dirty_bit(copy));
    const auto [rc, out] = qemu_check(copy);
    INFO(out);
    CHECK(rc == 3);  // leaks only
    CHECK_THAT(out, Catch::Contains("1 leaked cluster"));
    repair_and_check(s, copy);
}

TEST_CASE("a Disk destroyed without close leaves the dirty bit; reopening repairs",
          "[barrier][dirty]") {
    Session s("", 16 * MiB);
    s.run([&]() -> awaitable<void> {
        auto d = co_await s.open();
        co_await leak_one_cluster(*d, *s.log);
        d.reset();  // a crash: no close
    });
    CHECK(dirty_bit(s.path));
    const auto [rc, out] = qemu_check(s.path);
    INFO(out);
    CHECK(rc == 3);
    const uint64_t before = s.log->count(OpKind::Write);
    repair_and_check(s, s.path);
    CHECK(s.log->count(OpKind::Write) > before);  // the rebuild wrote the refcount block
}
