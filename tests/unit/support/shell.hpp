// Running shell commands from the tests: exit status, captured output, quoting.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace qnbd::test {

/// Runs a shell command; returns its exit status (-1 if it did not exit normally).
inline int sh(const std::string& cmd) {
    int rc = std::system(cmd.c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/// What a command printed on standard output, and its exit status.
struct ShellResult {
    int status = -1;
    std::string out;
};

/// Runs a shell command and captures its standard output, whatever its exit status.
inline ShellResult sh_capture(const std::string& cmd) {
    ShellResult r;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) throw std::runtime_error("popen failed: " + cmd);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    const int rc = pclose(p);
    r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    return r;
}

/// Runs a shell command and returns its standard output; throws if it fails.
inline std::string sh_output(const std::string& cmd) {
    auto r = sh_capture(cmd);
    if (r.status != 0) throw std::runtime_error("command failed: " + cmd + "\n" + r.out);
    return r.out;
}

/// Single-quotes `s` for /bin/sh.
inline std::string shq(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

/// Runs `cmd` (stderr folded into stdout); throws with its output if it fails.
inline std::string run_ok(const std::string& cmd) {
    return sh_output(cmd + " 2>&1");
}

}  // namespace qnbd::test
