// Escaping client text for the log (see printable.hpp).
#include "server/printable.hpp"

#include <cstdio>

namespace qnbd::server {
namespace {

/// Length of the valid UTF-8 sequence starting at s[i] (excluding overlong forms, surrogates
/// and code points past U+10FFFF), or 0 if there is none.
size_t utf8_length(std::string_view s, size_t i) {
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
    if (n == 0 || i + n > s.size()) return 0;
    for (size_t k = 1; k < n; ++k)
        if ((b(i + k) & 0xc0) != 0x80) return 0;
    if (n == 3 && ((c == 0xe0 && b(i + 1) < 0xa0) || (c == 0xed && b(i + 1) >= 0xa0))) return 0;
    if (n == 4 && ((c == 0xf0 && b(i + 1) < 0x90) || (c == 0xf4 && b(i + 1) >= 0x90))) return 0;
    return n;
}

void escape(std::string& out, unsigned char c) {
    char buf[5];
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
}

}  // namespace

std::string printable(std::string_view s, size_t max) {
    std::string out;
    const size_t end = s.size() < max ? s.size() : max;
    for (size_t i = 0; i < end;) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            out += static_cast<char>(c);
            ++i;
        } else if (const size_t n = c >= 0x80 ? utf8_length(s, i) : 0; n) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            escape(out, c);
            ++i;
        }
    }
    if (end < s.size()) out += "...";
    return out;
}

}  // namespace qnbd::server
