// Crash states of a recorded run, in the manner of dm-log-writes and CrashMonkey: from the
// operations a recording file logged (support/recording_file.hpp) and the file as it was before
// the run, the file contents a power failure at any moment could have left.
//
// The model of the disk is a volatile write cache. A change (write, fallocate, truncate) that
// completed before a sync was issued is durable once that sync completes; changes completed
// since then may each have reached the disk or not, in any order, and a write may be torn at
// 512-byte sector boundaries. So the run splits into segments, one per sync: changes before
// the segment's durable point are all kept, and each crash state of the segment keeps some of
// its pending changes (every prefix in completion order, all but one of them, random subsets
// applied in random order, and torn writes).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tests/unit/support/recording_file.hpp"
#include "tests/unit/support/units.hpp"

namespace qnbd::test::crash {

/// A 512-byte sector: the unit a disk writes atomically.
inline constexpr uint64_t kSector = 512;

/// What one file went through during a run.
struct FileHistory {
    Bytes base;                     ///< The file before the run.
    std::vector<OpRecord> changes;  ///< Successful writes, fallocates, truncates, by completion.
    std::vector<OpRecord> syncs;    ///< Successful syncs, by completion.
};

/// The history of `path` in `ops` (a recording log with data), starting from `base`.
inline FileHistory history_of(const std::vector<OpRecord>& ops, const std::string& path,
                              Bytes base) {
    FileHistory h;
    h.base = std::move(base);
    for (const OpRecord& r : ops) {
        if (r.path != path || r.error != 0 || r.done == 0 || r.kind == OpKind::Read) continue;
        (r.kind == OpKind::Sync ? h.syncs : h.changes).push_back(r);
    }
    auto by_done = [](const OpRecord& a, const OpRecord& b) { return a.done < b.done; };
    std::sort(h.changes.begin(), h.changes.end(), by_done);
    std::sort(h.syncs.begin(), h.syncs.end(), by_done);
    return h;
}

/// Changes [0, durable) survive every crash of the segment; [durable, end) may or may not.
struct Segment {
    size_t durable = 0;
    size_t end = 0;
    /// Guest flushes acknowledged before this clock value must be kept by every state.
    uint64_t horizon = UINT64_MAX;
};

/// Number of changes that completed before clock value `clock`.
inline size_t completed_before(const FileHistory& h, uint64_t clock) {
    size_t n = 0;
    while (n < h.changes.size() && h.changes[n].done < clock) ++n;
    return n;
}

/// One segment before the first sync completes and one after each sync: a crash before sync
/// k+1 completes keeps what sync k covered (changes completed before sync k was issued).
inline std::vector<Segment> segments(const FileHistory& h) {
    std::vector<Segment> out;
    size_t durable = 0;
    for (size_t k = 0; k <= h.syncs.size(); ++k) {
        if (k > 0) durable = std::max(durable, completed_before(h, h.syncs[k - 1].seq));
        Segment s;
        s.durable = durable;
        if (k < h.syncs.size()) {
            s.end = std::max(durable, completed_before(h, h.syncs[k].done));
            s.horizon = h.syncs[k].done;
        } else {
            s.end = h.changes.size();
        }
        out.push_back(s);
    }
    return out;
}

/// Applies a change (or, with `keep`, only the 512-byte sectors of a write that it marks) to
/// the contents of a file.
inline void apply(Bytes& file, const OpRecord& op, const std::vector<bool>* keep = nullptr) {
    const uint64_t end = op.offset + op.length;
    switch (op.kind) {
        case OpKind::Write:
            if (file.size() < end) file.resize(end);
            for (uint64_t s = 0; s * kSector < op.length; ++s) {
                if (keep && !(*keep)[s]) continue;
                const uint64_t n = std::min(kSector, op.length - s * kSector);
                std::memcpy(file.data() + op.offset + s * kSector, op.data.data() + s * kSector, n);
            }
            return;
        case OpKind::Fallocate:
            if (op.mode == io::Fallocate::Allocate) {
                if (file.size() < end) file.resize(end);
                return;
            }
            if (op.offset < file.size())
                std::fill(file.begin() + op.offset,
                          file.begin() + std::min<uint64_t>(end, file.size()), std::byte{0});
            return;
        case OpKind::Truncate:
            file.resize(op.offset);
            return;
        default:
            return;
    }
}

/// How many crash states of each kind a segment yields.
struct Budget {
    size_t prefixes = 64;  ///< At most this many prefixes (spread evenly when there are more).
    size_t subsets = 4;    ///< Random subsets of the pending changes, in random order.
    size_t torn = 4;       ///< States with one pending write torn at sector boundaries.
};

/// One crash state: a segment, the pending changes kept (indexes into FileHistory::changes, in
/// the order applied) and optionally one more write of which only some sectors are kept.
struct StatePlan {
    size_t segment = 0;
    std::vector<size_t> kept;
    std::optional<size_t> torn;
    std::vector<bool> sectors;  ///< For `torn`: which of its sectors reach the disk.

