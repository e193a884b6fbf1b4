// --object parsing for TLS (server/tls_config.hpp), in qemu's QemuOpts syntax: TYPE first,
// then KEY=VALUE pairs separated by commas; a comma inside a value is written twice.
#include <map>

#include "server/qemu_opts.hpp"
#include "server/tls_config.hpp"

namespace qnbd::server {
namespace {

/// One --object definition: its type and its properties.
struct ObjectDef {
    std::string type;
    std::map<std::string, std::string> props;
};

Result<ObjectDef> parse_object(const std::string& text) {
    auto parts = split_qemu_opts(text);
    ObjectDef d;
    d.type = parts[0];
    if (d.type.rfind("qom-type=", 0) == 0) d.type = d.type.substr(9);
    auto props = qemu_key_values(parts, 1, "--object " + text);
    if (!props) return props.error();
    d.props = std::move(*props);
    if (!d.props.count("id") || d.props["id"].empty())
        return Error{EINVAL, "--object " + text + ": id= is required"};
    return d;
}

/// How errors name an object.
std::string object_name(const ObjectDef& d) {
    return "--object " + d.type + ",id=" + d.props.at("id");
}

Result<TlsCredsConfig> creds_from(const ObjectDef& d) {
    TlsCredsConfig c;
    c.id = d.props.at("id");
    const bool x509 = d.type == "tls-creds-x509";
    c.kind = x509 ? TlsCredsConfig::Kind::X509 : TlsCredsConfig::Kind::Psk;
    if (auto r = x509 ? only_keys(d.props, {"id", "endpoint", "dir", "verify-peer"}, object_name(d))
                      : only_keys(d.props, {"id", "endpoint", "dir"}, object_name(d));
        !r)
        return r.error();
    auto ep = d.props.find("endpoint");
    if (ep != d.props.end() && ep->second != "server")
        return Error{EINVAL, "TLS credentials '" + c.id + "': endpoint must be server"};
    auto dir = d.props.find("dir");
    if (dir == d.props.end() || dir->second.empty())
        return Error{EINVAL, "TLS credentials '" + c.id + "': dir= is required"};
    c.dir = dir->second;
    auto v = on_off(d.props, "verify-peer", true, object_name(d));
    if (!v) return v.error();
    c.verify_peer = *v;
    return c;
}

}  // namespace

Result<std::optional<TlsCredsConfig>> resolve_tls(const std::vector<std::string>& objects,
                                                  const std::string& creds_id,
                                                  const std::string& authz_id) {
    std::map<std::string, ObjectDef> defs;
    for (const auto& text : objects) {
        auto d = parse_object(text);
        if (!d) return d.error();
        if (d->type != "tls-creds-x509" && d->type != "tls-creds-psk" && d->type != "authz-simple")
            return Error{EINVAL, "--object " + d->type +
                                     " is not supported by qnbd (tls-creds-x509, tls-creds-psk "
                                     "and authz-simple are)"};
        const std::string id = d->props.at("id");
        if (!defs.emplace(id, std::move(*d)).second)
            return Error{EINVAL, "--object: id '" + id + "' is defined twice"};
    }
    if (creds_id.empty()) {
        if (!authz_id.empty()) return Error{EINVAL, "--tls-authz needs --tls-creds"};
        return std::optional<TlsCredsConfig>{};
    }
    auto it = defs.find(creds_id);
    if (it == defs.end() || it->second.type.rfind("tls-creds-", 0) != 0)
        return Error{EINVAL, "--tls-creds " + creds_id + ": no tls-creds object with that id"};
    auto c = creds_from(it->second);
    if (!c) return c.error();
    if (!authz_id.empty()) {
        auto a = defs.find(authz_id);
        if (a == defs.end() || a->second.type != "authz-simple")
            return Error{EINVAL,
                         "--tls-authz " + authz_id + ": no authz-simple object with that id"};
        if (auto r = only_keys(a->second.props, {"id", "identity"}, object_name(a->second)); !r)
            return r.error();
        auto ident = a->second.props.find("identity");
        if (ident == a->second.props.end())
            return Error{EINVAL,
                         "--object authz-simple,id=" + authz_id + ": identity= is required"};
        c->authz_identity = ident->second;
    }
    return std::optional<TlsCredsConfig>{std::move(*c)};
}

}  // namespace qnbd::server
