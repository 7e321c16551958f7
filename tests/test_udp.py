# SPDX-License-Identifier: GPL-2.0-or-later
"""UDP forwarding: flows, replies, errors, spliced paths, expiry.

Two kinds of tests live here.

Handler tests run ``udp_tap_handler()`` and the socket handlers with real
sockets inside a network namespace created for the test (``NsCtx``): the
test body runs in a child forked into that namespace (``util.ns_call``),
builds a context by hand, and replaces ``tap.tap_send_frames`` with a
recorder, so every frame pasta would write to the guest can be parsed and
checked.  Addresses stand for the two sides: the guest is 10.0.0.2 and
fd00::2, the "world" addresses 192.0.2.1 and 2001:db8::1 are on the
namespace's loopback, where the test's servers listen.

End-to-end tests (marked ``bed``) run our pasta with a command in the
shared test bed (tests/bed.py) and check what programs in the namespace
and in the world see.
"""

import contextlib
import hashlib
import ipaddress
import itertools
import os
import select
import socket
import struct
import subprocess
import sys
import time

import pytest

from pasta import util

GUEST4 = "10.0.0.2"
GW4 = "10.0.0.1"
GUEST6 = "fd00::2"
GW6 = "fd00::1"
WORLD4 = "192.0.2.1"
WORLD6 = "2001:db8::1"
GUEST_MAC = bytes.fromhex("0200000000aa")

_counter = itertools.count()

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="network namespaces need root")


# -- namespaces for handler tests ------------------------------------------

class Netns:
    """A network namespace made for one test, deleted by ``close()``:
    loopback up, with the test's "world" addresses on it and ping sockets
    allowed (unless ``ping=False``)."""

    def __init__(self, ping=True, addrs=True):
        self.name = "udpt%d-%d" % (os.getpid(), next(_counter))
        subprocess.run(["ip", "netns", "add", self.name], check=True,
                       timeout=10)
        try:
            cmds = [["ip", "-n", self.name, "link", "set", "lo", "up"]]
            if addrs:
                cmds += [["ip", "-n", self.name, "addr", "add",
                          WORLD4 + "/32", "dev", "lo"],
                         ["ip", "-n", self.name, "addr", "add",
                          WORLD6 + "/128", "dev", "lo", "nodad"]]
            rng = "0 2147483647" if ping else "1 0"
            cmds.append(["ip", "netns", "exec", self.name, "sysctl", "-q",
                         "-w", "net.ipv4.ping_group_range=" + rng])
            for cmd in cmds:
                subprocess.run(cmd, check=True, timeout=10,
                               capture_output=True)
            self.fd = os.open("/run/netns/" + self.name, os.O_RDONLY)
        except BaseException:
            self.close()
            raise

    def close(self):
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)
            self.fd = None
        subprocess.run(["ip", "netns", "del", self.name], timeout=10,
                       capture_output=True)


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def netns2():
    """A second namespace, standing for pasta's namespace in splice
    tests (only loopback)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    ns = Netns(addrs=False)
    try:
        yield ns
    finally:
        ns.close()


def in_ns(ns, fn, *args):
    """Run ``fn(*args)`` in namespace ``ns`` (a forked child); returns
    its result, re-raising its failure with the child's traceback."""
    def wrapper():
        import traceback
        try:
            return ("ok", fn(*args))
        except BaseException:
            return ("fail", traceback.format_exc())
    kind, value = util.ns_call(ns.fd, wrapper)
    if kind == "fail":
        pytest.fail("in namespace:\n" + value)
    return value


# -- a context and a fake guest, inside the namespace ------------------------

class FakeTap:
    """Records what pasta would write to the guest: ``frames`` holds
    ``(vnet_header, ethernet_frame)`` pairs."""

    def __init__(self, c):
        from pasta import tap
        self.c = c
        self.frames = []
        tap.tap_send_frames = self.send

    def send(self, c, frames):
        for bufs in frames:
            bufs = [bytes(b) for b in bufs]
            if c.tap_vnet_len:
                self.frames.append((bufs[0], b"".join(bufs[1:])))
            else:
                self.frames.append((b"", b"".join(bufs)))
        return len(frames)

    def take(self):
        f, self.frames = self.frames, []
        return f


def make_ctx(netns_fd=-1, vnet=0):
    """A pasta context as conf() would leave it for a guest at 10.0.0.2 /
    fd00::2, with UDP set up and an empty flow table."""
    from pasta import flow, fwd_rule, udp
    from pasta.passt import Ctx, MODE_PASTA

    c = Ctx()
    c.mode = MODE_PASTA
    c.epoll = select.epoll()
    c.ifi4 = 1
    c.ifi6 = 1
    c.ip4.addr = c.ip4.addr_seen = ipaddress.IPv4Address(GUEST4)
    c.ip4.guest_gw = c.ip4.our_tap_addr = ipaddress.IPv4Address(GW4)
    c.ip4.prefix_len = 24
    c.ip6.addr = c.ip6.addr_seen = ipaddress.IPv6Address(GUEST6)
    c.ip6.guest_gw = ipaddress.IPv6Address(GW6)
    c.ip6.our_tap_ll = ipaddress.IPv6Address("fe80::1")
    c.guest_mac = GUEST_MAC
    c.pasta_netns_fd = netns_fd
    c.tap_vnet_len = vnet
    c.fd_tap = 99
    fwd_rule.fwd_rule_init(c)
    flow.flow_init(c)
    udp.udp_init(c)
    return c


