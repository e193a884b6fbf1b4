// Damage found while writing (R17): data about to land on a metadata cluster means an L2 entry
// or a refcount is wrong. Like qemu, the engine then marks the image corrupt on disk and refuses
// every later write; reads go on.
#include <spdlog/spdlog.h>

#include "base/hex.hpp"
#include "qcow2/image.hpp"

namespace qnbd::qcow2 {

awaitable<Result<void>> Qcow2Image::refuse_overlap(HostOffset host, uint64_t len,
                                                   const char* what) {
    co_return co_await signal_corruption(std::string(what) + " at host offset " + hex(host.value) +
                                         " (" + std::to_string(len) +
                                         " bytes) would overwrite metadata");
}

awaitable<Error> Qcow2Image::signal_corruption(std::string what) {
    Error e{EIO, "image is corrupt: " + what};
    if (corrupt_) co_return e;
    corrupt_ = true;
    spdlog::error(
        "{}: {}; marking the image corrupt, writes are refused from now on "
        "(repair it with 'qemu-img check -r all')",
        file_->path(), e.message);
    if (header_.version >= 3) {
        header_.incompatible_features |= kIncompatCorrupt;
        auto w = co_await write_header();
        if (w) w = co_await sync_all();
        if (!w)
            spdlog::error("{}: cannot mark the image corrupt: {}", file_->path(),
                          w.error().message);
    }
    co_return e;
}

}  // namespace qnbd::qcow2
