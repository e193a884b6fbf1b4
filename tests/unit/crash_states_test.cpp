// Crash states, enumerated (docs/RELIABILITY.md): concurrent guest workloads run through the
// engine on a recording file; every crash state of the run (support/crash_states.hpp) is
// written out and checked: qemu-img check finds no corruption (leaks allowed), qnbd opens it,
// every sector reads its durable content or a later write's (support/guest_model.hpp), and
// after qnbd closes it qemu-img check finds it fully clean with no file tail past its end.
// $QNBD_CRASH_SCALE multiplies the states per segment and the requests per worker
// (scripts/crash-states.sh); $QNBD_TEST_SEED picks another run.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "base/buffer.hpp"
#include "image/open.hpp"
#include "tests/unit/support/crash_states.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/guest_model.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/random.hpp"
#include "tests/unit/support/recording_file.hpp"
#include "tests/unit/support/run.hpp"
#include "tests/unit/support/shell.hpp"

using namespace qnbd;
using namespace qnbd::test;
using namespace qnbd::test::crash;

namespace {

/// $QNBD_CRASH_SCALE, at least 1.
size_t crash_scale() {
    const char* env = std::getenv("QNBD_CRASH_SCALE");
    const long v = env && *env ? std::strtol(env, nullptr, 10) : 1;
    return v < 1 ? 1 : size_t(v);
}

/// A guest workload on one kind of image.
struct Workload {
    std::string opts;      ///< qemu-img create -o options.
    bool backing = false;  ///< On a backing file filled with data.
    uint64_t size = 4 * MiB;
    size_t workers = 4;    ///< Concurrent requesters, each in its own region of the disk.
    size_t requests = 16;  ///< Per worker (times the scale).
    uint64_t max_len = 20 * KiB;
    bool churn = false;    ///< Mostly writes and discards (see pick()).
    uint64_t prefill = 0;  ///< Bytes at the start written by qemu-io before the run.
    /// Persistent bitmaps added before the run: qemu-img bitmap --add options and name.
    std::vector<std::pair<std::string, std::string>> bitmaps = {};
};

/// What a worker does next.
enum class Req { Flush, Write, FuaWrite, Zero, ZeroUnmap, Discard };

/// The next request: a mix of every kind, or with `churn` mostly writes and discards, so that
/// freed clusters are soon reused (for data and for new tables).
Req pick(std::mt19937_64& rng, bool churn) {
    static constexpr Req mix[] = {Req::Flush,     Req::Flush,  Req::Write,    Req::Write,
                                  Req::Write,     Req::Write,  Req::FuaWrite, Req::Zero,
                                  Req::ZeroUnmap, Req::Discard};
    static constexpr Req reuse[] = {Req::Flush, Req::Write,   Req::Write,   Req::Write,
                                    Req::Write, Req::Discard, Req::Discard, Req::ZeroUnmap};
    return churn ? reuse[rng() % std::size(reuse)] : mix[rng() % std::size(mix)];
}

/// The shared state of a recorded run's workers.
struct Rec {
    Disk& disk;
    GuestModel& model;
    OpLog& log;
    /// The log's clock at an acknowledgement: the last event that happened before it.
    uint64_t now() const { return log.clock() - 1; }
};

awaitable<void> flush_req(Rec& r) {
    const size_t id = r.model.issue_flush();
    require_ok(co_await r.disk.flush(), "flush");
    r.model.ack_flush(id, r.now());
}

/// One write-like request of kind `k` on [off, off+len).
awaitable<void> change_req(Rec& r, Req k, uint64_t off, uint64_t len, std::mt19937_64& rng) {
    if (k == Req::Write || k == Req::FuaWrite) {
        Bytes data = random_bytes(rng, len);
        const size_t id = r.model.issue_write(off, len, data, k == Req::FuaWrite);
        const WriteFlags f{k == Req::FuaWrite};
        require_ok(co_await r.disk.write(GuestOffset{off}, data, f), "write");
        r.model.ack_write(id, r.now());
    } else if (k == Req::Discard) {
        const size_t id = r.model.issue_write(off, len, {}, false);
        require_ok(co_await r.disk.discard(GuestOffset{off}, len, WriteFlags{}), "discard");
        r.model.ack_write(id, r.now());
        Bytes now = co_await read_ok(r.disk, off, len);  // qcow2: zeros or the backing file
        r.model.set_content(id, std::move(now));
    } else {
        const size_t id = r.model.issue_write(off, len, {}, false);
        const ZeroFlags f{k == Req::ZeroUnmap, false, false};
        require_ok(co_await r.disk.write_zeroes(GuestOffset{off}, len, f), "write zeroes");
        r.model.ack_write(id, r.now());
    }
}

/// Random requests within [from, to) of the disk.
awaitable<void> worker(Rec& r, uint64_t from, uint64_t to, size_t n, const Workload& w,
                       uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i < n; ++i) {
        const Req k = pick(rng, w.churn);
        if (k == Req::Flush) {
            co_await flush_req(r);
            continue;
        }
        const uint64_t len = kSector * (1 + rng() % (w.max_len / kSector));
        const uint64_t off = from + kSector * (rng() % ((to - from - len) / kSector + 1));
        co_await change_req(r, k, off, len, rng);
    }
}

