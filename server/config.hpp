// Server configuration as given on the command line (qemu-nbd compatible spellings).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "image/open.hpp"
#include "server/tls_config.hpp"

namespace qnbd::server {

/// How guest discard requests are treated.
enum class DiscardMode { Ignore, Unmap };
/// Whether writes of zeros become zero writes.
enum class DetectZeroes { Off, On, Unmap };
/// qemu's cache modes.
enum class CacheMode { None, Writeback, Writethrough, Directsync, Unsafe };

/// The -c spelling for "any free device" (the kernel picks it; netlink only).
inline constexpr const char* kAnyDevice = "auto";

/// One `--export name=NAME,file=PATH,...`: an image served under its own name.
struct ExportSpec {
    std::string name;
    std::string file;
    std::string format;  ///< "" (qcow2 only), "qcow2" or "raw".
    std::string description;
    bool read_only = false;
    bool allocation_depth = false;
    std::vector<std::string> bitmaps;  ///< bitmap=: persistent bitmaps to export.
};

/// Everything `qnbd IMAGE` was asked to do.
struct Config {
    std::string image;
    uint16_t port = 10809;
    std::string bind = "127.0.0.1";
    std::string socket_path;  ///< Unix socket instead of TCP when set.
    std::string export_name;  ///< Default "" like qemu-nbd.
    std::string description;
    bool read_only = false;
    bool force_share = false;  ///< -U: with -r, share the image with writers (no image lock).
    std::string format;        ///< "", "qcow2" or "raw".
    bool persistent = false;
    uint32_t shared = 1;  ///< Simultaneous clients; 0 = unlimited.
    CacheMode cache = CacheMode::Writeback;
    std::string aio = "io_uring";
    DiscardMode discard = DiscardMode::Ignore;
    DetectZeroes detect_zeroes = DetectZeroes::Off;
    bool allocation_depth = false;
    std::vector<std::string> bitmaps;  ///< -B: persistent bitmaps exported as contexts.
    uint64_t offset = 0;               ///< Export the image from this byte offset on (-o).
    std::string connect_device;        ///< -c /dev/nbdX, or kAnyDevice.
    bool foreground = false;           ///< --foreground: -c stays in the foreground.
    bool listen_given = false;         ///< -p, -b or -k was given (refused with socket activation).
    bool verbose = false;
    std::string pid_file;
    bool fork = false;
    uint64_t metadata_cache_bytes = 0;
    unsigned handshake_timeout_s = 10;
    bool snapshot = false;  ///< -s: writes go to a temporary overlay.
    std::string metrics;    ///< --metrics address (server/metrics_server.hpp); empty: none.
    /// --reconnect-timeout: a netlink device waits this long for a new server (0: no wait).
    unsigned reconnect_timeout_s = 0;
    bool use_ioctl = false;  ///< --ioctl: attach with the NBD ioctls even where netlink exists.
    std::optional<TlsCredsConfig> tls;  ///< --tls-creds: clients must use TLS.
    /// --export, repeatable: several images, each under its name (instead of IMAGE, -x, -D).
    std::vector<ExportSpec> exports;
    std::string control_path;  ///< --control: the control socket (server/control.hpp).
};

/// The configuration of each export: `c` itself for `qnbd IMAGE`; for --export, `c` with
/// the image, name, description, format, -r and -A of each spec (the other options apply to
/// every export).
std::vector<Config> export_configs(const Config& c);

/// Open options of the engine for a configuration.
OpenOptions open_options(const Config& c);

}  // namespace qnbd::server