def add_rule(c, opt, spec):
    """Add a -u/-U rule and open its listening sockets."""
    from pasta import fwd, fwd_rule
    from pasta.pif import PIF_HOST, PIF_SPLICE
    pif = PIF_SPLICE if opt == "U" else PIF_HOST
    fwd_rule.fwd_rule_parse(opt, False, spec, c.fwd[pif])
    assert fwd.fwd_listen_sync(c, pif, fwd.FwdScan(), fwd.FwdScan()) == 0


def pump(c, seconds=0.3, until=None):
    """Run the event loop's dispatch for a while (or until ``until()``
    is true)."""
    from pasta import flow, icmp, udp
    from pasta.epoll_ctl import EpollType

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd, ev in c.epoll.poll(0.02):
            ref = c.epoll_refs.get(fd)
            if ref is None:
                continue
            now = time.monotonic()
            if ref.type == EpollType.UDP:
                udp.udp_sock_handler(c, ref, ev, now)
            elif ref.type == EpollType.UDP_LISTEN:
                udp.udp_listen_sock_handler(c, ref, ev, now)
            elif ref.type == EpollType.PING:
                icmp.icmp_sock_handler(c, ref, now)
        flow.flow_defer_handler(c, time.monotonic())
        if until is not None and until():
            return True
    return until() if until is not None else None


def udp_dgram(sport, dport, payload, ulen=None):
    """UDP header (checksum 0) and payload, as the guest sends them."""
    if ulen is None:
        ulen = 8 + len(payload)
    return memoryview(struct.pack("!HHHH", sport, dport, ulen, 0) + payload)


def from_guest(c, af, src, dst, dgrams, ttl=64):
    from pasta import udp
    from pasta.pif import PIF_TAP
    return udp.udp_tap_handler(c, PIF_TAP, af,
                               socket.inet_pton(af, src),
                               socket.inet_pton(af, dst), ttl, dgrams,
                               time.monotonic())


def _csum(data):
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def parse_frame(vnet, frame):
    """Check and decode a frame for the guest: returns a dict with
    ``af``, ``src``, ``dst``, ``proto``, ``l4`` (bytes) and, for UDP,
    ``sport``, ``dport``, ``payload``.  Asserts that lengths and
    checksums are right."""
    dst_mac, src_mac, proto = struct.unpack_from("!6s6sH", frame)
    assert dst_mac == GUEST_MAC
    assert len(frame) >= 60
    out = {"src_mac": src_mac}
    if proto == 0x0800:
        ip = frame[14:34]
        assert ip[0] == 0x45
        tot = struct.unpack_from("!H", ip, 2)[0]
        assert _csum(ip) == 0xffff, "bad IPv4 header checksum"
        l4 = frame[34:14 + tot]
        out.update(af=socket.AF_INET, proto=ip[9],
                   src=socket.inet_ntop(socket.AF_INET, ip[12:16]),
                   dst=socket.inet_ntop(socket.AF_INET, ip[16:20]))
        pseudo = ip[12:20] + struct.pack("!BBH", 0, ip[9], len(l4))
    else:
        assert proto == 0x86dd
        ip = frame[14:54]
        plen = struct.unpack_from("!H", ip, 4)[0]
        l4 = frame[54:54 + plen]
        assert len(l4) == plen
        out.update(af=socket.AF_INET6, proto=ip[6],
                   src=socket.inet_ntop(socket.AF_INET6, ip[8:24]),
                   dst=socket.inet_ntop(socket.AF_INET6, ip[24:40]))
        pseudo = ip[8:40] + struct.pack("!IxxxB", plen, ip[6])
    out["l4"] = l4
    if out["proto"] == 17:
        sport, dport, ulen, check = struct.unpack_from("!HHHH", l4)
        assert ulen == len(l4)
        out.update(sport=sport, dport=dport, payload=l4[8:])
        partial = vnet and vnet[0] & 1
        if partial:
            # Checksum left to the kernel: the field holds the
            # pseudo-header sum, and the vnet header says where it is
            cs, co = struct.unpack_from("<HH", vnet, 6)
            assert (cs, co) == (54, 6)
            assert check == _fold(_csum(pseudo))
        elif check or out["af"] == socket.AF_INET6:
            assert _csum(pseudo + l4) == 0xffff, "bad UDP checksum"
    elif out["proto"] == 1:
        assert _csum(l4) == 0xffff, "bad ICMP checksum"
    elif out["proto"] == 58:
        assert _csum(pseudo + l4) == 0xffff, "bad ICMPv6 checksum"
    return out


def _fold(s):
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


@contextlib.contextmanager
def server(family, addr, port):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(2)
    try:
        yield s
    finally:
        s.close()


def echo_all(srv, n):
    """Receive ``n`` datagrams on ``srv`` and send each back; returns
    ``[(payload, peer)]``."""
    got = []
    for _ in range(n):
        data, peer = srv.recvfrom(70000)
        got.append((data, peer))
        srv.sendto(data, peer)
    return got


# -- frames for the guest (pure) -------------------------------------------

