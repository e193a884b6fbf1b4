// Result<T>: a value or an Error (errno plus a human-readable message).
// Used at every engine boundary instead of exceptions.
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace qnbd {

/// An error: a POSIX errno (mapped to an NBD error in one place) and a message for the log.
struct Error {
    int code = EIO;       ///< errno value (EIO, EINVAL, ENOSPC, ...).
    std::string message;  ///< One line naming what went wrong.
};

/// Builds an Error from an errno and a message.
inline Error make_error(int code, std::string message) {
    return Error{code, std::move(message)};
}

/// A value of type T or an Error.
template <class T>
class [[nodiscard]] Result {
  public:
    /// An error placeholder (asio needs default-constructible results).
    Result() : v_(std::in_place_index<1>, Error{EIO, "no result"}) {}
    Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
    Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

    bool has_value() const { return v_.index() == 0; }
    explicit operator bool() const { return has_value(); }
    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    const Error& error() const& { return std::get<1>(v_); }
    Error&& error() && { return std::get<1>(std::move(v_)); }

  private:
    std::variant<T, Error> v_;
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
