// qemu's QemuOpts spelling of option values (`--object TYPE,KEY=VALUE,...`,
// `--export KEY=VALUE,...`): commas separate the parts, a comma inside a value is doubled.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "base/result.hpp"

namespace qnbd::server {

/// The comma-separated parts of `text`, with ",," turned back into ",".
std::vector<std::string> split_qemu_opts(const std::string& text);

/// The KEY=VALUE parts of `parts` (from index `first` on); `what` names the option in errors
/// (a part without '=', a key given twice).
Result<std::map<std::string, std::string>> qemu_key_values(const std::vector<std::string>& parts,
                                                           size_t first, const std::string& what);

/// An error unless every key of `props` is in `allowed`.
Result<void> only_keys(const std::map<std::string, std::string>& props,
                       std::initializer_list<const char*> allowed, const std::string& what);

/// on/off (also yes/no, true/false) for `key`, or `dflt` when absent.
Result<bool> on_off(const std::map<std::string, std::string>& props, const std::string& key,
                    bool dflt, const std::string& what);

}  // namespace qnbd::server
