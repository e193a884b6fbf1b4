// qnbd: serve a qcow2 (or raw) image over NBD; `qnbd create` makes new qcow2 images.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "disk/window_disk.hpp"
#include "image/open.hpp"
#include "io/image_lock.hpp"
#include "qcow2/create.hpp"
#include "server/cli.hpp"
#include "server/kernel.hpp"
#include "server/server.hpp"
#include "server/spawn.hpp"

namespace qnbd::server {
namespace {

void setup_logging(bool verbose) {
    auto logger = spdlog::stderr_color_mt("qnbd");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e qnbd[%P] %l: %v");
    spdlog::set_level(verbose ? spdlog::level::debug : spdlog::level::info);
    io::set_image_lock_warning_handler([](const std::string& m) { spdlog::warn("{}", m); });
}

int run_create(const CreateCommand& c) {
    if (auto r = qcow2::create_image(c.image, c.options); !r) {
        std::fprintf(stderr, "qnbd create: %s\n", r.error().message.c_str());
        return 1;
    }
    std::printf("Formatting '%s', fmt=qcow2 size=%llu cluster_size=%llu\n", c.image.c_str(),
                static_cast<unsigned long long>(c.options.size),
                static_cast<unsigned long long>(c.options.cluster_size));
    return 0;
}

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

/// Attaches the export to the kernel device named by -c and serves it until detached.
awaitable<Result<void>> serve_kernel(asio::io_context& io, Server& server,
                                     std::shared_ptr<Export> exp, const Config& cfg) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        co_return Error{errno, std::string("socketpair: ") + std::strerror(errno)};
    const uint16_t tf = nbd::transmission_flags(exp->features, false);
    asio::local::stream_protocol::socket sock(io);
    sock.assign(asio::local::stream_protocol(), sv[0]);
    auto dev = KernelDevice::attach(cfg.connect_device, sv[1], exp->disk->size(), tf, [] {});
    if (!dev) {
        ::close(sv[1]);
        co_return dev.error();
    }
    auto t = std::make_unique<SocketTransport<asio::local::stream_protocol::socket>>(
        std::move(sock), cfg.connect_device);
    co_await server.run_attached(std::move(t), Negotiated{exp, false, {}, tf});
    co_return ok();
}

awaitable<int> serve(asio::io_context& io, const Config& cfg, int ready_fd) {
    auto disk = co_await open_configured(io.get_executor(), cfg);
    if (!disk) {
        spdlog::error("{}", disk.error().message);
        co_return 1;
    }
    ExportRegistry exports;
    auto exp = make_export(cfg, *disk);
    exports.add(exp);
    Server server(io, cfg, exports);
    int rc = 0;
    if (!cfg.connect_device.empty()) {
        if (auto r = co_await serve_kernel(io, server, exp, cfg); !r) {
            spdlog::error("{}", r.error().message);
            rc = 1;
        }
    } else if (auto r = server.listen(); !r) {
        spdlog::error("{}", r.error().message);
        rc = 1;
    } else {
        if (!cfg.pid_file.empty()) std::ofstream(cfg.pid_file) << ::getpid() << "\n";
        if (ready_fd >= 0) {
            (void)!::write(ready_fd, "R", 1);
            ::close(ready_fd);
        }
        co_await server.run();
    }
    if (auto r = co_await (*disk)->close(); !r) {
        spdlog::error("{}: closing the image failed: {}", cfg.image, r.error().message);
        rc = 1;
    }
    const DiskStats st = (*disk)->stats();
    spdlog::info(
        "{}: {} flush requests, {} barriers, {} fdatasyncs, {} clusters allocated, {} metadata "
        "writes",
        cfg.image, st.flush_requests, st.barriers, st.syncs, st.clusters_allocated,
        st.metadata_writes);
    if (!cfg.pid_file.empty()) ::unlink(cfg.pid_file.c_str());
    co_return rc;
}

/// Runs the reactor until it has no more work. An exception escaping a handler (the io_uring
/// refusing a submission, say) is logged and the reactor goes on: the operations it concerned
/// stay queued and are submitted again on the next pass.
void run_reactor(asio::io_context& io) {
    for (;;) {
        try {
            io.run();
            return;
        } catch (const std::exception& e) {
            spdlog::critical("internal error in the reactor: {}", e.what());
        }
    }
}

/// --fork: the parent waits until the child listens, then exits with its status.
int fork_server(int& ready_fd) {
    int p[2];
    if (::pipe(p) < 0) return -1;
    pid_t pid = ::fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        ::close(p[0]);
        ::setsid();
        ready_fd = p[1];
        return 0;
    }
    ::close(p[1]);
    char c;
    ssize_t n = ::read(p[0], &c, 1);
    if (n == 1) std::_Exit(0);
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::_Exit(1);
}

int run_server(const Config& cfg) {
    setup_logging(cfg.verbose);
    int ready_fd = -1;
    if (cfg.fork && fork_server(ready_fd) < 0) {
        spdlog::error("--fork: {}", std::strerror(errno));
        return 1;
    }
    asio::io_context io(1);
    int rc = 1;
    asio::co_spawn(io, serve(io, cfg, ready_fd), [&rc](std::exception_ptr e, int r) {
        rc = e ? 1 : r;
        if (e) spdlog::critical("internal error: {}; exiting", exception_message(e));
    });
    run_reactor(io);
    return rc;
}

}  // namespace
}  // namespace qnbd::server

int main(int argc, char** argv) {
    using namespace qnbd::server;
    Command cmd = parse_command_line(argc, argv);
    if (auto* e = std::get_if<ExitNow>(&cmd)) return e->code;
    if (auto* c = std::get_if<CreateCommand>(&cmd)) return run_create(*c);
    if (auto* d = std::get_if<DisconnectCommand>(&cmd)) {
        if (auto r = kernel_disconnect(d->device); !r) {
            std::fprintf(stderr, "qnbd: %s\n", r.error().message.c_str());
            return 1;
        }
        std::printf("%s disconnected\n", d->device.c_str());
        return 0;
    }
    return run_server(std::get<Config>(cmd));
}
