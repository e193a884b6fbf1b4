// Free memory and the system. The release binary runs on tcmalloc (CMake option QNBD_TCMALLOC),
// which keeps the pages of freed buffers for reuse and hands them back only slowly: after a
// burst of large requests the server would hold their memory while idle. Once a second, what it
// keeps free beyond kKeptFreeBytes goes back to the system.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>

namespace qnbd::server {

namespace asio = boost::asio;
using asio::awaitable;

/// Free bytes the allocator may keep for reuse between checks.
inline constexpr uint64_t kKeptFreeBytes = uint64_t{32} << 20;

/// True when the allocator is tcmalloc (its extension interface is linked in).
bool allocator_keeps_free_memory();

/// Returns the allocator's free pages to the system when it keeps more than kKeptFreeBytes.
void return_free_memory();

/// Calls return_free_memory() once a second until `serving` is false when the timer fires
/// (cancel `timer` to end it at once).
awaitable<void> return_free_memory_while(asio::steady_timer& timer, const bool& serving);

}  // namespace qnbd::server
