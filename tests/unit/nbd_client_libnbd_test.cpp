// The qnbd binary driven by libnbd's C API over a unix socket: handshake facts, every command
// with data verified, a deep asynchronous pipeline, and error replies the connection survives.
#ifdef QNBD_HAVE_LIBNBD

#include <fcntl.h>
#include <libnbd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/support/files.hpp"
#include "tests/unit/support/qemu.hpp"
#include "tests/unit/support/random.hpp"
#include "tests/unit/support/shell.hpp"
#include "tests/unit/support/units.hpp"

extern char** environ;

namespace {

using namespace qnbd::test;

/// A qnbd server on a unix socket in a temporary directory, stopped with SIGTERM.
class Server {
  public:
    explicit Server(std::vector<std::string> extra = {}) {
        image_ = dir_.file("disk.qcow2");
        socket_ = dir_.file("nbd.sock");
        log_ = dir_.file("qnbd.log");
        REQUIRE(sh(std::string("'") + QNBD_BINARY + "' create '" + image_ + "' 64M >/dev/null") ==
                0);
        std::vector<std::string> args = {QNBD_BINARY, "-t", "-e", "0", "-k", socket_};
        args.insert(args.end(), extra.begin(), extra.end());
        args.push_back(image_);
        std::vector<char*> argv;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 2, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        int rc = posix_spawn(&pid_, QNBD_BINARY, &fa, nullptr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&fa);
        REQUIRE(rc == 0);
    }
    ~Server() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }
    /// SIGTERM; returns the exit status (-1 if killed by a signal).
    int stop() {
        ::kill(pid_, SIGTERM);
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    bool alive() const { return pid_ > 0 && ::waitpid(pid_, nullptr, WNOHANG) == 0; }
    std::string log() const {
        auto b = read_file(log_);
        return std::string(reinterpret_cast<const char*>(b.data()), b.size());
    }
    /// A connected handle; `setup` runs before connecting.
    template <class F>
    nbd_handle* connect(F setup) {
        for (int i = 0; i < 400; ++i) {
            nbd_handle* h = nbd_create();
            REQUIRE(h != nullptr);
            setup(h);
            if (nbd_connect_unix(h, socket_.c_str()) == 0) return h;
            nbd_close(h);
            REQUIRE(alive());
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        FAIL("cannot connect to qnbd: " << log());
        return nullptr;
    }
    nbd_handle* connect() {
        return connect([](nbd_handle*) {});
    }
    const std::string& image() const { return image_; }

  private:
    TempDir dir_;
    std::string image_, socket_, log_;
    pid_t pid_ = -1;
};

int count_chunk(void* user, const void*, size_t, uint64_t, unsigned status, int*) {
    if (status == LIBNBD_READ_DATA)
        ++*static_cast<int*>(user);
    else
        *static_cast<int*>(user) += 1000;
    return 0;
}

/// Closes the handle at scope exit, also when a REQUIRE fails.
struct Closer {
    nbd_handle* h;
    ~Closer() { nbd_close(h); }
};

struct Extents {
    std::vector<uint32_t> base;
};

int collect_extents(void* user, const char* context, uint64_t, uint32_t* entries, size_t n, int*) {
    auto* e = static_cast<Extents*>(user);
    if (std::strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) == 0)
        e->base.assign(entries, entries + n);
    return 0;
}

}  // namespace

