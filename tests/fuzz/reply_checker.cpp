// The reply stream oracle of fuzz_connection.
#include "reply_checker.hpp"

#include <algorithm>
#include <bit>

#include "fuzz_check.hpp"
#include "protocol/constants.hpp"
#include "protocol/handshake.hpp"
#include "protocol/meta_context.hpp"
#include "protocol/validate.hpp"

namespace qnbd::fuzz {

using namespace qnbd::nbd;

namespace {

constexpr uint32_t kMaxOptionReply = 64u << 10;

bool is_nbd_error(uint32_t e) {
    return e == NBD_EPERM || e == NBD_EIO || e == NBD_ENOMEM || e == NBD_EINVAL ||
           e == NBD_ENOSPC || e == NBD_EOVERFLOW || e == NBD_ENOTSUP || e == NBD_ESHUTDOWN;
}

bool is_option_error(uint32_t type) {
    return type >= NBD_REP_ERR_UNSUP && type <= NBD_REP_ERR_EXT_HEADER_REQD;
}

}  // namespace

ReplyChecker::ReplyChecker(Bytes input, std::set<uint64_t> export_sizes)
    : in_(input), sizes_(std::move(export_sizes)) {}

Bytes ReplyChecker::avail() const {
    return Bytes(out_).subspan(parsed_);
}

void ReplyChecker::on_write(Bytes out, size_t consumed) {
    out_.insert(out_.end(), out.begin(), out.end());
    consumed_ = consumed;
    while (!lost_ && step()) {
    }
}

void ReplyChecker::finish() const {
    if (lost_) return;
    FUZZ_CHECK(phase_ != Phase::Greeting);
    FUZZ_CHECK(parsed_ == out_.size());  // Nothing half written.
    FUZZ_CHECK(open_.empty());
    for (const Pending& p : requests_) FUZZ_CHECK(p.answered);
}

bool ReplyChecker::step() {
    const Bytes a = avail();
    switch (phase_) {
        case Phase::Greeting:
            return greeting();
        case Phase::Options:
            if (a.size() < 8) return false;
            return load_be<uint64_t>(a.data()) == NBD_REP_MAGIC ? option_reply()
                                                                : export_name_reply();
        case Phase::Transmission:
            if (a.size() < 4) return false;
            if (load_be<uint32_t>(a.data()) == NBD_SIMPLE_REPLY_MAGIC) return simple_reply();
            FUZZ_CHECK(load_be<uint32_t>(a.data()) == NBD_STRUCTURED_REPLY_MAGIC);
            return chunk();
        case Phase::Closed:
            FUZZ_CHECK(a.empty());  // Nothing after the reply to NBD_OPT_ABORT.
            return false;
    }
    return false;
}

bool ReplyChecker::greeting() {
    if (avail().size() < kGreetingSize) return false;
    const auto g = encode_greeting();
    FUZZ_CHECK(std::equal(g.begin(), g.end(), avail().begin()));
    parsed_ += kGreetingSize;
    phase_ = Phase::Options;
    parse_options();
    return true;
}

/// Where each option ends in the input: the handshake reads every header and payload exactly
/// (discarded payloads too), and stops at a bad header or a payload it refuses to read.
void ReplyChecker::parse_options() {
    for (size_t pos = kClientFlagsSize; pos + kOptionHeaderSize <= in_.size();) {
        auto h = decode_option_header(in_.subspan(pos, kOptionHeaderSize));
        if (!h || plan_option_payload(*h).action == PayloadAction::Disconnect) return;
        pos += kOptionHeaderSize;
        if (h->length > in_.size() - pos) return;
        pos += h->length;
        options_.push_back({pos, h->option});
    }
}

/// The option whose payload the server has just finished reading.
uint32_t ReplyChecker::current_option() const {
    auto it = std::find_if(options_.begin(), options_.end(),
                           [&](const Option& o) { return o.end == consumed_; });
    FUZZ_CHECK(it != options_.end());  // A reply before its option was read.
    return it->option;
}

bool ReplyChecker::option_reply() {
    const Bytes a = avail();
    if (a.size() < kOptionReplyHeaderSize) return false;
    auto h = decode_option_reply_header(a.first(kOptionReplyHeaderSize));
    FUZZ_CHECK(h && h->length <= kMaxOptionReply);
    if (a.size() < kOptionReplyHeaderSize + h->length) return false;
    FUZZ_CHECK(h->option == current_option());
    check_option_payload(h->option, h->type, a.subspan(kOptionReplyHeaderSize, h->length));
    parsed_ += kOptionReplyHeaderSize + h->length;
    if (h->type != NBD_REP_ACK) return true;
    if (h->option == NBD_OPT_STRUCTURED_REPLY) structured_ = true;
    if (h->option == NBD_OPT_ABORT) phase_ = Phase::Closed;
    if (h->option == NBD_OPT_GO) parse_requests(consumed_);
    return true;
}

void ReplyChecker::check_option_payload(uint32_t option, uint32_t type, Bytes p) {
    const bool info = option == NBD_OPT_INFO || option == NBD_OPT_GO;
    const bool meta = option == NBD_OPT_LIST_META_CONTEXT || option == NBD_OPT_SET_META_CONTEXT;
    switch (type) {
        case NBD_REP_ACK:
            return FUZZ_CHECK(p.empty());
        case NBD_REP_SERVER:
            FUZZ_CHECK(option == NBD_OPT_LIST && p.size() >= 4);
            return FUZZ_CHECK(load_be<uint32_t>(p.data()) <= p.size() - 4);
        case NBD_REP_INFO: {
            FUZZ_CHECK(info && p.size() >= 2);
            const uint16_t what = load_be<uint16_t>(p.data());
            if (what == NBD_INFO_EXPORT) {
                FUZZ_CHECK(p.size() == 12 && sizes_.count(load_be<uint64_t>(p.data() + 2)));
                return FUZZ_CHECK(load_be<uint16_t>(p.data() + 10) & NBD_FLAG_HAS_FLAGS);
            }
            if (what == NBD_INFO_NAME || what == NBD_INFO_DESCRIPTION)
                return FUZZ_CHECK(p.size() - 2 <= kMaxStringLength);
            FUZZ_CHECK(what == NBD_INFO_BLOCK_SIZE && p.size() == 14);
            const uint32_t min = load_be<uint32_t>(p.data() + 2);
            const uint32_t pref = load_be<uint32_t>(p.data() + 6);
            FUZZ_CHECK(std::has_single_bit(min) && std::has_single_bit(pref) && min <= pref);
            return FUZZ_CHECK(pref <= load_be<uint32_t>(p.data() + 10));
        }
        case NBD_REP_META_CONTEXT: {
            FUZZ_CHECK(meta && p.size() > 4);
            const uint32_t id = load_be<uint32_t>(p.data());
            const std::string_view name = as_chars(p.subspan(4));
            if (option == NBD_OPT_LIST_META_CONTEXT)
                return FUZZ_CHECK(id == 0 &&
                                  (name == kBaseAllocation || name == kQemuAllocationDepth));
            auto c = context_from_id(id);
            return FUZZ_CHECK(c && context_name(*c) == name);
        }
        default:
            FUZZ_CHECK(is_option_error(type));
            FUZZ_CHECK(p.size() <= kMaxStringLength);
    }
}

bool ReplyChecker::export_name_reply() {
    FUZZ_CHECK(current_option() == NBD_OPT_EXPORT_NAME);
    const bool no_zeroes =
        in_.size() >= 4 && (load_be<uint32_t>(in_.data()) & NBD_FLAG_C_NO_ZEROES);
    const size_t n = 10 + (no_zeroes ? 0 : kExportNameReplyZeroes);
    const Bytes a = avail();
    if (a.size() < n) return false;
    FUZZ_CHECK(sizes_.count(load_be<uint64_t>(a.data())));
    FUZZ_CHECK(load_be<uint16_t>(a.data() + 8) & NBD_FLAG_HAS_FLAGS);
    FUZZ_CHECK(
        std::all_of(a.begin() + 10, a.begin() + n, [](std::byte b) { return b == std::byte{0}; }));
    parsed_ += n;
    parse_requests(consumed_);
    return true;
}

/// The requests the transmission phase reads from `from` on: it stops at a short or bad
/// header, NBD_CMD_DISC, a payload cut short by EOF, or a WRITE payload over the maximum (that
/// WRITE is answered with NBD_EINVAL, its payload left unread, and the connection closes).
void ReplyChecker::parse_requests(size_t from) {
    phase_ = Phase::Transmission;
    for (size_t pos = from; pos + kRequestHeaderSize <= in_.size();) {
        auto r = decode_request(in_.subspan(pos, kRequestHeaderSize));
        if (!r || r->type == NBD_CMD_DISC) return;
        pos += kRequestHeaderSize;
        if (r->type == NBD_CMD_WRITE && r->length > kMaxPayload) {
            requests_.push_back({*r, NBD_EINVAL});
            return;
        }
        if (r->type == NBD_CMD_WRITE) {
            if (r->length > in_.size() - pos) return;
            pos += r->length;
        }
        requests_.push_back({*r});
    }
}

/// The unanswered request a reply with `cookie` answers; checking stops if that is ambiguous
/// (for a simple reply, only the command and length shape it).
std::optional<size_t> ReplyChecker::attribute(uint64_t cookie, bool simple) {
    std::optional<size_t> first;
    for (size_t i = 0; i < requests_.size(); ++i) {
        const Pending& p = requests_[i];
        if (p.answered || p.r.cookie != cookie) continue;
        if (!first) {
            first = i;
        } else if (const Request& f = requests_[*first].r;
                   simple ? f.type != p.r.type || f.length != p.r.length : !(f == p.r)) {
            lost_ = true;
            return std::nullopt;
        }
    }
    FUZZ_CHECK(first);  // A reply to no outstanding request.
    return first;
}

bool ReplyChecker::simple_reply() {
    const Bytes a = avail();
    if (a.size() < kSimpleReplySize) return false;
    auto s = decode_simple_reply(a.first(kSimpleReplySize));
    FUZZ_CHECK(s);
    auto idx = attribute(s->cookie, true);
    if (!idx) return false;
    const Request& r = requests_[*idx].r;
    FUZZ_CHECK(s->error == NBD_SUCCESS || is_nbd_error(s->error));
    if (requests_[*idx].must_fail) FUZZ_CHECK(s->error == requests_[*idx].must_fail);
    if (structured_) FUZZ_CHECK(r.type != NBD_CMD_READ && r.type != NBD_CMD_BLOCK_STATUS);
    if (s->error == NBD_SUCCESS) FUZZ_CHECK(is_known_command(r.type));
    const size_t data = r.type == NBD_CMD_READ && s->error == NBD_SUCCESS ? r.length : 0;
    if (a.size() < kSimpleReplySize + data) return false;
    requests_[*idx].answered = true;
    parsed_ += kSimpleReplySize + data;
    return true;
}

bool ReplyChecker::chunk() {
    const Bytes a = avail();
    if (a.size() < kChunkHeaderSize) return false;
    auto h = decode_chunk_header(a.first(kChunkHeaderSize));
    FUZZ_CHECK(h && structured_ && (h->flags & ~NBD_REPLY_FLAG_DONE) == 0);
    if (a.size() < kChunkHeaderSize + h->length) return false;
    Open* o = reply_for(h->cookie);
    if (!o) return false;
    const uint16_t type = requests_[o->request].r.type;
    FUZZ_CHECK(type == NBD_CMD_READ || type == NBD_CMD_BLOCK_STATUS);
    check_chunk(*o, *h, a.subspan(kChunkHeaderSize, h->length));
    parsed_ += kChunkHeaderSize + h->length;
    if (h->flags & NBD_REPLY_FLAG_DONE) close_reply(static_cast<size_t>(o - open_.data()));
    return true;
}

ReplyChecker::Open* ReplyChecker::reply_for(uint64_t cookie) {
    auto it = std::find_if(open_.begin(), open_.end(),
                           [&](const Open& o) { return requests_[o.request].r.cookie == cookie; });
    if (it != open_.end()) {
        // A second request with this cookie still unanswered: its reply could begin here too.
        for (const Pending& p : requests_)
            if (!p.answered && p.r.cookie == cookie) {
                lost_ = true;
                return nullptr;
            }
        return &*it;
    }
    auto idx = attribute(cookie, false);
    if (!idx) return nullptr;
    requests_[*idx].answered = true;
    open_.push_back(Open{*idx});
    return &open_.back();
}

void ReplyChecker::check_chunk(Open& o, const ChunkHeader& h, Bytes p) {
    const Request& r = requests_[o.request].r;
    ++o.chunks;
    switch (h.type) {
        case NBD_REPLY_TYPE_NONE:
            return FUZZ_CHECK(p.empty() && (h.flags & NBD_REPLY_FLAG_DONE));
        case NBD_REPLY_TYPE_OFFSET_DATA:
        case NBD_REPLY_TYPE_OFFSET_HOLE:
            return check_read_chunk(o, h, p);
        case NBD_REPLY_TYPE_BLOCK_STATUS:
            FUZZ_CHECK(r.type == NBD_CMD_BLOCK_STATUS);
            return check_status_chunk(o, p);
        case NBD_REPLY_TYPE_ERROR:
        case NBD_REPLY_TYPE_ERROR_OFFSET: {
            const size_t fixed = h.type == NBD_REPLY_TYPE_ERROR ? 6 : 14;
            FUZZ_CHECK(p.size() >= fixed && is_nbd_error(load_be<uint32_t>(p.data())));
            FUZZ_CHECK(fixed + load_be<uint16_t>(p.data() + 4) == p.size());
            if (fixed == 14) {
                const uint64_t off = load_be<uint64_t>(p.data() + p.size() - 8);
                FUZZ_CHECK(off >= r.offset && off - r.offset < r.length);
            }
            o.error = true;
            return;
        }
        default:
            FUZZ_CHECK(!"unknown chunk type");
    }
}

void ReplyChecker::check_read_chunk(Open& o, const ChunkHeader& h, Bytes p) {
    const Request& r = requests_[o.request].r;
    FUZZ_CHECK(r.type == NBD_CMD_READ);
    const bool data = h.type == NBD_REPLY_TYPE_OFFSET_DATA;
    FUZZ_CHECK(data ? p.size() > 8 : p.size() == 12);
    const uint64_t off = load_be<uint64_t>(p.data());
    const uint64_t n = data ? p.size() - 8 : load_be<uint32_t>(p.data() + 8);
    FUZZ_CHECK(n > 0 && off == r.offset + o.covered);  // In order, no gaps.
    o.covered += n;
    FUZZ_CHECK(o.covered <= r.length);
}

void ReplyChecker::check_status_chunk(Open& o, Bytes p) {
    const Request& r = requests_[o.request].r;
    FUZZ_CHECK(p.size() >= 12 && (p.size() - 4) % 8 == 0);
    const uint32_t id = load_be<uint32_t>(p.data());
    FUZZ_CHECK(context_from_id(id) && !(o.contexts & (1u << id)));
    o.contexts |= 1u << id;
    const size_t n = (p.size() - 4) / 8;
    if (r.flags & NBD_CMD_FLAG_REQ_ONE) FUZZ_CHECK(n == 1);
    uint64_t total = 0;
    for (size_t i = 0; i < n; ++i) {
        const uint32_t len = load_be<uint32_t>(p.data() + 4 + 8 * i);
        const uint32_t status = load_be<uint32_t>(p.data() + 8 + 8 * i);
        FUZZ_CHECK(len > 0);
        if (id == context_id(MetaContext::base_allocation))
            FUZZ_CHECK((status & ~(NBD_STATE_HOLE | NBD_STATE_ZERO)) == 0);
        total += len;
    }
    FUZZ_CHECK(total <= r.length);
}

void ReplyChecker::close_reply(size_t open_index) {
    const Open o = open_[open_index];
    open_.erase(open_.begin() + static_cast<std::ptrdiff_t>(open_index));
    if (o.error) return;
    const Request& r = requests_[o.request].r;
    if (r.type == NBD_CMD_BLOCK_STATUS) return FUZZ_CHECK(o.contexts != 0);
    FUZZ_CHECK(o.covered == r.length);  // A successful READ is covered whole.
    if (r.flags & NBD_CMD_FLAG_DF) FUZZ_CHECK(o.chunks == 1);
}

}  // namespace qnbd::fuzz
