// Live metrics (--metrics): counters and latency histograms updated on the reactor thread (no
// locks: one thread touches them), rendered in the Prometheus text exposition format 0.0.4.
// docs/METRICS.md lists every metric.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "disk/disk.hpp"
#include "protocol/constants.hpp"

namespace qnbd::server {

/// Request latencies in fixed buckets from 10 µs to 10 s (1, 2.5, 5 per decade), plus +Inf.
/// Counts are kept per bucket and made cumulative when rendered.
class Histogram {
  public:
    static constexpr size_t kBounds = 19;
    /// Upper bounds of the buckets in nanoseconds (an observation equal to a bound is in it).
    static constexpr std::array<uint64_t, kBounds> kBoundsNs = {
        10'000,        25'000,        50'000,        100'000,       250'000,
        500'000,       1'000'000,     2'500'000,     5'000'000,     10'000'000,
        25'000'000,    50'000'000,    100'000'000,   250'000'000,   500'000'000,
        1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};
    /// The same bounds as written in the `le` label.
    static constexpr std::array<std::string_view, kBounds> kBoundLabels = {
        "1e-05",  "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001",
        "0.0025", "0.005",   "0.01",  "0.025",  "0.05",    "0.1",    "0.25",
        "0.5",    "1",       "2.5",   "5",      "10"};

    /// Records one observation of `ns` nanoseconds.
    void observe(uint64_t ns) {
        size_t i = 0;
        while (i < kBounds && ns > kBoundsNs[i]) ++i;
        ++counts_[i];
        ++count_;
        sum_ns_ += ns;
    }
    /// Observations in bucket `i` alone (i == kBounds: above the last bound).
    uint64_t bucket(size_t i) const { return counts_[i]; }
    /// All observations.
    uint64_t count() const { return count_; }
    /// Sum of the observations in nanoseconds.
    uint64_t sum_ns() const { return sum_ns_; }

  private:
    std::array<uint64_t, kBounds + 1> counts_{};
    uint64_t count_ = 0;
    uint64_t sum_ns_ = 0;
};

/// The `command` label values: the NBD commands a server replies to, then OTHER for unknown
/// command numbers (refused with EINVAL).
inline constexpr std::array<std::string_view, 8> kCommandLabels = {
    "READ", "WRITE", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS", "OTHER"};
/// The `errno` label values: the NBD error names, then OTHER for a value outside the spec.
inline constexpr std::array<std::string_view, 9> kErrorLabels = {
    "EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "EOVERFLOW", "ENOTSUP", "ESHUTDOWN", "OTHER"};

/// Index in kCommandLabels of NBD command `type` (DISC, never replied to, counts as OTHER).
constexpr size_t command_slot(uint16_t type) {
    constexpr std::array<uint8_t, 8> slots = {0, 1, 7, 2, 3, 4, 5, 6};
    return type < slots.size() ? slots[type] : 7;
}
/// Index in kErrorLabels of NBD error value `err` (not NBD_SUCCESS).
constexpr size_t error_slot(uint32_t err) {
    switch (err) {
        case nbd::NBD_EPERM:
            return 0;
        case nbd::NBD_EIO:
            return 1;
        case nbd::NBD_ENOMEM:
            return 2;
        case nbd::NBD_EINVAL:
            return 3;
        case nbd::NBD_ENOSPC:
            return 4;
        case nbd::NBD_EOVERFLOW:
            return 5;
        case nbd::NBD_ENOTSUP:
            return 6;
        case nbd::NBD_ESHUTDOWN:
            return 7;
        default:
            return 8;
    }
}
/// True for the command slots whose length is counted in qnbd_request_bytes_total: READ,
/// WRITE, TRIM, CACHE and WRITE_ZEROES.
constexpr bool counts_bytes(size_t slot) {
    return slot == 0 || slot == 1 || slot == 3 || slot == 4 || slot == 5;
}

/// Counters of one command on one export.
struct CommandMetrics {
    uint64_t requests = 0;  ///< Replied to, successfully or not.
    uint64_t bytes = 0;     ///< Lengths of the successful ones (data commands only).
    Histogram duration;     ///< From the request header read to the reply written.
    std::array<uint64_t, kErrorLabels.size()> errors{};
};

/// The request metrics of one export, indexed by command without any lookup.
class ExportMetrics {
  public:
    /// Records a replied request: NBD command `type`, NBD error `err` (0 on success), the
    /// request's `length` and how long it took.
    void record(uint16_t type, uint32_t err, uint64_t length, uint64_t ns) {
        const size_t slot = command_slot(type);
        CommandMetrics& c = commands_[slot];
        ++c.requests;
        c.duration.observe(ns);
        if (err)
            ++c.errors[error_slot(err)];
        else if (counts_bytes(slot))
            c.bytes += length;
    }
    const CommandMetrics& command(size_t slot) const { return commands_[slot]; }

  private:
    std::array<CommandMetrics, kCommandLabels.size()> commands_{};
};

/// Everything --metrics reports: the exports (their request metrics and disk counters) and
/// the connections.
class Metrics {
  public:
    /// `start_time` is the server's start in Unix seconds.
    explicit Metrics(double start_time);
    /// Registers export `name` served from `disk` (whose stats() are read at each scrape; may
    /// be null). The returned metrics stay at the same address as long as the registry lives.
    ExportMetrics& add_export(const std::string& name, std::shared_ptr<const Disk> disk);
    /// A client connection opened or closed (NBD clients only, including the kernel's).
    void connection_opened() {
        ++connections_;
        ++connections_total_;
    }
    void connection_closed() { --connections_; }
    /// The exposition text of every metric.
    std::string render() const;

  private:
    struct Entry {
        ExportMetrics requests;
        std::shared_ptr<const Disk> disk;
    };
    void render_requests(std::string& out) const;
    void render_disks(std::string& out) const;

    double start_time_;
    uint64_t connections_ = 0;
    uint64_t connections_total_ = 0;
    std::map<std::string, Entry> exports_;  ///< Node-based: entries never move.
};

/// The time now in seconds since the Unix epoch.
double unix_time_now();

/// A label value escaped for the exposition format: backslash, double quote and line feed
/// become \\, \" and \n.
std::string escape_label_value(std::string_view v);

/// Appends the `# HELP` and `# TYPE` lines of a metric family.
void append_family(std::string& out, std::string_view name, std::string_view type,
                   std::string_view help);
/// Appends one sample line: `name{labels} value`; `labels` is already formatted
/// (`export="x",command="READ"`), and empty for none.
void append_sample(std::string& out, std::string_view name, std::string_view labels,
                   uint64_t value);
/// Appends the `_bucket` lines (cumulative, `le` last among the labels, ending with +Inf), then
/// `_sum` in seconds and `_count` of histogram `h`.
void append_histogram(std::string& out, std::string_view name, std::string_view labels,
                      const Histogram& h);

}  // namespace qnbd::server
