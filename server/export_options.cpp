#include "server/export_options.hpp"

#include <set>

#include "server/qemu_opts.hpp"

namespace qnbd::server {

Result<ExportSpec> parse_export_spec(const std::string& text) {
    const std::string what = "--export " + text;
    auto props = qemu_key_values(split_qemu_opts(text), 0, what);
    if (!props) return props.error();
    if (auto r = only_keys(
            *props,
            {"name", "file", "format", "read-only", "description", "allocation-depth", "bitmap"},
            what);
        !r)
        return r.error();
    ExportSpec e;
    auto get = [&](const char* k) { return props->count(k) ? props->at(k) : std::string(); };
    if (!props->count("name")) return Error{EINVAL, what + ": name= is required"};
    e.name = get("name");
    e.file = get("file");
    if (e.file.empty()) return Error{EINVAL, what + ": file= is required"};
    e.format = get("format");
    if (!e.format.empty() && e.format != "qcow2" && e.format != "raw")
        return Error{EINVAL, what + ": format must be qcow2 or raw"};
    e.description = get("description");
    auto ro = on_off(*props, "read-only", false, what);
    if (!ro) return ro.error();
    e.read_only = *ro;
    auto depth = on_off(*props, "allocation-depth", false, what);
    if (!depth) return depth.error();
    e.allocation_depth = *depth;
    if (props->count("bitmap")) {
        if (get("bitmap").empty()) return Error{EINVAL, what + ": bitmap= needs a name"};
        e.bitmaps.push_back(get("bitmap"));
    }
    return e;
}

Result<void> set_exports(Config& c, const std::vector<std::string>& specs) {
    if (specs.empty()) return ok();
    if (!c.image.empty())
        return Error{EINVAL,
                     "give the images either with --export file= or as the argument, "
                     "not both"};
    if (!c.export_name.empty() || !c.description.empty())
        return Error{EINVAL, "-x and -D name a single export; use --export name=,description="};
    if (c.offset) return Error{EINVAL, "-o cannot be used with --export"};
    if (!c.bitmaps.empty())
        return Error{EINVAL, "-B names a bitmap of the single export; use --export bitmap="};
    if (!c.connect_device.empty()) return Error{EINVAL, "-c serves one image; not with --export"};
    std::set<std::string> names;
    for (const auto& text : specs) {
        auto e = parse_export_spec(text);
        if (!e) return e.error();
        if (!names.insert(e->name).second)
            return Error{EINVAL, "--export: the name '" + e->name + "' is used twice"};
        c.exports.push_back(std::move(*e));
    }
    return ok();
}

Config config_for(const Config& c, const ExportSpec& e) {
    Config d = c;
    d.exports.clear();
    d.image = e.file;
    d.export_name = e.name;
    d.description = e.description;
    if (!e.format.empty()) d.format = e.format;
    d.read_only = c.read_only || e.read_only;
    d.allocation_depth = c.allocation_depth || e.allocation_depth;
    d.bitmaps = e.bitmaps;
    return d;
}

std::vector<Config> export_configs(const Config& c) {
    if (c.exports.empty()) return {c};
    std::vector<Config> out;
    for (const ExportSpec& e : c.exports) out.push_back(config_for(c, e));
    return out;
}

}  // namespace qnbd::server
