// A small generic-netlink client written directly on AF_NETLINK/NETLINK_GENERIC sockets:
// requests with attributes (nested ones too), a family's id looked up by name
// (CTRL_CMD_GETFAMILY), and the kernel's answer to a request: its reply message, if any, then
// the acknowledgement or an errno. Enough for the kernel's "nbd" family (nbd_netlink.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/result.hpp"

namespace qnbd::server::netlink {

/// A generic netlink request being built: the netlink header, the generic header, attributes.
class Message {
  public:
    /// A request (NLM_F_REQUEST | NLM_F_ACK) for command `cmd` of family `family`.
    Message(uint16_t family, uint8_t cmd, uint8_t version);
    Message& u8(uint16_t type, uint8_t v);
    Message& u16(uint16_t type, uint16_t v);
    Message& u32(uint16_t type, uint32_t v);
    Message& u64(uint16_t type, uint64_t v);
    /// A NUL-terminated string attribute.
    Message& string(uint16_t type, const std::string& s);
    /// Opens a nested attribute (NLA_F_NESTED); its attributes follow until end_nested(at).
    size_t begin_nested(uint16_t type);
    void end_nested(size_t at);
    /// The bytes to send, with the length and sequence number filled in.
    std::span<const std::byte> bytes(uint32_t seq);

  private:
    void put(uint16_t type, const void* data, size_t len);
    std::vector<std::byte> buf_;
};

/// One attribute of a received message.
struct Attribute {
    uint16_t type = 0;  ///< Without the NLA_F_NESTED and NLA_F_NET_BYTEORDER flags.
    std::span<const std::byte> data;
    /// The value as an integer of that size; empty when the payload is shorter.
    std::optional<uint8_t> u8() const;
    std::optional<uint16_t> u16() const;
    std::optional<uint32_t> u32() const;
    std::optional<uint64_t> u64() const;
    /// The attributes nested in this one.
    std::vector<Attribute> nested() const;
};

/// Splits a stream of attributes; stops at the first one that does not fit.
std::vector<Attribute> parse_attributes(std::span<const std::byte> bytes);
/// The first attribute of `type` in `attrs`, or null.
const Attribute* find(const std::vector<Attribute>& attrs, uint16_t type);

/// The kernel's answer to one request, gathered from the datagrams it sends back.
class Answer {
  public:
    explicit Answer(uint32_t seq) : seq_(seq) {}
    /// Takes in one received datagram; messages of other requests are skipped. Returns true
    /// once the acknowledgement (or an error) has arrived.
    bool absorb(std::span<const std::byte> datagram);
    /// 0, or the errno the kernel answered with (once absorb returned true).
    int error() const { return error_; }
    /// The attributes of the reply message (after its generic header); empty if none came.
    const std::vector<std::byte>& reply() const { return reply_; }

  private:
    uint32_t seq_;
    int error_ = 0;
    bool done_ = false;
    std::vector<std::byte> reply_;
};

/// A NETLINK_GENERIC socket.
class Socket {
  public:
    /// Opens and binds the socket; errors name the call that failed.
    static Result<Socket> open();
    Socket(Socket&& o) noexcept;
    Socket& operator=(Socket&&) = delete;
    ~Socket();
    /// The id of family `name`: ENOENT when the kernel has no such family.
    Result<uint16_t> family_id(const std::string& name);
    /// Sends `m` and waits for the kernel's answer: the attributes of its reply message (empty
    /// when it only acknowledged), or an Error whose code is the kernel's errno.
    Result<std::vector<std::byte>> request(Message& m);

  private:
    explicit Socket(int fd) : fd_(fd) {}
    int fd_ = -1;
    uint32_t seq_ = 0;
};

}  // namespace qnbd::server::netlink