/// Where runs keep their files: a tmpfs where there is one, since every check syncs.
std::filesystem::path scratch() {
    return std::filesystem::is_directory("/dev/shm") ? "/dev/shm"
                                                     : std::filesystem::temp_directory_path();
}

/// A recorded run: the image's history and the guest's requests.
struct Run {
    TempDir dir{scratch()};
    std::string path = dir.file("img.qcow2");
    std::optional<FileHistory> history;
    std::optional<GuestModel> model;
    Bytes initial;    ///< What the guest read before the run.
    DiskStats stats;  ///< The engine's counters at the end of the run, before close.
};

/// Creates the image (and its backing file) of `w` in `run`.
void create_image(const Workload& w, Run& run) {
    if (w.backing) {
        const std::string base = run.dir.file("base.qcow2");
        qemu_create(base, w.size, "cluster_size=65536");
        std::vector<std::string> cmds;
        for (uint64_t off = 0; off < w.size; off += 256 * KiB)
            cmds.push_back("write -P " + n(0x10 + off / (256 * KiB)) + " " + n(off) + " 256k");
        qemu_io(base, cmds);
    }
    qemu_create(run.path, w.size, w.opts, w.backing ? "base.qcow2" : "", "qcow2");
    if (w.prefill) qemu_io(run.path, {"write -P 0x3c 0 " + n(w.prefill)});
    for (const auto& [opts, name] : w.bitmaps)
        run_ok("qemu-img bitmap --add " + opts + " " + shq(run.path) + " " + name);
}

/// Opens the image through the recording file, runs the workers and closes it cleanly.
awaitable<void> run_workload(const Workload& w, Run& run, OpLog& log, uint64_t seed) {
    OpenOptions o;
    o.file_opener = recording_opener(std::shared_ptr<OpLog>(&log, [](OpLog*) {}));
    auto d = co_await open_disk(co_await asio::this_coro::executor, run.path, o);
    if (!d) FAIL("open_disk: " << d.error().message);
    Bytes initial = co_await read_ok(**d, 0, w.size);
    run.initial = initial;
    run.model.emplace(std::move(initial));
    Rec rec{**d, *run.model, log};
    std::vector<awaitable<void>> tasks;
    const uint64_t region = w.size / w.workers;
    const size_t n = w.requests * crash_scale();
    for (size_t i = 0; i < w.workers; ++i)
        tasks.push_back(worker(rec, i * region, (i + 1) * region, n, w, seed + i));
    co_await when_all(std::move(tasks));
    run.stats = (*d)->stats();
    require_ok(co_await (*d)->close(), "close");
}

/// Records a run of `w` with seed `seed`.
std::unique_ptr<Run> record(const Workload& w, uint64_t seed) {
    auto run = std::make_unique<Run>();
    create_image(w, *run);
    const Bytes before = read_file(run->path);
    OpLog log;
    log.set_record_data(true);
    asio::io_context io;
    run_co(io, [&]() { return run_workload(w, *run, log, seed); });
    run->history.emplace(history_of(log.ops(), run->path, before));
    return run;
}

/// Counts of a check of every crash state.
struct Tally {
    size_t states = 0;
    size_t segments = 0;
    size_t with_leaks = 0;          ///< States where qemu-img check found leaked clusters.
    bool table_moved = false;       ///< The run moved the refcount table (header field changed).
    size_t bitmaps_in_use = 0;      ///< Bitmaps found in use (inconsistent) in a state.
    size_t bitmaps_consistent = 0;  ///< Bitmaps found consistent, and checked.
    DiskStats run;                  ///< The recorded run's engine counters.
};

