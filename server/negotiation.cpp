// The fixed-newstyle handshake: greeting, client flags, then options until EXPORT_NAME or GO.
#include <spdlog/spdlog.h>

#include <boost/asio/steady_timer.hpp>

#include "protocol/handshake.hpp"
#include "protocol/options.hpp"
#include "server/connection.hpp"
#include "server/printable.hpp"

namespace qnbd::server {

using namespace qnbd::nbd;

/// State of one handshake.
class Negotiation {
  public:
    explicit Negotiation(Connection& c) : c_(c) {}

    /// Runs the handshake; nullopt when the connection must close.
    awaitable<std::optional<Negotiated>> run();

  private:
    enum class Next { Continue, Close, Done };

    awaitable<bool> send(const ByteVector& v) {
        asio::const_buffer b(v.data(), v.size());
        co_return !(co_await c_.send({&b, 1}));
    }
    awaitable<bool> reply_error(uint32_t option, uint32_t err, std::string_view msg) {
        spdlog::debug("{}: option {} refused: {}", c_.peer(), option, msg);
        co_return co_await send(encode_rep_error(option, err, msg));
    }
    awaitable<bool> read_payload(uint32_t length, std::vector<std::byte>* out);
    awaitable<Next> option(const OptionHeader& h, Bytes payload);
    awaitable<Next> export_name(Bytes payload);
    awaitable<Next> info(uint32_t option, Bytes payload);
    /// Logs and refuses a request for an export that does not exist.
    awaitable<Next> unknown_export(uint32_t option, const std::string& name);
    awaitable<Next> meta_context(uint32_t option, Bytes payload);
    awaitable<Next> list(Bytes payload);
    awaitable<Next> starttls(Bytes payload);
    /// Before STARTTLS on a TLS server: only STARTTLS and ABORT are answered.
    bool tls_required() const { return c_.tls_ && !c_.tls_active_; }
    uint16_t flags_for(const Export& e) const {
        return transmission_flags(e.features, structured_);
    }

