// Files for the tests: a temporary directory, whole-file reads and writes, and big-endian
// fields read straight from a file.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>

#include "tests/unit/support/units.hpp"

namespace qnbd::test {

/// A fresh directory under /tmp, removed with everything in it when destroyed.
class TempDir {
  public:
    /// Creates the directory (under `parent`, the system's temporary directory by default).
    explicit TempDir(std::filesystem::path parent = std::filesystem::temp_directory_path()) {
        std::string tmpl = (parent / "qnbd-test-XXXXXX").string();
        if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    /// Path of `name` inside the directory.
    std::string file(const std::string& name) const { return (path_ / name).string(); }
    /// The directory itself.
    const std::filesystem::path& path() const { return path_; }

  private:
    std::filesystem::path path_;
};

/// Whole contents of a file; throws if it cannot be opened.
inline Bytes read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot open " + path);
    Bytes data(static_cast<size_t>(f.tellg()));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
    return data;
}

/// Replaces the contents of a file (creating it) with `data`; throws if it cannot.
inline void write_file(const std::string& path, const Bytes& data) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
}

/// Creates `path` if it is missing and sets its size; bytes added read as zeros (a hole).
inline void set_file_size(const std::string& path, uint64_t size) {
    { std::ofstream create(path, std::ios::binary | std::ios::app); }
    std::filesystem::resize_file(path, size);
}

/// Big-endian integer of `bytes` bytes at `off` of a file (header fields); bytes past the end
/// of the file read as zeros.
inline uint64_t file_be(const std::string& path, uint64_t off, int bytes) {
    std::ifstream f(path, std::ios::binary);
    f.seekg(static_cast<std::streamoff>(off));
    unsigned char b[8] = {};
    f.read(reinterpret_cast<char*>(b), bytes);
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = v << 8 | b[i];
    return v;
}

/// Overwrites `bytes` bytes at `off` of a file with big-endian `v`; throws if it cannot.
inline void store_file_be(const std::string& path, uint64_t off, int bytes, uint64_t v) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(off));
    for (int i = bytes - 1; i >= 0; --i) f.put(static_cast<char>((v >> (8 * i)) & 0xff));
    if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace qnbd::test
