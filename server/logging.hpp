// Where the server's log goes: stderr (timestamp, pid, level), the journal when stderr is the
// journal (its own timestamps and priorities, so none are doubled), or syslog once the process
// has gone to the background and let go of the caller's stderr.
#pragma once

namespace qnbd::server {

/// Sets up the default logger; `verbose` logs every request (debug level).
void setup_logging(bool verbose);
/// Sends the log to syslog (ident "qnbd", with the pid) from now on.
void log_to_syslog();

}  // namespace qnbd::server
