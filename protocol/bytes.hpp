// Big-endian (network order) loads and stores, a bounds-checked reader for decoding untrusted
// bytes, an appending writer for encoding, and the Decoded<T> result of every decoder.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "base/expected.hpp"

namespace qnbd::nbd {

using Bytes = std::span<const std::byte>;
using ByteVector = std::vector<std::byte>;

/// Reads an unsigned big-endian integer of sizeof(T) bytes; `p` must hold that many.
template <class T>
constexpr T load_be(const std::byte* p) {
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>((v << 8) | static_cast<T>(p[i]));
    return v;
}

/// Writes `v` as sizeof(T) big-endian bytes at `p`.
template <class T>
constexpr void store_be(std::byte* p, T v) {
    for (size_t i = sizeof(T); i-- > 0;) {
        p[i] = static_cast<std::byte>(v & 0xff);
        v = static_cast<T>(v >> 8);
    }
}

/// Views characters as bytes (no copy).
inline Bytes as_bytes(std::string_view s) {
    return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

/// Views bytes as characters (no copy).
inline std::string_view as_chars(Bytes b) {
    return {reinterpret_cast<const char*>(b.data()), b.size()};
}

/// Cursor over untrusted input: every read checks the remaining length and never throws.
class Reader {
  public:
    explicit Reader(Bytes in) : in_(in) {}

    size_t remaining() const { return in_.size() - pos_; }
    bool empty() const { return remaining() == 0; }

    /// Next big-endian integer, or nullopt (consuming nothing) if too few bytes remain.
    template <class T>
    std::optional<T> be() {
        if (remaining() < sizeof(T)) return std::nullopt;
        T v = load_be<T>(in_.data() + pos_);
        pos_ += sizeof(T);
        return v;
    }

    /// Next `n` bytes, or nullopt (consuming nothing) if fewer remain.
    std::optional<Bytes> take(size_t n) {
        if (remaining() < n) return std::nullopt;
        Bytes b = in_.subspan(pos_, n);
        pos_ += n;
        return b;
    }

  private:
    Bytes in_;
    size_t pos_ = 0;
};

/// Appends big-endian fields to a byte vector.
class Writer {
  public:
    explicit Writer(ByteVector& out) : out_(out) {}

    template <class T>
    Writer& be(T v) {
        size_t at = out_.size();
        out_.resize(at + sizeof(T));
        store_be<T>(out_.data() + at, v);
        return *this;
    }
    Writer& bytes(Bytes b) {
        // resize + memcpy rather than insert(): GCC 12 warns falsely about the latter at -O2.
        if (b.empty()) return *this;
        size_t at = out_.size();
        out_.resize(at + b.size());
        std::memcpy(out_.data() + at, b.data(), b.size());
        return *this;
    }
    Writer& zeroes(size_t n) {
        out_.resize(out_.size() + n, std::byte{0});
        return *this;
    }

  private:
    ByteVector& out_;
};

/// Fills a fixed-size header left to right; the total of the fields must equal N.
template <size_t N>
class FixedWriter {
  public:
    template <class T>
    constexpr FixedWriter& be(T v) {
        store_be<T>(buf_.data() + pos_, v);
        pos_ += sizeof(T);
        return *this;
    }
    constexpr std::array<std::byte, N> done() const { return buf_; }

  private:
    std::array<std::byte, N> buf_{};
    size_t pos_ = 0;
};

/// Error value of the NBD_REP_ERR_* kind that ends the connection instead of being answered.
constexpr uint32_t kDisconnect = 0;

/// Why a decoder rejected its input.
struct DecodeError {
    /// NBD_REP_ERR_* to answer the option with, or kDisconnect when the input cannot be
    /// answered at all (bad magic, unknown client flags, unusable NBD_OPT_EXPORT_NAME).
    uint32_t reply = kDisconnect;
    std::string_view message;  ///< Static text for the log and the error reply.
    bool fatal() const { return reply == kDisconnect; }
};

/// A decoded value or the reason the input was rejected.
template <class T>
using Decoded = Expected<T, DecodeError>;

/// Builds a DecodeError answered with `reply`.
constexpr DecodeError reject(uint32_t reply, std::string_view message) {
    return {reply, message};
}

/// Copies `s` for sending as a protocol string: cut to at most kMaxStringLength bytes at a
/// UTF-8 character boundary, with NUL bytes (forbidden in strings) replaced by '?'.
std::string wire_string(std::string_view s);

}  // namespace qnbd::nbd
