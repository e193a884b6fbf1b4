// The reactor side of qnbd: listening sockets, connection accounting (-e, -t), signals, and
// stopping cleanly (the caller closes the image once run() returns).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <set>

#include "base/async.hpp"
#include "server/config.hpp"
#include "server/connection.hpp"
#include "server/export.hpp"
#include "server/metrics.hpp"

namespace qnbd::server {

/// A listening socket and the timer that spaces out its accepts after failures.
template <class Acceptor>
struct Listener {
    explicit Listener(asio::io_context& io) : acceptor(io), retry(io) {}
    Acceptor acceptor;
    asio::steady_timer retry;
};

/// Accepts clients for the exports of a registry until told to stop.
class Server {
  public:
    /// `metrics` (null without --metrics) counts the connections; with `tls` every network
    /// client must use TLS.
    Server(asio::io_context& io, const Config& cfg, ExportRegistry& exports,
           Metrics* metrics = nullptr, std::shared_ptr<const TlsCredentials> tls = nullptr);
    /// Binds the listening socket: the unix socket of -k, else TCP; errors name the address.
    Result<void> listen();
    /// Serves `fd`, an already listening TCP or unix socket (socket activation).
    Result<void> adopt(int fd);
    /// Where it listens, for status lines ("127.0.0.1:10809", "unix socket /run/x.sock").
    const std::string& where() const { return where_; }
    /// Clients accepted so far.
    size_t served() const { return served_; }
    /// Serves until stop(), or until the last client leaves without -t.
    awaitable<void> run();
    /// Stops accepting; with `drop_clients`, closes every connection too (their requests in
    /// flight finish first). run() then returns.
    void stop(bool drop_clients);
    /// Connections in the transmission phase of `e`.
    size_t connections_to(const Export* e) const;
    /// Waits up to `timeout` until no connection uses `e`; true if none does.
    awaitable<bool> wait_export_idle(const Export* e, std::chrono::seconds timeout);
    /// Shuts down every connection of `e` (their requests in flight finish first).
    void shutdown_export(const Export* e);
    /// Serves one already-connected, already-negotiated stream (the kernel client) until it ends.
    awaitable<void> run_attached(std::unique_ptr<Transport> t, Negotiated n);

  private:
    template <class Acceptor>
    awaitable<void> accept_loop(Listener<Acceptor>& l);
    awaitable<void> serve_client(std::unique_ptr<Transport> t);
    void client_left(const std::shared_ptr<Connection>& conn);
    ConnectionLimits limits() const;

    asio::io_context& io_;
    const Config& cfg_;
    ExportRegistry& exports_;
    Metrics* metrics_;
    std::shared_ptr<const TlsCredentials> tls_;
    std::optional<Listener<asio::ip::tcp::acceptor>> tcp_;
    std::optional<Listener<asio::local::stream_protocol::acceptor>> unix_;
    size_t clients_ = 0;
    size_t served_ = 0;
    std::string where_;
    bool stopping_ = false;
    size_t accept_loops_ = 0;  ///< Accept loops still running; run() waits for them.
    Notifier changed_;
    std::set<std::shared_ptr<Connection>> connections_;
};

}  // namespace qnbd::server
