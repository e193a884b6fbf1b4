// --export name=NAME,file=PATH[,format=qcow2|raw][,read-only=on][,description=TEXT]
// [,allocation-depth=on]: several exports in one process.
#pragma once

#include <string>
#include <vector>

#include "base/result.hpp"
#include "server/config.hpp"

namespace qnbd::server {

/// Parses one --export value (qemu's KEY=VALUE spelling, commas in values doubled).
Result<ExportSpec> parse_export_spec(const std::string& text);

/// `base` serving the export of `e` (its image, name, description, format, -r and -A).
Config config_for(const Config& base, const ExportSpec& e);

/// Parses every --export into `c.exports` and checks them against the rest of `c`: no IMAGE
/// argument, -x, -D, -o or -c beside them, names distinct. The error says what clashes.
Result<void> set_exports(Config& c, const std::vector<std::string>& specs);

}  // namespace qnbd::server
