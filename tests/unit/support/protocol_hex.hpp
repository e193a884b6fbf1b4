// Hex helpers for the protocol tests: expected wire bytes are written as spaced hex text.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "protocol/bytes.hpp"

namespace qnbd::nbd::test {

/// Lowercase hex of `b`, for readable comparisons.
inline std::string to_hex(Bytes b) {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out;
    for (std::byte x : b) {
        out += digits[static_cast<unsigned>(x) >> 4];
        out += digits[static_cast<unsigned>(x) & 15];
    }
    return out;
}

/// Hex text with the spaces (used to group fields) removed.
inline std::string hex(std::string_view s) {
    std::string out;
    for (char c : s)
        if (c != ' ') out += c;
    return out;
}

/// Bytes from hex text.
inline std::vector<std::byte> bytes(std::string_view s) {
    std::string h = hex(s);
    std::vector<std::byte> out;
    for (size_t i = 0; i + 1 < h.size(); i += 2)
        out.push_back(static_cast<std::byte>(std::stoul(h.substr(i, 2), nullptr, 16)));
    return out;
}

}  // namespace qnbd::nbd::test
