// io::ImageLock against the real QEMU tools: the bytes it takes are the bytes qemu-io takes,
// qemu-io / qemu-img / qemu-nbd respect the locks it holds, and it respects theirs.
// Every background QEMU process is started here, bounded (qemu-io 'sleep' ends by itself) and
// killed by its pid at the end of the test; every foreground one runs under timeout(1).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "io/image_lock.hpp"
#include "tests/unit/support/files.hpp"
#include "tests/unit/support/shell.hpp"

extern char** environ;

namespace {

using namespace qnbd;
using io::ImageLock;
using io::LockPerms;
using io::LockRequest;
using Role = io::ImageFileRole;
using test::TempDir;

/// Single-quotes `s` for /bin/sh.
std::string shq(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

struct CmdResult {
    int status = -1;
    std::string output;  ///< stdout and stderr
};

/// Runs `cmd` under a 30 s timeout; its exit status and output.
CmdResult run(const std::string& cmd) {
    CmdResult r;
    FILE* p = popen(("timeout 30 " + cmd + " 2>&1").c_str(), "r");
    REQUIRE(p);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
    const int rc = pclose(p);
    r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    return r;
}

void qcow2(const std::string& path, const std::string& opts = "") {
    const CmdResult r = run("qemu-img create -q -f qcow2 " + (opts.empty() ? "" : "-o " + opts) +
                            " " + shq(path) + " 64M");
    INFO(r.output);
    REQUIRE(r.status == 0);
}

/// An fd opened with O_CLOEXEC (so QEMU children do not inherit its locks), closed at the end.
class Fd {
  public:
    Fd(const std::string& path, bool writable)
        : fd_(::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC)) {
        REQUIRE(fd_ >= 0);
    }
    ~Fd() { close(); }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

  private:
    int fd_;
};

/// True if an open file description other than a fresh one holds a lock on `byte` of `path`.
bool byte_locked(const std::string& path, int byte) {
    Fd fd(path, false);
    ::flock fl{};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    REQUIRE(::fcntl(fd.get(), F_OFD_GETLK, &fl) == 0);
    return fl.l_type != F_UNLCK;
}

/// Every byte some process has locked in `path`, from the OFDLCK lines of /proc/locks.
std::set<int> locked_bytes(const std::string& path) {
    struct stat st;
    REQUIRE(::stat(path.c_str(), &st) == 0);
    char id[64];
    std::snprintf(id, sizeof id, "%02x:%02x:%lu", major(st.st_dev), minor(st.st_dev),
                  static_cast<unsigned long>(st.st_ino));
    std::ifstream f("/proc/locks");
    std::set<int> bytes;
    std::string line;
    while (std::getline(f, line)) {
        std::istringstream in(line);
        std::string num, kind, mode, type, pid, dev, start, end;
        in >> num >> kind >> mode >> type >> pid >> dev >> start >> end;
        if (kind != "OFDLCK" || dev != id || end == "EOF") continue;
        for (int b = std::stoi(start); b <= std::stoi(end); ++b) bytes.insert(b);
    }
    return bytes;
}

/// A QEMU tool running in the background, killed by its pid when this goes away.
class Background {
  public:
    /// Starts `argv` with its output in `log` and waits (up to 10 s) until it holds `byte` of
    /// `image` locked.
    Background(std::vector<std::string> argv, const std::string& log, const std::string& image,
               int byte = io::kLockPermBase) {
        std::vector<char*> args;
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        const int rc = posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), environ);
        posix_spawn_file_actions_destroy(&fa);
        REQUIRE(rc == 0);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!byte_locked(image, byte)) {
            int status;
            INFO(argv[0] << " did not lock byte " << byte << " of " << image);
            REQUIRE(::waitpid(pid_, &status, WNOHANG) == 0);
            REQUIRE(std::chrono::steady_clock::now() < deadline);
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }
    ~Background() { stop(); }
    Background(const Background&) = delete;
    Background& operator=(const Background&) = delete;
    void stop() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGKILL);
        int status;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
    }

  private:
    pid_t pid_ = -1;
};

