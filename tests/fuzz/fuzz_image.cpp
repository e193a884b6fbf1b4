// libFuzzer target for the image walker: the input is written as an image file and opened
// with open_disk, so header, extensions, L1/L2 tables, refcounts, compressed cluster
// descriptors and backing chains all come from fuzzed bytes.
//
// Input: up to three files separated by kSeparator; they become f0 (the image opened), f1
// and f2 in one scratch directory, so a backing or data file name "f1" reaches the second
// part and "f0" loops back to the image itself. Each iteration:
//   1. the pure parsers run on f0: parse_header, patch_header (which must give back the
//      bytes it was parsed from) and parse_snapshots on the table the header points to;
//   2. f0 is opened read-only: a few reads and block status over the whole disk; zeros the
//      engine reports (block status or a read's zero runs) must read back as zeros;
//   3. f0 is opened writable (if that is refused, f0 must be unchanged): two writes and a
//      write-zeroes at once, a discard, flush and close; when all of that succeeded the image
//      must open again and read back what was written (if its refcounts count every cluster
//      in use: image_oracle.hpp).
// A damaged image must be refused or answer with errors; it must never crash, hang or leak.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/this_coro.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <vector>

#include "base/async.hpp"
#include "base/buffer.hpp"
#include "fuzz_check.hpp"
#include "fuzz_support.hpp"
#include "image/open.hpp"
#include "image_oracle.hpp"
#include "qcow2/header.hpp"

