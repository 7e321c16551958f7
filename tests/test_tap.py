# SPDX-License-Identifier: GPL-2.0-or-later
"""Frames from the guest: parsing, dispatch, and garbage that must be
dropped without stopping anything.  No namespace needed: the protocol
handlers are replaced by recorders."""

import ipaddress
import random
import socket
import struct

import pytest

from pasta import arp, dhcp, dhcpv6, icmp, ndp, tap, tcp, udp
from pasta.passt import Ctx, MODE_PASTA

GUEST_MAC = bytes.fromhex("0211223344aa")
G4 = socket.inet_aton("198.51.100.2")
W4 = socket.inet_aton("203.0.113.10")
G6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::2")
W6 = socket.inet_pton(socket.AF_INET6, "2001:db8:2::10")


@pytest.fixture
def c(monkeypatch):
    ctx = Ctx()
    ctx.mode = MODE_PASTA
    ctx.ifi4 = ctx.ifi6 = 2
    calls = []
    ctx.calls = calls

    def rec(name, ret=0):
        def f(*args):
            calls.append((name, args))
            return ret
        return f

    monkeypatch.setattr(arp, "arp", rec("arp", 1))
    monkeypatch.setattr(dhcp, "dhcp", rec("dhcp", 1))
    monkeypatch.setattr(dhcpv6, "dhcpv6", rec("dhcpv6", 1))
    monkeypatch.setattr(ndp, "ndp", rec("ndp", 0))
    monkeypatch.setattr(icmp, "icmp_tap_handler", rec("icmp"))
    monkeypatch.setattr(tcp, "tcp_tap_handler", rec("tcp"))
    monkeypatch.setattr(udp, "udp_tap_handler", rec("udp"))
    monkeypatch.setattr(tap, "proto_update_l2_buf", lambda c, mac: None)
    tap.tap_dropped.clear()
    return ctx


def eth(proto, payload, src=GUEST_MAC):
    return b"\x9a\x55\x9a\x55\x9a\x55" + src + struct.pack("!H", proto) + \
        payload


def ip4(proto, l4, src=G4, dst=W4, frag=0x4000, ihl=5, tot=None):
    tot = 20 + len(l4) if tot is None else tot
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, 0, frag, 64,
                       proto, 0, src, dst) + l4


def ip6(nh, l4, src=G6, dst=W6, plen=None):
    plen = len(l4) if plen is None else plen
    return struct.pack("!IHBB16s16s", 0x60000000, plen, nh, 64, src,
                       dst) + l4


def tcp_seg(sport=40000, dport=80, payload=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18,
                       65535, 0, 0) + payload


def udp_dgram(sport=40000, dport=53, payload=b"x"):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + \
        payload


def feed(c, *frames):
    tap.tap_handler(c, [memoryview(f) for f in frames], 0.0)


def names(c):
    return [n for n, _ in c.calls]


def test_tcp_segments_of_one_connection_go_in_one_call(c):
    segs = [eth(0x0800, ip4(6, tcp_seg(payload=b"a" * i))) for i in
            (1, 2, 3)]
    feed(c, *segs)
    assert names(c) == ["tcp"]
    _, args = c.calls[0]
    assert args[2] == socket.AF_INET and args[3] == G4 and args[4] == W4
    assert [len(s) for s in args[5]] == [21, 22, 23]


def test_segments_of_two_connections_are_kept_apart(c):
    feed(c, eth(0x0800, ip4(6, tcp_seg(sport=1))),
         eth(0x0800, ip4(6, tcp_seg(sport=2))),
         eth(0x0800, ip4(6, tcp_seg(sport=1))))
    assert names(c) == ["tcp", "tcp"]
    assert len(c.calls[0][1][5]) == 2


def test_guest_mac_and_address_are_learnt(c):
    feed(c, eth(0x0800, ip4(17, udp_dgram())))
    assert c.guest_mac == GUEST_MAC
    assert c.ip4.addr_seen == ipaddress.IPv4Address("198.51.100.2")


