#include "server/cli.hpp"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>

#ifndef QNBD_VERSION
#define QNBD_VERSION "0.0.0"
#endif

namespace qnbd::server {
namespace {

/// qemu-nbd options qnbd does not implement: refused by name rather than ignored.
const char* const kRefused[][2] = {
    {"-B,--bitmap", "exporting persistent dirty bitmaps"},
    {"-L,--list", "listing another server's exports (use nbdinfo --list)"},
    {"--object", "--object definitions"},
    {"--tls-creds", "TLS"},
    {"--tls-authz", "TLS authorization"},
    {"--tls-hostname", "TLS"},
    {"-T,--trace", "qemu trace events (use -v)"},
    {"--selinux-label", "SELinux socket labels"},
    {"-l,--load-snapshot", "exporting internal snapshots"},
    {"--image-opts", "--image-opts image specifications"},
};

void add_refused_options(CLI::App& app, std::string& refused) {
    for (auto& r : kRefused) {
        std::string name = r[0], what = r[1];
        auto* opt =
            app.add_option_function<std::string>(name, [&refused, name, what](const std::string&) {
                refused = "option " + name + " (" + what + ") is not supported by qnbd";
            });
        opt->expected(0, 1)->group("");  // Hidden: refused when used.
    }
}

const std::map<std::string, CacheMode> kCacheModes = {{"none", CacheMode::None},
                                                      {"writeback", CacheMode::Writeback},
                                                      {"writethrough", CacheMode::Writethrough},
                                                      {"directsync", CacheMode::Directsync},
                                                      {"unsafe", CacheMode::Unsafe}};
const std::map<std::string, DiscardMode> kDiscardModes = {{"ignore", DiscardMode::Ignore},
                                                          {"off", DiscardMode::Ignore},
                                                          {"unmap", DiscardMode::Unmap},
                                                          {"on", DiscardMode::Unmap}};
const std::map<std::string, DetectZeroes> kDetectZeroes = {
    {"off", DetectZeroes::Off}, {"on", DetectZeroes::On}, {"unmap", DetectZeroes::Unmap}};

void add_server_options(CLI::App& app, Config& c, std::string& cache, std::string& discard,
                        std::string& detect, std::string& cache_size) {
    app.add_option("-p,--port", c.port, "TCP port to listen on (default 10809)");
    app.add_option("-b,--bind", c.bind,
                   "address to bind to (default 127.0.0.1; 0.0.0.0 or :: for all)");
    app.add_option("-k,--socket", c.socket_path, "listen on this unix socket instead of TCP");
    app.add_option("-x,--export-name", c.export_name, "export name (default empty)");
    app.add_option("-D,--description", c.description, "export description");
    app.add_flag("-r,--read-only", c.read_only, "export read-only");
    app.add_flag("-U,--force-share", c.force_share,
                 "with -r: serve an image other programs are writing (takes no lock on it)");
    app.add_option("-f,--format", c.format, "image format: qcow2 or raw (default: qcow2, required)")
        ->check(CLI::IsMember({"qcow2", "raw"}));
    app.add_flag("-t,--persistent", c.persistent, "keep serving after the last client leaves");
    app.add_option("-e,--shared", c.shared,
                   "number of simultaneous clients (default 1, 0 = unlimited)");
    app.add_option("--cache", cache, "none|writeback|writethrough|directsync|unsafe")
        ->check(CLI::IsMember({"none", "writeback", "writethrough", "directsync", "unsafe"}));
    app.add_flag_callback(
        "-n,--nocache", [&cache] { cache = "none"; }, "same as --cache=none");
    app.add_option("--aio", c.aio, "threads|native|io_uring (qnbd always uses io_uring)")
        ->check(CLI::IsMember({"threads", "native", "io_uring"}));
    app.add_option("--discard", discard, "ignore|unmap")
        ->check(CLI::IsMember({"ignore", "unmap", "on", "off"}));
    app.add_option("--detect-zeroes", detect, "off|on|unmap")
        ->check(CLI::IsMember({"off", "on", "unmap"}));
    app.add_flag("-A,--allocation-depth", c.allocation_depth,
                 "expose the qemu:allocation-depth context");
    app.add_option("-o,--offset", c.offset, "export the image from this byte offset on");
    app.add_option("-c,--connect", c.connect_device, "attach the image to this kernel NBD device");
    app.add_flag("-s,--snapshot", c.snapshot,
                 "send writes to a temporary overlay, leaving IMAGE untouched");
    app.add_flag("-v,--verbose", c.verbose, "log every request");
    app.add_option("--pid-file", c.pid_file, "write the server's process ID to this file");
    app.add_flag("--fork", c.fork, "go to the background once the server is listening");
    app.add_option("--l2-cache-size", cache_size,
                   "metadata cache size (e.g. 64M; default covers 1 TiB)");
    app.add_option("--handshake-timeout", c.handshake_timeout_s,
                   "seconds a client may take to negotiate (0: no limit)");
}

Command finish_config(Config c, const std::string& cache, const std::string& discard,
                      const std::string& detect, const std::string& cache_size) {
    c.cache = kCacheModes.at(cache);
    c.discard = kDiscardModes.at(discard);
    c.detect_zeroes = kDetectZeroes.at(detect);
    if (!cache_size.empty()) {
        auto s = qcow2::parse_size(cache_size);
        if (!s) {
            std::fprintf(stderr, "qnbd: --l2-cache-size: %s\n", s.error().message.c_str());
            return ExitNow{1};
        }
        c.metadata_cache_bytes = *s;
    }
    if (c.image.empty()) {
        std::fprintf(stderr, "qnbd: an image file is required (see --help)\n");
        return ExitNow{1};
    }
    return c;
}

Command parse_create(int argc, char** argv) {
    CLI::App app{"qnbd create: make a new qcow2 image", "qnbd create"};
    CreateCommand cmd;
    std::string opts, size, fmt = "qcow2", backing, backing_fmt;
    app.add_option("-f", fmt, "image format (qcow2)")->check(CLI::IsMember({"qcow2"}));
    app.add_option(
        "-o", opts,
        "options: cluster_size, refcount_bits, compat, lazy_refcounts, "
        "extended_l2, compression_type, backing_file, backing_fmt, data_file, data_file_raw");
    app.add_option("-b", backing, "backing file");
    app.add_option("-F", backing_fmt, "backing file format (qcow2 or raw)");
    app.add_option("image", cmd.image, "image to create")->required();
    app.add_option("size", size, "virtual size (e.g. 10G)")->required();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return ExitNow{app.exit(e)};
    }
    auto s = qcow2::parse_size(size);
    if (!s) {
        std::fprintf(stderr, "qnbd create: %s\n", s.error().message.c_str());
        return ExitNow{1};
    }
    cmd.options.size = *s;
    if (auto r = qcow2::parse_create_options(opts, cmd.options); !r) {
        std::fprintf(stderr, "qnbd create: %s\n", r.error().message.c_str());
        return ExitNow{1};
    }
    if (!backing.empty()) cmd.options.backing_file = backing;
    if (!backing_fmt.empty()) cmd.options.backing_format = backing_fmt;
    return cmd;
}

}  // namespace

