"""Handshake: fixed newstyle with/without structured replies, old-style NBD_OPT_EXPORT_NAME,
NBD_OPT_LIST / INFO / GO (also with a wrong name), LIST/SET_META_CONTEXT.

usage: handshake.py URI_BASE EXPORT DESCRIPTION SIZE ALLOCATION_DEPTH(0|1)
URI_BASE has no export name (nbd://host:port/).
"""
import struct

import nbd
from nbdtest import (Raw, check, check_eq, connect, expect_error, fail, log, main, pattern,
                     OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT,
                     OPT_STARTTLS, OPT_STRUCTURED_REPLY, OPT_ABORT, REP_ACK, REP_ERR_INVALID, REP_ERR_POLICY,
                     REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER,
                     CMD_BLOCK_STATUS, CMD_READ, CMD_DISC, REPLY_TYPE_BLOCK_STATUS, REPLY_FLAG_DONE)

BASE = "base:allocation"
DEPTH = "qemu:allocation-depth"


def run(argv):
    base, export, desc, size, depth = argv[0], argv[1], argv[2], int(argv[3]), argv[4] == "1"
    uri = base + export
    offered = [BASE, DEPTH] if depth else [BASE]

    # -- Fixed newstyle, structured replies (libnbd's default): NBD_OPT_GO.
    h = connect(uri, contexts=[BASE, DEPTH])
    check_eq(h.get_protocol(), "newstyle-fixed", "protocol with default flags")
    check(h.get_structured_replies_negotiated(), "structured replies negotiated")
    check_eq(h.get_size(), size, "export size")
    check(h.can_df(), "DF advertised with structured replies")
    check(h.can_meta_context(BASE), "base:allocation selected")
    check_eq(h.can_meta_context(DEPTH), depth, "qemu:allocation-depth selected iff -A")
    check_eq(h.get_block_size(nbd.SIZE_MINIMUM), 1, "minimum block size")
    check_eq(h.get_block_size(nbd.SIZE_PREFERRED), 4096, "preferred block size")
    check_eq(h.get_block_size(nbd.SIZE_MAXIMUM), 32 << 20, "maximum block size")
    data = pattern(65536, 1)
    h.pwrite(data, 0)
    check_eq(h.pread(65536, 0), data, "read back over a structured connection")
    h.shutdown()

    # -- Fixed newstyle without structured replies.
    h = connect(uri, structured=False, contexts=[BASE])
    check(not h.get_structured_replies_negotiated(), "structured replies not negotiated")
    check(not h.can_df(), "DF not advertised without structured replies")
    check(not h.can_meta_context(BASE), "no meta context without structured replies")
    check_eq(h.pread(65536, 0), data, "read over a simple-reply connection")
    h.pwrite(data, 65536)
    check_eq(h.pread(65536, 65536), data, "write then read over a simple-reply connection")
    h.shutdown()

    # -- Old style: newstyle without FIXED_NEWSTYLE, so libnbd must use NBD_OPT_EXPORT_NAME.
    for flags, label in ((0, "no flags"), (nbd.HANDSHAKE_FLAG_NO_ZEROES, "NO_ZEROES only")):
        h = connect(uri, handshake_flags=flags)
        check_eq(h.get_protocol(), "newstyle", f"plain newstyle ({label})")
        check(not h.get_structured_replies_negotiated(), f"no structured replies with EXPORT_NAME ({label})")
        check_eq(h.get_size(), size, f"size via NBD_OPT_EXPORT_NAME ({label})")
        check_eq(h.pread(65536, 0), data, f"read after NBD_OPT_EXPORT_NAME ({label})")
        h.flush()
        h.shutdown()
    # EXPORT_NAME with an unknown name: the server can only close the connection.
    try:
        connect(base + "no-such-export", handshake_flags=0)
        fail("NBD_OPT_EXPORT_NAME with an unknown name succeeded")
    except nbd.Error as e:
        log(f"ok: EXPORT_NAME with an unknown name refused ({e})")

    # -- NBD_OPT_GO with a wrong export name fails cleanly.
    try:
        connect(base + "no-such-export")
        fail("NBD_OPT_GO with an unknown export name succeeded")
    except nbd.Error as e:
        log(f"ok: NBD_OPT_GO with an unknown name refused ({e})")

    # -- Option mode: LIST, INFO, LIST_META_CONTEXT, wrong names, then GO on the same handle.
    h = connect(base, opt_mode=True)
    check(h.aio_is_negotiating(), "option mode")
    listed = []
    n = h.opt_list(lambda name, d: listed.append((name, d)) or 0)
    check_eq(listed, [(export, desc)], "NBD_OPT_LIST names and descriptions")
    check_eq(n, 1, "NBD_OPT_LIST count")
    h.set_export_name("no-such-export")
    expect_error("NBD_OPT_INFO with an unknown name", ("ENOENT", "EINVAL", "ENOTSUP"), h.opt_info)
    check(h.aio_is_negotiating(), "still negotiating after a refused NBD_OPT_INFO")
    h.set_export_name(export)
    h.set_full_info(True)
    h.opt_info()
    check_eq(h.get_size(), size, "NBD_OPT_INFO size")
    check_eq(h.get_export_description(), desc, "NBD_OPT_INFO description")
    check_eq(h.get_canonical_export_name(), export, "NBD_OPT_INFO canonical name")
    check_eq(h.get_block_size(nbd.SIZE_MAXIMUM), 32 << 20, "NBD_OPT_INFO maximum block size")
    check(h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero() and h.can_cache(),
          "flush/fua/trim/zero/cache advertised on a writable export")
    check(not h.is_read_only(), "export writable")
    ctx = []
    h.opt_list_meta_context(lambda name: ctx.append(name) or 0)
    check_eq(sorted(ctx), sorted(offered), "LIST_META_CONTEXT with no query")
    h.add_meta_context("qemu:")
    ctx = []
    h.opt_list_meta_context(lambda name: ctx.append(name) or 0)
    check_eq(ctx, [DEPTH] if depth else [], "LIST_META_CONTEXT 'qemu:'")
    h.clear_meta_contexts()
    h.add_meta_context(BASE)
    h.add_meta_context("nosuch:context")
    h.opt_go()
    check(h.aio_is_ready(), "GO after options on the same handle")
    check(h.can_meta_context(BASE), "SET_META_CONTEXT base:allocation")
    check(not h.can_meta_context("nosuch:context"), "unknown context not selected")
    check(not h.can_meta_context(DEPTH), "qemu:allocation-depth not selected when not asked")
    check_eq(h.pread(512, 0), data[:512], "read after option mode")
    h.shutdown()

    # NBD_OPT_ABORT.
    h = connect(base, opt_mode=True)
    h.opt_abort()
    check(h.aio_is_closed(), "NBD_OPT_ABORT closes")

    # -- Raw handshakes for what libnbd will not do.
    r = Raw(uri)
    gflags = r.greeting()
    check_eq(gflags, 3, "greeting advertises FIXED_NEWSTYLE | NO_ZEROES")
    r.client_flags(1 | 2)
    r.option(0x7777, b"abc")
    check_eq(r.option_replies()[-1][0], REP_ERR_UNSUP, "unknown option -> NBD_REP_ERR_UNSUP")
    r.option(OPT_STARTTLS)
    check_eq(r.option_replies()[-1][0], REP_ERR_POLICY, "STARTTLS -> NBD_REP_ERR_POLICY")
    e = export.encode()
    q = struct.pack(">I", len(e)) + e + struct.pack(">I", 1) + struct.pack(">I", len(BASE)) + BASE.encode()
    r.option(OPT_SET_META_CONTEXT, q)
    check_eq(r.option_replies()[-1][0], REP_ERR_INVALID, "SET_META_CONTEXT before STRUCTURED_REPLY -> INVALID")
    r.option(OPT_LIST, b"x")
    check_eq(r.option_replies()[-1][0], REP_ERR_INVALID, "NBD_OPT_LIST with a payload -> INVALID")
    r.option(OPT_STRUCTURED_REPLY)
    check_eq(r.option_replies()[-1][0], REP_ACK, "STRUCTURED_REPLY")
    bad = b"nope"
    r.option(OPT_LIST_META_CONTEXT, struct.pack(">I", len(bad)) + bad + struct.pack(">I", 0))
    check_eq(r.option_replies()[-1][0], REP_ERR_UNKNOWN, "LIST_META_CONTEXT on an unknown export -> UNKNOWN")
    queries = [BASE, DEPTH]
    qp = b"".join(struct.pack(">I", len(c)) + c.encode() for c in queries)
    r.option(OPT_SET_META_CONTEXT, struct.pack(">I", len(e)) + e + struct.pack(">I", len(queries)) + qp)
    reps = r.option_replies()
    ids = {d[4:].decode(): struct.unpack(">I", d[:4])[0] for t, d in reps if t == REP_META_CONTEXT}
    check_eq(sorted(ids), sorted(offered), "SET_META_CONTEXT replies")
    check(len(set(ids.values())) == len(ids), "context ids distinct")
    # Old-style NBD_OPT_EXPORT_NAME after options in fixed newstyle: contexts and structured
    # replies carry over; with NO_ZEROES the reply is just size and flags.
    r.option(OPT_EXPORT_NAME, e)
    rsize, rflags = struct.unpack(">QH", r.recv_exact(10))
    check_eq(rsize, size, "EXPORT_NAME reply size")
    check(rflags & 1, "EXPORT_NAME reply has NBD_FLAG_HAS_FLAGS")
    r.request(CMD_BLOCK_STATUS, 0, 1 << 20, cookie=7)
    seen = set()
    while True:
        kind, cookie, rtype, flags, payload = r.reply()
        check_eq((kind, cookie, rtype), ("structured", 7, REPLY_TYPE_BLOCK_STATUS), "BLOCK_STATUS chunk")
        seen.add(struct.unpack(">I", payload[:4])[0])
        if flags & REPLY_FLAG_DONE:
            break
    check_eq(seen, set(ids.values()), "one BLOCK_STATUS chunk per selected context after EXPORT_NAME")
    r.request(CMD_DISC, 0, 0)
    check(r.closed_by_peer(5), "NBD_CMD_DISC closes the connection")
    r.close()

    # EXPORT_NAME without NO_ZEROES: 124 zero bytes follow.
    r = Raw(uri)
    r.greeting()
    r.client_flags(1)
    r.option(OPT_EXPORT_NAME, e)
    rest = r.recv_exact(10 + 124)
    check_eq(rest[10:], bytes(124), "124 zero bytes after EXPORT_NAME without NO_ZEROES")
    r.request(CMD_READ, 0, 512, cookie=9)
    kind, cookie, err, _, payload = r.reply(512)
    check_eq((kind, cookie, err, payload), ("simple", 9, 0, data[:512]), "simple READ reply after EXPORT_NAME")
    r.close()

    # Option payload limits and malformed options: answered, the handshake goes on.
    r = Raw(uri)
    r.greeting()
    r.client_flags(3)
    r.option(OPT_STRUCTURED_REPLY)
    r.option_replies()
    big = struct.pack(">I", len(e)) + e + struct.pack(">I", 1) + struct.pack(">I", 300000) + b"q" * 300000
    r.option(OPT_LIST_META_CONTEXT, big)
    check_eq(r.option_replies()[-1][0], 2**31 + 9, "LIST_META_CONTEXT with a 300 KB payload -> NBD_REP_ERR_TOO_BIG")
    r.option(0x5555, bytes(1 << 20))
    check_eq(r.option_replies()[-1][0], REP_ERR_UNSUP, "unknown option with a 1 MiB payload -> UNSUP")
    r.option(11)
    check_eq(r.option_replies()[-1][0], REP_ERR_UNSUP, "NBD_OPT_EXTENDED_HEADERS -> UNSUP")
    r.option(OPT_GO, struct.pack(">I", 100) + b"abc")
    check_eq(r.option_replies()[-1][0], REP_ERR_INVALID, "NBD_OPT_GO with a name running past the payload -> INVALID")
    r.option(OPT_INFO, struct.pack(">I", len(e)) + e + struct.pack(">HHHH", 3, 0, 1, 2))  # BLOCK_SIZE, EXPORT, NAME, DESCRIPTION
    infos = {}
    for rtype, d in r.option_replies():
        if rtype == REP_INFO:
            infos[struct.unpack(">H", d[:2])[0]] = d[2:]
    check_eq(struct.unpack(">QH", infos[0])[0], size, "NBD_INFO_EXPORT size")
    check_eq(infos.get(1), e, "NBD_INFO_NAME")
    check_eq(infos.get(2), desc.encode(), "NBD_INFO_DESCRIPTION")
    check_eq(struct.unpack(">III", infos[3]), (1, 4096, 32 << 20), "NBD_INFO_BLOCK_SIZE")
    r.option(OPT_LIST)
    reps = r.option_replies()
    check_eq([d[4:4 + struct.unpack(">I", d[:4])[0]] for t, d in reps if t == REP_SERVER], [e],
             "NBD_OPT_LIST still answered after the refused options")
    r.close()
    # NBD_OPT_EXPORT_NAME longer than a string may be: the server hangs up.
    r = Raw(uri)
    r.greeting()
    r.client_flags(3)
    r.option(OPT_EXPORT_NAME, b"n" * 5000)
    check(r.closed_by_peer(5), "NBD_OPT_EXPORT_NAME of 5000 bytes: connection closed")
    r.close()

    # Meta context queries, matched against what qemu-nbd 7.2 answers.
    def lst(queries):
        h = connect(base, opt_mode=True)
        h.set_export_name(export)
        for q in queries:
            h.add_meta_context(q)
        out = []
        h.opt_list_meta_context(lambda n: out.append(n) or 0)
        h.opt_abort()
        return sorted(out)

    def selected(queries):
        h = connect(uri, contexts=queries)
        got = [c for c in (BASE, DEPTH) if h.can_meta_context(c)]
        h.shutdown()
        return got

    both = [BASE, DEPTH] if depth else [BASE]
    for queries, want in (([], both), (["base:"], [BASE]), (["qemu:"], [DEPTH] if depth else []),
                          ([BASE, BASE], [BASE]), (["BASE:ALLOCATION"], []), ([DEPTH], [DEPTH] if depth else []),
                          (["qemu:dirty-bitmap:"], []), (["x"], [])):
        check_eq(lst(queries), want, f"LIST_META_CONTEXT {queries}")
    for queries, want in ((["base:"], []), (["qemu:"], []), ([BASE, BASE], [BASE]),
                          ([DEPTH], [DEPTH] if depth else []), (["x", DEPTH, BASE], both)):
        check_eq(selected(queries), want, f"SET_META_CONTEXT {queries}")

    # Abort in raw form.
    r = Raw(uri)
    r.greeting()
    r.client_flags(3)
    r.option(OPT_ABORT)
    check_eq(r.option_replies()[-1][0], REP_ACK, "NBD_OPT_ABORT acknowledged")
    check(r.closed_by_peer(5), "closed after NBD_OPT_ABORT")
    r.close()


main(run)
