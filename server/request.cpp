#include "server/request.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>
#include <cstring>
#include <vector>

#include "base/buffer.hpp"
#include "protocol/errors.hpp"
#include "protocol/read_reply.hpp"
#include "server/metrics.hpp"
#include "server/spawn.hpp"

namespace qnbd::server {

using namespace qnbd::nbd;

namespace {

/// A structured READ of at least kPiecesFrom bytes is read and sent in pieces of kPiece, with
/// kPiecesAhead piece reads in flight: piece i is sent while piece i + 1 is read. (All at
/// once, the device shares its bandwidth among them and the first one ends as late as the
/// whole read would; one at a time, the device idles while a piece is sent.)
constexpr uint64_t kPiece = 256 * 1024;
constexpr uint64_t kPiecesFrom = 2 * kPiece;
constexpr size_t kPiecesAhead = 2;

/// The reply's header and data buffers: they point into `parts` and `buf`, which must outlive
/// them.
std::vector<asio::const_buffer> reply_buffers(const std::vector<ReadReplyPart>& parts,
                                              const Buffer& buf) {
    std::vector<asio::const_buffer> out;
    out.reserve(parts.size() * 2);
    for (const ReadReplyPart& p : parts) {
        out.emplace_back(p.bytes.data(), p.size);
        if (p.data_length) out.emplace_back(buf.data() + p.data_offset, p.data_length);
    }
    return out;
}

/// The engine's zero runs of a read starting `from` bytes into the request, as reply holes.
std::vector<ReadHole> holes_of(const std::vector<ZeroRun>& zeros, uint64_t from) {
    std::vector<ReadHole> holes;
    holes.reserve(zeros.size());
    for (const ZeroRun& z : zeros) holes.push_back({from + z.offset, z.length});
    return holes;
}

}  // namespace

/// The pieces of one read in pieces; `changed` wakes the sender when one ends.
struct Pieces {
    struct Piece {
        bool done = false;  ///< Its read has ended, with `result`.
        Result<void> result;
        std::vector<ZeroRun> zeros;
    };
    std::vector<Piece> piece;
    Notifier changed;
};

namespace {

/// True when every byte of `b` is zero.
bool all_zero(std::span<const std::byte> b) {
    for (size_t off = 0; off < b.size(); off += kZeroPageSize) {
        size_t n = std::min(b.size() - off, kZeroPageSize);
        if (std::memcmp(b.data() + off, zero_page(), n) != 0) return false;
    }
    return true;
}

}  // namespace

std::string command_name(uint16_t t) {
    static const char* const names[] = {"READ", "WRITE", "DISC",         "FLUSH",
                                        "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"};
    return t < std::size(names) ? names[t] : "command " + std::to_string(t);
}

awaitable<void> RequestHandler::run(Buffer payload) {
    spdlog::debug("{}: {} offset={} length={} flags={:#x}", c_.peer(), command_name(r_.type),
                  r_.offset, r_.length, r_.flags);
    switch (r_.type) {
        case NBD_CMD_READ:
            co_return co_await read();
        case NBD_CMD_BLOCK_STATUS:
            co_return co_await block_status();
        case NBD_CMD_WRITE:
            co_return co_await finish(co_await write(payload.span()));
        case NBD_CMD_FLUSH:
            co_return co_await finish(co_await flush());
        case NBD_CMD_TRIM:
            co_return co_await finish(co_await trim());
        case NBD_CMD_WRITE_ZEROES:
            co_return co_await finish(co_await write_zeroes());
        case NBD_CMD_CACHE:
            co_return co_await finish(co_await cache());
        default:
            co_return co_await reply_error(NBD_EINVAL, "unknown command");
    }
}

awaitable<void> RequestHandler::finish(const Result<void>& r) {
    if (r) co_return co_await reply_simple_ok();
    // A FAST_ZERO the engine cannot do fast is expected: debug, outside the client's log limit.
    if (r.error().code == ENOTSUP && (r_.flags & NBD_CMD_FLAG_FAST_ZERO))
        spdlog::debug("{}: {} at offset {} length {} failed: {}", c_.peer(), command_name(r_.type),
                      r_.offset, r_.length, r.error().message);
    else
        c_.log(spdlog::level::warn, "{} at offset {} length {} failed: {}", command_name(r_.type),
               r_.offset, r_.length, r.error().message);
    co_await reply_error(nbd_error(r.error().code, r_), r.error().message);
}

awaitable<void> RequestHandler::send_reply(std::span<const asio::const_buffer> bufs, uint32_t err) {
    co_await c_.send(bufs);
    // Counted even when the reply could not be written: the request was served.
    count(err);
}

void RequestHandler::count(uint32_t err) {
    if (ExportMetrics* m = c_.neg_ ? c_.neg_->exp->metrics : nullptr) {
        const auto took = RequestClock::now() - received_;
        m->record(r_.type, err, r_.length,
                  std::chrono::duration_cast<std::chrono::nanoseconds>(took).count());
    }
}

awaitable<void> RequestHandler::reply_simple_ok() {
    auto h = encode_simple_reply(NBD_SUCCESS, r_.cookie);
    asio::const_buffer b(h.data(), h.size());
    co_await send_reply({&b, 1}, NBD_SUCCESS);
}

awaitable<void> RequestHandler::reply_error(uint32_t err, const std::string& message) {
    const bool structured = c_.neg_ && c_.neg_->structured &&
                            (r_.type == NBD_CMD_READ || r_.type == NBD_CMD_BLOCK_STATUS);
    if (structured) {
        auto chunk = encode_error_chunk(NBD_REPLY_FLAG_DONE, r_.cookie, err, message);
        asio::const_buffer b(chunk.data(), chunk.size());
        co_await send_reply({&b, 1}, err);
        co_return;
    }
    auto h = encode_simple_reply(err, r_.cookie);
    asio::const_buffer b(h.data(), h.size());
    co_await send_reply({&b, 1}, err);
}

awaitable<void> RequestHandler::read() {
    // Aligned, so O_DIRECT reads land in it directly; the engine fills every byte.
    Buffer buf = Buffer::uninitialized(r_.length);
    const ReadReply reply{.cookie = r_.cookie,
                          .offset = r_.offset,
                          .length = r_.length,
                          .structured = c_.neg_->structured,
                          .dont_fragment = (r_.flags & NBD_CMD_FLAG_DF) != 0};
    if (reply.uses_holes() && r_.length >= kPiecesFrom)
        co_return co_await read_in_pieces(buf, reply);
    std::vector<ZeroRun> zeros;
    auto r = co_await exp().disk->read(GuestOffset{r_.offset}, buf.span(),
                                       reply.uses_holes() ? &zeros : nullptr);
    if (!r) co_return co_await read_failed(r.error());
    const std::vector<ReadReplyPart> parts = encode_read_reply(reply, holes_of(zeros, 0));
    const auto out = reply_buffers(parts, buf);
    co_await send_reply(out, NBD_SUCCESS);
}

awaitable<void> RequestHandler::read_failed(const Error& e) {
    c_.log(spdlog::level::warn, "READ at offset {} length {} failed: {}", r_.offset, r_.length,
           e.message);
    co_await reply_error(nbd_error(e.code, r_), e.message);
}

void RequestHandler::start_piece(Buffer& buf, Pieces& p, size_t i) {
    const uint64_t from = i * kPiece, len = std::min<uint64_t>(kPiece, r_.length - from);
    // The handler marks the piece ended whatever happened: read_in_pieces waits for every piece
    // it started (they read into `buf`) before its frame ends.
    asio::co_spawn(c_.ex_,
                   exp().disk->read(GuestOffset{r_.offset + from}, buf.span().subspan(from, len),
                                    &p.piece[i].zeros),
                   [&p, i](std::exception_ptr e, Result<void> r) {
                       p.piece[i].result =
                           e ? Result<void>(Error{EIO, "internal error: " + exception_message(e)})
                             : std::move(r);
                       p.piece[i].done = true;
                       p.changed.notify_all();
                   });
}

awaitable<void> RequestHandler::read_in_pieces(Buffer& buf, const ReadReply& reply) {
    Pieces p;
    p.piece.resize((r_.length + kPiece - 1) / kPiece);
    for (size_t i = 0; i < std::min(kPiecesAhead, p.piece.size()); ++i) start_piece(buf, p, i);
    bool ended = false;   // The reply is complete or cannot be sent: later pieces are not sent.
    bool failed = false;  // An error chunk ended it (reply_error counts the request).
    for (size_t i = 0; i < p.piece.size(); ++i) {
        while (!p.piece[i].done) co_await p.changed.wait();
        if (i + kPiecesAhead < p.piece.size()) start_piece(buf, p, i + kPiecesAhead);
        if (ended) continue;
        if (const Result<void>& r = p.piece[i].result; !r) {
            co_await read_failed(r.error());
            ended = failed = true;
            continue;
        }
        const uint64_t from = i * kPiece, to = std::min<uint64_t>(from + kPiece, r_.length);
        const std::vector<ReadReplyPart> parts =
            encode_read_reply_range(reply, from, to, holes_of(p.piece[i].zeros, from));
        const auto out = reply_buffers(parts, buf);
        if (co_await c_.send(out)) ended = true;
    }
    // Counted even when the reply could not be written: the request was served.
    if (!failed) count(NBD_SUCCESS);
}

awaitable<Result<void>> RequestHandler::write(std::span<const std::byte> payload) {
    Disk& d = *exp().disk;
    if (exp().detect_zeroes != DetectZeroes::Off && all_zero(payload)) {
        const bool unmap =
            exp().detect_zeroes == DetectZeroes::Unmap && exp().discard == DiscardMode::Unmap;
        co_return co_await d.write_zeroes(GuestOffset{r_.offset}, payload.size(),
                                          ZeroFlags{unmap, fua(), false});
    }
    co_return co_await d.write(GuestOffset{r_.offset}, payload, WriteFlags{fua()});
}

awaitable<Result<void>> RequestHandler::write_zeroes() {
    ZeroFlags f;
    f.may_unmap = !(r_.flags & NBD_CMD_FLAG_NO_HOLE) && exp().discard == DiscardMode::Unmap;
    f.fua = fua();
    f.fast_only = r_.flags & NBD_CMD_FLAG_FAST_ZERO;
    co_return co_await exp().disk->write_zeroes(GuestOffset{r_.offset}, r_.length, f);
}

awaitable<Result<void>> RequestHandler::trim() {
    if (exp().discard == DiscardMode::Unmap)
        co_return co_await exp().disk->discard(GuestOffset{r_.offset}, r_.length,
                                               WriteFlags{fua()});
    if (fua()) co_return co_await flush();
    co_return ok();
}

awaitable<Result<void>> RequestHandler::flush() {
    if (exp().unsafe_flush) co_return ok();
    co_return co_await exp().disk->flush();
}

awaitable<Result<void>> RequestHandler::cache() {
    // Reading the range loads its metadata and brings its data into the host's page cache.
    constexpr uint64_t kChunk = 4u << 20;
    Buffer buf = Buffer::uninitialized(std::min<uint64_t>(r_.length, kChunk));
    for (uint64_t pos = 0; pos < r_.length; pos += kChunk) {
        const uint64_t n = std::min<uint64_t>(kChunk, r_.length - pos);
        auto r = co_await exp().disk->read(GuestOffset{r_.offset + pos}, buf.span().first(n));
        if (!r) co_return r;
    }
    co_return ok();
}

}  // namespace qnbd::server
