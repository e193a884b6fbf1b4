// The shared zero page.
#include "base/buffer.hpp"

namespace qnbd {

const std::byte* zero_page() {
    static const Buffer page(kZeroPageSize);
    return page.data();
}

}  // namespace qnbd
