// QEMU-compatible image locking: the byte-range locks QEMU's file-posix driver puts on every
// file it opens, so that qemu, qemu-img, qemu-io, qemu-nbd and qnbd keep one another from
// writing an image another of them uses.
//
// The protocol (block/file-posix.c, raw_apply_lock_bytes / raw_check_lock_bytes), one byte per
// permission bit of include/block/block-common.h (consistent read 0, write 1, write unchanged 2,
// resize 3; a former "graph-mod" bit 4, byte 104/204, is ignored by QEMU 6.2 and later):
//   byte 100 + bit   read-locked by every opener that HAS the permission;
//   byte 200 + bit   read-locked by every opener that does NOT SHARE the permission.
// All locks are shared (F_RDLCK) Linux open file description (OFD) locks, F_OFD_SETLK. An opener
// first takes its bytes, then test-locks exclusively (F_OFD_GETLK with F_WRLCK, which ignores
// its own locks) byte 200 + bit for every permission it needs and byte 100 + bit for every
// permission it does not share; any other holder there is a conflict and it gives up. Taking
// before testing means two openers racing both fail rather than both succeed.
//
// What QEMU 7.2 takes, seen in /proc/locks (lock_request() returns exactly these):
//   image, writable                100 101 103  +  201 203
//   image, read-only               100          +  201 203   (a reader blocks writers)
//   image, read-only, force-share  100
//   backing file                   100          +  201 203   (-U: 100 only)
//   external data file, writable   100 101 103  +  203       (writes are shared)
//   external data file, read-only  100          +  203       (-U: 100 only)
// So while qemu writes an image, a plain read-only open fails too ("Failed to get shared "write"
// lock"); only force-share (-U) reads it. Force-share still tests byte 200 (someone refusing
// consistent reads) and is refused for writable opens.
//
// OFD locks belong to the open file description: every fd dup()ed from it or inherited over
// fork() shares them, and two open()s of one file conflict even within one process. Open image
// files with O_CLOEXEC (io::open_file does) or an exec()ed child owns the locks too.
//
// How the opener (image/open.cpp) is meant to use it, one ImageLock per file, kept for as long
// as the file is open (e.g. next to the io::File in the Disk):
//   top image:          lock_request(ImageFileRole::Top, writable, force_share)
//   each backing file:  lock_request(ImageFileRole::Backing, false, force_share)
//   external data file: lock_request(ImageFileRole::DataFile, writable, force_share)
//   then ImageLock::acquire(fd, path, request); on error refuse the export with the message.
// io::File has no fd accessor today; the opener needs the fd of each file it opens (an accessor
// on File returning -1 for test fakes, which then skip locking, or the lock taken in
// io::open_file). Lock right after open(), before anything reads or writes the file (opening a
// dirty image may rewrite its refcounts).
#pragma once

#include <functional>
#include <string>

#include "base/result.hpp"

struct flock;

namespace qnbd::io {

/// Byte of the first "has permission" lock, and of the first "does not share" lock.
inline constexpr int kLockPermBase = 100;
inline constexpr int kLockSharedBase = 200;
/// Permission bits QEMU locks (BLK_PERM_ALL = 0x0f).
inline constexpr unsigned kLockPermBits = 4;

/// A set of QEMU block permissions (BLK_PERM_*).
struct LockPerms {
    bool consistent_read = false;  ///< Bit 0: reading a self-consistent view of the contents.
    bool write = false;            ///< Bit 1: changing the visible contents.
    bool write_unchanged = false;  ///< Bit 2: writes that leave the visible contents unchanged.
    bool resize = false;           ///< Bit 3: changing the file size.

