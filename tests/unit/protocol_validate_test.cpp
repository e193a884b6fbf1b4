// Per-request validation and the errno mapping.
#include <catch2/catch.hpp>
#include <cerrno>

#include "protocol/errors.hpp"
#include "protocol/handshake.hpp"
#include "protocol/validate.hpp"

using namespace qnbd::nbd;

namespace {

constexpr uint64_t kSize = 1 << 20;

/// A writable export with every feature, structured replies and one meta context.
Session full_session() {
    Session s;
    s.export_size = kSize;
    s.transmission_flags = transmission_flags(ExportFeatures{}, true);
    s.structured_replies = true;
    s.meta_contexts = 1;
    return s;
}

/// The same export with simple replies only and nothing optional advertised.
Session bare_session() {
    Session s;
    s.export_size = kSize;
    s.transmission_flags = NBD_FLAG_HAS_FLAGS;
    return s;
}

Request req(uint16_t type, uint64_t offset = 0, uint32_t length = 512, uint16_t flags = 0) {
    return Request{flags, type, 42, offset, length};
}

uint32_t error_of(const Request& r, const Session& s) {
    return check_request(r, s).error;
}

}  // namespace

TEST_CASE("protocol: valid requests pass", "[protocol]") {
    Session s = full_session();
    for (uint16_t type :
         {NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_CACHE, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS}) {
        INFO(command_name(type));
        auto c = check_request(req(type), s);
        CHECK(c.ok());
        CHECK(c.payload_length == 0);
        CHECK(c.reason.empty());
    }
    auto w = check_request(req(NBD_CMD_WRITE, 4096, 8192), s);
    CHECK(w.ok());
    CHECK(w.payload_length == 8192);
    CHECK(check_request(req(NBD_CMD_FLUSH, 0, 0), s).ok());
    CHECK(check_request(req(NBD_CMD_DISC, 0, 0), s).ok());
    CHECK(check_request(req(NBD_CMD_DISC, 5, 5, 0xffff), s).ok());  // DISC never gets a reply.
    SECTION("ranges touching the end, and empty requests") {
        CHECK(check_request(req(NBD_CMD_READ, kSize - 512, 512), s).ok());
        CHECK(check_request(req(NBD_CMD_READ, kSize, 0), s).ok());
        CHECK(check_request(req(NBD_CMD_WRITE, 0, 0), s).ok());
        CHECK(check_request(req(NBD_CMD_BLOCK_STATUS, 0, kSize), s).ok());
    }
}

TEST_CASE("protocol: unknown commands and flags get EINVAL", "[protocol]") {
    Session s = full_session();
    for (uint16_t type : {NBD_CMD_RESIZE, uint16_t{9}, uint16_t{0xffff}})
        CHECK(error_of(req(type), s) == NBD_EINVAL);
    for (uint16_t flag : {NBD_CMD_FLAG_PAYLOAD_LEN, uint16_t{1u << 6}, uint16_t{0x8000}})
        CHECK(error_of(req(NBD_CMD_READ, 0, 512, flag), s) == NBD_EINVAL);
    auto c = check_request(req(NBD_CMD_WRITE, 0, 512, 0x4000), s);
    CHECK(c.error == NBD_EINVAL);
    CHECK(c.payload_length == 512);  // The payload must still be consumed.
    CHECK_FALSE(c.disconnect);
    CHECK_FALSE(c.reason.empty());
}

