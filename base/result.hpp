// Result<T>: a value or an Error (errno plus a human-readable message).
// Used at every engine boundary instead of exceptions.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

#include "base/expected.hpp"

namespace qnbd {

/// An error: a POSIX errno (mapped to an NBD error in one place) and a message for the log.
struct Error {
    int code = EIO;       ///< errno value (EIO, EINVAL, ENOSPC, ...).
    std::string message;  ///< One line naming what went wrong.
};

/// A value of type T or an Error.
template <class T>
class [[nodiscard]] Result : public Expected<T, Error> {
  public:
    using Expected<T, Error>::Expected;
    /// An error placeholder (asio needs default-constructible results).
    Result() : Expected<T, Error>(Error{EIO, "no result"}) {}
};

/// Result<void>: success or an Error.
template <>
class [[nodiscard]] Result<void> {
  public:
    Result() = default;
    Result(Error error) : error_(std::move(error)), ok_(false) {}

    bool has_value() const { return ok_; }
    explicit operator bool() const { return ok_; }
    const Error& error() const { return error_; }

  private:
    Error error_;
    bool ok_ = true;
};

/// Convenience for success of Result<void>.
inline Result<void> ok() {
    return {};
}

}  // namespace qnbd