def test_dhcp_and_arp_are_answered_not_forwarded(c):
    feed(c, eth(0x0806, bytes(28)),
         eth(0x0800, ip4(17, udp_dgram(68, 67))))
    assert names(c) == ["arp", "dhcp"]


def test_ipv6_udp_and_dhcpv6_dispatch(c):
    feed(c, eth(0x86dd, ip6(17, udp_dgram(546, 547))),
         eth(0x86dd, ip6(17, udp_dgram(5000, 53))))
    assert names(c) == ["dhcpv6", "udp"]
    assert c.ip6.addr_seen == ipaddress.IPv6Address("2001:db8:1::2")


def test_ipv6_extension_headers_are_skipped(c):
    hbh = bytes([6, 0]) + bytes(6)          # hop-by-hop, next: TCP
    feed(c, eth(0x86dd, ip6(0, hbh + tcp_seg())))
    assert names(c) == ["tcp"]
    assert len(c.calls[0][1][5][0]) == 20


@pytest.mark.parametrize("frame, reason", [
    (b"\x00" * 10, "short Ethernet"),
    (eth(0x0800, b"\x45\x00"), "short IPv4"),
    (eth(0x0800, ip4(6, tcp_seg(), tot=200)), "bad IPv4 header"),
    (eth(0x0800, ip4(6, tcp_seg(), ihl=15)), "bad IPv4 header"),
    (eth(0x0800, ip4(6, tcp_seg(), ihl=2)), "bad IPv4 header"),
    (eth(0x0800, ip4(6, tcp_seg(), frag=0x2000)), "IPv4 fragment"),
    (eth(0x0800, ip4(6, tcp_seg(), src=b"\x7f\0\0\1")), "loopback address"),
    (eth(0x0800, ip4(6, b"\0" * 8)), "short TCP"),
    (eth(0x0800, ip4(17, b"\0" * 4)), "short UDP"),
    (eth(0x0800, ip4(47, b"\0" * 8)), "unsupported IPv4 protocol"),
    (eth(0x86dd, b"\x60" + bytes(20)), "short IPv6"),
    (eth(0x86dd, ip6(6, tcp_seg(), plen=500)), "bad IPv6 length"),
    (eth(0x86dd, ip6(0, bytes([0, 200]) + bytes(6))),
     "bad IPv6 extension headers"),
    (eth(0x86dd, ip6(59, bytes(8))), "bad IPv6 extension headers"),
    (eth(0x1234, bytes(40)), "unknown EtherType"),
])
def test_malformed_frames_are_dropped_and_counted(c, frame, reason):
    feed(c, frame)
    assert c.calls == [] or names(c) == ["arp"]
    assert tap.tap_dropped == {reason: 1}


def test_random_garbage_never_raises(c):
    rnd = random.Random(1)
    frames = []
    for _ in range(3000):
        kind = rnd.choice((0x0800, 0x86dd, 0x0806, rnd.randrange(65536)))
        body = bytes(rnd.randrange(256) for _ in range(rnd.randrange(80)))
        if kind == 0x0800 and body:
            body = bytes([0x45]) + body[1:]
        if kind == 0x86dd and body:
            body = bytes([0x60]) + body[1:]
        frames.append(eth(kind, body))
    feed(c, *frames)
    assert sum(tap.tap_dropped.values()) + len(c.calls) >= 2000


def test_a_handler_that_raises_does_not_stop_the_batch(c, monkeypatch):
    def boom(*args):
        raise ValueError("bug")
    monkeypatch.setattr(tcp, "tcp_tap_handler", boom)
    feed(c, eth(0x0800, ip4(6, tcp_seg())), eth(0x0800, ip4(17, udp_dgram())))
    assert names(c) == ["udp"]
    assert tap.tap_dropped == {"tcp handler error": 1}
