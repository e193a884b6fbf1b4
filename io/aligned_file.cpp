// The O_DIRECT adapter (see aligned_file.hpp): fast path for aligned requests, bounce buffers
// for the others, block-granular write claims that serialise read-modify-writes, and trimming
// of the zeros an RMW at the end of the file writes past the exact end.
#include "io/aligned_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <boost/asio/this_coro.hpp>
#include <cstdlib>
#include <cstring>
#include <list>
#include <new>
#include <optional>
#include <utility>

#include "base/async.hpp"
#include "base/buffer.hpp"

namespace qnbd::io {
namespace {

size_t total(std::span<const iovec> iov) {
    size_t n = 0;
    for (auto& v : iov) n += v.iov_len;
    return n;
}

/// Copies the first `n` bytes of a gather list to `dst`.
void gather(std::span<const iovec> iov, std::byte* dst, size_t n) {
    for (auto& v : iov) {
        if (n == 0) return;
        const size_t k = std::min(n, v.iov_len);
        std::memcpy(dst, v.iov_base, k);
        dst += k;
        n -= k;
    }
}

/// Copies `n` bytes from `src` to the start of a scatter list.
void scatter(const std::byte* src, size_t n, std::span<const iovec> iov) {
    for (auto& v : iov) {
        if (n == 0) return;
        const size_t k = std::min(n, v.iov_len);
        std::memcpy(v.iov_base, src, k);
        src += k;
        n -= k;
    }
}

/// A heap buffer of a multiple of `align` bytes, aligned to `align`; contents start undefined.
class Bounce {
  public:
    Bounce(size_t size, size_t align) : size_(size) {
        const size_t a = std::max(align, alignof(std::max_align_t));
        void* p = std::aligned_alloc(a, (size + a - 1) & ~(a - 1));
        if (!p) throw std::bad_alloc();
        data_.reset(static_cast<std::byte*>(p));
    }
    std::byte* data() { return data_.get(); }
    std::span<std::byte> span() { return {data(), size_}; }

  private:
    struct Free {
        void operator()(std::byte* p) const { std::free(p); }
    };
    std::unique_ptr<std::byte, Free> data_;
    size_t size_;
};

/// A write or fallocate over blocks [first, end), waiting for its turn or running.
struct Claim {
    Claim(uint64_t f, uint64_t e, bool x) : first(f), end(e), exclusive(x) {}
    bool overlaps(const Claim& o) const { return first < o.end && o.first < end; }

    uint64_t first;
    uint64_t end;
    bool exclusive;        ///< A read-modify-write: nothing else may change these blocks.
    bool running = false;  ///< Admitted: its I/O may be in the kernel.
    Notifier wake;         ///< Wakes its coroutine when an earlier overlapping claim ends.
};

/// The writes in flight, in arrival order. A claim waits only for earlier overlapping claims
/// it conflicts with (either one exclusive): shared claims never wait for each other, and an
/// exclusive one waits for everything overlapping before it and holds back everything after
/// it, so nothing starves.
class BlockLocks {
    struct State;

  public:
    using Handle = std::list<Claim>::iterator;

    /// Owns a claim until released or destroyed (also when its coroutine dies mid-wait, or
    /// after the file is gone: the state lives as long as any guard).
    class Guard {
      public:
        Guard(std::shared_ptr<State> s, Handle h) : s_(std::move(s)), h_(h) {}
        Guard(Guard&& o) noexcept = default;
        Guard& operator=(Guard&&) = delete;
        ~Guard() { release(); }
        /// Ends the claim and wakes the claims it held back.
        void release() {
            if (auto s = std::move(s_)) s->unlock(h_);
        }
        Handle handle() const { return h_; }

      private:
        std::shared_ptr<State> s_;
        Handle h_;
    };