OpenOptions open_options(const Config& c) {
    OpenOptions o;
    o.read_only = c.read_only;
    o.force_share = c.force_share;
    o.format = c.format;
    o.direct = c.cache == CacheMode::None || c.cache == CacheMode::Directsync;
    o.writethrough = c.cache == CacheMode::Writethrough || c.cache == CacheMode::Directsync;
    o.metadata_cache_bytes = c.metadata_cache_bytes;
    return o;
}

Command parse_command_line(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "create") return parse_create(argc - 1, argv + 1);
    CLI::App app{"qnbd: serve a qcow2 image over NBD (a qemu-nbd replacement)", "qnbd"};
    Config c;
    std::string cache = "writeback", discard = "ignore", detect = "off", cache_size, refused;
    bool disconnect = false, version = false;
    add_server_options(app, c, cache, discard, detect, cache_size);
    app.add_flag("-d,--disconnect", disconnect,
                 "detach the kernel NBD device given as the argument");
    app.add_flag("-V,--version", version, "print the version and exit");
    app.add_option("image", c.image, "image file to serve (or device with -d)");
    add_refused_options(app, refused);
    app.footer("Also: qnbd create [-o options] IMAGE SIZE   creates a qcow2 image.");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return ExitNow{app.exit(e)};
    }
    if (version) {
        std::printf("qnbd %s\n", QNBD_VERSION);
        return ExitNow{0};
    }
    if (!refused.empty()) {
        std::fprintf(stderr, "qnbd: %s\n", refused.c_str());
        return ExitNow{1};
    }
    if (disconnect) return DisconnectCommand{c.image};
    return finish_config(std::move(c), cache, discard, detect, cache_size);
}

}  // namespace qnbd::server
