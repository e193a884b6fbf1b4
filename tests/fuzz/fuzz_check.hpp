// Invariant checks of the fuzz targets: a violated invariant prints where and aborts, which
// libFuzzer reports as a crash and saves the input for.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace qnbd::fuzz {

[[noreturn]] inline void check_failed(const char* what, const char* file, int line) {
    std::fprintf(stderr, "%s:%d: fuzz invariant violated: %s\n", file, line, what);
    std::abort();
}

}  // namespace qnbd::fuzz

/// Aborts the fuzz run when `cond` is false.
#define FUZZ_CHECK(cond) ((cond) ? void(0) : ::qnbd::fuzz::check_failed(#cond, __FILE__, __LINE__))
