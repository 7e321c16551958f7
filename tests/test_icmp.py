# SPDX-License-Identifier: GPL-2.0-or-later
"""ICMP and ICMPv6 echo through ping sockets.

Handler tests run ``icmp_tap_handler()`` and ``icmp_sock_handler()``
inside a namespace made for the test (see test_udp.py for the harness):
the guest's echo requests go to addresses on that namespace's loopback,
whose kernel answers them, and the frames pasta would write to the guest
are recorded and parsed.  End-to-end tests run ``ping`` in pasta's
namespace in the shared test bed.
"""

import os
import socket
import struct
import time

import pytest

from test_udp import (GUEST4, GUEST6, WORLD4, WORLD6, FakeTap, Netns,
                      in_ns, make_ctx, needs_root, parse_frame, pump)


def echo_request(af, id_, seq, data=b"abcdefgh"):
    """An echo request as the guest sends it (checksum left at zero: the
    ping socket computes its own)."""
    t = 8 if af == socket.AF_INET else 128
    return memoryview(struct.pack("!BBHHH", t, 0, 0, id_, seq) + data)


def from_guest(c, af, src, dst, msg):
    from pasta import icmp
    from pasta.pif import PIF_TAP
    return icmp.icmp_tap_handler(c, PIF_TAP, af, socket.inet_pton(af, src),
                                 socket.inet_pton(af, dst), msg,
                                 time.monotonic())


def _ping(af, count):
    c = make_ctx()
    tap = FakeTap(c)
    guest, world = (GUEST4, WORLD4) if af == socket.AF_INET else \
        (GUEST6, WORLD6)
    data = os.urandom(56)
    for seq in range(1, count + 1):
        from_guest(c, af, guest, world, echo_request(af, 0x4242, seq, data))
        pump(c, 2, lambda: len(tap.frames) >= seq)
    out = []
    for v, f in tap.take():
        p = parse_frame(v, f)
        t, code, _ck, id_, seq = struct.unpack_from("!BBHHH", p["l4"])
        out.append((p["src"], p["dst"], t, code, id_, seq,
                    p["l4"][8:] == data))
    return out


@needs_root
@pytest.mark.parametrize("af", [socket.AF_INET, socket.AF_INET6])
def test_echo_replies_carry_guest_id_and_sequence(af):
    ns = Netns()
    try:
        replies = in_ns(ns, _ping, af, 3)
    finally:
        ns.close()
    guest, world = (GUEST4, WORLD4) if af == socket.AF_INET else \
        (GUEST6, WORLD6)
    reply = 0 if af == socket.AF_INET else 129
    assert replies == [(world, guest, reply, 0, 0x4242, seq, True)
                       for seq in (1, 2, 3)]


def _ignored():
    from pasta import flow, icmp
    c = make_ctx()
    tap = FakeTap(c)
    before = dict(icmp.icmp_dropped)
    # Not echo requests: a reply, a timestamp request, an ICMPv6 error
    from_guest(c, socket.AF_INET, GUEST4, WORLD4,
               memoryview(struct.pack("!BBHHH", 0, 0, 0, 1, 1)))
    from_guest(c, socket.AF_INET, GUEST4, WORLD4,
               memoryview(struct.pack("!BBHHH", 13, 0, 0, 1, 1) + bytes(12)))
    from_guest(c, socket.AF_INET6, GUEST6, WORLD6,
               memoryview(struct.pack("!BBHI", 1, 4, 0, 0) + bytes(48)))
    # Too short to be an echo request
    for n in range(8):
        from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                   echo_request(socket.AF_INET, 7, 7)[:n])
    pump(c, 0.3)
    short = icmp.icmp_dropped.get("short message", 0) - \
        before.get("short message", 0)
    return flow.flow_count(), len(tap.frames), short


@needs_root
def test_non_echo_and_short_messages_are_ignored():
    ns = Netns()
    try:
        assert in_ns(ns, _ignored) == (0, 0, 8)
    finally:
        ns.close()


def _ids_are_separate_flows():
    from pasta import flow
    c = make_ctx()
    tap = FakeTap(c)
    for id_ in (1, 2, 3):
        from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                   echo_request(socket.AF_INET, id_, 9))
    pump(c, 2, lambda: len(tap.frames) >= 3)
    ids = sorted(struct.unpack_from("!H", parse_frame(v, f)["l4"], 4)[0]
                 for v, f in tap.take())
    return flow.flow_count(), ids


@needs_root
def test_each_identifier_is_its_own_flow():
    ns = Netns()
    try:
        assert in_ns(ns, _ids_are_separate_flows) == (3, [1, 2, 3])
    finally:
        ns.close()


