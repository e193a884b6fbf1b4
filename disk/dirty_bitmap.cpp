// DirtyBitmap (see dirty_bitmap.hpp).
#include "disk/dirty_bitmap.hpp"

#include <algorithm>
#include <bit>

namespace qnbd {

DirtyBitmap::DirtyBitmap(std::string name, uint64_t disk_size, uint64_t granularity)
    : name_(std::move(name)),
      disk_size_(disk_size),
      granularity_(granularity),
      bits_in_use_((disk_size + granularity - 1) / granularity),
      bytes_((bits_in_use_ + 7) / 8, 0) {}

void DirtyBitmap::mark(uint64_t off, uint64_t len) {
    if (len == 0 || off >= disk_size_) return;
    const uint64_t end = std::min(disk_size_, off + len);
    const uint64_t first = off / granularity_;
    const uint64_t last = (end - 1) / granularity_;
    for (uint64_t i = first; i <= last;) {
        if (i % 8 == 0 && i + 7 <= last) {  // A whole byte at a time.
            bytes_[i / 8] = 0xff;
            i += 8;
            continue;
        }
        bytes_[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
        ++i;
    }
}

bool DirtyBitmap::dirty_at(uint64_t off) const {
    return off < disk_size_ && bit(off / granularity_);
}

std::vector<DirtyRun> DirtyBitmap::runs(uint64_t off, uint64_t len, size_t max_runs) const {
    std::vector<DirtyRun> out;
    if (off >= disk_size_ || len == 0 || max_runs == 0) return out;
    const uint64_t end = std::min(disk_size_, off + len);
    uint64_t pos = off;
    while (pos < end) {
        const bool d = bit(pos / granularity_);
        // Extend to the end of this granule, then over granules in the same state; whole
        // clean or dirty bytes are skipped at once.
        uint64_t i = pos / granularity_ + 1;
        const uint64_t last = (end - 1) / granularity_;
        const uint8_t same = d ? 0xff : 0x00;
        while (i <= last) {
            if (i % 8 == 0 && i + 7 <= last && bytes_[i / 8] == same) {
                i += 8;
                continue;
            }
            if (bit(i) != d) break;
            ++i;
        }
        const uint64_t stop = std::min(end, i * granularity_);
        if (!out.empty() && out.back().dirty == d)
            out.back().length += stop - pos;
        else if (out.size() == max_runs)
            break;
        else
            out.push_back(DirtyRun{stop - pos, d});
        pos = stop;
    }
    return out;
}

void DirtyBitmap::load(std::span<const uint8_t> data) {
    std::fill(bytes_.begin(), bytes_.end(), 0);
    std::copy_n(data.begin(), std::min(data.size(), bytes_.size()), bytes_.begin());
    if (const uint64_t tail = bits_in_use_ % 8; tail && !bytes_.empty())
        bytes_.back() &= static_cast<uint8_t>((1u << tail) - 1);
}

uint64_t DirtyBitmap::dirty_count() const {
    uint64_t n = 0;
    for (uint8_t b : bytes_) n += static_cast<uint64_t>(std::popcount(b));
    return n;
}

}  // namespace qnbd
