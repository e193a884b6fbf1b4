// Tests for the O_DIRECT adapter (qcow2/aligned_file.hpp) on real O_DIRECT files: random
// unaligned I/O against an in-memory reference, end-of-file behaviour, the zero-copy fast path,
// and exclusion between concurrent read-modify-writes of shared blocks.
#include <catch2/catch.hpp>

#include <algorithm>
#include <boost/asio/this_coro.hpp>
#include <cstring>
#include <filesystem>
#include <list>
#include <random>

#include "base/async.hpp"
#include "base/buffer.hpp"
#include "io/aligned_file.hpp"
#include "io/file.hpp"
#include "tests/unit/support/compare.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/random.hpp"
#include "tests/unit/support/recording_file.hpp"
#include "tests/unit/support/run.hpp"

namespace {

using namespace qnbd;
using namespace qnbd::test;

/// What reached the file below the adapter.
struct Stats {
    enum class Kind { Write, Fallocate };
    struct Running {
        uint64_t first, end;
        Kind kind;
    };

    size_t reads = 0;
    size_t writes = 0;
    size_t misaligned = 0;  ///< Requests O_DIRECT would have rejected.
    size_t clashes = 0;     ///< Requests meeting a running change of the same blocks.
    size_t writes_in_flight = 0;
    size_t max_writes_in_flight = 0;
    const void* last_base = nullptr;  ///< First buffer address of the last read or write.
    std::list<Running> running;       ///< Writes and fallocates in flight, in blocks.
};

/// Passes requests on to an O_DIRECT file, fails those not aligned to `align` with EINVAL, and
/// records them in Stats. In a test whose writes never share bytes, a read or write meeting a
/// running write or fallocate of the same block means a read-modify-write was not exclusive.
class StrictFile final : public io::File {
  public:
    StrictFile(std::unique_ptr<io::File> inner, size_t align, std::shared_ptr<Stats> stats)
        : inner_(std::move(inner)), align_(align), stats_(std::move(stats)) {}

    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        ++stats_->reads;
        if (!check(off.value, iov)) co_return Error{EINVAL, "misaligned read"};
        clash(off.value, iov);
        co_return co_await inner_->readv(off, iov);
    }

    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        ++stats_->writes;
        if (!check(off.value, iov)) co_return Error{EINVAL, "misaligned write"};
        clash(off.value, iov);
        auto it = stats_->running.insert(stats_->running.end(),
                                         blocks(off.value, iov_bytes(iov), Stats::Kind::Write));
        stats_->max_writes_in_flight =
            std::max(stats_->max_writes_in_flight, ++stats_->writes_in_flight);
        auto r = co_await inner_->writev(off, iov);
        --stats_->writes_in_flight;
        stats_->running.erase(it);
        co_return r;
    }

    awaitable<Result<void>> fallocate(io::Fallocate mode, HostOffset off, uint64_t len) override {
        auto me = blocks(off.value, len, Stats::Kind::Fallocate);
        for (auto& r : stats_->running)
            if (r.first < me.end && me.first < r.end && r.kind == Stats::Kind::Write)
                ++stats_->clashes;
        auto it = stats_->running.insert(stats_->running.end(), me);
        auto r = co_await inner_->fallocate(mode, off, len);
        stats_->running.erase(it);
        co_return r;
    }

    awaitable<Result<void>> sync() override { co_return co_await inner_->sync(); }
    Result<uint64_t> size() const override { return inner_->size(); }
    Result<void> truncate(uint64_t size) override { return inner_->truncate(size); }
    bool direct() const override { return inner_->direct(); }
    const std::string& path() const override { return inner_->path(); }

  private:
    Stats::Running blocks(uint64_t off, uint64_t len, Stats::Kind kind) const {
        return {off / align_, (off + len + align_ - 1) / align_, kind};
    }
    bool check(uint64_t off, std::span<const iovec> iov) {
        stats_->last_base = iov.empty() ? nullptr : iov[0].iov_base;
        bool ok = off % align_ == 0;
        for (auto& v : iov)
            ok = ok && reinterpret_cast<uintptr_t>(v.iov_base) % align_ == 0 &&
                 v.iov_len % align_ == 0;
        if (!ok) ++stats_->misaligned;
        return ok;
    }
    void clash(uint64_t off, std::span<const iovec> iov) {
        auto me = blocks(off, iov_bytes(iov), Stats::Kind::Write);
        for (auto& r : stats_->running)
            if (r.first < me.end && me.first < r.end) ++stats_->clashes;
    }

    std::unique_ptr<io::File> inner_;
    size_t align_;
    std::shared_ptr<Stats> stats_;
};

