// The per-thread free lists behind Buffer (base/buffer.*): reuse by size class, zero-filled
// reuse, alignment, sizes past the pooled maximum, and buffers freed on another thread.
#include <catch2/catch.hpp>

#include <algorithm>
#include <thread>
#include <vector>

#include "base/buffer.hpp"

using namespace qnbd;

namespace {

bool all_zero(const Buffer& b) {
    return std::all_of(b.data(), b.data() + b.size(),
                       [](std::byte x) { return x == std::byte{0}; });
}

}  // namespace

TEST_CASE("buffer pool: a freed buffer is reused by its size class and comes back zero-filled",
          "[buffer]") {
    std::byte* first = nullptr;
    {
        Buffer b(4096);
        first = b.data();
        std::fill(b.data(), b.data() + b.size(), std::byte{0xff});
    }
    Buffer again(3000);  // the same class: 4 KiB
    CHECK(again.data() == first);
    CHECK(again.size() == 3000);
    CHECK(all_zero(again));
    Buffer other(8192);  // another class: not the buffer just taken
    CHECK(other.data() != first);
}

TEST_CASE("buffer pool: every class is aligned for O_DIRECT, pooled or not", "[buffer]") {
    for (size_t size : {size_t{1}, size_t{4096}, size_t{4097}, size_t{65536}, size_t{1} << 20,
                        (size_t{1} << 20) + 1, size_t{3} << 20}) {
        for (int round = 0; round < 2; ++round) {  // fresh from the heap, then from the list
            Buffer b(size);
            INFO("size " << size << ", round " << round);
            CHECK(reinterpret_cast<uintptr_t>(b.data()) % kIoAlign == 0);
            CHECK(all_zero(b));
            std::fill(b.data(), b.data() + b.size(), std::byte{0x5a});
        }
    }
}

TEST_CASE("buffer pool: uninitialized buffers are reused too", "[buffer]") {
    std::byte* p = nullptr;
    {
        Buffer b = Buffer::uninitialized(64 * 1024);
        p = b.data();
    }
    Buffer c = Buffer::uninitialized(60 * 1024);
    CHECK(c.data() == p);
}

TEST_CASE("buffer pool: a buffer freed on another thread is kept there and freed at its exit",
          "[buffer]") {
    std::vector<Buffer> made;
    for (int i = 0; i < 64; ++i) made.emplace_back(16384);
    bool aligned = false;  // Catch2's assertions are not for other threads: checked after join
    std::thread t([moved = std::move(made), &aligned]() mutable {
        moved.clear();  // into this thread's lists, up to their bound; the rest to the heap
        Buffer b(16384);
        aligned = reinterpret_cast<uintptr_t>(b.data()) % kIoAlign == 0;
    });
    t.join();
    CHECK(aligned);  // the thread's lists go back to the heap (the leak checker would report them)
    Buffer here(16384);
    CHECK(all_zero(here));
}
