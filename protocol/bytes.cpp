// Helpers shared by the encoders.
#include "protocol/bytes.hpp"

#include "protocol/constants.hpp"

namespace qnbd::nbd {

namespace {

bool is_utf8_continuation(char c) {
    return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

}  // namespace

std::string wire_string(std::string_view s) {
    size_t n = s.size();
    if (n > kMaxStringLength) {
        // Cut before a character that would be split; a UTF-8 character has at most 3
        // continuation bytes, so invalid input is simply cut at the limit.
        n = kMaxStringLength;
        for (size_t back = 0; back < 3 && n > 0 && is_utf8_continuation(s[n]); ++back) --n;
        if (is_utf8_continuation(s[n])) n = kMaxStringLength;
    }
    std::string out(s.substr(0, n));
    for (char& c : out)
        if (c == '\0') c = '?';
    return out;
}

}  // namespace qnbd::nbd
