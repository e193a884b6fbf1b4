// Metadata contexts: those qnbd serves (base:allocation, qemu:allocation-depth and one
// qemu:dirty-bitmap:NAME per exported bitmap), parsing of query strings into namespace and
// leaf, and which contexts a LIST or SET query selects.
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
    first_dirty_bitmap = 3,     ///< "qemu:dirty-bitmap:NAME" of an export's first bitmap.
};

constexpr std::string_view kBaseAllocation = "base:allocation";
constexpr std::string_view kQemuAllocationDepth = "qemu:allocation-depth";
constexpr std::string_view kQemuDirtyBitmapPrefix = "qemu:dirty-bitmap:";
/// Most bitmaps one export offers (each is a context; IDs 3 to 3 + this - 1).
inline constexpr size_t kMaxExportBitmaps = 16;

/// The fixed contexts, in ID order.
constexpr MetaContext kAllMetaContexts[] = {MetaContext::base_allocation,
                                            MetaContext::qemu_allocation_depth};

/// Wire ID of a context.
constexpr uint32_t context_id(MetaContext c) {
    return static_cast<uint32_t>(c);
}

/// The context of an export's bitmap number `i` (below kMaxExportBitmaps).
constexpr MetaContext dirty_bitmap_context(size_t i) {
    return static_cast<MetaContext>(context_id(MetaContext::first_dirty_bitmap) + i);
}

/// Which of the export's bitmaps `c` is, if it is a dirty-bitmap context.
std::optional<size_t> dirty_bitmap_index(MetaContext c);

/// Full name of a context ("base:allocation"); `bitmaps` names the export's bitmaps in order.
std::string context_name(MetaContext c, std::span<const std::string> bitmaps = {});

/// The context with wire ID `id` on an export with `bitmaps` bitmaps, if there is one.
std::optional<MetaContext> context_from_id(uint32_t id, size_t bitmaps = 0);

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
    static constexpr uint32_t bit(MetaContext c) {
        return static_cast<uint32_t>(c) < 32 ? 1u << static_cast<uint32_t>(c) : 0;
    }
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
/// "qemu:" = all of that namespace; "qemu:dirty-bitmap:" = every bitmap (as qemu); full names
/// = that context; anything else = nothing. `bitmaps` names the export's bitmaps.
MetaContextSet match_list_queries(std::span<const std::string> queries, MetaContextSet available,
                                  std::span<const std::string> bitmaps = {});

/// Contexts NBD_OPT_SET_META_CONTEXT selects: exact full names only (wildcards such as "base:"
/// are ignored, as the spec requires); no queries = none.
MetaContextSet match_set_queries(std::span<const std::string> queries, MetaContextSet available,
                                 std::span<const std::string> bitmaps = {});

}  // namespace qnbd::nbd