TEST_CASE("libnbd C API: handshake facts", "[nbd_client][libnbd]") {
    Server s({"-x", "exp", "-D", "C API test", "-A"});
    nbd_handle* h = s.connect([](nbd_handle* h) {
        nbd_set_export_name(h, "exp");
        nbd_set_full_info(h, true);
        nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION);
        nbd_add_meta_context(h, "qemu:allocation-depth");
    });
    Closer closer{h};
    CHECK(nbd_get_size(h) == int64_t(64 * MiB));
    CHECK(std::string(nbd_get_protocol(h)) == "newstyle-fixed");
    CHECK(nbd_get_structured_replies_negotiated(h) == 1);
    CHECK(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM) == 1);
    CHECK(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED) == 4096);
    CHECK(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM) == 32 * int64_t(MiB));
    CHECK(nbd_can_flush(h) == 1);
    CHECK(nbd_can_fua(h) == 1);
    CHECK(nbd_can_trim(h) == 1);
    CHECK(nbd_can_zero(h) == 1);
    CHECK(nbd_can_fast_zero(h) == 1);
    CHECK(nbd_can_cache(h) == 1);
    CHECK(nbd_can_df(h) == 1);
    CHECK(nbd_can_multi_conn(h) == 1);
    CHECK(nbd_is_read_only(h) == 0);
    CHECK(nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1);
    CHECK(nbd_can_meta_context(h, "qemu:allocation-depth") == 1);
    char* desc = nbd_get_export_description(h);
    REQUIRE(desc != nullptr);
    CHECK(std::string(desc) == "C API test");
    free(desc);
    CHECK(nbd_shutdown(h, 0) == 0);
    CHECK(s.stop() == 0);
}

TEST_CASE("libnbd C API: every command, data verified", "[nbd_client][libnbd]") {
    Server s({"--discard=unmap"});
    nbd_handle* h =
        s.connect([](nbd_handle* h) { nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION); });
    Closer closer{h};
    auto d = random_bytes(2 * MiB, 1);
    REQUIRE(nbd_pwrite(h, d.data(), d.size(), 0, 0) == 0);
    REQUIRE(nbd_pwrite(h, d.data(), MiB, 4 * MiB, LIBNBD_CMD_FLAG_FUA) == 0);
    REQUIRE(nbd_flush(h, 0) == 0);
    Bytes got(2 * MiB);
    REQUIRE(nbd_pread(h, got.data(), got.size(), 0, 0) == 0);
    CHECK(got == d);
    int chunks = 0;
    nbd_chunk_callback ccb = {.callback = count_chunk, .user_data = &chunks, .free = nullptr};
    REQUIRE(nbd_pread_structured(h, got.data(), 2 * MiB, 3 * MiB, ccb, LIBNBD_CMD_FLAG_DF) == 0);
    CHECK(chunks == 1);  // one data chunk, although [3M, 4M) is a hole
    CHECK(std::memcmp(got.data() + MiB, d.data(), MiB) == 0);

    REQUIRE(nbd_zero(h, 65536, 0, 0) == 0);
    REQUIRE(nbd_zero(h, 65536, 65536, LIBNBD_CMD_FLAG_NO_HOLE | LIBNBD_CMD_FLAG_FUA) == 0);
    REQUIRE(nbd_zero(h, 65536, 2 * 65536, LIBNBD_CMD_FLAG_FAST_ZERO) == 0);
    REQUIRE(nbd_trim(h, MiB, MiB, 0) == 0);
    REQUIRE(nbd_cache(h, 2 * MiB, 0, 0) == 0);
    REQUIRE(nbd_pread(h, got.data(), 3 * 65536, 0, 0) == 0);
    CHECK(std::all_of(got.begin(), got.begin() + 3 * 65536,
                      [](std::byte c) { return c == std::byte{0}; }));
    REQUIRE(nbd_pread(h, got.data(), MiB - 3 * 65536, 3 * 65536, 0) == 0);
    CHECK(std::memcmp(got.data(), d.data() + 3 * 65536, MiB - 3 * 65536) == 0);

    Extents e;
    nbd_extent_callback cb = {.callback = collect_extents, .user_data = &e, .free = nullptr};
    REQUIRE(nbd_block_status(h, 8 * MiB, 0, cb, 0) == 0);
    REQUIRE(e.base.size() >= 4);
    uint64_t covered = 0;
    for (size_t i = 0; i < e.base.size(); i += 2) covered += e.base[i];
    CHECK(covered == 8 * MiB);
    CHECK((e.base[1] & LIBNBD_STATE_ZERO) != 0);  // zeroed first cluster
    REQUIRE(nbd_block_status(h, 8 * MiB, 0, cb, LIBNBD_CMD_FLAG_REQ_ONE) == 0);
    CHECK(e.base.size() == 2);

    CHECK(nbd_shutdown(h, 0) == 0);
    CHECK(s.stop() == 0);
    CHECK(qemu_check(s.image()).exit_status == 0);
}

