// QEMU-compatible image locking over OFD byte-range locks (the protocol is in image_lock.hpp).
#include "io/image_lock.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <utility>

namespace qnbd::io {
namespace {

std::atomic<testing::LockFcntl> g_fcntl{nullptr};
std::atomic<bool> g_warned{false};
std::mutex g_handler_mutex;
LockWarningHandler g_handler;  // empty: the stderr default

/// fcntl with EINTR retried; returns 0 or the errno.
int lock_fcntl(int fd, int cmd, ::flock* fl) {
    const testing::LockFcntl f = g_fcntl.load();
    int r;
    do {
        r = f ? f(fd, cmd, fl) : ::fcntl(fd, cmd, fl);
    } while (r == -1 && errno == EINTR);
    return r == -1 ? errno : 0;
}

/// Read-locks (F_RDLCK) or unlocks (F_UNLCK) one byte; 0 or the errno.
int set_byte(int fd, int byte, short type) {
    ::flock fl{};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    return lock_fcntl(fd, F_OFD_SETLK, &fl);
}

/// QEMU's qemu_lock_fd_test(exclusive): 0 if no other open file description holds any lock on
/// the byte, EAGAIN if one does, another errno if the test itself failed.
int test_byte(int fd, int byte) {
    ::flock fl{};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    if (int e = lock_fcntl(fd, F_OFD_GETLK, &fl)) return e;
    return fl.l_type == F_UNLCK ? 0 : EAGAIN;
}

/// errno values meaning "this file system (or kernel) has no OFD locks".
bool locking_unsupported(int err) {
    return err == EINVAL || err == ENOTSUP || err == EOPNOTSUPP || err == ENOLCK || err == ENOSYS;
}

/// True for the errno of a lock another process holds.
bool is_conflict(int err) {
    return err == EAGAIN || err == EACCES;
}

/// Bytes held through one open file description: bit i of perm is byte 100 + i, of shared
/// byte 200 + i.
struct Held {
    unsigned perm = 0;
    unsigned shared = 0;
};

struct ByteError {
    int err = 0;
    int byte = 0;
};

/// Brings bit `i` of `held` (bytes at `base`) to `want`: locks it if wanted and not held, and
/// if `unlock`, unlocks it if held and not wanted. `held` follows what succeeded.
ByteError apply_bit(int fd, unsigned& held, unsigned want, unsigned i, int base, bool unlock) {
    const unsigned bit = 1u << i;
    const int byte = base + static_cast<int>(i);
    if ((want & bit) && !(held & bit)) {
        if (int e = set_byte(fd, byte, F_RDLCK)) return {e, byte};
        held |= bit;
    } else if (unlock && (held & bit) && !(want & bit)) {
        if (int e = set_byte(fd, byte, F_UNLCK)) return {e, byte};
        held &= ~bit;
    }
    return {};
}

/// QEMU's raw_apply_lock_bytes: locks every byte of `want` not in `held`, and with `unlock`
/// unlocks every byte of `held` not in `want`; stops at the first failure.
ByteError apply(int fd, Held& held, Held want, bool unlock) {
    for (unsigned i = 0; i < kLockPermBits; ++i)
        if (auto e = apply_bit(fd, held.perm, want.perm, i, kLockPermBase, unlock); e.err) return e;
    for (unsigned i = 0; i < kLockPermBits; ++i)
        if (auto e = apply_bit(fd, held.shared, want.shared, i, kLockSharedBase, unlock); e.err)
            return e;
    return {};
}

struct Conflict {
    int err = 0;
    unsigned bit = 0;     ///< The permission in conflict.
    bool shared = false;  ///< Another opener has it (we do not share it), rather than unshares it.
};

/// QEMU's raw_check_lock_bytes: nobody else refuses to share what we need, and nobody else has
/// what we do not share.
Conflict check(int fd, unsigned need, unsigned unshared) {
    for (unsigned i = 0; i < kLockPermBits; ++i)
        if (need & (1u << i))
            if (int e = test_byte(fd, kLockSharedBase + static_cast<int>(i))) return {e, i, false};
    for (unsigned i = 0; i < kLockPermBits; ++i)
        if (unshared & (1u << i))
            if (int e = test_byte(fd, kLockPermBase + static_cast<int>(i))) return {e, i, true};
    return {};
}

std::string in_use(const std::string& path) {
    return "is another process (e.g. qemu, qemu-img, qemu-nbd or qnbd) using the image [" + path +
           "]?";
}

Error conflict_error(const Conflict& c, const std::string& path, unsigned unshared) {
    const std::string perm = lock_perm_name(c.bit);
    if (!is_conflict(c.err))
        return Error{c.err, "cannot test the \"" + perm + "\" lock of " + path + ": " +
                                std::strerror(c.err)};
    std::string m = std::string("Failed to get ") + (c.shared ? "shared " : "") + "\"" + perm +
                    "\" lock; " + in_use(path);
    // Force-share gives up the unshared bytes; it cannot help when another opener refuses
    // consistent reads.
    if (unshared && (c.shared || c.bit != 0))
        m += " Open it read-only with force-share (-r -U) to read it anyway.";
    return Error{EAGAIN, m};
}

Error lock_error(const ByteError& e, const std::string& path) {
    const std::string where = "byte " + std::to_string(e.byte) + " of " + path;
    if (is_conflict(e.err)) return Error{EAGAIN, "Failed to lock " + where + "; " + in_use(path)};
    return Error{e.err, "cannot lock " + where + ": " + std::strerror(e.err)};
}

void warn_once(const std::string& path, int err) {
    if (g_warned.exchange(true)) return;
    const std::string m = path + ": the file system does not support OFD locks (" +
                          std::strerror(err) +
                          "); image locking is off for such files, so nothing stops another "
                          "process (qemu, qemu-nbd, qnbd) from writing them";
    std::lock_guard<std::mutex> g(g_handler_mutex);
    if (g_handler)
        g_handler(m);
    else
        std::fprintf(stderr, "qnbd: warning: %s\n", m.c_str());
}

}  // namespace

const char* lock_perm_name(unsigned bit) {
    static const char* const names[kLockPermBits] = {"consistent read", "write", "write unchanged",
                                                     "resize"};
    return bit < kLockPermBits ? names[bit] : "unknown";
}

Result<LockRequest> lock_request(ImageFileRole role, bool writable, bool force_share) {
    if (writable && force_share)
        return Error{EINVAL, "force-share=on can only be used with read-only images"};
    if (writable && role == ImageFileRole::Backing)
        return Error{EINVAL, "backing files are opened read-only"};
    LockRequest r;
    r.need.consistent_read = true;
    r.need.write = writable;
    r.need.resize = writable;
    if (!force_share) {
        // QEMU's format drivers refuse writes and resizes of a file holding metadata; a data
        // file holds none, so only its size is protected.
        r.unshared.write = role != ImageFileRole::DataFile;
        r.unshared.resize = true;
    }
    return r;
}

ImageLock::~ImageLock() {
    release();
}

ImageLock::ImageLock(ImageLock&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      path_(std::move(o.path_)),
      need_(std::exchange(o.need_, 0)),
      unshared_(std::exchange(o.unshared_, 0)),
      enforced_(std::exchange(o.enforced_, false)),
      held_(std::exchange(o.held_, false)) {}

ImageLock& ImageLock::operator=(ImageLock&& o) noexcept {
    if (this != &o) {
        release();
        fd_ = std::exchange(o.fd_, -1);
        path_ = std::move(o.path_);
        need_ = std::exchange(o.need_, 0);
        unshared_ = std::exchange(o.unshared_, 0);
        enforced_ = std::exchange(o.enforced_, false);
        held_ = std::exchange(o.held_, false);
    }
    return *this;
}

Result<ImageLock> ImageLock::acquire(int fd, const std::string& path, LockPerms need,
                                     LockPerms unshared) {
    const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return Error{errno, "cannot lock " + path + ": " + std::strerror(errno)};
    ImageLock l;
    l.fd_ = dup;
    l.path_ = path;
    l.enforced_ = true;
    l.held_ = true;
    // Probe first, so that a file system without locks is recognised even when nothing is to
    // be locked (a conflict here is for change() to judge).
    const int probe = test_byte(dup, kLockSharedBase);
    if (probe && !is_conflict(probe) && !locking_unsupported(probe))
        return Error{probe, "cannot test the locks of " + path + ": " + std::strerror(probe)};
    Result<void> r = ok();
    if (probe && locking_unsupported(probe))
        r = Error{probe, ""};
    else
        r = l.change(need, unshared);
    if (!r && locking_unsupported(r.error().code)) {
        // No OFD locks on this file system (change() has unlocked whatever it took).
        l.release();
        warn_once(path, r.error().code);
        l.path_ = path;
        l.held_ = true;
        l.need_ = need.bits();
        l.unshared_ = unshared.bits();
        return l;
    }
    if (!r) return r.error();
    return l;
}

Result<void> ImageLock::change(LockPerms need, LockPerms unshared) {
    if (!held_) return Error{EBADF, "the image lock was released"};
    const Held old{need_, unshared_};
    const Held want{need.bits(), unshared.bits()};
    if (!enforced_) {
        need_ = want.perm;
        unshared_ = want.shared;
        return ok();
    }
    Held held = old;
    Result<void> res = ok();
    // Only giving up permissions (or sharing more) cannot conflict: QEMU checks nothing then.
    const bool narrowing = (want.perm & ~old.perm) == 0 && (want.shared & ~old.shared) == 0;
    if (!narrowing) {
        const ByteError e =
            apply(fd_, held, Held{old.perm | want.perm, old.shared | want.shared}, false);
        if (e.err) {
            res = lock_error(e, path_);
        } else if (const Conflict c = check(fd_, want.perm, want.shared); c.err) {
            res = conflict_error(c, path_, want.shared);
        }
    }
    // Commit (drop what is no longer wanted) or roll back to the old set. Both only unlock,
    // which does not fail on a working file system; `held` records what is really held.
    (void)apply(fd_, held, res ? want : old, true);
    need_ = held.perm;
    unshared_ = held.shared;
    return res;
}

void ImageLock::release() {
    if (fd_ >= 0) {
        Held held{need_, unshared_};
        (void)apply(fd_, held, Held{}, true);
        ::close(fd_);
        fd_ = -1;
    }
    need_ = unshared_ = 0;
    enforced_ = held_ = false;
    path_.clear();
}

LockWarningHandler set_image_lock_warning_handler(LockWarningHandler h) {
    std::lock_guard<std::mutex> g(g_handler_mutex);
    return std::exchange(g_handler, std::move(h));
}

namespace testing {
void set_lock_fcntl(LockFcntl f) {
    g_fcntl.store(f);
    g_warned.store(false);
}
}  // namespace testing

}  // namespace qnbd::io
