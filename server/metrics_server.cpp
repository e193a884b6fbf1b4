// The --metrics HTTP endpoint (see metrics_server.hpp).
#include "server/metrics_server.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <charconv>
#include <chrono>
#include <filesystem>
#include <optional>
#include <set>

#include "base/async.hpp"
#include "server/spawn.hpp"

namespace qnbd::server {

namespace {

using boost::system::error_code;
using Tcp = asio::ip::tcp;
using Local = asio::local::stream_protocol;

Error bad_address(std::string_view spec) {
    return Error{EINVAL, "--metrics: invalid address '" + std::string(spec) +
                             "' (use unix:PATH, a path with a '/', HOST:PORT or tcp:PORT)"};
}

/// HOST:PORT, [V6]:PORT, :PORT, or PORT alone when `port_only` (after "tcp:").
Result<MetricsAddress> parse_tcp(std::string_view spec, std::string_view rest, bool port_only) {
    MetricsAddress a;
    a.host = "127.0.0.1";
    std::string_view port = rest;
    const size_t colon = rest.rfind(':');
    if (colon != std::string_view::npos) {
        std::string_view host = rest.substr(0, colon);
        port = rest.substr(colon + 1);
        if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
            host = host.substr(1, host.size() - 2);
        if (host == "localhost") host = "127.0.0.1";
        if (!host.empty()) a.host = std::string(host);
    } else if (!port_only) {
        return bad_address(spec);
    }
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), a.port);
    if (port.empty() || ec != std::errc{} || end != port.data() + port.size())
        return bad_address(spec);
    return a;
}

}  // namespace

Result<MetricsAddress> parse_metrics_address(std::string_view spec) {
    if (spec.starts_with("unix:")) {
        if (spec.size() == 5) return bad_address(spec);
        return MetricsAddress{std::string(spec.substr(5)), {}, 0};
    }
    if (spec.starts_with("tcp:")) return parse_tcp(spec, spec.substr(4), true);
    if (spec.find('/') != std::string_view::npos) return MetricsAddress{std::string(spec), {}, 0};
    return parse_tcp(spec, spec, false);
}

ScrapeTarget classify_scrape(std::string_view head) {
    const std::string_view line = head.substr(0, head.find_first_of("\r\n"));
    const size_t sp1 = line.find(' ');
    const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
        return ScrapeTarget::BadRequest;
    const std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    const std::string_view version = line.substr(sp2 + 1);
    if (method.empty() || target.empty() || !version.starts_with("HTTP/1."))
        return ScrapeTarget::BadRequest;
    target = target.substr(0, target.find('?'));
    return method == "GET" && target == "/metrics" ? ScrapeTarget::Metrics : ScrapeTarget::NotFound;
}

std::string scrape_response(ScrapeTarget target, const Metrics& metrics) {
    std::string status, type = "text/plain; charset=utf-8", body;
    switch (target) {
        case ScrapeTarget::Metrics:
            status = "200 OK";
            type = "text/plain; version=0.0.4; charset=utf-8";
            body = metrics.render();
            break;
        case ScrapeTarget::NotFound:
            status = "404 Not Found";
            body = "only GET /metrics is served here\n";
            break;
        case ScrapeTarget::BadRequest:
            status = "400 Bad Request";
            body = "malformed or oversized request\n";
            break;
    }
    std::string out = "HTTP/1.0 " + status + "\r\nContent-Type: " + type +
                      "\r\nContent-Length: " + std::to_string(body.size()) +
                      "\r\nConnection: close\r\n\r\n";
    return out + body;
}

/// One scrape connection (TCP or unix) and its deadline.
struct Scrape {
    using Socket = asio::generic::stream_protocol::socket;
    explicit Scrape(Socket s) : socket(std::move(s)), deadline(socket.get_executor()) {}
    void close() {
        error_code ec;
        socket.close(ec);
    }
    Socket socket;
    asio::steady_timer deadline;
};

