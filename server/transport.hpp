// The byte stream a connection runs over. Connections only see Transport: after
// NBD_OPT_STARTTLS the negotiation replaces the plain one with a TlsTransport wrapping it
// (server/tls.hpp), and nothing above it changes.
#pragma once

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/system/error_code.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qnbd::server {

namespace asio = boost::asio;
using asio::awaitable;
using boost::system::error_code;

/// A full-duplex byte stream with exact reads and complete gather writes.
class Transport {
  public:
    virtual ~Transport() = default;
    /// Fills `buf` completely, or fails (eof included).
    virtual awaitable<error_code> read(std::span<std::byte> buf) = 0;
    /// Reads at least one byte into `buf` (as many as are ready), or fails (eof included).
    virtual awaitable<std::pair<error_code, size_t>> read_some(std::span<std::byte> buf) = 0;
    /// Writes every buffer in order, or fails.
    virtual awaitable<error_code> write(std::span<const asio::const_buffer> bufs) = 0;
    /// Stops receiving: a pending or later read ends (with what was already received, then
    /// eof); writes go on.
    virtual void shutdown_read() = 0;
    /// Ends the stream cleanly before close(): TLS sends its close_notify alert; a plain
    /// stream has nothing to send. The caller bounds the time it may take.
    virtual awaitable<void> finish() { co_return; }
    /// Closes the stream; pending operations fail.
    virtual void close() = 0;
    /// A printable name of the peer, for logs.
    virtual const std::string& peer() const = 0;
};

/// Transport over a connected Asio stream socket (TCP or unix).
template <class Socket>
class SocketTransport final : public Transport {
  public:
    SocketTransport(Socket socket, std::string peer)
        : socket_(std::move(socket)), peer_(std::move(peer)) {}

    awaitable<error_code> read(std::span<std::byte> buf) override {
        auto [ec, n] = co_await asio::async_read(socket_, asio::buffer(buf.data(), buf.size()),
                                                 asio::as_tuple(asio::use_awaitable));
        co_return ec;
    }
    awaitable<std::pair<error_code, size_t>> read_some(std::span<std::byte> buf) override {
        auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buf.data(), buf.size()),
                                                        asio::as_tuple(asio::use_awaitable));
        co_return std::pair{ec, n};
    }
    awaitable<error_code> write(std::span<const asio::const_buffer> bufs) override {
        // The caller's list stays put until the write completes: no copy.
        auto [ec, n] =
            co_await asio::async_write(socket_, bufs, asio::as_tuple(asio::use_awaitable));
        co_return ec;
    }
    void shutdown_read() override {
        error_code ec;
        socket_.shutdown(Socket::shutdown_receive, ec);
    }
    void close() override {
        error_code ec;
        socket_.shutdown(Socket::shutdown_both, ec);
        socket_.close(ec);
    }
    const std::string& peer() const override { return peer_; }

  private:
    Socket socket_;
    std::string peer_;
};

}  // namespace qnbd::server
