// TLS for NBD (NBD_OPT_STARTTLS), on GnuTLS, the library qemu, nbdkit, libnbd and nbd-server
// use. Credentials come from qemu's directory layouts: x509 (ca-cert.pem, server-cert.pem,
// server-key.pem, optional dh-params.pem) or PSK (keys.psk, `username:hexkey` lines as
// psktool writes them). A TlsTransport wraps a connection's plain Transport once the client
// has asked for TLS; the protocol code above it does not change.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "base/result.hpp"
#include "server/tls_config.hpp"
#include "server/transport.hpp"

namespace qnbd::server {

/// Loaded server credentials, shared by every connection.
class TlsCredentials {
  public:
    /// Loads the files of `c.dir`; the error names the file and what is wrong with it.
    static Result<std::shared_ptr<const TlsCredentials>> load(const TlsCredsConfig& c);
    ~TlsCredentials();
    TlsCredentials(const TlsCredentials&) = delete;
    TlsCredentials& operator=(const TlsCredentials&) = delete;

    const TlsCredsConfig& config() const { return cfg_; }
    /// The GnuTLS credential handles (tls.cpp).
    struct Handles;

  private:
    explicit TlsCredentials(TlsCredsConfig c);
    friend class TlsTransport;
    TlsCredsConfig cfg_;
    std::unique_ptr<Handles> h_;
};

/// A TLS server session over another Transport.
class TlsTransport final : public Transport {
  public:
    TlsTransport(std::unique_ptr<Transport> inner, std::shared_ptr<const TlsCredentials> creds);
    ~TlsTransport() override;

    /// Runs the TLS handshake and checks the client (certificate, authz identity). On failure
    /// the error says why, for the log; the connection must then be closed.
    awaitable<Result<void>> handshake();
    /// The client's identity: its certificate's distinguished name or its PSK username.
    const std::string& identity() const { return identity_; }

    awaitable<error_code> read(std::span<std::byte> buf) override;
    awaitable<std::pair<error_code, size_t>> read_some(std::span<std::byte> buf) override;
    awaitable<error_code> write(std::span<const asio::const_buffer> bufs) override;
    void shutdown_read() override { inner_->shutdown_read(); }
    /// Sends close_notify, so the client sees the session end rather than a cut connection.
    awaitable<void> finish() override;
    void close() override { inner_->close(); }
    const std::string& peer() const override { return inner_->peer(); }
    /// The GnuTLS session and its ciphertext buffers (tls.cpp).
    struct Session;

  private:
    /// Replies up to this size are corked into as few records as possible.
    static constexpr size_t kCorkLimit = 64 * 1024;
    /// Reads more ciphertext from the inner transport.
    awaitable<error_code> fill();
    /// Writes the ciphertext GnuTLS produced, in order, one writer at a time.
    awaitable<error_code> flush();
    Result<void> check_peer();

    std::unique_ptr<Transport> inner_;
    std::shared_ptr<const TlsCredentials> creds_;
    std::unique_ptr<Session> s_;
    std::string identity_;
};

}  // namespace qnbd::server