    BlockLocks() : s_(std::make_shared<State>()) {}
    BlockLocks(const BlockLocks&) = delete;
    BlockLocks& operator=(const BlockLocks&) = delete;
    /// Destroys the coroutines still waiting for a claim; their guards then find the state
    /// closed, as do those of claims still running.
    ~BlockLocks() {
        s_->closed = true;
        auto doomed = std::move(s_->claims);
    }

    /// Registers a claim on blocks [first, end) and waits until it may run.
    awaitable<Guard> lock(uint64_t first, uint64_t end, bool exclusive) {
        Guard g(s_, s_->claims.emplace(s_->claims.end(), first, end, exclusive));
        if (exclusive) ++s_->exclusive;
        while (s_->blocked(g.handle())) co_await g.handle()->wake.wait();
        g.handle()->running = true;
        co_return std::move(g);
    }

    /// lock(first, end, false) without a coroutine frame where it need not wait: no exclusive
    /// claim is waiting or running. nullopt otherwise (then lock() waits its turn).
    std::optional<Guard> try_lock_shared(uint64_t first, uint64_t end) {
        if (s_->exclusive) return std::nullopt;
        Guard g(s_, s_->claims.emplace(s_->claims.end(), first, end, false));
        g.handle()->running = true;
        return std::optional<Guard>(std::move(g));
    }

    /// True when a running claim reaches past block `block` (it may still extend the file).
    bool running_past(uint64_t block) const {
        return std::any_of(s_->claims.begin(), s_->claims.end(),
                           [&](const Claim& c) { return c.running && c.end > block; });
    }

  private:
    struct State {
        std::list<Claim> claims;
        size_t exclusive = 0;  ///< Exclusive claims, waiting or running.
        bool closed = false;   ///< The file is gone: guards have nothing left to release.

        /// True while an earlier claim overlaps `h` and either of them is exclusive.
        bool blocked(Handle h) const {
            if (!h->exclusive && exclusive == 0) return false;
            for (auto it = claims.begin(); it != h; ++it)
                if (it->overlaps(*h) && (it->exclusive || h->exclusive)) return true;
            return false;
        }

        void unlock(Handle h) {
            if (closed) return;
            if (h->exclusive) --exclusive;
            for (auto it = std::next(h); it != claims.end(); ++it)
                if (!it->running && it->overlaps(*h)) it->wake.notify_all();
            claims.erase(h);
        }
    };

    std::shared_ptr<State> s_;
};

class AlignedFile final : public File {
  public:
    AlignedFile(std::unique_ptr<File> inner, size_t align)
        : inner_(std::move(inner)), align_(align) {
        if (auto s = inner_->size()) logical_ = *s;
    }

    awaitable<Result<size_t>> readv(HostOffset off, std::span<const iovec> iov) override {
        const size_t len = total(iov);
        if (len != 0 && (!aligned(off.value) || !aligned_iov(iov)))
            co_return co_await bounce_read(off.value, iov, len);
        const uint64_t mark = pad_mark();
        auto n = co_await read_inner(off.value, iov);
        if (n) *n = clamp_to_end(off.value, *n, mark);
        co_return n;
    }

    awaitable<Result<void>> writev(HostOffset off, std::span<const iovec> iov) override {
        const size_t len = total(iov);
        if (len == 0) co_return co_await inner_->writev(off, iov);
        if (!aligned(off.value) || !aligned(len)) co_return co_await rmw_write(off.value, iov, len);
        const uint64_t first = off.value / align_, end = (off.value + len) / align_;
        std::optional<BlockLocks::Guard> claim = locks_.try_lock_shared(first, end);
        if (!claim) claim.emplace(co_await locks_.lock(first, end, false));
        Result<void> r;
        if (aligned_iov(iov)) {
            r = co_await inner_->writev(off, iov);
        } else {
            Bounce b(len, align_);
            gather(iov, b.data(), len);
            r = co_await inner_->write(off, b.span());
        }
        co_return finish(*claim, std::move(r), off.value + len);
    }

