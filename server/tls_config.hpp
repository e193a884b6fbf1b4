// TLS settings as qemu-nbd spells them: `--object tls-creds-x509,...` or
// `--object tls-creds-psk,...`, `--object authz-simple,...`, `--tls-creds ID`,
// `--tls-authz ID`.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "base/result.hpp"

namespace qnbd::server {

/// The server credentials `--tls-creds` names.
struct TlsCredsConfig {
    enum class Kind { X509, Psk };
    Kind kind = Kind::X509;
    std::string id;
    std::string dir;          ///< qemu's layout (server/tls.hpp).
    bool verify_peer = true;  ///< x509: require and verify a client certificate (qemu's default).
    std::optional<std::string> authz_identity;  ///< --tls-authz: the only identity let in.
};

/// Resolves the `--object` definitions and the ids of `--tls-creds` and `--tls-authz` (empty:
/// not given). nullopt without --tls-creds; an error names the bad definition or option.
Result<std::optional<TlsCredsConfig>> resolve_tls(const std::vector<std::string>& objects,
                                                  const std::string& creds_id,
                                                  const std::string& authz_id);

}  // namespace qnbd::server
