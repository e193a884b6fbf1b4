// NBD protocol constants, named as in the NBD specification (doc/proto.md of the reference
// implementation). Everything the wire format of qnbd uses lives here, as constexpr values.
#pragma once

#include <cstdint>
#include <string_view>

namespace qnbd::nbd {

// ---- Magic numbers -------------------------------------------------------------------------

constexpr uint64_t NBDMAGIC = 0x4e42444d41474943;  ///< "NBDMAGIC", first word of the greeting.
constexpr uint64_t IHAVEOPT = 0x49484156454F5054;  ///< "IHAVEOPT", greeting and option headers.
constexpr uint64_t NBD_REP_MAGIC = 0x0003e889045565a9;       ///< Option reply header magic.
constexpr uint32_t NBD_REQUEST_MAGIC = 0x25609513;           ///< Transmission request magic.
constexpr uint32_t NBD_SIMPLE_REPLY_MAGIC = 0x67446698;      ///< Simple reply magic.
constexpr uint32_t NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;  ///< Structured reply chunk magic.

// ---- Handshake flags (16 bits, server) and client flags (32 bits) --------------------------

constexpr uint16_t NBD_FLAG_FIXED_NEWSTYLE = 1u << 0;
constexpr uint16_t NBD_FLAG_NO_ZEROES = 1u << 1;
constexpr uint32_t NBD_FLAG_C_FIXED_NEWSTYLE = 1u << 0;
constexpr uint32_t NBD_FLAG_C_NO_ZEROES = 1u << 1;

// ---- Transmission flags (16 bits, sent with the export size) -------------------------------

constexpr uint16_t NBD_FLAG_HAS_FLAGS = 1u << 0;
constexpr uint16_t NBD_FLAG_READ_ONLY = 1u << 1;
constexpr uint16_t NBD_FLAG_SEND_FLUSH = 1u << 2;
constexpr uint16_t NBD_FLAG_SEND_FUA = 1u << 3;
constexpr uint16_t NBD_FLAG_ROTATIONAL = 1u << 4;
constexpr uint16_t NBD_FLAG_SEND_TRIM = 1u << 5;
constexpr uint16_t NBD_FLAG_SEND_WRITE_ZEROES = 1u << 6;
constexpr uint16_t NBD_FLAG_SEND_DF = 1u << 7;
constexpr uint16_t NBD_FLAG_CAN_MULTI_CONN = 1u << 8;
constexpr uint16_t NBD_FLAG_SEND_RESIZE = 1u << 9;
constexpr uint16_t NBD_FLAG_SEND_CACHE = 1u << 10;
constexpr uint16_t NBD_FLAG_SEND_FAST_ZERO = 1u << 11;

// ---- Options (client, handshake phase) -----------------------------------------------------

constexpr uint32_t NBD_OPT_EXPORT_NAME = 1;
constexpr uint32_t NBD_OPT_ABORT = 2;
constexpr uint32_t NBD_OPT_LIST = 3;
constexpr uint32_t NBD_OPT_PEEK_EXPORT = 4;  ///< Withdrawn; answered like any unknown option.
constexpr uint32_t NBD_OPT_STARTTLS = 5;
constexpr uint32_t NBD_OPT_INFO = 6;
constexpr uint32_t NBD_OPT_GO = 7;
constexpr uint32_t NBD_OPT_STRUCTURED_REPLY = 8;
constexpr uint32_t NBD_OPT_LIST_META_CONTEXT = 9;
constexpr uint32_t NBD_OPT_SET_META_CONTEXT = 10;
constexpr uint32_t NBD_OPT_EXTENDED_HEADERS =
    11;  ///< Experimental; qnbd answers NBD_REP_ERR_UNSUP.

// ---- Option reply types ---------------------------------------------------------------------

constexpr uint32_t NBD_REP_ACK = 1;
constexpr uint32_t NBD_REP_SERVER = 2;
constexpr uint32_t NBD_REP_INFO = 3;
constexpr uint32_t NBD_REP_META_CONTEXT = 4;
constexpr uint32_t NBD_REP_FLAG_ERROR = 1u << 31;  ///< Bit set in every error reply type.
constexpr uint32_t NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1;
constexpr uint32_t NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR | 2;
constexpr uint32_t NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR | 3;
constexpr uint32_t NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR | 4;
constexpr uint32_t NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR | 5;
constexpr uint32_t NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6;
constexpr uint32_t NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR | 7;
constexpr uint32_t NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR | 8;
constexpr uint32_t NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR | 9;
constexpr uint32_t NBD_REP_ERR_EXT_HEADER_REQD = NBD_REP_FLAG_ERROR | 10;

// ---- Information types (NBD_OPT_INFO / NBD_OPT_GO) -----------------------------------------

constexpr uint16_t NBD_INFO_EXPORT = 0;
constexpr uint16_t NBD_INFO_NAME = 1;
constexpr uint16_t NBD_INFO_DESCRIPTION = 2;
constexpr uint16_t NBD_INFO_BLOCK_SIZE = 3;

// ---- Commands (transmission phase) ---------------------------------------------------------

constexpr uint16_t NBD_CMD_READ = 0;
constexpr uint16_t NBD_CMD_WRITE = 1;
constexpr uint16_t NBD_CMD_DISC = 2;
constexpr uint16_t NBD_CMD_FLUSH = 3;
constexpr uint16_t NBD_CMD_TRIM = 4;
constexpr uint16_t NBD_CMD_CACHE = 5;
constexpr uint16_t NBD_CMD_WRITE_ZEROES = 6;
constexpr uint16_t NBD_CMD_BLOCK_STATUS = 7;
constexpr uint16_t NBD_CMD_RESIZE = 8;  ///< Experimental; qnbd answers NBD_EINVAL.

// ---- Command flags ---------------------------------------------------------------------------

constexpr uint16_t NBD_CMD_FLAG_FUA = 1u << 0;
constexpr uint16_t NBD_CMD_FLAG_NO_HOLE = 1u << 1;
constexpr uint16_t NBD_CMD_FLAG_DF = 1u << 2;
constexpr uint16_t NBD_CMD_FLAG_REQ_ONE = 1u << 3;
constexpr uint16_t NBD_CMD_FLAG_FAST_ZERO = 1u << 4;
constexpr uint16_t NBD_CMD_FLAG_PAYLOAD_LEN = 1u << 5;  ///< Experimental; never valid in qnbd.

// ---- Structured replies ----------------------------------------------------------------------

constexpr uint16_t NBD_REPLY_FLAG_DONE = 1u << 0;
constexpr uint16_t NBD_REPLY_TYPE_NONE = 0;
constexpr uint16_t NBD_REPLY_TYPE_OFFSET_DATA = 1;
constexpr uint16_t NBD_REPLY_TYPE_OFFSET_HOLE = 2;
constexpr uint16_t NBD_REPLY_TYPE_BLOCK_STATUS = 5;
constexpr uint16_t NBD_REPLY_TYPE_FLAG_ERROR = 1u << 15;  ///< Bit set in every error chunk type.
constexpr uint16_t NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_FLAG_ERROR | 1;
constexpr uint16_t NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_FLAG_ERROR | 2;

// ---- base:allocation status flags -------------------------------------------------------------

constexpr uint32_t NBD_STATE_HOLE = 1u << 0;
constexpr uint32_t NBD_STATE_ZERO = 1u << 1;
/// qemu:dirty-bitmap: the range is dirty in the bitmap.
constexpr uint32_t NBD_STATE_DIRTY = 1u << 0;

// ---- Error values (reply error field) ---------------------------------------------------------

constexpr uint32_t NBD_SUCCESS = 0;
constexpr uint32_t NBD_EPERM = 1;
constexpr uint32_t NBD_EIO = 5;
constexpr uint32_t NBD_ENOMEM = 12;
constexpr uint32_t NBD_EINVAL = 22;
constexpr uint32_t NBD_ENOSPC = 28;
constexpr uint32_t NBD_EOVERFLOW = 75;
constexpr uint32_t NBD_ENOTSUP = 95;
constexpr uint32_t NBD_ESHUTDOWN = 108;

// ---- Sizes and limits of qnbd ----------------------------------------------------------------

/// Longest string (export name, query, message) the spec allows.
constexpr uint32_t kMaxStringLength = 4096;
/// Largest READ/WRITE payload qnbd accepts (the spec's recommended 2^25).
constexpr uint32_t kMaxPayload = 32u << 20;
/// Largest option payload read into memory; covers any legal INFO/GO and a few dozen
/// maximal meta-context queries. Longer known options are discarded with NBD_REP_ERR_TOO_BIG.
constexpr uint32_t kMaxOptionPayload = 256u << 10;
/// Longest option payload even discarded; beyond it the connection is closed.
constexpr uint32_t kMaxOptionDiscard = kMaxPayload;
/// Most block status descriptors the spec lets one chunk carry.
constexpr uint32_t kMaxBlockStatusDescriptors = 1u << 20;
/// Read length that DF requests must support without NBD_EOVERFLOW.
constexpr uint32_t kMinDfReadLength = 65536;

/// Handshake flags qnbd sends in its greeting.
constexpr uint16_t kServerHandshakeFlags = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;

constexpr size_t kGreetingSize = 18;            ///< NBDMAGIC + IHAVEOPT + handshake flags.
constexpr size_t kClientFlagsSize = 4;          ///< Client flags word.
constexpr size_t kOptionHeaderSize = 16;        ///< IHAVEOPT + option + length.
constexpr size_t kOptionReplyHeaderSize = 20;   ///< Magic + option + type + length.
constexpr size_t kExportNameReplyZeroes = 124;  ///< Zero padding after NBD_OPT_EXPORT_NAME.
constexpr size_t kRequestHeaderSize = 28;       ///< Transmission request header.
constexpr size_t kSimpleReplySize = 16;         ///< Simple reply header.
constexpr size_t kChunkHeaderSize = 20;         ///< Structured reply chunk header.

// ---- Names for logs ---------------------------------------------------------------------------

/// "NBD_OPT_GO" etc.; "unknown" for values the spec does not define.
std::string_view option_name(uint32_t option);
/// "NBD_REP_ACK", "NBD_REP_ERR_INVALID" etc.
std::string_view reply_type_name(uint32_t reply);
/// "NBD_INFO_EXPORT" etc.
std::string_view info_name(uint16_t info);
/// "NBD_CMD_READ" etc.
std::string_view command_name(uint16_t command);
/// "NBD_REPLY_TYPE_OFFSET_DATA" etc.
std::string_view chunk_type_name(uint16_t type);
/// "NBD_EINVAL" etc.; "NBD_SUCCESS" for 0.
std::string_view error_name(uint32_t error);

}  // namespace qnbd::nbd