/// R19-R21: a bitmap a crash state presents as consistent marks dirty every granule whose
/// contents differ from what the guest read before the run; one in use is never trusted.
awaitable<void> check_bitmaps(const std::string& path, const Workload& w, const Bytes& initial,
                              Tally& t) {
    OpenOptions ro;
    ro.read_only = true;
    auto d = co_await open_disk(co_await asio::this_coro::executor, path, ro);
    if (!d) FAIL("qnbd refused the crash state read-only: " << d.error().message);
    const Bytes got = co_await read_ok(**d, 0, w.size);
    for (const auto& [opts, name] : w.bitmaps) {
        const DirtyBitmap* b = (*d)->dirty_bitmap(name);
        REQUIRE(b);
        if (!b->consistent) {
            ++t.bitmaps_in_use;
            continue;
        }
        ++t.bitmaps_consistent;
        const bool enabled = opts.find("--disable") == std::string::npos;
        for (uint64_t off = 0; off < w.size; off += b->granularity()) {
            const uint64_t len = std::min(b->granularity(), w.size - off);
            const bool changed =
                !std::equal(got.begin() + off, got.begin() + off + len, initial.begin() + off);
            INFO("bitmap " << name << ", granule at " << off);
            if (enabled && changed) REQUIRE(b->dirty_at(off));
            if (!enabled) REQUIRE_FALSE(b->dirty_at(off));  // A disabled bitmap never changes.
        }
    }
    require_ok(co_await (*d)->close(), "close");
}

/// Opens a crash state with qnbd, checks what the guest reads, closes it.
awaitable<void> reopen_and_read(const std::string& path, const GuestModel& m, uint64_t horizon) {
    const OpenOptions plain;  // a named local: GCC 12 destroys braced temporaries twice here
    auto d = co_await open_disk(co_await asio::this_coro::executor, path, plain);
    if (!d) FAIL("qnbd refused the crash state: " << d.error().message);
    const Bytes got = co_await read_ok(**d, 0, m.size());
    if (auto bad = m.check(got, horizon)) FAIL(*bad);
    require_ok(co_await (*d)->close(), "close");
}

/// Every check of one crash state, written to `path`.
void check_state(const std::string& path, const Bytes& file, const Run& run, uint64_t horizon,
                 const Workload& w, Tally& t) {
    const GuestModel& m = *run.model;
    write_file(path, file);
    const CheckResult before = qemu_check(path);
    INFO("qemu-img check of the crash state:\n" << before.json);
    REQUIRE(before.corruptions == 0);
    REQUIRE(before.check_errors == 0);
    REQUIRE((before.exit_status == 0 || before.exit_status == 3));
    t.with_leaks += before.leaks > 0;
    asio::io_context io;
    if (!w.bitmaps.empty()) run_co(io, [&]() { return check_bitmaps(path, w, run.initial, t); });
    run_co(io, [&]() { return reopen_and_read(path, m, horizon); });
    const CheckResult after = qemu_check(path);
    INFO("qemu-img check after qnbd reopened and closed it:\n" << after.json);
    REQUIRE(after.exit_status == 0);
    REQUIRE(after.leaks == 0);
    const uint64_t end = json_uint(after.json, "image-end-offset").value_or(0);
    REQUIRE(read_file(path).size() <= end);  // no orphaned tail
}

/// Checks every crash state of a run of `w`.
Tally check_all(const Workload& w, uint64_t seed) {
    auto run = record(w, seed);
    const FileHistory& h = *run->history;
    const size_t k = crash_scale();
    const Budget budget{64 * k, 8 * k, 6 * k};
    Tally t;
    t.run = run->stats;
    t.segments = segments(h).size();
    const Bytes final_file = read_file(run->path);
    t.table_moved = load_be64(final_file.data() + 48) != load_be64(h.base.data() + 48);
    const std::string state = run->dir.file("state.qcow2");
    for_each_state(h, budget, seed, [&](const StatePlan& p, const Segment& s, const Bytes& f) {
        INFO("seed " << seed << ", crash state " << t.states << ": " << p.describe(h));
        check_state(state, f, *run, s.horizon, w, t);
        ++t.states;
    });
    return t;
}

/// Runs check_all and reports the figures.
Tally enumerate(const char* name, const Workload& w) {
    const uint64_t seed = test_seed(0xc0ffee);
    const Tally t = check_all(w, seed);
    WARN(name << ": " << t.states << " crash states in " << t.segments << " segments checked ("
              << t.with_leaks << " with leaked clusters, none corrupt, nothing lost; bitmaps "
              << t.bitmaps_consistent << " consistent and covering, " << t.bitmaps_in_use
              << " in use); the run: " << t.run.barriers << " barriers, " << t.run.syncs
              << " syncs, " << t.run.syncs_saved << " syncs saved (R22)");
    CHECK(t.states > t.segments);
    return t;
}

