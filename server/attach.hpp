// -c and -d: which kernel interface attaches the device (netlink where the kernel has it,
// else the NBD ioctls; --ioctl asks for the ioctls), the socket pair between the kernel and
// this process, the name of the device the kernel picked for -c auto, and qnbd -d.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "base/result.hpp"
#include "server/config.hpp"
#include "server/kernel.hpp"

namespace qnbd::server {

/// A device attached for -c, and this process's end of its connection.
struct KernelAttachment {
    std::unique_ptr<KernelDevice> device;
    int server_fd = -1;  ///< A connected AF_UNIX stream socket; the caller owns it.
};

/// Attaches an export of `size` bytes with transmission flags `flags` to the device of
/// cfg.connect_device ("auto": any free one, netlink only), or reattaches a device whose
/// server died (netlink). Errors say which interface failed and why.
Result<KernelAttachment> attach_kernel(const Config& cfg, uint64_t size, uint16_t flags);

/// With -c auto, prints the device's name ("/dev/nbd3") on stdout, for scripts:
/// dev=$(qnbd -c auto IMAGE). Nothing otherwise, as qemu-nbd -c prints nothing.
void print_device(const Config& cfg, const KernelDevice& device);

/// qnbd -d DEV: NBD_CMD_DISCONNECT for a device attached through netlink, the NBD_DISCONNECT
/// ioctl otherwise (and where the kernel has no netlink interface).
Result<void> detach_kernel(const std::string& device);

}  // namespace qnbd::server
