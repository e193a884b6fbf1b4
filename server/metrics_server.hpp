// The --metrics endpoint: a tiny HTTP/1.0 server on a unix socket or a TCP address that
// answers GET /metrics with the registry's exposition text. Each scrape is one coroutine with a
// bounded request size and a deadline, and only a few run at once, so a scraper that stalls
// or floods holds nothing for long. A scraper is not an NBD client: it never keeps the server
// running.
#pragma once

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/result.hpp"
#include "server/metrics.hpp"

namespace qnbd::server {

/// Where --metrics listens: a unix socket path, or a TCP host and port.
struct MetricsAddress {
    std::string unix_path;  ///< Non-empty: a unix socket.
    std::string host;       ///< Otherwise: an IPv4 or IPv6 address.
    uint16_t port = 0;      ///< 0: any free port (the log says which).
    bool operator==(const MetricsAddress&) const = default;
};

/// Parses the --metrics argument:
///   unix:PATH, or anything containing a '/'          a unix socket
///   tcp:HOST:PORT, HOST:PORT, [V6]:PORT              TCP on that address
///   tcp:PORT, :PORT                                  TCP on 127.0.0.1
/// "localhost" stands for 127.0.0.1. Any other form is an error naming the forms.
Result<MetricsAddress> parse_metrics_address(std::string_view spec);

/// Limits of the scrape connections.
struct ScrapeLimits {
    size_t max_request_bytes = 8192;  ///< Request line and headers; more gets 400.
    unsigned timeout_ms = 5000;       ///< Whole exchange; then the connection is closed.
    size_t max_scrapes = 16;          ///< Served at once; further connections wait to be accepted.
};

/// What a scrape asked for.
enum class ScrapeTarget { Metrics, NotFound, BadRequest };

/// Classifies the request head (request line and headers): GET /metrics (any query string,
/// HTTP/1.x) is Metrics; another method or path is NotFound; a malformed line is BadRequest.
ScrapeTarget classify_scrape(std::string_view head);

/// The complete HTTP/1.0 response to a scrape of `target` (rendering `metrics` for Metrics).
std::string scrape_response(ScrapeTarget target, const Metrics& metrics);

/// The listening endpoint and its scrape connections. The registry must outlive it; stop() (or
/// destruction) closes every scrape at once, and none reads the registry afterwards.
class MetricsServer {
  public:
    MetricsServer(asio::io_context& io, const Metrics& metrics, ScrapeLimits limits = {});
    ~MetricsServer();
    MetricsServer(const MetricsServer&) = delete;
    MetricsServer& operator=(const MetricsServer&) = delete;
    /// Binds `a` and starts accepting scrapes; errors name the address. A stale unix socket
    /// at the path is replaced, and the path is removed again by stop().
    Result<void> listen(const MetricsAddress& a);
    /// Where it listens ("unix socket /run/m.sock", "127.0.0.1:9100").
    const std::string& where() const;
    /// Stops accepting and closes the scrapes in progress.
    void stop();

    struct State;  ///< Shared with the accept loop and the scrapes (metrics_server.cpp).

  private:
    std::shared_ptr<State> s_;
};

/// The endpoint of --metrics `spec`, listening; null when `spec` is empty.
Result<std::unique_ptr<MetricsServer>> start_metrics(asio::io_context& io, const Metrics& metrics,
                                                     const std::string& spec);

}  // namespace qnbd::server
