// Formatting of offsets and values in error messages.
#pragma once

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>

namespace qnbd {

/// `v` as 0x-prefixed hexadecimal, the way offsets appear in messages.
inline std::string hex(uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
    return buf;
}

}  // namespace qnbd
