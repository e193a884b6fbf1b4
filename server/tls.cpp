// GnuTLS sessions over a Transport. GnuTLS runs on memory buffers: its pull callback takes
// ciphertext already received (or says "again"), its push callback appends to an output
// buffer; the coroutines around each GnuTLS call do the socket I/O. Reads and writes may run
// at the same time (the connection's reader and its reply writer), as GnuTLS allows for one
// session; ciphertext leaves in the order GnuTLS produced it.
#include "server/tls.hpp"

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "base/async.hpp"

namespace qnbd::server {

namespace {

/// qemu's PSK priority string, and its default for certificates.
constexpr const char* kPriorityX509 = "NORMAL";
constexpr const char* kPriorityPsk = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK";

Error tls_error(const std::string& what, int rc) {
    return Error{EPROTO, what + ": " + gnutls_strerror(rc)};
}

bool readable(const std::string& path) {
    return std::ifstream(path).good();
}

/// The key of `user` in a keys.psk file (`username:hexkey` per line).
std::optional<std::string> psk_key(const std::string& file, const std::string& user) {
    std::ifstream in(file);
    std::string line;
    while (std::getline(in, line)) {
        const auto colon = line.find(':');
        if (colon != std::string::npos && line.compare(0, colon, user) == 0 && colon == user.size())
            return line.substr(colon + 1);
    }
    return std::nullopt;
}

int psk_lookup(gnutls_session_t s, const char* user, gnutls_datum_t* key) {
    const auto* file = static_cast<const std::string*>(gnutls_session_get_ptr(s));
    auto hex = psk_key(*file, user);
    if (!hex) return -1;
    const gnutls_datum_t h{reinterpret_cast<unsigned char*>(hex->data()),
                           static_cast<unsigned>(hex->size())};
    return gnutls_hex_decode2(&h, key) == 0 ? 0 : -1;
}

}  // namespace

struct TlsCredentials::Handles {
    gnutls_certificate_credentials_t x509 = nullptr;
    gnutls_psk_server_credentials_t psk = nullptr;
    gnutls_dh_params_t dh = nullptr;
    std::string psk_file;
    ~Handles() {
        if (x509) gnutls_certificate_free_credentials(x509);
        if (psk) gnutls_psk_free_server_credentials(psk);
        if (dh) gnutls_dh_params_deinit(dh);
    }
};

TlsCredentials::TlsCredentials(TlsCredsConfig c) : cfg_(std::move(c)) {}
TlsCredentials::~TlsCredentials() = default;

static Result<void> load_dh(gnutls_dh_params_t& dh, const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string pem = ss.str();
    if (int rc = gnutls_dh_params_init(&dh); rc < 0) return tls_error(path, rc);
    const gnutls_datum_t d{reinterpret_cast<unsigned char*>(pem.data()),
                           static_cast<unsigned>(pem.size())};
    if (int rc = gnutls_dh_params_import_pkcs3(dh, &d, GNUTLS_X509_FMT_PEM); rc < 0)
        return tls_error(path, rc);
    return ok();
}

static Result<void> load_x509(TlsCredentials::Handles& h, const std::string& dir) {
    const std::string ca = dir + "/ca-cert.pem", cert = dir + "/server-cert.pem",
                      key = dir + "/server-key.pem", dh = dir + "/dh-params.pem";
    for (const auto& f : {ca, cert, key})
        if (!readable(f)) return Error{ENOENT, "cannot read " + f};
    if (int rc = gnutls_certificate_allocate_credentials(&h.x509); rc < 0)
        return tls_error("x509 credentials", rc);
    if (int rc = gnutls_certificate_set_x509_trust_file(h.x509, ca.c_str(), GNUTLS_X509_FMT_PEM);
        rc < 0)
        return tls_error(ca, rc);
    if (int rc = gnutls_certificate_set_x509_key_file(h.x509, cert.c_str(), key.c_str(),
                                                      GNUTLS_X509_FMT_PEM);
        rc < 0)
        return tls_error(cert + " and " + key, rc);
    if (readable(dh)) {
        if (auto r = load_dh(h.dh, dh); !r) return r;
        gnutls_certificate_set_dh_params(h.x509, h.dh);
    } else {
        gnutls_certificate_set_known_dh_params(h.x509, GNUTLS_SEC_PARAM_MEDIUM);
    }
    return ok();
}

static Result<void> load_psk(TlsCredentials::Handles& h, const std::string& dir) {
    h.psk_file = dir + "/keys.psk";
    if (!readable(h.psk_file)) return Error{ENOENT, "cannot read " + h.psk_file};
    if (int rc = gnutls_psk_allocate_server_credentials(&h.psk); rc < 0)
        return tls_error("PSK credentials", rc);
    gnutls_psk_set_server_credentials_function(h.psk, psk_lookup);
    gnutls_psk_set_server_known_dh_params(h.psk, GNUTLS_SEC_PARAM_MEDIUM);
    return ok();
}

Result<std::shared_ptr<const TlsCredentials>> TlsCredentials::load(const TlsCredsConfig& c) {
    std::shared_ptr<TlsCredentials> creds(new TlsCredentials(c));
    creds->h_ = std::make_unique<Handles>();
    auto r = c.kind == TlsCredsConfig::Kind::X509 ? load_x509(*creds->h_, c.dir)
                                                  : load_psk(*creds->h_, c.dir);
    if (!r) return Error{r.error().code, "TLS credentials '" + c.id + "': " + r.error().message};
    return std::shared_ptr<const TlsCredentials>(std::move(creds));
}

/// One GnuTLS session and its ciphertext buffers.
struct TlsTransport::Session {
    gnutls_session_t s = nullptr;
    std::vector<std::byte> in;  ///< Received ciphertext not yet taken by GnuTLS.
    size_t in_pos = 0;
    std::vector<std::byte> out;    ///< Ciphertext produced, not yet written.
    std::vector<std::byte> spare;  ///< The buffer being written; swapped with `out`.
    bool flushing = false;
    error_code out_error;
    Notifier flushed;
    ~Session() {
        if (s) gnutls_deinit(s);
    }
};

static ssize_t tls_push(gnutls_transport_ptr_t p, const void* data, size_t n) {
    auto& out = static_cast<TlsTransport::Session*>(p)->out;
    const auto* b = static_cast<const std::byte*>(data);
    out.insert(out.end(), b, b + n);
    return static_cast<ssize_t>(n);
}

static ssize_t tls_pull(gnutls_transport_ptr_t p, void* data, size_t n) {
    auto* ss = static_cast<TlsTransport::Session*>(p);
    const size_t avail = ss->in.size() - ss->in_pos;
    if (avail == 0) {
        gnutls_transport_set_errno(ss->s, EAGAIN);
        return -1;
    }
    n = std::min(n, avail);
    std::memcpy(data, ss->in.data() + ss->in_pos, n);
    ss->in_pos += n;
    return static_cast<ssize_t>(n);
}

TlsTransport::TlsTransport(std::unique_ptr<Transport> inner,
                           std::shared_ptr<const TlsCredentials> creds)
    : inner_(std::move(inner)), creds_(std::move(creds)), s_(std::make_unique<Session>()) {}

TlsTransport::~TlsTransport() = default;

static Result<void> setup_session(TlsTransport::Session& ss, const TlsCredentials::Handles& h,
                                  const TlsCredsConfig& c) {
    if (int rc = gnutls_init(&ss.s, GNUTLS_SERVER | GNUTLS_NONBLOCK); rc < 0)
        return tls_error("TLS session", rc);
    const bool x509 = c.kind == TlsCredsConfig::Kind::X509;
    if (int rc = gnutls_priority_set_direct(ss.s, x509 ? kPriorityX509 : kPriorityPsk, nullptr);
        rc < 0)
        return tls_error("TLS priorities", rc);
    const int rc = x509 ? gnutls_credentials_set(ss.s, GNUTLS_CRD_CERTIFICATE, h.x509)
                        : gnutls_credentials_set(ss.s, GNUTLS_CRD_PSK, h.psk);
    if (rc < 0) return tls_error("TLS credentials", rc);
    if (x509)
        gnutls_certificate_server_set_request(
            ss.s, c.verify_peer ? GNUTLS_CERT_REQUIRE : GNUTLS_CERT_IGNORE);
    else
        gnutls_session_set_ptr(ss.s, const_cast<std::string*>(&h.psk_file));
    gnutls_transport_set_ptr(ss.s, &ss);
    gnutls_transport_set_push_function(ss.s, tls_push);
    gnutls_transport_set_pull_function(ss.s, tls_pull);
    gnutls_handshake_set_timeout(ss.s, 0);  // the connection's handshake timeout applies
    return ok();
}

awaitable<Result<void>> TlsTransport::handshake() {
    if (auto r = setup_session(*s_, *creds_->h_, creds_->cfg_); !r) co_return r;
    for (;;) {
        const int rc = gnutls_handshake(s_->s);
        if (auto ec = co_await flush(); ec)
            co_return Error{EPIPE, "TLS handshake: " + ec.message()};
        if (rc == GNUTLS_E_SUCCESS) break;
        if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED)
            co_return tls_error("TLS handshake failed", rc);
        if (gnutls_record_get_direction(s_->s) == 0)
            if (auto ec = co_await fill(); ec)
                co_return Error{EPIPE, "TLS handshake: " + ec.message()};
    }
    co_return check_peer();
}

