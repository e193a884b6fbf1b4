// Metadata context names, query parsing, and LIST / SET matching.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "protocol/meta_context.hpp"

using namespace qnbd::nbd;

namespace {

using Queries = std::vector<std::string>;

const MetaContextSet kBoth = MetaContextSet::all();
const MetaContextSet kBaseOnly{MetaContext::base_allocation};
const MetaContextSet kDepthOnly{MetaContext::qemu_allocation_depth};

}  // namespace

TEST_CASE("protocol: meta context names and ids", "[protocol]") {
    CHECK(context_name(MetaContext::base_allocation) == "base:allocation");
    CHECK(context_name(MetaContext::qemu_allocation_depth) == "qemu:allocation-depth");
    CHECK(context_id(MetaContext::base_allocation) == 1);
    CHECK(context_id(MetaContext::qemu_allocation_depth) == 2);
    CHECK(context_from_id(1) == MetaContext::base_allocation);
    CHECK(context_from_id(2) == MetaContext::qemu_allocation_depth);
    CHECK_FALSE(context_from_id(0));
    CHECK_FALSE(context_from_id(3));
}

TEST_CASE("protocol: meta context sets", "[protocol]") {
    MetaContextSet s;
    CHECK(s.empty());
    CHECK(s.size() == 0);
    s.add(MetaContext::qemu_allocation_depth);
    CHECK(s.contains(MetaContext::qemu_allocation_depth));
    CHECK_FALSE(s.contains(MetaContext::base_allocation));
    CHECK(s.size() == 1);
    s.add(MetaContext::base_allocation);
    CHECK(s == kBoth);
    CHECK(s.size() == 2);
    CHECK(s.list() == std::vector<MetaContext>{MetaContext::base_allocation,
                                               MetaContext::qemu_allocation_depth});
    CHECK((kBaseOnly | kDepthOnly) == kBoth);
    CHECK((kBaseOnly & kDepthOnly).empty());
}

TEST_CASE("protocol: meta context query parsing", "[protocol]") {
    CHECK(parse_meta_query("base:allocation") == MetaQuery{"base", "allocation"});
    CHECK(parse_meta_query("base:") == MetaQuery{"base", ""});
    CHECK(parse_meta_query("qemu:dirty-bitmap:b0") == MetaQuery{"qemu", "dirty-bitmap:b0"});
    CHECK(parse_meta_query("x-vendor:thing") == MetaQuery{"x-vendor", "thing"});
    CHECK_FALSE(parse_meta_query(""));
    CHECK_FALSE(parse_meta_query("base"));
    CHECK_FALSE(parse_meta_query(":allocation"));
    CHECK_FALSE(parse_meta_query("ba se:allocation"));
    CHECK_FALSE(parse_meta_query("base\t:allocation"));
    CHECK_FALSE(parse_meta_query(std::string("ba\0se:x", 7)));
}

TEST_CASE("protocol: NBD_OPT_LIST_META_CONTEXT matching", "[protocol]") {
    SECTION("no queries lists everything available") {
        CHECK(match_list_queries(Queries{}, kBoth) == kBoth);
        CHECK(match_list_queries(Queries{}, kBaseOnly) == kBaseOnly);
        CHECK(match_list_queries(Queries{}, MetaContextSet{}).empty());
    }
    SECTION("namespace wildcards") {
        CHECK(match_list_queries(Queries{"base:"}, kBoth) == kBaseOnly);
        CHECK(match_list_queries(Queries{"qemu:"}, kBoth) == kDepthOnly);
        CHECK(match_list_queries(Queries{"qemu:", "base:"}, kBoth) == kBoth);
        CHECK(match_list_queries(Queries{"qemu:"}, kBaseOnly).empty());
    }
    SECTION("full names") {
        CHECK(match_list_queries(Queries{"base:allocation"}, kBoth) == kBaseOnly);
        CHECK(match_list_queries(Queries{"qemu:allocation-depth"}, kBoth) == kDepthOnly);
        CHECK(match_list_queries(Queries{"qemu:allocation-depth"}, kBaseOnly).empty());
    }
    SECTION("everything else matches nothing") {
        for (const char* q :
             {"base:alloc", "base:allocationx", "qemu:dirty-bitmap:", "qemu:dirty-bitmap:b0",
              "other:", "x-foo:allocation", "", "allocation", "BASE:allocation", ":"}) {
            INFO(q);
            CHECK(match_list_queries(Queries{q}, kBoth).empty());
        }
    }
    SECTION("duplicates select once") {
        auto s = match_list_queries(Queries{"base:allocation", "base:", "base:allocation"}, kBoth);
        CHECK(s == kBaseOnly);
        CHECK(s.size() == 1);
    }
}

