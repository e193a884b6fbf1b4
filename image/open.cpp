// open_disk: format detection, validation, backing chains and external data files.
#include "image/open.hpp"
#include "base/hex.hpp"

#include <cstdio>
#include <filesystem>
#include <set>

#include "base/buffer.hpp"
#include "disk/raw_disk.hpp"
#include "io/sync_latch.hpp"
#include "qcow2/image.hpp"
#include "qcow2/tables.hpp"

namespace qnbd {
namespace {

namespace fs = std::filesystem;
using qcow2::Header;

Error prefixed(const std::string& path, const Error& e) {
    return Error{e.code, path + ": " + e.message};
}

/// A backing or data file name resolved against the directory of the image naming it.
std::string resolve(const std::string& image, const std::string& name) {
    if (name.empty() || name[0] == '/') return name;
    return (fs::path(image).parent_path() / name).string();
}

/// Reads and decodes a table of big-endian 64-bit entries.
awaitable<Result<std::vector<uint64_t>>> read_table(io::File& f, HostOffset off, uint64_t entries) {
    Buffer b(entries * 8);
    if (entries) {
        auto r = co_await f.read_zero_padded(off, b.span());
        if (!r) co_return r.error();
    }
    co_return qcow2::decode_table(b.span());
}

/// How a file of the image in `role` is opened: access, cache mode and its image lock.
Result<io::OpenFlags> file_flags(const OpenOptions& opts, io::ImageFileRole role) {
    io::OpenFlags f{!opts.read_only, false, opts.direct, std::nullopt};
    if (!opts.lock) return f;
    auto lock = io::lock_request(role, f.writable, opts.force_share);
    if (!lock) return lock.error();
    f.lock = *lock;
    return f;
}

struct Chain {
    std::set<std::string> seen;  ///< Canonical paths already open in this chain.
    int depth = 0;
};

awaitable<Result<std::shared_ptr<Disk>>> open_layer(asio::any_io_executor ex, std::string path,
                                                    OpenOptions opts, Chain& chain);

/// Refuses images this engine must not write, with the reason.
Result<void> check_writable(const Header& h) {
    if (h.corrupt())
        return Error{
            EINVAL,
            "image is marked corrupt; repair it with 'qemu-img check -r all' or open it read-only"};
    if (h.nb_snapshots)
        return Error{EINVAL,
                     "image has internal snapshots; qnbd serves such images read-only (use -r)"};
    return ok();
}

awaitable<Result<std::shared_ptr<Disk>>> open_backing(asio::any_io_executor ex,
                                                      const std::string& path, const Header& h,
                                                      const OpenOptions& opts, Chain& chain) {
    if (h.backing_file.empty()) co_return std::shared_ptr<Disk>{};
    if (chain.depth >= 64) co_return Error{EINVAL, "backing chain is deeper than 64 images"};
    OpenOptions bo;
    bo.read_only = true;
    bo.direct = opts.direct;
    bo.lock = opts.lock;
    bo.force_share = opts.force_share;
    bo.file_opener = opts.file_opener;
    bo.format = h.backing_format;
    if (!bo.format.empty() && bo.format != "qcow2" && bo.format != "raw")
        co_return Error{EINVAL,
                        "backing file format '" + bo.format + "' is not supported (qcow2 or raw)"};
    if (bo.format.empty()) bo.format = "probe";
    ++chain.depth;
    auto b = co_await open_layer(ex, resolve(path, h.backing_file), bo, chain);
    --chain.depth;
    if (!b) co_return Error{b.error().code, "cannot open backing file: " + b.error().message};
    co_return std::move(*b);
}

awaitable<Result<std::unique_ptr<io::File>>> open_data_file(asio::any_io_executor ex,
                                                            const std::string& path,
                                                            const Header& h,
                                                            const OpenOptions& opts) {
    if (!h.has_data_file()) co_return std::unique_ptr<io::File>{};
    if (h.data_file.empty())
        co_return Error{EINVAL, "image has an external data file but no data file name"};
    auto flags = file_flags(opts, io::ImageFileRole::DataFile);
    if (!flags) co_return flags.error();
    auto f = opts.file_opener(ex, resolve(path, h.data_file), *flags);
    if (!f) co_return Error{f.error().code, "cannot open data file: " + f.error().message};
    co_return std::move(*f);
}

awaitable<Result<std::shared_ptr<Disk>>> open_qcow2(asio::any_io_executor ex,
                                                    const std::string& path, OpenOptions opts,
                                                    std::unique_ptr<io::File> file, Buffer head,
                                                    uint64_t file_size, Chain& chain) {
    auto h = qcow2::parse_header(head.span(), file_size);
    if (!h) co_return h.error();
    if (!opts.read_only)  // R15: refused before anything is written.
        if (auto r = check_writable(*h); !r) co_return r.error();
    auto l1 = co_await read_table(*file, h->l1_table_offset, h->l1_size);
    if (!l1) co_return l1.error();
    if (auto r = qcow2::check_l1_table(*l1, *h, file_size); !r) co_return r.error();
    const uint64_t rt_entries = uint64_t{h->refcount_table_clusters} * h->cluster_size() / 8;
    auto rt = co_await read_table(*file, h->refcount_table_offset, rt_entries);
    if (!rt) co_return rt.error();
    if (auto r = qcow2::check_refcount_table(*rt, *h, file_size); !r) co_return r.error();
    if (!opts.read_only)  // A writable image must not have two tables in one cluster.
        if (auto r = qcow2::check_metadata_layout(*h, *l1, *rt); !r) co_return r.error();
    auto data = co_await open_data_file(ex, path, *h, opts);
    if (!data) co_return data.error();
    auto backing = co_await open_backing(ex, path, *h, opts, chain);
    if (!backing) co_return backing.error();
    Buffer header_bytes(std::min<uint64_t>(h->cluster_size(), head.size()));
    std::memcpy(header_bytes.data(), head.data(), header_bytes.size());
    qcow2::ImageParts parts{
        ex,
        std::move(file),
        std::move(*data),
        std::move(*backing),
        std::move(*h),
        std::move(header_bytes),
        std::move(*l1),
        std::move(*rt),
        file_size,
        qcow2::EngineOptions{opts.read_only, opts.writethrough, opts.metadata_cache_bytes}};
    auto img = co_await qcow2::Qcow2Image::create(std::move(parts));
    if (!img) co_return img.error();
    co_return std::shared_ptr<Disk>(*img);
}

awaitable<Result<std::shared_ptr<Disk>>> open_layer(asio::any_io_executor ex, std::string path,
                                                    OpenOptions opts, Chain& chain) {
    std::error_code ec;
    auto canon = fs::weakly_canonical(path, ec).string();
    if (!chain.seen.insert(ec ? path : canon).second)
        co_return Error{EINVAL, "backing chain loops back to " + path};
    auto flags =
        file_flags(opts, chain.depth == 0 ? io::ImageFileRole::Top : io::ImageFileRole::Backing);
    if (!flags) co_return flags.error();
    auto file = opts.file_opener(ex, path, *flags);
    if (!file) co_return file.error();
    auto size = (*file)->size();
    if (!size) co_return size.error();
    Buffer head(std::min<uint64_t>(*size, 2u << 20));
    if (auto r = co_await (*file)->read_zero_padded(HostOffset{0}, head.span()); !r)
        co_return r.error();
    const bool magic = head.size() >= 4 && load_be32(head.data()) == qcow2::kMagic;
    if (opts.format == "raw" || (opts.format == "probe" && !magic))
        co_return make_raw_disk(ex, std::move(*file), opts.read_only);
    if (!magic)
        co_return Error{
            EINVAL,
            path + ": not a qcow2 image (no qcow2 magic); pass -f raw to serve it as a raw image"};
    auto r = co_await open_qcow2(ex, path, opts, std::move(*file), std::move(head), *size, chain);
    if (!r) co_return prefixed(path, r.error());
    co_return r;
}

}  // namespace

awaitable<Result<std::shared_ptr<Disk>>> open_disk(asio::any_io_executor ex, std::string path,
                                                   OpenOptions opts) {
    if (!opts.format.empty() && opts.format != "qcow2" && opts.format != "raw")
        co_return Error{EINVAL, "unsupported format '" + opts.format + "' (qcow2 or raw)"};
    if (!opts.file_opener) opts.file_opener = io::open_file;
    opts.file_opener = io::latching_opener(std::move(opts.file_opener));  // R18
    Chain chain;
    co_return co_await open_layer(ex, path, opts, chain);
}

}  // namespace qnbd