    Connection& c_;
    bool no_zeroes_ = false;
    bool structured_ = false;
    std::string context_export_;  ///< Export the selected contexts belong to.
    MetaContextSet contexts_;
    std::optional<Negotiated> result_;
};

awaitable<std::optional<Negotiated>> Negotiation::run() {
    auto greeting = encode_greeting();
    asio::const_buffer gb(greeting.data(), greeting.size());
    if (co_await c_.send({&gb, 1})) co_return std::nullopt;
    std::array<std::byte, kClientFlagsSize> cf;
    if (co_await c_.transport_->read(cf)) co_return std::nullopt;
    auto flags = decode_client_flags(cf);
    if (!flags) {
        c_.log(spdlog::level::warn, "bad client flags: {}", flags.error().message);
        co_return std::nullopt;
    }
    no_zeroes_ = flags->no_zeroes;
    for (;;) {
        std::array<std::byte, kOptionHeaderSize> hb;
        if (co_await c_.transport_->read(hb)) co_return std::nullopt;
        auto h = decode_option_header(hb);
        if (!h) {
            c_.log(spdlog::level::warn, "bad option header: {}", h.error().message);
            co_return std::nullopt;
        }
        auto plan = plan_option_payload(*h);
        if (plan.action == PayloadAction::Disconnect) {
            c_.log(spdlog::level::warn, "option {} refused: {}", h->option, plan.reason);
            co_return std::nullopt;
        }
        std::vector<std::byte> payload;
        const bool gated =
            tls_required() && h->option != NBD_OPT_STARTTLS && h->option != NBD_OPT_ABORT;
        const bool keep = plan.action != PayloadAction::Discard && !gated;
        if (!co_await read_payload(h->length, keep ? &payload : nullptr)) co_return std::nullopt;
        Next next = Next::Continue;
        if (gated && h->option == NBD_OPT_EXPORT_NAME) {
            // It has no error reply: the spec has the server close.
            c_.log(spdlog::level::warn, "NBD_OPT_EXPORT_NAME before STARTTLS; closing");
            next = Next::Close;
        } else if (gated) {
            c_.log(spdlog::level::warn, "{} refused before STARTTLS: TLS is required",
                   option_name(h->option));
            if (!co_await reply_error(h->option, NBD_REP_ERR_TLS_REQD, "TLS is required"))
                next = Next::Close;
        } else if (!keep) {
            if (!co_await reply_error(h->option, plan.reply, plan.reason)) next = Next::Close;
        } else {
            next = co_await option(*h, payload);
        }
        if (next == Next::Close) co_return std::nullopt;
        if (next == Next::Done) co_return result_;
    }
}

// An option's payload, into `out` or (null) discarded. Memory follows the bytes that arrived,
// not the length announced: a client announcing megabytes and sending nothing costs nothing.
awaitable<bool> Negotiation::read_payload(uint32_t length, std::vector<std::byte>* out) {
    constexpr size_t kChunk = 16 * 1024;
    std::vector<std::byte> scratch(out ? 0 : std::min<size_t>(length, kChunk));
    for (size_t done = 0; done < length;) {
        const size_t n = std::min<size_t>(length - done, kChunk);
        std::span<std::byte> into;
        if (out) {
            out->resize(done + n);
            into = std::span(*out).subspan(done, n);
        } else {
            into = std::span(scratch).first(n);
        }
        if (co_await c_.transport_->read(into)) co_return false;
        done += n;
    }
    co_return true;
}

awaitable<Negotiation::Next> Negotiation::starttls(Bytes payload) {
    const uint32_t o = NBD_OPT_STARTTLS;
    std::string_view refusal;
    uint32_t err = NBD_REP_ERR_POLICY;
    if (!c_.tls_) {
        refusal = "TLS is not configured on this server";
    } else if (c_.tls_active_) {
        refusal = "TLS is already active";
        err = NBD_REP_ERR_INVALID;
    } else if (auto d = decode_empty(payload); !d) {
        co_return co_await reply_error(o, d.error().reply, d.error().message) ? Next::Continue
                                                                              : Next::Close;
    }
    if (!refusal.empty())
        co_return co_await reply_error(o, err, refusal) ? Next::Continue : Next::Close;
    if (!co_await send(encode_rep_ack(o))) co_return Next::Close;
    auto tls = std::make_unique<TlsTransport>(std::move(c_.transport_), c_.tls_);
    TlsTransport& t = *tls;
    c_.transport_ = std::move(tls);
    if (auto r = co_await t.handshake(); !r) {
        c_.log(spdlog::level::warn, "{}", r.error().message);
        co_return Next::Close;
    }
    c_.tls_active_ = true;
    spdlog::debug("{}: TLS established with '{}'", c_.peer(), t.identity());
    co_return Next::Continue;
}

awaitable<Negotiation::Next> Negotiation::option(const OptionHeader& h, Bytes payload) {
    switch (h.option) {
        case NBD_OPT_EXPORT_NAME:
            co_return co_await export_name(payload);
        case NBD_OPT_ABORT:
            co_await send(encode_rep_ack(h.option));
            co_return Next::Close;
        case NBD_OPT_LIST:
            co_return co_await list(payload);
        case NBD_OPT_STARTTLS:
            co_return co_await starttls(payload);
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            co_return co_await info(h.option, payload);
        case NBD_OPT_STRUCTURED_REPLY: {
            if (auto d = decode_empty(payload); !d)
                co_return co_await reply_error(h.option, d.error().reply, d.error().message)
                    ? Next::Continue
                    : Next::Close;
            structured_ = true;
            co_return co_await send(encode_rep_ack(h.option)) ? Next::Continue : Next::Close;
        }
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            co_return co_await meta_context(h.option, payload);
        default:
            co_return co_await reply_error(h.option, NBD_REP_ERR_UNSUP, "unknown option")
                ? Next::Continue
                : Next::Close;
    }
}

awaitable<Negotiation::Next> Negotiation::export_name(Bytes payload) {
    auto d = decode_export_name(payload);
    if (!d) {
        c_.log(spdlog::level::warn, "bad NBD_OPT_EXPORT_NAME: {}", d.error().message);
        co_return Next::Close;
    }
    auto e = c_.exports_.find(d->name);
    if (!e) {
        c_.log(spdlog::level::warn, "client asked for unknown export '{}'", printable(d->name));
        co_return Next::Close;
    }
    const uint16_t tf = flags_for(*e);
    if (!co_await send(encode_export_name_reply(e->disk->size(), tf, no_zeroes_)))
        co_return Next::Close;
    MetaContextSet ctx = context_export_ == d->name ? contexts_ : MetaContextSet{};
    result_ = Negotiated{e, structured_, ctx, tf};
    co_return Next::Done;
}

awaitable<Negotiation::Next> Negotiation::list(Bytes payload) {
    if (auto d = decode_empty(payload); !d)
        co_return co_await reply_error(NBD_OPT_LIST, d.error().reply, d.error().message)
            ? Next::Continue
            : Next::Close;
    for (auto& [name, e] : c_.exports_.all())
        if (!co_await send(encode_rep_server(NBD_OPT_LIST, name, e->description)))
            co_return Next::Close;
    co_return co_await send(encode_rep_ack(NBD_OPT_LIST)) ? Next::Continue : Next::Close;
}

awaitable<Negotiation::Next> Negotiation::unknown_export(uint32_t option, const std::string& name) {
    c_.log(spdlog::level::info, "client asked for unknown export '{}'", printable(name));
    const std::string msg = "no export named '" + name + "'";
    co_return co_await reply_error(option, NBD_REP_ERR_UNKNOWN, msg) ? Next::Continue : Next::Close;
}

awaitable<Negotiation::Next> Negotiation::info(uint32_t option, Bytes payload) {
    auto d = decode_info_request(payload);
    if (!d)
        co_return co_await reply_error(option, d.error().reply, d.error().message) ? Next::Continue
                                                                                   : Next::Close;
    auto e = c_.exports_.find(d->name);
    if (!e) co_return co_await unknown_export(option, d->name);
    const uint16_t tf = flags_for(*e);
    std::vector<ByteVector> replies;
    replies.push_back(encode_info_export(option, e->disk->size(), tf));
    if (d->wants(NBD_INFO_NAME)) replies.push_back(encode_info_name(option, e->name));
    if (d->wants(NBD_INFO_DESCRIPTION) && !e->description.empty())
        replies.push_back(encode_info_description(option, e->description));
    replies.push_back(encode_info_block_size(option, BlockSizes{}));
    replies.push_back(encode_rep_ack(option));
    for (auto& r : replies)
        if (!co_await send(r)) co_return Next::Close;
    if (option == NBD_OPT_INFO) co_return Next::Continue;
    MetaContextSet ctx = context_export_ == d->name ? contexts_ : MetaContextSet{};
    result_ = Negotiated{e, structured_, ctx, tf};
    co_return Next::Done;
}

awaitable<Negotiation::Next> Negotiation::meta_context(uint32_t option, Bytes payload) {
    auto d = decode_meta_context_request(payload);
    if (!d)
        co_return co_await reply_error(option, d.error().reply, d.error().message) ? Next::Continue
                                                                                   : Next::Close;
    if (!structured_)
        co_return co_await reply_error(option, NBD_REP_ERR_INVALID,
                                       "structured replies must be negotiated first")
            ? Next::Continue
            : Next::Close;
    auto e = c_.exports_.find(d->name);
    if (!e) co_return co_await unknown_export(option, d->name);
    const bool set = option == NBD_OPT_SET_META_CONTEXT;
    MetaContextSet chosen = set ? match_set_queries(d->queries, e->contexts, e->bitmap_names)
                                : match_list_queries(d->queries, e->contexts, e->bitmap_names);
    for (MetaContext m : chosen.list()) {
        const std::string name = context_name(m, e->bitmap_names);
        if (!co_await send(encode_rep_meta_context(option, set ? context_id(m) : 0, name)))
            co_return Next::Close;
    }
    if (set) {
        contexts_ = chosen;
        context_export_ = d->name;
    }
    co_return co_await send(encode_rep_ack(option)) ? Next::Continue : Next::Close;
}

awaitable<std::optional<Negotiated>> Connection::negotiate() {
    asio::steady_timer timer(ex_, std::chrono::seconds(limits_.handshake_timeout_s));
    auto timed_out = std::make_shared<bool>(false);
    if (limits_.handshake_timeout_s)  // 0: no limit.
        timer.async_wait([this, timed_out](error_code ec) {
            if (ec) return;
            *timed_out = true;
            transport_->close();
        });
    Negotiation n(*this);
    auto r = co_await n.run();
    timer.cancel();
    if (*timed_out)
        log(spdlog::level::warn, "handshake not finished within {} s; connection dropped",
            limits_.handshake_timeout_s);
    co_return r;
}

}  // namespace qnbd::server