def _frame_for_guest(toside_addrs, payload, vnet=0):
    from pasta import udp
    from pasta.flow import FlowSide
    from pasta.inany import inany_from_ip
    from pasta.passt import Ctx
    c = Ctx()
    c.guest_mac = GUEST_MAC
    c.tap_vnet_len = vnet
    oaddr, eaddr = toside_addrs
    side = FlowSide(inany_from_ip(oaddr), inany_from_ip(eaddr), 5000, 40000)
    udp.udp_payload[0][:len(payload)] = payload
    frames = []
    udp.udp_tap_prepare(0, len(payload),
                        udp.udp_tap_template(c, c.our_tap_mac, side), frames)
    (bufs,) = frames
    bufs = [bytes(b) for b in bufs]
    if vnet:
        return parse_frame(bufs[0], b"".join(bufs[1:])), bufs[0]
    return parse_frame(b"", b"".join(bufs)), b""


@pytest.mark.parametrize("real", [False, True])
def test_ipv4_udp_checksum_follows_checksum_switch(monkeypatch, real):
    from pasta import checksum
    monkeypatch.setattr(checksum, "UDP4_REAL_CHECKSUMS", real)
    f, _ = _frame_for_guest((WORLD4, GUEST4), b"some data")
    assert (f["src"], f["sport"], f["dst"], f["dport"], f["payload"]) == \
        (WORLD4, 5000, GUEST4, 40000, b"some data")
    assert (struct.unpack_from("!H", f["l4"], 6)[0] != 0) == real


@pytest.mark.parametrize("size", [0, 1, 17, 1400, 65507])
def test_ipv6_frame_checksum_computed_or_left_to_kernel(size):
    data = os.urandom(size)
    f, _ = _frame_for_guest((WORLD6, GUEST6), data)
    assert f["payload"] == data                 # checksum verified inside
    f, vnet = _frame_for_guest((WORLD6, GUEST6), data, vnet=12)
    assert f["payload"] == data and vnet[0] == 1   # NEEDS_CSUM


# -- handler tests ----------------------------------------------------------

def _tap_to_host_and_back(af, vnet):
    c = make_ctx(vnet=vnet)
    tap = FakeTap(c)
    guest, world = (GUEST4, WORLD4) if af == socket.AF_INET else \
        (GUEST6, WORLD6)
    payloads = [b"", b"hello", os.urandom(1400)]
    with server(af, world, 5000) as srv:
        from_guest(c, af, guest, world,
                   [udp_dgram(40000, 5000, p) for p in payloads])
        got = echo_all(srv, len(payloads))
        pump(c, 2, lambda: len(tap.frames) >= len(payloads))
    frames = [parse_frame(v, f) for v, f in tap.take()]
    return ([(d, p[1]) for d, p in got],
            [(f["src"], f["sport"], f["dst"], f["dport"], f["payload"])
             for f in frames], payloads)


@needs_root
@pytest.mark.parametrize("af,vnet", [(socket.AF_INET, 0),
                                     (socket.AF_INET, 12),
                                     (socket.AF_INET6, 0),
                                     (socket.AF_INET6, 12)])
def test_datagrams_from_guest_reach_server_and_replies_come_back(
        netns, af, vnet):
    got, frames, payloads = in_ns(netns, _tap_to_host_and_back, af, vnet)
    guest, world = (GUEST4, WORLD4) if af == socket.AF_INET else \
        (GUEST6, WORLD6)
    # The server sees the guest's source port, datagrams intact, in order
    assert [d for d, _ in got] == payloads
    assert {port for _, port in got} == {40000}
    # The guest gets the replies from the address and port it sent to
    assert frames == [(world, 5000, guest, 40000, p) for p in payloads]


def _bad_lengths():
    c = make_ctx()
    FakeTap(c)
    from pasta import udp
    with server(socket.AF_INET, WORLD4, 5000) as srv:
        before = dict(udp.udp_dropped)
        from_guest(c, socket.AF_INET, GUEST4, WORLD4, [
            udp_dgram(40000, 5000, b"too long", ulen=100),
            udp_dgram(40000, 5000, b"too short", ulen=7),
            udp_dgram(40000, 5000, b"trailing bytes", ulen=8 + 8),
            memoryview(b"\x9c\x40\x13"),
            udp_dgram(40000, 5000, b"fine"),
        ])
        srv.settimeout(0.5)
        got = []
        with contextlib.suppress(socket.timeout):
            while True:
                got.append(srv.recv(100))
        dropped = {k: udp.udp_dropped.get(k, 0) - before.get(k, 0)
                   for k in udp.udp_dropped}
    return got, dropped


@needs_root
def test_datagrams_with_bad_udp_length_are_dropped(netns):
    got, dropped = in_ns(netns, _bad_lengths)
    # A length beyond the data or below the header drops the datagram; a
    # length shorter than the data cuts it where the header says
    assert got == [b"trailing", b"fine"]
    assert dropped["bad UDP length"] == 2
    assert dropped["short header"] == 1


def _port_unreachable(af):
    c = make_ctx()
    tap = FakeTap(c)
    guest, world = (GUEST4, WORLD4) if af == socket.AF_INET else \
        (GUEST6, WORLD6)
    from_guest(c, af, guest, world, [udp_dgram(40001, 5999, b"anyone?")])
    pump(c, 2, lambda: tap.frames)
    return [parse_frame(v, f) for v, f in tap.take()]


@needs_root
def test_port_unreachable_becomes_icmp_error_for_guest(netns):
    (f,) = in_ns(netns, _port_unreachable, socket.AF_INET)
    assert (f["src"], f["dst"], f["proto"]) == (WORLD4, GUEST4, 1)
    l4 = f["l4"]
    assert (l4[0], l4[1]) == (3, 3)             # port unreachable
    inner = l4[8:28]
    assert socket.inet_ntoa(inner[12:16]) == GUEST4
    assert socket.inet_ntoa(inner[16:20]) == WORLD4
    assert struct.unpack("!HH", l4[28:32]) == (40001, 5999)
    assert l4[36:] == b"anyone?"