    awaitable<Result<void>> fallocate(Fallocate mode, HostOffset off, uint64_t len) override {
        if (len == 0) co_return co_await inner_->fallocate(mode, off, len);
        // The kernel zeroes partial blocks itself, atomically with respect to other kernel
        // I/O; only an RMW, which rewrites whole blocks from a copy, must not interleave.
        auto claim = co_await locks_.lock(off.value / align_, up(off.value + len) / align_, false);
        auto r = co_await inner_->fallocate(mode, off, len);
        co_return finish(claim, std::move(r), 0);
    }

    awaitable<Result<void>> sync() override { co_return co_await inner_->sync(); }

    Result<uint64_t> size() const override {
        auto s = inner_->size();
        if (s && padded_ && logical_) return std::min(*s, *logical_);
        return s;
    }

    Result<void> truncate(uint64_t size) override {
        auto r = inner_->truncate(size);
        if (r) logical_ = size;
        return r;
    }

    awaitable<Result<uint64_t>> seek(HostOffset from, Seek what) override {
        auto r = co_await inner_->seek(from, what);
        // RMW padding past the exact end reads as data to the kernel, not to callers.
        if (r && logical_) *r = std::min(*r, std::max(*logical_, from.value));
        co_return r;
    }

    bool direct() const override { return inner_->direct(); }
    const std::string& path() const override { return inner_->path(); }

  private:
    bool aligned(uint64_t v) const { return (v & (align_ - 1)) == 0; }
    uint64_t down(uint64_t v) const { return v & ~static_cast<uint64_t>(align_ - 1); }
    uint64_t up(uint64_t v) const { return down(v + align_ - 1); }

    /// True when every iovec base and length is aligned (so their total is too).
    bool aligned_iov(std::span<const iovec> iov) const {
        return std::all_of(iov.begin(), iov.end(), [&](const iovec& v) {
            return aligned(reinterpret_cast<uintptr_t>(v.iov_base)) && aligned(v.iov_len);
        });
    }

    /// Reads the aligned superset of [off, off + len) and copies out what the file holds.
    awaitable<Result<size_t>> bounce_read(uint64_t off, std::span<const iovec> iov, size_t len) {
        const uint64_t a0 = down(off);
        Bounce b(up(off + len) - a0, align_);
        const uint64_t mark = pad_mark();
        const iovec whole{b.data(), b.span().size()};
        auto n = co_await read_inner(a0, {&whole, 1});
        if (!n) co_return n;
        const uint64_t skip = off - a0;
        const size_t avail = *n > skip ? std::min<uint64_t>(*n - skip, len) : 0;
        const size_t got = clamp_to_end(off, avail, mark);
        scatter(b.data() + skip, got, iov);
        co_return got;
    }

    /// Writes [off, off + len) by rewriting its whole blocks, holding them exclusively.
    awaitable<Result<void>> rmw_write(uint64_t off, std::span<const iovec> iov, size_t len) {
        const uint64_t a0 = down(off), end = off + len, a1 = up(end);
        auto claim = co_await locks_.lock(a0 / align_, a1 / align_, true);
        Bounce b(a1 - a0, align_);
        if (auto r = co_await read_edges(a0, a1, off, end, b); !r)
            co_return finish(claim, std::move(r), 0);
        gather(iov, b.data() + (off - a0), len);
        auto known = exact_end();
        if (!known) co_return finish(claim, known.error(), 0);
        if (end < a1 && a1 > *known) {
            padded_ = true;
            ++pads_;
        }
        auto r = co_await inner_->write(HostOffset{a0}, b.span());
        co_return finish(claim, std::move(r), end);
    }

