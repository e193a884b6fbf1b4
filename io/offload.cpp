// The helper thread of io/offload.hpp.
#include "io/offload.hpp"

namespace qnbd::io {

asio::thread_pool& offload_pool() {
    static asio::thread_pool pool(1);
    return pool;
}

}  // namespace qnbd::io
