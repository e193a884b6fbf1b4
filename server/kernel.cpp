#include "server/kernel.hpp"

#include <fcntl.h>
#include <linux/nbd.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace qnbd::server {

namespace {

Error sys_error(const std::string& what) {
    return Error{errno, what + ": " + std::strerror(errno)};
}

}  // namespace

Result<std::unique_ptr<KernelDevice>> KernelDevice::attach(const std::string& device, int kernel_fd,
                                                           uint64_t size, uint16_t flags,
                                                           std::function<void()> on_exit) {
    int fd = ::open(device.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return sys_error("cannot open " + device);
    std::unique_ptr<KernelDevice> dev(new KernelDevice);
    dev->dev_fd_ = fd;
    const unsigned long block = 512;
    if (::ioctl(fd, NBD_SET_BLKSIZE, block) < 0) return sys_error(device + ": NBD_SET_BLKSIZE");
    if (::ioctl(fd, NBD_SET_SIZE_BLOCKS, static_cast<unsigned long>(size / block)) < 0)
        return sys_error(device + ": NBD_SET_SIZE_BLOCKS");
    if (::ioctl(fd, NBD_CLEAR_SOCK) < 0) return sys_error(device + ": NBD_CLEAR_SOCK");
    if (::ioctl(fd, NBD_SET_FLAGS, static_cast<unsigned long>(flags)) < 0)
        return sys_error(device + ": NBD_SET_FLAGS");
    if (::ioctl(fd, NBD_SET_SOCK, kernel_fd) < 0) return sys_error(device + ": NBD_SET_SOCK");
    dev->thread_ = std::thread([fd, device, on_exit = std::move(on_exit)] {
        if (::ioctl(fd, NBD_DO_IT) < 0 && errno != EPIPE)
            spdlog::warn("{}: NBD_DO_IT ended: {}", device, std::strerror(errno));
        ::ioctl(fd, NBD_CLEAR_QUE);
        ::ioctl(fd, NBD_CLEAR_SOCK);
        on_exit();
    });
    spdlog::info("{} attached ({} bytes)", device, size);
    return dev;
}

KernelDevice::~KernelDevice() {
    if (thread_.joinable()) {
        ::ioctl(dev_fd_, NBD_DISCONNECT);
        thread_.join();
    }
    if (dev_fd_ >= 0) ::close(dev_fd_);
}

Result<void> kernel_disconnect(const std::string& device) {
    int fd = ::open(device.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return sys_error("cannot open " + device);
    int rc = ::ioctl(fd, NBD_DISCONNECT);
    int err = errno;
    ::ioctl(fd, NBD_CLEAR_SOCK);
    ::close(fd);
    if (rc < 0) return Error{err, device + ": NBD_DISCONNECT: " + std::strerror(err)};
    return ok();
}

}  // namespace qnbd::server
