// Handshake phase framing: the fixed newstyle greeting, client flags, option headers (with the
// decision of how much option payload to accept), option replies and the NBD_OPT_EXPORT_NAME
// reply. Option payloads themselves are decoded in protocol/options.hpp.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "protocol/bytes.hpp"
#include "protocol/constants.hpp"

namespace qnbd::nbd {

// ---- Greeting and client flags ---------------------------------------------------------------

/// Server greeting: NBDMAGIC, IHAVEOPT, handshake flags (default FIXED_NEWSTYLE | NO_ZEROES).
std::array<std::byte, kGreetingSize> encode_greeting(
    uint16_t handshake_flags = kServerHandshakeFlags);

/// What the client announced in its 32-bit flags word.
struct ClientFlags {
    bool fixed_newstyle = false;  ///< NBD_FLAG_C_FIXED_NEWSTYLE: options other than EXPORT_NAME.
    bool no_zeroes = false;       ///< NBD_FLAG_C_NO_ZEROES: no 124 zero bytes after EXPORT_NAME.
    bool operator==(const ClientFlags&) const = default;
};

/// Decodes the 4-byte client flags. Unknown bits, or bits matching nothing the server advertised
/// in `handshake_flags`, are fatal: the server MUST drop the connection.
Decoded<ClientFlags> decode_client_flags(Bytes in,
                                         uint16_t handshake_flags = kServerHandshakeFlags);

/// Client side of the above (tests, fuzz seeds).
std::array<std::byte, kClientFlagsSize> encode_client_flags(ClientFlags flags);

// ---- Option header ---------------------------------------------------------------------------

/// Header of one client option: IHAVEOPT, option, payload length.
struct OptionHeader {
    uint32_t option = 0;
    uint32_t length = 0;  ///< Payload bytes following the header.
    bool operator==(const OptionHeader&) const = default;
};

/// Decodes the 16-byte option header; a wrong magic is fatal.
Decoded<OptionHeader> decode_option_header(Bytes in);

/// Client side of the above (tests, fuzz seeds).
std::array<std::byte, kOptionHeaderSize> encode_option_header(OptionHeader h);

/// What to do with the payload announced by an option header, decided before reading it.
enum class PayloadAction {
    Read,        ///< Read `length` bytes into memory and decode them.
    Discard,     ///< Skip `length` bytes without keeping them, then send `reply` (an error).
    Disconnect,  ///< Close the connection without reading further.
};

struct PayloadPlan {
    PayloadAction action = PayloadAction::Read;
    uint32_t reply = 0;  ///< NBD_REP_ERR_* to send after a Discard.
    std::string_view reason;
    bool operator==(const PayloadPlan&) const = default;
};

/// Decides how to take an option's payload: unknown options are discarded and answered
/// NBD_REP_ERR_UNSUP; known options longer than kMaxOptionPayload are discarded and answered
/// NBD_REP_ERR_TOO_BIG; payloads over kMaxOptionDiscard, and an NBD_OPT_EXPORT_NAME longer than
/// a string may be (which cannot be answered with an error), end the connection.
PayloadPlan plan_option_payload(const OptionHeader& h);

/// True for the options qnbd understands (EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO,
/// STRUCTURED_REPLY, LIST_META_CONTEXT, SET_META_CONTEXT).
bool is_known_option(uint32_t option);

// ---- Option replies --------------------------------------------------------------------------

/// Header of an option reply whose `length` payload bytes the caller sends separately.
std::array<std::byte, kOptionReplyHeaderSize> encode_option_reply_header(uint32_t option,
                                                                         uint32_t type,
                                                                         uint32_t length);

/// Complete option reply: header plus `payload`.
ByteVector encode_option_reply(uint32_t option, uint32_t type, Bytes payload = {});

/// NBD_REP_ACK for `option`.
ByteVector encode_rep_ack(uint32_t option);

/// NBD_REP_SERVER (one export, answering NBD_OPT_LIST): name length, name, description.
/// Name and description are passed through wire_string().
ByteVector encode_rep_server(uint32_t option, std::string_view name,
                             std::string_view description = {});

/// NBD_REP_INFO carrying NBD_INFO_EXPORT: export size and transmission flags.
ByteVector encode_info_export(uint32_t option, uint64_t export_size, uint16_t transmission_flags);

/// NBD_REP_INFO carrying NBD_INFO_NAME (canonical export name).
ByteVector encode_info_name(uint32_t option, std::string_view name);

/// NBD_REP_INFO carrying NBD_INFO_DESCRIPTION.
ByteVector encode_info_description(uint32_t option, std::string_view description);

/// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
struct BlockSizes {
    uint32_t minimum = 1;
    uint32_t preferred = 4096;
    uint32_t maximum = kMaxPayload;
};

/// NBD_REP_INFO carrying NBD_INFO_BLOCK_SIZE.
ByteVector encode_info_block_size(uint32_t option, BlockSizes sizes);

/// NBD_REP_META_CONTEXT: context id (0 for NBD_OPT_LIST_META_CONTEXT) and context name.
ByteVector encode_rep_meta_context(uint32_t option, uint32_t context_id, std::string_view name);

/// An NBD_REP_ERR_* reply with an optional human-readable message (passed through
/// wire_string()). `type` must have NBD_REP_FLAG_ERROR set.
ByteVector encode_rep_error(uint32_t option, uint32_t type, std::string_view message = {});

/// Reply to NBD_OPT_EXPORT_NAME: export size, transmission flags, then 124 zero bytes unless
/// the client negotiated NBD_FLAG_C_NO_ZEROES.
ByteVector encode_export_name_reply(uint64_t export_size, uint16_t transmission_flags,
                                    bool no_zeroes);

/// Decoded option reply header (client side; tests and tools).
struct OptionReplyHeader {
    uint32_t option = 0;
    uint32_t type = 0;
    uint32_t length = 0;
    bool operator==(const OptionReplyHeader&) const = default;
};

/// Decodes a 20-byte option reply header; a wrong magic is fatal.
Decoded<OptionReplyHeader> decode_option_reply_header(Bytes in);

// ---- Transmission flags ----------------------------------------------------------------------

/// What an export offers; turned into the 16-bit transmission flags.
struct ExportFeatures {
    bool read_only = false;
    bool flush = true;         ///< NBD_CMD_FLUSH.
    bool fua = true;           ///< NBD_CMD_FLAG_FUA.
    bool trim = true;          ///< NBD_CMD_TRIM (writable exports only).
    bool write_zeroes = true;  ///< NBD_CMD_WRITE_ZEROES with NO_HOLE (writable exports only).
    bool fast_zero = true;     ///< NBD_CMD_FLAG_FAST_ZERO (needs write_zeroes).
    bool cache = true;         ///< NBD_CMD_CACHE.
    bool multi_conn = false;   ///< Flushes visible across connections.
    bool rotational = false;
};

/// Transmission flags for an export: NBD_FLAG_HAS_FLAGS always; NBD_FLAG_SEND_DF exactly when
/// structured replies were negotiated (the spec forbids it otherwise); write-type commands are
/// not advertised on read-only exports; FAST_ZERO only together with WRITE_ZEROES.
uint16_t transmission_flags(const ExportFeatures& features, bool structured_replies);

}  // namespace qnbd::nbd
