# SPDX-License-Identifier: GPL-2.0-or-later
"""ARP replies, initial request and announcements (pasta/arp.py), with
the tap device replaced by a list collecting what would be sent."""

import ipaddress
import random

import pytest

from pasta import arp, tap
from pasta.passt import Ctx

GUEST_MAC = bytes.fromhex("525400123456")
OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST = ipaddress.IPv4Address("198.51.100.2")
GW = ipaddress.IPv4Address("198.51.100.1")


@pytest.fixture
def ctx():
    c = Ctx()
    c.ifi4 = 1
    c.ip4.addr = GUEST
    c.ip4.prefix_len = 24
    c.ip4.guest_gw = GW
    c.ip4.our_tap_addr = GW
    c.guest_mac = GUEST_MAC
    return c


@pytest.fixture
def sent(monkeypatch):
    frames = []
    monkeypatch.setattr(tap, "tap_send_single",
                        lambda c, f: frames.append(bytes(f)))
    monkeypatch.setattr(tap, "tap_is_ready", lambda c: True)
    return frames


def request(sip, tip, sha=GUEST_MAC, op=1, hrd=1, pro=0x0800, hln=6,
            pln=4, pad=0):
    return (b"\xff" * 6 + sha + b"\x08\x06" +
            hrd.to_bytes(2, "big") + pro.to_bytes(2, "big") +
            bytes((hln, pln)) + op.to_bytes(2, "big") +
            sha + ipaddress.IPv4Address(sip).packed +
            bytes(6) + ipaddress.IPv4Address(tip).packed + bytes(pad))


def test_request_for_gateway_gets_reply_with_our_mac(ctx, sent):
    assert arp.arp(ctx, memoryview(request(GUEST, GW, pad=18))) == 1
    assert sent == [bytes.fromhex(
        "525400123456" "9a559a559a55" "0806"
        "0001" "0800" "06" "04" "0002"
        "9a559a559a55" "c6336401"           # sender: our MAC, 198.51.100.1
        "525400123456" "c6336402")]         # target: the guest


def test_any_other_address_is_answered_too(ctx, sent):
    arp.arp(ctx, request(GUEST, "203.0.113.10"))
    assert len(sent) == 1
    assert sent[0][28:32] == bytes((203, 0, 113, 10))
    assert sent[0][22:28] == OUR_MAC


def test_probe_from_zero_address_is_answered(ctx, sent):
    assert arp.arp(ctx, request("0.0.0.0", GW)) == 1
    assert len(sent) == 1
    assert sent[0][38:42] == bytes(4)


def test_announcement_is_ignored(ctx, sent):
    assert arp.arp(ctx, request(GUEST, GUEST)) == 1
    assert arp.arp(ctx, request("198.51.100.77", "198.51.100.77")) == 1
    assert sent == []


def test_guest_own_address_is_not_resolved(ctx, sent):
    # the guest's duplicate address detection probe
    assert arp.arp(ctx, request("0.0.0.0", GUEST)) == 1
    assert sent == []


@pytest.mark.parametrize("kw", [dict(op=2), dict(hrd=6), dict(pro=0x86dd),
                                dict(hln=8), dict(pln=16)])
def test_non_ethernet_ipv4_requests_are_ignored(ctx, sent, kw):
    assert arp.arp(ctx, request(GUEST, GW, **kw)) == 1
    assert sent == []


def test_truncated_frame_is_rejected(ctx, sent):
    f = request(GUEST, GW)
    for n in range(0, len(f)):
        assert arp.arp(ctx, f[:n]) == -1
    assert sent == []


def test_garbage_never_raises(ctx, sent):
    rnd = random.Random(3)
    for _ in range(3000):
        n = rnd.randrange(0, 70)
        f = bytes(rnd.getrandbits(8) for _ in range(n))
        assert arp.arp(ctx, memoryview(f)) in (1, -1)


def test_initial_request_asks_for_guest_address(ctx, sent):
    arp.arp_send_init_req(ctx)
    assert sent == [bytes.fromhex(
        "ffffffffffff" "9a559a559a55" "0806"
        "0001" "0800" "06" "04" "0001"
        "9a559a559a55" "c6336401"
        "ffffffffffff" "c6336402")]


def test_announcement_frame(ctx, sent):
    mac = bytes.fromhex("020000000001")
    arp.arp_announce(ctx, ipaddress.IPv4Address("198.51.100.9"), mac)
    assert sent == [bytes.fromhex(
        "ffffffffffff" "020000000001" "0806"
        "0001" "0800" "06" "04" "0001"
        "020000000001" "c6336409"
        "000000000000" "c6336409")]


def test_announcement_waits_for_tap(ctx, sent, monkeypatch):
    monkeypatch.setattr(tap, "tap_is_ready", lambda c: False)
    arp.arp_announce(ctx, GW.packed, OUR_MAC)
    assert sent == []
