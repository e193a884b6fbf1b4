// The NBD netlink interface: the kernel keeps the device configured from NBD_CMD_CONNECT to
// NBD_CMD_DISCONNECT, whatever happens to the serving process. If it dies, the device's
// connections are dead but it stays configured: its I/O fails, or waits for the dead-connection
// timeout, until a new server hands it sockets with NBD_CMD_RECONFIGURE (a reattach).
#include <linux/nbd.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "server/kernel.hpp"
#include "server/nbd_netlink.hpp"

namespace qnbd::server {
namespace {

/// The first line of a sysfs attribute; empty when it does not exist.
std::string sysfs_line(const std::string& path) {
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    return line;
}

std::string device_name(uint32_t index) {
    return "/dev/nbd" + std::to_string(index);
}

class NetlinkDevice final : public KernelDevice {
  public:
    NetlinkDevice(uint32_t index, bool reattached, const AttachParams& p)
        : index_(index),
          name_(device_name(index)),
          reattached_(reattached),
          timeout_s_(p.reconnect_timeout_s),
          backend_(p.backend) {}
    ~NetlinkDevice() override {
        if (disconnecting_.joinable()) disconnecting_.join();
    }
    const std::string& name() const override { return name_; }
    boost::asio::awaitable<Result<void>> started() override;
    /// NBD_CMD_DISCONNECT on a thread of its own: the kernel sends NBD_CMD_DISC on the
    /// connection, which the reactor must keep reading meanwhile.
    void disconnect() override {
        if (disconnecting_.joinable()) return;
        disconnecting_ = std::thread([index = index_, name = name_] {
            auto nl = NbdNetlink::open();
            Result<void> r = nl ? nl->disconnect(index) : Result<void>(nl.error());
            if (!r)
                spdlog::warn("{}",
                             nbd_netlink_error(name, "NBD_CMD_DISCONNECT", r.error()).message);
        });
    }

  private:
    uint32_t index_;
    std::string name_;
    bool reattached_;
    unsigned timeout_s_;
    std::string backend_;
    std::atomic<bool> never_{false};  ///< wait_started's "gave up" flag: the kernel holds on.
    std::thread disconnecting_;
};

boost::asio::awaitable<Result<void>> NetlinkDevice::started() {
    if (!reattached_) co_return co_await wait_started(name_, never_);
    // Reattached: the device has run all along (its partitions are known, a file system may be
    // mounted on it); only this server's dead-connection timeout is still to be set.
    auto nl = NbdNetlink::open();
    Result<void> r =
        nl ? nl->set_dead_conn_timeout(index_, timeout_s_, backend_) : Result<void>(nl.error());
    if (!r) co_return nbd_netlink_error(name_, "NBD_CMD_RECONFIGURE", r.error());
    co_return ok();
}

/// Checks that device `index`, configured by an earlier server, can take this export.
Result<void> check_reattach(uint32_t index, const AttachParams& p) {
    const std::string name = device_name(index), sys = "/sys/block/nbd" + std::to_string(index);
    const std::string backend = sysfs_line(sys + "/backend");
    if (backend != p.backend)
        return Error{EBUSY, name + " is already in use" +
                                (backend.empty() ? "" : " (attached to " + backend + ")")};
    const std::string sectors = sysfs_line(sys + "/size");
    if (sectors != std::to_string(p.size / 512))
        return Error{EINVAL, name + " was attached to " + p.backend + " with " + sectors +
                                 " sectors; the image now has " + std::to_string(p.size / 512)};
    const bool ro = (p.flags & NBD_FLAG_READ_ONLY) != 0;
    if (sysfs_line(sys + "/ro") != (ro ? "1" : "0"))
        return Error{EINVAL, name + " was attached " + (ro ? "read-write" : "read-only") +
                                 "; reattach it the same way"};
    return ok();
}

/// Hands the sockets of `p` to device `index` in place of its dead connections.
Result<std::unique_ptr<KernelDevice>> reattach(NbdNetlink& nl, uint32_t index,
                                               const AttachParams& p) {
    if (auto r = check_reattach(index, p); !r) return r.error();
    if (auto r = nl.reconnect(index, p.kernel_fds, p.backend); !r) {
        if (r.error().code == EINVAL)  // not netlink-bound, or the backend differs
            return Error{EBUSY, device_name(index) + " is already in use"};
        return nbd_netlink_error(device_name(index), "NBD_CMD_RECONFIGURE", r.error());
    }
    spdlog::info("{} reattached to {} ({} bytes)", device_name(index), p.backend, p.size);
    return std::unique_ptr<KernelDevice>(std::make_unique<NetlinkDevice>(index, true, p));
}

}  // namespace

Result<std::unique_ptr<KernelDevice>> attach_netlink(const AttachParams& p) {
    std::optional<uint32_t> index;
    if (!p.device.empty()) {
        index = nbd_index(p.device);
        if (!index) return Error{EINVAL, p.device + " is not an NBD device (/dev/nbdN)"};
    }
    auto nl = NbdNetlink::open();
    if (!nl) return nl.error();
    const std::string name = index ? device_name(*index) : "a free NBD device";
    if (index) {
        auto st = nl->connected(*index);
        if (!st) return nbd_netlink_error(name, "NBD_CMD_STATUS", st.error());
        if (*st && **st) return reattach(*nl, *index, p);
    }
    NetlinkConnect c;
    c.index = index;
    c.size = p.size;
    c.server_flags = p.flags;
    c.dead_conn_timeout_s = p.reconnect_timeout_s;
    c.backend = p.backend;
    c.fds = p.kernel_fds;
    auto got = nl->connect(c);
    // Configured by someone else between the status and the connect: maybe a dead one.
    if (!got && got.error().code == EBUSY && index) return reattach(*nl, *index, p);
    if (!got) return nbd_netlink_error(name, "NBD_CMD_CONNECT", got.error());
    spdlog::info("{} attached through netlink ({} bytes{})", device_name(*got), p.size,
                 p.reconnect_timeout_s
                     ? ", reconnect timeout " + std::to_string(p.reconnect_timeout_s) + " s"
                     : std::string());
    return std::unique_ptr<KernelDevice>(std::make_unique<NetlinkDevice>(*got, false, p));
}

}  // namespace qnbd::server