TEST_CASE("protocol: NBD_OPT_SET_META_CONTEXT matching", "[protocol]") {
    CHECK(match_set_queries(Queries{}, kBoth).empty());
    CHECK(match_set_queries(Queries{"base:allocation"}, kBoth) == kBaseOnly);
    CHECK(match_set_queries(Queries{"qemu:allocation-depth"}, kBoth) == kDepthOnly);
    CHECK(match_set_queries(Queries{"qemu:allocation-depth", "base:allocation"}, kBoth) == kBoth);
    CHECK(match_set_queries(Queries{"qemu:allocation-depth"}, kBaseOnly).empty());
    SECTION("wildcards are ignored in SET") {
        CHECK(match_set_queries(Queries{"base:"}, kBoth).empty());
        CHECK(match_set_queries(Queries{"qemu:"}, kBoth).empty());
        CHECK(match_set_queries(Queries{"base:", "qemu:allocation-depth"}, kBoth) == kDepthOnly);
    }
    SECTION("unknown names are ignored") {
        CHECK(match_set_queries(Queries{"qemu:dirty-bitmap:b0", "x:y", "junk"}, kBoth).empty());
    }
}

TEST_CASE("protocol: dirty-bitmap contexts of an export", "[protocol]") {
    const Queries names{"b0", "b1"};
    const MetaContext b0 = dirty_bitmap_context(0), b1 = dirty_bitmap_context(1);
    MetaContextSet offered = kBoth;
    offered.add(b0);
    offered.add(b1);
    CHECK(context_id(b0) == 3);
    CHECK(context_name(b1, names) == "qemu:dirty-bitmap:b1");
    CHECK(dirty_bitmap_index(b1) == 1u);
    CHECK_FALSE(dirty_bitmap_index(MetaContext::qemu_allocation_depth));
    CHECK(context_from_id(4, 2) == b1);
    CHECK_FALSE(context_from_id(5, 2));
    CHECK(offered.list() == std::vector<MetaContext>{MetaContext::base_allocation,
                                                     MetaContext::qemu_allocation_depth, b0, b1});
    SECTION("LIST") {
        CHECK(match_list_queries(Queries{}, offered, names) == offered);
        CHECK(match_list_queries(Queries{"qemu:"}, offered, names) ==
              MetaContextSet{MetaContext::qemu_allocation_depth, b0, b1});
        CHECK(match_list_queries(Queries{"qemu:dirty-bitmap:"}, offered, names) ==
              MetaContextSet{b0, b1});
        CHECK(match_list_queries(Queries{"qemu:dirty-bitmap:b1"}, offered, names) ==
              MetaContextSet{b1});
        CHECK(match_list_queries(Queries{"qemu:dirty-bitmap:b2"}, offered, names).empty());
    }
    SECTION("SET") {
        CHECK(match_set_queries(Queries{"qemu:dirty-bitmap:b0", "base:allocation"}, offered,
                                names) == MetaContextSet{MetaContext::base_allocation, b0});
        CHECK(match_set_queries(Queries{"qemu:dirty-bitmap:"}, offered, names).empty());
        CHECK(match_set_queries(Queries{"qemu:dirty-bitmap:b1"}, kBoth, names).empty());
    }
}
