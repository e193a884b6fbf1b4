// libFuzzer target for a whole connection, the way nbdkit fuzzes through stdin: the input is
// what a client sends (after one configuration byte), fed to a real server::Connection through
// an in-memory Transport; the connection runs its handshake with the option loop, then the
// transmission phase with concurrent requests, against real exports, until the input ends.
//
// Input byte 0 configures the transport and limits:
//   bits 0-1  read sizes: 0 as asked, 1 chunks of 1-8 bytes, 2 of 1-64, 3 of 1-4096
//   bit  2    every read first yields to the reactor (requests run between reads)
//   bit  3    every write yields after it is taken (replies queue behind a busy writer)
//   bits 4-5  requests in flight at once: 64, 1, 2, 8
//   bits 6-7  seed of the chunk sizes
// The rest is the client's byte stream; EOF at its end closes the connection.
//
// Exports (created once per process in the scratch directory; every iteration restores the
// images from pristine copies and reopens them, so no state carries over):
//   ""     qcow2, 1 MiB, 4 KiB clusters, over a qcow2 backing file with data; unmap discards,
//          zero detection, both metadata contexts
//   "ro"   the backing file itself (512-byte clusters), read-only
//   "raw"  a 256 KiB raw file behind a 4 KiB offset window, unsafe flushes
// Everything the server writes is checked by ReplyChecker.
#include <array>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstring>

#include "disk/window_disk.hpp"
#include "fuzz_check.hpp"
#include "fuzz_support.hpp"
#include "image/open.hpp"
#include "qcow2/create.hpp"
#include "reply_checker.hpp"
#include "server/connection.hpp"

namespace qnbd::fuzz {
namespace {

using server::error_code;
using server::Transport;
namespace error = boost::asio::error;

struct Config {
    int chunking = 0;
    bool yield_reads = false;
    bool yield_writes = false;
    size_t max_in_flight = 64;
    uint32_t seed = 0;

    explicit Config(uint8_t b)
        : chunking(b & 3),
          yield_reads(b & 4),
          yield_writes(b & 8),
          max_in_flight(std::array<size_t, 4>{64, 1, 2, 8}[(b >> 4) & 3]),
          seed(0x9e3779b9u * ((b >> 6) + 1)) {}
};

/// The client side of the connection: reads come from the input, writes go to the checker.
class FuzzTransport final : public Transport {
  public:
    FuzzTransport(nbd::Bytes in, Config cfg, ReplyChecker& checker)
        : in_(in), cfg_(cfg), rng_(cfg.seed), checker_(checker) {}

    awaitable<error_code> read(std::span<std::byte> buf) override {
        if (cfg_.yield_reads) co_await yield();
        if (closed_) co_return error::operation_aborted;
        const size_t n = std::min(buf.size(), in_.size() - pos_);
        take(buf.first(n));
        co_return n == buf.size() ? error_code{} : error_code(error::eof);
    }
    awaitable<std::pair<error_code, size_t>> read_some(std::span<std::byte> buf) override {
        if (cfg_.yield_reads) co_await yield();
        if (closed_) co_return std::pair{error_code(error::operation_aborted), size_t{0}};
        if (pos_ == in_.size()) co_return std::pair{error_code(error::eof), size_t{0}};
        const size_t n = std::min({buf.size(), in_.size() - pos_, chunk()});
        take(buf.first(n));
        co_return std::pair{error_code{}, n};
    }
    awaitable<error_code> write(std::span<const asio::const_buffer> bufs) override {
        if (closed_) co_return error::broken_pipe;
        for (const auto& b : bufs)
            checker_.on_write({static_cast<const std::byte*>(b.data()), b.size()}, pos_);
        if (cfg_.yield_writes) co_await yield();
        co_return error_code{};
    }
    void shutdown_read() override { in_ = in_.first(pos_); }  // what is left reads as eof
    void close() override { closed_ = true; }
    const std::string& peer() const override { return peer_; }

  private:
    static awaitable<void> yield() {
        co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    }
    void take(std::span<std::byte> out) {
        if (!out.empty()) std::memcpy(out.data(), in_.data() + pos_, out.size());
        pos_ += out.size();
    }
    size_t chunk() {
        static constexpr size_t kLimits[] = {SIZE_MAX, 8, 64, 4096};
        if (cfg_.chunking == 0) return SIZE_MAX;
        rng_ ^= rng_ << 13;
        rng_ ^= rng_ >> 17;
        rng_ ^= rng_ << 5;
        return 1 + rng_ % kLimits[cfg_.chunking];
    }

