// One io_uring per io_context, driven by the context's own reactor: every file operation is
// an SQE, submitted in batches once per reactor pass, and completions arrive through the ring's
// file descriptor polled by the reactor. No operation waits for another on the same file.
#pragma once

#include <liburing.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>
#include <memory>
#include <optional>
#include <utility>

namespace qnbd::io {

namespace asio = boost::asio;
using asio::awaitable;

/// The io_uring of one io_context. Used from that context's single thread only.
class Ring : public asio::execution_context::service {
  public:
    /// Service identity for asio::use_service.
    static inline asio::execution_context::id id;
    /// Sets up the ring (256 submission entries); throws std::system_error if the kernel refuses.
    explicit Ring(asio::execution_context& ctx);
    ~Ring() override;

    /// The ring of `ex`'s execution context, created on first use.
    static Ring& of(const asio::any_io_executor& ex);

    /// Runs one operation: `prep` fills the SQE (without user data); the result is the CQE's
    /// res: a byte count or 0 on success, -errno on failure. Not a coroutine itself: the one
    /// frame of the operation is the initiation's, which owns `prep` until the SQE is filled.
    template <class Prep>
    awaitable<int> run(asio::any_io_executor ex, Prep prep) {
        return asio::async_initiate<decltype(asio::use_awaitable), void(int)>(
            [this, ex = std::move(ex), prep = std::move(prep)](auto handler) mutable {
                using H = decltype(handler);
                this->start(ex, std::unique_ptr<Op>(new OpFor<H>(std::move(handler))), prep);
            },
            asio::use_awaitable);
    }

  private:
    /// One submitted operation, resumed with the CQE's result.
    struct Op {
        virtual ~Op() = default;
        /// Consumes the operation (deletes it) and runs its handler with `res`.
        virtual void complete(int res) = 0;
    };
    /// An operation holding its handler in place: one allocation per operation.
    template <class Handler>
    struct OpFor final : Op {
        explicit OpFor(Handler h) : handler(std::move(h)) {}
        void complete(int res) override {
            Handler h = std::move(handler);
            delete this;
            std::move(h)(res);
        }
        Handler handler;
    };

    template <class Prep>
    void start(const asio::any_io_executor& ex, std::unique_ptr<Op> op, Prep& prep) {
        if (shut_) return cancelled(ex, std::move(op));
        io_uring_sqe* sqe = next_sqe(ex);
        prep(sqe);
        io_uring_sqe_set_data(sqe, op.release());
        ++in_flight_;
        schedule_submit(ex);
    }

    void shutdown() override;
    void cancelled(const asio::any_io_executor& ex, std::unique_ptr<Op> op);
    io_uring_sqe* next_sqe(const asio::any_io_executor& ex);
    void schedule_submit(const asio::any_io_executor& ex);
    void submit();
    void arm();
    void drain();
    void on_ready(const boost::system::error_code& ec);

    io_uring ring_{};
    std::optional<asio::posix::stream_descriptor> poller_;  ///< The ring fd in the reactor.
    size_t in_flight_ = 0;
    bool submit_pending_ = false;  ///< A submit() is posted.
    bool armed_ = false;           ///< A wait on the ring fd is pending.
    bool draining_ = false;
    bool shut_ = false;
};

}  // namespace qnbd::io
