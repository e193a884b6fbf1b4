// Attaching an export to the kernel's NBD client (/dev/nbdX). The process keeps the server end
// of a socket pair per connection and serves it like any client; the kernel gets the other end.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "base/result.hpp"

namespace qnbd::server {

/// What the kernel needs to know to attach a device.
struct AttachParams {
    std::string device;           ///< "/dev/nbdN"; empty: any free device (netlink only).
    uint64_t size = 0;            ///< Export size in bytes.
    uint16_t flags = 0;           ///< Transmission flags (read-only, flush, trim...).
    std::vector<int> kernel_fds;  ///< The kernel's ends of the socket pairs (one with ioctls).
    /// Netlink only: how long the device waits for a new server once the connection is gone
    /// (0: its I/O fails at once).
    unsigned reconnect_timeout_s = 0;
    /// Netlink only: names the image (sysfs "backend"); a reattach must name the same.
    std::string backend;
};

/// A kernel NBD device attached by this process, served until it is disconnected.
class KernelDevice {
  public:
    virtual ~KernelDevice() = default;
    /// The device node, e.g. "/dev/nbd0".
    virtual const std::string& name() const = 0;
    /// Waits (while the connections are being served) until the kernel runs the device, then
    /// has it read its partition table, so that /dev/nbdXpN exist when the caller goes on.
    virtual boost::asio::awaitable<Result<void>> started() = 0;
    /// Asks the kernel to disconnect: it finishes the requests in flight, sends NBD_CMD_DISC
    /// and the connections end. Safe to call more than once.
    virtual void disconnect() = 0;
};

/// Attaches through the NBD ioctls (NBD_SET_SOCK, then NBD_DO_IT on a thread of its own), as
/// qemu-nbd does.
Result<std::unique_ptr<KernelDevice>> attach_ioctl(const AttachParams& p);

/// Attaches through the kernel's NBD netlink interface (kernel_netlink.cpp): NBD_CMD_CONNECT
/// on the device of `p` or, when `p.device` is empty, on any free one the kernel picks. A
/// device that is still configured but whose connections are dead (its server died) with the
/// same backend and size is reattached instead (NBD_CMD_RECONFIGURE): its queued I/O goes on
/// over the new socket. ENOENT when the kernel has no NBD netlink family.
Result<std::unique_ptr<KernelDevice>> attach_netlink(const AttachParams& p);

/// Waits until the kernel runs `device` (its sysfs pid attribute appears; gives up when `ended`
/// turns true or after 10 s), then has it rescan its partitions. For KernelDevice::started().
boost::asio::awaitable<Result<void>> wait_started(const std::string& device,
                                                  const std::atomic<bool>& ended);

/// Disconnects `device` (qnbd -d); an error names the device and the call that failed.
Result<void> kernel_disconnect(const std::string& device);

/// The message for a device that cannot be opened: names it, and says to load the module
/// when that is why.
Error device_error(const std::string& device, int err);

}  // namespace qnbd::server
