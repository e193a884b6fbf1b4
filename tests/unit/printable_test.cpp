// Escaping client text for the log (server/printable.hpp).
#include <catch2/catch.hpp>

#include "server/printable.hpp"

using qnbd::server::printable;

TEST_CASE("printable: plain text and valid UTF-8 pass unchanged", "[printable]") {
    CHECK(printable("disk-1_a.b") == "disk-1_a.b");
    CHECK(printable("d\xc3\xa9j\xc3\xa0 \xe2\x82\xac \xf0\x9f\x92\xbe") ==
          "d\xc3\xa9j\xc3\xa0 \xe2\x82\xac \xf0\x9f\x92\xbe");
}

TEST_CASE("printable: control bytes, backslashes and bad UTF-8 are escaped", "[printable]") {
    CHECK(printable("a\nb") == "a\\x0ab");
    CHECK(printable("\x1b[31mred") == "\\x1b[31mred");
    CHECK(printable("back\\slash") == "back\\x5cslash");
    CHECK(printable(std::string("nul\0byte", 8)) == "nul\\x00byte");
    CHECK(printable("\x7f") == "\\x7f");
    CHECK(printable("\xff\xfe") == "\\xff\\xfe");
    CHECK(printable("\xc0\xaf") == "\\xc0\\xaf");                    // overlong '/'
    CHECK(printable("\xed\xa0\x80") == "\\xed\\xa0\\x80");           // a surrogate
    CHECK(printable("\xe2\x82") == "\\xe2\\x82");                    // truncated sequence
    CHECK(printable("\xf4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");  // past U+10FFFF
}

TEST_CASE("printable: long input is cut and marked", "[printable]") {
    CHECK(printable(std::string(300, 'x'), 10) == std::string(10, 'x') + "...");
    CHECK(printable("short", 10) == "short");
}
