// The transmission phase: the reader loop of one connection, with backpressure, and the reply
// writer shared by all of its in-flight requests.
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <cstring>

#include "server/connection.hpp"
#include "server/request.hpp"
#include "server/spawn.hpp"

namespace qnbd::server {

using namespace qnbd::nbd;

Connection::Connection(asio::any_io_executor ex, std::unique_ptr<Transport> t,
                       const ExportRegistry& exports, ConnectionLimits limits,
                       std::shared_ptr<const TlsCredentials> tls)
    : ex_(ex), transport_(std::move(t)), exports_(exports), limits_(limits), tls_(std::move(tls)) {}

awaitable<void> Connection::run() {
    auto n = co_await negotiate();
    if (!n) {
        transport_->close();
        if (grace_) grace_->cancel();
        log_.finish(peer());
        co_return;
    }
    if (exports_.find(n->exp->name) != n->exp) {
        // Removed (control socket) while this client negotiated it: its image may be closing.
        log(spdlog::level::warn, "export '{}' was removed during the handshake", n->exp->name);
        transport_->close();
        co_return;
    }
    co_await serve(std::move(*n));
}

awaitable<void> Connection::serve(Negotiated n) {
    spdlog::info("{}: serving export '{}'{}", peer(), n.exp->name,
                 n.structured ? " with structured replies" : "");
    neg_ = std::move(n);
    co_await transmission(*neg_);
    log_.finish(peer());
}

void Connection::shutdown() {
    if (closing_) return;
    closing_ = true;
    transport_->shutdown_read();
    grace_.emplace(ex_, kShutdownGrace);
    grace_->async_wait([weak = weak_from_this()](error_code ec) {
        auto self = weak.lock();
        if (ec || !self) return;
        self->log(spdlog::level::warn, "replies not taken within {} s of the shutdown; closing",
                  kShutdownGrace.count());
        self->transport_->close();
    });
}

bool ReceiveBuffer::take(std::span<std::byte> out) {
    if (end_ - begin_ < out.size()) return false;
    std::memcpy(out.data(), buf_.data() + begin_, out.size());
    begin_ += out.size();
    return true;
}

awaitable<error_code> ReceiveBuffer::read(Transport& t, std::span<std::byte> out) {
    for (;;) {
        const size_t n = std::min(out.size(), end_ - begin_);
        if (n) std::memcpy(out.data(), buf_.data() + begin_, n);
        begin_ += n;
        out = out.subspan(n);
        if (out.empty()) co_return error_code{};
        begin_ = end_ = 0;
        if (out.size() >= kSize / 2) co_return co_await t.read(out);
        if (buf_.empty()) buf_.resize(kSize);
        auto [ec, got] = co_await t.read_some(buf_);
        if (ec) co_return ec;
        end_ = got;
    }
}

// Replies go out in arrival order, never interleaved. Whoever finds no writer at work becomes
// the writer and sends everything queued meanwhile in one gather write per round; the others
// wait for their reply to be written.
awaitable<error_code> Connection::send(std::span<const asio::const_buffer> bufs) {
    if (broken_) co_return asio::error::broken_pipe;
    QueuedReply me{bufs, {}, {}};
    replies_.push_back(&me);
    if (writing_) {
        co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
            [&me](auto handler) { me.written.emplace(std::move(handler)); }, asio::use_awaitable);
        co_return me.ec;
    }
    writing_ = true;
    while (!replies_.empty()) {
        // The two vectors trade places each round and keep their capacity: no allocation.
        round_.clear();
        std::swap(round_, replies_);
        gather_.clear();
        for (QueuedReply* q : round_) gather_.insert(gather_.end(), q->bufs.begin(), q->bufs.end());
        error_code ec =
            broken_ ? error_code(asio::error::broken_pipe) : co_await transport_->write(gather_);
        if (ec && !broken_) {
            broken_ = true;
            transport_->close();
        }
        for (QueuedReply* q : round_) {
            q->ec = ec;
            if (q != &me)
                asio::post(ex_, [h = std::move(*q->written)]() mutable { std::move(h)(); });
        }
    }
    writing_ = false;
    co_return me.ec;
}

