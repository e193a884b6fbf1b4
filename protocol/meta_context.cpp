// Metadata context names and query matching.
#include "protocol/meta_context.hpp"

namespace qnbd::nbd {

std::string_view context_name(MetaContext c) {
    switch (c) {
        case MetaContext::base_allocation:
            return kBaseAllocation;
        case MetaContext::qemu_allocation_depth:
            return kQemuAllocationDepth;
    }
    return {};
}

std::optional<MetaContext> context_from_id(uint32_t id) {
    for (MetaContext c : kAllMetaContexts)
        if (context_id(c) == id) return c;
    return std::nullopt;
}

std::vector<MetaContext> MetaContextSet::list() const {
    std::vector<MetaContext> out;
    for (MetaContext c : kAllMetaContexts)
        if (contains(c)) out.push_back(c);
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

MetaContextSet match_list_queries(std::span<const std::string> queries, MetaContextSet available) {
    if (queries.empty()) return available;
    MetaContextSet found;
    for (const std::string& q : queries) {
        auto query = parse_meta_query(q);
        if (!query) continue;
        for (MetaContext c : kAllMetaContexts) {
            auto name = parse_meta_query(context_name(c));
            if (name->ns == query->ns && (query->leaf.empty() || query->leaf == name->leaf))
                found.add(c);
        }
    }
    return found & available;
}

MetaContextSet match_set_queries(std::span<const std::string> queries, MetaContextSet available) {
    MetaContextSet found;
    for (const std::string& q : queries)
        for (MetaContext c : kAllMetaContexts)
            if (q == context_name(c)) found.add(c);
    return found & available;
}

}  // namespace qnbd::nbd
