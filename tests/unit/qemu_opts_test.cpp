// qemu's KEY=VALUE option spelling (server/qemu_opts.*), --export specs
// (server/export_options.*) and the TLS --object definitions (server/tls_options.cpp).
#include <catch2/catch.hpp>

#include "server/export_options.hpp"
#include "server/qemu_opts.hpp"
#include "server/tls_config.hpp"

using namespace qnbd::server;

TEST_CASE("qemu opts: doubled commas are commas inside a value", "[cli]") {
    const auto parts = split_qemu_opts("type,a=1,,2,b=,c=x,,");
    REQUIRE(parts == std::vector<std::string>{"type", "a=1,2", "b=", "c=x,"});
    auto kv = qemu_key_values(parts, 1, "--x");
    REQUIRE(kv);
    CHECK(kv->at("a") == "1,2");
    CHECK(kv->at("b").empty());
    CHECK(kv->at("c") == "x,");
    CHECK_FALSE(qemu_key_values({"a=1", "a=2"}, 0, "--x"));  // given twice
    CHECK_FALSE(qemu_key_values({"novalue"}, 0, "--x"));
    CHECK_FALSE(qemu_key_values({"=v"}, 0, "--x"));
}

TEST_CASE("export spec: every property and the refusals", "[cli]") {
    auto e = parse_export_spec(
        "name=disk,file=/i/a b.img,format=raw,read-only=on,description=x,,y,allocation-depth=yes,"
        "bitmap=b0");
    REQUIRE(e);
    CHECK(e->name == "disk");
    CHECK(e->file == "/i/a b.img");
    CHECK(e->format == "raw");
    CHECK(e->read_only);
    CHECK(e->description == "x,y");
    CHECK(e->allocation_depth);
    CHECK(e->bitmaps == std::vector<std::string>{"b0"});
    CHECK(parse_export_spec("name=,file=f"));  // the empty name is a name
    for (const char* bad : {"file=f", "name=n", "name=n,file=f,format=vmdk", "name=n,file=f,x=1",
                            "name=n,file=f,read-only=maybe", "name=n,file=f,bitmap="})
        CHECK_FALSE(parse_export_spec(bad));
    CHECK(parse_export_spec("name=n,file=f,bitmap=").error().message.find("bitmap= needs a name") !=
          std::string::npos);
}

TEST_CASE("export spec: clashes with the single-export options", "[cli]") {
    Config c;
    CHECK(set_exports(c, {"name=a,file=/a", "name=b,file=/b"}));
    REQUIRE(c.exports.size() == 2);
    const auto cfgs = export_configs(c);
    REQUIRE(cfgs.size() == 2);
    CHECK(cfgs[1].image == "/b");
    CHECK(cfgs[1].export_name == "b");
    Config twice;
    CHECK_FALSE(set_exports(twice, {"name=a,file=/a", "name=a,file=/b"}));
    Config with_image;
    with_image.image = "/x";
    CHECK_FALSE(set_exports(with_image, {"name=a,file=/a"}));
    Config with_name;
    with_name.export_name = "x";
    CHECK_FALSE(set_exports(with_name, {"name=a,file=/a"}));
    Config with_device;
    with_device.connect_device = "/dev/nbd0";
    CHECK_FALSE(set_exports(with_device, {"name=a,file=/a"}));
    Config with_bitmap;
    with_bitmap.bitmaps = {"b0"};
    CHECK_FALSE(set_exports(with_bitmap, {"name=a,file=/a"}));
    Config per_export;
    CHECK(set_exports(per_export, {"name=a,file=/a,bitmap=b0", "name=b,file=/b"}));
    CHECK(export_configs(per_export)[0].bitmaps == std::vector<std::string>{"b0"});
    CHECK(export_configs(per_export)[1].bitmaps.empty());
    Config single;
    single.image = "/x";
    CHECK(export_configs(single).size() == 1);
}

TEST_CASE("tls objects: qemu's spellings resolve and the rest is refused", "[cli]") {
    auto x = resolve_tls({"tls-creds-x509,id=t0,endpoint=server,dir=/p,verify-peer=off",
                          "authz-simple,id=a0,identity=O=Org,,CN=c"},
                         "t0", "a0");
    REQUIRE(x);
    REQUIRE(*x);
    CHECK((*x)->kind == TlsCredsConfig::Kind::X509);
    CHECK((*x)->dir == "/p");
    CHECK_FALSE((*x)->verify_peer);
    CHECK((*x)->authz_identity == "O=Org,CN=c");
    auto psk = resolve_tls({"qom-type=tls-creds-psk,id=p,dir=/k"}, "p", "");
    REQUIRE(psk);
    CHECK((*psk)->kind == TlsCredsConfig::Kind::Psk);
    CHECK((*psk)->verify_peer);  // the default; unused with PSK
    auto none = resolve_tls({}, "", "");
    REQUIRE(none);
    CHECK_FALSE(*none);
    const std::vector<std::vector<std::string>> bad_objects = {
        {"tls-creds-anon,id=t0"},
        {"secret,id=t0,data=x"},
        {"tls-creds-x509,id=t0,endpoint=client,dir=/p"},
        {"tls-creds-x509,id=t0,dir=/p,priority=NORMAL"},
        {"tls-creds-psk,id=t0,dir=/p,verify-peer=on"},
        {"tls-creds-x509,id=t0"},
        {"tls-creds-x509,dir=/p"},
        {"tls-creds-x509,id=t0,dir=/p", "tls-creds-psk,id=t0,dir=/q"},
    };
    for (const auto& objs : bad_objects) CHECK_FALSE(resolve_tls(objs, "t0", ""));
    CHECK_FALSE(resolve_tls({"tls-creds-x509,id=t0,dir=/p"}, "t1", ""));
    CHECK_FALSE(resolve_tls({"tls-creds-x509,id=t0,dir=/p"}, "", "a0"));
    CHECK_FALSE(resolve_tls({"tls-creds-x509,id=t0,dir=/p"}, "t0", "a0"));
    CHECK_FALSE(resolve_tls({"tls-creds-x509,id=t0,dir=/p", "authz-simple,id=a0"}, "t0", "a0"));
}