    /// The BLK_PERM_* mask.
    constexpr unsigned bits() const {
        return (consistent_read ? 1u : 0u) | (write ? 2u : 0u) | (write_unchanged ? 4u : 0u) |
               (resize ? 8u : 0u);
    }
    /// The set of a BLK_PERM_* mask (bits above 3 are dropped).
    static constexpr LockPerms from_bits(unsigned b) {
        return LockPerms{(b & 1u) != 0, (b & 2u) != 0, (b & 4u) != 0, (b & 8u) != 0};
    }
    static constexpr LockPerms none() { return {}; }
    static constexpr LockPerms all() { return from_bits(0xfu); }
    constexpr bool operator==(const LockPerms&) const = default;
};

/// QEMU's name of permission `bit` ("consistent read", "write", "write unchanged", "resize").
const char* lock_perm_name(unsigned bit);

/// What one opener takes: the permissions it uses and those it refuses to share.
struct LockRequest {
    LockPerms need;
    LockPerms unshared;
};

/// The part a file plays in an image.
enum class ImageFileRole {
    Top,       ///< The image named on the command line.
    Backing,   ///< A file of its backing chain (always read-only).
    DataFile,  ///< Its external data file.
};

/// What QEMU takes for a file in `role` (table above). EINVAL with QEMU's message
/// ("force-share=on can only be used with read-only images") for writable + force_share, and
/// for a writable backing file.
Result<LockRequest> lock_request(ImageFileRole role, bool writable, bool force_share);

/// The locks one open file description holds on an image file. Move-only; the destructor
/// releases them. It keeps its own duplicate of the fd, so the locks stay until release() or
/// destruction even if the caller closes its fd first, and never touch a reused fd number.
class ImageLock {
  public:
    ImageLock() = default;  ///< Holds nothing.
    ~ImageLock();
    ImageLock(ImageLock&& o) noexcept;
    ImageLock& operator=(ImageLock&& o) noexcept;
    ImageLock(const ImageLock&) = delete;
    ImageLock& operator=(const ImageLock&) = delete;

    /// Locks `fd` (open for reading; `path` names it in messages) for an opener that uses
    /// `need` and does not share `unshared`, refusing if another opener conflicts:
    ///   EAGAIN `Failed to get "write" lock; is another process (e.g. qemu, qemu-img, qemu-nbd
    ///          or qnbd) using the image [PATH]? ...` when another opener does not share a
    ///          permission in `need`, `Failed to get shared "write" lock; ...` when another
    ///          opener has a permission in `unshared`;
    ///   other errno values when fcntl fails for another reason (EBADF, EMFILE from the dup).
    /// On a file system without OFD locks (fcntl EINVAL, ENOTSUP, ENOLCK, ENOSYS) it warns once
    /// per process (set_image_lock_warning_handler) and returns a lock with enforced() false:
    /// like QEMU's locking=auto, but decided per file (QEMU only probes the kernel).
    /// One ImageLock per open file description: locks taken twice through one (the same fd or a
    /// dup) merge, and neither sees the other as a conflict.
    static Result<ImageLock> acquire(int fd, const std::string& path, LockPerms need,
                                     LockPerms unshared);
    static Result<ImageLock> acquire(int fd, const std::string& path, const LockRequest& r) {
        return acquire(fd, path, r.need, r.unshared);
    }

    /// Changes what is held (QEMU's permission update: the union is locked, the new set checked,
    /// then the rest unlocked). On error the lock holds exactly what it held before.
    Result<void> change(LockPerms need, LockPerms unshared);
    /// Unlocks every byte and closes the duplicate fd; the lock then holds nothing.
    void release();

    /// False for a default-constructed, moved-from or released lock.
    bool held() const { return held_; }
    /// False when the file system has no OFD locks and nothing is actually locked.
    bool enforced() const { return enforced_; }
    LockPerms need() const { return LockPerms::from_bits(need_); }
    LockPerms unshared() const { return LockPerms::from_bits(unshared_); }
    const std::string& path() const { return path_; }

  private:
    int fd_ = -1;  ///< Our duplicate of the caller's fd; -1 unless enforced.
    std::string path_;
    unsigned need_ = 0;      ///< Permission bytes held (bit i: byte 100 + i).
    unsigned unshared_ = 0;  ///< Unshared bytes held (bit i: byte 200 + i).
    bool enforced_ = false;
    bool held_ = false;
};

/// Where the one-time "no locking on this file system" warning goes (io/ has no logger). The
/// default writes one line to stderr; the server installs its logger. Returns the previous one.
using LockWarningHandler = std::function<void(const std::string&)>;
LockWarningHandler set_image_lock_warning_handler(LockWarningHandler h);

namespace testing {
/// The fcntl ImageLock calls for F_OFD_SETLK / F_OFD_GETLK (nullptr restores ::fcntl); also
/// re-arms the one-time warning. For tests that simulate a file system without locks.
using LockFcntl = int (*)(int fd, int cmd, ::flock* fl);
void set_lock_fcntl(LockFcntl f);
}  // namespace testing

}  // namespace qnbd::io