/// qemu-io holding `image` open for at most 60 s; `flags` such as "-r" or "-r -U".
std::vector<std::string> qemu_io_sleep(const std::string& image, std::vector<std::string> flags) {
    std::vector<std::string> argv{"qemu-io", "-f", "qcow2"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.insert(argv.end(), {"-c", "sleep 60000", image});
    return argv;
}

LockRequest request(Role role, bool writable, bool force_share) {
    auto r = io::lock_request(role, writable, force_share);
    REQUIRE(r);
    return *r;
}

ImageLock acquire_ok(const Fd& fd, const std::string& path, const LockRequest& r) {
    auto l = ImageLock::acquire(fd.get(), path, r);
    INFO((l ? std::string() : l.error().message));
    REQUIRE(l);
    REQUIRE(l->enforced());
    return std::move(*l);
}

/// Requires acquire to be refused with EAGAIN and a message naming `path` and `what`.
void require_refused(const Fd& fd, const std::string& path, const LockRequest& r,
                     const std::string& what) {
    auto l = ImageLock::acquire(fd.get(), path, r);
    REQUIRE_FALSE(l);
    INFO(l.error().message);
    CHECK(l.error().code == EAGAIN);
    CHECK(l.error().message.find(what) != std::string::npos);
    CHECK(l.error().message.find("[" + path + "]") != std::string::npos);
}

const std::string kWrite = "Failed to get \"write\" lock";
const std::string kSharedWrite = "Failed to get shared \"write\" lock";

}  // namespace

TEST_CASE("lock_request: the permissions qemu takes for each file of an image", "[lock]") {
    using B = std::set<unsigned>;
    auto bits = [](LockPerms p) {
        B b;
        for (unsigned i = 0; i < io::kLockPermBits; ++i)
            if (p.bits() & (1u << i)) b.insert(i);
        return b;
    };
    // consistent read 0, write 1, write unchanged 2, resize 3
    CHECK(bits(request(Role::Top, true, false).need) == B{0, 1, 3});
    CHECK(bits(request(Role::Top, true, false).unshared) == B{1, 3});
    CHECK(bits(request(Role::Top, false, false).need) == B{0});
    CHECK(bits(request(Role::Top, false, false).unshared) == B{1, 3});
    CHECK(bits(request(Role::Top, false, true).unshared).empty());
    CHECK(bits(request(Role::Backing, false, false).unshared) == B{1, 3});
    CHECK(bits(request(Role::DataFile, true, false).need) == B{0, 1, 3});
    CHECK(bits(request(Role::DataFile, true, false).unshared) == B{3});
    CHECK(bits(request(Role::DataFile, false, false).unshared) == B{3});
    CHECK(bits(request(Role::DataFile, false, true).unshared).empty());

    auto refused = io::lock_request(Role::Top, true, true);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == EINVAL);
    CHECK(refused.error().message == "force-share=on can only be used with read-only images");
    CHECK_FALSE(io::lock_request(Role::Backing, true, false));
    CHECK(std::string(io::lock_perm_name(0)) == "consistent read");
    CHECK(std::string(io::lock_perm_name(3)) == "resize");
}

TEST_CASE("ImageLock locks the same bytes as qemu-io", "[lock][qemu]") {
    TempDir dir;
    const std::string ours = dir.file("ours.qcow2"), theirs = dir.file("theirs.qcow2");
    qcow2(ours);
    qcow2(theirs);
    struct Mode {
        bool writable, force_share;
        std::vector<std::string> flags;
        std::set<int> bytes;
    };
    const std::vector<Mode> modes{
        {true, false, {}, {100, 101, 103, 201, 203}},
        {false, false, {"-r"}, {100, 201, 203}},
        {false, true, {"-r", "-U"}, {100}},
    };
    for (const Mode& m : modes) {
        INFO("qemu-io flags: " << m.flags.size());
        Background q(qemu_io_sleep(theirs, m.flags), dir.file("q.log"), theirs);
        CHECK(locked_bytes(theirs) == m.bytes);
        Fd fd(ours, m.writable);
        ImageLock l = acquire_ok(fd, ours, request(Role::Top, m.writable, m.force_share));
        CHECK(locked_bytes(ours) == m.bytes);
        l.release();
        CHECK(locked_bytes(ours).empty());
    }
}

TEST_CASE("ImageLock: the data file bytes qemu-io takes", "[lock][qemu]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2"), data = dir.file("img.raw");
    qcow2(img, "data_file=" + shq(data));
    {
        Background q(qemu_io_sleep(img, {}), dir.file("q.log"), data);
        CHECK(locked_bytes(data) == std::set<int>{100, 101, 103, 203});
    }
    Fd fd(data, true);
    ImageLock l = acquire_ok(fd, data, request(Role::DataFile, true, false));
    CHECK(locked_bytes(data) == std::set<int>{100, 101, 103, 203});
    // Writes of a data file are shared: a second writer of the data file alone gets in.
    Fd fd2(data, true);
    auto second =
        ImageLock::acquire(fd2.get(), data, LockPerms{true, true, false, false}, LockPerms::none());
    CHECK(second);
}

