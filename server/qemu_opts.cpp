#include "server/qemu_opts.hpp"

namespace qnbd::server {

std::vector<std::string> split_qemu_opts(const std::string& s) {
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

Result<std::map<std::string, std::string>> qemu_key_values(const std::vector<std::string>& parts,
                                                           size_t first, const std::string& what) {
    std::map<std::string, std::string> props;
    for (size_t i = first; i < parts.size(); ++i) {
        const auto eq = parts[i].find('=');
        if (eq == std::string::npos || eq == 0)
            return Error{EINVAL, what + ": '" + parts[i] + "' is not KEY=VALUE"};
        if (!props.emplace(parts[i].substr(0, eq), parts[i].substr(eq + 1)).second)
            return Error{EINVAL, what + ": " + parts[i].substr(0, eq) + " is given twice"};
    }
    return props;
}

Result<void> only_keys(const std::map<std::string, std::string>& props,
                       std::initializer_list<const char*> allowed, const std::string& what) {
    for (const auto& [k, v] : props) {
        bool known = false;
        for (const char* a : allowed) known = known || k == a;
        if (!known) return Error{EINVAL, what + ": property '" + k + "' is not supported by qnbd"};
    }
    return ok();
}

Result<bool> on_off(const std::map<std::string, std::string>& props, const std::string& key,
                    bool dflt, const std::string& what) {
    auto it = props.find(key);
    if (it == props.end()) return dflt;
    if (it->second == "on" || it->second == "yes" || it->second == "true") return true;
    if (it->second == "off" || it->second == "no" || it->second == "false") return false;
    return Error{EINVAL, what + ": " + key + " must be on or off"};
}

}  // namespace qnbd::server
