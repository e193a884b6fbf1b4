// DirtyBitmap: a persistent dirty bitmap held in memory while an image is open. One bit per
// `granularity` bytes of the virtual disk; a set bit means the range was written while the
// bitmap was enabled. The byte layout of bits() is qcow2's (bit i of byte j covers granule
// 8*j + i), so the image format can load and store it without conversion.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace qnbd {

/// One run of a bitmap query: `length` bytes that are all dirty or all clean.
struct DirtyRun {
    uint64_t length = 0;
    bool dirty = false;
    bool operator==(const DirtyRun&) const = default;
};

/// A named dirty bitmap over a virtual disk of `disk_size` bytes.
class DirtyBitmap {
  public:
    /// An all-clean bitmap; `granularity` is a power of two.
    DirtyBitmap(std::string name, uint64_t disk_size, uint64_t granularity);

    const std::string& name() const { return name_; }
    uint64_t granularity() const { return granularity_; }
    uint64_t disk_size() const { return disk_size_; }
    /// Number of granules (bits in use).
    uint64_t bit_count() const { return bits_in_use_; }

    /// Enabled: writes served while the image is open set its bits ("auto" in qcow2).
    bool enabled = false;
    /// Consistent: its contents can be trusted (not found "in use" at open).
    bool consistent = true;

    /// Sets the bits of every granule [off, off+len) touches (clipped to the disk).
    void mark(uint64_t off, uint64_t len);
    /// True if the granule holding byte `off` is dirty.
    bool dirty_at(uint64_t off) const;
    /// Runs covering [off, off+len) clipped to the disk, adjacent equal runs merged; at most
    /// `max_runs` runs (the last one then ends early).
    std::vector<DirtyRun> runs(uint64_t off, uint64_t len, size_t max_runs = SIZE_MAX) const;

    /// The bitmap data in qcow2's layout: ceil(bit_count / 8) bytes, unused tail bits zero.
    std::span<const uint8_t> bits() const { return bytes_; }
    /// Replaces the contents from data in that layout (shorter input leaves the rest clean;
    /// tail bits past bit_count() are ignored).
    void load(std::span<const uint8_t> data);
    /// Number of dirty granules.
    uint64_t dirty_count() const;

  private:
    bool bit(uint64_t i) const { return (bytes_[i / 8] >> (i % 8)) & 1; }

    std::string name_;
    uint64_t disk_size_;
    uint64_t granularity_;
    uint64_t bits_in_use_;
    std::vector<uint8_t> bytes_;
};

}  // namespace qnbd