TEST_CASE("while ImageLock holds an image writable, qemu tools cannot write or read it",
          "[lock][qemu]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2");
    qcow2(img);
    Fd fd(img, true);
    ImageLock l = acquire_ok(fd, img, request(Role::Top, true, false));

    CmdResult w = run("qemu-io -f qcow2 -c 'write 0 4k' " + shq(img));
    CHECK(w.status != 0);
    CHECK(w.output.find(kWrite) != std::string::npos);
    CHECK(w.output.find("Is another process using the image") != std::string::npos);
    // QEMU's read-only opens do not share writes, so they fail too...
    CmdResult r = run("qemu-io -f qcow2 -r -c 'read 0 4k' " + shq(img));
    CHECK(r.status != 0);
    CHECK(r.output.find(kSharedWrite) != std::string::npos);
    CmdResult info = run("qemu-img info " + shq(img));
    CHECK(info.status != 0);
    CHECK(info.output.find(kSharedWrite) != std::string::npos);
    CmdResult check = run("qemu-img check " + shq(img));
    CHECK(check.status != 0);
    CHECK(check.output.find(kSharedWrite) != std::string::npos);
    // ...unless they force-share.
    CmdResult u = run("qemu-io -f qcow2 -r -U -c 'read 0 4k' " + shq(img));
    INFO(u.output);
    CHECK(u.status == 0);
    CHECK(run("qemu-img info -U " + shq(img)).status == 0);
    CHECK(run("qemu-img check -U " + shq(img)).status == 0);

    l.release();
    CmdResult after = run("qemu-io -f qcow2 -c 'write 0 4k' " + shq(img));
    INFO(after.output);
    CHECK(after.status == 0);
}

TEST_CASE("while ImageLock holds an image read-only, qemu tools can read but not write it",
          "[lock][qemu]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2");
    qcow2(img);
    Fd fd(img, false);
    {
        ImageLock l = acquire_ok(fd, img, request(Role::Top, false, false));
        CmdResult w = run("qemu-io -f qcow2 -c 'write 0 4k' " + shq(img));
        CHECK(w.status != 0);
        CHECK(w.output.find(kWrite) != std::string::npos);
        CHECK(run("qemu-io -f qcow2 -r -c 'read 0 4k' " + shq(img)).status == 0);
        CHECK(run("qemu-img info " + shq(img)).status == 0);
    }
    // Force-share takes nothing a writer minds.
    ImageLock l = acquire_ok(fd, img, request(Role::Top, false, true));
    CmdResult w = run("qemu-io -f qcow2 -c 'write 0 4k' " + shq(img));
    INFO(w.output);
    CHECK(w.status == 0);
}

TEST_CASE("while qemu-io holds an image writable, ImageLock is refused", "[lock][qemu]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2");
    qcow2(img);
    Fd fd(img, true);
    {
        Background q(qemu_io_sleep(img, {}), dir.file("q.log"), img, io::kLockSharedBase + 1);
        require_refused(fd, img, request(Role::Top, true, false), kWrite);
        require_refused(fd, img, request(Role::Top, false, false), kSharedWrite);
        // The backing-file request is a read-only one: a backing file being written is refused.
        require_refused(fd, img, request(Role::Backing, false, false), kSharedWrite);
        auto l = ImageLock::acquire(fd.get(), img, request(Role::Top, false, true));
        CHECK(l);
        // A refused acquire leaves nothing behind.
        CHECK(locked_bytes(img) == std::set<int>{100, 101, 103, 201, 203});
    }
    acquire_ok(fd, img, request(Role::Top, true, false));
}

TEST_CASE("while qemu-io holds an image read-only, ImageLock may read but not write",
          "[lock][qemu]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2");
    qcow2(img);
    Background q(qemu_io_sleep(img, {"-r"}), dir.file("q.log"), img, io::kLockSharedBase + 1);
    Fd fd(img, true);
    require_refused(fd, img, request(Role::Top, true, false), kWrite);
    acquire_ok(fd, img, request(Role::Top, false, false));
}

TEST_CASE("while qemu-nbd serves an image, ImageLock is refused", "[lock][qemu]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2");
    qcow2(img);
    Background q({"qemu-nbd", "-f", "qcow2", "-k", dir.file("nbd.sock"), img}, dir.file("n.log"),
                 img, io::kLockSharedBase + 1);
    Fd fd(img, true);
    require_refused(fd, img, request(Role::Top, true, false), kWrite);
    auto l = ImageLock::acquire(fd.get(), img, request(Role::Top, true, false));
    REQUIRE_FALSE(l);
    CHECK(l.error().message.find("force-share (-r -U)") != std::string::npos);
}

