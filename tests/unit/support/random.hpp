// Seeded randomness for the tests: the seed override, random bytes (incompressible or
// compressible), random files, and ranges cut into random disjoint pieces.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tests/unit/support/files.hpp"
#include "tests/unit/support/units.hpp"

namespace qnbd::test {

/// The seed of a randomized test: $QNBD_TEST_SEED if set, else `fallback`.
inline uint64_t test_seed(uint64_t fallback) {
    const char* env = std::getenv("QNBD_TEST_SEED");
    return env && *env ? std::strtoull(env, nullptr, 0) : fallback;
}

/// Fills `out` with pseudo-random bytes from `rng`. `compressible` draws from a small alphabet
/// in runs so that zlib/zstd shrink it (qemu stores a cluster uncompressed when compression
/// does not help); otherwise every byte is random.
inline void fill_random(std::span<std::byte> out, std::mt19937_64& rng, bool compressible = false) {
    const size_t n = out.size();
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
}

/// `n` pseudo-random bytes from `rng` (see fill_random).
inline Bytes random_bytes(std::mt19937_64& rng, size_t n, bool compressible = false) {
    Bytes out(n);
    fill_random(out, rng, compressible);
    return out;
}

/// `n` pseudo-random bytes from a generator seeded with `seed` (see fill_random).
inline Bytes random_bytes(size_t n, uint64_t seed, bool compressible = false) {
    std::mt19937_64 rng(seed);
    return random_bytes(rng, n, compressible);
}

/// Writes a file of `size` seeded random bytes (a raw base image or a qemu-io -s pattern).
inline void random_file(const std::string& path, uint64_t size, uint64_t seed,
                        bool compressible = false) {
    write_file(path, random_bytes(size, seed, compressible));
}

/// A range of bytes: (offset, length).
using Piece = std::pair<uint64_t, uint64_t>;

/// `count` random cut points strictly inside (from, to), appended to `cuts`.
inline void add_cuts(std::mt19937_64& rng, std::vector<uint64_t>& cuts, uint64_t from, uint64_t to,
                     size_t count) {
    for (size_t i = 0; i < count; ++i) cuts.push_back(from + 1 + rng() % (to - from - 1));
}

/// The pieces between consecutive cut points (sorted, duplicates dropped), in random order.
inline std::vector<Piece> cut(std::mt19937_64& rng, std::vector<uint64_t> cuts) {
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    std::vector<Piece> out;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) out.emplace_back(cuts[i], cuts[i + 1] - cuts[i]);
    std::shuffle(out.begin(), out.end(), rng);
    return out;
}

/// [from, to) cut into about `count` disjoint pieces of random sizes, in random order.
inline std::vector<Piece> random_pieces(std::mt19937_64& rng, uint64_t from, uint64_t to,
                                        size_t count) {
    std::vector<uint64_t> cuts{from, to};
    add_cuts(rng, cuts, from, to, count - 1);
    return cut(rng, cuts);
}

}  // namespace qnbd::test
