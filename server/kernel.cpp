// The NBD ioctl interface: the device is configured with ioctls and runs while a thread sits in
// NBD_DO_IT; qnbd -d (NBD_DISCONNECT from any process) or our own disconnect() ends it.
#include "server/kernel.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/nbd.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "io/offload.hpp"

namespace qnbd::server {

namespace asio = boost::asio;

namespace {

Error sys_error(const std::string& what) {
    return Error{errno, what + ": " + std::strerror(errno)};
}

/// "nbd0" of "/dev/nbd0".
std::string base_name(const std::string& device) {
    return std::filesystem::path(device).filename().string();
}

/// True once the kernel runs the device (its sysfs pid attribute appears with NBD_DO_IT).
bool running(const std::string& device) {
    return std::filesystem::exists("/sys/block/" + base_name(device) + "/pid");
}

class IoctlDevice final : public KernelDevice {
  public:
    IoctlDevice(std::string device, int fd) : device_(std::move(device)), fd_(fd) {}
    ~IoctlDevice() override {
        if (thread_.joinable()) {
            // Normally NBD_DO_IT has returned by now: the connection ended, so the kernel saw
            // its socket close. Otherwise disconnect and wait.
            for (int i = 0; i < 100 && !done_; ++i)
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            if (!done_) disconnect();
            thread_.join();
        }
        ::close(fd_);
    }
    const std::string& name() const override { return device_; }
    void disconnect() override {
        if (!done_ && ::ioctl(fd_, NBD_DISCONNECT) < 0 && errno != EINVAL)
            spdlog::warn("{}: NBD_DISCONNECT: {}", device_, std::strerror(errno));
    }
    boost::asio::awaitable<Result<void>> started() override;
    Result<void> configure(const AttachParams& p);
    void start();

  private:
    std::string device_;
    int fd_;
    std::thread thread_;
    std::atomic<bool> done_{false};
};

Result<void> IoctlDevice::configure(const AttachParams& p) {
    const unsigned long block = 512;
    if (::ioctl(fd_, NBD_SET_BLKSIZE, block) < 0) return sys_error(device_ + ": NBD_SET_BLKSIZE");
    if (::ioctl(fd_, NBD_SET_SIZE_BLOCKS, static_cast<unsigned long>(p.size / block)) < 0)
        return sys_error(device_ + ": NBD_SET_SIZE_BLOCKS");
    if (::ioctl(fd_, NBD_CLEAR_SOCK) < 0) return sys_error(device_ + ": NBD_CLEAR_SOCK");
    if (::ioctl(fd_, NBD_SET_FLAGS, static_cast<unsigned long>(p.flags)) < 0)
        return sys_error(device_ + ": NBD_SET_FLAGS");
    if (p.kernel_fds.size() != 1)
        return Error{EINVAL, device_ + ": the ioctl interface takes exactly one connection"};
    if (::ioctl(fd_, NBD_SET_SOCK, p.kernel_fds[0]) < 0) {
        if (errno == EBUSY) return Error{EBUSY, device_ + " is already in use"};
        return sys_error(device_ + ": NBD_SET_SOCK");
    }
    return ok();
}

void IoctlDevice::start() {
    thread_ = std::thread([this] {
        if (::ioctl(fd_, NBD_DO_IT) < 0 && errno != EPIPE)
            spdlog::warn("{}: NBD_DO_IT ended: {}", device_, std::strerror(errno));
        ::ioctl(fd_, NBD_CLEAR_QUE);
        ::ioctl(fd_, NBD_CLEAR_SOCK);
        done_ = true;
    });
}

asio::awaitable<Result<void>> IoctlDevice::started() {
    co_return co_await wait_started(device_, done_);
}

}  // namespace

asio::awaitable<Result<void>> wait_started(const std::string& device,
                                           const std::atomic<bool>& ended) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (int i = 0; i < 1000 && !running(device); ++i) {
        if (ended) break;
        timer.expires_after(std::chrono::milliseconds(10));
        co_await timer.async_wait(asio::use_awaitable);
    }
    if (!running(device)) co_return Error{EIO, device + ": the kernel did not start the device"};
    // Opening the device makes the kernel read the partition table through our connection:
    // blocking calls, off the reactor thread.
    // (A named lambda: GCC 12 destroys a lambda temporary inside co_await twice.)
    auto rescan = [d = device] {
        if (int part = ::open(d.c_str(), O_RDONLY | O_CLOEXEC); part >= 0) {
            (void)::ioctl(part, BLKRRPART);
            ::close(part);
        }
        return 0;
    };
    co_await io::offload(std::move(rescan));
    co_return ok();
}

Error device_error(const std::string& device, int err) {
    std::string msg = "cannot open " + device + ": " + std::strerror(err);
    struct stat st;
    if (err == ENOENT && ::stat("/sys/module/nbd", &st) != 0)
        msg += " (the nbd kernel module is not loaded: modprobe nbd)";
    return Error{err, msg};
}

Result<std::unique_ptr<KernelDevice>> attach_ioctl(const AttachParams& p) {
    int fd = ::open(p.device.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return device_error(p.device, errno);
    // A device that runs has a server; so has, as far as the kernel is concerned, one whose
    // server died while the device was held open (a mounted file system): it keeps running until
    // it is closed, and would take our socket, then refuse NBD_DO_IT.
    if (running(p.device)) {
        ::close(fd);
        return Error{EBUSY, p.device + " is already in use"};
    }
    auto dev = std::make_unique<IoctlDevice>(p.device, fd);
    if (auto r = dev->configure(p); !r) return r.error();
    dev->start();
    spdlog::info("{} attached ({} bytes)", p.device, p.size);
    return std::unique_ptr<KernelDevice>(std::move(dev));
}

Result<void> kernel_disconnect(const std::string& device) {
    int fd = ::open(device.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return device_error(device, errno);
    int rc = ::ioctl(fd, NBD_DISCONNECT);
    int err = errno;
    ::ioctl(fd, NBD_CLEAR_SOCK);
    ::close(fd);
    if (rc < 0) return Error{err, device + ": NBD_DISCONNECT: " + std::strerror(err)};
    return ok();
}

}  // namespace qnbd::server