    /// Fills the partial first and last blocks of [a0, a1) (zeros past the end of the file).
    awaitable<Result<void>> read_edges(uint64_t a0, uint64_t a1, uint64_t off, uint64_t end,
                                       Bounce& b) {
        const bool head = off != a0, tail = end != a1;
        auto block = [&](uint64_t at, uint64_t len) {
            return read_block(at, b.span().subspan(at - a0, len));
        };
        if (a1 - a0 <= 2 * align_ && head && tail) co_return co_await block(a0, a1 - a0);
        if (!head || !tail) co_return co_await block(head ? a0 : a1 - align_, align_);
        JoinSet both(co_await asio::this_coro::executor);
        both.spawn(block(a0, align_));
        both.spawn(block(a1 - align_, align_));
        co_return co_await both.wait();
    }

    /// Reads whole blocks into `buf`, with zeros past the end of the file.
    awaitable<Result<void>> read_block(uint64_t at, std::span<std::byte> buf) {
        const iovec v{buf.data(), buf.size()};
        auto n = co_await read_inner(at, {&v, 1});
        if (!n) co_return n.error();
        std::memset(buf.data() + *n, 0, buf.size() - *n);
        co_return ok();
    }

    /// Reads aligned blocks from the file below. UringFile stops at a short read (the end of
    /// the file), so it never goes on at the unaligned offset after it.
    awaitable<Result<size_t>> read_inner(uint64_t off, std::span<const iovec> iov) {
        return inner_->readv(HostOffset{off}, iov);
    }

    /// Ends a write's claim: records its end if it succeeded (`end` 0 for none), then trims.
    Result<void> finish(BlockLocks::Guard& claim, Result<void> r, uint64_t end) {
        if (r && logical_) logical_ = std::max(*logical_, end);
        claim.release();
        auto t = trim_padding();
        return r ? t : r;
    }

    /// The exact end of the file as written through this adapter.
    Result<uint64_t> exact_end() {
        if (!logical_) {
            auto s = inner_->size();
            if (!s) return s;
            logical_ = *s;
        }
        return *logical_;
    }

    /// Taken before a read: whether RMW padding is, or may come to be, seen by the read.
    uint64_t pad_mark() const { return padded_ ? ~uint64_t{0} : pads_; }

    /// Stops a read of `n` bytes at `off` at the exact end when it may have seen RMW padding
    /// (padding then or now, or an RMW padded in between: `mark` from pad_mark()).
    size_t clamp_to_end(uint64_t off, size_t n, uint64_t mark) const {
        if ((!padded_ && mark == pads_) || !logical_) return n;
        return off >= *logical_ ? 0 : static_cast<size_t>(std::min<uint64_t>(n, *logical_ - off));
    }

    /// Truncates RMW padding away once no running write can extend the file past the exact end
    /// (a write still running past it would either cover the padding or be cut by a truncate).
    Result<void> trim_padding() {
        if (!padded_ || !logical_ || locks_.running_past(*logical_ / align_)) return ok();
        auto s = inner_->size();
        if (!s) return s.error();
        if (*s > *logical_) {
            if (auto r = inner_->truncate(*logical_); !r) return r;
        }
        padded_ = false;
        return ok();
    }

    std::unique_ptr<File> inner_;
    size_t align_;
    std::optional<uint64_t> logical_;  ///< Exact end of the file, once known.
    bool padded_ = false;              ///< An RMW may have written zeros past logical_.
    uint64_t pads_ = 0;                ///< How many times an RMW set padded_.
    BlockLocks locks_;
};

}  // namespace

std::unique_ptr<File> make_aligned_file(std::unique_ptr<File> inner, size_t alignment) {
    return std::make_unique<AlignedFile>(std::move(inner),
                                         std::bit_ceil(std::max<size_t>(alignment, 1)));
}

size_t direct_io_alignment(int fd) {
#ifdef STATX_DIOALIGN
    struct statx stx {};
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align != 0) {
        const size_t a = std::max<size_t>(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
        if (std::has_single_bit(a)) return a;
    }
#endif
    return kIoAlign;
}

}  // namespace qnbd::io
