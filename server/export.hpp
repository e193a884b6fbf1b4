// Exports: a named Disk with the features its connections offer. The registry maps names to
// exports (-x, or each --export, or the control socket's additions); connections to one export
// share its Disk.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "disk/disk.hpp"
#include "protocol/handshake.hpp"
#include "protocol/meta_context.hpp"
#include "server/config.hpp"

namespace qnbd::server {

class ExportMetrics;

/// One export and its policy.
struct Export {
    std::string name;
    std::string description;
    std::shared_ptr<Disk> disk;
    DiscardMode discard = DiscardMode::Ignore;
    DetectZeroes detect_zeroes = DetectZeroes::Off;
    bool unsafe_flush = false;  ///< --cache=unsafe: FLUSH does not sync.
    nbd::ExportFeatures features;
    nbd::MetaContextSet contexts;  ///< Metadata contexts offered.
    /// Names of the persistent bitmaps offered as qemu:dirty-bitmap:NAME, in context order,
    /// and the bitmaps themselves (owned by `disk`).
    std::vector<std::string> bitmap_names;
    std::vector<const DirtyBitmap*> bitmaps;
    ExportMetrics* metrics = nullptr;  ///< Request counters of --metrics; null without it.
};

/// Exports served by this process, by name.
class ExportRegistry {
  public:
    void add(std::shared_ptr<Export> e) { exports_[e->name] = std::move(e); }
    /// New connections no longer find `name`; its current connections keep their export.
    void remove(const std::string& name) { exports_.erase(name); }
    /// The export called `name`, or null.
    std::shared_ptr<Export> find(const std::string& name) const {
        auto it = exports_.find(name);
        return it == exports_.end() ? nullptr : it->second;
    }
    const std::map<std::string, std::shared_ptr<Export>>& all() const { return exports_; }

  private:
    std::map<std::string, std::shared_ptr<Export>> exports_;
};

}  // namespace qnbd::server
