// Helpers for the differential tests: building images with real qemu-img/qemu-io, reading
// qemu's view of them (convert, map, check, info), driving a Disk from coroutines, and
// comparing byte buffers with a readable failure message.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "disk/disk.hpp"
#include "image/open.hpp"
#include "tests/unit/test_util.hpp"

namespace qnbd::difftest {

namespace asio = boost::asio;
using asio::awaitable;
using Bytes = std::vector<std::byte>;
using test::TempDir;

constexpr uint64_t KiB = 1024;
constexpr uint64_t MiB = 1024 * 1024;

/// Single-quotes `s` for /bin/sh.
inline std::string shq(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

/// Runs `cmd` (stderr folded into stdout); throws with its output if it fails.
inline std::string run_ok(const std::string& cmd) {
    return test::sh_output(cmd + " 2>&1");
}

/// The seed of a randomized test: $QNBD_TEST_SEED if set, else `fallback`.
inline uint64_t test_seed(uint64_t fallback) {
    const char* env = std::getenv("QNBD_TEST_SEED");
    return env && *env ? std::strtoull(env, nullptr, 0) : fallback;
}

/// `qemu-img create -f qcow2` with options `opts` ("k=v,k=v", may be empty) and an optional
/// backing file (stored exactly as given, so it may be relative to the image's directory).
inline void qemu_create(const std::string& path, uint64_t size, const std::string& opts,
                        const std::string& backing = "", const std::string& backing_fmt = "") {
    std::string cmd = "qemu-img create -q -f qcow2";
    if (!opts.empty()) cmd += " -o " + shq(opts);
    if (!backing.empty()) cmd += " -b " + shq(backing) + " -F " + shq(backing_fmt);
    run_ok(cmd + " " + shq(path) + " " + std::to_string(size));
}

/// Runs qemu-io commands (e.g. "write -P 0x11 0 64k") in one session on a qcow2 image.
inline void qemu_io(const std::string& path, const std::vector<std::string>& cmds,
                    const std::string& fmt = "qcow2") {
    std::string cmd = "qemu-io -f " + fmt;
    for (const auto& c : cmds) cmd += " -c " + shq(c);
    run_ok(cmd + " " + shq(path));
}

/// Deterministic pseudo-random bytes; `compressible` draws from a small alphabet in runs so
/// that zlib/zstd shrink it (qemu stores a cluster uncompressed when compression does not help).
inline Bytes random_bytes(std::mt19937_64& rng, size_t n, bool compressible = false) {
    Bytes out(n);
    for (size_t i = 0; i < n;) {
        uint64_t r = rng();
        if (!compressible) {
            size_t k = std::min<size_t>(8, n - i);
            std::memcpy(out.data() + i, &r, k);
            i += k;
        } else {
            size_t run = 1 + (r & 15);
            for (size_t k = 0; k < run && i < n; ++k, ++i) out[i] = std::byte('a' + ((r >> 8) % 6));
        }
    }
    return out;
}

/// Whole contents of a file (fast for the multi-MiB views the tests compare).
inline Bytes slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot open " + path);
    Bytes data(static_cast<size_t>(f.tellg()));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
    return data;
}

inline void write_file(const std::string& path, const Bytes& data) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
}

/// Writes a file of `size` seeded random bytes (a raw base image or a qemu-io -s pattern).
inline void random_file(const std::string& path, uint64_t size, uint64_t seed,
                        bool compressible = false) {
    std::mt19937_64 rng(seed);
    write_file(path, random_bytes(rng, size, compressible));
}

/// qemu's view of the guest contents: `qemu-img convert -O raw` read back.
inline Bytes qemu_raw(const std::string& path) {
    std::string out = path + ".qemu-view.raw";
    run_ok("qemu-img convert -O raw " + shq(path) + " " + shq(out));
    Bytes data = slurp(out);
    std::remove(out.c_str());
    return data;
}

/// Value of an integer field "key": N in qemu's JSON output, if present.
inline std::optional<uint64_t> json_uint(const std::string& json, const std::string& key) {
    auto pos = json.find("\"" + key + "\"");
    if (pos == std::string::npos) return std::nullopt;
    pos = json.find(':', pos);
    return std::strtoull(json.c_str() + pos + 1, nullptr, 10);
}

/// Virtual size per `qemu-img info`.
inline uint64_t qemu_virtual_size(const std::string& path) {
    auto json = run_ok("qemu-img info --output=json " + shq(path));
    return json_uint(json, "virtual-size").value();
}

