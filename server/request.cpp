#include "server/request.hpp"

#include <spdlog/spdlog.h>

#include <cstring>

#include "base/buffer.hpp"
#include "protocol/errors.hpp"

namespace qnbd::server {

using namespace qnbd::nbd;

namespace {

/// True when every byte of `b` is zero.
bool all_zero(std::span<const std::byte> b) {
    for (size_t off = 0; off < b.size(); off += kZeroPageSize) {
        size_t n = std::min(b.size() - off, kZeroPageSize);
        if (std::memcmp(b.data() + off, zero_page(), n) != 0) return false;
    }
    return true;
}

const char* command_name(uint16_t t) {
    static const char* const names[] = {"READ", "WRITE", "DISC",         "FLUSH",
                                        "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"};
    return t < std::size(names) ? names[t] : "UNKNOWN";
}

}  // namespace

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
    const bool expected = r.error().code == ENOTSUP && (r_.flags & NBD_CMD_FLAG_FAST_ZERO);
    spdlog::log(expected ? spdlog::level::debug : spdlog::level::warn,
                "{}: {} at offset {} length {} failed: {}", c_.peer(), command_name(r_.type),
                r_.offset, r_.length, r.error().message);
    co_await reply_error(nbd_error(r.error().code, r_), r.error().message);
}

awaitable<void> RequestHandler::reply_simple_ok() {
    auto h = encode_simple_reply(NBD_SUCCESS, r_.cookie);
    asio::const_buffer b(h.data(), h.size());
    co_await c_.send({&b, 1});
}

awaitable<void> RequestHandler::reply_error(uint32_t err, const std::string& message) {
    const bool structured = c_.neg_ && c_.neg_->structured &&
                            (r_.type == NBD_CMD_READ || r_.type == NBD_CMD_BLOCK_STATUS);
    if (structured) {
        auto chunk = encode_error_chunk(NBD_REPLY_FLAG_DONE, r_.cookie, err, message);
        asio::const_buffer b(chunk.data(), chunk.size());
        co_await c_.send({&b, 1});
        co_return;
    }
    auto h = encode_simple_reply(err, r_.cookie);
    asio::const_buffer b(h.data(), h.size());
    co_await c_.send({&b, 1});
}

awaitable<void> RequestHandler::read() {
    // Aligned, so O_DIRECT reads land in it directly; the engine fills every byte.
    Buffer buf = Buffer::uninitialized(r_.length);
    std::vector<ZeroRun> zeros;
    const bool structured = c_.neg_->structured;
    const bool df = r_.flags & NBD_CMD_FLAG_DF;
    auto r = co_await exp().disk->read(GuestOffset{r_.offset}, buf.span(),
                                       structured && !df ? &zeros : nullptr);
    if (!r) {
        spdlog::warn("{}: READ at offset {} length {} failed: {}", c_.peer(), r_.offset, r_.length,
                     r.error().message);
        co_return co_await reply_error(nbd_error(r.error().code, r_), r.error().message);
    }
    if (!structured) {
        auto h = encode_simple_reply(NBD_SUCCESS, r_.cookie);
        asio::const_buffer b[2] = {{h.data(), h.size()}, {buf.data(), buf.size()}};
        co_await c_.send(b);
        co_return;
    }
    // Structured: data and hole chunks in order; the last one carries DONE.
    std::vector<std::array<std::byte, kChunkHeaderSize + 12>> heads;
    heads.reserve(zeros.size() * 2 + 1);
    std::vector<asio::const_buffer> out;
    auto add_data = [&](uint64_t from, uint64_t to, bool last) {
        auto h = encode_offset_data_header(last ? NBD_REPLY_FLAG_DONE : 0, r_.cookie,
                                           r_.offset + from, static_cast<uint32_t>(to - from));
        heads.emplace_back();
        std::memcpy(heads.back().data(), h.data(), h.size());
        out.emplace_back(heads.back().data(), h.size());
        out.emplace_back(buf.data() + from, to - from);
    };
    uint64_t pos = 0;
    for (size_t i = 0; i < zeros.size(); ++i) {
        const ZeroRun& z = zeros[i];
        if (z.offset > pos) add_data(pos, z.offset, false);
        const bool last = z.offset + z.length == buf.size();
        heads.push_back(encode_offset_hole(last ? NBD_REPLY_FLAG_DONE : 0, r_.cookie,
                                           r_.offset + z.offset, static_cast<uint32_t>(z.length)));
        out.emplace_back(heads.back().data(), heads.back().size());
        pos = z.offset + z.length;
    }
    if (pos < buf.size() || buf.size() == 0) {
        if (buf.size() == 0) {
            auto none = encode_chunk_none(r_.cookie);
            heads.emplace_back();
            std::memcpy(heads.back().data(), none.data(), none.size());
            out.emplace_back(heads.back().data(), none.size());
        } else {
            add_data(pos, buf.size(), true);
        }
    }
    co_await c_.send(out);
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