@needs_root
def test_port_unreachable_becomes_icmpv6_error_for_guest(netns):
    (f,) = in_ns(netns, _port_unreachable, socket.AF_INET6)
    assert (f["src"], f["dst"], f["proto"]) == (WORLD6, GUEST6, 58)
    l4 = f["l4"]
    assert (l4[0], l4[1]) == (1, 4)             # port unreachable
    inner = l4[8:48]
    assert socket.inet_ntop(socket.AF_INET6, inner[8:24]) == GUEST6
    assert socket.inet_ntop(socket.AF_INET6, inner[24:40]) == WORLD6
    assert struct.unpack("!HH", l4[48:52]) == (40001, 5999)
    assert l4[56:] == b"anyone?"


def _expiry():
    from pasta import flow
    c = make_ctx()
    FakeTap(c)
    c.udp.timeout = 5
    c.udp.stream_timeout = 50
    with server(socket.AF_INET, WORLD4, 5000):
        from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                   [udp_dgram(40000, 5000, b"x")])
        assert flow.flow_count() == 1
        now = time.monotonic()
        fds = len(os.listdir("/proc/self/fd"))
        flow.flow_defer_handler(c, now + 4)
        alive_at_4 = flow.flow_count()
        flow.flow_defer_handler(c, now + 6)
        gone_at_6 = flow.flow_count()
        fds_after = len(os.listdir("/proc/self/fd"))
    return alive_at_4, gone_at_6, fds - fds_after


@needs_root
def test_unanswered_flow_expires_after_timeout_and_closes_socket(netns):
    alive, gone, closed = in_ns(netns, _expiry)
    assert (alive, gone, closed) == (1, 0, 1)


def _stream_expiry():
    from pasta import flow
    c = make_ctx()
    tap = FakeTap(c)
    c.udp.timeout = 5
    c.udp.stream_timeout = 50
    with server(socket.AF_INET, WORLD4, 5000) as srv:
        # Activity is counted per batch of datagrams: two batches
        for p in (b"a", b"b"):
            from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                       [udp_dgram(40000, 5000, p)])
        echo_all(srv, 2)
        pump(c, 2, lambda: len(tap.frames) >= 2)
        now = time.monotonic()
        flow.flow_defer_handler(c, now + 20)
        alive_at_20 = flow.flow_count()
        flow.flow_defer_handler(c, now + 60)
        return alive_at_20, flow.flow_count()


@needs_root
def test_two_way_flow_uses_stream_timeout(netns):
    assert in_ns(netns, _stream_expiry) == (1, 0)


def _inbound_tap(af):
    c = make_ctx()
    tap = FakeTap(c)
    add_rule(c, "u", "6000")
    world = WORLD4 if af == socket.AF_INET else WORLD6
    guest = GUEST4 if af == socket.AF_INET else GUEST6
    cl = socket.socket(af, socket.SOCK_DGRAM)
    cl.bind((world, 0))
    cl.settimeout(2)
    cport = cl.getsockname()[1]
    big = os.urandom(65000)
    cl.sendto(b"ping", (world, 6000))
    cl.sendto(big, (world, 6000))
    pump(c, 2, lambda: len(tap.frames) >= 2)
    frames = [parse_frame(v, f) for v, f in tap.take()]
    # The guest answers from the port it was sent to
    from_guest(c, af, guest, world, [udp_dgram(6000, cport, b"pong"),
                                     udp_dgram(6000, cport, big[::-1])])
    replies = [cl.recvfrom(70000) for _ in range(2)]
    cl.close()
    return ([(f["src"], f["sport"], f["dst"], f["dport"],
              hashlib.sha256(f["payload"]).hexdigest()) for f in frames],
            [(d == b"pong" or d == big[::-1], p[:2]) for d, p in replies],
            cport, hashlib.sha256(big).hexdigest())


@needs_root
@pytest.mark.parametrize("af", [socket.AF_INET, socket.AF_INET6])
def test_inbound_u_reaches_guest_and_guest_replies_reach_client(netns, af):
    frames, replies, cport, bighash = in_ns(netns, _inbound_tap, af)
    world = WORLD4 if af == socket.AF_INET else WORLD6
    guest = GUEST4 if af == socket.AF_INET else GUEST6
    assert frames == [
        (world, cport, guest, 6000, hashlib.sha256(b"ping").hexdigest()),
        (world, cport, guest, 6000, bighash)]
    # Replies come from the address and port the client sent to
    assert replies == [(True, (world, 6000)), (True, (world, 6000))]


def _splice_out(ns_fd):
    """-U: a client in the namespace sends to its loopback, a server on
    the host's loopback answers."""
    c = make_ctx(netns_fd=ns_fd)
    FakeTap(c)
    add_rule(c, "U", "7000")
    results = []
    for af, lo in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with server(af, lo, 7000) as srv:
            cl = util.ns_socket(c, af, socket.SOCK_DGRAM, bind=(lo, 0))
            cl.settimeout(2)
            cport = cl.getsockname()[1]
            data = os.urandom(30000)
            cl.sendto(data, (lo, 7000))
            cl.sendto(b"", (lo, 7000))
            pump(c, 2, lambda: _readable(srv))
            d1, peer = srv.recvfrom(70000)
            pump(c, 1, lambda: _readable(srv))
            d2, _ = srv.recvfrom(70000)
            srv.sendto(data[::-1], peer)
            pump(c, 2, lambda: _readable(cl))
            reply, rpeer = cl.recvfrom(70000)
            results.append((d1 == data, d2, peer[1] == cport,
                            reply == data[::-1], rpeer[:2]))
            cl.close()
    c.ns_sock.close()
    return results


