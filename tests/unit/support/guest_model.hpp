// What a guest may find on its disk after a crash. The model records every write-like request
// (data, zeros, discards) with when it was issued and acknowledged, and every flush; given the
// horizon of a crash (flushes acknowledged before it are promised), each 512-byte sector must
// read either its old content (the last write that a completed flush or FUA made durable, or
// the disk's content before the run) or the content of a write to it after that one. Never
// zeros that were not there, never another range's data, never the backing file's data where
// the image had replaced it, and nothing changed where nothing was written.
//
// Writes to overlapping ranges must not be in flight at the same time (the order of their
// acknowledgements is then the order of their contents).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "tests/unit/support/units.hpp"

namespace qnbd::test::crash {

/// One request that changes the guest disk.
struct GuestWrite {
    uint64_t offset = 0;
    uint64_t length = 0;
    Bytes data;                         ///< Its content; empty for zeros.
    bool fua = false;                   ///< Durable once acknowledged.
    uint64_t issued = 0;                ///< Guest event order.
    uint64_t acked = 0;                 ///< Guest event order; 0 while in flight.
    uint64_t acked_clock = UINT64_MAX;  ///< The recording log's clock when acknowledged.
};

/// One flush request.
struct GuestFlush {
    uint64_t issued = 0;
    uint64_t acked_clock = UINT64_MAX;
};

/// The guest's requests and the disk they started from; see the head of the file.
class GuestModel {
  public:
    static constexpr uint64_t kSector = 512;

    explicit GuestModel(Bytes initial) : initial_(std::move(initial)) {}

    /// Records the issue of a write (data empty for zeros); returns its id.
    size_t issue_write(uint64_t off, uint64_t len, Bytes data, bool fua) {
        writes_.push_back(GuestWrite{off, len, std::move(data), fua, ++events_, 0, UINT64_MAX});
        return writes_.size() - 1;
    }
    /// Records the acknowledgement of write `id` at log clock `clock`.
    void ack_write(size_t id, uint64_t clock) {
        writes_[id].acked = ++events_;
        writes_[id].acked_clock = clock;
    }
    /// Sets what a discarded range reads as now (read back after its acknowledgement).
    void set_content(size_t id, Bytes data) { writes_[id].data = std::move(data); }
    /// Records the issue of a flush; returns its id.
    size_t issue_flush() {
        flushes_.push_back(GuestFlush{++events_, UINT64_MAX});
        return flushes_.size() - 1;
    }
    /// Records the acknowledgement of flush `id` at log clock `clock`.
    void ack_flush(size_t id, uint64_t clock) { flushes_[id].acked_clock = clock; }
    /// Size of the disk.
    uint64_t size() const { return initial_.size(); }

    /// Checks a disk read back after a crash whose horizon is `horizon`; returns the first
    /// sector that holds something it may not, described, or nothing when all is well.
    std::optional<std::string> check(const Bytes& disk, uint64_t horizon) const {
        if (disk.size() != initial_.size()) return "disk size changed";
        const std::vector<std::vector<size_t>> hist = histories();
        const uint64_t promised = promised_before(horizon);
        for (uint64_t s = 0; s < hist.size(); ++s) {
            const std::byte* got = disk.data() + s * kSector;
            if (allowed(hist[s], s, got, promised, horizon)) continue;
            return "sector " + std::to_string(s) + " (offset " + std::to_string(s * kSector) +
                   ") holds neither its durable content nor a later write's (" +
                   std::to_string(hist[s].size()) + " writes to it)";
        }
        return std::nullopt;
    }

  private:
    /// Every write issued before the last flush acknowledged before `horizon` began counts as
    /// durable if it was acknowledged before that flush was issued: returns that flush's issue.
    uint64_t promised_before(uint64_t horizon) const {
        uint64_t m = 0;
        for (const GuestFlush& f : flushes_)
            if (f.acked_clock < horizon) m = std::max(m, f.issued);
        return m;
    }
    bool durable(const GuestWrite& w, uint64_t promised, uint64_t horizon) const {
        return (w.acked != 0 && w.acked < promised) || (w.fua && w.acked_clock < horizon);
    }
    /// For each sector, the writes touching it in the order of their acknowledgements.
    std::vector<std::vector<size_t>> histories() const {
        std::vector<size_t> order(writes_.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        auto key = [&](size_t i) { return writes_[i].acked ? writes_[i].acked : UINT64_MAX; };
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t a, size_t b) { return key(a) < key(b); });
        std::vector<std::vector<size_t>> hist(initial_.size() / kSector);
        for (size_t i : order) {
            const GuestWrite& w = writes_[i];
            for (uint64_t s = w.offset / kSector; s * kSector < w.offset + w.length; ++s)
                hist[s].push_back(i);
        }
        return hist;
    }
    /// True when sector `s` reading `got` is allowed by its history.
    bool allowed(const std::vector<size_t>& h, uint64_t s, const std::byte* got, uint64_t promised,
                 uint64_t horizon) const {
        size_t from = 0;  // first candidate: the last durable write, or the initial content
        bool initial_ok = true;
        for (size_t i = 0; i < h.size(); ++i)
            if (durable(writes_[h[i]], promised, horizon)) from = i, initial_ok = false;
        if (initial_ok && std::memcmp(got, initial_.data() + s * kSector, kSector) == 0)
            return true;
        for (size_t i = from; i < h.size(); ++i)
            if (sector_of(writes_[h[i]], s, got)) return true;
        return false;
    }
    /// True when write `w` put `got` into sector `s`.
    static bool sector_of(const GuestWrite& w, uint64_t s, const std::byte* got) {
        if (w.data.empty())
            return std::all_of(got, got + kSector, [](std::byte b) { return b == std::byte{0}; });
        return std::memcmp(got, w.data.data() + (s * kSector - w.offset), kSector) == 0;
    }

    Bytes initial_;
    std::vector<GuestWrite> writes_;
    std::vector<GuestFlush> flushes_;
    uint64_t events_ = 0;
};

}  // namespace qnbd::test::crash
