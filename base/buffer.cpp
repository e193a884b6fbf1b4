// The shared zero page, and the per-thread free lists of I/O buffers.
#include "base/buffer.hpp"

#include <array>
#include <bit>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define QNBD_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define QNBD_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define QNBD_POISON(p, n) ((void)(p), (void)(n))
#define QNBD_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace qnbd {
namespace detail {
namespace {

/// Size classes: kIoAlign << k for k = 0 .. kClasses - 1 (4 KiB to 1 MiB).
constexpr size_t kClasses = std::countr_zero(kPooledMax / kIoAlign) + 1;
/// Each class keeps at most this many bytes of free buffers (and at least two buffers).
constexpr size_t kKeepBytes = size_t{4} << 20;

/// One thread's free buffers by class; given back to the heap when the thread ends. A buffer
/// in a list is poisoned under AddressSanitizer, so a use after free is still reported.
thread_local bool lists_gone = false;  ///< This thread's FreeLists was destroyed (at exit).
struct FreeLists {
    std::array<std::vector<std::byte*>, kClasses> lists;
    ~FreeLists() {
        lists_gone = true;  // Buffers freed later (static ones) go straight to the heap.
        for (size_t k = 0; k < kClasses; ++k)
            for (std::byte* p : lists[k]) {
                QNBD_UNPOISON(p, kIoAlign << k);
                std::free(p);
            }
    }
};
thread_local FreeLists free_lists;

/// The class of a pooled size: the smallest k with kIoAlign << k >= bytes.
size_t class_of(size_t bytes) {
    return std::bit_width((bytes - 1) / kIoAlign);
}

std::byte* heap_alloc(size_t bytes) {
    void* p = std::aligned_alloc(kIoAlign, bytes);
    if (!p) throw std::bad_alloc();
    return static_cast<std::byte*>(p);
}

}  // namespace

std::byte* io_alloc(size_t bytes) {
    if (bytes > kPooledMax || lists_gone) return heap_alloc(bytes);
    const size_t k = class_of(bytes);
    auto& list = free_lists.lists[k];
    if (list.empty()) return heap_alloc(kIoAlign << k);
    std::byte* p = list.back();
    list.pop_back();
    QNBD_UNPOISON(p, kIoAlign << k);
    return p;
}

void io_free(std::byte* p, size_t bytes) noexcept {
    if (!p) return;
    if (bytes > kPooledMax || lists_gone) return std::free(p);
    const size_t k = class_of(bytes), size = kIoAlign << k;
    auto& list = free_lists.lists[k];
    if (list.size() >= std::max<size_t>(2, kKeepBytes / size)) return std::free(p);
    try {
        list.push_back(p);
    } catch (const std::bad_alloc&) {
        std::free(p);
        return;
    }
    QNBD_POISON(p, size);
}

}  // namespace detail

const std::byte* zero_page() {
    static const Buffer page(kZeroPageSize);
    return page.data();
}

}  // namespace qnbd
