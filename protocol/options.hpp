// Decoders for the payloads of handshake options, validated exactly as the spec lays them out.
// A rejected payload carries the NBD_REP_ERR_* to answer with (NBD_REP_ERR_INVALID for any
// syntax error); NBD_OPT_EXPORT_NAME cannot be answered with an error, so its rejections are
// fatal. Client-side encoders are provided for tests and fuzz seeds.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "protocol/bytes.hpp"
#include "protocol/constants.hpp"

namespace qnbd::nbd {

/// NBD_OPT_EXPORT_NAME: the whole payload is the export name ("" = default export).
struct ExportNameOption {
    std::string name;
    bool operator==(const ExportNameOption&) const = default;
};

/// NBD_OPT_ABORT: any payload is ignored, as the spec asks.
struct AbortOption {
    bool operator==(const AbortOption&) const = default;
};

/// NBD_OPT_LIST: no payload.
struct ListOption {
    bool operator==(const ListOption&) const = default;
};

/// NBD_OPT_STARTTLS: no payload.
struct StartTlsOption {
    bool operator==(const StartTlsOption&) const = default;
};

/// NBD_OPT_STRUCTURED_REPLY: no payload.
struct StructuredReplyOption {
    bool operator==(const StructuredReplyOption&) const = default;
};

/// NBD_OPT_INFO / NBD_OPT_GO: export name and the NBD_INFO_* types the client asks for.
struct InfoRequest {
    std::string name;
    std::vector<uint16_t> requests;  ///< As sent, including unknown types and duplicates.
    /// Whether the client asked for `info`.
    bool wants(uint16_t info) const;
    bool operator==(const InfoRequest&) const = default;
};

/// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: export name and query strings.
struct MetaContextRequest {
    std::string name;
    std::vector<std::string> queries;
    bool operator==(const MetaContextRequest&) const = default;
};

/// An option qnbd does not know; answered with NBD_REP_ERR_UNSUP.
struct UnknownOption {
    uint32_t option = 0;
    bool operator==(const UnknownOption&) const = default;
};

/// Any decoded option payload. INFO vs GO and LIST vs SET come from the option header.
using Option = std::variant<ExportNameOption, AbortOption, ListOption, StartTlsOption, InfoRequest,
                            StructuredReplyOption, MetaContextRequest, UnknownOption>;

/// NBD_OPT_EXPORT_NAME. Fatal if longer than kMaxStringLength or containing NUL.
Decoded<ExportNameOption> decode_export_name(Bytes payload);

/// Options that take no payload (LIST, STARTTLS, STRUCTURED_REPLY): NBD_REP_ERR_INVALID if
/// any payload is present.
Decoded<std::monostate> decode_empty(Bytes payload);

/// NBD_OPT_INFO / NBD_OPT_GO: name length, name, count, count x 16-bit info types. Any length
/// that does not add up exactly is NBD_REP_ERR_INVALID, as is a name that is too long or
/// contains NUL.
Decoded<InfoRequest> decode_info_request(Bytes payload);

/// NBD_OPT_{LIST,SET}_META_CONTEXT: name length, name, query count, then (length, query) pairs.
/// Counts or lengths past the end, trailing bytes, strings over kMaxStringLength or containing
/// NUL are NBD_REP_ERR_INVALID.
Decoded<MetaContextRequest> decode_meta_context_request(Bytes payload);

/// Decodes the payload of `option` into the matching alternative of Option; unknown options
/// decode to UnknownOption whatever their payload.
Decoded<Option> decode_option(uint32_t option, Bytes payload);

/// Client side: NBD_OPT_INFO / NBD_OPT_GO payload.
ByteVector encode_info_request(const InfoRequest& request);

/// Client side: NBD_OPT_{LIST,SET}_META_CONTEXT payload.
ByteVector encode_meta_context_request(const MetaContextRequest& request);

}  // namespace qnbd::nbd
