// qemu's tools as the tests' oracle: building images with qemu-img/qemu-io and reading qemu's
// view of them (convert, info, check, map, read patterns).
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "tests/unit/support/files.hpp"
#include "tests/unit/support/shell.hpp"
#include "tests/unit/support/units.hpp"

namespace qnbd::test {

/// Decimal text of a number (qemu-io offsets and lengths).
inline std::string n(uint64_t v) {
    return std::to_string(v);
}

/// `qemu-img create -f qcow2` of `size` bytes with options `opts` ("k=v,k=v", may be empty) and
/// an optional backing file of format `backing_fmt`. Runs in the image's directory, so relative
/// backing and data file names are stored as given and resolve next to the image.
inline void qemu_create(const std::string& path, uint64_t size, const std::string& opts = "",
                        const std::string& backing = "", const std::string& backing_fmt = "") {
    const std::string dir = std::filesystem::path(path).parent_path().string();
    std::string cmd = "cd " + shq(dir.empty() ? "." : dir) + " && qemu-img create -q -f qcow2";
    if (!opts.empty()) cmd += " -o " + shq(opts);
    if (!backing.empty()) cmd += " -b " + shq(backing);
    if (!backing.empty() && !backing_fmt.empty()) cmd += " -F " + shq(backing_fmt);
    run_ok(cmd + " " + shq(path) + " " + std::to_string(size));
}

/// Runs qemu-io commands (e.g. "write -P 0x11 0 64k") in one session on an image; throws if
/// qemu-io fails.
inline void qemu_io(const std::string& path, const std::vector<std::string>& cmds,
                    const std::string& fmt = "qcow2") {
    std::string cmd = "qemu-io -f " + fmt;
    for (const auto& c : cmds) cmd += " -c " + shq(c);
    run_ok(cmd + " " + shq(path));
}

/// qemu's view of the guest contents: `qemu-img convert -O raw` read back.
inline Bytes qemu_raw(const std::string& path) {
    std::string out = path + ".qemu-view.raw";
    run_ok("qemu-img convert -O raw " + shq(path) + " " + shq(out));
    Bytes data = read_file(out);
    std::remove(out.c_str());
    return data;
}

/// Value of an integer field "key": N in qemu's JSON output, if present.
inline std::optional<uint64_t> json_uint(const std::string& json, const std::string& key) {
    auto pos = json.find("\"" + key + "\"");
    if (pos == std::string::npos) return std::nullopt;
    pos = json.find(':', pos);
    return std::strtoull(json.c_str() + pos + 1, nullptr, 10);
}

/// Flat "key": value pairs of one JSON object (values as raw text).
inline std::map<std::string, std::string> json_fields(const std::string& obj) {
    std::map<std::string, std::string> f;
    size_t i = 0;
    while ((i = obj.find('"', i)) != std::string::npos) {
        size_t j = obj.find('"', i + 1);
        std::string key = obj.substr(i + 1, j - i - 1);
        size_t colon = obj.find(':', j);
        size_t v = obj.find_first_not_of(' ', colon + 1);
        size_t end = obj[v] == '"' ? obj.find('"', v + 1) + 1 : obj.find_first_of(",}", v);
        f[key] = obj.substr(v, end - v);
        i = end;
    }
    return f;
}

/// `qemu-img info --output=json`.
inline std::string qemu_info_json(const std::string& path) {
    return run_ok("qemu-img info --output=json " + shq(path));
}

/// Virtual size per `qemu-img info`.
inline uint64_t qemu_virtual_size(const std::string& path) {
    return json_uint(qemu_info_json(path), "virtual-size").value();
}

/// `qemu-img check --output=json`: exit status (0 clean, 2 corrupt, 3 leaks only) and the
/// counters that must be zero.
struct CheckResult {
    int exit_status = -1;
    uint64_t leaks = 0, corruptions = 0, check_errors = 0, compressed_clusters = 0;
    std::string json;  ///< What qemu-img printed (stdout and stderr).
};

/// Runs `qemu-img check --output=json` on an image.
inline CheckResult qemu_check(const std::string& path) {
    auto out = sh_capture("qemu-img check --output=json " + shq(path) + " 2>&1");
    CheckResult r;
    r.exit_status = out.status;
    r.json = std::move(out.out);
    r.leaks = json_uint(r.json, "leaks").value_or(0);
    r.corruptions = json_uint(r.json, "corruptions").value_or(0);
    r.check_errors = json_uint(r.json, "check-errors").value_or(0);
    r.compressed_clusters = json_uint(r.json, "compressed-clusters").value_or(0);
    return r;
}

/// Fails the test unless `qemu-img check` finds the image clean: exit 0, no leaks, no
/// corruptions, no check errors.
inline void require_qemu_check_clean(const std::string& path) {
    auto r = qemu_check(path);
    INFO("qemu-img check " << path << ":\n" << r.json);
    CHECK(r.leaks == 0);
    CHECK(r.corruptions == 0);
    CHECK(r.check_errors == 0);
    REQUIRE(r.exit_status == 0);
}

/// Checks that qemu-io reads [off, off+len) of an image (format `fmt`) as byte `pattern`.
inline void check_qemu_pattern(const std::string& path, uint64_t off, uint64_t len, int pattern,
                               const std::string& fmt = "qcow2") {
    const std::string n = std::to_string(len);
    const std::string cmd =
        "read -P " + std::to_string(pattern) + " " + std::to_string(off) + " " + n;
    const auto out =
        sh_capture("qemu-io -r -f " + fmt + " -c " + shq(cmd) + " " + shq(path) + " 2>&1").out;
    INFO("qemu-io " << cmd << " on " << path << "\n" << out);
    CHECK_THAT(out, !Catch::Contains("failed") && Catch::Contains("read " + n + "/" + n));
}

/// One run of `qemu-img map --output=json`, translated to qnbd's depth convention
/// (1 = top layer, 0 = not allocated in any layer).
struct MapRun {
    uint64_t start = 0, length = 0;
    uint32_t depth = 0;
    bool zero = false, data = false;
    bool operator==(const MapRun&) const = default;
};

/// Prints a run for failure messages.
inline std::ostream& operator<<(std::ostream& os, const MapRun& r) {
    return os << "{start " << r.start << " len " << r.length << " depth " << r.depth
              << (r.zero ? " zero" : "") << (r.data ? " data" : "") << "}";
}

/// Merges adjacent runs with equal depth/zero/data (both sides are compared merged).
inline std::vector<MapRun> merge_runs(const std::vector<MapRun>& in) {
    std::vector<MapRun> out;
    for (const auto& r : in) {
        if (r.length == 0) continue;
        if (!out.empty() && out.back().depth == r.depth && out.back().zero == r.zero &&
            out.back().data == r.data && out.back().start + out.back().length == r.start) {
            out.back().length += r.length;
        } else {
            out.push_back(r);
        }
    }
    return out;
}

/// The objects of `qemu-img map --output=json`, each as its flat fields.
inline std::vector<std::map<std::string, std::string>> qemu_map_json(const std::string& path) {
    auto json = run_ok("qemu-img map --output=json " + shq(path));
    std::vector<std::map<std::string, std::string>> out;
    for (size_t i = 0; (i = json.find('{', i)) != std::string::npos;) {
        size_t j = json.find('}', i);
        out.push_back(json_fields(json.substr(i + 1, j - i - 1)));
        i = j;
    }
    return out;
}

/// `qemu-img map --output=json`, merged, in qnbd's depth convention.
inline std::vector<MapRun> qemu_map(const std::string& path) {
    std::vector<MapRun> runs;
    for (const auto& f : qemu_map_json(path)) {
        MapRun r;
        r.start = std::stoull(f.at("start"));
        r.length = std::stoull(f.at("length"));
        r.data = f.at("data") == "true";
        // The qcow2 layer never reports data and zero together. qemu adds "zero" to data
        // clusters whose host range is a file-system hole when its metadata-preallocation
        // heuristic fires (sparse image files with large clusters): a hint from the host
        // file, not from the image, so compare those runs as plain data.
        r.zero = f.at("zero") == "true" && !r.data;
        r.depth =
            f.at("present") == "true" ? static_cast<uint32_t>(std::stoul(f.at("depth"))) + 1 : 0;
        runs.push_back(r);
    }
    return merge_runs(runs);
}

}  // namespace qnbd::test
