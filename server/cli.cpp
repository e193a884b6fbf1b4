#include "server/cli.hpp"

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <vector>

#include "server/export_options.hpp"
#include "server/metrics_server.hpp"
#include "server/tls_config.hpp"

#ifndef QNBD_VERSION
#define QNBD_VERSION "0.0.0"
#endif

namespace qnbd::server {
namespace {

/// qemu-nbd options qnbd does not implement: refused by name rather than ignored, even next to
/// --help or --version (a capability probe must fail).
const char* const kRefused[][2] = {
    {"-L,--list", "listing another server's exports (use nbdinfo --list)"},
    {"--tls-hostname", "TLS server names (a client option)"},
    {"-T,--trace", "qemu trace events (use -v)"},
    {"--selinux-label", "SELinux socket labels"},
    {"-l,--load-snapshot", "exporting internal snapshots"},
    {"--image-opts", "--image-opts image specifications"},
};

/// True when command-line word `arg` spells option `name` ("-l", "--list", "--list=x",
/// "-lx"; a short option may also end a cluster of flags like "-rl").
bool spells(const std::string& arg, const std::string& name) {
    if (name.size() > 2) return arg == name || arg.rfind(name + "=", 0) == 0;
    if (arg.size() < 2 || arg[0] != '-' || arg[1] == '-') return false;
    return arg.find(name[1], 1) != std::string::npos;
}

/// The first refused option on the command line, as a message; empty if none.
std::string refused_option(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--") break;
        for (auto& r : kRefused) {
            std::string names = r[0];
            for (size_t at = 0; at != std::string::npos;) {
                const size_t comma = names.find(',', at);
                const std::string name =
                    names.substr(at, comma == std::string::npos ? comma : comma - at);
                at = comma == std::string::npos ? comma : comma + 1;
                if (spells(arg, name))
                    return "option " + std::string(r[0]) + " (" + r[1] +
                           ") is not supported by qnbd";
            }
        }
    }
    return {};
}

/// The refused options, hidden from --help so that CLI11 does not call them unknown.
void add_refused_options(CLI::App& app) {
    for (auto& r : kRefused) app.add_option(r[0])->expected(0, 1)->group("");
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

/// Option values as typed, converted by finish_config with messages of qnbd's own.
struct RawOptions {
    std::string port = "10809", shared = "1", offset = "0", handshake = "10", reconnect = "0";
    std::string cache, discard = "ignore", detect = "off", cache_size;  ///< cache: "" if not given
    std::vector<std::string> objects;                                   ///< --object, as typed
    std::vector<std::string> exports;                                   ///< --export, as typed
    std::string tls_creds, tls_authz;
    bool disconnect = false, version = false;
};

/// Where the server listens and who may connect.
void add_listen_options(CLI::App& app, Config& c, RawOptions& raw) {
    app.add_option("-p,--port", raw.port, "TCP port to listen on (default 10809)");
    app.add_option("-b,--bind", c.bind,
                   "address to bind to (default 127.0.0.1; 0.0.0.0 or :: for all)");
    app.add_option("-k,--socket", c.socket_path, "listen on this unix socket instead of TCP");
    app.add_option("-e,--shared", raw.shared,
                   "number of simultaneous clients (default 1, 0 = unlimited)");
    app.add_flag("-t,--persistent", c.persistent, "keep serving after the last client leaves");
    app.add_option("--handshake-timeout", raw.handshake,
                   "seconds a client may take to negotiate (default 10, 0: no limit)");
    app.add_option("-x,--export-name", c.export_name, "export name (default empty)");
    app.add_option("-D,--description", c.description, "export description");
    app.add_option("--object", raw.objects,
                   "define tls-creds-x509,id=ID,endpoint=server,dir=DIR[,verify-peer=on|off], "
                   "tls-creds-psk,id=ID,endpoint=server,dir=DIR or "
                   "authz-simple,id=ID,identity=NAME (qemu's spelling; repeatable)")
        ->type_name("DEF")
        ->allow_extra_args(false);
    app.add_option("--tls-creds", raw.tls_creds,
                   "require TLS with the credentials of --object ID (see man qnbd)")
        ->type_name("ID");
    app.add_option("--tls-authz", raw.tls_authz,
                   "with --tls-creds: let in only the client identity of authz-simple ID")
        ->type_name("ID");
    app.add_option("--control", c.control_path,
                   "a unix socket (owner-only) taking JSON commands: block-export-add, "
                   "block-export-del, query-block-exports, query-stats (see man qnbd)")
        ->type_name("PATH");
    app.add_option("--metrics", c.metrics,
                   "serve Prometheus metrics at ADDR: unix:PATH (or a path with a '/'), "
                   "HOST:PORT, or tcp:PORT on 127.0.0.1 (see docs/METRICS.md)")
        ->type_name("ADDR");
}

/// How the image is opened and served.
void add_image_options(CLI::App& app, Config& c, RawOptions& raw) {
    app.add_option("--export", raw.exports,
                   "serve PATH as export NAME: name=NAME,file=PATH[,format=qcow2|raw]"
                   "[,read-only=on][,description=TEXT][,allocation-depth=on][,bitmap=NAME]; "
                   "repeatable, instead of IMAGE")
        ->type_name("SPEC")
        ->allow_extra_args(false);
    app.add_option("-B,--bitmap", c.bitmaps,
                   "expose the image's persistent dirty bitmap NAME as the context "
                   "qemu:dirty-bitmap:NAME (repeatable)")
        ->type_name("NAME")
        ->allow_extra_args(false);
    app.add_flag("-r,--read-only", c.read_only, "export read-only");
    app.add_flag("-U,--force-share", c.force_share,
                 "with -r: serve an image other programs are writing (takes no lock on it)");
    app.add_option("-f,--format", c.format, "image format: qcow2 or raw (default: qcow2 only)")
        ->check(CLI::IsMember({"qcow2", "raw"}));
    app.add_option("--cache", raw.cache,
                   "none|writeback|writethrough|directsync|unsafe (default writeback; "
                   "writethrough with --reconnect-timeout)")
        ->check(CLI::IsMember({"none", "writeback", "writethrough", "directsync", "unsafe"}));
    app.add_flag_callback(
        "-n,--nocache", [&raw] { raw.cache = "none"; }, "same as --cache=none");
    app.add_option("--aio", c.aio,
                   "threads|native|io_uring: accepted for qemu-nbd command lines; qnbd's "
                   "io_uring serves all three")
        ->check(CLI::IsMember({"threads", "native", "io_uring"}));
    app.add_option("--discard", raw.discard, "ignore|unmap, or off|on (default ignore)")
        ->check(CLI::IsMember({"ignore", "unmap", "on", "off"}));
    app.add_option("--detect-zeroes", raw.detect, "off|on|unmap (default off)")
        ->check(CLI::IsMember({"off", "on", "unmap"}));
    app.add_flag("-A,--allocation-depth", c.allocation_depth,
                 "expose the qemu:allocation-depth context");
    app.add_option("-o,--offset", raw.offset, "export the image from this byte offset on");
    app.add_flag("-s,--snapshot", c.snapshot,
                 "send writes to a temporary overlay, leaving IMAGE untouched");
    app.add_option("--l2-cache-size", raw.cache_size,
                   "metadata cache size (e.g. 64M; default covers the whole image up to 1 TiB)");
}

/// Processes: the kernel device, the background, logging.
void add_process_options(CLI::App& app, Config& c, RawOptions& raw) {
    app.add_option("-c,--connect", c.connect_device,
                   "attach the image to this kernel NBD device (or 'auto': any free one, whose "
                   "name is printed), then go to the background");
    app.add_option("--reconnect-timeout", raw.reconnect,
                   "with -c (netlink): if qnbd dies, the device waits this many seconds for a new "
                   "'qnbd -c DEV IMAGE' to reattach it instead of failing I/O");
    app.add_flag("--ioctl", c.use_ioctl,
                 "with -c: attach with the NBD ioctls, as qemu-nbd does, even where the kernel's "
                 "netlink interface exists");
    app.add_flag("-d,--disconnect", raw.disconnect,
                 "detach the kernel NBD device given as the argument");
    app.add_flag("--foreground", c.foreground, "with -c: stay in the foreground");
    app.add_flag("-v,--verbose", c.verbose, "log every request (with -c: stay in the foreground)");
    app.add_option("--pid-file", c.pid_file, "write the server's process ID to this file");
    app.add_flag("--fork", c.fork, "go to the background once the server is listening");
    app.add_flag("-V,--version", raw.version, "print the version and exit");
}

/// Parses a decimal option value in [min, max]; prints the error and returns false if it is not.
template <class T>
bool number(const char* option, const std::string& text, uint64_t min, uint64_t max, T& out) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
    if (text.empty() || text[0] == '-' || *end || errno || v < min || v > max) {
        std::fprintf(stderr, "qnbd: %s: invalid value '%s' (a number from %llu to %llu)\n", option,
                     text.c_str(), static_cast<unsigned long long>(min),
                     static_cast<unsigned long long>(max));
        return false;
    }
    out = static_cast<T>(v);
    return true;
}

/// --metrics must be a valid address, and not the unix socket of -k.
bool check_metrics(const Config& c) {
    if (c.metrics.empty()) return true;
    auto a = qnbd::server::parse_metrics_address(c.metrics);
    if (!a) {
        std::fprintf(stderr, "qnbd: %s\n", a.error().message.c_str());
        return false;
    }
    if (!a->unix_path.empty() && a->unix_path == c.socket_path) {
        std::fprintf(stderr, "qnbd: --metrics: %s is already the NBD socket (-k)\n",
                     c.socket_path.c_str());
        return false;
    }
    return true;
}

/// Options of -c that do not go together; the message, or empty.
std::string check_kernel_options(const Config& c) {
    const bool any = c.connect_device == kAnyDevice;
    if (c.connect_device.empty() && (c.reconnect_timeout_s || c.use_ioctl))
        return c.use_ioctl ? "--ioctl needs -c" : "--reconnect-timeout needs -c";
    if (c.use_ioctl && (any || c.reconnect_timeout_s))
        return std::string(any ? "-c auto" : "--reconnect-timeout") +
               " needs the netlink interface; it cannot be used with --ioctl";
    if (c.reconnect_timeout_s && c.snapshot)
        return "--reconnect-timeout cannot be used with -s: the overlay dies with the server";
    return {};
}

Command finish_config(Config c, const RawOptions& raw) {
    if (!number("--port", raw.port, 0, 65535, c.port) ||
        !number("--shared", raw.shared, 0, UINT32_MAX, c.shared) ||
        !number("--offset", raw.offset, 0, UINT64_MAX, c.offset) ||
        !number("--handshake-timeout", raw.handshake, 0, 86400 * 365, c.handshake_timeout_s) ||
        !number("--reconnect-timeout", raw.reconnect, 0, 86400 * 365, c.reconnect_timeout_s))
        return ExitNow{1};
    if (auto r = check_kernel_options(c); !r.empty()) {
        std::fprintf(stderr, "qnbd: %s\n", r.c_str());
        return ExitNow{1};
    }
    // A server that can be replaced after a crash acknowledges only durable writes: a write
    // it acknowledged and then lost with its metadata cache would be missing from the image
    // while the kernel, reattached to the next server, goes on as if it were there.
    c.cache = kCacheModes.at(!raw.cache.empty()      ? raw.cache
                             : c.reconnect_timeout_s ? "writethrough"
                                                     : "writeback");
    c.discard = kDiscardModes.at(raw.discard);
    c.detect_zeroes = kDetectZeroes.at(raw.detect);
    if (!raw.cache_size.empty()) {
        auto s = qcow2::parse_size(raw.cache_size);
        if (!s) {
            std::fprintf(stderr, "qnbd: --l2-cache-size: %s\n", s.error().message.c_str());
            return ExitNow{1};
        }
        c.metadata_cache_bytes = *s;
    }
    if (!check_metrics(c)) return ExitNow{1};
    auto tls = resolve_tls(raw.objects, raw.tls_creds, raw.tls_authz);
    if (!tls) {
        std::fprintf(stderr, "qnbd: %s\n", tls.error().message.c_str());
        return ExitNow{1};
    }
    c.tls = std::move(*tls);
    if (!c.control_path.empty() && !c.connect_device.empty()) {
        std::fprintf(stderr, "qnbd: --control cannot be used with -c\n");
        return ExitNow{1};
    }
    if (c.tls && !c.connect_device.empty()) {
        // As qemu-nbd: the kernel client of -c does not speak TLS to its own server.
        std::fprintf(stderr, "qnbd: TLS is not supported with a host device (-c)\n");
        return ExitNow{1};
    }
    if (auto r = set_exports(c, raw.exports); !r) {
        std::fprintf(stderr, "qnbd: %s\n", r.error().message.c_str());
        return ExitNow{1};
    }
    if (c.image.empty() && c.exports.empty()) {
        std::fprintf(stderr, "qnbd: an image file is required (see --help)\n");
        return ExitNow{1};
    }
    return c;
}

/// A parse error in qemu-nbd's style: one line, exit status 1; --help exits 0.
int parse_failure(const CLI::App& app, const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "qnbd: %s\nTry 'qnbd --help' for more information.\n", e.what());
    return 1;
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
        return ExitNow{parse_failure(app, e)};
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
    if (auto refused = refused_option(argc, argv); !refused.empty()) {
        std::fprintf(stderr, "qnbd: %s\n", refused.c_str());
        return ExitNow{1};
    }
    CLI::App app{"qnbd: serve a qcow2 image over NBD (a qemu-nbd replacement)", "qnbd"};
    Config c;
    RawOptions raw;
    add_listen_options(app, c, raw);
    add_image_options(app, c, raw);
    add_process_options(app, c, raw);
    app.add_option("image", c.image, "image file to serve (or device with -d)");
    add_refused_options(app);
    app.footer("Also: qnbd create [-o options] IMAGE SIZE   creates a qcow2 image.");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return ExitNow{parse_failure(app, e)};
    }
    if (raw.version) {
        std::printf("qnbd %s\n", QNBD_VERSION);
        return ExitNow{0};
    }
    if (raw.disconnect) return DisconnectCommand{c.image};
    c.listen_given = app.count("--port") || app.count("--bind") || app.count("--socket");
    return finish_config(std::move(c), raw);
}

}  // namespace qnbd::server
