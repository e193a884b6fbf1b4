// The exports of a running server and the images behind them: opened at start from the
// command line, added and removed at run time through the control socket, all written back
// and closed at the end.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "base/result.hpp"
#include "server/config.hpp"
#include "server/export.hpp"

namespace qnbd::server {

class Metrics;
class Server;

/// Opens the image of one export's configuration (-s overlay, -o window checks included).
awaitable<Result<std::shared_ptr<Disk>>> open_configured(asio::any_io_executor ex,
                                                         const Config& cfg);

/// Every export the process serves, with its image.
class LiveExports {
  public:
    /// `metrics` (null without --metrics) gets a counter set per export.
    LiveExports(asio::io_context& io, Metrics* metrics) : io_(io), metrics_(metrics) {}

    ExportRegistry& registry() { return registry_; }
    /// Opens the image of `cfg` (one export's configuration) and serves it under
    /// cfg.export_name; fails if the name is taken or the image does not open.
    awaitable<Result<void>> add(const Config& cfg);
    /// Stops serving `name`: new connections no longer find it; its connections get `drain`
    /// to leave on their own, then are shut down (requests in flight finish); then its image
    /// is written back, closed and unlocked.
    awaitable<Result<void>> remove(const std::string& name, Server* server,
                                   std::chrono::seconds drain);
    /// Writes back and closes every image; false (logged) if one failed. With `report`,
    /// logs each image's flush and allocation counts.
    awaitable<bool> close_all(bool report);

    /// One served image.
    struct Entry {
        std::string image;
        std::shared_ptr<Export> exp;
    };
    const std::vector<Entry>& entries() const { return entries_; }

  private:
    asio::io_context& io_;
    Metrics* metrics_;
    ExportRegistry registry_;
    std::vector<Entry> entries_;
};

}  // namespace qnbd::server
