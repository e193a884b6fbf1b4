#!/bin/bash
# cmake --install: DESTDIR and --prefix put the binary, the man page, the systemd units, the
# sysusers.d file and the example configuration where they belong, with ExecStart= naming the
# installed binary. The man page documents exactly the options of `qnbd --help` and
# `qnbd create --help` (and the check is shown to fail when one is missing on either side),
# renders without warnings, and the units pass systemd-analyze verify with the installed
# binary and man page. README's usage section uses only options qnbd has.
source "$(dirname "$0")/lib/common.bash"
need cmake groff man

SRC=${QNBD_SOURCE_DIR:-$INTEG_DIR/../..}
B=${QNBD_BUILD_DIR:-$(dirname "$QNBD")}
[[ -f $B/cmake_install.cmake ]] || fail "no cmake_install.cmake in the build directory $B"
UNITS=(qnbd@.service qnbd@.socket qnbd-attach@.service)

# cache VAR: a value from the build's CMakeCache.txt.
cache() { sed -n "s/^$1:[A-Z]*=//p" "$B/CMakeCache.txt"; }
# in_tree ROOT PREFIX DIR: where DIR (relative to PREFIX, or absolute) is under ROOT.
in_tree() { [[ $3 == /* ]] && echo "$1$3" || echo "$1$2/$3"; }

# install PREFIX ROOT: DESTDIR=ROOT cmake --install --prefix PREFIX, then every file checked.
install_and_check() {
    local prefix=$1 root=$2 unitdir sysusersdir u
    DESTDIR=$root cmake --install "$B" --prefix "$prefix" >"$T/install.log" 2>&1 ||
        { cat "$T/install.log" >&2; fail "cmake --install --prefix $prefix failed"; }
    unitdir=$(in_tree "$root" "$prefix" "$(cache QNBD_SYSTEMD_UNIT_DIR)")
    sysusersdir=$(in_tree "$root" "$prefix" "$(cache QNBD_SYSUSERS_DIR)")
    [[ -x $root$prefix/bin/qnbd ]] || fail "$prefix/bin/qnbd not installed"
    [[ $("$root$prefix/bin/qnbd" --version) == "$("$QNBD" --version)" ]] ||
        fail "the installed qnbd is not the built one"
    for u in "${UNITS[@]}"; do
        [[ -f $unitdir/$u ]] || fail "unit $u not installed in ${unitdir#"$root"}"
    done
    grep -q "^ExecStart=$prefix/bin/qnbd -x " "$unitdir/qnbd@.service" ||
        fail "qnbd@.service does not start $prefix/bin/qnbd: $(grep ^ExecStart "$unitdir/qnbd@.service")"
    grep -q "^ExecStart=$prefix/bin/qnbd -c /dev/%i --foreground " "$unitdir/qnbd-attach@.service" ||
        fail "qnbd-attach@.service: $(grep ^ExecStart "$unitdir/qnbd-attach@.service")"
    grep -q "^ExecStop=-$prefix/bin/qnbd -d /dev/%i" "$unitdir/qnbd-attach@.service" ||
        fail "qnbd-attach@.service: $(grep ^ExecStop "$unitdir/qnbd-attach@.service")"
    grep -rq /usr/bin/qnbd "$unitdir" && [[ $prefix != /usr ]] && fail "a unit still names /usr/bin/qnbd"
    [[ -f $sysusersdir/qnbd.conf ]] || fail "sysusers.d/qnbd.conf not installed in ${sysusersdir#"$root"}"
    grep -q "^u qnbd " "$sysusersdir/qnbd.conf" || fail "sysusers.d/qnbd.conf creates no qnbd user"
    cmp -s "$SRC/docs/qnbd.8" "$root$prefix/share/man/man8/qnbd.8" || fail "man page not installed"
    cmp -s "$SRC/systemd/example.conf" "$root$prefix/share/doc/qnbd/example.conf" ||
        fail "example.conf not installed in $prefix/share/doc/qnbd"
    say "ok: --prefix $prefix: bin/qnbd, ${unitdir#"$root"}/{${UNITS[*]}}, ${sysusersdir#"$root"}/qnbd.conf, share/man/man8/qnbd.8, share/doc/qnbd/example.conf"
}
R=$T/root
install_and_check /usr "$R"
install_and_check /opt/qnbd "$T/opt"
UNITDIR=$(in_tree "$R" /usr "$(cache QNBD_SYSTEMD_UNIT_DIR)")

# The man page against --help, both ways.
MAN=$R/usr/share/man/man8/qnbd.8
"$QNBD" --help >"$T/help.txt" || fail "qnbd --help"
"$QNBD" create --help >"$T/create-help.txt" || fail "qnbd create --help"
compare() { "$PYTHON" "$PY_DIR/man_options.py" "$@"; }
compare "$T/help.txt" "$MAN" OPTIONS || fail "the man page's OPTIONS differ from qnbd --help (above)"
compare "$T/create-help.txt" "$MAN" "CREATE OPTIONS" ||
    fail "the man page's CREATE OPTIONS differ from qnbd create --help (above)"
# The comparison itself: an option dropped from the man page, or one added to --help, fails.
awk '/^\.TP$/ { tp = NR } tp && NR == tp + 1 && /\\-\\-fork/ { tp = 0; skip = 1; next }
     skip && /^\./ { skip = 0 } !skip' "$MAN" >"$T/no-fork.8"
out=$(compare "$T/help.txt" "$T/no-fork.8" OPTIONS) && fail "a man page without --fork passed"
grep -q "not documented.*--fork" <<<"$out" || fail "the missing --fork is not named: $out"
{ cat "$T/help.txt"; echo "  -Z,--frobnicate            not an option"; } >"$T/help-extra.txt"
out=$(compare "$T/help-extra.txt" "$MAN" OPTIONS) && fail "an undocumented option passed"
grep -q "not documented.*-Z,--frobnicate" <<<"$out" || fail "the extra option is not named: $out"
say "ok: the man page documents every option of --help and create --help, and no other"

# Rendering: no warnings from groff (all of them enabled) nor from man.
warnings=$(groff -man -Tutf8 -ww -z "$MAN" 2>&1)
[[ -z $warnings ]] || fail "groff warns about the man page: $warnings"
warnings=$(MANWIDTH=80 man --warnings -l "$MAN" 2>&1 >"$T/man.txt")
[[ -z $warnings ]] || fail "man -l warns: $warnings"
for s in NAME SYNOPSIS DESCRIPTION OPTIONS "CREATE OPTIONS" SYSTEMD EXAMPLES FILES "EXIT STATUS" "SEE ALSO"; do
    grep -q "^$s\$" "$T/man.txt" || fail "the rendered man page has no $s section"
done
tr -s " " <"$T/man.txt" | grep -q "qemu-nbd(8), nbd-client(8), nbdinfo(1)" || fail "SEE ALSO lacks qemu-nbd, nbd-client, nbdinfo"
say "ok: man -l and groff -ww render the page without a warning"

# README's usage section: every option its qnbd commands use exists.
usage=$(sed -n '/^## Using qnbd/,/^## /p' "$SRC/README.md")
[[ -n $usage ]] || fail "README.md has no '## Using qnbd' section"
known=$(grep -oE -- '(^|[ ,])--?[A-Za-z0-9][A-Za-z0-9-]*' "$T/help.txt" | tr -d ' ,' | sort -u)
while read -r opt; do
    grep -qxF -- "$opt" <<<"$known" || fail "README's usage section uses $opt, which qnbd --help does not list"
done < <(grep -E '^(sudo )?qnbd ' <<<"$usage" | grep -v '^qnbd create' | grep -oE -- ' --?[A-Za-z][A-Za-z0-9-]*' | tr -d ' ' | sort -u)
say "ok: README's usage commands use only options of qnbd --help"

# systemd-analyze verify, on copies of the installed units that name the installed binary
# (verify checks that ExecStart= is executable) and with the installed man page on MANPATH
# (verify runs man for Documentation=man:qnbd(8)). Any message at all fails.
if ! command -v systemd-analyze >/dev/null; then
    say "SKIPPED part: systemd-analyze is not installed, the units were not verified"
else
    mkdir "$T/units"
    for u in "${UNITS[@]}"; do
        sed "s|/usr/bin/qnbd |$R/usr/bin/qnbd |" "$UNITDIR/$u" >"$T/units/$u"
    done
    out=$(cd "$T" && MANPATH=$R/usr/share/man systemd-analyze verify \
        "$T/units/qnbd@disk1.socket" "$T/units/qnbd@disk1.service" "$T/units/qnbd-attach@nbd0.service" 2>&1)
    rc=$?
    ((rc == 0)) && [[ -z $out ]] || fail "systemd-analyze verify (exit $rc): $out"
    # The exposure scores, for the record (systemd-analyze security --offline needs 250+).
    for u in qnbd@disk1.service qnbd-attach@nbd0.service; do
        score=$(cd "$T" && systemd-analyze security --offline=yes --no-pager "$T/units/$u" 2>&1 |
            sed -n 's/^.* Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
        say "systemd-analyze security --offline=yes $u: exposure ${score:-not reported}"
    done
    # And the check is real: a unit naming a missing binary fails it.
    sed -i "s|$R/usr/bin/qnbd |$T/missing/qnbd |" "$T/units/qnbd@.service"
    (cd "$T" && MANPATH=$R/usr/share/man systemd-analyze verify "$T/units/qnbd@disk1.service" >/dev/null 2>&1) &&
        fail "systemd-analyze verify passed a unit whose binary does not exist"
    say "ok: systemd-analyze verify qnbd@disk1.socket qnbd@disk1.service qnbd-attach@nbd0.service"
fi
finish