/// `qemu-img check --output=json`: exit status and the counters that must be zero.
struct CheckResult {
    int exit_status = -1;
    uint64_t leaks = 0, corruptions = 0, check_errors = 0, compressed_clusters = 0;
    std::string json;
};

inline CheckResult qemu_check(const std::string& path) {
    std::string out = path + ".check.json";
    CheckResult r;
    r.exit_status =
        test::sh("qemu-img check --output=json " + shq(path) + " >" + shq(out) + " 2>&1");
    auto b = slurp(out);
    std::remove(out.c_str());
    r.json.assign(reinterpret_cast<const char*>(b.data()), b.size());
    r.leaks = json_uint(r.json, "leaks").value_or(0);
    r.corruptions = json_uint(r.json, "corruptions").value_or(0);
    r.check_errors = json_uint(r.json, "check-errors").value_or(0);
    r.compressed_clusters = json_uint(r.json, "compressed-clusters").value_or(0);
    return r;
}

/// Fails the test unless `qemu-img check` finds the image clean: exit 0, no leaks, no
/// corruptions, no check errors.
inline void require_qemu_check_clean(const std::string& path) {
    auto r = qemu_check(path);
    INFO("qemu-img check " << path << ":\n" << r.json);
    CHECK(r.leaks == 0);
    CHECK(r.corruptions == 0);
    CHECK(r.check_errors == 0);
    REQUIRE(r.exit_status == 0);
}

/// One run of `qemu-img map --output=json`, translated to qnbd's depth convention
/// (1 = top layer, 0 = not allocated in any layer).
struct MapRun {
    uint64_t start = 0, length = 0;
    uint32_t depth = 0;
    bool zero = false, data = false;
    bool operator==(const MapRun&) const = default;
};

inline std::ostream& operator<<(std::ostream& os, const MapRun& r) {
    return os << "{start " << r.start << " len " << r.length << " depth " << r.depth
              << (r.zero ? " zero" : "") << (r.data ? " data" : "") << "}";
}

/// Merges adjacent runs with equal depth/zero/data (both sides are compared merged).
inline std::vector<MapRun> merge_runs(const std::vector<MapRun>& in) {
    std::vector<MapRun> out;
    for (const auto& r : in) {
        if (r.length == 0) continue;
        if (!out.empty() && out.back().depth == r.depth && out.back().zero == r.zero &&
            out.back().data == r.data && out.back().start + out.back().length == r.start) {
            out.back().length += r.length;
        } else {
            out.push_back(r);
        }
    }
    return out;
}

/// Flat "key": value pairs of one JSON object (values as raw text).
inline std::map<std::string, std::string> json_fields(const std::string& obj) {
    std::map<std::string, std::string> f;
    size_t i = 0;
    while ((i = obj.find('"', i)) != std::string::npos) {
        size_t j = obj.find('"', i + 1);
        std::string key = obj.substr(i + 1, j - i - 1);
        size_t colon = obj.find(':', j);
        size_t v = obj.find_first_not_of(' ', colon + 1);
        size_t end = obj[v] == '"' ? obj.find('"', v + 1) + 1 : obj.find_first_of(",}", v);
        f[key] = obj.substr(v, end - v);
        i = end;
    }
    return f;
}

/// `qemu-img map --output=json`, merged, in qnbd's depth convention.
inline std::vector<MapRun> qemu_map(const std::string& path) {
    auto json = run_ok("qemu-img map --output=json " + shq(path));
    std::vector<MapRun> runs;
    size_t i = 0;
    while ((i = json.find('{', i)) != std::string::npos) {
        size_t j = json.find('}', i);
        auto f = json_fields(json.substr(i + 1, j - i - 1));
        MapRun r;
        r.start = std::stoull(f.at("start"));
        r.length = std::stoull(f.at("length"));
        r.data = f.at("data") == "true";
        // The qcow2 layer never reports data and zero together. qemu adds "zero" to data
        // clusters whose host range is a file-system hole when its metadata-preallocation
        // heuristic fires (sparse image files with large clusters): a hint from the host
        // file, not from the image, so compare those runs as plain data.
        r.zero = f.at("zero") == "true" && !r.data;
        r.depth =
            f.at("present") == "true" ? static_cast<uint32_t>(std::stoul(f.at("depth"))) + 1 : 0;
        runs.push_back(r);
        i = j;
    }
    return merge_runs(runs);
}

