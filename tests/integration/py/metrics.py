"""--metrics: known NBD traffic must show up as exact counter values.

usage: metrics.py traffic URI ADDR     writes, reads, a flush, TRIM, WRITE_ZEROES, CACHE,
                                       BLOCK_STATUS, a WRITE past the end (ENOSPC) and a READ
                                       past the end (EINVAL); checks every counter it touched
       metrics.py readonly URI ADDR    on a -r export: WRITE and TRIM get EPERM, counted as such
       metrics.py expect ADDR NAME VALUE...   the samples NAME (name{labels}) have these values
       metrics.py stall ADDR LOW HIGH  connects, sends half a request line, and checks the server
                                       closes the connection after LOW to HIGH seconds
       metrics.py oversized ADDR       a request head over 8 KiB gets 400
ADDR is a unix socket path, or HOST:PORT.
"""
import socket
import sys
import time

from nbdtest import check, check_eq, connect, expect_error, fail, log, main, pattern


def open_socket(addr, timeout=10):
    if "/" in addr:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(addr)
    else:
        host, _, port = addr.rpartition(":")
        s = socket.create_connection((host, int(port)), timeout=timeout)
    return s


def http(addr, request):
    """Sends `request`, returns (status line, headers dict, body) of the response."""
    s = open_socket(addr)
    s.sendall(request)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if int(headers.get("content-length", -1)) != len(body):
        fail(f"Content-Length {headers.get('content-length')} but {len(body)} body bytes")
    return lines[0], headers, body.decode()


def scrape(addr):
    """The samples of GET /metrics as {'name{labels}': value}."""
    status, headers, body = http(addr, b"GET /metrics HTTP/1.1\r\nHost: qnbd\r\n\r\n")
    if status != "HTTP/1.0 200 OK":
        fail(f"scrape: status {status!r}")
    if headers.get("content-type") != "text/plain; version=0.0.4; charset=utf-8":
        fail(f"scrape: content type {headers.get('content-type')!r}")
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key in out:
            fail(f"scrape: {key} appears twice")
        out[key] = float(value)
    return out


def lbl(command, export=""):
    return f'{{export="{export}",command="{command}"}}'


def expect_samples(m, want):
    for key, value in want.items():
        if key not in m:
            fail(f"metric {key} missing")
        check_eq(m[key], value, key)


def check_histograms(m, commands):
    """Each command's histogram: cumulative buckets, +Inf == _count == requests, a sane _sum."""
    for c in commands:
        buckets = sorted(((float(k.split('le="')[1].rstrip('"}')), v) for k, v in m.items()
                          if k.startswith("qnbd_request_duration_seconds_bucket" + lbl(c)[:-1])),
                         key=lambda b: b[0])
        counts = [v for _, v in buckets]
        if counts != sorted(counts):
            fail(f"{c}: buckets are not cumulative: {buckets}")
        check_eq(buckets[-1][0], float("inf"), f"{c}: last bucket is +Inf")
        n = m["qnbd_request_duration_seconds_count" + lbl(c)]
        check_eq(buckets[-1][1], n, f"{c}: +Inf bucket equals _count")
        check_eq(n, m["qnbd_requests_total" + lbl(c)], f"{c}: histogram count equals requests")
        total = m["qnbd_request_duration_seconds_sum" + lbl(c)]
        if not (n == 0 and total == 0 or 0 < total < 60 * n):
            fail(f"{c}: duration sum {total} for {n} requests")


def errors_of(m):
    return {k: v for k, v in m.items() if k.startswith("qnbd_request_errors_total")}


