// The oracle of fuzz_connection: parses everything the server writes and checks it against
// the client bytes it was sent. It knows where each client option ends in the input (the
// handshake reads options exactly), so it can tell which option a reply answers; after the
// handshake it models the requests the server must read from the input and checks that every
// one of them gets exactly one well-formed reply:
//   - greeting first, option replies framed and answering the option just read, with payloads
//     of the size their type requires, an EXPORT_NAME reply only for EXPORT_NAME;
//   - simple replies carry a known error and, for a successful simple READ, exactly its data;
//   - with structured replies, READ and BLOCK_STATUS are answered with chunks (and only
//     they), each reply's chunks end with DONE (chunks of different replies and simple
//     replies may come between them, as the spec allows), data and hole
//     chunks cover a successful READ in order (one chunk for DF), block status chunks name
//     distinct known contexts with nonzero extents within the request (one with REQ_ONE).
// A reply whose request cannot be told apart (same cookie, requests that would be answered
// differently) ends the checking of that connection.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <vector>

#include "protocol/bytes.hpp"
#include "protocol/transmission.hpp"

namespace qnbd::fuzz {

class ReplyChecker {
  public:
    /// `input` is the client's byte stream; `export_sizes` the sizes the server may announce.
    ReplyChecker(nbd::Bytes input, std::set<uint64_t> export_sizes);
    /// Bytes the server wrote, when it had read `consumed` bytes of the input.
    void on_write(nbd::Bytes out, size_t consumed);
    /// The connection has ended: nothing may be half written or left unanswered.
    void finish() const;

  private:
    enum class Phase { Greeting, Options, Transmission, Closed };
    struct Option {
        size_t end = 0;  ///< Input offset just past its payload.
        uint32_t option = 0;
    };
    struct Pending {
        nbd::Request r;
        uint32_t must_fail = 0;  ///< The only error the reply may carry, if nonzero.
        bool answered = false;
    };
    /// A structured reply whose DONE chunk has not been seen yet.
    struct Open {
        size_t request = 0;
        uint64_t covered = 0;  ///< READ: bytes of data and hole chunks so far.
        unsigned chunks = 0;
        uint32_t contexts = 0;  ///< BLOCK_STATUS: bit per context answered.
        bool error = false;
    };

    void parse_options();
    void parse_requests(size_t from);
    bool step();
    bool greeting();
    bool option_reply();
    void check_option_payload(uint32_t option, uint32_t type, nbd::Bytes payload);
    bool export_name_reply();
    bool simple_reply();
    bool chunk();
    /// The open reply a chunk with `cookie` continues, or a new one; null when the chunk cannot
    /// be attributed (checking stops).
    Open* reply_for(uint64_t cookie);
    void check_chunk(Open& o, const nbd::ChunkHeader& h, nbd::Bytes payload);
    void check_read_chunk(Open& o, const nbd::ChunkHeader& h, nbd::Bytes payload);
    void check_status_chunk(Open& o, nbd::Bytes payload);
    void close_reply(size_t open_index);
    std::optional<size_t> attribute(uint64_t cookie, bool simple);
    uint32_t current_option() const;
    nbd::Bytes avail() const;

    nbd::Bytes in_;
    std::set<uint64_t> sizes_;
    std::vector<std::byte> out_;
    size_t parsed_ = 0;  ///< Bytes of out_ checked so far.
    size_t consumed_ = 0;
    Phase phase_ = Phase::Greeting;
    bool structured_ = false;
    bool lost_ = false;  ///< Could not attribute a reply; checking stopped.
    std::vector<Option> options_;
    std::vector<Pending> requests_;
    std::vector<Open> open_;  ///< Structured replies begun and not yet done.
};

}  // namespace qnbd::fuzz