/// The file with changes [0, n) applied, except change `skip`.
Bytes durable_file(const FileHistory& h, size_t n, size_t skip) {
    Bytes file = h.base;
    for (size_t i = 0; i < n; ++i)
        if (i != skip) apply(file, h.changes[i]);
    return file;
}

/// Whether one of changes (v, n) overwrites, zeroes or cuts off part of change `v`.
bool rewritten_later(const FileHistory& h, size_t v, size_t n) {
    const OpRecord& c = h.changes[v];
    for (size_t i = v + 1; i < n; ++i) {
        const OpRecord& o = h.changes[i];
        if (o.kind == OpKind::Truncate ? o.offset < c.end() : o.overlaps(c.offset, c.end()))
            return true;
    }
    return false;
}

}  // namespace

TEST_CASE(
    "crash states: writes and FUA writes and zeros and discards and flushes from 4 requesters",
    "[crash]") {
    enumerate("64 KiB clusters", Workload{"cluster_size=65536", false, 4 * MiB, 4, 24});
}

TEST_CASE("crash states: 512-byte clusters and 64-bit refcounts grow and move the refcount table",
          "[crash]") {
    const Tally t =
        enumerate("512-byte clusters", Workload{"cluster_size=512,refcount_bits=64", false, 4 * MiB,
                                                4, 10, 32 * KiB, false, 1900 * KiB});
    CHECK(t.table_moved);
}

TEST_CASE("crash states: freed clusters reused for data and for new L2 tables", "[crash]") {
    enumerate("reuse", Workload{"cluster_size=512", false, 4 * MiB, 4, 32, 2 * KiB, true});
}

TEST_CASE("crash states: extended L2 entries (16 KiB clusters with 512-byte subclusters)",
          "[crash]") {
    enumerate("extended L2", Workload{"cluster_size=16384,extended_l2=on"});
}

TEST_CASE("crash states: data of the backing file is never replaced by zeros", "[crash]") {
    enumerate("backing file", Workload{"cluster_size=65536", true});
}

TEST_CASE("crash states: persistent bitmaps, enabled and disabled, stored at close",
          "[crash][bitmaps]") {
    Workload w{"cluster_size=4096", false, 1 * MiB, 4, 12};
    w.prefill = w.size;  // Writes in place are visible at once: the in_use flag must lead.
    w.bitmaps = {{"", "b0"}, {"-g 512", "b1"}, {"--disable", "b2"}};
    const Tally t = enumerate("bitmaps", w);
    CHECK(t.bitmaps_in_use > 0);
    CHECK(t.bitmaps_consistent > 0);
}

TEST_CASE("crash states: lazy refcounts", "[crash]") {
    enumerate("lazy refcounts", Workload{"cluster_size=4096,lazy_refcounts=on"});
}

/// Whether qnbd reading the image `file` (written to `path`) finds what the guest wrote.
static bool reads_back(const std::string& path, const Bytes& file, const GuestModel& m) {
    write_file(path, file);
    asio::io_context io;
    std::optional<std::string> bad;
    run_co(io, [&]() -> awaitable<void> {
        const OpenOptions plain;
        auto d = co_await open_disk(co_await asio::this_coro::executor, path, plain);
        REQUIRE(d);
        const Bytes got = co_await read_ok(**d, 0, m.size());
        bad = m.check(got, UINT64_MAX);
        require_ok(co_await (*d)->close(), "close");
    });
    return !bad;
}

// The checks can fail: a run whose history loses a write that the last sync made durable and
// that nothing rewrote later (as with an engine that acknowledged a flush before its sync) is
// caught, for one of the first such writes at least.
TEST_CASE("crash states: a lost durable data write is caught by the checks", "[crash]") {
    auto run = record(Workload{"cluster_size=65536"}, 7);
    const FileHistory& h = *run->history;
    const size_t durable = segments(h).back().durable;
    REQUIRE(
        reads_back(run->dir.file("all.qcow2"), durable_file(h, durable, SIZE_MAX), *run->model));
    size_t tried = 0, caught = 0;
    for (size_t v = 0; v < durable && tried < 8; ++v) {
        const OpRecord& c = h.changes[v];
        if (c.kind != OpKind::Write || c.length >= 64 * KiB || rewritten_later(h, v, durable))
            continue;
        ++tried;
        caught +=
            !reads_back(run->dir.file("lost.qcow2"), durable_file(h, durable, v), *run->model);
    }
    INFO(tried << " lost writes tried");
    CHECK(caught > 0);
}