/// The bytes the file must hold after the same operations.
struct Model {
    Bytes data;

    void write(uint64_t off, const std::byte* p, size_t n) {
        if (off + n > data.size()) data.resize(off + n);
        std::memcpy(data.data() + off, p, n);
    }
    void zero(uint64_t off, uint64_t n) {
        if (off >= data.size()) return;
        std::memset(data.data() + off, 0, std::min<uint64_t>(n, data.size() - off));
    }
    Bytes read(uint64_t off, size_t n) const {
        if (off >= data.size()) return {};
        n = std::min<uint64_t>(n, data.size() - off);
        return Bytes(data.begin() + off, data.begin() + off + n);
    }
};

/// `len` bytes at an address `shift` bytes past a 4096-aligned one.
struct OddBuffer {
    OddBuffer(size_t len, size_t shift) : raw(len + shift + 1), p(raw.data() + shift), n(len) {}
    std::span<std::byte> span() { return {p, n}; }
    Buffer raw;
    std::byte* p;
    size_t n;
};

/// A fresh O_DIRECT file behind the adapter, with what reached it below.
struct Fixture {
    TempDir dir;
    std::string path = dir.file("direct.img");
    asio::io_context io;
    std::shared_ptr<Stats> stats = std::make_shared<Stats>();
    std::unique_ptr<io::File> file;

    /// Opens the file through io::open_file (which adds the adapter for O_DIRECT) and, unless
    /// `align` is 0, a StrictFile and a second adapter with `align` on top. False, after a
    /// warning, where the file system refuses O_DIRECT.
    bool open(size_t align) {
        auto f =
            io::open_file(io.get_executor(), path, io::OpenFlags{true, true, true, std::nullopt});
        if (!f && f.error().code == EINVAL) {
            WARN("O_DIRECT is not available here, skipping: " << f.error().message);
            return false;
        }
        require_ok(f);
        file = std::move(*f);
        if (align)
            file = io::make_aligned_file(
                std::make_unique<StrictFile>(std::move(file), align, stats), align);
        return true;
    }
    /// The whole file as the kernel has it.
    Bytes on_disk() const { return test::read_file(path); }
    template <class T>
    T run(awaitable<T> aw) {
        return test::run(io, std::move(aw));
    }
};

/// Offset, length and buffer misalignment of one random request below `limit`.
struct Shape {
    uint64_t off;
    size_t len;
    size_t shift;
    size_t unit;  ///< Where the scatter list may be cut.
};

Shape random_shape(std::mt19937_64& rng, size_t align, uint64_t limit) {
    if (rng() % 4 == 0) return {rng() % (limit / align) * align, (1 + rng() % 8) * align, 0, align};
    return {rng() % limit, 1 + rng() % (3 * align), rng() % 3 ? 1 + rng() % 4095 : 0, 1};
}

/// Cuts [p, p + len) into one to four iovecs at multiples of `unit`.
std::vector<iovec> split(std::byte* p, size_t len, size_t unit, std::mt19937_64& rng) {
    std::vector<size_t> cuts{0, len};
    for (auto i = rng() % 4; i > 0; --i) cuts.push_back(rng() % (len / unit + 1) * unit);
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    std::vector<iovec> iov;
    for (size_t i = 0; i + 1 < cuts.size(); ++i)
        iov.push_back({p + cuts[i], cuts[i + 1] - cuts[i]});
    return iov;
}

