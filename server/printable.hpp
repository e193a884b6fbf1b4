// Client-supplied text for the log: export names and the like arrive as arbitrary bytes, so
// they are escaped before they reach a log line (no forged lines, no terminal escapes).
#pragma once

#include <string>
#include <string_view>

namespace qnbd::server {

/// `s` with control characters, backslashes and bytes that are not valid UTF-8 written as
/// \xNN escapes, cut after `max` bytes of input (marked with "...").
std::string printable(std::string_view s, size_t max = 256);

}  // namespace qnbd::server
