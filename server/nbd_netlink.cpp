// NBD netlink commands (see nbd_netlink.hpp), laid out as drivers/block/nbd.c reads them:
// 32-bit index, 64-bit sizes, flags and timeouts, the sockets as NBD_SOCK_FD attributes each
// nested in an NBD_SOCK_ITEM inside NBD_ATTR_SOCKETS.
#include "server/nbd_netlink.hpp"

#include <linux/nbd-netlink.h>

#include <cctype>
#include <cstring>
#include <filesystem>
#include <system_error>

namespace qnbd::server {
namespace {

void put_sockets(netlink::Message& m, const std::vector<int>& fds) {
    const size_t list = m.begin_nested(NBD_ATTR_SOCKETS);
    for (int fd : fds) {
        const size_t item = m.begin_nested(NBD_SOCK_ITEM);
        m.u32(NBD_SOCK_FD, static_cast<uint32_t>(fd));
        m.end_nested(item);
    }
    m.end_nested(list);
}

}  // namespace

Error nbd_netlink_error(const std::string& device, const char* what, const Error& e) {
    std::string msg = device + ": " + what + ": " + std::strerror(e.code);
    if (e.code == EPERM || e.code == EACCES)
        msg += " (attaching NBD devices needs root: CAP_SYS_ADMIN)";
    else if (e.code == EBUSY)
        msg = device + " is already in use";
    return Error{e.code, msg};
}

Result<NbdNetlink> NbdNetlink::open() {
    auto s = netlink::Socket::open();
    if (!s) return s.error();
    auto id = s->family_id(NBD_GENL_FAMILY_NAME);
    if (!id) {
        if (id.error().code == ENOENT)
            return Error{ENOENT,
                         "the kernel has no NBD netlink interface (the nbd kernel module is not "
                         "loaded: modprobe nbd)"};
        return Error{id.error().code, "netlink: looking up the nbd family: " + id.error().message};
    }
    return NbdNetlink(std::move(*s), *id);
}

Result<uint32_t> NbdNetlink::connect(const NetlinkConnect& c) {
    netlink::Message m(family_, NBD_CMD_CONNECT, NBD_GENL_VERSION);
    if (c.index) m.u32(NBD_ATTR_INDEX, *c.index);
    m.u64(NBD_ATTR_SIZE_BYTES, c.size);
    m.u64(NBD_ATTR_BLOCK_SIZE_BYTES, c.block_size);
    m.u64(NBD_ATTR_SERVER_FLAGS, c.server_flags);
    // No NBD_CFLAG_DESTROY_ON_DISCONNECT: a disconnected device goes back to the free ones
    // (destroying it would remove even /dev/nbd0..15 made at module load). No
    // NBD_CFLAG_DISCONNECT_ON_CLOSE: the device stays attached until -d, as with ioctls.
    m.u64(NBD_ATTR_CLIENT_FLAGS, 0);
    if (c.dead_conn_timeout_s) m.u64(NBD_ATTR_DEAD_CONN_TIMEOUT, c.dead_conn_timeout_s);
    // NBD_ATTR_BACKEND_IDENTIFIER came with Linux 5.14; older kernels ignore it.
    if (!c.backend.empty()) m.string(NBD_ATTR_BACKEND_IDENTIFIER, c.backend);
    put_sockets(m, c.fds);
    auto r = sock_.request(m);
    if (!r) return r.error();
    const auto attrs = netlink::parse_attributes(*r);
    const netlink::Attribute* index = netlink::find(attrs, NBD_ATTR_INDEX);
    if (!index || !index->u32()) return Error{EPROTO, "no device index in the kernel's answer"};
    return *index->u32();
}

Result<void> NbdNetlink::reconnect(uint32_t index, const std::vector<int>& fds,
                                   const std::string& backend) {
    netlink::Message m(family_, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION);
    m.u32(NBD_ATTR_INDEX, index);
    if (!backend.empty()) m.string(NBD_ATTR_BACKEND_IDENTIFIER, backend);
    put_sockets(m, fds);
    auto r = sock_.request(m);
    if (!r) return r.error();
    return ok();
}

Result<void> NbdNetlink::set_dead_conn_timeout(uint32_t index, uint64_t seconds,
                                               const std::string& backend) {
    netlink::Message m(family_, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION);
    m.u32(NBD_ATTR_INDEX, index);
    if (!backend.empty()) m.string(NBD_ATTR_BACKEND_IDENTIFIER, backend);
    m.u64(NBD_ATTR_DEAD_CONN_TIMEOUT, seconds);
    auto r = sock_.request(m);
    if (!r) return r.error();
    return ok();
}

Result<void> NbdNetlink::disconnect(uint32_t index) {
    netlink::Message m(family_, NBD_CMD_DISCONNECT, NBD_GENL_VERSION);
    m.u32(NBD_ATTR_INDEX, index);
    auto r = sock_.request(m);
    if (!r) return r.error();
    return ok();
}

Result<std::optional<bool>> NbdNetlink::connected(uint32_t index) {
    netlink::Message m(family_, NBD_CMD_STATUS, NBD_GENL_VERSION);
    m.u32(NBD_ATTR_INDEX, index);
    auto r = sock_.request(m);
    if (!r) return r.error();
    return parse_status(*r, index);
}

std::optional<bool> parse_status(std::span<const std::byte> reply, uint32_t index) {
    const auto attrs = netlink::parse_attributes(reply);
    const netlink::Attribute* list = netlink::find(attrs, NBD_ATTR_DEVICE_LIST);
    if (!list) return std::nullopt;
    for (const auto& item : list->nested()) {
        if (item.type != NBD_DEVICE_ITEM) continue;
        const auto fields = item.nested();
        const netlink::Attribute* i = netlink::find(fields, NBD_DEVICE_INDEX);
        const netlink::Attribute* c = netlink::find(fields, NBD_DEVICE_CONNECTED);
        if (i && i->u32() == index && c && c->u8()) return *c->u8() != 0;
    }
    return std::nullopt;
}

std::optional<uint32_t> nbd_index(const std::string& device) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::path p = fs::canonical(device, ec);
    const std::string name = (ec ? fs::path(device) : p).filename().string();
    if (name.size() < 4 || name.size() > 10 || name.compare(0, 3, "nbd") != 0) return std::nullopt;
    uint64_t n = 0;
    for (size_t i = 3; i < name.size(); ++i) {
        if (!std::isdigit(static_cast<unsigned char>(name[i]))) return std::nullopt;
        n = n * 10 + static_cast<uint64_t>(name[i] - '0');
    }
    if (n > UINT32_MAX) return std::nullopt;
    return static_cast<uint32_t>(n);
}

}  // namespace qnbd::server