/// Big-endian integer from a file at `off` (header fields).
inline uint64_t file_be(const std::string& path, uint64_t off, int bytes) {
    std::ifstream f(path, std::ios::binary);
    f.seekg(static_cast<std::streamoff>(off));
    uint64_t v = 0;
    for (int k = 0; k < bytes; ++k) v = (v << 8) | static_cast<uint8_t>(f.get());
    return v;
}

/// Index of the first differing byte (or the shorter length), nullopt when equal.
inline std::optional<size_t> first_diff(std::span<const std::byte> a,
                                        std::span<const std::byte> b) {
    size_t n = std::min(a.size(), b.size());
    if (n > 0 && std::memcmp(a.data(), b.data(), n) != 0) {  // fast path: memcmp (Debug builds)
        auto [pa, pb] = std::mismatch(a.data(), a.data() + n, b.data());
        return static_cast<size_t>(pa - a.data());
    }
    if (a.size() != b.size()) return n;
    return std::nullopt;
}

inline std::string hex_around(std::span<const std::byte> d, size_t at) {
    std::ostringstream os;
    size_t from = at >= 8 ? at - 8 : 0;
    for (size_t i = from; i < std::min(d.size(), at + 8); ++i)
        os << (i == at ? "[" : "") << std::hex << int(d[i]) << (i == at ? "] " : " ");
    return os.str();
}

/// Fails (with the first differing offset and its neighbourhood) unless got == want.
/// `base` is the guest offset of byte 0 of both buffers, for the message.
inline void require_same(std::span<const std::byte> got, std::span<const std::byte> want,
                         const std::string& what, uint64_t base = 0) {
    auto d = first_diff(got, want);
    if (!d) return;
    INFO(what << ": sizes got " << got.size() << " want " << want.size()
              << "; first difference at guest offset " << base + *d << " (0x" << std::hex
              << base + *d << std::dec << ")\n  got:  " << hex_around(got, *d)
              << "\n  want: " << hex_around(want, *d));
    REQUIRE(false);
}

/// Fails with the engine's message unless `r` succeeded.
template <class R>
void require_ok(const R& r, const std::string& what) {
    if (r) return;
    INFO(what << " failed: errno " << r.error().code << ": " << r.error().message);
    REQUIRE(false);
}

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

inline awaitable<void> close_ok(OpenDisk& disk) {
    auto r = co_await disk->close();
    disk.mark_closed();
    require_ok(r, "close");
}

