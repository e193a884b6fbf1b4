// Metadata context names and query matching.
#include "protocol/meta_context.hpp"

namespace qnbd::nbd {
namespace {

/// IDs a context can have (the set's bits).
constexpr uint32_t kMaxContextId = 31;

}  // namespace

std::optional<size_t> dirty_bitmap_index(MetaContext c) {
    const uint32_t id = context_id(c), first = context_id(MetaContext::first_dirty_bitmap);
    if (id < first || id - first >= kMaxExportBitmaps) return std::nullopt;
    return id - first;
}

std::string context_name(MetaContext c, std::span<const std::string> bitmaps) {
    switch (c) {
        case MetaContext::base_allocation:
            return std::string(kBaseAllocation);
        case MetaContext::qemu_allocation_depth:
            return std::string(kQemuAllocationDepth);
        default:
            break;
    }
    auto i = dirty_bitmap_index(c);
    if (!i || *i >= bitmaps.size()) return {};
    return std::string(kQemuDirtyBitmapPrefix) + bitmaps[*i];
}

std::optional<MetaContext> context_from_id(uint32_t id, size_t bitmaps) {
    for (MetaContext c : kAllMetaContexts)
        if (context_id(c) == id) return c;
    const auto c = static_cast<MetaContext>(id);
    if (auto i = dirty_bitmap_index(c); i && *i < bitmaps) return c;
    return std::nullopt;
}

std::vector<MetaContext> MetaContextSet::list() const {
    std::vector<MetaContext> out;
    for (uint32_t id = 1; id <= kMaxContextId; ++id)
        if (contains(static_cast<MetaContext>(id))) out.push_back(static_cast<MetaContext>(id));
    return out;
}

std::optional<MetaQuery> parse_meta_query(std::string_view query) {
    size_t colon = query.find(':');
    if (colon == std::string_view::npos || colon == 0) return std::nullopt;
    std::string_view ns = query.substr(0, colon);
    for (char ch : ns) {
        auto u = static_cast<unsigned char>(ch);
        if (u <= 0x20 || u == 0x7f) return std::nullopt;  // Control characters and whitespace.
    }
    return MetaQuery{ns, query.substr(colon + 1)};
}

MetaContextSet match_list_queries(std::span<const std::string> queries, MetaContextSet available,
                                  std::span<const std::string> bitmaps) {
    if (queries.empty()) return available;
    MetaContextSet found;
    for (const std::string& q : queries) {
        auto query = parse_meta_query(q);
        if (!query) continue;
        for (MetaContext c : available.list()) {
            const std::string full = context_name(c, bitmaps);
            auto name = parse_meta_query(full);
            if (!name || name->ns != query->ns) continue;
            const bool all_bitmaps = query->leaf == "dirty-bitmap:" && dirty_bitmap_index(c);
            if (query->leaf.empty() || all_bitmaps || query->leaf == name->leaf) found.add(c);
        }
    }
    return found;
}

MetaContextSet match_set_queries(std::span<const std::string> queries, MetaContextSet available,
                                 std::span<const std::string> bitmaps) {
    MetaContextSet found;
    for (const std::string& q : queries)
        for (MetaContext c : available.list())
            if (q == context_name(c, bitmaps)) found.add(c);
    return found;
}

}  // namespace qnbd::nbd
