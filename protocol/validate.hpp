// Per-request validation: which NBD error a request gets before it reaches the disk, and
// whether its payload must still be consumed or the connection closed instead.
#pragma once

#include <cstdint>
#include <string_view>

#include "protocol/constants.hpp"
#include "protocol/transmission.hpp"

namespace qnbd::nbd {

/// What the connection negotiated, as the validator needs it.
struct Session {
    uint64_t export_size = 0;
    /// Transmission flags sent to the client (see transmission_flags()): READ_ONLY, and the
    /// SEND_* bits that say which commands and flags the client may use.
    uint16_t transmission_flags = NBD_FLAG_HAS_FLAGS;
    bool structured_replies = false;     ///< NBD_OPT_STRUCTURED_REPLY acknowledged.
    uint32_t meta_contexts = 0;          ///< Contexts selected by the final SET_META_CONTEXT.
    uint32_t min_block_size = 1;         ///< Advertised minimum block size (power of two).
    uint32_t max_payload = kMaxPayload;  ///< Largest READ/WRITE payload.
};

/// Outcome of check_request(). The server reads `payload_length` bytes after the header
/// (unless `disconnect`), then either serves the request (ok()) or replies with `error`.
struct RequestCheck {
    uint32_t error = NBD_SUCCESS;  ///< NBD_E* to reply with; NBD_SUCCESS to serve.
    uint32_t payload_length = 0;   ///< Bytes following the header (WRITE length), to read or
                                   ///< discard even when `error` is set.
    bool disconnect = false;       ///< WRITE payload over max_payload: close without reading it.
    std::string_view reason;       ///< Static text for the log when not ok().

    bool ok() const { return error == NBD_SUCCESS && !disconnect; }
    bool operator==(const RequestCheck&) const = default;
};

/// Decides the fate of `r`, in this order:
///  1. WRITE longer than max_payload: disconnect (its payload cannot be skipped safely).
///  2. Unknown or experimental command: NBD_EINVAL.
///  3. Unknown flag bits, or a flag not valid for the command: NBD_EINVAL. FUA is valid on
///     every command when NBD_FLAG_SEND_FUA was sent (the spec says the server MUST accept
///     it); NO_HOLE and FAST_ZERO only on WRITE_ZEROES (FAST_ZERO needs SEND_FAST_ZERO); DF only
///     on READ with structured replies; REQ_ONE only on BLOCK_STATUS.
///  4. WRITE, TRIM or WRITE_ZEROES on a read-only export: NBD_EPERM.
///  5. Command not advertised (FLUSH, TRIM, WRITE_ZEROES, CACHE), or BLOCK_STATUS without
///     structured replies and a selected context: NBD_EINVAL.
///  6. FLUSH with nonzero offset or length: NBD_EINVAL.
///  7. Range past the export end: NBD_ENOSPC for WRITE and WRITE_ZEROES, else NBD_EINVAL.
///  8. Offset or length not a multiple of min_block_size (length may end at the export end):
///     NBD_EINVAL.
///  9. READ longer than max_payload: NBD_EOVERFLOW with NBD_CMD_FLAG_DF (too large to send
///     unfragmented), otherwise NBD_EINVAL.
/// NBD_CMD_DISC is always ok(): the server finishes in-flight requests and closes.
RequestCheck check_request(const Request& r, const Session& s);

/// True for WRITE, TRIM and WRITE_ZEROES.
constexpr bool is_write_command(uint16_t type) {
    return type == NBD_CMD_WRITE || type == NBD_CMD_TRIM || type == NBD_CMD_WRITE_ZEROES;
}

/// True for the commands qnbd implements (READ through BLOCK_STATUS; not RESIZE).
constexpr bool is_known_command(uint16_t type) {
    return type <= NBD_CMD_BLOCK_STATUS;
}

}  // namespace qnbd::nbd
