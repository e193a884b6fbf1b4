// Command-line parsing: `qnbd [options] IMAGE`, `qnbd create ...`, `qnbd -d DEV`.
#pragma once

#include <string>
#include <variant>

#include "qcow2/create.hpp"
#include "server/config.hpp"

namespace qnbd::server {

/// `qnbd create [-o options] IMAGE SIZE`.
struct CreateCommand {
    std::string image;
    qcow2::CreateOptions options;
};
/// `qnbd -d /dev/nbdX`.
struct DisconnectCommand {
    std::string device;
};
/// Already handled (help or version printed): exit with `code`.
struct ExitNow {
    int code = 0;
};
using Command = std::variant<Config, CreateCommand, DisconnectCommand, ExitNow>;

/// Parses argv; errors are printed and turned into ExitNow{1}.
Command parse_command_line(int argc, char** argv);

}  // namespace qnbd::server