static std::string certificate_dn(gnutls_session_t s) {
    unsigned n = 0;
    const gnutls_datum_t* certs = gnutls_certificate_get_peers(s, &n);
    if (!certs || n == 0) return {};
    gnutls_x509_crt_t crt;
    if (gnutls_x509_crt_init(&crt) < 0) return {};
    std::string dn;
    if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0) {
        size_t len = 0;
        gnutls_x509_crt_get_dn(crt, nullptr, &len);
        dn.resize(len);
        if (gnutls_x509_crt_get_dn(crt, dn.data(), &len) == 0)
            dn.resize(std::strlen(dn.c_str()));
        else
            dn.clear();
    }
    gnutls_x509_crt_deinit(crt);
    return dn;
}

Result<void> TlsTransport::check_peer() {
    const TlsCredsConfig& c = creds_->cfg_;
    if (c.kind == TlsCredsConfig::Kind::X509) {
        if (c.verify_peer) {
            unsigned status = 0;
            if (int rc = gnutls_certificate_verify_peers2(s_->s, &status); rc < 0)
                return tls_error("client certificate", rc);
            if (status != 0) {
                gnutls_datum_t why{};
                gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &why, 0);
                std::string msg = why.data ? reinterpret_cast<const char*>(why.data) : "invalid";
                gnutls_free(why.data);
                return Error{EACCES, "client certificate refused: " + msg};
            }
        }
        identity_ = certificate_dn(s_->s);
    } else if (const char* user = gnutls_psk_server_get_username(s_->s)) {
        identity_ = user;
    }
    if (c.authz_identity && identity_ != *c.authz_identity)
        return Error{EACCES, "client identity '" + identity_ + "' is not authorized"};
    return ok();
}