    nbd::Bytes in_;
    size_t pos_ = 0;
    Config cfg_;
    uint32_t rng_;
    ReplyChecker& checker_;
    bool closed_ = false;
    std::string peer_ = "fuzz client";
};

constexpr uint64_t kQcowSize = 1u << 20, kRawSize = 256u << 10, kWindow = 4096;

/// Writes a recognisable pattern over [off, off+len) of an open disk.
awaitable<void> fill(Disk& d, uint64_t off, uint64_t len, uint8_t value) {
    std::vector<std::byte> b(len, std::byte{value});
    FUZZ_CHECK(co_await d.write(GuestOffset{off}, b, WriteFlags{}));
}

OpenOptions options(bool read_only, std::string format = "") {
    OpenOptions o;
    o.read_only = read_only;
    o.format = std::move(format);
    o.file_opener = open_file;
    return o;
}

/// Creates the images and their pristine copies.
awaitable<void> create_images() {
    auto ex = co_await asio::this_coro::executor;
    qcow2::CreateOptions base;
    base.size = kQcowSize;
    base.cluster_size = 512;
    FUZZ_CHECK(qcow2::create_image(scratch("base.qcow2"), base));
    auto b = co_await open_disk(ex, scratch("base.qcow2"), options(false));
    FUZZ_CHECK(b);
    co_await fill(**b, 0, 64u << 10, 0x11);
    co_await fill(**b, 512u << 10, 8192, 0x22);
    FUZZ_CHECK(co_await (*b)->close());
    b->reset();  // Its image lock goes with it, before top opens base.qcow2 as its backing.
    qcow2::CreateOptions top = base;
    top.cluster_size = 4096;
    top.backing_file = "base.qcow2";
    top.backing_format = "qcow2";
    FUZZ_CHECK(qcow2::create_image(scratch("top.pristine"), top));
    auto t = co_await open_disk(ex, scratch("top.pristine"), options(false));
    FUZZ_CHECK(t);
    co_await fill(**t, 32u << 10, 64u << 10, 0x33);
    FUZZ_CHECK(co_await (*t)->write_zeroes(GuestOffset{128u << 10}, 8192, ZeroFlags{}));
    FUZZ_CHECK(co_await (*t)->close());
    std::vector<std::byte> raw(kRawSize, std::byte{0x44});
    write_file(scratch("raw.pristine"), raw);
}

std::shared_ptr<server::Export> make_export(std::string name, std::shared_ptr<Disk> disk) {
    auto e = std::make_shared<server::Export>();
    e->name = std::move(name);
    e->description = "export " + e->name;
    e->disk = std::move(disk);
    e->features.read_only = e->disk->read_only();
    e->contexts = nbd::MetaContextSet{nbd::MetaContext::base_allocation};
    return e;
}

/// Opens the three exports from fresh copies of the images.
awaitable<std::vector<std::shared_ptr<server::Export>>> open_exports() {
    auto ex = co_await asio::this_coro::executor;
    copy_file(scratch("top.pristine"), scratch("top.qcow2"));
    copy_file(scratch("raw.pristine"), scratch("raw.img"));
    auto top = co_await open_disk(ex, scratch("top.qcow2"), options(false));
    auto ro = co_await open_disk(ex, scratch("base.qcow2"), options(true));
    auto raw = co_await open_disk(ex, scratch("raw.img"), options(false, "raw"));
    FUZZ_CHECK(top && ro && raw);
    std::vector<std::shared_ptr<server::Export>> out;
    out.push_back(make_export("", *top));
    out.back()->discard = server::DiscardMode::Unmap;
    out.back()->detect_zeroes = server::DetectZeroes::Unmap;
    out.back()->contexts = nbd::MetaContextSet::all();
    out.push_back(make_export("ro", *ro));
    out.push_back(make_export("raw", make_window_disk(*raw, kWindow)));
    out.back()->unsafe_flush = true;
    co_return out;
}

awaitable<void> serve(nbd::Bytes stream, Config cfg) {
    auto ex = co_await asio::this_coro::executor;
    auto exports = co_await open_exports();
    server::ExportRegistry registry;
    for (auto& e : exports) registry.add(e);
    ReplyChecker checker(stream, {kQcowSize, kRawSize - kWindow});
    server::ConnectionLimits limits;
    limits.handshake_timeout_s = 0;  // The input's end ends the handshake.
    limits.max_in_flight = cfg.max_in_flight;
    limits.max_in_flight_bytes = 4u << 20;
    auto conn = std::make_shared<server::Connection>(
        ex, std::make_unique<FuzzTransport>(stream, cfg, checker), registry, limits);
    co_await conn->run();
    checker.finish();
    for (auto& e : exports) (void)co_await e->disk->close();
}

}  // namespace
}  // namespace qnbd::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    qnbd::fuzz::abort_on_internal_errors();
    qnbd::fuzz::run(qnbd::fuzz::create_images());
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const qnbd::nbd::Bytes stream(reinterpret_cast<const std::byte*>(data) + 1, size - 1);
    qnbd::fuzz::run(qnbd::fuzz::serve(stream, qnbd::fuzz::Config(data[0])));
    return 0;
}
