// Readable failures: byte buffers compared with the first differing offset and its
// neighbourhood, and engine results that must have succeeded.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <optional>
#include <span>
#include <sstream>
#include <string>

namespace qnbd::test {

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

/// Hex of the bytes around index `at`, the byte at `at` in brackets.
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

/// Fails with the engine's message unless `r` (a Result) succeeded.
template <class R>
void require_ok(const R& r, const std::string& what = "operation") {
    if (r) return;
    INFO(what << " failed: errno " << r.error().code << ": " << r.error().message);
    REQUIRE(false);
}

}  // namespace qnbd::test
