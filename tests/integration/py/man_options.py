"""The options a --help text lists against the options a man page documents.

usage: man_options.py HELP_FILE MAN_PAGE SECTION
  HELP_FILE  the output of `qnbd --help` (or `qnbd create --help`), CLI11's format: one option
             per line as "  -p,--port TEXT  ...", "  --fork  ...", "  -f TEXT  ..."
  MAN_PAGE   troff source; an option is documented by a .TP entry whose tag line names it,
             e.g. `.BR \\-p ", " \\-\\-port =\\fIPORT\\fR`
  SECTION    the .SH section whose .TP entries are read (its .SS subsections included)
Each option is compared as the spellings of one entry ("-p,--port"), so a short option paired
with the wrong long one is a difference too. Exit status 1, listing the differences, unless
both sides name the same options.
"""
import re
import sys

HELP_LINE = re.compile(r"^  (-[A-Za-z0-9](?:,--[A-Za-z0-9][\w-]*)?|--[A-Za-z0-9][\w-]*)(?=[ \t]|$)")
SPELLING = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)")


def help_options(text):
    return {m.group(1) for line in text.splitlines() if (m := HELP_LINE.match(line))}


def plain(troff):
    troff = troff.replace("\\-", "-")
    troff = re.sub(r"\\f(\[[^]]*\]|\(..|.)", "", troff)
    return troff.replace('"', " ")


def man_options(text, section):
    out, inside, tag_next = set(), False, False
    for line in text.splitlines():
        if line.startswith(".SH"):
            inside = line[3:].strip().strip('"') == section
            continue
        if not inside:
            continue
        if line.startswith(".TP"):
            tag_next = True
        elif tag_next and not line.startswith(".\\\""):
            tag_next = False
            names = SPELLING.findall(re.sub(r"^\.[A-Z]+\s*", "", plain(line)))
            if names:
                out.add(",".join(names))
    return out


def main():
    help_file, man_page, section = sys.argv[1:4]
    with open(help_file) as f:
        in_help = help_options(f.read())
    with open(man_page) as f:
        in_man = man_options(f.read(), section)
    if not in_help:
        sys.exit(f"no options found in {help_file}")
    missing = sorted(in_help - in_man)
    extra = sorted(in_man - in_help)
    for o in missing:
        print(f"in --help but not documented in {man_page} ({section}): {o}")
    for o in extra:
        print(f"documented in {man_page} ({section}) but not in --help: {o}")
    if missing or extra:
        sys.exit(1)
    print(f"{len(in_help)} options, the same in --help and {section}")


if __name__ == "__main__":
    main()
