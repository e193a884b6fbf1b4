// --object parsing for TLS (server/tls_config.hpp), in qemu's QemuOpts syntax: TYPE first,
// then KEY=VALUE pairs separated by commas; a comma inside a value is written twice.
#include <map>

#include "server/tls_config.hpp"

namespace qnbd::server {
namespace {

/// One --object definition: its type and its properties.
struct ObjectDef {
    std::string type;
    std::map<std::string, std::string> props;
};

std::vector<std::string> split_opts(const std::string& s) {
    std::vector<std::string> out(1);
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == ',' && i + 1 < s.size() && s[i + 1] == ',') {
            out.back() += ',';
            ++i;
        } else if (s[i] == ',') {
            out.emplace_back();
        } else {
            out.back() += s[i];
        }
    }
    return out;
}

Result<ObjectDef> parse_object(const std::string& text) {
    auto parts = split_opts(text);
    ObjectDef d;
    d.type = parts[0];
    if (d.type.rfind("qom-type=", 0) == 0) d.type = d.type.substr(9);
    for (size_t i = 1; i < parts.size(); ++i) {
        const auto eq = parts[i].find('=');
        if (eq == std::string::npos || eq == 0)
            return Error{EINVAL, "--object " + text + ": '" + parts[i] + "' is not KEY=VALUE"};
        if (!d.props.emplace(parts[i].substr(0, eq), parts[i].substr(eq + 1)).second)
            return Error{EINVAL,
                         "--object " + text + ": " + parts[i].substr(0, eq) + " is given twice"};
    }
    if (!d.props.count("id") || d.props["id"].empty())
        return Error{EINVAL, "--object " + text + ": id= is required"};
    return d;
}

/// Checks that `d` has only `allowed` properties.
Result<void> only(const ObjectDef& d, std::initializer_list<const char*> allowed) {
    for (const auto& [k, v] : d.props) {
        bool known = false;
        for (const char* a : allowed) known = known || k == a;
        if (!known)
            return Error{EINVAL, "--object " + d.type + ",id=" + d.props.at("id") + ": property '" +
                                     k + "' is not supported by qnbd"};
    }
    return ok();
}

Result<bool> on_off(const ObjectDef& d, const std::string& key, bool dflt) {
    auto it = d.props.find(key);
    if (it == d.props.end()) return dflt;
    if (it->second == "on" || it->second == "yes" || it->second == "true") return true;
    if (it->second == "off" || it->second == "no" || it->second == "false") return false;
    return Error{EINVAL, "--object " + d.props.at("id") + ": " + key + " must be on or off"};
}

Result<TlsCredsConfig> creds_from(const ObjectDef& d) {
    TlsCredsConfig c;
    c.id = d.props.at("id");
    const bool x509 = d.type == "tls-creds-x509";
    c.kind = x509 ? TlsCredsConfig::Kind::X509 : TlsCredsConfig::Kind::Psk;
    if (auto r = x509 ? only(d, {"id", "endpoint", "dir", "verify-peer"})
                      : only(d, {"id", "endpoint", "dir"});
        !r)
        return r.error();
    auto ep = d.props.find("endpoint");
    if (ep != d.props.end() && ep->second != "server")
        return Error{EINVAL, "TLS credentials '" + c.id + "': endpoint must be server"};
    auto dir = d.props.find("dir");
    if (dir == d.props.end() || dir->second.empty())
        return Error{EINVAL, "TLS credentials '" + c.id + "': dir= is required"};
    c.dir = dir->second;
    auto v = on_off(d, "verify-peer", true);
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
        if (auto r = only(a->second, {"id", "identity"}); !r) return r.error();
        auto ident = a->second.props.find("identity");
        if (ident == a->second.props.end())
            return Error{EINVAL,
                         "--object authz-simple,id=" + authz_id + ": identity= is required"};
        c->authz_identity = ident->second;
    }
    return std::optional<TlsCredsConfig>{std::move(*c)};
}

}  // namespace qnbd::server
