// One client connection: the fixed-newstyle handshake, then the transmission phase where
// requests are read continuously and served concurrently, replies written as each completes.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/async.hpp"
#include "base/buffer.hpp"
#include "protocol/meta_context.hpp"
#include "protocol/validate.hpp"
#include "server/export.hpp"
#include "server/log_limit.hpp"
#include "server/tls.hpp"
#include "server/transport.hpp"

namespace qnbd::server {

/// What the handshake settled.
struct Negotiated {
    std::shared_ptr<Export> exp;
    bool structured = false;
    nbd::MetaContextSet contexts;
    uint16_t transmission_flags = 0;
};

/// Per-connection limits.
struct ConnectionLimits {
    unsigned handshake_timeout_s = 10;          ///< 0: no limit.
    size_t max_in_flight = 64;                  ///< Requests served at once.
    uint64_t max_in_flight_bytes = 256u << 20;  ///< Payload and read buffers held at once.
};

/// Bytes received ahead of the transmission reader: request headers arrive many per read.
class ReceiveBuffer {
  public:
    /// Fills `out` from buffered bytes first, then from `t`; large remainders bypass the buffer.
    awaitable<error_code> read(Transport& t, std::span<std::byte> out);
    /// Fills `out` from buffered bytes if there are enough (no coroutine frame); false leaves
    /// everything buffered for read().
    bool take(std::span<std::byte> out);

  private:
    static constexpr size_t kSize = 64 * 1024;
    std::vector<std::byte> buf_;  ///< kSize bytes once the first request is read.
    size_t begin_ = 0, end_ = 0;
};

/// A reply waiting for the connection's writer.
struct QueuedReply {
    std::span<const asio::const_buffer> bufs;
    error_code ec;
    /// Resumes the request once written (emplaced: Asio 1.81's move-assignment recurses).
    std::optional<asio::any_completion_handler<void()>> written;
};

/// Runs one client from handshake to close.
class Connection : public std::enable_shared_from_this<Connection> {
  public:
    /// With `tls`, the client must upgrade with NBD_OPT_STARTTLS before anything else.
    Connection(asio::any_io_executor ex, std::unique_ptr<Transport> t,
               const ExportRegistry& exports, ConnectionLimits limits,
               std::shared_ptr<const TlsCredentials> tls = nullptr);
    /// Handshake, then transmission; returns when the connection is closed.
    awaitable<void> run();
    /// Transmission only, for a socket already negotiated (the kernel client's).
    awaitable<void> serve(Negotiated n);
    const std::string& peer() const { return transport_->peer(); }
    /// The export this connection serves, once its transmission phase has begun.
    const Export* export_in_use() const { return neg_ ? neg_->exp.get() : nullptr; }
    /// The server is stopping: no more requests are read, the ones in flight finish and their
    /// replies are sent (as the NBD spec asks), then the connection closes; a client that does
    /// not take its replies within `kShutdownGrace` is closed anyway. run() then returns.
    void shutdown();
    static constexpr std::chrono::seconds kShutdownGrace{5};
    /// The longest the end of the stream (TLS close_notify) may take before the close.
    static constexpr std::chrono::seconds kFinishLimit{5};

  private:
    friend class Negotiation;
    friend class RequestHandler;
    awaitable<std::optional<Negotiated>> negotiate();
    awaitable<error_code> send(std::span<const asio::const_buffer> bufs);
    awaitable<void> transmission(Negotiated n);
    /// Ends the transport cleanly (Transport::finish), within kFinishLimit.
    awaitable<void> finish_transport();
    awaitable<bool> read_request(nbd::Session& s, bool& stop);
    awaitable<void> handle(nbd::Request r, Buffer payload,
                           std::chrono::steady_clock::time_point received);
    void finish_request(uint64_t bytes);
    /// Logs "PEER: MESSAGE" within the connection's log limit (server/log_limit.hpp).
    template <class... Args>
    void log(spdlog::level::level_enum level, fmt::format_string<Args...> f, Args&&... args) {
        log_.log(level, peer(), f, std::forward<Args>(args)...);
    }

    asio::any_io_executor ex_;
    std::unique_ptr<Transport> transport_;
    const ExportRegistry& exports_;
    ConnectionLimits limits_;
    std::shared_ptr<const TlsCredentials> tls_;  ///< TLS required when set.
    bool tls_active_ = false;                    ///< STARTTLS done: transport_ is TLS.
    ConnectionLog log_;                          ///< Warnings this client causes, rate limited.
    ReceiveBuffer rx_;                           ///< Transmission-phase input.
    std::vector<QueuedReply*> replies_;          ///< Replies waiting for the writer, in order.
    std::vector<QueuedReply*> round_;            ///< The replies the writer is sending.
    std::vector<asio::const_buffer> gather_;     ///< Their buffers, in order.
    bool writing_ = false;                       ///< A send() is writing replies out.
    std::optional<Negotiated> neg_;
    size_t in_flight_ = 0;
    uint64_t in_flight_bytes_ = 0;
    Notifier request_done_;
    bool broken_ = false;   ///< A reply could not be written: stop reading.
    bool closing_ = false;  ///< shutdown() was called: reads failing now are expected.
    /// Closes the stream kShutdownGrace after shutdown().
    std::optional<asio::steady_timer> grace_;
};

}  // namespace qnbd::server