awaitable<error_code> TlsTransport::fill() {
    if (s_->in_pos == s_->in.size()) {
        s_->in.clear();
        s_->in_pos = 0;
    }
    const size_t used = s_->in.size();
    s_->in.resize(used + 64 * 1024);
    auto [ec, n] = co_await inner_->read_some(std::span(s_->in).subspan(used));
    s_->in.resize(used + n);
    co_return ec;
}

awaitable<error_code> TlsTransport::flush() {
    while (s_->flushing) co_await s_->flushed.wait();
    if (s_->out_error) co_return s_->out_error;
    s_->flushing = true;
    error_code ec;
    while (!s_->out.empty() && !ec) {
        // Both buffers keep their capacity: no allocation per reply once they have grown.
        std::swap(s_->out, s_->spare);
        const asio::const_buffer b(s_->spare.data(), s_->spare.size());
        ec = co_await inner_->write({&b, 1});
        s_->spare.clear();
    }
    s_->flushing = false;
    s_->out_error = ec;
    s_->flushed.notify_all();
    co_return ec;
}

awaitable<std::pair<error_code, size_t>> TlsTransport::read_some(std::span<std::byte> buf) {
    for (;;) {
        const ssize_t rc = gnutls_record_recv(s_->s, buf.data(), buf.size());
        if (!s_->out.empty())  // an alert or a key update answer
            if (auto ec = co_await flush(); ec) co_return std::pair{ec, size_t{0}};
        if (rc > 0) co_return std::pair{error_code{}, static_cast<size_t>(rc)};
        if (rc == 0 || rc == GNUTLS_E_PREMATURE_TERMINATION)
            co_return std::pair{error_code(asio::error::eof), size_t{0}};
        if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED)
            co_return std::pair{error_code(asio::error::connection_aborted), size_t{0}};
        if (rc == GNUTLS_E_AGAIN)
            if (auto ec = co_await fill(); ec) co_return std::pair{ec, size_t{0}};
    }
}

awaitable<error_code> TlsTransport::read(std::span<std::byte> buf) {
    for (size_t done = 0; done < buf.size();) {
        auto [ec, n] = co_await read_some(buf.subspan(done));
        if (ec) co_return ec;
        done += n;
    }
    co_return error_code{};
}

awaitable<error_code> TlsTransport::write(std::span<const asio::const_buffer> bufs) {
    // A small reply is corked so that its pieces share one record. A large one is not: the
    // cork would copy all of it into GnuTLS's buffer first, and its records are full anyway.
    size_t total = 0;
    for (const auto& b : bufs) total += b.size();
    const bool cork = total <= kCorkLimit;
    if (cork) gnutls_record_cork(s_->s);
    for (const auto& b : bufs) {
        const auto* p = static_cast<const char*>(b.data());
        for (size_t done = 0; done < b.size();) {
            const ssize_t rc = gnutls_record_send(s_->s, p + done, b.size() - done);
            if (rc < 0 && rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED)
                co_return asio::error::connection_aborted;
            if (rc > 0) done += static_cast<size_t>(rc);
        }
    }
    while (cork) {
        const int rc = gnutls_record_uncork(s_->s, 0);
        if (rc >= 0) break;
        if (rc != GNUTLS_E_AGAIN && rc != GNUTLS_E_INTERRUPTED)
            co_return asio::error::connection_aborted;
    }
    co_return co_await flush();
}

awaitable<void> TlsTransport::finish() {
    // The alert goes into the ciphertext buffer (the push function never blocks), then out.
    int rc = GNUTLS_E_AGAIN;
    for (int i = 0; i < 4 && (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED); ++i)
        rc = gnutls_bye(s_->s, GNUTLS_SHUT_WR);
    if (rc == GNUTLS_E_SUCCESS) (void)co_await flush();
}

}  // namespace qnbd::server
