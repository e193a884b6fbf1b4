// The one place where POSIX errno values become NBD error values.
#include "protocol/errors.hpp"

#include <cerrno>
#include <climits>

namespace qnbd::nbd {

uint32_t nbd_error(int err) {
    if (err < 0 && err != INT_MIN) err = -err;
    switch (err) {
        case 0:
            return NBD_SUCCESS;
        case EPERM:
        case EROFS:
            return NBD_EPERM;
        case EIO:
            return NBD_EIO;
        case ENOMEM:
            return NBD_ENOMEM;
        case EINVAL:
            return NBD_EINVAL;
        case ENOSPC:
        case EDQUOT:
        case EFBIG:
            return NBD_ENOSPC;
        case EOVERFLOW:
            return NBD_EOVERFLOW;
#if EOPNOTSUPP != ENOTSUP
        case EOPNOTSUPP:
#endif
        case ENOTSUP:
            return NBD_ENOTSUP;
        case ESHUTDOWN:
            return NBD_ESHUTDOWN;
        default:
            return NBD_EIO;
    }
}

namespace {

/// Commands that carry no payload in either direction.
bool payload_free(uint16_t type) {
    return type == NBD_CMD_TRIM || type == NBD_CMD_WRITE_ZEROES || type == NBD_CMD_CACHE ||
           type == NBD_CMD_BLOCK_STATUS;
}

}  // namespace

uint32_t nbd_error(int err, const Request& r) {
    uint32_t e = nbd_error(err);
    bool fast_zero = r.type == NBD_CMD_WRITE_ZEROES && (r.flags & NBD_CMD_FLAG_FAST_ZERO);
    if (e == NBD_ENOTSUP && !fast_zero) return NBD_EINVAL;
    if (e == NBD_EOVERFLOW) {
        bool df_read = r.type == NBD_CMD_READ && (r.flags & NBD_CMD_FLAG_DF);
        bool oversized = payload_free(r.type) && r.length > kMaxPayload && !fast_zero;
        if (!df_read && !oversized) return NBD_EINVAL;
    }
    return e;
}

}  // namespace qnbd::nbd
