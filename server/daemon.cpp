// --fork and -c in the background (see daemon.hpp).
#include "server/daemon.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace qnbd::server {
namespace {

/// The parent's side: waits for the child's report and exits with it. Never returns.
[[noreturn]] void wait_for_child(int fd, pid_t child) {
    char c = 0;
    ssize_t n;
    do {
        n = ::read(fd, &c, 1);
    } while (n < 0 && errno == EINTR);
    if (n == 1 && c == 'R') std::_Exit(0);
    // The child failed before it was ready (its error went to our shared stderr).
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    std::_Exit(WIFEXITED(status) && WEXITSTATUS(status) != 0 ? WEXITSTATUS(status) : 1);
}

/// Points stdin, stdout and stderr at /dev/null.
void drop_stdio() {
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) return;
    for (int fd = 0; fd <= 2; ++fd) ::dup2(null, fd);
    if (null > 2) ::close(null);
}

/// Writes our pid to `path` through a temporary file renamed over it.
bool write_pid_file(const std::string& path) {
    const std::string tmp = path + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "we");
    if (!f) return false;
    const bool ok = std::fprintf(f, "%d\n", static_cast<int>(::getpid())) > 0;
    if (std::fclose(f) != 0 || !ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
        ::unlink(tmp.c_str());
        return false;
    }
    return true;
}

}  // namespace

Result<Daemon> Daemon::fork() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0)
        return Error{errno, std::string("--fork: pipe: ") + std::strerror(errno)};
    const pid_t pid = ::fork();
    if (pid < 0) {
        const int err = errno;
        ::close(p[0]);
        ::close(p[1]);
        return Error{err, std::string("--fork: ") + std::strerror(err)};
    }
    if (pid > 0) {
        ::close(p[1]);
        wait_for_child(p[0], pid);
    }
    ::close(p[0]);
    ::setsid();
    return Daemon(p[1]);
}

Daemon::Daemon(Daemon&& o) noexcept
    : ready_fd_(std::exchange(o.ready_fd_, -1)), done_(o.done_), detached_(o.detached_) {}

Daemon::~Daemon() {
    if (ready_fd_ >= 0) ::close(ready_fd_);
}

bool Daemon::ready(const std::string& pid_file) {
    if (done_) return true;
    done_ = true;
    if (!pid_file.empty() && !write_pid_file(pid_file)) {
        std::fprintf(stderr, "qnbd: cannot write the pid file %s: %s\n", pid_file.c_str(),
                     std::strerror(errno));
        return false;
    }
    if (ready_fd_ < 0) return true;
    while (::write(ready_fd_, "R", 1) < 0 && errno == EINTR) {
    }
    ::close(ready_fd_);
    ready_fd_ = -1;
    drop_stdio();
    detached_ = true;
    return true;
}

}  // namespace qnbd::server
