// Data I/O helpers of the engine (see host_runs.hpp).
#include "qcow2/host_runs.hpp"

#include <algorithm>
#include <climits>
#include <cstring>

namespace qnbd::qcow2 {

std::vector<std::vector<HostPiece>> host_runs(std::vector<HostPiece>& pieces) {
    std::sort(pieces.begin(), pieces.end(),
              [](const HostPiece& a, const HostPiece& b) { return a.host < b.host; });
    std::vector<std::vector<HostPiece>> runs;
    for (const HostPiece& p : pieces) {
        if (runs.empty() || runs.back().size() >= IOV_MAX ||
            runs.back().back().host + runs.back().back().bytes.size() != p.host)
            runs.emplace_back();
        runs.back().push_back(p);
    }
    return runs;
}

std::vector<iovec> run_iovecs(const std::vector<HostPiece>& run) {
    std::vector<iovec> iov;
    iov.reserve(run.size());
    for (const HostPiece& p : run) iov.push_back(iovec{p.bytes.data(), p.bytes.size()});
    return iov;
}

awaitable<Result<void>> read_run(io::File& f, std::vector<HostPiece> run) {
    if (run.size() == 1) co_return co_await f.read_zero_padded(run[0].host, run[0].bytes);
    const auto iov = run_iovecs(run);
    auto n = co_await f.readv(run[0].host, iov);
    if (!n) co_return n.error();
    // Past the end of the file reads as zeros.
    size_t left = *n;
    for (const HostPiece& p : run) {
        const size_t got = std::min(left, p.bytes.size());
        left -= got;
        if (got < p.bytes.size()) std::memset(p.bytes.data() + got, 0, p.bytes.size() - got);
    }
    co_return ok();
}

awaitable<Result<void>> write_run(io::File& f, std::vector<HostPiece> run) {
    if (run.size() == 1) co_return co_await f.write(run[0].host, run[0].bytes);
    const auto iov = run_iovecs(run);
    co_return co_await f.writev(run[0].host, iov);
}

namespace {

awaitable<Result<void>> join_all(asio::any_io_executor ex,
                                 std::vector<awaitable<Result<void>>> tasks) {
    if (tasks.empty()) co_return ok();
    JoinSet join(ex);
    for (auto& t : tasks) join.spawn(std::move(t));
    co_return co_await join.wait();
}

awaitable<Result<void>> zero_padded_slow(asio::any_io_executor ex, io::File& f, HostOffset host,
                                         uint64_t begin, uint64_t end, uint64_t start,
                                         std::span<const std::byte> data) {
    std::vector<awaitable<Result<void>>> tasks;
    tasks.push_back(f.write(host + start, data));
    const uint64_t data_end = start + data.size();
    if (start > begin) tasks.push_back(zero_range(f, host + begin, start - begin));
    if (end > data_end) tasks.push_back(zero_range(f, host + data_end, end - data_end));
    co_return co_await run_all(ex, std::move(tasks));
}

}  // namespace

awaitable<Result<void>> run_all(asio::any_io_executor ex,
                                std::vector<awaitable<Result<void>>> tasks) {
    if (tasks.size() == 1) return std::move(tasks[0]);  // Inline: no frame of its own.
    return join_all(std::move(ex), std::move(tasks));
}

awaitable<Result<void>> zero_range(io::File& f, HostOffset off, uint64_t len) {
    auto r = co_await f.fallocate(io::Fallocate::ZeroRange, off, len);
    if (r || (r.error().code != ENOTSUP && r.error().code != EOPNOTSUPP)) co_return r;
    Buffer zeros(len);
    co_return co_await f.write(off, zeros.span());
}

awaitable<Result<void>> write_zero_padded(asio::any_io_executor ex, io::File& f, HostOffset host,
                                          uint64_t begin, uint64_t end, uint64_t start,
                                          std::span<const std::byte> data, bool fresh) {
    if (fresh || (start <= begin && start + data.size() >= end)) return f.write(host + start, data);
    return zero_padded_slow(std::move(ex), f, host, begin, end, start, data);
}

}  // namespace qnbd::qcow2