TEST_CASE("libnbd C API: 256 asynchronous requests in flight", "[nbd_client][libnbd]") {
    Server s;
    nbd_handle* h = s.connect();
    Closer closer{h};
    constexpr size_t n = 256, len = 32768;
    std::vector<Bytes> data, bufs(n, Bytes(len));
    std::vector<int64_t> cookies;
    for (size_t i = 0; i < n; ++i) {
        data.push_back(random_bytes(len, unsigned(i) + 10));
        int64_t c = nbd_aio_pwrite(h, data[i].data(), len, i * len, NBD_NULL_COMPLETION, 0);
        REQUIRE(c > 0);
        cookies.push_back(c);
    }
    CHECK(nbd_aio_in_flight(h) >= 64);
    while (nbd_aio_in_flight(h) > 0) REQUIRE(nbd_poll(h, -1) >= 0);
    for (int64_t c : cookies) CHECK(nbd_aio_command_completed(h, c) == 1);
    cookies.clear();
    for (size_t i = 0; i < n; ++i) {
        int64_t c =
            nbd_aio_pread(h, bufs[i].data(), len, (n - 1 - i) * len, NBD_NULL_COMPLETION, 0);
        REQUIRE(c > 0);
        cookies.push_back(c);
    }
    while (nbd_aio_in_flight(h) > 0) REQUIRE(nbd_poll(h, -1) >= 0);
    for (int64_t c : cookies) CHECK(nbd_aio_command_completed(h, c) == 1);
    for (size_t i = 0; i < n; ++i) CHECK(bufs[i] == data[n - 1 - i]);
    CHECK(nbd_shutdown(h, 0) == 0);
    CHECK(s.stop() == 0);
}

TEST_CASE("libnbd C API: error replies keep the connection", "[nbd_client][libnbd]") {
    Server s;
    nbd_handle* h = s.connect([](nbd_handle* h) { nbd_set_strict_mode(h, 0); });
    Closer closer{h};
    const uint64_t size = 64 * MiB;
    auto d = random_bytes(4096, 3);
    REQUIRE(nbd_pwrite(h, d.data(), d.size(), 0, 0) == 0);
    Bytes got(4096);
    auto still_ok = [&] {
        REQUIRE(nbd_pread(h, got.data(), got.size(), 0, 0) == 0);
        CHECK(got == d);
    };
    CHECK(nbd_pread(h, got.data(), 4096, size - 2048, 0) == -1);
    CHECK(nbd_get_errno() == EINVAL);
    still_ok();
    CHECK(nbd_pwrite(h, d.data(), 4096, size - 2048, 0) == -1);
    CHECK(nbd_get_errno() == ENOSPC);
    still_ok();
    CHECK(nbd_zero(h, 4096, size, 0) == -1);
    CHECK(nbd_get_errno() == ENOSPC);
    still_ok();
    CHECK(nbd_pread(h, got.data(), 512, 0, 1u << 9) == -1);
    CHECK(nbd_get_errno() == EINVAL);
    still_ok();
    Bytes big(33 * MiB);
    CHECK(nbd_pread(h, big.data(), big.size(), 0, LIBNBD_CMD_FLAG_DF) == -1);
    CHECK(nbd_get_errno() == EOVERFLOW);
    still_ok();
    CHECK(nbd_shutdown(h, 0) == 0);
    CHECK(s.alive());
    CHECK(s.stop() == 0);
    CHECK(s.log().find("AddressSanitizer") == std::string::npos);
}

#endif  // QNBD_HAVE_LIBNBD
