// Running under systemd (and under anything that speaks its protocols): readiness and status
// notifications (sd_notify, Type=notify), socket activation (LISTEN_PID/LISTEN_FDS, also what
// libnbd's `[ qnbd ... ]` and systemd-socket-activate use), and whether stderr is the journal.
#pragma once

#include <optional>
#include <string>

#include "base/result.hpp"

namespace qnbd::server {

/// Tells the service manager the export is up (READY=1) with a status line. No-op without
/// NOTIFY_SOCKET.
void notify_ready(const std::string& status);
/// Updates the status line an operator sees in `systemctl status`.
void notify_status(const std::string& status);
/// Tells the service manager the server is shutting down (STOPPING=1).
void notify_stopping();

/// The listening socket passed by socket activation: fd 3 when LISTEN_PID is this process and
/// LISTEN_FDS is 1 (the variables are then removed from the environment, as qemu-nbd does);
/// nothing without activation; EINVAL when LISTEN_FDS asks for anything but one socket.
Result<std::optional<int>> activation_socket();

/// True when stderr is connected to the journal (JOURNAL_STREAM names it).
bool stderr_is_journal();

}  // namespace qnbd::server