void Connection::finish_request(uint64_t bytes) {
    --in_flight_;
    in_flight_bytes_ -= bytes;
    request_done_.notify_all();
}

/// Bytes of memory a request holds while it is served.
static uint64_t request_bytes(const Request& r) {
    return r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE ? r.length : 0;
}

awaitable<bool> Connection::read_request(Session& s, bool& stop) {
    std::array<std::byte, kRequestHeaderSize> hb;
    error_code ec;
    if (!rx_.take(hb)) ec = co_await rx_.read(*transport_, hb);
    if (ec) {
        if (ec != asio::error::eof && !broken_ && !closing_)
            log(spdlog::level::warn, "read failed: {}", ec.message());
        co_return false;
    }
    // Latencies start here: the header is in, the payload (if any) not yet.
    const auto received = neg_->exp->metrics ? RequestClock::now() : RequestClock::time_point{};
    auto r = decode_request(hb);
    if (!r) {
        log(spdlog::level::warn, "{}; closing the connection", r.error().message);
        co_return false;
    }
    const RequestCheck chk = check_request(*r, s);
    if (chk.disconnect) {
        // The payload is not read (more than the 32 MiB the spec asks servers to accept): the
        // client gets NBD_EINVAL for the request, as from qemu-nbd, and the connection closes.
        log(spdlog::level::warn, "{}; closing the connection", chk.reason);
        RequestHandler h(*this, *r, received);
        const std::string why(chk.reason);
        co_await h.reply_error(chk.error, why);
        co_return false;
    }
    if (r->type == NBD_CMD_DISC) {
        stop = true;
        co_return true;
    }
    const uint64_t bytes = request_bytes(*r);
    while (in_flight_ >= limits_.max_in_flight ||
           (in_flight_ && in_flight_bytes_ + bytes > limits_.max_in_flight_bytes))
        co_await request_done_.wait();
    Buffer payload = Buffer::uninitialized(chk.payload_length);
    if (payload.size() && co_await rx_.read(*transport_, payload.span())) co_return false;
    if (!chk.ok()) {
        log(spdlog::level::warn, "{} refused: {}", command_name(r->type), chk.reason);
        RequestHandler h(*this, *r, received);
        co_await h.reply_error(chk.error, std::string(chk.reason));
        co_return !broken_;
    }
    ++in_flight_;
    in_flight_bytes_ += bytes;
    asio::co_spawn(ex_, handle(*r, std::move(payload), received),
                   [self = shared_from_this(), bytes](std::exception_ptr e) {
                       if (e)
                           self->log(spdlog::level::err,
                                     "request failed with an internal error: {}",
                                     exception_message(e));
                       self->finish_request(bytes);
                   });
    co_return !broken_;
}

awaitable<void> Connection::transmission(Negotiated n) {
    Session s;
    s.export_size = n.exp->disk->size();
    s.transmission_flags = n.transmission_flags;
    s.structured_replies = n.structured;
    s.meta_contexts = static_cast<uint32_t>(n.contexts.size());
    for (;;) {
        bool stop = false;
        if (!co_await read_request(s, stop) || stop || closing_) break;
    }
    while (in_flight_) co_await request_done_.wait();
    if (!broken_) co_await finish_transport();
    transport_->close();
    if (grace_) grace_->cancel();
}

awaitable<void> Connection::finish_transport() {
    // A client that stopped reading must not keep the connection: the close cuts it short.
    asio::steady_timer limit(ex_, kFinishLimit);
    limit.async_wait([weak = weak_from_this()](error_code ec) {
        if (auto self = weak.lock(); self && !ec) self->transport_->close();
    });
    co_await transport_->finish();
    limit.cancel();
}

awaitable<void> Connection::handle(Request r, Buffer payload, RequestClock::time_point received) {
    RequestHandler h(*this, r, received);
    co_await h.run(std::move(payload));
}

}  // namespace qnbd::server