    /// A line that identifies the state in a failure message.
    std::string describe(const FileHistory& h) const {
        std::ostringstream os;
        os << "segment " << segment << ", kept pending changes [";
        for (size_t i : kept) os << ' ' << i << '@' << h.changes[i].offset;
        os << " ]";
        if (torn) {
            os << ", torn write " << *torn << " at " << h.changes[*torn].offset << " sectors ";
            for (bool b : sectors) os << (b ? '1' : '0');
        }
        return os.str();
    }
};

/// Random sectors of a write of `length` bytes: neither none nor all of them.
inline std::vector<bool> torn_sectors(uint64_t length, std::mt19937_64& rng) {
    const size_t n = (length + kSector - 1) / kSector;
    std::vector<bool> keep(n);
    for (;;) {
        size_t on = 0;
        for (size_t i = 0; i < n; ++i) on += (keep[i] = (rng() & 1) != 0);
        if (on > 0 && on < n) return keep;
    }
}

/// Prefix lengths 0..pending, or `max` of them spread evenly (first and last included).
inline std::vector<size_t> prefix_lengths(size_t pending, size_t max) {
    std::vector<size_t> out;
    if (pending + 1 <= max || max < 2) {
        for (size_t p = 0; p <= pending; ++p) out.push_back(p);
        return out;
    }
    for (size_t i = 0; i < max; ++i) out.push_back(i * pending / (max - 1));
    return out;
}

/// The crash states of segment `si` within `budget`.
inline std::vector<StatePlan> plan_segment(const FileHistory& h, const Segment& s, size_t si,
                                           const Budget& budget, std::mt19937_64& rng) {
    std::vector<StatePlan> out;
    const size_t pending = s.end - s.durable;
    for (size_t p : prefix_lengths(pending, budget.prefixes)) {
        StatePlan plan{si, {}, std::nullopt, {}};
        for (size_t i = 0; i < p; ++i) plan.kept.push_back(s.durable + i);
        out.push_back(std::move(plan));
    }
    if (pending < 2) return out;
    // All but one, in completion order: a later change kept while an earlier one was lost.
    for (size_t skip : prefix_lengths(pending - 1, budget.prefixes)) {
        StatePlan plan{si, {}, std::nullopt, {}};
        for (size_t i = s.durable; i < s.end; ++i)
            if (i != s.durable + skip) plan.kept.push_back(i);
        out.push_back(std::move(plan));
    }
    for (size_t n = 0; n < budget.subsets; ++n) {
        StatePlan plan{si, {}, std::nullopt, {}};
        for (size_t i = s.durable; i < s.end; ++i)
            if (rng() & 1) plan.kept.push_back(i);
        std::shuffle(plan.kept.begin(), plan.kept.end(), rng);
        out.push_back(std::move(plan));
    }
    std::vector<size_t> tearable;
    for (size_t i = s.durable; i < s.end; ++i)
        if (h.changes[i].kind == OpKind::Write && h.changes[i].length > kSector)
            tearable.push_back(i);
    for (size_t n = 0; n < budget.torn && !tearable.empty(); ++n) {
        const size_t t = tearable[rng() % tearable.size()];
        StatePlan plan{si, {}, t, torn_sectors(h.changes[t].length, rng)};
        for (size_t i = s.durable; i < s.end; ++i)
            if (i != t && (rng() & 1)) plan.kept.push_back(i);
        out.push_back(std::move(plan));
    }
    return out;
}

/// The file contents of a crash state, given the durable contents of its segment.
inline Bytes materialise(const FileHistory& h, const Bytes& durable, const StatePlan& plan) {
    Bytes file = durable;
    for (size_t i : plan.kept) apply(file, h.changes[i]);
    if (plan.torn) apply(file, h.changes[*plan.torn], &plan.sectors);
    return file;
}

/// Calls `fn(plan, segment, contents)` for every crash state of the run, segment by segment.
template <class F>
void for_each_state(const FileHistory& h, const Budget& budget, uint64_t seed, F fn) {
    std::mt19937_64 rng(seed);
    const std::vector<Segment> segs = segments(h);
    Bytes durable = h.base;
    size_t applied = 0;
    for (size_t si = 0; si < segs.size(); ++si) {
        for (; applied < segs[si].durable; ++applied) apply(durable, h.changes[applied]);
        for (const StatePlan& plan : plan_segment(h, segs[si], si, budget, rng))
            fn(plan, segs[si], materialise(h, durable, plan));
    }
}

}  // namespace qnbd::test::crash
