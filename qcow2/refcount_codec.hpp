// Reading and writing refcount entries of any width (1 to 64 bits) inside a refcount block.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/buffer.hpp"

namespace qnbd::qcow2 {

/// Largest refcount representable with 2^order bits.
constexpr uint64_t max_refcount(uint32_t order) {
    return order >= 6 ? ~uint64_t{0} : (uint64_t{1} << (1u << order)) - 1;
}

/// Entries in one refcount block of `cluster_size` bytes.
constexpr uint64_t refcount_entries(uint64_t cluster_size, uint32_t order) {
    return cluster_size * 8 >> order;
}

/// Refcount number `index` of `block`. Entries narrower than a byte are packed LSB first.
inline uint64_t get_refcount(const std::byte* block, uint64_t index, uint32_t order) {
    switch (order) {
        case 0:
        case 1:
        case 2: {
            const uint32_t bits = 1u << order;
            const uint64_t bit = index * bits;
            return (static_cast<uint8_t>(block[bit / 8]) >> (bit % 8)) & ((1u << bits) - 1);
        }
        case 3:
            return static_cast<uint8_t>(block[index]);
        case 4:
            return load_be16(block + index * 2);
        case 5:
            return load_be32(block + index * 4);
        default:
            return load_be64(block + index * 8);
    }
}

/// Sets refcount number `index` of `block` to `value` (which must fit).
inline void set_refcount(std::byte* block, uint64_t index, uint32_t order, uint64_t value) {
    switch (order) {
        case 0:
        case 1:
        case 2: {
            const uint32_t bits = 1u << order;
            const uint64_t bit = index * bits;
            const uint8_t mask = static_cast<uint8_t>(((1u << bits) - 1) << (bit % 8));
            auto b = static_cast<uint8_t>(block[bit / 8]);
            b = static_cast<uint8_t>((b & ~mask) | ((value << (bit % 8)) & mask));
            block[bit / 8] = std::byte{b};
            return;
        }
        case 3:
            block[index] = std::byte(static_cast<uint8_t>(value));
            return;
        case 4:
            store_be16(block + index * 2, static_cast<uint16_t>(value));
            return;
        case 5:
            store_be32(block + index * 4, static_cast<uint32_t>(value));
            return;
        default:
            store_be64(block + index * 8, value);
            return;
    }
}

}  // namespace qnbd::qcow2