/// `count` random writes, reads, fallocates and truncates, each checked against `ref`.
awaitable<void> random_ops(io::File& f, Model& ref, size_t align, uint64_t seed, int count) {
    std::mt19937_64 rng(seed);
    const uint64_t limit = 256 * 1024;
    bool can_fallocate = true;
    for (int i = 0; i < count; ++i) {
        const auto kind = rng() % 20;
        const Shape s = random_shape(rng, align, limit);
        INFO("seed " << seed << " op " << i << " kind " << kind << " at " << s.off << " length "
                     << s.len << " shift " << s.shift);
        OddBuffer buf(s.len, s.shift);
        auto iov = split(buf.p, s.len, s.unit, rng);
        if (kind < 9) {
            fill_random(buf.span(), rng);
            require_ok(co_await f.writev(HostOffset{s.off}, iov));
            ref.write(s.off, buf.p, s.len);
        } else if (kind < 17) {
            auto n = co_await f.readv(HostOffset{s.off}, iov);
            require_ok(n);
            const Bytes want = ref.read(s.off, s.len);
            REQUIRE(*n == want.size());
            REQUIRE(std::equal(want.begin(), want.end(), buf.p));
        } else if (kind < 19 && can_fallocate) {
            auto mode = rng() % 2 ? io::Fallocate::PunchHole : io::Fallocate::ZeroRange;
            auto r = co_await f.fallocate(mode, HostOffset{s.off}, s.len);
            if (!r && (r.error().code == EOPNOTSUPP || r.error().code == ENOTSUP)) {
                can_fallocate = false;
                continue;
            }
            require_ok(r);
            ref.zero(s.off, s.len);
        } else {
            const uint64_t size = rng() % limit;
            require_ok(f.truncate(size));
            ref.data.resize(size);
        }
        auto size = f.size();
        require_ok(size);
        REQUIRE(*size == ref.data.size());
    }
}

/// Writes every (offset, length) piece concurrently from its own misaligned buffer.
awaitable<Result<void>> write_all(io::File& f, Model& ref, const std::vector<Piece>& pieces,
                                  std::mt19937_64& rng) {
    size_t bytes = 0;
    for (auto& [off, len] : pieces) bytes += len;
    OddBuffer buf(bytes, 1);
    fill_random(buf.span(), rng);
    JoinSet all(co_await asio::this_coro::executor);
    std::byte* p = buf.p;
    for (auto& [off, len] : pieces) {
        all.spawn(f.write(HostOffset{off}, std::span<const std::byte>(p, len)));
        ref.write(off, p, len);
        p += len;
    }
    co_return co_await all.wait();
}

/// Checks the file's size (through the adapter and on disk) and contents against `ref`.
void require_matches(Fixture& fx, const Model& ref) {
    auto size = fx.file->size();
    require_ok(size);
    REQUIRE(*size == ref.data.size());
    REQUIRE(std::filesystem::file_size(fx.path) == ref.data.size());
    const Bytes disk = fx.on_disk();
    const auto diff = std::mismatch(disk.begin(), disk.end(), ref.data.begin(), ref.data.end());
    INFO("first difference at byte " << (diff.first - disk.begin()));
    REQUIRE(diff.first == disk.end());
}

}  // namespace

TEST_CASE("aligned_file: random unaligned I/O matches a reference", "[aligned_file]") {
    const size_t align = GENERATE(size_t{0}, size_t{512}, size_t{4096});
    Fixture fx;
    if (!fx.open(align)) return;
    Model ref;
    fx.run(random_ops(*fx.file, ref, align ? align : 4096, 1000 + align, 1500));
    require_matches(fx, ref);
    REQUIRE(fx.stats->misaligned == 0);
}

