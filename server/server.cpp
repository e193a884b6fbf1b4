#include "server/server.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "server/spawn.hpp"

namespace qnbd::server {

namespace {

using std::chrono::milliseconds;

std::string endpoint_name(const asio::ip::tcp::endpoint& ep) {
    auto a = ep.address();
    return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" +
           std::to_string(ep.port());
}

/// The transport of an accepted TCP client, named by its address.
std::unique_ptr<Transport> accepted(asio::ip::tcp::socket sock) {
    error_code ec;
    sock.set_option(asio::ip::tcp::no_delay(true), ec);
    auto ep = sock.remote_endpoint(ec);
    std::string peer = ec ? "tcp client" : endpoint_name(ep);
    return std::make_unique<SocketTransport<asio::ip::tcp::socket>>(std::move(sock), peer);
}

/// The transport of an accepted unix socket client, named by its descriptor.
std::unique_ptr<Transport> accepted(asio::local::stream_protocol::socket sock) {
    std::string peer = "unix client " + std::to_string(sock.native_handle());
    return std::make_unique<SocketTransport<asio::local::stream_protocol::socket>>(std::move(sock),
                                                                                   peer);
}

/// When to accept again after failures. Asio retries the per-connection errors (ECONNABORTED,
/// EPROTO) itself, so what reaches the loop (EMFILE, ENFILE, ENOBUFS, ENOMEM) lasts until
/// descriptors or memory are freed: retrying at once would spin. The wait starts at 100 ms and
/// doubles up to 1 s; a success ends the episode. Each episode is logged when it starts and,
/// with its count, when it ends.
class AcceptBackoff {
  public:
    /// Records a failure; returns how long to wait before the next accept.
    milliseconds failed(const error_code& ec) {
        if (failures_++ == 0) {
            spdlog::warn("accept failed: {}; retrying with backoff", ec.message());
            start_ = std::chrono::steady_clock::now();
            delay_ = kFirst;
        } else {
            delay_ = std::min(delay_ * 2, kMax);
        }
        last_ = ec;
        return delay_;
    }
    /// Ends the current episode of failures, if any, logging how it went.
    void ended(const char* outcome) {
        if (!failures_) return;
        auto ms =
            std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start_);
        spdlog::warn("accept failed {} times in {} ms (last: {}); {}", failures_, ms.count(),
                     last_.message(), outcome);
        failures_ = 0;
    }

  private:
    static constexpr milliseconds kFirst{100}, kMax{1000};
    uint64_t failures_ = 0;
    milliseconds delay_{0};
    error_code last_;
    std::chrono::steady_clock::time_point start_;
};

}  // namespace

Server::Server(asio::io_context& io, const Config& cfg, ExportRegistry& exports, Metrics* metrics,
               std::shared_ptr<const TlsCredentials> tls)
    : io_(io), cfg_(cfg), exports_(exports), metrics_(metrics), tls_(std::move(tls)) {}

ConnectionLimits Server::limits() const {
    ConnectionLimits l;
    l.handshake_timeout_s = cfg_.handshake_timeout_s;
    return l;
}

Result<void> Server::listen() {
    error_code ec;
    if (!cfg_.socket_path.empty()) {
        namespace fs = std::filesystem;
        if (fs::is_socket(cfg_.socket_path)) fs::remove(cfg_.socket_path);
        auto& a = unix_.emplace(io_).acceptor;
        asio::local::stream_protocol::endpoint ep(cfg_.socket_path);
        a.open(ep.protocol(), ec);
        if (!ec) a.bind(ep, ec);
        if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
        if (ec)
            return Error{ec.value(),
                         "cannot listen on unix socket " + cfg_.socket_path + ": " + ec.message()};
        where_ = "unix socket " + cfg_.socket_path;
        spdlog::info("listening on {}", where_);
        return ok();
    }
    auto addr = asio::ip::make_address(cfg_.bind, ec);
    if (ec) return Error{EINVAL, "invalid bind address '" + cfg_.bind + "': " + ec.message()};
    asio::ip::tcp::endpoint ep(addr, cfg_.port);
    auto& a = tcp_.emplace(io_).acceptor;
    a.open(ep.protocol(), ec);
    if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) a.bind(ep, ec);
    if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Error{ec.value(), "cannot listen on " + endpoint_name(ep) + ": " + ec.message()};
    where_ = endpoint_name(a.local_endpoint());
    spdlog::info("listening on {}", where_);
    if (addr.is_loopback())
        spdlog::info(
            "only local clients can connect; use -b 0.0.0.0 (or -b ::) to export on all "
            "interfaces");
    return ok();
}

