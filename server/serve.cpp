// From a configuration to a served image (see serve.hpp).
#include "server/serve.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/signal_set.hpp>
#include <cstring>
#include <filesystem>
#include <functional>

#include "disk/window_disk.hpp"
#include "image/open.hpp"
#include "qcow2/create.hpp"
#include "server/attach.hpp"
#include "server/control.hpp"
#include "server/kernel.hpp"
#include "server/live_exports.hpp"
#include "server/logging.hpp"
#include "server/metrics_server.hpp"
#include "server/server.hpp"
#include "server/spawn.hpp"
#include "server/systemd.hpp"
#include "server/tls.hpp"

namespace qnbd::server {
namespace {

using LocalSocket = asio::local::stream_protocol::socket;

/// SIGINT and SIGTERM for as long as the process serves and closes its image: the first one
/// runs the action of the current phase (stop the server, detach the device); while the
/// image is closed there is none, and the signal only waits for that to finish. The signals
/// never kill the process with an image half written back.
class ShutdownSignals {
  public:
    explicit ShutdownSignals(asio::io_context& io)
        : set_(io, SIGINT, SIGTERM), action_(std::make_shared<std::function<void(int)>>()) {
        set_.async_wait([action = action_](error_code ec, int sig) {
            if (ec) return;
            if (*action) return (*action)(sig);
            spdlog::info("signal {} received; finishing the shutdown", sig);
        });
    }
    /// What the next signal does (nothing when empty).
    void on_signal(std::function<void(int)> f) { *action_ = std::move(f); }

  private:
    asio::signal_set set_;
    std::shared_ptr<std::function<void(int)>> action_;  ///< Outlives us in a late handler.
};

/// Readiness: the pid file, the parent of --fork, the service manager.
bool announce_ready(Daemon& daemon, const Config& cfg, const std::string& status) {
    if (!daemon.ready(cfg.pid_file)) return false;
    if (daemon.detached()) log_to_syslog();
    notify_ready(status);
    return true;
}

/// How serving ended.
struct Served {
    int rc = 0;        ///< Exit status.
    bool any = false;  ///< A client (or the kernel) was served.
};

/// Serves the export on a listener until the server stops.
awaitable<Served> serve_network(asio::io_context& io, const Config& cfg, LiveExports& live,
                                Daemon& daemon, std::optional<int> listen_fd,
                                ShutdownSignals& signals, Metrics* metrics,
                                std::shared_ptr<const TlsCredentials> tls) {
    Server server(io, cfg, live.registry(), metrics, std::move(tls));
    auto r = listen_fd ? server.adopt(*listen_fd) : server.listen();
    if (!r) {
        spdlog::error("{}", r.error().message);
        co_return Served{1, false};
    }
    std::optional<ControlServer> control;
    bool control_done = true;
    Notifier control_ended;
    if (!cfg.control_path.empty()) {
        control.emplace(io, cfg, live, server);
        if (auto c = control->listen(cfg.control_path); !c) {
            spdlog::error("{}", c.error().message);
            co_return Served{1, false};
        }
        control_done = false;
        asio::co_spawn(io, control->run(), [&](std::exception_ptr) {
            control_done = true;
            control_ended.notify_all();
        });
    }
    if (!announce_ready(daemon, cfg, "serving " + server.where())) co_return Served{1, false};
    signals.on_signal([&server](int sig) {
        spdlog::info("signal {} received; shutting down", sig);
        server.stop(true);
    });
    co_await server.run();
    if (control) control->stop();
    while (!control_done) co_await control_ended.wait();
    signals.on_signal(nullptr);
    notify_stopping();
    co_return Served{0, server.served() > 0};
}

/// The kernel's connection: served until it ends, then `ended` is set and `done` notified.
awaitable<void> serve_device_connection(Server& server, std::unique_ptr<Transport> t, Negotiated n,
                                        bool& ended, Notifier& done) {
    struct End {
        bool& ended;
        Notifier& done;
        ~End() {
            ended = true;
            done.notify_all();
        }
    } end{ended, done};
    co_await server.run_attached(std::move(t), std::move(n));
}

/// Attaches the export to the kernel device of -c and serves it until it is detached.
awaitable<Served> serve_kernel(asio::io_context& io, const Config& cfg, ExportRegistry& exports,
                               const std::shared_ptr<Export>& exp, Daemon& daemon,
                               ShutdownSignals& signals, Metrics* metrics) {
    const uint16_t tf = nbd::transmission_flags(exp->features, false);
    auto att = attach_kernel(cfg, exp->disk->size(), tf);
    if (!att) {
        spdlog::error("{}", att.error().message);
        co_return Served{1, false};
    }
    KernelDevice& device = *att->device;
    LocalSocket sock(io);
    sock.assign(asio::local::stream_protocol(), att->server_fd);
    Server server(io, cfg, exports, metrics);
    bool ended = false;
    Notifier done;
    Negotiated n{exp, false, {}, tf};
    std::unique_ptr<Transport> t =
        std::make_unique<SocketTransport<LocalSocket>>(std::move(sock), device.name());
    asio::co_spawn(io, serve_device_connection(server, std::move(t), std::move(n), ended, done),
                   log_if_thrown(device.name()));
    signals.on_signal([&device](int sig) {
        spdlog::info("signal {} received; detaching {}", sig, device.name());
        device.disconnect();
    });
    int rc = 0;
    if (auto s = co_await device.started(); !s) {
        spdlog::error("{}", s.error().message);
        device.disconnect();
        rc = 1;
    } else if (print_device(cfg, device);
               !announce_ready(daemon, cfg, "attached to " + device.name())) {
        device.disconnect();
        rc = 1;
    }
    while (!ended) co_await done.wait();
    signals.on_signal(nullptr);
    notify_stopping();
    co_return Served{rc, true};
}

}  // namespace

awaitable<int> serve(asio::io_context& io, const Config& cfg, Daemon& daemon,
                     std::optional<int> listen_fd) {
    Metrics metrics(unix_time_now());
    auto endpoint = start_metrics(io, metrics, cfg.metrics);  // stopped when serve() returns
    if (!endpoint) {
        spdlog::error("{}", endpoint.error().message);
        co_return 1;
    }
    Metrics* const m = *endpoint ? &metrics : nullptr;
    std::shared_ptr<const TlsCredentials> tls;
    if (cfg.tls) {
        auto t = TlsCredentials::load(*cfg.tls);
        if (!t) {
            spdlog::error("{}", t.error().message);
            co_return 1;
        }
        tls = std::move(*t);
    }
    LiveExports live(io, m);
    for (const Config& ec : export_configs(cfg)) {
        if (auto r = co_await live.add(ec); !r) {
            spdlog::error("{}", r.error().message);
            co_await live.close_all(false);
            co_return 1;
        }
    }
    ShutdownSignals signals(io);
    ExportRegistry& exports = live.registry();
    Served s = cfg.connect_device.empty()
                   ? co_await serve_network(io, cfg, live, daemon, listen_fd, signals, m, tls)
                   : co_await serve_kernel(io, cfg, exports, exports.find(cfg.export_name), daemon,
                                           signals, m);
    if (!co_await live.close_all(s.any)) s.rc = 1;
    if (!cfg.pid_file.empty()) ::unlink(cfg.pid_file.c_str());
    co_return s.rc;
}

}  // namespace qnbd::server