TEST_CASE("aligned_file: reads stop at an end of file that is not aligned", "[aligned_file]") {
    Fixture fx;
    if (!fx.open(4096)) return;
    std::mt19937_64 rng(7);
    Model ref;
    fx.run([&]() -> awaitable<void> {
        Bytes data(5000);
        fill_random(data, rng);
        require_ok(co_await fx.file->write(HostOffset{0}, data));
        ref.write(0, data.data(), data.size());
        for (auto [off, len] : {std::pair<uint64_t, size_t>{4000, 2000},
                                {4999, 1},
                                {5000, 10},
                                {6000, 10},
                                {8192, 4096},
                                {0, 9000},
                                {3, 4093}}) {
            Bytes out(len);
            auto n = co_await fx.file->read(HostOffset{off}, out);
            require_ok(n);
            const Bytes want = ref.read(off, len);
            REQUIRE(*n == want.size());
            REQUIRE(std::equal(want.begin(), want.end(), out.begin()));
        }
        Buffer block(4096);  // The aligned fast path reads a short block at the end too.
        auto n = co_await fx.file->read(HostOffset{4096}, block.span());
        require_ok(n);
        REQUIRE(*n == 904);
    }());
    require_matches(fx, ref);
    REQUIRE(fx.stats->misaligned == 0);
}

TEST_CASE("aligned_file: aligned requests take the zero-copy fast path", "[aligned_file]") {
    Fixture fx;
    if (!fx.open(4096)) return;
    auto& st = *fx.stats;
    fx.run([&]() -> awaitable<void> {
        Buffer buf(8192);
        require_ok(co_await fx.file->write(HostOffset{4096}, buf.span()));
        CHECK((st.writes == 1 && st.reads == 0 && st.last_base == buf.data()));
        require_ok(co_await fx.file->read(HostOffset{4096}, buf.span()));
        CHECK((st.writes == 1 && st.reads == 1 && st.last_base == buf.data()));

        OddBuffer odd(4096, 5);  // Aligned range, misaligned memory: a copy, but no RMW read.
        require_ok(co_await fx.file->write(HostOffset{0}, odd.span()));
        CHECK((st.writes == 2 && st.reads == 1 && st.last_base != odd.p));

        Bytes one{std::byte{42}};  // One byte at offset 3: read the block, write it back.
        require_ok(co_await fx.file->write(HostOffset{3}, one));
        CHECK((st.writes == 3 && st.reads == 2));

        // Aligned writes to distinct blocks never wait for each other.
        JoinSet all(co_await asio::this_coro::executor);
        Buffer many(64 * 4096);
        for (size_t i = 0; i < 64; ++i)
            all.spawn(fx.file->write(HostOffset{i * 4096}, many.span().subspan(i * 4096, 4096)));
        require_ok(co_await all.wait());
        CHECK(st.max_writes_in_flight == 64);
    }());
    REQUIRE(st.misaligned == 0);
}

TEST_CASE("aligned_file: concurrent writes sharing blocks do not lose each other",
          "[aligned_file]") {
    const size_t align = GENERATE(size_t{512}, size_t{4096});
    Fixture fx;
    if (!fx.open(align)) return;
    std::mt19937_64 rng(align);
    Model ref;
    SECTION("500 writes of 100 bytes, growing the file") {
        std::vector<Piece> p;
        for (uint64_t i = 0; i < 500; ++i) p.emplace_back(i * 100, 100);
        std::shuffle(p.begin(), p.end(), rng);
        require_ok(fx.run(write_all(*fx.file, ref, p, rng)));
    }
    SECTION("random pieces, growing the file") {
        require_ok(fx.run(write_all(*fx.file, ref, random_pieces(rng, 0, 200000, 400), rng)));
    }
    SECTION("random pieces over existing data") {
        require_ok(fx.run(write_all(*fx.file, ref, {{0, 300000}}, rng)));
        require_ok(fx.run(write_all(*fx.file, ref, random_pieces(rng, 1, 299999, 600), rng)));
    }
    require_matches(fx, ref);
    REQUIRE(fx.stats->clashes == 0);
    REQUIRE(fx.stats->misaligned == 0);
}

/// What a read returned: its offset and bytes.
struct Seen {
    uint64_t off;
    Bytes bytes;
};

