// The --metrics registry and its exposition text (server/metrics.hpp), the address syntax and
// the HTTP responses (server/metrics_server.hpp).
#include <catch2/catch.hpp>

#include <map>
#include <set>
#include <sstream>

#include "protocol/constants.hpp"
#include "server/metrics.hpp"
#include "server/metrics_server.hpp"

using namespace qnbd;
using namespace qnbd::server;

namespace {

/// A Disk that only reports fixed stats.
class StatsDisk final : public Disk {
  public:
    explicit StatsDisk(DiskStats s) : stats_(s) {}
    uint64_t size() const override { return 1 << 20; }
    bool read_only() const override { return false; }
    std::string format_name() const override { return "qcow2"; }
    awaitable<Result<void>> read(GuestOffset, std::span<std::byte>,
                                 std::vector<ZeroRun>*) override {
        co_return ok();
    }
    awaitable<Result<void>> write(GuestOffset, std::span<const std::byte>, WriteFlags) override {
        co_return ok();
    }
    awaitable<Result<void>> write_zeroes(GuestOffset, uint64_t, ZeroFlags) override {
        co_return ok();
    }
    awaitable<Result<void>> discard(GuestOffset, uint64_t, WriteFlags) override { co_return ok(); }
    awaitable<Result<void>> flush() override { co_return ok(); }
    awaitable<Result<std::vector<Extent>>> block_status(GuestOffset, uint64_t) override {
        co_return std::vector<Extent>{};
    }
    awaitable<Result<void>> close() override { co_return ok(); }
    DiskStats stats() const override { return stats_; }

  private:
    DiskStats stats_;
};

/// The sample lines of an exposition text, by `name{labels}`.
std::map<std::string, std::string> samples(const std::string& text) {
    std::map<std::string, std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#') continue;
        const size_t sp = line.rfind(' ');
        out[line.substr(0, sp)] = line.substr(sp + 1);
    }
    return out;
}

/// The metric family a sample name belongs to, given the family's type.
bool in_family(const std::string& sample, const std::string& family, const std::string& type) {
    if (sample == family) return true;
    if (type != "histogram") return false;
    for (const char* suffix : {"_bucket", "_sum", "_count"})
        if (sample == family + suffix) return true;
    return false;
}

/// Checks the text's structure: HELP then TYPE for each family, declared once, its samples
/// right after it, every line ending in a newline.
void check_well_formed(const std::string& text) {
    REQUIRE(!text.empty());
    REQUIRE(text.back() == '\n');
    std::istringstream in(text);
    std::set<std::string> seen;
    std::string family, type, help_of;
    for (std::string line; std::getline(in, line);) {
        INFO(line);
        if (line.rfind("# HELP ", 0) == 0) {
            help_of = line.substr(7, line.find(' ', 7) - 7);
            CHECK(seen.insert(help_of).second);
        } else if (line.rfind("# TYPE ", 0) == 0) {
            std::istringstream w(line.substr(7));
            w >> family >> type;
            CHECK(family == help_of);
            CHECK((type == "counter" || type == "gauge" || type == "histogram"));
        } else {
            const std::string name = line.substr(0, line.find_first_of("{ "));
            CHECK(in_family(name, family, type));
        }
    }
}

}  // namespace

TEST_CASE("metrics: label values escape backslash, quote and newline", "[metrics]") {
    CHECK(escape_label_value("plain-name_1.x") == "plain-name_1.x");
    CHECK(escape_label_value("a\\b") == "a\\\\b");
    CHECK(escape_label_value("say \"hi\"") == "say \\\"hi\\\"");
    CHECK(escape_label_value("two\nlines") == "two\\nlines");
    CHECK(escape_label_value("\\\"\n") == "\\\\\\\"\\n");
    CHECK(escape_label_value("d\xc3\xa9j\xc3\xa0") == "d\xc3\xa9j\xc3\xa0");
}

