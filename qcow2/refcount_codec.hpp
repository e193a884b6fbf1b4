// Reading and writing refcount entries of any width (1 to 64 bits) inside a refcount block.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qnbd::qcow2 {

/// Largest refcount representable with 2^order bits.
constexpr uint64_t max_refcount(uint32_t order) {
    return order >= 6 ? ~uint64_t{0} : (uint64_t{1} << (1u << order)) - 1;
}

/// Entries in one refcount block of `cluster_size` bytes.
constexpr uint64_t refcount_entries(uint64_t cluster_size, uint32_t order) {
    return cluster_size * 8 >> order;
}

/// Refcount number `index` of `block`. Entries narrower than a byte are packed LSB first;
/// wider ones are big-endian.
inline uint64_t get_refcount(const std::byte* block, uint64_t index, uint32_t order) {
    if (order < 3) {
        const uint32_t bits = 1u << order;
        const uint64_t bit = index * bits;
        return (static_cast<uint8_t>(block[bit / 8]) >> (bit % 8)) & ((1u << bits) - 1);
    }
    const uint32_t width = 1u << (order - 3);
    const std::byte* p = block + index * width;
    uint64_t v = 0;
    for (uint32_t i = 0; i < width; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
    return v;
}

/// Sets refcount number `index` of `block` to `value` (which must fit).
inline void set_refcount(std::byte* block, uint64_t index, uint32_t order, uint64_t value) {
    if (order < 3) {
        const uint32_t bits = 1u << order;
        const uint64_t bit = index * bits;
        const uint8_t mask = static_cast<uint8_t>(((1u << bits) - 1) << (bit % 8));
        auto b = static_cast<uint8_t>(block[bit / 8]);
        b = static_cast<uint8_t>((b & ~mask) | ((value << (bit % 8)) & mask));
        block[bit / 8] = std::byte{b};
        return;
    }
    const uint32_t width = 1u << (order - 3);
    std::byte* p = block + index * width;
    for (uint32_t i = width; i-- > 0; value >>= 8) p[i] = std::byte(static_cast<uint8_t>(value));
}

}  // namespace qnbd::qcow2