def _readable(s):
    return bool(select.select([s], [], [], 0)[0])


@needs_root
def test_spliced_U_loopback_datagrams_go_both_ways(netns, netns2):
    res = in_ns(netns, _splice_out, netns2.fd)
    assert res == [(True, b"", True, True, ("127.0.0.1", 7000)),
                   (True, b"", True, True, ("::1", 7000))]


def _splice_in(ns_fd):
    """-u with a loopback source on the host: spliced to the namespace's
    loopback (--host-lo-to-ns-lo)."""
    c = make_ctx(netns_fd=ns_fd)
    c.host_lo_to_ns_lo = True
    tap = FakeTap(c)
    add_rule(c, "u", "6001")
    srv = util.ns_socket(c, socket.AF_INET, socket.SOCK_DGRAM,
                         bind=("127.0.0.1", 6001))
    srv.settimeout(2)
    cl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cl.bind(("127.0.0.1", 0))
    cl.settimeout(2)
    cl.sendto(b"in", ("127.0.0.1", 6001))
    pump(c, 2, lambda: _readable(srv))
    data, peer = srv.recvfrom(100)
    srv.sendto(b"out", peer)
    pump(c, 2, lambda: _readable(cl))
    reply, rpeer = cl.recvfrom(100)
    c.ns_sock.close()
    return data, reply, rpeer, len(tap.frames)


@needs_root
def test_spliced_u_from_host_loopback_reaches_namespace_loopback(
        netns, netns2):
    data, reply, rpeer, frames = in_ns(netns, _splice_in, netns2.fd)
    assert (data, reply, rpeer, frames) == (b"in", b"out",
                                            ("127.0.0.1", 6001), 0)


def _big_from_guest():
    c = make_ctx()
    FakeTap(c)
    data = os.urandom(65000)
    with server(socket.AF_INET, WORLD4, 5000) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                   [udp_dgram(40000, 5000, data)])
        got = srv.recv(70000)
    return got == data, len(got)


@needs_root
def test_65000_byte_datagram_from_guest_arrives_whole(netns):
    assert in_ns(netns, _big_from_guest) == (True, 65000)


def _flood():
    """Many flows and garbage: handlers never raise, and flows beyond the
    descriptors available are refused cleanly."""
    import resource
    from pasta import flow
    c = make_ctx()
    FakeTap(c)
    pump(c, 0.05)                   # everything imported before the limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))
    errors = 0
    for i in range(2000):
        try:
            from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                       [udp_dgram(20000 + i, 9000 + i % 50, b"x" * (i % 9)),
                        memoryview(os.urandom(i % 12))])
        except Exception:
            errors += 1
    n = flow.flow_count()
    pump(c, 0.5)
    return errors, n


@needs_root
def test_flood_of_flows_and_garbage_is_survived(netns):
    errors, nflows = in_ns(netns, _flood)
    assert errors == 0
    assert 0 < nflows < 300


def _bug_in_nat():
    from pasta import flow, fwd
    c = make_ctx()
    FakeTap(c)
    real = fwd.fwd_nat_from_tap

    def broken(*args):
        raise RuntimeError("bug")

    fwd.fwd_nat_from_tap = broken
    raised = False
    try:
        from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                   [udp_dgram(40000, 5000, b"x")])
    except RuntimeError:
        raised = True
    fwd.fwd_nat_from_tap = real
    left = flow.flow_new_entry is None, flow.flow_count()
    with server(socket.AF_INET, WORLD4, 5000) as srv:
        from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                   [udp_dgram(40000, 5000, b"after")])
        got = srv.recv(100)
    flow.flow_defer_handler(c, time.monotonic())
    return raised, left, got


@needs_root
def test_bug_while_creating_a_flow_leaves_table_usable(netns):
    assert in_ns(netns, _bug_in_nat) == (True, (True, 0), b"after")


def _fuzz(seed):
    import random
    from pasta import flow, icmp, udp
    from pasta.pif import PIF_TAP
    rnd = random.Random(seed)
    c = make_ctx()
    FakeTap(c)
    addrs4 = [GUEST4, WORLD4, "0.0.0.0", "255.255.255.255", "224.0.0.1",
              "127.0.0.1", GW4]
    addrs6 = [GUEST6, WORLD6, "::", "ff02::1", "::1", "fe80::1", GW6]
    for _ in range(3000):
        af = rnd.choice((socket.AF_INET, socket.AF_INET6))
        pool = addrs4 if af == socket.AF_INET else addrs6
        src = socket.inet_pton(af, rnd.choice(pool))
        dst = socket.inet_pton(af, rnd.choice(pool))
        msgs = [memoryview(bytes(rnd.getrandbits(8)
                                 for _ in range(rnd.choice((0, 3, 8, 9,
                                                            30)))))
                for _ in range(rnd.randint(1, 4))]
        now = time.monotonic()
        udp.udp_tap_handler(c, PIF_TAP, af, src, dst, rnd.randint(0, 255),
                            msgs, now)
        icmp.icmp_tap_handler(c, PIF_TAP, af, src, dst, msgs[0], now)
    pump(c, 0.3)
    return flow.flow_new_entry is None, flow.flow_count() > 0


