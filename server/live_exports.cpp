// Exports of a running server (see live_exports.hpp).
#include "server/live_exports.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "disk/window_disk.hpp"
#include "image/open.hpp"
#include "qcow2/create.hpp"
#include "server/metrics.hpp"
#include "server/server.hpp"

namespace qnbd::server {
namespace {

/// -s: a temporary overlay whose backing file is the image; it is unlinked once open.
Result<std::string> make_snapshot_overlay(const Config& cfg, uint64_t size) {
    namespace fs = std::filesystem;
    std::string dir = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/var/tmp";
    std::string path = dir + "/qnbd-snapshot-XXXXXX";
    int fd = ::mkstemp(path.data());
    if (fd < 0) return Error{errno, "cannot create a temporary overlay in " + dir};
    ::close(fd);
    qcow2::CreateOptions o;
    o.size = size;
    o.backing_file = fs::absolute(cfg.image).string();
    o.backing_format = cfg.format.empty() ? "qcow2" : cfg.format;
    if (auto r = qcow2::create_image(path, o); !r) return r.error();
    return path;
}

/// The bitmaps -B names, looked up in the open disk; refused as qemu-nbd refuses them.
Result<void> add_bitmaps(const Config& cfg, const Disk& disk, Export& e) {
    if (cfg.bitmaps.empty()) return ok();
    if (cfg.offset) return Error{EINVAL, "-B cannot be used with -o"};
    if (cfg.bitmaps.size() > nbd::kMaxExportBitmaps)
        return Error{EINVAL, "at most " + std::to_string(nbd::kMaxExportBitmaps) +
                                 " bitmaps can be exported at once"};
    for (const std::string& name : cfg.bitmaps) {
        if (std::find(e.bitmap_names.begin(), e.bitmap_names.end(), name) != e.bitmap_names.end())
            return Error{EINVAL, "Bitmap '" + name + "' is named twice"};
        const DirtyBitmap* b = disk.dirty_bitmap(name);
        if (!b) return Error{ENOENT, "Bitmap '" + name + "' is not found"};
        if (!b->consistent)
            return Error{EINVAL, "Bitmap '" + name +
                                     "' is inconsistent and cannot be used (it was not saved "
                                     "at the last close); remove it with 'qemu-img bitmap "
                                     "--remove'"};
        e.contexts.add(nbd::dirty_bitmap_context(e.bitmaps.size()));
        e.bitmap_names.push_back(name);
        e.bitmaps.push_back(b);
    }
    return ok();
}

/// The export described by the configuration, around an open disk.
Result<std::shared_ptr<Export>> make_export(const Config& cfg, std::shared_ptr<Disk> disk) {
    auto e = std::make_shared<Export>();
    e->name = cfg.export_name;
    e->description = cfg.description;
    e->disk = make_window_disk(disk, cfg.offset);
    e->discard = cfg.discard;
    e->detect_zeroes = cfg.detect_zeroes;
    e->unsafe_flush = cfg.cache == CacheMode::Unsafe;
    e->features.read_only = e->disk->read_only();
    e->features.multi_conn = cfg.shared != 1;
    e->contexts = nbd::MetaContextSet{nbd::MetaContext::base_allocation};
    if (cfg.allocation_depth) e->contexts.add(nbd::MetaContext::qemu_allocation_depth);
    if (auto r = add_bitmaps(cfg, *disk, *e); !r) return r.error();
    return e;
}

}  // namespace

awaitable<Result<std::shared_ptr<Disk>>> open_configured(asio::any_io_executor ex,
                                                         const Config& cfg) {
    std::string path = cfg.image;
    OpenOptions opts = open_options(cfg);
    std::string overlay;
    if (cfg.snapshot) {
        OpenOptions ro = opts;
        ro.read_only = true;
        auto base = co_await open_disk(ex, path, ro);
        if (!base) co_return base.error();
        auto size = (*base)->size();
        (void)co_await (*base)->close();
        auto o = make_snapshot_overlay(cfg, size);
        if (!o) co_return o.error();
        overlay = *o;
        path = overlay;
        opts.format = "qcow2";
        opts.read_only = false;
    }
    auto d = co_await open_disk(ex, path, opts);
    if (!overlay.empty()) ::unlink(overlay.c_str());
    if (!d) co_return d.error();
    if (cfg.offset > (*d)->size()) co_return Error{EINVAL, "offset is beyond the end of the image"};
    co_return std::shared_ptr<Disk>(std::move(*d));
}

awaitable<Result<void>> LiveExports::add(const Config& cfg) {
    if (registry_.find(cfg.export_name))
        co_return Error{EEXIST, "an export named '" + cfg.export_name + "' exists"};
    auto disk = co_await open_configured(io_.get_executor(), cfg);
    if (!disk) co_return disk.error();
    auto made = make_export(cfg, *disk);
    if (!made) {
        (void)co_await (*disk)->close();
        co_return made.error();
    }
    auto exp = std::move(*made);
    if (metrics_) exp->metrics = &metrics_->add_export(exp->name, exp->disk);
    registry_.add(exp);
    entries_.push_back(Entry{cfg.image, std::move(exp)});
    co_return ok();
}

static void report_stats(const LiveExports::Entry& e) {
    const DiskStats st = e.exp->disk->stats();
    spdlog::info(
        "{}: {} flush requests, {} barriers, {} fdatasyncs, {} clusters allocated, {} metadata "
        "writes",
        e.image, st.flush_requests, st.barriers, st.syncs, st.clusters_allocated,
        st.metadata_writes);
}

awaitable<Result<void>> LiveExports::remove(const std::string& name, Server* server,
                                            std::chrono::seconds drain) {
    auto it = std::find_if(entries_.begin(), entries_.end(),
                           [&](const Entry& e) { return e.exp->name == name; });
    if (it == entries_.end()) co_return Error{ENOENT, "no export named '" + name + "'"};
    const std::shared_ptr<Export> exp = it->exp;
    registry_.remove(name);
    if (server) {
        if (!co_await server->wait_export_idle(exp.get(), drain)) {
            spdlog::info("export '{}': closing its remaining connections", name);
            server->shutdown_export(exp.get());
            (void)co_await server->wait_export_idle(exp.get(), std::chrono::hours(24));
        }
    }
    const Entry e = *it;
    entries_.erase(std::find_if(entries_.begin(), entries_.end(),
                                [&](const Entry& x) { return x.exp == exp; }));
    auto r = co_await exp->disk->close();
    report_stats(e);
    if (!r)
        co_return Error{r.error().code,
                        e.image + ": closing the image failed: " + r.error().message};
    spdlog::info("export '{}' removed; {} closed", name, e.image);
    co_return ok();
}

awaitable<bool> LiveExports::close_all(bool report) {
    bool ok = true;
    for (Entry& e : entries_) {
        if (auto r = co_await e.exp->disk->close(); !r) {
            spdlog::error("{}: closing the image failed: {}", e.image, r.error().message);
            ok = false;
        }
        if (report) report_stats(e);
    }
    co_return ok;
}

}  // namespace qnbd::server