TEST_CASE("protocol: flags valid only on some commands", "[protocol]") {
    Session s = full_session();
    SECTION("FUA is accepted on every command once SEND_FUA was advertised") {
        for (uint16_t type : {NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM,
                              NBD_CMD_CACHE, NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS}) {
            uint32_t len = type == NBD_CMD_FLUSH ? 0 : 512;
            CHECK(check_request(req(type, 0, len, NBD_CMD_FLAG_FUA), s).ok());
        }
        s.transmission_flags &= static_cast<uint16_t>(~NBD_FLAG_SEND_FUA);
        CHECK(error_of(req(NBD_CMD_WRITE, 0, 512, NBD_CMD_FLAG_FUA), s) == NBD_EINVAL);
    }
    SECTION("NO_HOLE only on WRITE_ZEROES") {
        CHECK(check_request(req(NBD_CMD_WRITE_ZEROES, 0, 512, NBD_CMD_FLAG_NO_HOLE), s).ok());
        for (uint16_t type : {NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_BLOCK_STATUS})
            CHECK(error_of(req(type, 0, 512, NBD_CMD_FLAG_NO_HOLE), s) == NBD_EINVAL);
    }
    SECTION("FAST_ZERO only on WRITE_ZEROES, and only when advertised") {
        uint16_t f = NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE;
        CHECK(check_request(req(NBD_CMD_WRITE_ZEROES, 0, 512, f), s).ok());
        CHECK(error_of(req(NBD_CMD_TRIM, 0, 512, NBD_CMD_FLAG_FAST_ZERO), s) == NBD_EINVAL);
        s.transmission_flags &= static_cast<uint16_t>(~NBD_FLAG_SEND_FAST_ZERO);
        CHECK(error_of(req(NBD_CMD_WRITE_ZEROES, 0, 512, f), s) == NBD_EINVAL);
    }
    SECTION("DF only on READ, and only with structured replies") {
        CHECK(check_request(req(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_DF), s).ok());
        CHECK(error_of(req(NBD_CMD_BLOCK_STATUS, 0, 512, NBD_CMD_FLAG_DF), s) == NBD_EINVAL);
        CHECK(error_of(req(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_DF), bare_session()) == NBD_EINVAL);
        Session no_sr = full_session();  // SEND_DF advertised, structured replies not agreed.
        no_sr.structured_replies = false;
        CHECK(error_of(req(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_DF), no_sr) == NBD_EINVAL);
        Session no_df = full_session();  // Structured replies, SEND_DF not advertised.
        no_df.transmission_flags &= static_cast<uint16_t>(~NBD_FLAG_SEND_DF);
        CHECK(error_of(req(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_DF), no_df) == NBD_EINVAL);
    }
    SECTION("REQ_ONE only on BLOCK_STATUS") {
        CHECK(check_request(req(NBD_CMD_BLOCK_STATUS, 0, 512, NBD_CMD_FLAG_REQ_ONE), s).ok());
        CHECK(error_of(req(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_REQ_ONE), s) == NBD_EINVAL);
    }
}

TEST_CASE("protocol: read-only exports refuse writes with EPERM", "[protocol]") {
    Session s = full_session();
    ExportFeatures ro;
    ro.read_only = true;
    s.transmission_flags = transmission_flags(ro, true);
    auto w = check_request(req(NBD_CMD_WRITE, 0, 4096), s);
    CHECK(w.error == NBD_EPERM);
    CHECK(w.payload_length == 4096);
    CHECK_FALSE(w.disconnect);
    // TRIM and WRITE_ZEROES are not even advertised read-only, but EPERM is what the spec asks.
    CHECK(error_of(req(NBD_CMD_TRIM), s) == NBD_EPERM);
    CHECK(error_of(req(NBD_CMD_WRITE_ZEROES), s) == NBD_EPERM);
    CHECK(check_request(req(NBD_CMD_READ), s).ok());
    CHECK(check_request(req(NBD_CMD_FLUSH, 0, 0), s).ok());
    CHECK(check_request(req(NBD_CMD_BLOCK_STATUS), s).ok());
}

TEST_CASE("protocol: commands must have been advertised or negotiated", "[protocol]") {
    Session s = bare_session();
    CHECK(check_request(req(NBD_CMD_READ), s).ok());
    CHECK(check_request(req(NBD_CMD_WRITE), s).ok());
    CHECK(error_of(req(NBD_CMD_FLUSH, 0, 0), s) == NBD_EINVAL);
    CHECK(error_of(req(NBD_CMD_TRIM), s) == NBD_EINVAL);
    CHECK(error_of(req(NBD_CMD_WRITE_ZEROES), s) == NBD_EINVAL);
    CHECK(error_of(req(NBD_CMD_CACHE), s) == NBD_EINVAL);
    CHECK(error_of(req(NBD_CMD_BLOCK_STATUS), s) == NBD_EINVAL);
    SECTION("BLOCK_STATUS needs structured replies and a selected context") {
        Session f = full_session();
        f.meta_contexts = 0;
        CHECK(error_of(req(NBD_CMD_BLOCK_STATUS), f) == NBD_EINVAL);
        f.meta_contexts = 2;
        f.structured_replies = false;
        CHECK(error_of(req(NBD_CMD_BLOCK_STATUS), f) == NBD_EINVAL);
    }
}