TEST_CASE("force-share still respects an opener that refuses consistent reads", "[lock][qemu]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2");
    qcow2(img);
    Fd a(img, false), b(img, false);
    LockPerms cr;
    cr.consistent_read = true;
    ImageLock l = acquire_ok(a, img, LockRequest{cr, cr});
    CHECK(locked_bytes(img) == std::set<int>{100, 200});
    CmdResult u = run("qemu-io -f qcow2 -r -U -c 'read 0 4k' " + shq(img));
    CHECK(u.status != 0);
    CHECK(u.output.find("Failed to get \"consistent read\" lock") != std::string::npos);
    auto refused = ImageLock::acquire(b.get(), img, request(Role::Top, false, true));
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message.find("Failed to get \"consistent read\" lock") !=
          std::string::npos);
    CHECK(refused.error().message.find("force-share") == std::string::npos);
}

TEST_CASE("ImageLocks on two open file descriptions in one process conflict", "[lock]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2");
    qcow2(img);
    Fd a(img, true), b(img, true);
    ImageLock first = acquire_ok(a, img, request(Role::Top, true, false));
    require_refused(b, img, request(Role::Top, true, false), kWrite);
    require_refused(b, img, request(Role::Top, false, false), kSharedWrite);
    ImageLock shared = acquire_ok(b, img, request(Role::Top, false, true));
    // The lock keeps its own fd: closing the caller's does not drop it.
    a.close();
    CHECK(byte_locked(img, io::kLockSharedBase + 1));
    first = ImageLock();
    CHECK_FALSE(byte_locked(img, io::kLockSharedBase + 1));
    shared.release();
    acquire_ok(b, img, request(Role::Top, true, false));
}

TEST_CASE("ImageLock::change upgrades, downgrades and keeps the old locks when refused", "[lock]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2");
    qcow2(img);
    Fd a(img, true), b(img, false);
    const LockRequest rw = request(Role::Top, true, false);
    const LockRequest ro = request(Role::Top, false, false);
    const LockRequest fs = request(Role::Top, false, true);
    ImageLock l = acquire_ok(a, img, fs);
    {
        ImageLock reader = acquire_ok(b, img, ro);
        auto r = l.change(rw.need, rw.unshared);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == EAGAIN);
        CHECK(r.error().message.find(kWrite) != std::string::npos);
        CHECK(l.need() == fs.need);
        CHECK(l.unshared() == fs.unshared);
        CHECK(locked_bytes(img) == std::set<int>{100, 201, 203});
    }
    REQUIRE(l.change(rw.need, rw.unshared));
    CHECK(locked_bytes(img) == std::set<int>{100, 101, 103, 201, 203});
    REQUIRE(l.change(ro.need, ro.unshared));
    CHECK(locked_bytes(img) == std::set<int>{100, 201, 203});
    CHECK(run("qemu-io -f qcow2 -r -c 'read 0 4k' " + shq(img)).status == 0);
    ImageLock moved = std::move(l);
    CHECK_FALSE(l.held());
    CHECK(moved.held());
    CHECK_FALSE(l.change(rw.need, rw.unshared));
    moved.release();
    CHECK(locked_bytes(img).empty());
}

namespace {
int no_ofd_locks(int, int, ::flock*) {
    errno = EINVAL;
    return -1;
}
}  // namespace

TEST_CASE("ImageLock on a file system without OFD locks warns once and carries on", "[lock]") {
    TempDir dir;
    const std::string img = dir.file("img.qcow2");
    qcow2(img);
    std::vector<std::string> warnings;
    auto previous =
        io::set_image_lock_warning_handler([&](const std::string& m) { warnings.push_back(m); });
    io::testing::set_lock_fcntl(no_ofd_locks);
    Fd a(img, true), b(img, true);
    auto first = ImageLock::acquire(a.get(), img, request(Role::Top, true, false));
    auto second = ImageLock::acquire(b.get(), img, request(Role::Top, true, false));
    io::testing::set_lock_fcntl(nullptr);
    io::set_image_lock_warning_handler(previous);
    REQUIRE(first);
    REQUIRE(second);
    CHECK_FALSE(first->enforced());
    CHECK(first->held());
    CHECK(first->need() == request(Role::Top, true, false).need);
    REQUIRE(warnings.size() == 1);
    CHECK(warnings[0].find(img) != std::string::npos);
    CHECK(warnings[0].find("does not support OFD locks") != std::string::npos);
    CHECK(locked_bytes(img).empty());
}
