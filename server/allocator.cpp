// tcmalloc's extension interface, found at run time: weak references are null when another
// allocator is linked (the sanitizer and test builds).
#include "server/allocator.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstddef>

extern "C" {
int MallocExtension_GetNumericProperty(const char* property, size_t* value) __attribute__((weak));
void MallocExtension_ReleaseFreeMemory() __attribute__((weak));
}

namespace qnbd::server {

bool allocator_keeps_free_memory() {
    return MallocExtension_GetNumericProperty != nullptr &&
           MallocExtension_ReleaseFreeMemory != nullptr;
}

void return_free_memory() {
    if (!allocator_keeps_free_memory()) return;
    size_t free_bytes = 0;
    if (!MallocExtension_GetNumericProperty("tcmalloc.pageheap_free_bytes", &free_bytes)) return;
    if (free_bytes > kKeptFreeBytes) MallocExtension_ReleaseFreeMemory();
}

awaitable<void> return_free_memory_while(asio::steady_timer& timer, const bool& serving) {
    while (serving) {
        timer.expires_after(std::chrono::seconds(1));
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
        if (serving) return_free_memory();
    }
}

}  // namespace qnbd::server
