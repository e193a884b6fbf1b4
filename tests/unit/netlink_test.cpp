// Generic netlink messages and the NBD family's replies (server/netlink.hpp,
// server/nbd_netlink.hpp), byte for byte against the layout of linux/netlink.h and
// linux/nbd-netlink.h. The commands themselves need the nbd module: the e2e tests run them.
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/netlink.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "server/nbd_netlink.hpp"
#include "server/netlink.hpp"

using namespace qnbd::server;

namespace {

std::vector<std::byte> bytes(std::initializer_list<int> v) {
    std::vector<std::byte> out;
    for (int b : v) out.push_back(static_cast<std::byte>(b));
    return out;
}

template <class T>
void append(std::vector<std::byte>& out, const T& v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    out.insert(out.end(), p, p + sizeof v);
}

/// One netlink message: header, generic header, `attrs`.
std::vector<std::byte> message(uint16_t type, uint32_t seq, const std::vector<std::byte>& attrs) {
    std::vector<std::byte> out;
    nlmsghdr h{};
    h.nlmsg_len = static_cast<uint32_t>(NLMSG_HDRLEN + GENL_HDRLEN + attrs.size());
    h.nlmsg_type = type;
    h.nlmsg_seq = seq;
    append(out, h);
    append(out, genlmsghdr{NBD_CMD_CONNECT, 1, 0});
    out.insert(out.end(), attrs.begin(), attrs.end());
    return out;
}

std::vector<std::byte> ack(uint32_t seq, int error) {
    std::vector<std::byte> out;
    nlmsghdr h{};
    h.nlmsg_len = NLMSG_HDRLEN + sizeof(nlmsgerr);
    h.nlmsg_type = NLMSG_ERROR;
    h.nlmsg_seq = seq;
    append(out, h);
    nlmsgerr e{};
    e.error = error;
    append(out, e);
    return out;
}

}  // namespace

TEST_CASE("netlink: a request with plain and nested attributes", "[netlink]") {
    netlink::Message m(0x1d, NBD_CMD_CONNECT, NBD_GENL_VERSION);
    m.u32(NBD_ATTR_INDEX, 3).u64(NBD_ATTR_SIZE_BYTES, 0x0102030405060708ull);
    const size_t list = m.begin_nested(NBD_ATTR_SOCKETS);
    const size_t item = m.begin_nested(NBD_SOCK_ITEM);
    m.u32(NBD_SOCK_FD, 7);
    m.end_nested(item);
    m.end_nested(list);
    m.string(NBD_ATTR_BACKEND_IDENTIFIER, "ab");
    const auto b = m.bytes(42);
    const std::vector<std::byte> got(b.begin(), b.end());
    // nlmsghdr: len 64, type 0x1d, flags REQUEST|ACK (5), seq 42, pid 0; genlmsghdr cmd 1 v1.
    const auto want =
        bytes({64, 0, 0,  0,    0x1d, 0,   5, 0,    42, 0, 0, 0, 0, 0, 0, 0,  //
               1,  1, 0,  0,                                                  //
               8,  0, 1,  0,    3,    0,   0, 0,                              // index
               12, 0, 2,  0,    8,    7,   6, 5,    4,  3, 2, 1,              // size
               16, 0, 7,  0x80, 12,   0,   1, 0x80, 8,  0, 1, 0, 7, 0, 0, 0,  // sockets
               7,  0, 10, 0,    'a',  'b', 0, 0});                            // backend
    CHECK(got == want);
}

