// Attaching an export to the kernel's NBD client (/dev/nbdX) through the NBD ioctls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "base/result.hpp"

namespace qnbd::server {

/// A kernel NBD device bound to one end of a socket pair until it is disconnected.
class KernelDevice {
  public:
    /// Hands `kernel_fd` to `device` for an export of `size` bytes with `flags`; the kernel
    /// serves I/O from a thread until the device is disconnected, then `on_exit` runs there.
    static Result<std::unique_ptr<KernelDevice>> attach(const std::string& device, int kernel_fd,
                                                        uint64_t size, uint16_t flags,
                                                        std::function<void()> on_exit);
    ~KernelDevice();

  private:
    KernelDevice() = default;
    int dev_fd_ = -1;
    std::thread thread_;
};

/// Disconnects `device` (qnbd -d); an error names the device and the call that failed.
Result<void> kernel_disconnect(const std::string& device);

}  // namespace qnbd::server
