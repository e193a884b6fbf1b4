// systemd integration over libsystemd's sd-daemon calls.
#include "server/systemd.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace qnbd::server {

void notify_ready(const std::string& status) {
    sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str());
}

void notify_status(const std::string& status) {
    sd_notifyf(0, "STATUS=%s", status.c_str());
}

void notify_stopping() {
    sd_notify(0, "STOPPING=1\nSTATUS=shutting down");
}

Result<std::optional<int>> activation_socket() {
    if (!std::getenv("LISTEN_PID")) return std::optional<int>{};
    // sd_listen_fds checks LISTEN_PID against our pid, marks the fds close-on-exec and
    // removes the variables.
    const int n = sd_listen_fds(1);
    if (n < 0) return Error{-n, std::string("socket activation: ") + std::strerror(-n)};
    if (n == 0) return std::optional<int>{};  // meant for another process
    if (n != 1)
        return Error{EINVAL, "socket activation passed " + std::to_string(n) +
                                 " sockets; qnbd serves exactly one (LISTEN_FDS=1)"};
    if (sd_is_socket(SD_LISTEN_FDS_START, AF_UNSPEC, SOCK_STREAM, 1) <= 0)
        return Error{EINVAL, "socket activation: fd 3 is not a listening stream socket"};
    return std::optional<int>{SD_LISTEN_FDS_START};
}

bool stderr_is_journal() {
    const char* js = std::getenv("JOURNAL_STREAM");
    if (!js) return false;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(js, "%llu:%llu", &dev, &ino) != 2) return false;
    struct stat st;
    return ::fstat(2, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

}  // namespace qnbd::server
