#include "qcow2/metadata_cache.hpp"

#include <algorithm>

namespace qnbd::qcow2 {

CacheRef MetadataCache::find(HostOffset off) {
    auto it = map_.find(off);
    if (it == map_.end() || it->second->loading || it->second->load_error) return nullptr;
    ++stats_.cache_hits;
    touch(*it->second);
    return it->second;
}

awaitable<Result<CacheRef>> MetadataCache::get(HostOffset off) {
    if (CacheRef e = find(off)) co_return e;
    if (auto it = map_.find(off); it != map_.end()) {
        CacheRef e = it->second;
        while (e->loading) co_await e->loaded.wait();
        if (e->load_error) co_return *e->load_error;
        ++stats_.cache_hits;
        touch(*e);
        co_return e;
    }
    ++stats_.cache_misses;
    auto e = std::make_shared<CacheEntry>();
    e->offset = off;
    e->data = Buffer(cluster_size_);
    e->loading = true;
    touch(*e);
    map_[off] = e;
    evict();
    auto r = co_await file_.read_zero_padded(off, e->data.span());
    e->loading = false;
    if (!r) {
        e->load_error = r.error();
        if (auto it = map_.find(off); it != map_.end() && it->second == e) map_.erase(it);
        e->loaded.notify_all();
        co_return r.error();
    }
    e->loaded.notify_all();
    co_return e;
}

CacheRef MetadataCache::create(HostOffset off) {
    auto e = std::make_shared<CacheEntry>();
    e->offset = off;
    e->data = Buffer(cluster_size_);
    touch(*e);
    if (auto it = map_.find(off); it != map_.end() && it->second->dirty) --dirty_count_;
    map_[off] = e;
    mark_dirty(e);
    evict();
    return e;
}

void MetadataCache::mark_dirty(const CacheRef& e) {
    if (!e->dirty) {
        e->dirty = true;
        ++dirty_count_;
    }
    // An entry evicted while a caller held it comes back: its change must not be lost.
    auto& slot = map_[e->offset];
    if (slot != e) {
        if (slot && slot->dirty) --dirty_count_;
        slot = e;
    }
}

std::vector<DirtyCopy> MetadataCache::take_dirty() {
    std::vector<DirtyCopy> out;
    for (auto& [off, e] : map_) {
        if (!e->dirty) continue;
        out.push_back(DirtyCopy{e, e->data.clone()});
        e->dirty = false;
    }
    dirty_count_ = 0;
    std::sort(out.begin(), out.end(), [](const DirtyCopy& a, const DirtyCopy& b) {
        return a.entry->offset < b.entry->offset;
    });
    return out;
}

void MetadataCache::restore_dirty(std::vector<DirtyCopy>& copies) {
    for (auto& c : copies) mark_dirty(c.entry);
}

void MetadataCache::evict() {
    if (map_.size() * cluster_size_ <= budget_) return;
    std::vector<std::pair<uint64_t, HostOffset>> victims;
    for (auto& [off, e] : map_)  // R8: never a dirty, loading or held entry.
        if (!e->dirty && !e->loading && e.use_count() == 1) victims.emplace_back(e->last_use, off);
    std::sort(victims.begin(), victims.end());
    size_t target = budget_ / cluster_size_;
    for (auto& [use, off] : victims) {
        if (map_.size() <= target) break;
        map_.erase(off);
    }
}

}  // namespace qnbd::qcow2