Result<void> Server::adopt(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
        return Error{errno, std::string("socket activation: getsockname: ") + std::strerror(errno)};
    error_code ec;
    if (ss.ss_family == AF_UNIX) {
        auto& a = unix_.emplace(io_).acceptor;
        a.assign(asio::local::stream_protocol(), fd, ec);
        if (!ec) where_ = "unix socket " + a.local_endpoint(ec).path();
    } else if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
        auto& a = tcp_.emplace(io_).acceptor;
        a.assign(ss.ss_family == AF_INET ? asio::ip::tcp::v4() : asio::ip::tcp::v6(), fd, ec);
        if (!ec) where_ = endpoint_name(a.local_endpoint(ec));
    } else {
        return Error{EINVAL, "socket activation: fd " + std::to_string(fd) +
                                 " is neither a TCP nor a unix socket"};
    }
    if (ec) return Error{ec.value(), "socket activation: " + ec.message()};
    spdlog::info("listening on {} (socket activation)", where_);
    return ok();
}

template <class Acceptor>
awaitable<void> Server::accept_loop(Listener<Acceptor>& l) {
    ++accept_loops_;
    struct Done {
        Server* s;
        ~Done() {
            --s->accept_loops_;
            s->changed_.notify_all();
        }
    } done{this};
    AcceptBackoff backoff;
    while (!stopping_) {
        while (cfg_.shared && clients_ >= cfg_.shared && !stopping_) co_await changed_.wait();
        if (stopping_) break;
        auto [ec, sock] = co_await l.acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) {
            if (stopping_ || ec == asio::error::operation_aborted) break;
            l.retry.expires_after(backoff.failed(ec));
            co_await l.retry.async_wait(asio::as_tuple(asio::use_awaitable));
            continue;
        }
        backoff.ended("accepting again");
        auto t = accepted(std::move(sock));
        const std::string peer = t->peer();
        asio::co_spawn(io_, serve_client(std::move(t)), log_if_thrown(peer));
    }
    backoff.ended("stopped accepting");
}

awaitable<void> Server::serve_client(std::unique_ptr<Transport> t) {
    const std::string peer = t->peer();
    auto conn =
        std::make_shared<Connection>(io_.get_executor(), std::move(t), exports_, limits(), tls_);
    connections_.insert(conn);
    ++clients_;
    ++served_;
    if (metrics_) metrics_->connection_opened();
    // Also when run() throws: the client must not stay counted, or the server would never stop.
    struct Left {
        Server* s;
        std::shared_ptr<Connection> conn;
        ~Left() { s->client_left(conn); }
    } left{this, conn};
    spdlog::info("{}: connected ({} client{})", peer, clients_, clients_ == 1 ? "" : "s");
    co_await conn->run();
    spdlog::info("{}: disconnected", peer);
}

size_t Server::connections_to(const Export* e) const {
    size_t n = 0;
    for (const auto& c : connections_) n += c->export_in_use() == e;
    return n;
}

awaitable<bool> Server::wait_export_idle(const Export* e, std::chrono::seconds timeout) {
    // An operator's command, not the request path: polling every 50 ms is plenty.
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    asio::steady_timer timer(io_);
    while (connections_to(e) && std::chrono::steady_clock::now() < deadline) {
        timer.expires_after(std::chrono::milliseconds(50));
        co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
    co_return connections_to(e) == 0;
}

void Server::shutdown_export(const Export* e) {
    for (const auto& c : connections_)
        if (c->export_in_use() == e) c->shutdown();
}

void Server::client_left(const std::shared_ptr<Connection>& conn) {
    connections_.erase(conn);
    --clients_;
    if (metrics_) metrics_->connection_closed();
    changed_.notify_all();
    if (!cfg_.persistent && clients_ == 0) stop(false);
}

awaitable<void> Server::run_attached(std::unique_ptr<Transport> t, Negotiated n) {
    auto conn = std::make_shared<Connection>(io_.get_executor(), std::move(t), exports_, limits());
    struct Counted {
        Metrics* m;
        ~Counted() {
            if (m) m->connection_closed();
        }
    } counted{metrics_};
    if (metrics_) metrics_->connection_opened();
    co_await conn->serve(std::move(n));
}

void Server::stop(bool drop_clients) {
    if (drop_clients)
        for (auto& c : connections_) c->shutdown();
    if (stopping_) return;
    stopping_ = true;
    error_code ec;
    if (tcp_) {
        tcp_->acceptor.close(ec);
        tcp_->retry.cancel();
    }
    if (unix_) {
        unix_->acceptor.close(ec);
        unix_->retry.cancel();
    }
    changed_.notify_all();
}

awaitable<void> Server::run() {
    if (tcp_) asio::co_spawn(io_, accept_loop(*tcp_), log_if_thrown("accept loop"));
    if (unix_) asio::co_spawn(io_, accept_loop(*unix_), log_if_thrown("accept loop"));
    while (!stopping_ || clients_ > 0 || accept_loops_ > 0) co_await changed_.wait();
    if (!cfg_.socket_path.empty()) ::unlink(cfg_.socket_path.c_str());
}

}  // namespace qnbd::server
