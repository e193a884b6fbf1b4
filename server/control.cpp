// The control socket (see control.hpp). Boost.JSON is used header-only (its sources are
// compiled into this file), so no library is added to the build.
#include "server/control.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/src.hpp>
#include <filesystem>

#include "server/export_options.hpp"
#include "server/live_exports.hpp"
#include "server/server.hpp"

namespace qnbd::server {

namespace json = boost::json;

namespace {

constexpr size_t kMaxLine = 64 * 1024;

json::value error_reply(const std::string& why) {
    return json::object{{"error", json::object{{"class", "GenericError"}, {"desc", why}}}};
}

json::value return_reply(json::value v) {
    return json::object{{"return", std::move(v)}};
}

/// The string argument `key`; an error when it is missing (if `required`) or not a string.
Result<std::string> string_arg(const json::object& args, const char* key, bool required) {
    auto* v = args.if_contains(key);
    if (!v) {
        if (required) return Error{EINVAL, std::string("argument '") + key + "' is required"};
        return std::string();
    }
    if (!v->is_string())
        return Error{EINVAL, std::string("argument '") + key + "' must be a string"};
    return std::string(v->as_string());
}

Result<bool> bool_arg(const json::object& args, const char* key) {
    auto* v = args.if_contains(key);
    if (!v) return false;
    if (!v->is_bool())
        return Error{EINVAL, std::string("argument '") + key + "' must be a boolean"};
    return v->as_bool();
}

/// The array-of-strings argument `key` (empty when missing).
Result<std::vector<std::string>> strings_arg(const json::object& args, const char* key) {
    std::vector<std::string> out;
    auto* v = args.if_contains(key);
    if (!v) return out;
    const std::string bad = std::string("argument '") + key + "' must be an array of strings";
    if (!v->is_array()) return Error{EINVAL, bad};
    for (const json::value& s : v->as_array()) {
        if (!s.is_string() || s.as_string().empty()) return Error{EINVAL, bad};
        out.emplace_back(s.as_string());
    }
    return out;
}

Result<void> known_args(const json::object& args, std::initializer_list<const char*> keys) {
    for (const auto& kv : args) {
        bool known = false;
        for (const char* k : keys) known = known || kv.key() == k;
        if (!known) return Error{EINVAL, "unknown argument '" + std::string(kv.key()) + "'"};
    }
    return ok();
}

/// The ExportSpec of block-export-add's arguments.
Result<ExportSpec> spec_from(const json::object& a) {
    if (auto r = known_args(a, {"name", "file", "format", "read-only", "description",
                                "allocation-depth", "bitmaps"});
        !r)
        return r.error();
    ExportSpec e;
    auto name = string_arg(a, "name", true);
    if (!name) return name.error();
    auto file = string_arg(a, "file", true);
    if (!file) return file.error();
    auto format = string_arg(a, "format", false);
    if (!format) return format.error();
    auto desc = string_arg(a, "description", false);
    if (!desc) return desc.error();
    auto ro = bool_arg(a, "read-only");
    if (!ro) return ro.error();
    auto depth = bool_arg(a, "allocation-depth");
    if (!depth) return depth.error();
    auto bitmaps = strings_arg(a, "bitmaps");
    if (!bitmaps) return bitmaps.error();
    if (!format->empty() && *format != "qcow2" && *format != "raw")
        return Error{EINVAL, "format must be qcow2 or raw"};
    if (file->empty()) return Error{EINVAL, "argument 'file' must not be empty"};
    e.name = *name;
    e.file = *file;
    e.format = *format;
    e.description = *desc;
    e.read_only = *ro;
    e.allocation_depth = *depth;
    e.bitmaps = std::move(*bitmaps);
    return e;
}

json::array bitmap_names(const Export& e) {
    json::array out;
    for (const std::string& n : e.bitmap_names) out.emplace_back(n);
    return out;
}

}  // namespace

ControlServer::ControlServer(asio::io_context& io, const Config& base, LiveExports& live,
                             Server& server)
    : io_(io), base_(base), live_(live), server_(server), acceptor_(io) {}

Result<void> ControlServer::listen(const std::string& path) {
    namespace fs = std::filesystem;
    if (fs::is_socket(path)) fs::remove(path);
    error_code ec;
    asio::local::stream_protocol::endpoint ep(path);
    // Created owner-only: no moment where others could connect.
    const mode_t old = ::umask(0177);
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.bind(ep, ec);
    ::umask(old);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
        return Error{ec.value(), "cannot listen on control socket " + path + ": " + ec.message()};
    path_ = path;
    spdlog::info("control socket on {}", path);
    return ok();
}

awaitable<void> ControlServer::run() {
    ++running_;
    while (!stopped_) {
        auto [ec, sock] = co_await acceptor_.async_accept(asio::as_tuple(asio::use_awaitable));
        if (ec) break;
        auto s = std::make_shared<Socket>(std::move(sock));
        sessions_.insert(s);
        ++running_;
        asio::co_spawn(io_, session(s), [this, s](std::exception_ptr e) {
            if (e) spdlog::error("control session failed with an internal error");
            sessions_.erase(s);
            --running_;
            changed_.notify_all();
        });
    }
    --running_;
    while (running_) co_await changed_.wait();
}

void ControlServer::stop() {
    stopped_ = true;
    error_code ec;
    acceptor_.close(ec);
    for (const auto& s : sessions_) s->close(ec);
    if (!path_.empty()) std::filesystem::remove(path_, ec);
}

awaitable<void> ControlServer::session(std::shared_ptr<Socket> s) {
    std::string buf;
    for (;;) {
        auto [ec, n] = co_await asio::async_read_until(*s, asio::dynamic_buffer(buf, kMaxLine),
                                                       '\n', asio::as_tuple(asio::use_awaitable));
        json::value reply;
        bool last = false;
        if (ec == asio::error::not_found) {
            reply = error_reply("request longer than 64 KiB");
            last = true;
        } else if (ec) {
            co_return;
        } else {
            const std::string line = buf.substr(0, n - 1);
            buf.erase(0, n);
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            error_code jec;
            json::value req = json::parse(line, jec);
            if (jec || !req.is_object())
                reply = error_reply("not a JSON object: " + (jec ? jec.message() : line));
            else {
                while (busy_) co_await changed_.wait();
                busy_ = true;
                reply = co_await execute(req.as_object());
                busy_ = false;
                changed_.notify_all();
            }
        }
        const std::string out = json::serialize(reply) + "\n";
        auto [wec, w] =
            co_await asio::async_write(*s, asio::buffer(out), asio::as_tuple(asio::use_awaitable));
        if (wec || last) co_return;
    }
}

awaitable<json::value> ControlServer::execute(const json::object& req) {
    auto* cmd = req.if_contains("execute");
    if (!cmd || !cmd->is_string()) co_return error_reply("'execute' must name a command");
    const json::object none;
    const json::object* args = &none;
    if (auto* a = req.if_contains("arguments")) {
        if (!a->is_object()) co_return error_reply("'arguments' must be an object");
        args = &a->as_object();
    }
    const std::string name(cmd->as_string());
    if (name == "block-export-add") co_return co_await add(*args);
    if (name == "block-export-del") co_return co_await del(*args);
    if (name == "query-block-exports") co_return return_reply(query_exports());
    if (name == "query-stats") co_return return_reply(query_stats());
    co_return error_reply("unknown command '" + name + "'");
}

awaitable<json::value> ControlServer::add(const json::object& args) {
    auto spec = spec_from(args);
    if (!spec) co_return error_reply(spec.error().message);
    auto r = co_await live_.add(config_for(base_, *spec));
    if (!r) co_return error_reply(r.error().message);
    spdlog::info("export '{}' added: {}", spec->name, spec->file);
    co_return return_reply(json::object{});
}

awaitable<json::value> ControlServer::del(const json::object& args) {
    if (auto r = known_args(args, {"name", "timeout"}); !r)
        co_return error_reply(r.error().message);
    auto name = string_arg(args, "name", true);
    if (!name) co_return error_reply(name.error().message);
    int64_t timeout = 0;
    if (auto* t = args.if_contains("timeout")) {
        if (!t->is_int64() || t->as_int64() < 0 || t->as_int64() > 86400)
            co_return error_reply("argument 'timeout' must be seconds from 0 to 86400");
        timeout = t->as_int64();
    }
    auto r = co_await live_.remove(*name, &server_, std::chrono::seconds(timeout));
    if (!r) co_return error_reply(r.error().message);
    co_return return_reply(json::object{});
}

json::value ControlServer::query_exports() const {
    json::array out;
    for (const auto& e : live_.entries())
        out.push_back(json::object{{"name", e.exp->name},
                                   {"file", e.image},
                                   {"description", e.exp->description},
                                   {"read-only", e.exp->features.read_only},
                                   {"bitmaps", bitmap_names(*e.exp)},
                                   {"size", e.exp->disk->size()},
                                   {"connections", server_.connections_to(e.exp.get())}});
    return out;
}

json::value ControlServer::query_stats() const {
    json::array out;
    for (const auto& e : live_.entries()) {
        const DiskStats st = e.exp->disk->stats();
        out.push_back(json::object{{"name", e.exp->name},
                                   {"flush-requests", st.flush_requests},
                                   {"barriers", st.barriers},
                                   {"fdatasyncs", st.syncs},
                                   {"fdatasyncs-saved", st.syncs_saved},
                                   {"clusters-allocated", st.clusters_allocated},
                                   {"clusters-freed", st.clusters_freed},
                                   {"metadata-writes", st.metadata_writes},
                                   {"cache-hits", st.cache_hits},
                                   {"cache-misses", st.cache_misses}});
    }
    return out;
}

}  // namespace qnbd::server
