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
#include "server/kernel.hpp"
#include "server/logging.hpp"
#include "server/metrics_server.hpp"
#include "server/server.hpp"
#include "server/spawn.hpp"
#include "server/systemd.hpp"
#include "server/tls.hpp"

namespace qnbd::server {
namespace {

using LocalSocket = asio::local::stream_protocol::socket;

/// -s: a temporary overlay whose backing file is the image; it is unlinked once open.
Result<std::string> make_snapshot_overlay(const Config& cfg, uint64_t size) {
    namespace fs = std::filesystem;
    std::string dir = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/var/tmp";
    std::string path = dir + "/qnbd-snapshot-XXXXXX";
    int fd = ::mkstemp(path.data());
    if (fd < 0) return Error{errno, "cannot create a temporary overlay in " + dir};
    ::close(fd);
    qcow2::CreateOptions o;
    o.size = size;
    o.backing_file = fs::absolute(cfg.image).string();
    o.backing_format = cfg.format.empty() ? "qcow2" : cfg.format;
    if (auto r = qcow2::create_image(path, o); !r) return r.error();
    return path;
}

/// The export described by the configuration, around an open disk.
std::shared_ptr<Export> make_export(const Config& cfg, std::shared_ptr<Disk> disk) {
    auto e = std::make_shared<Export>();
    e->name = cfg.export_name;
    e->description = cfg.description;
    e->disk = make_window_disk(std::move(disk), cfg.offset);
    e->discard = cfg.discard;
    e->detect_zeroes = cfg.detect_zeroes;
    e->unsafe_flush = cfg.cache == CacheMode::Unsafe;
    e->features.read_only = e->disk->read_only();
    e->features.multi_conn = cfg.shared != 1;
    e->contexts = nbd::MetaContextSet{nbd::MetaContext::base_allocation};
    if (cfg.allocation_depth) e->contexts.add(nbd::MetaContext::qemu_allocation_depth);
    return e;
}

awaitable<Result<std::shared_ptr<Disk>>> open_configured(asio::any_io_executor ex,
                                                         const Config& cfg) {
    std::string path = cfg.image;
    OpenOptions opts = open_options(cfg);
    std::string overlay;
    if (cfg.snapshot) {
        OpenOptions ro = opts;
        ro.read_only = true;
        auto base = co_await open_disk(ex, path, ro);
        if (!base) co_return base.error();
        auto size = (*base)->size();
        (void)co_await (*base)->close();
        auto o = make_snapshot_overlay(cfg, size);
        if (!o) co_return o.error();
        overlay = *o;
        path = overlay;
        opts.format = "qcow2";
        opts.read_only = false;
    }
    auto d = co_await open_disk(ex, path, opts);
    if (!overlay.empty()) ::unlink(overlay.c_str());
    if (!d) co_return d.error();
    if (cfg.offset > (*d)->size()) co_return Error{EINVAL, "offset is beyond the end of the image"};
    co_return std::shared_ptr<Disk>(std::move(*d));
}

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
awaitable<Served> serve_network(asio::io_context& io, const Config& cfg, ExportRegistry& exports,
                                Daemon& daemon, std::optional<int> listen_fd,
                                ShutdownSignals& signals, Metrics* metrics,
                                std::shared_ptr<const TlsCredentials> tls) {
    Server server(io, cfg, exports, metrics, std::move(tls));
    auto r = listen_fd ? server.adopt(*listen_fd) : server.listen();
    if (!r) {
        spdlog::error("{}", r.error().message);
        co_return Served{1, false};
    }
    if (!announce_ready(daemon, cfg, "serving " + server.where())) co_return Served{1, false};
    signals.on_signal([&server](int sig) {
        spdlog::info("signal {} received; shutting down", sig);
        server.stop(true);
    });
    co_await server.run();
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

/// An image opened for an export, closed when serving ends.
struct Opened {
    std::string image;
    std::shared_ptr<Disk> disk;
};

/// Opens every export's image and adds the exports to `exports`; false (logged) if one fails.
awaitable<bool> open_exports(asio::io_context& io, const Config& cfg, ExportRegistry& exports,
                             Metrics* m, std::vector<Opened>& opened) {
    for (const Config& ec : export_configs(cfg)) {
        auto disk = co_await open_configured(io.get_executor(), ec);
        if (!disk) {
            spdlog::error("{}", disk.error().message);
            co_return false;
        }
        opened.push_back(Opened{ec.image, *disk});
        auto exp = make_export(ec, *disk);
        if (m) exp->metrics = &m->add_export(exp->name, exp->disk);
        exports.add(std::move(exp));
    }
    co_return true;
}

/// Writes back and closes every image; false (logged) if one failed. With `report`, logs
/// each image's flush and allocation counts.
awaitable<bool> close_exports(std::vector<Opened>& opened, bool report) {
    bool ok = true;
    for (Opened& o : opened) {
        if (auto r = co_await o.disk->close(); !r) {
            spdlog::error("{}: closing the image failed: {}", o.image, r.error().message);
            ok = false;
        }
        const DiskStats st = o.disk->stats();
        if (report)
            spdlog::info(
                "{}: {} flush requests, {} barriers, {} fdatasyncs, {} clusters allocated, {} "
                "metadata writes",
                o.image, st.flush_requests, st.barriers, st.syncs, st.clusters_allocated,
                st.metadata_writes);
    }
    co_return ok;
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
    ExportRegistry exports;
    std::vector<Opened> opened;
    if (!co_await open_exports(io, cfg, exports, m, opened)) {
        co_await close_exports(opened, false);
        co_return 1;
    }
    ShutdownSignals signals(io);
    Served s = cfg.connect_device.empty()
                   ? co_await serve_network(io, cfg, exports, daemon, listen_fd, signals, m, tls)
                   : co_await serve_kernel(io, cfg, exports, exports.find(cfg.export_name), daemon,
                                           signals, m);
    if (!co_await close_exports(opened, s.any)) s.rc = 1;
    if (!cfg.pid_file.empty()) ::unlink(cfg.pid_file.c_str());
    co_return s.rc;
}

}  // namespace qnbd::server