TEST_CASE("protocol: FLUSH must have zero offset and length", "[protocol]") {
    Session s = full_session();
    CHECK(error_of(req(NBD_CMD_FLUSH, 0, 1), s) == NBD_EINVAL);
    CHECK(error_of(req(NBD_CMD_FLUSH, 1, 0), s) == NBD_EINVAL);
}

TEST_CASE("protocol: out-of-range requests", "[protocol]") {
    Session s = full_session();
    for (uint16_t type : {NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_CACHE, NBD_CMD_BLOCK_STATUS}) {
        INFO(command_name(type));
        CHECK(error_of(req(type, kSize - 511, 512), s) == NBD_EINVAL);
        CHECK(error_of(req(type, kSize + 1, 0), s) == NBD_EINVAL);
        CHECK(error_of(req(type, ~0ull, 512), s) == NBD_EINVAL);  // offset + length overflows.
    }
    auto w = check_request(req(NBD_CMD_WRITE, kSize, 512), s);
    CHECK(w.error == NBD_ENOSPC);
    CHECK(w.payload_length == 512);
    CHECK(error_of(req(NBD_CMD_WRITE_ZEROES, kSize - 1, 2), s) == NBD_ENOSPC);
    CHECK(error_of(req(NBD_CMD_WRITE_ZEROES, ~0ull - 1, 0xffffffff), s) == NBD_ENOSPC);
}

TEST_CASE("protocol: minimum block size alignment", "[protocol]") {
    Session s = full_session();
    s.min_block_size = 512;
    s.export_size = kSize + 100;  // Unaligned tail.
    CHECK(check_request(req(NBD_CMD_READ, 512, 1024), s).ok());
    CHECK(error_of(req(NBD_CMD_READ, 1, 512), s) == NBD_EINVAL);
    CHECK(error_of(req(NBD_CMD_READ, 0, 100), s) == NBD_EINVAL);
    CHECK(error_of(req(NBD_CMD_WRITE, 0, 100), s) == NBD_EINVAL);
    CHECK(check_request(req(NBD_CMD_READ, kSize, 100), s).ok());  // Ends at the export end.
}

TEST_CASE("protocol: payload limits", "[protocol]") {
    Session s = full_session();
    s.export_size = 1ull << 40;
    SECTION("WRITE over the limit cannot be consumed: disconnect") {
        auto c = check_request(req(NBD_CMD_WRITE, 0, kMaxPayload + 1), s);
        CHECK(c.disconnect);
        CHECK_FALSE(c.ok());
        CHECK(c.payload_length == 0);
        // Even when it would also be invalid for other reasons.
        CHECK(check_request(req(NBD_CMD_WRITE, 0, 0xffffffff, 0x8000), s).disconnect);
        auto at_limit = check_request(req(NBD_CMD_WRITE, 0, kMaxPayload), s);
        CHECK(at_limit.ok());
        CHECK(at_limit.payload_length == kMaxPayload);
    }
    SECTION("READ over the limit") {
        CHECK(check_request(req(NBD_CMD_READ, 0, kMaxPayload), s).ok());
        CHECK(error_of(req(NBD_CMD_READ, 0, kMaxPayload + 1), s) == NBD_EINVAL);
        CHECK(error_of(req(NBD_CMD_READ, 0, kMaxPayload + 1, NBD_CMD_FLAG_DF), s) == NBD_EOVERFLOW);
        CHECK(check_request(req(NBD_CMD_READ, 0, kMinDfReadLength, NBD_CMD_FLAG_DF), s).ok());
        CHECK_FALSE(check_request(req(NBD_CMD_READ, 0, kMaxPayload + 1), s).disconnect);
    }
    SECTION("commands without payload may exceed it") {
        for (uint16_t type :
             {NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES, NBD_CMD_CACHE, NBD_CMD_BLOCK_STATUS})
            CHECK(check_request(req(type, 0, 0xffffffff), s).ok());
    }
    SECTION("a smaller negotiated maximum") {
        s.max_payload = 1 << 20;
        CHECK(check_request(req(NBD_CMD_WRITE, 0, (1 << 20) + 1), s).disconnect);
        CHECK(error_of(req(NBD_CMD_READ, 0, (1 << 20) + 1), s) == NBD_EINVAL);
    }
}

