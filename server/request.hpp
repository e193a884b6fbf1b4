// Serving one transmission request against the export's Disk and writing its reply.
#pragma once

#include <chrono>
#include <string>

#include "base/buffer.hpp"
#include "protocol/read_reply.hpp"
#include "protocol/transmission.hpp"
#include "server/connection.hpp"

namespace qnbd::server {

/// The clock of request latencies (qnbd_request_duration_seconds).
using RequestClock = std::chrono::steady_clock;

/// The name of NBD command `type` for the log ("WRITE"; "command 42" for unknown ones).
std::string command_name(uint16_t type);

struct Pieces;

/// Handles one request of a connection.
class RequestHandler {
  public:
    /// `received`: when the request's header was read (used only with --metrics).
    RequestHandler(Connection& c, const nbd::Request& r, RequestClock::time_point received = {})
        : c_(c), r_(r), received_(received) {}
    /// Serves the request and sends its reply.
    awaitable<void> run(Buffer payload);
    /// Sends an error reply (structured for READ and BLOCK_STATUS when negotiated).
    awaitable<void> reply_error(uint32_t nbd_error, const std::string& message);

  private:
    awaitable<void> read();
    /// A large structured read in pieces, each sent as soon as it is in while the next ones are
    /// read, so the device's time overlaps the socket's.
    awaitable<void> read_in_pieces(Buffer& buf, const nbd::ReadReply& reply);
    /// Logs a failed READ and sends its error reply.
    awaitable<void> read_failed(const Error& e);
    /// Starts the read of piece `i` of `p` into `buf`.
    void start_piece(Buffer& buf, Pieces& p, size_t i);
    awaitable<Result<void>> write(std::span<const std::byte> payload);
    awaitable<Result<void>> write_zeroes();
    awaitable<Result<void>> trim();
    awaitable<Result<void>> flush();
    awaitable<Result<void>> cache();
    awaitable<void> block_status();
    awaitable<void> reply_simple_ok();
    /// Sends the reply `bufs` (NBD error `err`, 0 for success) and counts the request.
    awaitable<void> send_reply(std::span<const asio::const_buffer> bufs, uint32_t err);
    /// Counts the request in the export's metrics (with --metrics), its reply sent.
    void count(uint32_t err);
    awaitable<void> finish(const Result<void>& r);
    Export& exp() { return *c_.neg_->exp; }
    bool fua() const { return r_.flags & nbd::NBD_CMD_FLAG_FUA; }

    Connection& c_;
    nbd::Request r_;
    RequestClock::time_point received_;
};

}  // namespace qnbd::server
