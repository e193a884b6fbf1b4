// The metrics registry and its exposition text (see metrics.hpp).
#include "server/metrics.hpp"

#include <charconv>
#include <chrono>

#ifndef QNBD_VERSION
#define QNBD_VERSION "0.0.0"
#endif

namespace qnbd::server {

namespace {

/// Appends `v` in the shortest form that reads back as the same double.
void append_double(std::string& out, double v) {
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, ec == std::errc{} ? end : buf);
}

/// `export="NAME"` for export `name`.
std::string export_label(const std::string& name) {
    return "export=\"" + escape_label_value(name) + "\"";
}

/// `export="NAME",command="CMD"`.
std::string command_labels(const std::string& exp, size_t slot) {
    return exp + ",command=\"" + std::string(kCommandLabels[slot]) + "\"";
}

/// Whether command `slot` is rendered: every command always, OTHER once it was seen.
bool shown(const ExportMetrics& m, size_t slot) {
    return slot + 1 < kCommandLabels.size() || m.command(slot).requests > 0;
}

/// One counter of DiskStats, with its metric name and help text.
struct DiskCounter {
    std::string_view name;
    std::string_view help;
    uint64_t DiskStats::*field;
};

constexpr DiskCounter kDiskCounters[] = {
    {"qnbd_flush_barriers_total", "Flush barriers completed by the image engine.",
     &DiskStats::barriers},
    {"qnbd_fdatasyncs_total", "fdatasync calls issued by the image engine.", &DiskStats::syncs},
    {"qnbd_fdatasyncs_saved_total",
     "Barriers that wrote L2 tables with no fdatasync before them (refcounts one barrier ahead).",
     &DiskStats::syncs_saved},
    {"qnbd_flush_requests_total", "Flushes asked of the image engine (each joins a barrier).",
     &DiskStats::flush_requests},
    {"qnbd_clusters_allocated_total", "Host clusters allocated.", &DiskStats::clusters_allocated},
    {"qnbd_clusters_freed_total", "Host clusters freed.", &DiskStats::clusters_freed},
    {"qnbd_metadata_writes_total", "L1, L2, refcount and header writes issued.",
     &DiskStats::metadata_writes},
    {"qnbd_metadata_cache_hits_total", "Metadata cache hits.", &DiskStats::cache_hits},
    {"qnbd_metadata_cache_misses_total", "Metadata cache misses (tables read from disk).",
     &DiskStats::cache_misses},
};

}  // namespace

double unix_time_now() {
    using namespace std::chrono;
    return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

void append_family(std::string& out, std::string_view name, std::string_view type,
                   std::string_view help) {
    out.append("# HELP ").append(name).append(" ").append(help).append("\n");
    out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void append_sample(std::string& out, std::string_view name, std::string_view labels,
                   uint64_t value) {
    out.append(name);
    if (!labels.empty()) out.append("{").append(labels).append("}");
    out.append(" ").append(std::to_string(value)).append("\n");
}

void append_histogram(std::string& out, std::string_view name, std::string_view labels,
                      const Histogram& h) {
    const std::string bucket = std::string(name) + "_bucket";
    const std::string prefix = labels.empty() ? std::string() : std::string(labels) + ",";
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= Histogram::kBounds; ++i) {
        cumulative += h.bucket(i);
        const std::string_view le = i < Histogram::kBounds ? Histogram::kBoundLabels[i] : "+Inf";
        append_sample(out, bucket, prefix + "le=\"" + std::string(le) + "\"", cumulative);
    }
    out.append(name).append("_sum");
    if (!labels.empty()) out.append("{").append(labels).append("}");
    out.append(" ");
    append_double(out, static_cast<double>(h.sum_ns()) / 1e9);
    out.append("\n");
    append_sample(out, std::string(name) + "_count", labels, h.count());
}

Metrics::Metrics(double start_time) : start_time_(start_time) {}

ExportMetrics& Metrics::add_export(const std::string& name, std::shared_ptr<const Disk> disk) {
    Entry& e = exports_[name];
    e.disk = std::move(disk);
    return e.requests;
}

void Metrics::render_requests(std::string& out) const {
    append_family(out, "qnbd_requests_total", "counter",
                  "NBD requests replied to (successfully or with an error), by command.");
    for (const auto& [name, e] : exports_) {
        const std::string exp = export_label(name);
        for (size_t c = 0; c < kCommandLabels.size(); ++c)
            if (shown(e.requests, c))
                append_sample(out, "qnbd_requests_total", command_labels(exp, c),
                              e.requests.command(c).requests);
    }
    append_family(out, "qnbd_request_bytes_total", "counter",
                  "Bytes of successful READ, WRITE, TRIM, CACHE and WRITE_ZEROES requests.");
    for (const auto& [name, e] : exports_)
        for (size_t c = 0; c < kCommandLabels.size(); ++c)
            if (counts_bytes(c))
                append_sample(out, "qnbd_request_bytes_total",
                              command_labels(export_label(name), c), e.requests.command(c).bytes);
    append_family(out, "qnbd_request_duration_seconds", "histogram",
                  "Time from reading a request's header to writing its reply.");
    for (const auto& [name, e] : exports_)
        for (size_t c = 0; c < kCommandLabels.size(); ++c)
            if (shown(e.requests, c))
                append_histogram(out, "qnbd_request_duration_seconds",
                                 command_labels(export_label(name), c),
                                 e.requests.command(c).duration);
    append_family(out, "qnbd_request_errors_total", "counter",
                  "Requests replied to with an NBD error, by command and error name.");
    for (const auto& [name, e] : exports_)
        for (size_t c = 0; c < kCommandLabels.size(); ++c)
            for (size_t x = 0; x < kErrorLabels.size(); ++x)
                if (const uint64_t n = e.requests.command(c).errors[x])
                    append_sample(out, "qnbd_request_errors_total",
                                  command_labels(export_label(name), c) + ",errno=\"" +
                                      std::string(kErrorLabels[x]) + "\"",
                                  n);
}

void Metrics::render_disks(std::string& out) const {
    for (const DiskCounter& d : kDiskCounters) {
        append_family(out, d.name, "counter", d.help);
        for (const auto& [name, e] : exports_) {
            const DiskStats st = e.disk ? e.disk->stats() : DiskStats{};
            append_sample(out, d.name, export_label(name), st.*d.field);
        }
    }
}

std::string Metrics::render() const {
    std::string out;
    out.reserve(16384 + exports_.size() * 32768);
    append_family(out, "qnbd_build_info", "gauge", "The qnbd version, as a label.");
    append_sample(out, "qnbd_build_info", "version=\"" QNBD_VERSION "\"", 1);
    append_family(out, "qnbd_start_time_seconds", "gauge",
                  "When the server started, in seconds since the Unix epoch.");
    out.append("qnbd_start_time_seconds ");
    append_double(out, start_time_);
    out.append("\n");
    append_family(out, "qnbd_connections", "gauge", "NBD client connections open now.");
    append_sample(out, "qnbd_connections", "", connections_);
    append_family(out, "qnbd_connections_total", "counter", "NBD client connections accepted.");
    append_sample(out, "qnbd_connections_total", "", connections_total_);
    render_requests(out);
    render_disks(out);
    return out;
}

}  // namespace qnbd::server