TEST_CASE("protocol: errno mapping", "[protocol]") {
    CHECK(nbd_error(0) == NBD_SUCCESS);
    CHECK(nbd_error(EPERM) == NBD_EPERM);
    CHECK(nbd_error(EROFS) == NBD_EPERM);
    CHECK(nbd_error(EIO) == NBD_EIO);
    CHECK(nbd_error(ENOMEM) == NBD_ENOMEM);
    CHECK(nbd_error(EINVAL) == NBD_EINVAL);
    CHECK(nbd_error(ENOSPC) == NBD_ENOSPC);
    CHECK(nbd_error(EDQUOT) == NBD_ENOSPC);
    CHECK(nbd_error(EFBIG) == NBD_ENOSPC);
    CHECK(nbd_error(EOVERFLOW) == NBD_EOVERFLOW);
    CHECK(nbd_error(ENOTSUP) == NBD_ENOTSUP);
    CHECK(nbd_error(EOPNOTSUPP) == NBD_ENOTSUP);
    CHECK(nbd_error(ESHUTDOWN) == NBD_ESHUTDOWN);
    for (int other : {EBADF, EAGAIN, ENOENT, EACCES, ECANCELED, ENXIO, 9999, INT_MAX, INT_MIN})
        CHECK(nbd_error(other) == NBD_EIO);
    SECTION("negated errno values as io_uring returns them") {
        CHECK(nbd_error(-ENOSPC) == NBD_ENOSPC);
        CHECK(nbd_error(-EIO) == NBD_EIO);
        CHECK(nbd_error(-EPERM) == NBD_EPERM);
    }
    SECTION("the NBD values equal the Linux errno values they are named after") {
        CHECK(NBD_EPERM == EPERM);
        CHECK(NBD_EIO == EIO);
        CHECK(NBD_ENOMEM == ENOMEM);
        CHECK(NBD_EINVAL == EINVAL);
        CHECK(NBD_ENOSPC == ENOSPC);
        CHECK(NBD_EOVERFLOW == EOVERFLOW);
        CHECK(NBD_ENOTSUP == ENOTSUP);
        CHECK(NBD_ESHUTDOWN == ESHUTDOWN);
    }
}

TEST_CASE("protocol: errno mapping in the context of a request", "[protocol]") {
    Request fast_zero = req(NBD_CMD_WRITE_ZEROES, 0, 512, NBD_CMD_FLAG_FAST_ZERO);
    CHECK(nbd_error(ENOTSUP, fast_zero) == NBD_ENOTSUP);
    CHECK(nbd_error(ENOTSUP, req(NBD_CMD_WRITE_ZEROES)) == NBD_EINVAL);
    CHECK(nbd_error(EOPNOTSUPP, req(NBD_CMD_TRIM)) == NBD_EINVAL);

    CHECK(nbd_error(EOVERFLOW, req(NBD_CMD_READ, 0, 512, NBD_CMD_FLAG_DF)) == NBD_EOVERFLOW);
    CHECK(nbd_error(EOVERFLOW, req(NBD_CMD_READ)) == NBD_EINVAL);
    CHECK(nbd_error(EOVERFLOW, req(NBD_CMD_TRIM, 0, kMaxPayload + 1)) == NBD_EOVERFLOW);
    CHECK(nbd_error(EOVERFLOW, req(NBD_CMD_TRIM, 0, kMaxPayload)) == NBD_EINVAL);
    CHECK(nbd_error(EOVERFLOW, req(NBD_CMD_WRITE, 0, kMaxPayload)) == NBD_EINVAL);
    Request big_fast = req(NBD_CMD_WRITE_ZEROES, 0, 0xffffffff, NBD_CMD_FLAG_FAST_ZERO);
    CHECK(nbd_error(EOVERFLOW, big_fast) == NBD_EINVAL);

    // Everything else passes through unchanged.
    CHECK(nbd_error(ENOSPC, req(NBD_CMD_WRITE)) == NBD_ENOSPC);
    CHECK(nbd_error(-EIO, req(NBD_CMD_READ)) == NBD_EIO);
    CHECK(nbd_error(0, req(NBD_CMD_READ)) == NBD_SUCCESS);
}
