// Metadata contexts: the two qnbd serves (base:allocation and qemu:allocation-depth), parsing of
// query strings into namespace and leaf, and which contexts a LIST or SET query selects.
#pragma once

#include <bit>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qnbd::nbd {

/// A metadata context qnbd can serve. The value is the context ID sent in
/// NBD_REP_META_CONTEXT replies to NBD_OPT_SET_META_CONTEXT and in block status chunks.
enum class MetaContext : uint32_t {
    base_allocation = 1,        ///< "base:allocation": NBD_STATE_HOLE / NBD_STATE_ZERO.
    qemu_allocation_depth = 2,  ///< "qemu:allocation-depth": 0 unallocated, 1 top, 2+ backing.
};

constexpr std::string_view kBaseAllocation = "base:allocation";
constexpr std::string_view kQemuAllocationDepth = "qemu:allocation-depth";

/// Every context, in ID order.
constexpr MetaContext kAllMetaContexts[] = {MetaContext::base_allocation,
                                            MetaContext::qemu_allocation_depth};

/// Wire ID of a context.
constexpr uint32_t context_id(MetaContext c) {
    return static_cast<uint32_t>(c);
}

/// Full name of a context ("base:allocation").
std::string_view context_name(MetaContext c);

/// The context with wire ID `id`, if there is one.
std::optional<MetaContext> context_from_id(uint32_t id);

/// A small set of contexts (a bit per context).
class MetaContextSet {
  public:
    constexpr MetaContextSet() = default;
    constexpr MetaContextSet(std::initializer_list<MetaContext> cs) {
        for (MetaContext c : cs) add(c);
    }
    /// Every context qnbd knows.
    static constexpr MetaContextSet all() {
        return {MetaContext::base_allocation, MetaContext::qemu_allocation_depth};
    }

    constexpr void add(MetaContext c) { bits_ |= bit(c); }
    constexpr bool contains(MetaContext c) const { return (bits_ & bit(c)) != 0; }
    constexpr bool empty() const { return bits_ == 0; }
    /// Number of contexts in the set.
    constexpr size_t size() const { return static_cast<size_t>(std::popcount(bits_)); }
    /// Members in ID order.
    std::vector<MetaContext> list() const;
    constexpr MetaContextSet operator&(MetaContextSet o) const {
        return from_bits(bits_ & o.bits_);
    }
    constexpr MetaContextSet operator|(MetaContextSet o) const {
        return from_bits(bits_ | o.bits_);
    }
    constexpr bool operator==(const MetaContextSet&) const = default;

  private:
    static constexpr uint32_t bit(MetaContext c) { return 1u << static_cast<uint32_t>(c); }
    static constexpr MetaContextSet from_bits(uint32_t b) {
        MetaContextSet s;
        s.bits_ = b;
        return s;
    }
    uint32_t bits_ = 0;
};

/// A query split at its first colon: "qemu:dirty-bitmap:x" -> {"qemu", "dirty-bitmap:x"}.
struct MetaQuery {
    std::string_view ns;    ///< Namespace: non-empty, printable, no whitespace, no colon.
    std::string_view leaf;  ///< Everything after the colon; may be empty (a wildcard in LIST).
    bool operator==(const MetaQuery&) const = default;
};

/// Splits a query; nullopt if it has no colon or its namespace is empty or contains
/// whitespace or control characters (such queries select nothing).
std::optional<MetaQuery> parse_meta_query(std::string_view query);

/// Contexts NBD_OPT_LIST_META_CONTEXT reports: no queries = all of `available`; "base:" and
/// "qemu:" = all of that namespace; full names = that context; anything else = nothing.
MetaContextSet match_list_queries(std::span<const std::string> queries, MetaContextSet available);

/// Contexts NBD_OPT_SET_META_CONTEXT selects: exact full names only (wildcards such as "base:"
/// are ignored, as the spec requires); no queries = none.
MetaContextSet match_set_queries(std::span<const std::string> queries, MetaContextSet available);

}  // namespace qnbd::nbd
