// Serving the image of a configuration: over the network (listening, or on a socket-activated
// listener) or attached to a kernel NBD device, from opening the image to closing it.
#pragma once

#include <boost/asio/io_context.hpp>
#include <optional>

#include "server/config.hpp"
#include "server/daemon.hpp"

namespace qnbd::server {

/// Opens the image, serves it until the server stops (a signal, the last client leaving
/// without -t, the device being detached) and closes it. `listen_fd` is a socket-activated
/// listener to serve instead of binding one. Reports readiness through `daemon`. Returns the
/// process exit status.
boost::asio::awaitable<int> serve(boost::asio::io_context& io, const Config& cfg, Daemon& daemon,
                                  std::optional<int> listen_fd);

}  // namespace qnbd::server
