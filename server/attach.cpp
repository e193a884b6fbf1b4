// Choosing the kernel interface for -c and -d (see attach.hpp).
#include "server/attach.hpp"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "server/nbd_netlink.hpp"

namespace qnbd::server {
namespace {

/// What the device's sysfs "backend" names: the image (its canonical path, and the offset of
/// -o), so that only the same image can reattach the device. A -s overlay dies with its
/// server: its name has the process in it and matches no later server.
std::string backend_of(const Config& cfg) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::path p = fs::canonical(cfg.image, ec);
    std::string b = ec ? fs::absolute(cfg.image).string() : p.string();
    if (cfg.offset) b += " offset " + std::to_string(cfg.offset);
    if (cfg.snapshot) b += " (snapshot of qnbd " + std::to_string(::getpid()) + ")";
    return b;
}

/// True when the kernel holds its end of the connection: once our copy of it is closed, a
/// socket it did not keep is gone and ours sees the hang-up at once.
bool kernel_holds(int server_fd) {
    pollfd p{server_fd, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) == 0 || !(p.revents & (POLLHUP | POLLRDHUP));
}

/// The device through the interface the configuration and the kernel allow.
Result<std::unique_ptr<KernelDevice>> attach_device(const Config& cfg, const AttachParams& p) {
    const bool any = cfg.connect_device == kAnyDevice;
    if (cfg.use_ioctl) return attach_ioctl(p);
    auto nl = NbdNetlink::open();
    if (nl) return attach_netlink(p);
    if (any || cfg.reconnect_timeout_s) {
        const char* what = any ? "-c auto" : "--reconnect-timeout";
        const std::string why = nl.error().code == ENOENT
                                    ? "the nbd kernel module is not loaded (modprobe nbd)"
                                    : nl.error().message;
        return Error{nl.error().code,
                     std::string(what) + " needs the kernel's NBD netlink interface; " + why};
    }
    spdlog::debug("no NBD netlink interface ({}); attaching with ioctls", nl.error().message);
    return attach_ioctl(p);
}

}  // namespace

Result<KernelAttachment> attach_kernel(const Config& cfg, uint64_t size, uint16_t flags) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return Error{errno, std::string("socketpair: ") + std::strerror(errno)};
    AttachParams p;
    p.device = cfg.connect_device == kAnyDevice ? "" : cfg.connect_device;
    p.size = size;
    p.flags = flags;
    p.kernel_fds = {sv[1]};
    p.reconnect_timeout_s = cfg.reconnect_timeout_s;
    p.backend = backend_of(cfg);
    auto dev = attach_device(cfg, p);
    ::close(sv[1]);  // the kernel holds its own reference now (or the attach failed)
    if (dev && !kernel_holds(sv[0])) dev = Error{EBUSY, (*dev)->name() + " is already in use"};
    if (!dev) {
        ::close(sv[0]);
        return dev.error();
    }
    return KernelAttachment{std::move(*dev), sv[0]};
}

void print_device(const Config& cfg, const KernelDevice& device) {
    if (cfg.connect_device != kAnyDevice) return;
    std::printf("%s\n", device.name().c_str());
    std::fflush(stdout);
}

Result<void> detach_kernel(const std::string& device) {
    const auto index = nbd_index(device);
    // Only a device configured through netlink has a "backend" attribute.
    if (!index || !std::filesystem::exists("/sys/block/nbd" + std::to_string(*index) + "/backend"))
        return kernel_disconnect(device);
    auto nl = NbdNetlink::open();
    if (!nl) return nl.error();
    if (auto r = nl->disconnect(*index); !r)
        return nbd_netlink_error(device, "NBD_CMD_DISCONNECT", r.error());
    return ok();
}

}  // namespace qnbd::server