struct MetricsServer::State {
    State(asio::io_context& io, const Metrics& m, ScrapeLimits l)
        : io(io), metrics(m), limits(l), retry(io) {}
    asio::io_context& io;
    const Metrics& metrics;  ///< Read only while !stopped.
    ScrapeLimits limits;
    std::optional<Tcp::acceptor> tcp;
    std::optional<Local::acceptor> local;
    asio::steady_timer retry;  ///< Spaces out accepts after a failure.
    std::string unix_path, where;
    bool stopped = false;
    std::set<std::shared_ptr<Scrape>> scrapes;
    Notifier scrape_ended;
};

namespace {

using State = std::shared_ptr<MetricsServer::State>;

/// How reading a request head ended.
enum class HeadRead { Complete, TooLarge, Failed };

/// Reads up to the blank line that ends the request head (CRLF CRLF, or LF LF).
awaitable<HeadRead> read_head(Scrape::Socket& sock, size_t max, std::string& head) {
    std::array<char, 1024> chunk;
    while (head.find("\r\n\r\n") == std::string::npos && head.find("\n\n") == std::string::npos) {
        if (head.size() >= max) co_return HeadRead::TooLarge;
        auto [ec, n] =
            co_await sock.async_read_some(asio::buffer(chunk), asio::as_tuple(asio::use_awaitable));
        if (ec) co_return HeadRead::Failed;
        head.append(chunk.data(), n);
    }
    co_return head.size() > max ? HeadRead::TooLarge : HeadRead::Complete;
}

/// Sends `response`, then ends the stream and discards what the client still sends until it
/// closes (or the deadline closes the socket): closing with unread input would reset the
/// connection and could destroy the response before the client has read it.
awaitable<void> respond(Scrape::Socket& sock, const std::string& response) {
    auto [ec, n] = co_await asio::async_write(sock, asio::buffer(response),
                                              asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    sock.shutdown(Scrape::Socket::shutdown_send, ec);
    std::array<char, 1024> sink;
    while (!ec) {
        auto [rec, got] =
            co_await sock.async_read_some(asio::buffer(sink), asio::as_tuple(asio::use_awaitable));
        ec = rec;
    }
}

/// Serves one scrape: the request head, then one response, then close; all before the deadline.
awaitable<void> serve_scrape(State s, std::shared_ptr<Scrape> c) {
    struct Done {
        State s;
        std::shared_ptr<Scrape> c;
        ~Done() {
            c->deadline.cancel();
            c->close();
            s->scrapes.erase(c);
            s->scrape_ended.notify_all();
        }
    } done{s, c};
    c->deadline.expires_after(std::chrono::milliseconds(s->limits.timeout_ms));
    c->deadline.async_wait([w = std::weak_ptr<Scrape>(c)](error_code ec) {
        if (auto c = w.lock(); c && !ec) c->close();
    });
    std::string head;
    const HeadRead r = co_await read_head(c->socket, s->limits.max_request_bytes, head);
    if (r == HeadRead::Failed || s->stopped) co_return;
    const ScrapeTarget target =
        r == HeadRead::TooLarge ? ScrapeTarget::BadRequest : classify_scrape(head);
    const std::string response = scrape_response(target, s->metrics);
    co_await respond(c->socket, response);
}

template <class Acceptor>
awaitable<void> accept_scrapes(State s, Acceptor& acceptor) {
    while (!s->stopped) {
        while (s->scrapes.size() >= s->limits.max_scrapes && !s->stopped)
            co_await s->scrape_ended.wait();
        if (s->stopped) break;
        auto [ec, sock] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
        if (s->stopped || ec == asio::error::operation_aborted) break;
        if (ec) {
            spdlog::warn("metrics: accept failed: {}; retrying in 100 ms", ec.message());
            s->retry.expires_after(std::chrono::milliseconds(100));
            co_await s->retry.async_wait(asio::as_tuple(asio::use_awaitable));
            continue;
        }
        auto c = std::make_shared<Scrape>(Scrape::Socket(std::move(sock)));
        s->scrapes.insert(c);
        asio::co_spawn(s->io, serve_scrape(s, c), log_if_thrown("metrics scrape"));
    }
}

/// Binds the unix socket at `path`, replacing a stale socket there.
Result<void> listen_unix(MetricsServer::State& s, const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code fe;
    if (fs::is_socket(path, fe)) fs::remove(path, fe);
    auto& a = s.local.emplace(s.io);
    const Local::endpoint ep(path);
    error_code ec;
    a.open(ep.protocol(), ec);
    if (!ec) a.bind(ep, ec);
    if (!ec) s.unix_path = path;
    if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
        return Error{ec.value(),
                     "--metrics: cannot listen on unix socket " + path + ": " + ec.message()};
    s.where = "unix socket " + path;
    return ok();
}

/// Binds the TCP address `host`:`port`; warns when it is reachable from other hosts.
Result<void> listen_tcp(MetricsServer::State& s, const std::string& host, uint16_t port) {
    error_code ec;
    const auto addr = asio::ip::make_address(host, ec);
    if (ec) return Error{EINVAL, "--metrics: invalid address '" + host + "': " + ec.message()};
    const Tcp::endpoint ep(addr, port);
    auto& a = s.tcp.emplace(s.io);
    a.open(ep.protocol(), ec);
    if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) a.bind(ep, ec);
    if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
    const std::string name = (addr.is_v6() ? "[" + host + "]" : host) + ":";
    if (ec)
        return Error{ec.value(), "--metrics: cannot listen on " + name + std::to_string(port) +
                                     ": " + ec.message()};
    s.where = name + std::to_string(a.local_endpoint(ec).port());
    if (!addr.is_loopback())
        spdlog::warn("metrics on {} can be read by anyone who reaches it (no authentication)",
                     s.where);
    return ok();
}

}  // namespace

