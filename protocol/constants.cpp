// Names of protocol values, for logs.
#include "protocol/constants.hpp"

namespace qnbd::nbd {

std::string_view option_name(uint32_t option) {
    switch (option) {
        case NBD_OPT_EXPORT_NAME:
            return "NBD_OPT_EXPORT_NAME";
        case NBD_OPT_ABORT:
            return "NBD_OPT_ABORT";
        case NBD_OPT_LIST:
            return "NBD_OPT_LIST";
        case NBD_OPT_PEEK_EXPORT:
            return "NBD_OPT_PEEK_EXPORT";
        case NBD_OPT_STARTTLS:
            return "NBD_OPT_STARTTLS";
        case NBD_OPT_INFO:
            return "NBD_OPT_INFO";
        case NBD_OPT_GO:
            return "NBD_OPT_GO";
        case NBD_OPT_STRUCTURED_REPLY:
            return "NBD_OPT_STRUCTURED_REPLY";
        case NBD_OPT_LIST_META_CONTEXT:
            return "NBD_OPT_LIST_META_CONTEXT";
        case NBD_OPT_SET_META_CONTEXT:
            return "NBD_OPT_SET_META_CONTEXT";
        case NBD_OPT_EXTENDED_HEADERS:
            return "NBD_OPT_EXTENDED_HEADERS";
        default:
            return "unknown";
    }
}

std::string_view reply_type_name(uint32_t reply) {
    switch (reply) {
        case NBD_REP_ACK:
            return "NBD_REP_ACK";
        case NBD_REP_SERVER:
            return "NBD_REP_SERVER";
        case NBD_REP_INFO:
            return "NBD_REP_INFO";
        case NBD_REP_META_CONTEXT:
            return "NBD_REP_META_CONTEXT";
        case NBD_REP_ERR_UNSUP:
            return "NBD_REP_ERR_UNSUP";
        case NBD_REP_ERR_POLICY:
            return "NBD_REP_ERR_POLICY";
        case NBD_REP_ERR_INVALID:
            return "NBD_REP_ERR_INVALID";
        case NBD_REP_ERR_PLATFORM:
            return "NBD_REP_ERR_PLATFORM";
        case NBD_REP_ERR_TLS_REQD:
            return "NBD_REP_ERR_TLS_REQD";
        case NBD_REP_ERR_UNKNOWN:
            return "NBD_REP_ERR_UNKNOWN";
        case NBD_REP_ERR_SHUTDOWN:
            return "NBD_REP_ERR_SHUTDOWN";
        case NBD_REP_ERR_BLOCK_SIZE_REQD:
            return "NBD_REP_ERR_BLOCK_SIZE_REQD";
        case NBD_REP_ERR_TOO_BIG:
            return "NBD_REP_ERR_TOO_BIG";
        case NBD_REP_ERR_EXT_HEADER_REQD:
            return "NBD_REP_ERR_EXT_HEADER_REQD";
        default:
            return "unknown";
    }
}

std::string_view info_name(uint16_t info) {
    switch (info) {
        case NBD_INFO_EXPORT:
            return "NBD_INFO_EXPORT";
        case NBD_INFO_NAME:
            return "NBD_INFO_NAME";
        case NBD_INFO_DESCRIPTION:
            return "NBD_INFO_DESCRIPTION";
        case NBD_INFO_BLOCK_SIZE:
            return "NBD_INFO_BLOCK_SIZE";
        default:
            return "unknown";
    }
}

std::string_view command_name(uint16_t command) {
    switch (command) {
        case NBD_CMD_READ:
            return "NBD_CMD_READ";
        case NBD_CMD_WRITE:
            return "NBD_CMD_WRITE";
        case NBD_CMD_DISC:
            return "NBD_CMD_DISC";
        case NBD_CMD_FLUSH:
            return "NBD_CMD_FLUSH";
        case NBD_CMD_TRIM:
            return "NBD_CMD_TRIM";
        case NBD_CMD_CACHE:
            return "NBD_CMD_CACHE";
        case NBD_CMD_WRITE_ZEROES:
            return "NBD_CMD_WRITE_ZEROES";
        case NBD_CMD_BLOCK_STATUS:
            return "NBD_CMD_BLOCK_STATUS";
        case NBD_CMD_RESIZE:
            return "NBD_CMD_RESIZE";
        default:
            return "unknown";
    }
}

std::string_view chunk_type_name(uint16_t type) {
    switch (type) {
        case NBD_REPLY_TYPE_NONE:
            return "NBD_REPLY_TYPE_NONE";
        case NBD_REPLY_TYPE_OFFSET_DATA:
            return "NBD_REPLY_TYPE_OFFSET_DATA";
        case NBD_REPLY_TYPE_OFFSET_HOLE:
            return "NBD_REPLY_TYPE_OFFSET_HOLE";
        case NBD_REPLY_TYPE_BLOCK_STATUS:
            return "NBD_REPLY_TYPE_BLOCK_STATUS";
        case NBD_REPLY_TYPE_ERROR:
            return "NBD_REPLY_TYPE_ERROR";
        case NBD_REPLY_TYPE_ERROR_OFFSET:
            return "NBD_REPLY_TYPE_ERROR_OFFSET";
        default:
            return "unknown";
    }
}

std::string_view error_name(uint32_t error) {
    switch (error) {
        case NBD_SUCCESS:
            return "NBD_SUCCESS";
        case NBD_EPERM:
            return "NBD_EPERM";
        case NBD_EIO:
            return "NBD_EIO";
        case NBD_ENOMEM:
            return "NBD_ENOMEM";
        case NBD_EINVAL:
            return "NBD_EINVAL";
        case NBD_ENOSPC:
            return "NBD_ENOSPC";
        case NBD_EOVERFLOW:
            return "NBD_EOVERFLOW";
        case NBD_ENOTSUP:
            return "NBD_ENOTSUP";
        case NBD_ESHUTDOWN:
            return "NBD_ESHUTDOWN";
        default:
            return "unknown";
    }
}

}  // namespace qnbd::nbd
