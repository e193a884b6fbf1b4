#include "server/server.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>
#include <filesystem>

namespace qnbd::server {

namespace {

std::string endpoint_name(const asio::ip::tcp::endpoint& ep) {
    auto a = ep.address();
    return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" +
           std::to_string(ep.port());
}

}  // namespace

Server::Server(asio::io_context& io, const Config& cfg, ExportRegistry& exports)
    : io_(io), cfg_(cfg), exports_(exports) {}

ConnectionLimits Server::limits() const {
    ConnectionLimits l;
    l.handshake_timeout_s = cfg_.handshake_timeout_s;
    l.verbose = cfg_.verbose;
    return l;
}

Result<void> Server::listen() {
    error_code ec;
    if (!cfg_.socket_path.empty()) {
        namespace fs = std::filesystem;
        if (fs::is_socket(cfg_.socket_path)) fs::remove(cfg_.socket_path);
        unix_.emplace(io_);
        asio::local::stream_protocol::endpoint ep(cfg_.socket_path);
        unix_->open(ep.protocol(), ec);
        if (!ec) unix_->bind(ep, ec);
        if (!ec) unix_->listen(asio::socket_base::max_listen_connections, ec);
        if (ec)
            return Error{ec.value(),
                         "cannot listen on unix socket " + cfg_.socket_path + ": " + ec.message()};
        spdlog::info("listening on unix socket {}", cfg_.socket_path);
        return ok();
    }
    auto addr = asio::ip::make_address(cfg_.bind, ec);
    if (ec) return Error{EINVAL, "invalid bind address '" + cfg_.bind + "': " + ec.message()};
    asio::ip::tcp::endpoint ep(addr, cfg_.port);
    tcp_.emplace(io_);
    tcp_->open(ep.protocol(), ec);
    if (!ec) tcp_->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) tcp_->bind(ep, ec);
    if (!ec) tcp_->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Error{ec.value(), "cannot listen on " + endpoint_name(ep) + ": " + ec.message()};
    spdlog::info("listening on {}", endpoint_name(tcp_->local_endpoint()));
    if (addr.is_loopback())
        spdlog::info(
            "only local clients can connect; use -b 0.0.0.0 (or -b ::) to export on all "
            "interfaces");
    return ok();
}

template <class Acceptor>
awaitable<void> Server::accept_loop(Acceptor& acceptor) {
    ++accept_loops_;
    struct Done {
        Server* s;
        ~Done() {
            --s->accept_loops_;
            s->changed_.notify_all();
        }
    } done{this};
    while (!stopping_) {
        while (cfg_.shared && clients_ >= cfg_.shared && !stopping_) co_await changed_.wait();
        if (stopping_) break;
        auto [ec, sock] = co_await acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) {
            if (stopping_ || ec == asio::error::operation_aborted) break;
            spdlog::warn("accept failed: {}", ec.message());
            continue;
        }
        std::string peer = "client";
        if constexpr (std::is_same_v<Acceptor, asio::ip::tcp::acceptor>) {
            error_code e2;
            sock.set_option(asio::ip::tcp::no_delay(true), e2);
            auto ep = sock.remote_endpoint(e2);
            peer = e2 ? "tcp client" : endpoint_name(ep);
        } else {
            peer = "unix client " + std::to_string(sock.native_handle());
        }
        using Socket = std::decay_t<decltype(sock)>;
        auto t = std::make_unique<SocketTransport<Socket>>(std::move(sock), peer);
        asio::co_spawn(io_, serve_client(std::move(t)), asio::detached);
    }
}

awaitable<void> Server::serve_client(std::unique_ptr<Transport> t) {
    ++clients_;
    had_client_ = true;
    const std::string peer = t->peer();
    spdlog::info("{}: connected ({} client{})", peer, clients_, clients_ == 1 ? "" : "s");
    auto conn = std::make_shared<Connection>(io_.get_executor(), std::move(t), exports_, limits());
    connections_.insert(conn);
    co_await conn->run();
    connections_.erase(conn);
    --clients_;
    spdlog::info("{}: disconnected", peer);
    changed_.notify_all();
    if (!cfg_.persistent && clients_ == 0) stop(false);
}

awaitable<void> Server::run_attached(std::unique_ptr<Transport> t, Negotiated n) {
    auto conn = std::make_shared<Connection>(io_.get_executor(), std::move(t), exports_, limits());
    co_await conn->serve(std::move(n));
}

void Server::stop(bool drop_clients) {
    if (drop_clients)
        for (auto& c : connections_) c->shutdown();
    if (stopping_) return;
    stopping_ = true;
    error_code ec;
    if (tcp_) tcp_->close(ec);
    if (unix_) unix_->close(ec);
    changed_.notify_all();
}

awaitable<void> Server::run() {
    asio::signal_set signals(io_, SIGINT, SIGTERM);
    signals.async_wait([this](error_code ec, int sig) {
        if (ec) return;
        spdlog::info("signal {} received; shutting down", sig);
        stop(true);
    });
    if (tcp_) asio::co_spawn(io_, accept_loop(*tcp_), asio::detached);
    if (unix_) asio::co_spawn(io_, accept_loop(*unix_), asio::detached);
    while (!stopping_ || clients_ > 0 || accept_loops_ > 0) co_await changed_.wait();
    signals.cancel();
    if (!cfg_.socket_path.empty()) ::unlink(cfg_.socket_path.c_str());
}

}  // namespace qnbd::server
