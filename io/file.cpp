// The File seam's non-virtual helpers, shared by every implementation.
#include "io/file.hpp"

#include <algorithm>
#include <cstring>

namespace qnbd::io {

awaitable<Result<uint64_t>> File::seek(HostOffset from, Seek what) {
    auto size = this->size();
    if (!size) co_return size.error();
    co_return what == Seek::Data ? std::min(from.value, *size) : *size;
}

awaitable<Result<size_t>> File::read(HostOffset off, std::span<std::byte> buf) {
    iovec v{buf.data(), buf.size()};
    co_return co_await readv(off, std::span<const iovec>(&v, 1));
}

awaitable<Result<void>> File::read_zero_padded(HostOffset off, std::span<std::byte> buf) {
    iovec v{buf.data(), buf.size()};
    auto n = co_await readv(off, std::span<const iovec>(&v, 1));
    if (!n) co_return n.error();
    if (*n < buf.size()) std::memset(buf.data() + *n, 0, buf.size() - *n);
    co_return ok();
}

awaitable<Result<void>> File::write(HostOffset off, std::span<const std::byte> buf) {
    iovec v{const_cast<std::byte*>(buf.data()), buf.size()};
    co_return co_await writev(off, std::span<const iovec>(&v, 1));
}

}  // namespace qnbd::io
