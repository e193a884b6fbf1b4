// Serving one transmission request against the export's Disk and writing its reply.
#pragma once

#include <string>

#include "base/buffer.hpp"
#include "protocol/transmission.hpp"
#include "server/connection.hpp"

namespace qnbd::server {

/// The name of NBD command `type` for the log ("WRITE"; "command 42" for unknown ones).
std::string command_name(uint16_t type);

/// Handles one request of a connection.
class RequestHandler {
  public:
    RequestHandler(Connection& c, const nbd::Request& r) : c_(c), r_(r) {}
    /// Serves the request and sends its reply.
    awaitable<void> run(Buffer payload);
    /// Sends an error reply (structured for READ and BLOCK_STATUS when negotiated).
    awaitable<void> reply_error(uint32_t nbd_error, const std::string& message);

  private:
    awaitable<void> read();
    awaitable<Result<void>> write(std::span<const std::byte> payload);
    awaitable<Result<void>> write_zeroes();
    awaitable<Result<void>> trim();
    awaitable<Result<void>> flush();
    awaitable<Result<void>> cache();
    awaitable<void> block_status();
    awaitable<void> reply_simple_ok();
    awaitable<void> finish(const Result<void>& r);
    Export& exp() { return *c_.neg_->exp; }
    bool fua() const { return r_.flags & nbd::NBD_CMD_FLAG_FUA; }

    Connection& c_;
    nbd::Request r_;
};

}  // namespace qnbd::server