/// Reads random ranges, one after another, from misaligned buffers into `seen`.
awaitable<Result<void>> read_some(io::File& f, uint64_t seed, uint64_t limit,
                                  std::vector<Seen>& seen) {
    std::mt19937_64 rng(seed);
    for (int i = 0; i < 8; ++i) {
        const Shape s = random_shape(rng, 4096, limit);
        OddBuffer buf(s.len, s.shift);
        auto n = co_await f.readv(HostOffset{s.off}, split(buf.p, s.len, s.unit, rng));
        if (!n) co_return n.error();
        seen.push_back({s.off, Bytes(buf.p, buf.p + *n)});
    }
    co_return ok();
}

TEST_CASE("aligned_file: reads racing with writes that grow the file", "[aligned_file]") {
    const size_t align = GENERATE(size_t{0}, size_t{512}, size_t{4096});
    Fixture fx;
    if (!fx.open(align)) return;
    std::mt19937_64 rng(align + 5);
    Model ref;
    std::vector<Seen> seen;
    const uint64_t limit = 300000;
    require_ok(fx.run([&]() -> awaitable<Result<void>> {
        JoinSet all(co_await asio::this_coro::executor);
        all.spawn(write_all(*fx.file, ref, random_pieces(rng, 0, limit, 300), rng));
        for (int i = 0; i < 100; ++i) all.spawn(read_some(*fx.file, rng(), limit, seen));
        co_return co_await all.wait();
    }()));
    require_matches(fx, ref);
    // Each byte a read returned was either not written yet (zero) or written.
    for (auto& r : seen) {
        INFO("read at " << r.off << " of " << r.bytes.size() << " bytes");
        REQUIRE(r.off + r.bytes.size() <= ref.data.size());
        size_t bad = 0;
        while (bad < r.bytes.size() &&
               (r.bytes[bad] == std::byte{0} || r.bytes[bad] == ref.data[r.off + bad]))
            ++bad;
        REQUIRE(bad == r.bytes.size());
    }
}

TEST_CASE("aligned_file: fallocate does not interleave with read-modify-writes", "[aligned_file]") {
    Fixture fx;
    if (!fx.open(4096)) return;
    std::mt19937_64 rng(99);
    Model ref;
    require_ok(fx.run(write_all(*fx.file, ref, {{0, 262144}}, rng)));
    auto probe = fx.run(fx.file->fallocate(io::Fallocate::ZeroRange, HostOffset{0}, 1));
    if (!probe && (probe.error().code == EOPNOTSUPP || probe.error().code == ENOTSUP)) {
        WARN("fallocate is not supported here, skipping");
        return;
    }
    require_ok(probe);
    ref.zero(0, 1);
    std::vector<Piece> writes;
    fx.run([&]() -> awaitable<void> {
        JoinSet all(co_await asio::this_coro::executor);
        for (auto [off, len] : random_pieces(rng, 1, 262144, 300)) {
            if (rng() % 2) {
                writes.emplace_back(off, len);
                continue;
            }
            all.spawn(
                fx.file->fallocate(rng() % 2 ? io::Fallocate::PunchHole : io::Fallocate::ZeroRange,
                                   HostOffset{off}, len));
            ref.zero(off, len);
        }
        all.spawn(write_all(*fx.file, ref, writes, rng));
        require_ok(co_await all.wait());
    }());
    require_matches(fx, ref);
    REQUIRE(fx.stats->clashes == 0);
}

TEST_CASE("aligned_file: open_file with direct accepts unaligned requests", "[aligned_file]") {
    Fixture fx;
    if (!fx.open(0)) return;
    REQUIRE(fx.file->direct());
    fx.run([&]() -> awaitable<void> {
        std::vector<std::byte> one{std::byte{7}};
        require_ok(co_await fx.file->write(HostOffset{3}, one));
        std::vector<std::byte> back(10, std::byte{1});
        auto n = co_await fx.file->read(HostOffset{0}, back);
        require_ok(n);
        REQUIRE(*n == 4);
        REQUIRE(back[3] == std::byte{7});
        REQUIRE(back[0] == std::byte{0});
    }());
    REQUIRE(std::filesystem::file_size(fx.path) == 4);
}
