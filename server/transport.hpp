// The byte stream a connection runs over. Connections only see Transport: after
// NBD_OPT_STARTTLS the negotiation replaces the plain one with a TlsTransport wrapping it
// (server/tls.hpp), and nothing above it changes.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/system/error_code.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "server/ring_stream.hpp"

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

/// Transport over a connected Asio stream socket (TCP or unix). The socket's receives and
/// sends run through the reactor's io_uring (RingStream); Asio owns the descriptor and its
/// shutdown and close.
template <class Socket>
class SocketTransport final : public Transport {
  public:
    SocketTransport(Socket socket, std::string peer)
        : socket_(std::move(socket)),
          stream_(socket_.get_executor(), socket_.native_handle()),
          peer_(std::move(peer)) {}
    ~SocketTransport() override { stream_.detach(); }

    // The stream's awaitables are returned as they are: no frame of this layer's own.
    awaitable<error_code> read(std::span<std::byte> buf) override { return stream_.read(buf); }
    awaitable<std::pair<error_code, size_t>> read_some(std::span<std::byte> buf) override {
        return stream_.read_some(buf);
    }
    awaitable<error_code> write(std::span<const asio::const_buffer> bufs) override {
        return stream_.write(bufs);
    }
    void shutdown_read() override {
        // A pending receive ends with eof: the shutdown wakes it in the kernel.
        error_code ec;
        socket_.shutdown(Socket::shutdown_receive, ec);
    }
    void close() override {
        error_code ec;
        socket_.shutdown(Socket::shutdown_both, ec);
        stream_.detach();
        socket_.close(ec);
    }
    const std::string& peer() const override { return peer_; }

  private:
    Socket socket_;
    RingStream stream_;
    std::string peer_;
};

}  // namespace qnbd::server