/// Runs all `tasks` concurrently on the current executor and waits for every one; rethrows
/// the first exception (e.g. a failed REQUIRE) after all have finished.
inline awaitable<void> when_all(std::vector<awaitable<void>> tasks) {
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer done(ex, asio::steady_timer::time_point::max());
    size_t left = tasks.size();
    std::exception_ptr first;
    for (auto& t : tasks) {
        asio::co_spawn(ex, std::move(t), [&](std::exception_ptr e) {
            if (e && !first) first = e;
            if (--left == 0) done.cancel();
        });
    }
    if (left > 0) {
        boost::system::error_code ec;
        co_await done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (first) std::rethrow_exception(first);
}

/// Runs a coroutine-returning callable to completion on `io`.
template <class F>
void run_co(asio::io_context& io, F&& f) {
    test::run(io, std::forward<F>(f)());
}

// ---- Image fillers -----------------------------------------------------------------------

/// Decimal text of a number (qemu-io offsets and lengths).
inline std::string n(uint64_t v) {
    return std::to_string(v);
}

/// Seeded scattered operations over [from, to): data (random pattern file or fixed byte),
/// zero writes with and without unmap, discards and (when allowed) compressed clusters.
inline std::vector<std::string> scattered_cmds(std::mt19937_64& rng, uint64_t from, uint64_t to,
                                               int count, uint64_t cluster, const std::string& pat,
                                               bool compress) {
    std::vector<std::string> cmds;
    std::set<uint64_t> touched;  // qemu writes compressed clusters only where none is allocated
    // qemu 7.2 marks 512-byte-cluster images corrupt after a compressed write, a partial
    // write and a compressed write needing a new L2 table; keep compression to >= 4K there.
    compress = compress && cluster >= 4096;
    for (int i = 0; i < count; ++i) {
        uint64_t off = from + rng() % (to - from);
        uint64_t len = 1 + rng() % std::min<uint64_t>(3 * cluster, to - off);
        uint64_t c0 = off / cluster * cluster;
        switch (rng() % 6) {
            case 0:
                cmds.push_back("write -q -P " + n(1 + rng() % 255) + " " + n(off) + " " + n(len));
                break;
            case 1:
                cmds.push_back("write -q -z " + n(off) + " " + n(len));
                break;
            case 2:
                cmds.push_back("write -q -z -u " + n(off) + " " + n(len));
                break;
            case 3:
                cmds.push_back("discard -q " + n(off) + " " + n(len));
                break;
            default:
                if (compress && c0 + cluster <= to && !touched.count(c0 / cluster)) {
                    cmds.push_back("write -q -c -P " + n(rng() % 256) + " " + n(c0) + " " +
                                   n(cluster));
                    touched.insert(c0 / cluster);
                    if (rng() % 2) continue;  // leave it whole; else overwrite part of it
                }
                cmds.push_back("write -q -s " + pat + " " + n(off) + " " + n(len));
        }
        for (uint64_t k = off / cluster; k <= (off + len - 1) / cluster; ++k) touched.insert(k);
    }
    return cmds;
}

/// qemu-io commands placing every kind of L2 entry around cluster and subcluster boundaries
/// in clusters 0..20, then seeded scattered operations over the rest of the disk.
inline std::vector<std::string> pattern_cmds(const TempDir& dir, uint64_t c, uint64_t size,
                                             bool compress, uint64_t seed) {
    std::string pat = dir.file("pat.bin"), cpat = dir.file("cpat.bin");
    random_file(pat, 7919, seed);
    random_file(cpat, c, seed + 1, true);
    uint64_t s = c / 32;  // subcluster size with extended L2
    std::vector<std::string> cmds = {
        "write -q -P 0x11 0 " + n(c / 2),
        "write -q -s " + pat + " " + n(c - 100) + " " + n(c + 300),
        "write -q -P 0x22 " + n(3 * c + 7) + " " + n(s + 1),
        "write -q -P 0x23 " + n(3 * c + 5 * s - 3) + " " + n(2 * s + 5),
        "write -q -s " + pat + " " + n(4 * c) + " " + n(3 * c),
        "write -q -z " + n(5 * c - s) + " " + n(c + 2 * s),
        "write -q -z " + n(7 * c + s) + " " + n(s),
        "write -q -s " + pat + " " + n(8 * c) + " " + n(2 * c),
        "write -q -z -u " + n(8 * c) + " " + n(2 * c),
        "write -q -s " + pat + " " + n(10 * c) + " " + n(3 * c),
        "discard -q " + n(11 * c) + " " + n(c),
        "write -q -z -u " + n(13 * c) + " " + n(c),
        "write -q -s " + pat + " " + n(19 * c + 1) + " " + n(2 * c - 2),
    };
    if (compress) {
        for (auto cmd : {"write -q -c -s " + cpat + " " + n(14 * c) + " " + n(c),
                         "write -q -c -P 0x44 " + n(15 * c) + " " + n(c),
                         "write -q -c -s " + cpat + " " + n(16 * c) + " " + n(c),
                         "write -q -P 0x55 " + n(16 * c + 100) + " 200",
                         "write -q -c -P 0x66 " + n(17 * c) + " " + n(c),
                         "write -q -z " + n(17 * c + s) + " " + n(s),
                         "write -q -c -s " + cpat + " " + n(18 * c) + " " + n(c),
                         "discard -q " + n(18 * c) + " " + n(c)})
            cmds.push_back(cmd);
    }
    std::mt19937_64 rng(seed);
    for (auto& cmd : scattered_cmds(rng, 21 * c, size - c - 700, 24, c, pat, compress))
        cmds.push_back(cmd);
    cmds.push_back("write -q -s " + pat + " " + n(size - c - 700) + " " + n(c + 700));
    return cmds;
}

/// One image under test: its top file and the cluster size used for boundary reads.
struct Image {
    std::string path;
    uint64_t cluster = 65536;
};

/// A fresh qcow2 image with options `opts` and cluster size `c`, filled by pattern_cmds.
inline Image patterned(const TempDir& dir, const std::string& opts, uint64_t c,
                       bool compress = true, uint64_t seed = 1) {
    uint64_t size = std::max<uint64_t>(4 * MiB, 24 * c);
    Image img{dir.file("img.qcow2"), c};
    qemu_create(img.path, size, opts);
    qemu_io(img.path, pattern_cmds(dir, c, size, compress, seed));
    return img;
}

}  // namespace qnbd::difftest