TEST_CASE("metrics: histogram buckets include their bound, larger values go to +Inf", "[metrics]") {
    Histogram h;
    h.observe(0);
    h.observe(10'000);  // exactly 10 us: first bucket
    h.observe(10'001);
    h.observe(10'000'000'000);  // exactly 10 s: last finite bucket
    h.observe(10'000'000'001);
    CHECK(h.bucket(0) == 2);
    CHECK(h.bucket(1) == 1);
    CHECK(h.bucket(Histogram::kBounds - 1) == 1);
    CHECK(h.bucket(Histogram::kBounds) == 1);
    CHECK(h.count() == 5);
    CHECK(h.sum_ns() == 20'000'020'002);
    for (size_t i = 0; i + 1 < Histogram::kBounds; ++i)
        CHECK(Histogram::kBoundsNs[i] < Histogram::kBoundsNs[i + 1]);
    CHECK(std::stod(std::string(Histogram::kBoundLabels[0])) * 1e9 == Approx(10'000));
    for (size_t i = 0; i < Histogram::kBounds; ++i)
        CHECK(std::stod(std::string(Histogram::kBoundLabels[i])) * 1e9 ==
              Approx(static_cast<double>(Histogram::kBoundsNs[i])));
}

TEST_CASE("metrics: histogram exposition is cumulative with +Inf, _sum and _count", "[metrics]") {
    Histogram h;
    h.observe(20'000);          // <= 25 us
    h.observe(20'000);          // <= 25 us
    h.observe(700'000);         // <= 1 ms
    h.observe(20'000'000'000);  // +Inf
    std::string out;
    append_histogram(out, "x_seconds", "a=\"1\"", h);
    auto s = samples(out);
    CHECK(s.size() == Histogram::kBounds + 3);
    CHECK(s["x_seconds_bucket{a=\"1\",le=\"1e-05\"}"] == "0");
    CHECK(s["x_seconds_bucket{a=\"1\",le=\"2.5e-05\"}"] == "2");
    CHECK(s["x_seconds_bucket{a=\"1\",le=\"0.0005\"}"] == "2");
    CHECK(s["x_seconds_bucket{a=\"1\",le=\"0.001\"}"] == "3");
    CHECK(s["x_seconds_bucket{a=\"1\",le=\"10\"}"] == "3");
    CHECK(s["x_seconds_bucket{a=\"1\",le=\"+Inf\"}"] == "4");
    CHECK(s["x_seconds_count{a=\"1\"}"] == "4");
    CHECK(std::stod(s["x_seconds_sum{a=\"1\"}"]) == Approx(20.00074));
    // Buckets come in increasing order, +Inf last, then _sum, then _count.
    CHECK(out.find("le=\"1e-05\"") < out.find("le=\"2.5e-05\""));
    CHECK(out.find("le=\"10\"") < out.find("le=\"+Inf\""));
    CHECK(out.find("le=\"+Inf\"") < out.find("x_seconds_sum"));
    CHECK(out.find("x_seconds_sum") < out.find("x_seconds_count"));

    std::string bare;
    append_histogram(bare, "y", "", Histogram{});
    CHECK(bare.find("y_bucket{le=\"+Inf\"} 0\n") != std::string::npos);
    CHECK(bare.find("y_sum 0\n") != std::string::npos);
    CHECK(bare.find("y_count 0\n") != std::string::npos);
}

TEST_CASE("metrics: commands and NBD errors map to their label slots", "[metrics]") {
    using namespace qnbd::nbd;
    CHECK(kCommandLabels[command_slot(NBD_CMD_READ)] == "READ");
    CHECK(kCommandLabels[command_slot(NBD_CMD_WRITE)] == "WRITE");
    CHECK(kCommandLabels[command_slot(NBD_CMD_FLUSH)] == "FLUSH");
    CHECK(kCommandLabels[command_slot(NBD_CMD_TRIM)] == "TRIM");
    CHECK(kCommandLabels[command_slot(NBD_CMD_CACHE)] == "CACHE");
    CHECK(kCommandLabels[command_slot(NBD_CMD_WRITE_ZEROES)] == "WRITE_ZEROES");
    CHECK(kCommandLabels[command_slot(NBD_CMD_BLOCK_STATUS)] == "BLOCK_STATUS");
    CHECK(kCommandLabels[command_slot(NBD_CMD_DISC)] == "OTHER");
    CHECK(kCommandLabels[command_slot(NBD_CMD_RESIZE)] == "OTHER");
    CHECK(kCommandLabels[command_slot(0xffff)] == "OTHER");
    CHECK(kErrorLabels[error_slot(NBD_EPERM)] == "EPERM");
    CHECK(kErrorLabels[error_slot(NBD_EIO)] == "EIO");
    CHECK(kErrorLabels[error_slot(NBD_ENOMEM)] == "ENOMEM");
    CHECK(kErrorLabels[error_slot(NBD_EINVAL)] == "EINVAL");
    CHECK(kErrorLabels[error_slot(NBD_ENOSPC)] == "ENOSPC");
    CHECK(kErrorLabels[error_slot(NBD_EOVERFLOW)] == "EOVERFLOW");
    CHECK(kErrorLabels[error_slot(NBD_ENOTSUP)] == "ENOTSUP");
    CHECK(kErrorLabels[error_slot(NBD_ESHUTDOWN)] == "ESHUTDOWN");
    CHECK(kErrorLabels[error_slot(4242)] == "OTHER");
}

TEST_CASE("metrics: the registry renders requests, errors, disks and connections", "[metrics]") {
    using namespace qnbd::nbd;
    Metrics m(1700000000.5);
    DiskStats st;
    st.barriers = 3;
    st.syncs = 5;
    st.syncs_saved = 6;
    st.flush_requests = 4;
    st.clusters_allocated = 7;
    st.clusters_freed = 1;
    st.metadata_writes = 9;
    st.cache_hits = 11;
    st.cache_misses = 2;
    ExportMetrics& e = m.add_export("we\"ird\\", std::make_shared<StatsDisk>(st));
    m.add_export("", nullptr);
    e.record(NBD_CMD_WRITE, NBD_SUCCESS, 4096, 30'000);
    e.record(NBD_CMD_WRITE, NBD_SUCCESS, 512, 30'000);
    e.record(NBD_CMD_WRITE, NBD_EPERM, 65536, 5'000);
    e.record(NBD_CMD_READ, NBD_SUCCESS, 1024, 1'000);
    e.record(NBD_CMD_FLUSH, NBD_SUCCESS, 0, 2'000'000);
    e.record(NBD_CMD_BLOCK_STATUS, NBD_SUCCESS, 1 << 20, 1'000);
    m.connection_opened();
    m.connection_opened();
    m.connection_closed();

    const std::string text = m.render();
    check_well_formed(text);
    auto s = samples(text);
    const std::string w = "export=\"we\\\"ird\\\\\"";
    CHECK(s["qnbd_requests_total{" + w + ",command=\"WRITE\"}"] == "3");
    CHECK(s["qnbd_requests_total{" + w + ",command=\"READ\"}"] == "1");
    CHECK(s["qnbd_requests_total{" + w + ",command=\"TRIM\"}"] == "0");
    CHECK(s.count("qnbd_requests_total{" + w + ",command=\"OTHER\"}") == 0);
    CHECK(s["qnbd_request_bytes_total{" + w + ",command=\"WRITE\"}"] == "4608");
    CHECK(s["qnbd_request_bytes_total{" + w + ",command=\"READ\"}"] == "1024");
    CHECK(s.count("qnbd_request_bytes_total{" + w + ",command=\"FLUSH\"}") == 0);
    CHECK(s.count("qnbd_request_bytes_total{" + w + ",command=\"BLOCK_STATUS\"}") == 0);
    CHECK(s["qnbd_request_errors_total{" + w + ",command=\"WRITE\",errno=\"EPERM\"}"] == "1");
    CHECK(s.count("qnbd_request_errors_total{" + w + ",command=\"WRITE\",errno=\"EIO\"}") == 0);
    CHECK(s["qnbd_request_duration_seconds_count{" + w + ",command=\"WRITE\"}"] == "3");
    CHECK(s["qnbd_request_duration_seconds_bucket{" + w + ",command=\"WRITE\",le=\"1e-05\"}"] ==
          "1");
    CHECK(s["qnbd_request_duration_seconds_bucket{" + w + ",command=\"FLUSH\",le=\"0.001\"}"] ==
          "0");
    CHECK(s["qnbd_request_duration_seconds_bucket{" + w + ",command=\"FLUSH\",le=\"0.0025\"}"] ==
          "1");
    CHECK(s["qnbd_flush_barriers_total{" + w + "}"] == "3");
    CHECK(s["qnbd_fdatasyncs_total{" + w + "}"] == "5");
    CHECK(s["qnbd_fdatasyncs_saved_total{" + w + "}"] == "6");
    CHECK(s["qnbd_flush_requests_total{" + w + "}"] == "4");
    CHECK(s["qnbd_clusters_allocated_total{" + w + "}"] == "7");
    CHECK(s["qnbd_clusters_freed_total{" + w + "}"] == "1");
    CHECK(s["qnbd_metadata_writes_total{" + w + "}"] == "9");
    CHECK(s["qnbd_metadata_cache_hits_total{" + w + "}"] == "11");
    CHECK(s["qnbd_metadata_cache_misses_total{" + w + "}"] == "2");
    CHECK(s["qnbd_flush_barriers_total{export=\"\"}"] == "0");
    CHECK(s["qnbd_requests_total{export=\"\",command=\"READ\"}"] == "0");
    CHECK(s["qnbd_connections"] == "1");
    CHECK(s["qnbd_connections_total"] == "2");
    CHECK(std::stod(s["qnbd_start_time_seconds"]) == 1700000000.5);
    const size_t build = text.find("\nqnbd_build_info{version=\"");
    REQUIRE(build != std::string::npos);
    CHECK(text.substr(text.find('\n', build + 1) - 4, 4) == "\"} 1");
}

TEST_CASE("metrics: an unknown command shows up as OTHER once seen", "[metrics]") {
    Metrics m(0);
    ExportMetrics& e = m.add_export("x", nullptr);
    e.record(42, nbd::NBD_EINVAL, 0, 1000);
    const std::string text = m.render();
    check_well_formed(text);
    auto s = samples(text);
    CHECK(s["qnbd_requests_total{export=\"x\",command=\"OTHER\"}"] == "1");
    CHECK(s["qnbd_request_errors_total{export=\"x\",command=\"OTHER\",errno=\"EINVAL\"}"] == "1");
    CHECK(s["qnbd_request_duration_seconds_count{export=\"x\",command=\"OTHER\"}"] == "1");
}

TEST_CASE("metrics: --metrics address forms", "[metrics]") {
    auto p = [](const char* s) { return parse_metrics_address(s); };
    CHECK(*p("unix:m.sock") == MetricsAddress{"m.sock", "", 0});
    CHECK(*p("/run/qnbd/m.sock") == MetricsAddress{"/run/qnbd/m.sock", "", 0});
    CHECK(*p("./m.sock") == MetricsAddress{"./m.sock", "", 0});
    CHECK(*p("127.0.0.1:9100") == MetricsAddress{"", "127.0.0.1", 9100});
    CHECK(*p("0.0.0.0:9100") == MetricsAddress{"", "0.0.0.0", 9100});
    CHECK(*p("[::1]:9100") == MetricsAddress{"", "::1", 9100});
    CHECK(*p("localhost:9100") == MetricsAddress{"", "127.0.0.1", 9100});
    CHECK(*p(":9100") == MetricsAddress{"", "127.0.0.1", 9100});
    CHECK(*p("tcp:9100") == MetricsAddress{"", "127.0.0.1", 9100});
    CHECK(*p("tcp:10.0.0.1:0") == MetricsAddress{"", "10.0.0.1", 0});
    CHECK(!p(""));
    CHECK(!p("unix:"));
    CHECK(!p("m.sock"));
    CHECK(!p("9100"));
    CHECK(!p("host:"));
    CHECK(!p("host:70000"));
    CHECK(!p("host:12x"));
    CHECK(!p("tcp:"));
}

TEST_CASE("metrics: scrape requests are classified by method and path", "[metrics]") {
    CHECK(classify_scrape("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") == ScrapeTarget::Metrics);
    CHECK(classify_scrape("GET /metrics HTTP/1.0\n\n") == ScrapeTarget::Metrics);
    CHECK(classify_scrape("GET /metrics?x=1 HTTP/1.1\r\n\r\n") == ScrapeTarget::Metrics);
    CHECK(classify_scrape("GET / HTTP/1.1\r\n\r\n") == ScrapeTarget::NotFound);
    CHECK(classify_scrape("GET /metricsx HTTP/1.1\r\n\r\n") == ScrapeTarget::NotFound);
    CHECK(classify_scrape("POST /metrics HTTP/1.1\r\n\r\n") == ScrapeTarget::NotFound);
    CHECK(classify_scrape("GET /metrics\r\n\r\n") == ScrapeTarget::BadRequest);
    CHECK(classify_scrape("GET /metrics SPDY/3\r\n\r\n") == ScrapeTarget::BadRequest);
    CHECK(classify_scrape("GET  /metrics HTTP/1.1\r\n\r\n") == ScrapeTarget::BadRequest);
    CHECK(classify_scrape("\r\n\r\n") == ScrapeTarget::BadRequest);
}

TEST_CASE("metrics: scrape responses are complete HTTP/1.0 responses", "[metrics]") {
    Metrics m(0);
    m.add_export("e", nullptr);
    const std::string ok = scrape_response(ScrapeTarget::Metrics, m);
    const std::string body = m.render();
    CHECK(ok.rfind("HTTP/1.0 200 OK\r\n", 0) == 0);
    CHECK(ok.find("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n") !=
          std::string::npos);
    CHECK(ok.find("\r\nContent-Length: " + std::to_string(body.size()) + "\r\n") !=
          std::string::npos);
    CHECK(ok.substr(ok.find("\r\n\r\n") + 4) == body);
    const std::string missing = scrape_response(ScrapeTarget::NotFound, m);
    CHECK(missing.rfind("HTTP/1.0 404 Not Found\r\n", 0) == 0);
    CHECK(missing.find("qnbd_") == std::string::npos);
    CHECK(scrape_response(ScrapeTarget::BadRequest, m).rfind("HTTP/1.0 400 Bad Request\r\n", 0) ==
          0);
}
