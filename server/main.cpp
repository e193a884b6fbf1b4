// qnbd: serve a qcow2 (or raw) image over NBD; `qnbd create` makes new qcow2 images; `qnbd -d`
// detaches a kernel NBD device.
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdio>
#include <optional>

#include "qcow2/create.hpp"
#include "server/allocator.hpp"
#include "server/attach.hpp"
#include "server/cli.hpp"
#include "server/daemon.hpp"
#include "server/logging.hpp"
#include "server/serve.hpp"
#include "server/spawn.hpp"
#include "server/systemd.hpp"

namespace qnbd::server {
namespace {

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

int run_disconnect(const DisconnectCommand& d) {
    if (auto r = detach_kernel(d.device); !r) {
        std::fprintf(stderr, "qnbd: %s\n", r.error().message.c_str());
        return 1;
    }
    std::printf("%s disconnected\n", d.device.c_str());
    return 0;
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

/// The socket-activated listener, checked against what the command line asks for.
Result<std::optional<int>> activated_listener(const Config& cfg) {
    auto fd = activation_socket();
    if (!fd || !*fd) return fd;
    if (cfg.listen_given)
        return Error{EINVAL, "-p, -b and -k cannot be used with socket activation (LISTEN_FDS)"};
    if (!cfg.connect_device.empty())
        return Error{EINVAL, "-c cannot be used with socket activation (LISTEN_FDS)"};
    return fd;
}

int run_server(const Config& cfg) {
    setup_logging(cfg.verbose);
    // Before forking: LISTEN_PID names this process.
    auto listener = activated_listener(cfg);
    if (!listener) {
        spdlog::error("{}", listener.error().message);
        return 1;
    }
    const bool background =
        cfg.fork || (!cfg.connect_device.empty() && !cfg.verbose && !cfg.foreground);
    std::optional<Daemon> daemon;
    if (background) {
        auto d = Daemon::fork();
        if (!d) {
            spdlog::error("{}", d.error().message);
            return 1;
        }
        daemon.emplace(std::move(*d));
    } else {
        daemon.emplace();
    }
    asio::io_context io(1);
    int rc = 1;
    bool serving = true;
    asio::steady_timer trim(io);
    asio::co_spawn(io, serve(io, cfg, *daemon, *listener), [&](std::exception_ptr e, int r) {
        rc = e ? 1 : r;
        if (e) spdlog::critical("internal error: {}; exiting", exception_message(e));
        serving = false;
        trim.cancel();
    });
    if (allocator_keeps_free_memory())
        asio::co_spawn(io, return_free_memory_while(trim, serving),
                       log_if_thrown("returning free memory"));
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
    if (auto* d = std::get_if<DisconnectCommand>(&cmd)) return run_disconnect(*d);
    return run_server(std::get<Config>(cmd));
}
