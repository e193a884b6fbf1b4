// The per-io_context io_uring: batched submission, completions through the reactor.
#include "io/uring.hpp"

#include <boost/asio/execution/context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/query.hpp>
#include <cerrno>
#include <system_error>

namespace qnbd::io {

namespace {
constexpr unsigned kEntries = 256;
}

Ring::Ring(asio::execution_context& ctx) : asio::execution_context::service(ctx) {
    io_uring_params p{};
    p.flags = IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL;
    int r = io_uring_queue_init_params(kEntries, &ring_, &p);
    if (r == -EINVAL) {  // Kernels before 5.18 lack SUBMIT_ALL.
        p = io_uring_params{};
        p.flags = IORING_SETUP_CLAMP;
        r = io_uring_queue_init_params(kEntries, &ring_, &p);
    }
    if (r < 0) throw std::system_error(-r, std::generic_category(), "io_uring_queue_init");
}

Ring::~Ring() {
    io_uring_queue_exit(&ring_);
}

Ring& Ring::of(const asio::any_io_executor& ex) {
    return asio::use_service<Ring>(asio::query(ex, asio::execution::context));
}

io_uring_sqe* Ring::next_sqe(const asio::any_io_executor& ex) {
    if (!poller_) poller_.emplace(ex, ring_.ring_fd);
    for (;;) {
        if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) return sqe;
        // The submission queue is full: hand it to the kernel now. If the kernel pushes back
        // (completion queue overflowing), reap completions first.
        int r = io_uring_submit(&ring_);
        if (r == -EBUSY || r == -EAGAIN)
            drain();
        else if (r < 0 && r != -EINTR)
            throw std::system_error(-r, std::generic_category(), "io_uring_submit");
    }
}

void Ring::cancelled(const asio::any_io_executor& ex, std::unique_ptr<Op> op) {
    // Owned by the posted function until it runs: dropped with it if it never does.
    asio::post(ex, [op = std::move(op)]() mutable { op.release()->complete(-ECANCELED); });
}

void Ring::schedule_submit(const asio::any_io_executor& ex) {
    if (!armed_) arm();
    if (submit_pending_) return;
    submit_pending_ = true;
    asio::post(ex, [this] {
        submit_pending_ = false;
        submit();
    });
}

void Ring::submit() {
    if (shut_) return;
    for (;;) {
        int r = io_uring_submit(&ring_);
        if (r >= 0) return;
        if (r == -EINTR) continue;
        if (r == -EBUSY || r == -EAGAIN) {
            // Completions are backed up; they arrive through the poller, then submit again.
            drain();
            continue;
        }
        throw std::system_error(-r, std::generic_category(), "io_uring_submit");
    }
}

void Ring::arm() {
    armed_ = true;
    poller_->async_wait(asio::posix::stream_descriptor::wait_read,
                        [this](const boost::system::error_code& ec) { on_ready(ec); });
}

void Ring::on_ready(const boost::system::error_code&) {
    armed_ = false;
    if (shut_) return;
    // A handler run by drain() may start the next operation, which arms the wait itself: arm
    // only if none did, so that exactly one wait is ever pending.
    drain();
    if (in_flight_ == 0) return;
    if (!armed_) arm();
    // The reactor polls the ring edge-triggered: completions posted before the wait was
    // registered raised no new edge, so reap whatever is already there.
    if (io_uring_cq_ready(&ring_)) drain();
}

void Ring::drain() {
    if (draining_) return;
    draining_ = true;
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
        auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
        const int res = cqe->res;
        io_uring_cqe_seen(&ring_, cqe);
        if (!op) continue;
        --in_flight_;
        op->complete(res);
    }
    draining_ = false;
    // Nothing left in flight: a wait that is still pending (armed by an operation whose
    // completion this drain reaped, say one submitted early because the submission queue was
    // full) would keep the io_context from ever running out of work.
    if (in_flight_ == 0 && armed_) poller_->cancel();
}

void Ring::shutdown() {
    shut_ = true;
    if (in_flight_) {
        // The kernel may still be writing into buffers the pending handlers own: cancel what
        // can be cancelled and wait for every operation before destroying the handlers.
        io_uring_submit(&ring_);
        if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) {
            io_uring_prep_cancel(sqe, nullptr, IORING_ASYNC_CANCEL_ANY);
            io_uring_sqe_set_data(sqe, nullptr);
            io_uring_submit(&ring_);
        }
        while (in_flight_) {
            io_uring_cqe* cqe = nullptr;
            int r = io_uring_wait_cqe(&ring_, &cqe);
            if (r == -EINTR) continue;
            if (r < 0) break;
            auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
            io_uring_cqe_seen(&ring_, cqe);
            if (!op) continue;
            --in_flight_;
            delete op;
        }
    }
    if (poller_) {
        poller_->release();
        poller_.reset();
    }
}

}  // namespace qnbd::io
