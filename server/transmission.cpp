// The transmission phase: the reader loop of one connection, with backpressure, and the reply
// writer shared by all of its in-flight requests.
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>

#include "protocol/errors.hpp"
#include "server/connection.hpp"
#include "server/request.hpp"

namespace qnbd::server {

using namespace qnbd::nbd;

Connection::Connection(asio::any_io_executor ex, std::unique_ptr<Transport> t,
                       const ExportRegistry& exports, ConnectionLimits limits)
    : ex_(ex), transport_(std::move(t)), exports_(exports), limits_(limits) {}

awaitable<void> Connection::run() {
    auto n = co_await negotiate();
    if (!n) {
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
}

awaitable<error_code> Connection::send(std::span<const asio::const_buffer> bufs) {
    co_await write_lock_.lock();
    error_code ec =
        broken_ ? error_code(asio::error::broken_pipe) : co_await transport_->write(bufs);
    write_lock_.unlock();
    if (ec && !broken_) {
        broken_ = true;
        transport_->close();
    }
    co_return ec;
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
    if (auto ec = co_await transport_->read(hb); ec) {
        if (ec != asio::error::eof && !broken_)
            spdlog::warn("{}: read failed: {}", peer(), ec.message());
        co_return false;
    }
    auto r = decode_request(hb);
    if (!r) {
        spdlog::warn("{}: {}; closing the connection", peer(), r.error().message);
        co_return false;
    }
    const RequestCheck chk = check_request(*r, s);
    if (chk.disconnect) {
        spdlog::warn("{}: {}; closing the connection", peer(), chk.reason);
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
    std::vector<std::byte> payload(chk.payload_length);
    if (!payload.empty() && co_await transport_->read(payload)) co_return false;
    if (!chk.ok()) {
        spdlog::warn("{}: request type {} refused: {}", peer(), r->type, chk.reason);
        RequestHandler h(*this, *r);
        co_await h.reply_error(chk.error, std::string(chk.reason));
        co_return !broken_;
    }
    ++in_flight_;
    in_flight_bytes_ += bytes;
    asio::co_spawn(ex_, handle(*r, std::move(payload)),
                   [self = shared_from_this(), bytes](std::exception_ptr e) {
                       if (e)
                           spdlog::error("{}: request failed with an internal error", self->peer());
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
        if (!co_await read_request(s, stop) || stop) break;
    }
    while (in_flight_) co_await request_done_.wait();
    transport_->close();
}

awaitable<void> Connection::handle(Request r, std::vector<std::byte> payload) {
    RequestHandler h(*this, r);
    co_await h.run(std::move(payload));
}

}  // namespace qnbd::server
