// Aligned byte buffers for I/O (O_DIRECT needs 4096-byte alignment) and big-endian helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <span>

namespace qnbd {

inline constexpr size_t kIoAlign = 4096;

/// A heap buffer aligned to kIoAlign; move-only.
class Buffer {
  public:
    Buffer() = default;
    /// Allocates `size` bytes, zero-filled.
    explicit Buffer(size_t size) : size_(size) {
        if (size == 0) return;
        size_t alloc = (size + kIoAlign - 1) & ~(kIoAlign - 1);
        void* p = std::aligned_alloc(kIoAlign, alloc);
        if (!p) throw std::bad_alloc();
        std::memset(p, 0, alloc);
        data_.reset(static_cast<std::byte*>(p));
    }
    std::byte* data() { return data_.get(); }
    const std::byte* data() const { return data_.get(); }
    size_t size() const { return size_; }
    std::span<std::byte> span() { return {data(), size_}; }
    std::span<const std::byte> span() const { return {data(), size_}; }
    /// Allocates `size` bytes left uninitialised, for a buffer I/O fills completely.
    static Buffer uninitialized(size_t size) {
        Buffer b;
        if (size == 0) return b;
        void* p = std::aligned_alloc(kIoAlign, (size + kIoAlign - 1) & ~(kIoAlign - 1));
        if (!p) throw std::bad_alloc();
        b.data_.reset(static_cast<std::byte*>(p));
        b.size_ = size;
        return b;
    }
    /// A copy of this buffer.
    Buffer clone() const {
        Buffer b(size_);
        if (size_) std::memcpy(b.data(), data(), size_);
        return b;
    }

  private:
    struct Free {
        void operator()(std::byte* p) const { std::free(p); }
    };
    std::unique_ptr<std::byte, Free> data_;
    size_t size_ = 0;
};

/// Big-endian loads and stores.
inline uint64_t load_be64(const std::byte* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}
inline uint32_t load_be32(const std::byte* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}
inline uint16_t load_be16(const std::byte* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return __builtin_bswap16(v);
}
inline void store_be64(std::byte* p, uint64_t v) {
    v = __builtin_bswap64(v);
    std::memcpy(p, &v, 8);
}
inline void store_be32(std::byte* p, uint32_t v) {
    v = __builtin_bswap32(v);
    std::memcpy(p, &v, 4);
}
inline void store_be16(std::byte* p, uint16_t v) {
    v = __builtin_bswap16(v);
    std::memcpy(p, &v, 2);
}

/// A shared, read-only page of zeros (at least `kZeroPageSize` bytes) for gather writes.
inline constexpr size_t kZeroPageSize = 1 << 21;
const std::byte* zero_page();

}  // namespace qnbd
