// Going to the background the way qemu-nbd does (--fork, and -c without -v): the process forks
// before anything else runs, the parent waits until the child reports that it is ready (the
// export listens, or the device is attached) and exits 0, or 1 when the child fails first. The
// child then lets go of everything of the caller's: stdin, stdout and stderr go to /dev/null,
// so `out=$(qnbd --fork ...)` returns at once.
#pragma once

#include <string>

#include "base/result.hpp"

namespace qnbd::server {

/// The readiness report of a process that may have gone to the background.
class Daemon {
  public:
    /// A process that stays in the foreground: ready() only writes the pid file.
    Daemon() = default;
    /// Forks. Only the child returns (the parent exits as described above), or the caller
    /// with an error when fork fails. Must run before any thread or io_uring is created.
    static Result<Daemon> fork();
    Daemon(Daemon&& o) noexcept;
    Daemon& operator=(Daemon&&) = delete;
    ~Daemon();

    /// Writes `pid_file` (if not empty), then tells the parent to exit 0 and lets go of the
    /// caller's stdin, stdout and stderr. False if the pid file could not be written (the
    /// parent then exits 1). Only the first call does anything.
    bool ready(const std::string& pid_file);
    /// True once ready() has let go of the caller's stderr: logs must go elsewhere.
    bool detached() const { return detached_; }

  private:
    explicit Daemon(int fd) : ready_fd_(fd) {}
    int ready_fd_ = -1;  ///< Write end of the pipe the parent waits on; -1 in the foreground.
    bool done_ = false;
    bool detached_ = false;
};

}  // namespace qnbd::server
