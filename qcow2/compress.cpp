// Compressed clusters: raw deflate (zlib, 4 KiB window, no zlib header) and zstd frames.
#include "qcow2/compress.hpp"

#include <zlib.h>
#include <zstd.h>

#include <climits>
#include <memory>
#include <string>

namespace qnbd::qcow2 {
namespace {

constexpr int kDeflateWindowBits = -12;  ///< Negative: raw deflate without a zlib header.
constexpr int kDeflateMemLevel = 9;

Error damaged(std::string what) {
    return Error{EIO, "compressed cluster: " + std::move(what)};
}

Bytef* z_in(std::span<const std::byte> s) {
    return reinterpret_cast<Bytef*>(const_cast<std::byte*>(s.data()));
}

/// zlib streams take 32-bit lengths; clusters are at most 2 MiB but compressed input is bounded
/// by the caller, so clamp rather than wrap.
uInt z_len(size_t n) {
    return n > UINT_MAX ? UINT_MAX : static_cast<uInt>(n);
}

Result<void> inflate_raw(std::span<const std::byte> in, std::span<std::byte> out) {
    z_stream zs{};
    if (inflateInit2(&zs, kDeflateWindowBits) != Z_OK) {
        return Error{ENOMEM, "compressed cluster: cannot initialise zlib"};
    }
    zs.next_in = z_in(in);
    zs.avail_in = z_len(in.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = z_len(out.size());
    const int ret = inflate(&zs, Z_FINISH);
    const uInt left = zs.avail_out;
    const char* msg = zs.msg;
    inflateEnd(&zs);
    // Z_BUF_ERROR with a full output means the cluster filled up before the stream's end marker;
    // the data is complete either way. Anything after the stream end is ignored.
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && left == 0) return ok();
    if (ret == Z_STREAM_END || ret == Z_BUF_ERROR) {
        return damaged("deflate stream ends " + std::to_string(left) + " bytes short of a cluster");
    }
    return damaged(std::string("deflate stream is damaged: ") + (msg ? msg : zError(ret)));
}

struct DctxFree {
    void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

Result<void> zstd_decompress(std::span<const std::byte> in, std::span<std::byte> out) {
    std::unique_ptr<ZSTD_DCtx, DctxFree> dctx(ZSTD_createDCtx());
    if (!dctx) return Error{ENOMEM, "compressed cluster: cannot create a zstd context"};
    ZSTD_inBuffer input{in.data(), in.size(), 0};
    ZSTD_outBuffer output{out.data(), out.size(), 0};
    // One or more frames; stop as soon as the cluster is full so that trailing bytes of the last
    // 512-byte sector are never looked at.
    while (output.pos < output.size) {
        const size_t in_before = input.pos;
        const size_t out_before = output.pos;
        const size_t ret = ZSTD_decompressStream(dctx.get(), &output, &input);
        if (ZSTD_isError(ret)) {
            return damaged(std::string("zstd stream is damaged: ") + ZSTD_getErrorName(ret));
        }
        if (input.pos == in_before && output.pos == out_before) {
            return damaged("zstd stream ends " + std::to_string(output.size - output.pos) +
                           " bytes short of a cluster");
        }
    }
    return ok();
}

Result<std::vector<std::byte>> deflate_raw(std::span<const std::byte> in) {
    z_stream zs{};
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, kDeflateWindowBits, kDeflateMemLevel,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return Error{ENOMEM, "cannot initialise zlib compression"};
    }
    // Only a result smaller than the input is useful.
    std::vector<std::byte> out(in.size() > 0 ? in.size() - 1 : 0);
    zs.next_in = z_in(in);
    zs.avail_in = z_len(in.size());
    zs.next_out = reinterpret_cast<Bytef*>(out.data());
    zs.avail_out = z_len(out.size());
    const int ret = deflate(&zs, Z_FINISH);
    const size_t produced = out.size() - zs.avail_out;
    deflateEnd(&zs);
    if (ret != Z_STREAM_END) return std::vector<std::byte>{};  // did not fit: not smaller
    out.resize(produced);
    return out;
}

Result<std::vector<std::byte>> zstd_compress(std::span<const std::byte> in) {
    std::vector<std::byte> out(ZSTD_compressBound(in.size()));
    const size_t n =
        ZSTD_compress(out.data(), out.size(), in.data(), in.size(), ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(n)) {
        return Error{EIO, std::string("zstd compression failed: ") + ZSTD_getErrorName(n)};
    }
    if (n >= in.size()) return std::vector<std::byte>{};
    out.resize(n);
    return out;
}

}  // namespace

Result<void> decompress_cluster(CompressionType type, std::span<const std::byte> in,
                                std::span<std::byte> out) {
    switch (type) {
        case CompressionType::Zlib:
            return inflate_raw(in, out);
        case CompressionType::Zstd:
            return zstd_decompress(in, out);
    }
    return Error{EIO, "unknown compression type " + std::to_string(static_cast<int>(type))};
}

Result<std::vector<std::byte>> compress_cluster(CompressionType type,
                                                std::span<const std::byte> in) {
    if (in.empty()) return std::vector<std::byte>{};
    switch (type) {
        case CompressionType::Zlib:
            return deflate_raw(in);
        case CompressionType::Zstd:
            return zstd_compress(in);
    }
    return Error{EINVAL, "unknown compression type " + std::to_string(static_cast<int>(type))};
}

}  // namespace qnbd::qcow2