def traffic(uri, addr):
    h = connect(uri, strict=0, contexts=["base:allocation"])
    check(h.can_trim() and h.can_zero() and h.can_cache() and h.can_flush(),
          "TRIM, WRITE_ZEROES, CACHE and FLUSH advertised")
    size = h.get_size()
    before = scrape(addr)
    check_eq(before["qnbd_connections"], 1, "one NBD client connected")
    check_eq(before["qnbd_requests_total" + lbl("WRITE")], 0, "no WRITE before the traffic")

    sizes = [4096, 8192, 512, 65536, 1 << 20]
    for i, n in enumerate(sizes):
        h.pwrite(pattern(n, i), i * (2 << 20))
    for i in range(3):
        h.pread(4096, i * (2 << 20))
    h.flush()
    h.trim(65536, 8 << 20)
    h.zero(131072, 10 << 20)
    h.cache(4096, 0)
    h.block_status(1 << 20, 0, lambda *a: 0)
    expect_error("WRITE past the end", "ENOSPC", h.pwrite, b"x" * 4096, size)
    expect_error("READ past the end", "EINVAL", h.pread, 8192, size - 4096)

    m = scrape(addr)
    expect_samples(m, {
        "qnbd_requests_total" + lbl("WRITE"): len(sizes) + 1,
        "qnbd_request_bytes_total" + lbl("WRITE"): sum(sizes),
        "qnbd_requests_total" + lbl("READ"): 4,
        "qnbd_request_bytes_total" + lbl("READ"): 3 * 4096,
        "qnbd_requests_total" + lbl("FLUSH"): 1,
        "qnbd_requests_total" + lbl("TRIM"): 1,
        "qnbd_request_bytes_total" + lbl("TRIM"): 65536,
        "qnbd_requests_total" + lbl("WRITE_ZEROES"): 1,
        "qnbd_request_bytes_total" + lbl("WRITE_ZEROES"): 131072,
        "qnbd_requests_total" + lbl("CACHE"): 1,
        "qnbd_request_bytes_total" + lbl("CACHE"): 4096,
        "qnbd_requests_total" + lbl("BLOCK_STATUS"): 1,
        "qnbd_connections": 1,
    })
    check_eq(errors_of(m), {
        'qnbd_request_errors_total{export="",command="WRITE",errno="ENOSPC"}': 1,
        'qnbd_request_errors_total{export="",command="READ",errno="EINVAL"}': 1,
    }, "the errors, and no others")
    check_histograms(m, ["READ", "WRITE", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"])
    for name in ("flush_barriers", "fdatasyncs", "flush_requests", "clusters_allocated",
                 "metadata_writes"):
        v = m[f'qnbd_{name}_total{{export=""}}']
        check(v > 0, f"qnbd_{name}_total is {v} after writes and a flush")
    check(m['qnbd_fdatasyncs_total{export=""}'] >= m['qnbd_flush_barriers_total{export=""}'],
          "at least one fdatasync per barrier")
    # A scrape is not a request: nothing moves between two scrapes.
    again = scrape(addr)
    moving = {k for k in m if k.startswith("qnbd_request") and again[k] != m[k]}
    check_eq(moving, set(), "request metrics unchanged by scraping")
    h.shutdown()


def readonly(uri, addr):
    h = connect(uri, strict=0)
    check(h.is_read_only(), "export is read-only")
    expect_error("WRITE on a read-only export", "EPERM", h.pwrite, b"y" * 4096, 0)
    expect_error("TRIM on a read-only export", "EPERM", h.trim, 4096, 0)
    h.pread(4096, 0)
    m = scrape(addr)
    check_eq(errors_of(m), {
        'qnbd_request_errors_total{export="ro",command="WRITE",errno="EPERM"}': 1,
        'qnbd_request_errors_total{export="ro",command="TRIM",errno="EPERM"}': 1,
    }, "EPERM counted per command")
    expect_samples(m, {
        'qnbd_requests_total{export="ro",command="WRITE"}': 1,
        'qnbd_request_bytes_total{export="ro",command="WRITE"}': 0,
        'qnbd_requests_total{export="ro",command="READ"}': 1,
        'qnbd_request_bytes_total{export="ro",command="READ"}': 4096,
    })
    h.shutdown()


def expect(addr, *pairs):
    m = scrape(addr)
    expect_samples(m, {pairs[i]: float(pairs[i + 1]) for i in range(0, len(pairs), 2)})


def stall(addr, low, high):
    s = open_socket(addr, timeout=float(high) + 10)
    s.sendall(b"GET /met")
    start = time.monotonic()
    got = s.recv(1024)
    took = time.monotonic() - start
    check_eq(got, b"", "the stalled scrape is closed without a response")
    if not float(low) <= took <= float(high):
        fail(f"the stalled scrape was closed after {took:.1f} s, expected {low} to {high} s")
    log(f"ok: stalled scrape closed after {took:.1f} s")


def oversized(addr):
    status, _, _ = http(addr, b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n")
    check_eq(status, "HTTP/1.0 400 Bad Request", "an oversized request head")


def run(argv):
    cmd, *args = argv
    {"traffic": traffic, "readonly": readonly, "expect": expect, "stall": stall,
     "oversized": oversized}[cmd](*args)


main(run)
