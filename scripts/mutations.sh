#!/usr/bin/env bash
# Shows that the tests of each crash-ordering rule (docs/ARCHITECTURE.md) fail without it: for
# every mutation below, removes the rule from the source (an exact text replacement), rebuilds
# the ASan/UBSan test build, runs the tests named for it and expects each of them to FAIL.
# The source is restored after each mutation (and on exit); the tree must be clean to start.
# Prints one line per test and exits 1 if a test expected to fail passed (the rule has lost
# its test) or a mutation no longer applies (the code moved: update it here).
#   scripts/mutations.sh [NAME...]     (default: all; NAME as in the list, e.g. R6 R7)
# Takes about 6 minutes on 2 cores after the test build exists. docs/RELIABILITY.md's table
# gives the results.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n $(git status --porcelain -- base io disk qcow2 image protocol server) ]]; then
    echo "mutations.sh: the product sources have uncommitted changes; commit or stash them" >&2
    exit 2
fi
cmake -S . -B build-test -G Ninja -DCMAKE_BUILD_TYPE=Debug -DQNBD_SANITIZE=ON >/dev/null
touched=""
trap '[[ -n $touched ]] && git checkout -- $touched' EXIT
log=build-test/mutations
mkdir -p "$log"
status=0

# mutate NAME FILE OLD NEW TEST...: OLD must occur exactly once in FILE.
mutate() {
    local name=$1 file=$2 old=$3 new=$4
    shift 4
    if [[ ${#only[@]} -gt 0 && ! " ${only[*]} " =~ " $name " ]]; then return; fi
    if ! python3 -c '
import sys
p, old, new = sys.argv[1:]
s = open(p).read()
if s.count(old) != 1: sys.exit(1)
open(p, "w").write(s.replace(old, new))' "$file" "$old" "$new"; then
        echo "$name: the text to mutate is not in $file once" >&2
        status=1
        return
    fi
    touched=$file
    if ! cmake --build build-test --target qnbd_tests >"$log/$name.build" 2>&1; then
        echo "$name: the mutated source does not build ($log/$name.build)" >&2
        status=1
    else
        local t i=0 r
        for t in "$@"; do
            i=$((i + 1))
            if timeout 600 build-test/tests/qnbd_tests "$t" >"$log/$name.$i.log" 2>&1; then
                r="PASSED (expected to fail)"
                status=1
            else
                r="fails"
            fi
            grep -q "No test cases matched" "$log/$name.$i.log" && { r="MATCHES NO TEST"; status=1; }
            echo "$name | $t | $r | $log/$name.$i.log"
        done
    fi
    git checkout -- "$file"
    touched=""
}

only=("$@")
F=qcow2/image_flush.cpp
CRASH64="crash states: writes and FUA writes and zeros and discards and flushes from 4 requesters"
FIRST='first barrier: dirty bit\, refcounts\, L2 tables\, L1 table\, then two syncs'

mutate R1 $F '    if (w.has_metadata())
        if (auto r = co_await mark_dirty_on_disk(); !r) co_return r;  // R1' \
    '    if ((false))
        if (auto r = co_await mark_dirty_on_disk(); !r) co_return r;  // R1' \
    "$FIRST" "crash states: lazy refcounts"
mutate R1-sync $F '    if (auto r = co_await write_header(); !r) co_return r;
    if (auto r = co_await sync_all(); !r) co_return r;
    header_on_disk_dirty_ = true;' \
    '    if (auto r = co_await write_header(); !r) co_return r;
    header_on_disk_dirty_ = true;' \
    "$FIRST"
CRASH_XL2="crash states: extended L2 entries (16 KiB clusters with 512-byte subclusters)"
CRASH_LAZY="crash states: lazy refcounts"
mutate R2-R4 $F '        if (w.l2_ordered) {' '        if ((false)) {' "$FIRST" "$CRASH_XL2" \
    "crash states: data of the backing file is never replaced by zeros"
mutate R3 $F '    if (w.refcounts.relocation) {  // R3: the whole new table durable before the header moves.
        if (auto r = co_await sync_pending(unsynced); !r) co_return r;' \
    '    if (w.refcounts.relocation) {  // R3: the whole new table durable before the header moves.' \
    "refcount table growth: new table synced before the header points to it" \
    "crash states: 512-byte clusters and 64-bit refcounts grow and move the refcount table"
mutate R5 $F '    if (!w.l1.empty()) {  // R5: new L2 tables durable before L1 points to them.
        if (auto r = co_await sync_pending(unsynced); !r) co_return r;' \
    '    if (!w.l1.empty()) {  // R5: new L2 tables durable before L1 points to them.' \
    "$FIRST"
mutate R6 $F '    BarrierWrites w = take_barrier_writes();
    Result<void> r' \
    '    BarrierWrites w = take_barrier_writes();
    while (!io_by_epoch_.empty() && io_by_epoch_.begin()->first <= w.epoch_cut)
        co_await io_done_.wait();
    (void)co_await refcounts_->apply_frees(w.epoch_cut);
    Result<void> r' \
    "deferred frees: a discarded cluster is not reused before its barrier has synced (R6)"
mutate R6-epoch qcow2/refcounts.cpp '        if (p.epoch > cut) return false;' '' \
    "deferred frees: a cluster discarded after a barrier's capture stays in use (R6)"
mutate R7 $F '    while (!io_by_epoch_.empty() && io_by_epoch_.begin()->first <= w.epoch_cut)
        co_await io_done_.wait();
    co_return' '    co_return' \
    "I/O epochs: a discarded cluster is not reused while a read of it is in flight (R7)"
mutate R8 qcow2/metadata_cache.cpp 'if (!e->dirty && !e->loading && e.use_count() == 1)' \
    'if (!e->loading && e.use_count() == 1)' \
    "dirty entries are never evicted" "diff_write: tiny metadata cache (L2 and refcount evictions)"
mutate R9 $F '    const uint64_t target = barrier_started_ + 1;' \
    '    const uint64_t target = std::max<uint64_t>(barrier_started_, 1);' \
    "group commit: 64 concurrent flushes share a few barriers" \
    "concurrency: flushes interleaved with writes" "$CRASH64"
mutate R10 $F '        restore(w);  // R10' '' \
    "host faults: EIO and ENOSPC once or persistent on each class of write"
mutate R11 qcow2/image.cpp '        if (result && header_on_disk_dirty_ && quiet()) {' \
    '        if (header_on_disk_dirty_) {' \
    "host faults: EIO and ENOSPC once or persistent on each class of write"
mutate R12 qcow2/image_write.cpp '    auto lock = co_await lock_cluster(c);
    auto l = co_await lookup(c);  // Again: it may have changed while we waited (R12).' \
    '    auto l = co_await lookup(c);  // Again: it may have changed while we waited (R12).
    auto lock = co_await lock_cluster(c);' \
    "concurrency: 96 writes into one fresh cluster and its neighbours" \
    "concurrency: a write lands while a partial write to the same fresh cluster is in flight"
mutate R13 qcow2/host_runs.cpp \
    '    if (!fresh && start > begin) tasks.push_back(zero_range(f, host + begin, start - begin));
    if (!fresh && end > data_end) tasks.push_back(zero_range(f, host + data_end, end - data_end));' \
    '    (void)fresh;' \
    "allocation: recycled clusters read zeros where the write did not reach"
mutate R14 qcow2/write_plan.cpp '    if (reuse && ((ci.alloc_mask >> first) & 1)) s.begin = start;
    if (reuse && ((ci.alloc_mask >> last) & 1)) s.end = start + len;' '' \
    "write plan: allocation shape keeps allocated edge subclusters untouched" \
    "concurrency: regression: subcluster allocation lost a concurrent in-place write"
mutate R15 qcow2/image.cpp '    if (img->read_only_) co_return img;  // R15: nothing is written.' '' \
    "diff_write: a read-only session leaves a written image byte-identical"
mutate R16 qcow2/image.cpp '    if (auto r = co_await clear_autoclear_bits(); !r) co_return r;' '' \
    "autoclear: an unknown bit is cleared and synced before any other write (R16)"
mutate R17 qcow2/image_corrupt.cpp '    if (data_file_ || !meta_.overlaps(host, len)) co_return ok();' \
    '    co_return ok();' \
    "damage: a write through an L2 entry pointing at metadata marks the image corrupt"
mutate R18 image/open.cpp \
    '    opts.file_opener = io::latching_opener(std::move(opts.file_opener));  // R18' '' \
    "an EIO on any sync of a barrier fails every later flush until the image is reopened"
mutate R22-counted qcow2/refcount_alloc.cpp '        co_return Allocation{first, n, fresh, false};' \
    '        co_return Allocation{first, n, fresh, true};' "$FIRST" "$CRASH_LAZY"
mutate R22-zeros qcow2/image_write.cpp \
    '        !reuse && target.fresh && target.durable && reads_as_zero(ci, write_context());' \
    '        !reuse && target.fresh && target.durable;' \
    "crash states: data of the backing file is never replaced by zeros"
mutate R22-size qcow2/image_prealloc.cpp \
    '    const HostClusterIndex limit = geo_.host_cluster_of(HostOffset{reserved_end_});' \
    '    const HostClusterIndex limit{UINT64_MAX};' \
    "the clusters counted one barrier ahead lie inside the file as preallocated (R22)"
CRASH_BITMAPS="crash states: persistent bitmaps\, enabled and disabled\, stored at close"
mutate R19 qcow2/image_bitmaps.cpp '    co_return co_await sync_all();' '    co_return ok();' \
    "bitmaps: in_use is set and synced before any other write (R19)" "$CRASH_BITMAPS"
BITMAP_CLOSE="bitmaps: close counts the new clusters first and moves the header last (R20\, R21)"
mutate R20 qcow2/bitmap_store.cpp '    stage.dir_at = *dir_at;
    if (auto r = co_await flush_until_quiet(); !r) co_return r;' '    stage.dir_at = *dir_at;' \
    "$BITMAP_CLOSE" "$CRASH_BITMAPS"
mutate R21 qcow2/bitmap_store.cpp '    if (auto r = co_await sync_all(); !r) co_return r;

    // R21' '    // R21' "$BITMAP_CLOSE" "$CRASH_BITMAPS"
exit $status
