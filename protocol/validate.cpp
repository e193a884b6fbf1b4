// Per-request validation.
#include "protocol/validate.hpp"

namespace qnbd::nbd {

namespace {

constexpr uint16_t kKnownCommandFlags = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF |
                                        NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO;

RequestCheck fail(uint32_t error, std::string_view reason, uint32_t payload = 0) {
    return RequestCheck{error, payload, false, reason};
}

bool advertised(const Session& s, uint16_t flag) {
    return (s.transmission_flags & flag) != 0;
}

/// Step 3: flag bits against the command and what was negotiated; empty reason = fine.
std::string_view flag_problem(const Request& r, const Session& s) {
    if (r.flags & ~kKnownCommandFlags) return "unknown command flag";
    if ((r.flags & NBD_CMD_FLAG_FUA) && !advertised(s, NBD_FLAG_SEND_FUA))
        return "FUA flag without NBD_FLAG_SEND_FUA";
    if ((r.flags & NBD_CMD_FLAG_NO_HOLE) && r.type != NBD_CMD_WRITE_ZEROES)
        return "NO_HOLE flag on a command other than WRITE_ZEROES";
    if (r.flags & NBD_CMD_FLAG_FAST_ZERO) {
        if (r.type != NBD_CMD_WRITE_ZEROES)
            return "FAST_ZERO flag on a command other than WRITE_ZEROES";
        if (!advertised(s, NBD_FLAG_SEND_FAST_ZERO))
            return "FAST_ZERO flag without NBD_FLAG_SEND_FAST_ZERO";
    }
    if (r.flags & NBD_CMD_FLAG_DF) {
        if (r.type != NBD_CMD_READ) return "DF flag on a command other than READ";
        if (!s.structured_replies || !advertised(s, NBD_FLAG_SEND_DF))
            return "DF flag without structured replies";
    }
    if ((r.flags & NBD_CMD_FLAG_REQ_ONE) && r.type != NBD_CMD_BLOCK_STATUS)
        return "REQ_ONE flag on a command other than BLOCK_STATUS";
    return {};
}

/// Step 5: the command was advertised (or negotiated); empty reason = fine.
std::string_view support_problem(const Request& r, const Session& s) {
    switch (r.type) {
        case NBD_CMD_FLUSH:
            return advertised(s, NBD_FLAG_SEND_FLUSH) ? "" : "FLUSH not advertised";
        case NBD_CMD_TRIM:
            return advertised(s, NBD_FLAG_SEND_TRIM) ? "" : "TRIM not advertised";
        case NBD_CMD_WRITE_ZEROES:
            return advertised(s, NBD_FLAG_SEND_WRITE_ZEROES) ? "" : "WRITE_ZEROES not advertised";
        case NBD_CMD_CACHE:
            return advertised(s, NBD_FLAG_SEND_CACHE) ? "" : "CACHE not advertised";
        case NBD_CMD_BLOCK_STATUS:
            if (!s.structured_replies) return "BLOCK_STATUS without structured replies";
            if (s.meta_contexts == 0) return "BLOCK_STATUS without a selected meta context";
            return "";
        default:
            return "";
    }
}

/// Steps 7 and 8 for commands addressing a range of the export.
RequestCheck check_range(const Request& r, const Session& s, uint32_t payload) {
    bool writes = r.type == NBD_CMD_WRITE || r.type == NBD_CMD_WRITE_ZEROES;
    if (r.offset > s.export_size || r.length > s.export_size - r.offset)
        return fail(writes ? NBD_ENOSPC : NBD_EINVAL, "range past the end of the export", payload);
    uint64_t block = s.min_block_size ? s.min_block_size : 1;
    bool ends_at_export_end = r.offset + r.length == s.export_size;
    if (r.offset % block != 0 || (r.length % block != 0 && !ends_at_export_end))
        return fail(NBD_EINVAL, "request not aligned to the minimum block size", payload);
    return RequestCheck{NBD_SUCCESS, payload, false, {}};
}

}  // namespace

RequestCheck check_request(const Request& r, const Session& s) {
    uint32_t payload = r.type == NBD_CMD_WRITE ? r.length : 0;
    if (r.type == NBD_CMD_WRITE && r.length > s.max_payload)
        return RequestCheck{NBD_EINVAL, 0, true, "WRITE payload larger than the maximum"};
    if (r.type == NBD_CMD_DISC) return {};
    if (!is_known_command(r.type)) return fail(NBD_EINVAL, "unknown command");
    if (auto why = flag_problem(r, s); !why.empty()) return fail(NBD_EINVAL, why, payload);
    if (is_write_command(r.type) && advertised(s, NBD_FLAG_READ_ONLY))
        return fail(NBD_EPERM, "write to a read-only export", payload);
    if (auto why = support_problem(r, s); !why.empty()) return fail(NBD_EINVAL, why, payload);
    if (r.type == NBD_CMD_FLUSH) {
        if (r.offset != 0 || r.length != 0)
            return fail(NBD_EINVAL, "FLUSH with nonzero offset or length");
        return {};
    }
    RequestCheck range = check_range(r, s, payload);
    if (!range.ok()) return range;
    if (r.type == NBD_CMD_READ && r.length > s.max_payload) {
        if (r.flags & NBD_CMD_FLAG_DF)
            return fail(NBD_EOVERFLOW, "READ too large to send unfragmented");
        return fail(NBD_EINVAL, "READ larger than the maximum payload");
    }
    return range;
}

}  // namespace qnbd::nbd