def _timeout():
    from pasta import flow
    c = make_ctx()
    FakeTap(c)
    from_guest(c, socket.AF_INET, GUEST4, WORLD4,
               echo_request(socket.AF_INET, 5, 1))
    now = time.monotonic()
    flow.flow_defer_handler(c, now + 30)
    at_30 = flow.flow_count()
    flow.flow_defer_handler(c, now + 61)
    return at_30, flow.flow_count(), len(c.epoll_refs)


@needs_root
def test_ping_flow_closes_after_60_seconds_without_requests():
    ns = Netns()
    try:
        assert in_ns(ns, _timeout) == (1, 0, 0)
    finally:
        ns.close()


def _no_ping_sockets():
    from pasta import flow
    c = make_ctx()
    tap = FakeTap(c)
    os.setgroups([])
    os.setgid(1000)
    r = from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                   echo_request(socket.AF_INET, 5, 1))
    pump(c, 0.2)
    return r, flow.flow_count(), len(tap.frames)


@needs_root
def test_ping_without_ping_sockets_is_dropped_without_failing():
    ns = Netns(ping=False)
    try:
        assert in_ns(ns, _no_ping_sockets) == (1, 0, 0)
    finally:
        ns.close()


# -- end to end, in the test bed --------------------------------------------

PASTA = ["--config-net", "-f", "--runas", "0:0"]


def _ping_lines(out):
    seqs = sorted(int(w.split("=")[1]) for w in out.split()
                  if w.startswith("icmp_seq="))
    return seqs, " 3 received" in out


@pytest.mark.parametrize("v", [4, 6])
def test_ping_to_world_server_gets_three_replies(bed, v):
    addr = bed.WORLD4 if v == 4 else bed.WORLD6
    r = bed.pasta(PASTA, "ping -%d -c 3 -i 0.2 -W 2 %s" % (v, addr),
                  timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _ping_lines(r.stdout) == ([1, 2, 3], True)


# Echo requests with a chosen identifier from a raw socket in the namespace;
# prints the identifier and sequence number of each reply.
RAW_PING_PY = r"""
import os, socket, struct, sys, time
addr = sys.argv[1]
v6 = ":" in addr
fam = socket.AF_INET6 if v6 else socket.AF_INET
proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
s = socket.socket(fam, socket.SOCK_RAW, proto)
s.settimeout(3)
def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
ident = 0x5a5a
data = os.urandom(32)
for seq in (1, 2, 3):
    t = 128 if v6 else 8
    m = struct.pack("!BBHHH", t, 0, 0, ident, seq) + data
    if not v6:
        m = m[:2] + struct.pack("!H", csum(m)) + m[4:]
    s.sendto(m, (addr, 0))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        r = s.recv(2000)
        if not v6:
            r = r[(r[0] & 15) * 4:]
        if r[0] == (129 if v6 else 0):
            i, q = struct.unpack_from("!HH", r, 4)
            print(i, q, r[8:] == data)
            break
"""


@pytest.mark.parametrize("v", [4, 6])
def test_echo_replies_in_namespace_keep_identifier_and_sequence(bed, v):
    import sys
    addr = bed.WORLD4 if v == 4 else bed.WORLD6
    path = os.path.join(bed.tmp, "rawping.py")
    with open(path, "w") as f:
        f.write(RAW_PING_PY)
    os.chmod(path, 0o644)
    r = bed.pasta(PASTA, [sys.executable, path, addr], timeout=60)
    assert r.stdout.split("\n")[:3] == ["%d %d True" % (0x5a5a, q)
                                        for q in (1, 2, 3)], r.stderr


def test_no_icmp_disables_ping(bed):
    r = bed.pasta(PASTA + ["--no-icmp"],
                  "ping -c 1 -W 1 %s" % bed.WORLD4, timeout=60)
    assert r.returncode != 0
    assert " 0 received" in r.stdout


@pytest.mark.parametrize("v", [4, 6])
def test_ping_to_gateway_is_answered_by_host(bed, v):
    addr = bed.GW4 if v == 4 else bed.GW6
    r = bed.pasta(PASTA, "ping -%d -c 2 -i 0.2 -W 2 %s" % (v, addr),
                  timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 2 received" in r.stdout


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("size", [0, 65000])
def test_ping_with_empty_and_65000_byte_payloads(bed, v, size):
    addr = bed.WORLD4 if v == 4 else bed.WORLD6
    r = bed.pasta(PASTA, "ping -%d -c 2 -i 0.2 -s %d -W 2 %s"
                  % (v, size, addr), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 2 received" in r.stdout
