// The one place where POSIX errno values become NBD error values.
#pragma once

#include <cstdint>

#include "protocol/transmission.hpp"

namespace qnbd::nbd {

/// Maps an errno (positive, or negated as io_uring returns it) to an NBD error:
/// 0 -> NBD_SUCCESS; EPERM, EROFS -> NBD_EPERM; EIO -> NBD_EIO; ENOMEM -> NBD_ENOMEM;
/// EINVAL -> NBD_EINVAL; ENOSPC, EDQUOT, EFBIG -> NBD_ENOSPC; EOVERFLOW -> NBD_EOVERFLOW;
/// ENOTSUP/EOPNOTSUPP -> NBD_ENOTSUP; ESHUTDOWN -> NBD_ESHUTDOWN; anything else -> NBD_EIO.
uint32_t nbd_error(int err);

/// nbd_error() for the reply to `request`, also applying the spec's limits on when two values
/// may be sent: NBD_ENOTSUP only for NBD_CMD_WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO, and
/// NBD_EOVERFLOW only for NBD_CMD_READ with NBD_CMD_FLAG_DF or for commands without payload
/// (TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS); elsewhere both become NBD_EINVAL.
uint32_t nbd_error(int err, const Request& request);

}  // namespace qnbd::nbd
