// The reference model of the write tests: what the guest must read after a sequence of
// writes, zero writes, discards and flushes, and applying such a sequence to a Disk.
#pragma once

#include <catch2/catch.hpp>

#include <cerrno>
#include <cstring>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "tests/unit/support/compare.hpp"
#include "tests/unit/support/disk.hpp"
#include "tests/unit/support/units.hpp"

namespace qnbd::test {

/// What the guest must read. Exact bytes, except "loose" bytes that a discard made
/// unspecified: they may read as `data` (the backing's byte, or the old byte for a partial
/// cluster) or as zero. A loose byte becomes exact once observed (reads must be stable).
struct Reference {
    Bytes data;
    std::vector<uint8_t> loose;
    Bytes backing;  ///< The backing chain's view, zero-extended; empty without a backing file.
    uint64_t cluster = 65536;
    /// Discard may leave whole clusters untouched (the engine's choice for data_file_raw
    /// images, whose raw data file must stay the guest view): they keep or lose their bytes.
    bool discard_may_keep = false;

    /// Starts from the guest view `initial`, over a backing view (empty without backing).
    Reference(Bytes initial, Bytes backing_view, uint64_t cluster_size)
        : data(std::move(initial)),
          loose(data.size(), 0),
          backing(std::move(backing_view)),
          cluster(cluster_size) {
        if (!backing.empty()) backing.resize(data.size());
    }

    // memcpy/memset/memchr keep the model fast in unoptimized (Debug+ASan) builds.
    /// The guest wrote `d` at `off`.
    void write(uint64_t off, std::span<const std::byte> d) {
        std::memcpy(data.data() + off, d.data(), d.size());
        std::memset(loose.data() + off, 0, d.size());
    }
    /// The guest zeroed [off, off+len).
    void zero(uint64_t off, uint64_t len) {
        std::memset(data.data() + off, 0, len);
        std::memset(loose.data() + off, 0, len);
    }
    /// Bytes that may now read as zeros or keep their value.
    void may_be_zero(uint64_t off, uint64_t len) {
        const std::byte* d = data.data() + off;
        uint8_t* l = loose.data() + off;
        for (uint64_t i = 0; i < len; ++i) l[i] = d[i] != std::byte{0};
    }
    /// Whole clusters read as zeros without a backing file, as zeros or the backing's bytes
    /// with one; partial clusters keep their bytes or read as zeros.
    void discard(uint64_t off, uint64_t len) {
        uint64_t end = off + len;
        uint64_t first = (off + cluster - 1) / cluster * cluster;
        uint64_t last = end / cluster * cluster;
        if (end == data.size()) last = end;  // a final partial cluster is whole
        if (first >= last) first = last = end;
        may_be_zero(off, first - off);
        may_be_zero(last, end - last);
        if (first == last) return;
        if (discard_may_keep) {
            may_be_zero(first, last - first);
        } else if (backing.empty()) {
            zero(first, last - first);
        } else {
            std::memcpy(data.data() + first, backing.data() + first, last - first);
            may_be_zero(first, last - first);
        }
    }
    /// Fails unless `got` (guest bytes from `base`) matches; then pins loose bytes.
    void observe(std::span<const std::byte> got, const std::string& what, uint64_t base = 0) {
        REQUIRE(base + got.size() <= data.size());
        uint8_t* l = loose.data() + base;
        if (!std::memchr(l, 1, got.size())) {
            require_same(got, std::span(data).subspan(base, got.size()), what, base);
            return;
        }
        Bytes want(data.begin() + base, data.begin() + base + got.size());
        for (size_t i = 0; i < got.size(); ++i)
            if (l[i] && got[i] == std::byte{0}) want[i] = std::byte{0};
        require_same(got, want, what, base);
        std::memcpy(data.data() + base, want.data(), want.size());
        std::memset(l, 0, got.size());
    }
};

/// One operation of a random sequence.
struct Op {
    enum Kind { Write, Zero, ZeroUnmap, ZeroFast, Discard, Flush } kind = Write;
    uint64_t off = 0, len = 0;
    bool fua = false;
    Bytes data;
};

/// A data write of `data` at `off`.
inline Op write_op(uint64_t off, Bytes data, bool fua = false) {
    Op op;
    op.off = off;
    op.len = data.size();
    op.fua = fua;
    op.data = std::move(data);
    return op;
}

/// Prints an operation for failure messages.
inline std::ostream& operator<<(std::ostream& os, const Op& op) {
    const char* names[] = {
        "write",   "write_zeroes", "write_zeroes(may_unmap)", "write_zeroes(fast_only)",
        "discard", "flush"};
    return os << names[op.kind] << " " << op.off << "+" << op.len << (op.fua ? " fua" : "");
}

/// Applies `op` to the engine and the reference.
inline awaitable<void> apply(Disk& disk, Reference& ref,
                             Op op) {  // op by value: tasks outlive temporaries
    INFO("op " << op);
    GuestOffset at{op.off};
    switch (op.kind) {
        case Op::Write:
            require_ok(co_await disk.write(at, op.data, WriteFlags{op.fua}), "write");
            ref.write(op.off, op.data);
            break;
        case Op::Zero:
        case Op::ZeroUnmap:
            require_ok(co_await disk.write_zeroes(
                           at, op.len, ZeroFlags{op.kind == Op::ZeroUnmap, op.fua, false}),
                       "write_zeroes");
            ref.zero(op.off, op.len);
            break;
        case Op::ZeroFast: {
            auto r = co_await disk.write_zeroes(at, op.len, ZeroFlags{true, op.fua, true});
            if (r) {
                ref.zero(op.off, op.len);
            } else {
                // Like qemu, the engine may zero the parts it can do fast before failing.
                REQUIRE(r.error().code == ENOTSUP);
                ref.may_be_zero(op.off, op.len);
            }
            break;
        }
        case Op::Discard:
            require_ok(co_await disk.discard(at, op.len, WriteFlags{op.fua}), "discard");
            ref.discard(op.off, op.len);
            break;
        case Op::Flush:
            require_ok(co_await disk.flush(), "flush");
            break;
    }
}

/// Reads the whole disk through the engine and checks it against the reference.
inline awaitable<void> check_disk(Disk& disk, Reference& ref, std::string what) {
    auto got = co_await read_ok(disk, 0, disk.size());
    ref.observe(got, what);
}

}  // namespace qnbd::test
