// Generic netlink on raw AF_NETLINK sockets (see netlink.hpp). Headers are copied in and out
// with memcpy: the buffers hold bytes, and their headers need not be aligned for the compiler.
#include "server/netlink.hpp"

#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <utility>

namespace qnbd::server::netlink {
namespace {

constexpr size_t align4(size_t n) {
    return (n + 3) & ~size_t{3};
}

template <class T>
T load(std::span<const std::byte> b) {
    T v;
    std::memcpy(&v, b.data(), sizeof v);
    return v;
}

template <class T>
std::optional<T> integer(std::span<const std::byte> data) {
    if (data.size() < sizeof(T)) return std::nullopt;
    return load<T>(data);
}

Error sys_error(const char* what) {
    return Error{errno, std::string("netlink: ") + what + ": " + std::strerror(errno)};
}

}  // namespace

Message::Message(uint16_t family, uint8_t cmd, uint8_t version) : buf_(NLMSG_HDRLEN + GENL_HDRLEN) {
    nlmsghdr h{};
    h.nlmsg_type = family;
    h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    std::memcpy(buf_.data(), &h, sizeof h);
    genlmsghdr g{};
    g.cmd = cmd;
    g.version = version;
    std::memcpy(buf_.data() + NLMSG_HDRLEN, &g, sizeof g);
}

void Message::put(uint16_t type, const void* data, size_t len) {
    const size_t at = buf_.size();
    buf_.resize(at + align4(NLA_HDRLEN + len));
    nlattr a{};
    a.nla_len = static_cast<uint16_t>(NLA_HDRLEN + len);
    a.nla_type = type;
    std::memcpy(buf_.data() + at, &a, sizeof a);
    if (len) std::memcpy(buf_.data() + at + NLA_HDRLEN, data, len);
}

Message& Message::u8(uint16_t type, uint8_t v) {
    put(type, &v, sizeof v);
    return *this;
}
Message& Message::u16(uint16_t type, uint16_t v) {
    put(type, &v, sizeof v);
    return *this;
}
Message& Message::u32(uint16_t type, uint32_t v) {
    put(type, &v, sizeof v);
    return *this;
}
Message& Message::u64(uint16_t type, uint64_t v) {
    put(type, &v, sizeof v);
    return *this;
}
Message& Message::string(uint16_t type, const std::string& s) {
    put(type, s.c_str(), s.size() + 1);
    return *this;
}

size_t Message::begin_nested(uint16_t type) {
    const size_t at = buf_.size();
    put(type | NLA_F_NESTED, nullptr, 0);
    return at;
}

void Message::end_nested(size_t at) {
    nlattr a = load<nlattr>(std::span(buf_).subspan(at));
    a.nla_len = static_cast<uint16_t>(buf_.size() - at);
    std::memcpy(buf_.data() + at, &a, sizeof a);
}

std::span<const std::byte> Message::bytes(uint32_t seq) {
    nlmsghdr h = load<nlmsghdr>(buf_);
    h.nlmsg_len = static_cast<uint32_t>(buf_.size());
    h.nlmsg_seq = seq;
    std::memcpy(buf_.data(), &h, sizeof h);
    return buf_;
}

std::optional<uint8_t> Attribute::u8() const {
    return integer<uint8_t>(data);
}
std::optional<uint16_t> Attribute::u16() const {
    return integer<uint16_t>(data);
}
std::optional<uint32_t> Attribute::u32() const {
    return integer<uint32_t>(data);
}
std::optional<uint64_t> Attribute::u64() const {
    return integer<uint64_t>(data);
}
std::vector<Attribute> Attribute::nested() const {
    return parse_attributes(data);
}

std::vector<Attribute> parse_attributes(std::span<const std::byte> bytes) {
    std::vector<Attribute> out;
    while (bytes.size() >= NLA_HDRLEN) {
        const nlattr a = load<nlattr>(bytes);
        if (a.nla_len < NLA_HDRLEN || a.nla_len > bytes.size()) break;
        out.push_back(Attribute{static_cast<uint16_t>(a.nla_type & NLA_TYPE_MASK),
                                bytes.subspan(NLA_HDRLEN, a.nla_len - NLA_HDRLEN)});
        bytes = bytes.subspan(std::min(bytes.size(), align4(a.nla_len)));
    }
    return out;
}

const Attribute* find(const std::vector<Attribute>& attrs, uint16_t type) {
    for (auto& a : attrs)
        if (a.type == type) return &a;
    return nullptr;
}

bool Answer::absorb(std::span<const std::byte> datagram) {
    while (!done_ && datagram.size() >= NLMSG_HDRLEN) {
        const nlmsghdr h = load<nlmsghdr>(datagram);
        if (h.nlmsg_len < NLMSG_HDRLEN || h.nlmsg_len > datagram.size()) break;
        const auto body = datagram.subspan(NLMSG_HDRLEN, h.nlmsg_len - NLMSG_HDRLEN);
        if (h.nlmsg_seq == seq_) {
            if (h.nlmsg_type == NLMSG_ERROR) {
                // The errno (0 for an acknowledgement), then the request echoed back.
                error_ = body.size() >= sizeof(int) ? -load<int>(body) : EPROTO;
                done_ = true;
            } else if (h.nlmsg_type == NLMSG_DONE) {
                done_ = true;
            } else if (body.size() >= GENL_HDRLEN) {
                const auto attrs = body.subspan(GENL_HDRLEN);
                reply_.assign(attrs.begin(), attrs.end());
            }
        }
        datagram = datagram.subspan(std::min(datagram.size(), size_t{NLMSG_ALIGN(h.nlmsg_len)}));
    }
    return done_;
}

Result<Socket> Socket::open() {
    const int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (fd < 0) return sys_error("socket");
    Socket s(fd);
    sockaddr_nl addr{};
    addr.nl_family = AF_NETLINK;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) return sys_error("bind");
    // The kernel answers within the send, except when a command waits on a device; a kernel
    // that never answers must not hang the caller.
    timeval tv{30, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return s;
}

Socket::Socket(Socket&& o) noexcept : fd_(std::exchange(o.fd_, -1)), seq_(o.seq_) {}

Socket::~Socket() {
    if (fd_ >= 0) ::close(fd_);
}

Result<std::vector<std::byte>> Socket::request(Message& m) {
    const uint32_t seq = ++seq_;
    const auto out = m.bytes(seq);
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd_, out.data(), out.size(), 0, reinterpret_cast<sockaddr*>(&kernel),
                 sizeof kernel) < 0)
        return sys_error("send");
    Answer answer(seq);
    std::vector<std::byte> buf(64 * 1024);
    for (;;) {
        const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return sys_error("receive");
        if (answer.absorb(std::span(buf).first(static_cast<size_t>(n)))) break;
    }
    if (answer.error()) return Error{answer.error(), std::strerror(answer.error())};
    return answer.reply();
}

Result<uint16_t> Socket::family_id(const std::string& name) {
    Message m(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1);
    m.string(CTRL_ATTR_FAMILY_NAME, name);
    auto r = request(m);
    if (!r) return r.error();
    const auto attrs = parse_attributes(*r);
    const Attribute* id = find(attrs, CTRL_ATTR_FAMILY_ID);
    if (!id || !id->u16()) return Error{EPROTO, "netlink: no id in the answer for " + name};
    return *id->u16();
}

}  // namespace qnbd::server::netlink
