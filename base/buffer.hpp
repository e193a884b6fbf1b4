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

namespace detail {
/// `bytes` (a multiple of kIoAlign) of kIoAlign-aligned memory, uninitialised. Sizes up to
/// kPooledMax come from a per-thread free list, so the request path does not go through
/// aligned_alloc (glibc's memalign splits and coalesces chunks on every call).
std::byte* io_alloc(size_t bytes);
/// Returns memory from io_alloc(bytes) to the calling thread's free list or to the heap.
void io_free(std::byte* p, size_t bytes) noexcept;
/// The largest size the free lists keep.
inline constexpr size_t kPooledMax = size_t{1} << 20;
}  // namespace detail

/// A heap buffer aligned to kIoAlign; move-only.
class Buffer {
  public:
    Buffer() = default;
    /// Allocates `size` bytes, zero-filled.
    explicit Buffer(size_t size) : Buffer(uninitialized(size)) {
        if (data_) std::memset(data_.get(), 0, rounded(size_));
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
        b.data_ = Owned(detail::io_alloc(rounded(size)), Free{rounded(size)});
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
    static size_t rounded(size_t size) { return (size + kIoAlign - 1) & ~(kIoAlign - 1); }
    struct Free {
        Free() noexcept : bytes(0) {}
        explicit Free(size_t b) noexcept : bytes(b) {}
        size_t bytes;
        void operator()(std::byte* p) const { detail::io_free(p, bytes); }
    };
    using Owned = std::unique_ptr<std::byte, Free>;
    Owned data_;
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