TEST_CASE("netlink: attributes are parsed, nested ones too, and a short one ends the list",
          "[netlink]") {
    const auto b = bytes({8,  0, 1,    0,    3, 0, 0, 0,                 //
                          12, 0, 0x09, 0x80, 8, 0, 1, 0, 0xff, 0, 0, 0,  //
                          20, 0, 2,    0});                              // longer than what is left
    const auto attrs = netlink::parse_attributes(b);
    REQUIRE(attrs.size() == 2);
    CHECK(attrs[0].type == 1);
    CHECK(attrs[0].u32() == 3u);
    CHECK(!attrs[0].u64());
    CHECK(attrs[1].type == 9);  // NLA_F_NESTED dropped
    const auto inner = attrs[1].nested();
    REQUIRE(inner.size() == 1);
    CHECK(inner[0].u8() == 0xff);
    CHECK(netlink::find(attrs, 9) == &attrs[1]);
    CHECK(netlink::find(attrs, 4) == nullptr);
}

TEST_CASE("netlink: an answer is the reply of its request, then the ack or the errno",
          "[netlink]") {
    const auto index = bytes({8, 0, NBD_ATTR_INDEX, 0, 5, 0, 0, 0});
    SECTION("reply and ack in one datagram; another request's message is skipped") {
        auto d = message(0x1d, 6, bytes({8, 0, NBD_ATTR_INDEX, 0, 9, 0, 0, 0}));
        auto mine = message(0x1d, 7, index);
        auto a = ack(7, 0);
        d.insert(d.end(), mine.begin(), mine.end());
        d.insert(d.end(), a.begin(), a.end());
        netlink::Answer answer(7);
        REQUIRE(answer.absorb(d));
        CHECK(answer.error() == 0);
        CHECK(answer.reply() == index);
    }
    SECTION("across datagrams") {
        netlink::Answer answer(7);
        CHECK(!answer.absorb(message(0x1d, 7, index)));
        CHECK(answer.absorb(ack(7, 0)));
        CHECK(answer.reply() == index);
    }
    SECTION("an error") {
        netlink::Answer answer(7);
        CHECK(answer.absorb(ack(7, -EBUSY)));
        CHECK(answer.error() == EBUSY);
    }
}

TEST_CASE("nbd netlink: the status of one device, connected or not, or absent", "[netlink]") {
    // NBD_ATTR_DEVICE_LIST { NBD_DEVICE_ITEM { INDEX 2, CONNECTED 1 }, ITEM { INDEX 4 } }
    const auto reply = bytes({36, 0, NBD_ATTR_DEVICE_LIST,
                              0,  //
                              20, 0, NBD_DEVICE_ITEM,
                              0,  8, 0,
                              1,  0, 2,
                              0,  0, 0,  //
                              5,  0, 2,
                              0,  1, 0,
                              0,  0,  //
                              12, 0, NBD_DEVICE_ITEM,
                              0,  8, 0,
                              1,  0, 4,
                              0,  0, 0});
    // The second item lacks its CONNECTED attribute: it counts as absent.
    CHECK(parse_status(reply, 2) == true);
    CHECK(!parse_status(reply, 4).has_value());
    CHECK(!parse_status(reply, 3).has_value());
    const auto off = bytes({24,
                            0,
                            NBD_ATTR_DEVICE_LIST,
                            0,
                            20,
                            0,
                            NBD_DEVICE_ITEM,
                            0,  //
                            8,
                            0,
                            1,
                            0,
                            4,
                            0,
                            0,
                            0,
                            5,
                            0,
                            2,
                            0,
                            0,
                            0,
                            0,
                            0});
    CHECK(parse_status(off, 4) == false);
    CHECK(!parse_status({}, 4).has_value());
}

TEST_CASE("nbd netlink: device names", "[netlink]") {
    CHECK(nbd_index("/dev/nbd0") == 0u);
    CHECK(nbd_index("/dev/nbd15") == 15u);
    CHECK(nbd_index("nbd7") == 7u);
    CHECK(!nbd_index("/dev/nbd0p1"));
    CHECK(!nbd_index("/dev/nbd"));
    CHECK(!nbd_index("/dev/sda"));
    CHECK(!nbd_index("auto"));
    CHECK(!nbd_index("/dev/nbd99999999999"));
}
