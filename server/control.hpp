// The control socket (--control PATH): a unix socket only its owner may use, speaking one JSON
// object per line each way, in the spirit of qemu-storage-daemon's QMP commands:
//   {"execute": "block-export-add", "arguments": {"name": N, "file": F, "format": "raw",
//        "read-only": true, "description": D, "allocation-depth": true}}
//   {"execute": "block-export-del", "arguments": {"name": N, "timeout": SECONDS}}
//   {"execute": "query-block-exports"}
//   {"execute": "query-stats"}
// Each gets {"return": ...} or {"error": {"class": "GenericError", "desc": WHY}}; a request
// that fails changes nothing. Commands run one at a time, in arrival order.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <memory>
#include <set>
#include <string>

#include "base/async.hpp"
#include "base/result.hpp"
#include "server/config.hpp"

namespace boost::json {
class object;
class value;
}  // namespace boost::json

namespace qnbd::server {

class LiveExports;
class Server;

/// Serves the control socket next to a Server.
class ControlServer {
  public:
    ControlServer(asio::io_context& io, const Config& base, LiveExports& live, Server& server);
    /// Binds PATH (replacing a stale socket) with mode 0600.
    Result<void> listen(const std::string& path);
    /// Accepts control clients until stop().
    awaitable<void> run();
    /// Stops accepting and closes every control connection; run() then returns once the
    /// command under way (if any) has finished.
    void stop();

  private:
    using Socket = asio::local::stream_protocol::socket;
    awaitable<void> session(std::shared_ptr<Socket> s);
    awaitable<boost::json::value> execute(const boost::json::object& req);
    awaitable<boost::json::value> add(const boost::json::object& args);
    awaitable<boost::json::value> del(const boost::json::object& args);
    boost::json::value query_exports() const;
    boost::json::value query_stats() const;

    asio::io_context& io_;
    const Config& base_;
    LiveExports& live_;
    Server& server_;
    asio::local::stream_protocol::acceptor acceptor_;
    std::string path_;
    std::set<std::shared_ptr<Socket>> sessions_;
    size_t running_ = 0;  ///< Accept loop and sessions still running.
    bool busy_ = false;   ///< A command is executing.
    bool stopped_ = false;
    Notifier changed_;
};

}  // namespace qnbd::server