@needs_root
def test_random_datagrams_and_icmp_from_guest_never_raise(netns):
    assert in_ns(netns, _fuzz, 1) == (True, True)


def _flow_memory():
    from pasta import flow
    c = make_ctx()
    FakeTap(c)

    def rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    from_guest(c, socket.AF_INET, GUEST4, WORLD4,
               [udp_dgram(30000, 9000, b"warm up")])
    before = rss()
    for i in range(1, 3001):
        from_guest(c, socket.AF_INET, GUEST4, WORLD4,
                   [udp_dgram(30000 + i, 9000, b"x")])
    return flow.flow_count(), (rss() - before) / 3000


@needs_root
def test_memory_per_udp_flow_is_small(netns):
    n, kib = in_ns(netns, _flow_memory)
    assert n == 3001
    # Python objects, socket and epoll entry: a few KiB per flow at most
    assert kib < 8, kib


# -- end to end, in the test bed --------------------------------------------

PASTA = ["--config-net", "-f", "--runas", "0:0"]

# A datagram receiver: binds, says it is ready (creates a file), receives
# until it has the expected number of bytes or the deadline passes, and
# writes what it got.  Arguments: address, port, bytes, output, ready file,
# seconds.
RECV_PY = r"""
import socket, sys, time
addr, port, want, out, ready, secs = sys.argv[1:7]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)     # SO_RCVBUFFORCE
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((addr, int(port)))
open(ready, "w").close()
deadline = time.monotonic() + float(secs)
data = bytearray()
sizes = []
while len(data) < int(want):
    left = deadline - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        d = s.recv(70000)
    except socket.timeout:
        break
    sizes.append(len(d))
    data += d
open(out, "wb").write(data)
print("sizes", max(sizes) if sizes else 0, len(sizes))
sys.exit(0 if len(data) >= int(want) else 2)
"""

# A sender of one or more datagrams of given sizes, paced a little.
SEND_PY = r"""
import os, socket, sys, time
addr, port = sys.argv[1:3]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
data = open(sys.argv[3], "rb").read()
off = 0
for size in map(int, sys.argv[4:]):
    s.sendto(data[off:off + size], (addr, int(port)))
    off += size
    time.sleep(0.002)
"""