namespace qnbd::fuzz {
namespace {

constexpr std::string_view kSeparator = "\nQNBD-FUZZ-NEXT-FILE\n";
constexpr const char* kFiles[] = {"f0", "f1", "f2"};
constexpr uint64_t kReadBudget = 1u << 20;  ///< Bytes read per iteration, at most.
constexpr int kMaxStatusCalls = 256;

using Input = std::span<const std::byte>;

/// Splits the input into its files (the last one keeps any further separators).
std::vector<Input> split(Input in) {
    std::vector<Input> parts;
    const auto* sep = reinterpret_cast<const std::byte*>(kSeparator.data());
    while (parts.size() + 1 < std::size(kFiles)) {
        auto it = std::search(in.begin(), in.end(), sep, sep + kSeparator.size());
        if (it == in.end()) break;
        parts.push_back(in.first(static_cast<size_t>(it - in.begin())));
        in = in.subspan(parts.back().size() + kSeparator.size());
    }
    parts.push_back(in);
    return parts;
}

/// Writes the files of the input into the scratch directory; absent parts are removed.
void write_files(const std::vector<Input>& parts) {
    for (size_t i = 0; i < std::size(kFiles); ++i) {
        const std::string path = scratch(kFiles[i]);
        if (i < parts.size())
            write_file(path, parts[i]);
        else
            ::unlink(path.c_str());
    }
}

bool file_equals(const std::string& path, Input bytes) {
    std::vector<std::byte> now = read_file(path);
    return std::equal(now.begin(), now.end(), bytes.begin(), bytes.end());
}

/// The pure header and snapshot table parsers on the image bytes.
void parse_only(Input f0) {
    const Input head = f0.first(std::min<size_t>(f0.size(), 2u << 20));
    auto h = qcow2::parse_header(head, f0.size());
    if (!h) return;
    FUZZ_CHECK(h->cluster_bits >= qcow2::kMinClusterBits && h->header_length <= h->cluster_size());
    std::vector<std::byte> copy(head.begin(), head.end());
    qcow2::patch_header(*h, copy);
    FUZZ_CHECK(std::equal(copy.begin(), copy.end(), head.begin()));
    const uint64_t off = h->snapshots_offset.value;
    if (h->nb_snapshots && off < f0.size())
        (void)qcow2::parse_snapshots(f0.subspan(off), h->nb_snapshots, *h, f0.size());
}

OpenOptions options(bool read_only) {
    OpenOptions o;
    o.read_only = read_only;
    o.file_opener = open_file;
    o.metadata_cache_bytes = 64u << 10;  // Small, so that eviction runs too.
    return o;
}

bool all_zero(std::span<const std::byte> b) {
    static const std::vector<std::byte> zeros(64u << 10);
    for (size_t off = 0; off < b.size(); off += zeros.size())
        if (std::memcmp(b.data() + off, zeros.data(), std::min(zeros.size(), b.size() - off)))
            return false;
    return true;
}

/// Reads [off, off+len); checks the zero runs it reports. Returns whether the read succeeded.
awaitable<bool> read_checked(Disk& d, uint64_t off, uint64_t len, Buffer& buf) {
    buf = Buffer::uninitialized(len);
    std::vector<ZeroRun> zeros;
    auto r = co_await d.read(GuestOffset{off}, buf.span(), &zeros);
    if (!r) co_return false;
    for (const ZeroRun& z : zeros) {
        FUZZ_CHECK(z.offset <= len && z.length <= len - z.offset);
        FUZZ_CHECK(all_zero(buf.span().subspan(z.offset, z.length)));
    }
    co_return true;
}

awaitable<void> read_ranges(Disk& d) {
    const uint64_t size = d.size();
    if (size == 0) co_return;
    Buffer buf;
    const uint64_t head = std::min<uint64_t>(size, 64u << 10);
    co_await read_checked(d, 0, head, buf);
    const uint64_t tail = std::min<uint64_t>(size, 4096);
    co_await read_checked(d, size - tail, tail, buf);
    const uint64_t mid = (size / 2) & ~uint64_t{511};
    co_await read_checked(d, mid, std::min<uint64_t>(size - mid, 8192), buf);
    if (size > 1001) co_await read_checked(d, 1, 1000, buf);
}

/// Block status over the whole disk; where it reports zeros, the data must be zeros.
awaitable<void> walk_block_status(Disk& d) {
    const uint64_t size = d.size();
    uint64_t pos = 0, budget = kReadBudget;
    for (int calls = 0; pos < size && calls < kMaxStatusCalls; ++calls) {
        auto r = co_await d.block_status(GuestOffset{pos}, size - pos);
        if (!r) co_return;
        FUZZ_CHECK(!r->empty());
        for (const Extent& e : *r) {
            FUZZ_CHECK(e.length > 0 && e.length <= size - pos);
            if (e.zero && budget > 0) {
                const uint64_t n = std::min({e.length, budget, uint64_t{64} << 10});
                budget -= n;
                Buffer buf = Buffer::uninitialized(n);
                if (co_await d.read(GuestOffset{pos}, buf.span())) FUZZ_CHECK(all_zero(buf.span()));
            }
            pos += e.length;
        }
    }
}

awaitable<void> exercise_read_only() {
    auto ex = co_await asio::this_coro::executor;
    auto d = co_await open_disk(ex, scratch("f0"), options(true));
    if (!d) co_return;
    co_await read_ranges(**d);
    co_await walk_block_status(**d);
    (void)co_await (*d)->close();
}

/// Disjoint ranges the writable pass changes.
struct Plan {
    uint64_t a_len = 0;             ///< Pattern 0x5a at [0, a_len).
    uint64_t b_off = 0, b_len = 0;  ///< Pattern 0xa5.
    uint64_t z_off = 0, z_len = 0;  ///< Write-zeroes.
    uint64_t d_off = 0, d_len = 0;  ///< Discard.
};

Plan plan_for(uint64_t size) {
    Plan p;
    p.a_len = std::min<uint64_t>(size, 4096);
    if (size < (16u << 10)) return p;
    p.b_off = (size / 2) & ~uint64_t{511};
    p.b_len = 512;
    p.z_off = p.b_off + p.b_len;
    p.z_len = 1536;
    if (size < (64u << 10)) return p;
    p.d_off = (size - 8192) & ~uint64_t{511};
    p.d_len = size - p.d_off;
    return p;
}

Buffer pattern(uint64_t len, uint8_t value) {
    Buffer b(len);
    if (len) std::memset(b.data(), value, len);  // an empty Buffer has no storage
    return b;
}

/// Writes the plan concurrently, then discards and flushes; true if every step succeeded.
awaitable<bool> write_plan(Disk& d, const Plan& p) {
    auto ex = co_await asio::this_coro::executor;
    Buffer a = pattern(p.a_len, 0x5a), b = pattern(p.b_len, 0xa5);
    JoinSet writes(ex);
    if (p.a_len) writes.spawn(d.write(GuestOffset{0}, a.span(), WriteFlags{}));
    if (p.b_len) writes.spawn(d.write(GuestOffset{p.b_off}, b.span(), WriteFlags{true}));
    if (p.z_len) writes.spawn(d.write_zeroes(GuestOffset{p.z_off}, p.z_len, ZeroFlags{true}));
    bool ok = bool(co_await writes.wait());
    if (p.d_len) ok = bool(co_await d.discard(GuestOffset{p.d_off}, p.d_len, WriteFlags{})) && ok;
    ok = bool(co_await d.flush()) && ok;
    co_return ok;
}

/// After a successful write pass and close, the image must read back what was written.
awaitable<void> verify(const Plan& p) {
    auto ex = co_await asio::this_coro::executor;
    auto d = co_await open_disk(ex, scratch("f0"), options(true));
    if (!d)
        std::fprintf(stderr, "reopen after a clean close failed: %s\n", d.error().message.c_str());
    FUZZ_CHECK(d);
    Buffer buf;
    FUZZ_CHECK(co_await read_checked(**d, 0, p.a_len, buf));
    FUZZ_CHECK(std::memcmp(buf.data(), pattern(p.a_len, 0x5a).data(), p.a_len) == 0);
    if (p.b_len) {
        FUZZ_CHECK(co_await read_checked(**d, p.b_off, p.b_len, buf));
        FUZZ_CHECK(std::memcmp(buf.data(), pattern(p.b_len, 0xa5).data(), p.b_len) == 0);
        FUZZ_CHECK(co_await read_checked(**d, p.z_off, p.z_len, buf));
        FUZZ_CHECK(all_zero(buf.span()));
    }
    (void)co_await (*d)->close();
}

awaitable<void> exercise_writable(Input f0) {
    auto ex = co_await asio::this_coro::executor;
    auto d = co_await open_disk(ex, scratch("f0"), options(false));
    if (!d) {
        const bool same = file_equals(scratch("f0"), f0);
        if (!same) std::fprintf(stderr, "refused (%s), yet written\n", d.error().message.c_str());
        FUZZ_CHECK(same);  // R15: a refused image is left alone.
        co_return;
    }
    const Plan p = plan_for((*d)->size());
    bool ok = false;
    if (p.a_len > 0) ok = co_await write_plan(**d, p);
    if (!co_await (*d)->close()) ok = false;
    d->reset();  // Drop the disk before its files are opened again.
    if (ok && refcounts_cover_references(f0)) co_await verify(p);
}

}  // namespace
}  // namespace qnbd::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    qnbd::fuzz::abort_on_internal_errors();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace qnbd::fuzz;
    const auto parts = split({reinterpret_cast<const std::byte*>(data), size});
    parse_only(parts[0]);
    write_files(parts);
    run(exercise_read_only());
    for (size_t i = 0; i < parts.size(); ++i)  // R15: a read-only open writes nothing.
        FUZZ_CHECK(file_equals(scratch(kFiles[i]), parts[i]));
    run(exercise_writable(parts[0]));
    return 0;
}
