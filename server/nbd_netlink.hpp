// The kernel's NBD netlink family ("nbd", linux/nbd-netlink.h) over the generic-netlink
// client of netlink.hpp: connect a device (a given one or any free one), hand a device new
// sockets in place of dead ones, change its dead-connection timeout, disconnect it, ask
// whether it is configured. Errors name the command and say what to do where that is known
// (load the module, run as root).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/result.hpp"
#include "server/netlink.hpp"

namespace qnbd::server {

/// What NBD_CMD_CONNECT configures.
struct NetlinkConnect {
    std::optional<uint32_t> index;     ///< Empty: the kernel picks a free device (or adds one).
    uint64_t size = 0;                 ///< Bytes.
    uint64_t block_size = 512;         ///< Logical block size.
    uint64_t server_flags = 0;         ///< The export's transmission flags.
    uint64_t dead_conn_timeout_s = 0;  ///< 0: I/O fails once the connections are gone.
    std::string backend;               ///< NBD_ATTR_BACKEND_IDENTIFIER (sysfs "backend").
    std::vector<int> fds;              ///< The kernel's ends of the connections.
};

/// A netlink socket bound to the "nbd" family.
class NbdNetlink {
  public:
    /// Looks the family up: ENOENT (and "modprobe nbd") when the nbd module is not loaded.
    static Result<NbdNetlink> open();
    /// NBD_CMD_CONNECT: returns the index of the device the kernel configured.
    Result<uint32_t> connect(const NetlinkConnect& c);
    /// NBD_CMD_RECONFIGURE with sockets: each takes the place of one dead connection of device
    /// `index`. The kernel answers success without taking a socket when no connection is
    /// dead, so the caller must check that its sockets were taken.
    Result<void> reconnect(uint32_t index, const std::vector<int>& fds, const std::string& backend);
    /// NBD_CMD_RECONFIGURE of the dead-connection timeout alone.
    Result<void> set_dead_conn_timeout(uint32_t index, uint64_t seconds,
                                       const std::string& backend);
    /// NBD_CMD_DISCONNECT: the kernel sends NBD_CMD_DISC, shuts the sockets, fails what is
    /// still queued and frees the device.
    Result<void> disconnect(uint32_t index);
    /// NBD_CMD_STATUS: whether device `index` is configured (connected, or its connections
    /// dead and not yet disconnected); empty when there is no such device.
    Result<std::optional<bool>> connected(uint32_t index);

  private:
    NbdNetlink(netlink::Socket s, uint16_t family) : sock_(std::move(s)), family_(family) {}
    netlink::Socket sock_;
    uint16_t family_;
};

/// Device `index`'s entry in an NBD_CMD_STATUS reply: true if connected, empty if absent.
std::optional<bool> parse_status(std::span<const std::byte> reply, uint32_t index);

/// N of "/dev/nbdN" or "nbdN" (symlinks resolved); empty for any other name.
std::optional<uint32_t> nbd_index(const std::string& device);

/// The error of a failed NBD netlink command `what` on `device`, with what to do about it.
Error nbd_netlink_error(const std::string& device, const char* what, const Error& e);

}  // namespace qnbd::server