def _script(bed, name, text):
    path = os.path.join(bed.tmp, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def _wait_file(path, proc=None, timeout=15.0):
    """Wait (bounded) until ``path`` exists, failing early if ``proc``
    (a Popen with pipes) exits first."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            o, e = proc.communicate()
            raise AssertionError("exited with %d: %s %s"
                                 % (proc.returncode, o, e[-3000:]))
        if time.monotonic() > deadline:
            raise AssertionError("%s did not appear" % path)
        time.sleep(0.05)


def _warm(addr):
    """A command resolving the neighbour towards ``addr`` (one ping)."""
    return "ping -c 1 -W 2 %s >/dev/null" % addr


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _receiver(bed, ns, addr, port, nbytes, secs=20):
    """Start RECV_PY in ``ns`` (a bed namespace); returns (popen, out)."""
    recv = _script(bed, "recv.py", RECV_PY)
    out = os.path.join(bed.tmp, "out-%s-%d" % (ns, port))
    ready = out + ".ready"
    p = bed.popen(ns, [sys.executable, recv, addr, str(port), str(nbytes),
                       out, ready, str(secs)], stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    _wait_file(ready, p)
    return p, out


def _recv_cmd(bed, addr, port, nbytes, out, secs=20):
    """RECV_PY as a shell command (for pasta's namespace)."""
    recv = _script(bed, "recv.py", RECV_PY)
    return "%s %s %s %d %d %s %s.ready %d" % (
        sys.executable, recv, addr, port, nbytes, out, out, secs)


@pytest.mark.parametrize("v", [4, 6])
def test_file_sent_as_datagrams_from_namespace_reaches_world(bed, v):
    path, digest = bed.make_blob(100 * 1024)
    addr = bed.WORLD4 if v == 4 else bed.WORLD6
    p, out = _receiver(bed, bed.world, addr, 5000, 100 * 1024)
    spec = "UDP4-SENDTO:%s:5000" % addr if v == 4 else \
        "UDP6-SENDTO:[%s]:5000" % addr
    # The ping resolves the gateway's MAC address first: datagrams queued
    # in the guest's kernel while it resolves may leave out of order
    r = bed.pasta(PASTA, "%s && socat -u -b 1400 FILE:%s %s && sleep 0.5"
                  % (_warm(addr), path, spec), timeout=60)
    assert r.returncode == 0, r.stderr
    p.wait(timeout=30)
    assert (p.returncode, _sha(out)) == (0, digest)


@pytest.mark.parametrize("v", [4, 6])
def test_file_sent_as_datagrams_from_world_reaches_namespace_with_u(bed, v):
    path, digest = bed.make_blob(100 * 1024)
    host = bed.HOST4 if v == 4 else bed.HOST6
    bind = "0.0.0.0" if v == 4 else "::"
    out = os.path.join(bed.tmp, "out-ns")
    pasta = bed.pasta_popen(PASTA + ["-u", "5001"],
                            _recv_cmd(bed, bind, 5001, 100 * 1024, out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_file(out + ".ready", pasta)
    spec = "UDP4-SENDTO:%s:5001" % host if v == 4 else \
        "UDP6-SENDTO:[%s]:5001" % host
    bed.run(bed.world, "%s && socat -u -b 1400 FILE:%s %s"
            % (_warm(host), path, spec), check=True)
    pasta.wait(timeout=30)
    assert (pasta.returncode, _sha(out)) == (0, digest)


@pytest.mark.parametrize("v", [4, 6])
def test_file_over_spliced_U_from_namespace_loopback_to_host(bed, v):
    path, digest = bed.make_blob(100 * 1024)
    lo = "127.0.0.1" if v == 4 else "::1"
    p, out = _receiver(bed, bed.host, lo, 5002, 100 * 1024)
    spec = "UDP4-SENDTO:%s:5002" % lo if v == 4 else \
        "UDP6-SENDTO:[%s]:5002" % lo
    r = bed.pasta(PASTA + ["-U", "5002"],
                  "socat -u -b 1400 FILE:%s %s && sleep 0.5" % (path, spec),
                  timeout=60)
    assert r.returncode == 0, r.stderr
    p.wait(timeout=30)
    assert (p.returncode, _sha(out)) == (0, digest)


@pytest.mark.parametrize("v", [4, 6])
def test_file_over_spliced_u_from_host_loopback_to_namespace(bed, v):
    path, digest = bed.make_blob(100 * 1024)
    lo = "127.0.0.1" if v == 4 else "::1"
    out = os.path.join(bed.tmp, "out-ns")
    pasta = bed.pasta_popen(PASTA + ["-u", "5003", "--host-lo-to-ns-lo"],
                            _recv_cmd(bed, lo, 5003, 100 * 1024, out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_file(out + ".ready", pasta)
    spec = "UDP4-SENDTO:%s:5003" % lo if v == 4 else \
        "UDP6-SENDTO:[%s]:5003" % lo
    bed.run(bed.host, "socat -u -b 1400 FILE:%s %s" % (path, spec),
            check=True)
    pasta.wait(timeout=30)
    assert (pasta.returncode, _sha(out)) == (0, digest)


def test_65000_byte_datagrams_arrive_whole_both_ways(bed):
    path, digest = bed.make_blob(65000)
    send = _script(bed, "send.py", SEND_PY)
    p, out = _receiver(bed, bed.world, bed.WORLD4, 5004, 65000)
    r = bed.pasta(PASTA, "%s; %s %s %s 5004 %s 65000 && sleep 0.5"
                  % (_warm(bed.WORLD4), sys.executable, send, bed.WORLD4,
                     path), timeout=60)
    assert r.returncode == 0, r.stderr
    p.wait(timeout=30)
    assert (p.returncode, _sha(out)) == (0, digest)
    assert "sizes 65000 1" in p.stdout.read()

    # The same over IPv6
    p, out = _receiver(bed, bed.world, bed.WORLD6, 5004, 65000)
    r = bed.pasta(PASTA, "%s; %s %s %s 5004 %s 65000 && sleep 0.5"
                  % (_warm(bed.WORLD6), sys.executable, send, bed.WORLD6,
                     path), timeout=60)
    assert r.returncode == 0, r.stderr
    p.wait(timeout=30)
    assert (p.returncode, _sha(out)) == (0, digest)

    # The other way, with the largest datagram IPv4 can carry
    path, digest = bed.make_blob(65507, "blob2")
    out = os.path.join(bed.tmp, "out-big")
    pasta = bed.pasta_popen(PASTA + ["-u", "5005"],
                            _recv_cmd(bed, "0.0.0.0", 5005, 65507, out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_file(out + ".ready", pasta)
    bed.run(bed.world, [sys.executable, send, bed.HOST4, "5005", path,
                        "65507"], check=True)
    o, e = pasta.communicate(timeout=30)
    assert (pasta.returncode, _sha(out)) == (0, digest), e
    assert "sizes 65507 1" in o


CONNREFUSED_PY = r"""
import socket, sys
addr = sys.argv[1]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((addr, 5999))
s.send(b"is anybody there?")
try:
    s.recv(100)
    print("answer")
except ConnectionRefusedError:
    print("ECONNREFUSED")
except socket.timeout:
    print("timeout")
"""


@pytest.mark.parametrize("v", [4, 6])
def test_datagram_to_closed_world_port_gives_econnrefused(bed, v):
    addr = bed.WORLD4 if v == 4 else bed.WORLD6
    script = _script(bed, "refused.py", CONNREFUSED_PY)
    r = bed.pasta(PASTA, [sys.executable, script, addr], timeout=60)
    assert r.stdout.strip() == "ECONNREFUSED", r.stderr


FLOOD_PY = r"""
import os, socket, struct, sys, time
ifname, world, world6 = sys.argv[1:4]
# Datagrams to many ports, both families (the world answers most with
# port unreachable)
for fam, addr in ((socket.AF_INET, world), (socket.AF_INET6, world6)):
    for i in range(1500):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.sendto(b"x" * (i % 50), (addr, 10000 + i))
        s.close()
# Malformed frames straight onto the tap interface
p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
p.bind((ifname, 0))
dst = open("/sys/class/net/%s/address" % ifname).read()
mac = bytes.fromhex(dst.strip().replace(":", ""))
gw = b"\x9a\x55\x9a\x55\x9a\x55"
src4 = socket.inet_aton("198.51.100.2")
dst4 = socket.inet_aton(world)
src6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::2")
dst6 = socket.inet_pton(socket.AF_INET6, world6)
def ip4(proto, l4, tot=None):
    tot = 20 + len(l4) if tot is None else tot
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot, 0, 0x4000, 64, proto,
                       0, src4, dst4) + l4
def ip6(nh, l4, plen=None):
    plen = len(l4) if plen is None else plen
    return struct.pack("!IHBB16s16s", 0x60000000, plen, nh, 64, src6,
                       dst6) + l4
eth4 = gw + mac + b"\x08\x00"
eth6 = gw + mac + b"\x86\xdd"
bad = []
for i in range(400):
    r = os.urandom(i % 40)
    bad += [
        eth4 + ip4(17, struct.pack("!HHHH", 3000 + i, 53, 9999, 0) + r),
        eth4 + ip4(17, struct.pack("!HHHH", 3000 + i, 53, 3, 0) + r),
        eth4 + ip4(17, struct.pack("!HH", 3000 + i, 53)),
        eth4 + ip4(1, bytes([8, 0, 0, 0]) + r[:3]),
        eth4 + ip4(1, bytes([i % 256, i % 7]) + r),
        eth4 + ip4(17, r, tot=60000),
        eth6 + ip6(17, struct.pack("!HHHH", 3000 + i, 53, 1, 0) + r),
        eth6 + ip6(58, bytes([128, 0]) + r[:5]),
        eth6 + ip6(58, bytes([i % 256, 0, 0, 0]) + r),
        eth6 + ip6(17, r, plen=65000),
        eth6 + ip6(0, bytes([17, 200]) + r),
        eth4 + r, eth6 + r, r,
    ]
for f in bad:
    try:
        p.send(f)
    except OSError:
        pass
print("sent", len(bad))
"""


# Datagrams to the forwarded ports 7000-7099 of the host, each from a
# socket (and port) of its own.
WORLD_FLOOD_PY = r"""
import socket, sys
for addr, fam in ((sys.argv[1], socket.AF_INET), (sys.argv[2],
                                                 socket.AF_INET6)):
    for i in range(2000):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.sendto(b"y" * (i % 30), (addr, 7000 + i % 100))
        s.close()
"""


def _rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _pasta_pid(popen):
    """PID of our pasta process: ``ip netns exec`` execs it, so it is the
    Popen's own."""
    return popen.pid


def test_flood_of_ports_and_malformed_headers_leaves_pasta_working(bed):
    bed.dns_world()
    flood = _script(bed, "flood.py", FLOOD_PY)
    send = _script(bed, "send.py", SEND_PY)
    path, digest = bed.make_blob(1000)
    p, out = _receiver(bed, bed.world, bed.WORLD4, 5006, 1000, secs=120)
    # Flood, twice, then check that UDP, DNS and ping still work
    cmd = ("ifname=$(ip -o link show | awk -F': ' '$2 != \"lo\" "
           "{print $2; exit}'); "
           "for i in 1 2; do %s %s $ifname %s %s || exit 3; done; "
           "sleep 1; %s %s %s 5006 %s 1000 || exit 4; "
           "dig +short +time=2 +tries=2 test.example A || exit 5; "
           "ping -c 1 -W 2 %s >/dev/null || exit 6; sleep 0.5"
           % (sys.executable, flood, bed.WORLD4, bed.WORLD6,
              sys.executable, send, bed.WORLD4, path, bed.WORLD4))
    pasta = bed.pasta_popen(PASTA + ["-u", "7000-7099"], cmd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # Meanwhile the world floods the forwarded ports from many ports
    bed.wait_listen(bed.host, 7099, "udp")
    world = bed.popen(bed.world, [sys.executable, "-c", WORLD_FLOOD_PY,
                                  bed.HOST4, bed.HOST6])
    rss = []
    deadline = time.monotonic() + 120
    while pasta.poll() is None and time.monotonic() < deadline:
        kib = _rss_kib(_pasta_pid(pasta))
        if kib:
            rss.append(kib)
        time.sleep(0.2)
    o, e = pasta.communicate(timeout=10)
    world.wait(timeout=30)
    assert world.returncode == 0
    assert pasta.returncode == 0, (o, e[-3000:])
    assert bed.DNS_ADDR4 in o
    p.wait(timeout=30)
    assert _sha(out) == digest
    # Memory stays bounded: well below 200 MiB during the whole flood
    assert rss and max(rss) < 200 * 1024, max(rss)


@pytest.mark.parametrize("args", [
    ["--no-udp"],
    ["--no-udp", "-u", "none", "-U", "none"]])
def test_no_udp_forwards_no_datagrams(bed, args):
    path, _digest = bed.make_blob(1000)
    send = _script(bed, "send.py", SEND_PY)
    p, out = _receiver(bed, bed.world, bed.WORLD4, 5007, 1000, secs=4)
    r = bed.pasta(PASTA + args, "%s %s %s 5007 %s 1000; sleep 0.5"
                  % (sys.executable, send, bed.WORLD4, path), timeout=60)
    assert r.returncode == 0, r.stderr
    p.wait(timeout=30)
    assert p.returncode == 2
    assert os.path.getsize(out) == 0


def test_datagram_to_gateway_reaches_host_loopback(bed):
    # The gateway stands for the host's loopback (--map-host-loopback)
    p, out = _receiver(bed, bed.host, "127.0.0.1", 5008, 5)
    r = bed.pasta(PASTA, "echo -n hello | socat -u - UDP4-SENDTO:%s:5008; "
                  "sleep 0.5" % bed.GW4, timeout=60)
    assert r.returncode == 0, r.stderr
    p.wait(timeout=30)
    with open(out, "rb") as f:
        assert f.read() == b"hello"
