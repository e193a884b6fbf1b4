// Decoders for handshake option payloads.
#include "protocol/options.hpp"

#include <algorithm>
#include <string_view>

namespace qnbd::nbd {

namespace {

constexpr DecodeError invalid(std::string_view message) {
    return reject(NBD_REP_ERR_INVALID, message);
}

bool has_nul(Bytes b) {
    return std::find(b.begin(), b.end(), std::byte{0}) != b.end();
}

/// Reads a `len`-byte string that the caller already knows to be in bounds.
Decoded<std::string> take_string(Reader& r, uint32_t len, std::string_view too_long,
                                 std::string_view nul) {
    if (len > kMaxStringLength) return invalid(too_long);
    auto bytes = r.take(len);
    if (!bytes) return invalid("string runs past the end of the option");
    if (has_nul(*bytes)) return invalid(nul);
    return std::string(as_chars(*bytes));
}

/// Reads a length-prefixed query of a meta context option.
Decoded<std::string> take_query(Reader& r) {
    auto len = r.be<uint32_t>();
    if (!len) return invalid("fewer queries than the query count says");
    if (*len > r.remaining()) return invalid("query length runs past the end of the option");
    return take_string(r, *len, "query longer than 4096 bytes", "query contains NUL");
}

}  // namespace

bool InfoRequest::wants(uint16_t info) const {
    return std::find(requests.begin(), requests.end(), info) != requests.end();
}

Decoded<ExportNameOption> decode_export_name(Bytes payload) {
    if (payload.size() > kMaxStringLength)
        return reject(kDisconnect, "NBD_OPT_EXPORT_NAME: name longer than 4096 bytes");
    if (has_nul(payload)) return reject(kDisconnect, "NBD_OPT_EXPORT_NAME: name contains NUL");
    return ExportNameOption{std::string(as_chars(payload))};
}

Decoded<std::monostate> decode_empty(Bytes payload) {
    if (!payload.empty()) return invalid("option takes no data");
    return std::monostate{};
}

Decoded<InfoRequest> decode_info_request(Bytes payload) {
    // 32-bit name length, name, 16-bit count, count x 16-bit info type. Every read is checked
    // even where the length checks already guarantee it, so no input can read past the end.
    if (payload.size() < 6) return invalid("INFO/GO data shorter than 6 bytes");
    Reader r(payload);
    auto name_len = r.be<uint32_t>();
    if (!name_len || *name_len > payload.size() - 6)
        return invalid("export name length exceeds option length");
    auto name =
        take_string(r, *name_len, "export name longer than 4096 bytes", "export name contains NUL");
    if (!name) return name.error();
    auto count = r.be<uint16_t>();
    if (!count || r.remaining() != size_t{*count} * 2)
        return invalid("number of information requests does not match option length");
    InfoRequest out{std::move(*name), {}};
    out.requests.reserve(*count);
    while (auto info = r.be<uint16_t>()) out.requests.push_back(*info);
    return out;
}

Decoded<MetaContextRequest> decode_meta_context_request(Bytes payload) {
    // 32-bit name length, name, 32-bit query count, count x (32-bit length, query).
    if (payload.size() < 8) return invalid("meta context data shorter than 8 bytes");
    Reader r(payload);
    auto name_len = r.be<uint32_t>();
    if (!name_len || *name_len > payload.size() - 8)
        return invalid("export name length exceeds option length");
    auto name =
        take_string(r, *name_len, "export name longer than 4096 bytes", "export name contains NUL");
    if (!name) return name.error();
    auto count = r.be<uint32_t>();
    // Every query takes at least its 4-byte length; reject impossible counts before reserving.
    if (!count || *count > r.remaining() / 4)
        return invalid("fewer queries than the query count says");
    MetaContextRequest out{std::move(*name), {}};
    out.queries.reserve(*count);
    for (uint32_t i = 0; i < *count; ++i) {
        auto query = take_query(r);
        if (!query) return query.error();
        out.queries.push_back(std::move(*query));
    }
    if (!r.empty()) return invalid("trailing bytes after the last query");
    return out;
}

namespace {

/// Wraps a decoder result into the Option variant (built in place: moving a variant into a
/// variant makes GCC 12 warn falsely at -O3).
template <class T>
Decoded<Option> as_option(Decoded<T> d) {
    if (!d) return d.error();
    return Decoded<Option>(std::in_place, std::move(*d));
}

template <class T>
Decoded<Option> empty_option(Bytes payload) {
    if (!payload.empty()) return invalid("option takes no data");
    return Decoded<Option>(std::in_place, T{});
}

}  // namespace

Decoded<Option> decode_option(uint32_t option, Bytes payload) {
    switch (option) {
        case NBD_OPT_EXPORT_NAME:
            return as_option(decode_export_name(payload));
        case NBD_OPT_ABORT:
            return Decoded<Option>(std::in_place, AbortOption{});
        case NBD_OPT_LIST:
            return empty_option<ListOption>(payload);
        case NBD_OPT_STARTTLS:
            return empty_option<StartTlsOption>(payload);
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            return as_option(decode_info_request(payload));
        case NBD_OPT_STRUCTURED_REPLY:
            return empty_option<StructuredReplyOption>(payload);
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            return as_option(decode_meta_context_request(payload));
        default:
            return Decoded<Option>(std::in_place, UnknownOption{option});
    }
}

ByteVector encode_info_request(const InfoRequest& request) {
    ByteVector out;
    Writer w(out);
    w.be(static_cast<uint32_t>(request.name.size())).bytes(as_bytes(request.name));
    w.be(static_cast<uint16_t>(request.requests.size()));
    for (uint16_t info : request.requests) w.be(info);
    return out;
}

ByteVector encode_meta_context_request(const MetaContextRequest& request) {
    ByteVector out;
    Writer w(out);
    w.be(static_cast<uint32_t>(request.name.size())).bytes(as_bytes(request.name));
    w.be(static_cast<uint32_t>(request.queries.size()));
    for (const std::string& q : request.queries)
        w.be(static_cast<uint32_t>(q.size())).bytes(as_bytes(q));
    return out;
}

}  // namespace qnbd::nbd