MetricsServer::MetricsServer(asio::io_context& io, const Metrics& metrics, ScrapeLimits limits)
    : s_(std::make_shared<State>(io, metrics, limits)) {}

MetricsServer::~MetricsServer() {
    stop();
}

const std::string& MetricsServer::where() const {
    return s_->where;
}

Result<void> MetricsServer::listen(const MetricsAddress& a) {
    auto r = a.unix_path.empty() ? listen_tcp(*s_, a.host, a.port) : listen_unix(*s_, a.unix_path);
    if (!r) {
        stop();
        return r;
    }
    spdlog::info("metrics on {}", s_->where);
    if (s_->tcp) asio::co_spawn(s_->io, accept_scrapes(s_, *s_->tcp), log_if_thrown("metrics"));
    if (s_->local) asio::co_spawn(s_->io, accept_scrapes(s_, *s_->local), log_if_thrown("metrics"));
    return ok();
}

void MetricsServer::stop() {
    State& s = *s_;
    if (s.stopped) return;
    s.stopped = true;
    error_code ec;
    if (s.tcp) s.tcp->close(ec);
    if (s.local) s.local->close(ec);
    s.retry.cancel();
    for (const auto& c : s.scrapes) {
        c->deadline.cancel();
        c->close();
    }
    s.scrape_ended.notify_all();
    if (!s.unix_path.empty()) ::unlink(s.unix_path.c_str());
}

Result<std::unique_ptr<MetricsServer>> start_metrics(asio::io_context& io, const Metrics& metrics,
                                                     const std::string& spec) {
    if (spec.empty()) return std::unique_ptr<MetricsServer>();
    auto a = parse_metrics_address(spec);
    if (!a) return a.error();
    auto server = std::make_unique<MetricsServer>(io, metrics);
    if (auto r = server->listen(*a); !r) return r.error();
    return server;
}

}  // namespace qnbd::server
