# SPDX-License-Identifier: GPL-2.0-or-later
"""Neighbour and router discovery (pasta/ndp.py): advertisements sent in
answer to solicitations, their exact contents, and the timer, with the
tap device replaced by a list collecting what would be sent."""

import ipaddress
import random

import pytest

from pasta import ndp, tap
from pasta.passt import Ctx

OUR_MAC = bytes.fromhex("9a559a559a55")
A = ipaddress.IPv6Address


@pytest.fixture
def ctx():
    c = Ctx()
    c.ifi6 = 1
    c.ip6.addr = A("2001:db8:1::2")
    c.ip6.guest_gw = A("2001:db8:1::1")
    c.ip6.our_tap_ll = A("fe80::1")
    c.ip6.dns = [A("2001:db8:1::1")]
    c.dns_search = ["example.com"]
    c.mtu = 65520
    return c


@pytest.fixture
def sent(monkeypatch):
    msgs = []
    monkeypatch.setattr(tap, "tap_icmp6_send",
                        lambda c, src, dst, msg, *a: msgs.append(
                            (bytes(src), bytes(dst), bytes(msg))))
    monkeypatch.setattr(tap, "tap_is_ready", lambda c: True)
    return msgs


GUEST_LL = A("fe80::5054:ff:fe12:3456").packed
RS_MSG = bytes.fromhex("85000000" "00000000" "0101525400123456")

RA_EXPECTED = bytes.fromhex(
    "86000000" "ff80ffff" "00000000" "00000000"
    "030440c0" "ffffffff" "ffffffff" "00000000"
    "20010db8000100000000000000000000"
    "01019a559a559a55"
    "050100000000fff0"
    "19030000ffffffff" "20010db8000100000000000000000001"
    "1f030000ffffffff" "076578616d706c6503636f6d00000000")


def test_router_solicitation_gets_full_advertisement(ctx, sent):
    assert ndp.ndp(ctx, GUEST_LL, memoryview(RS_MSG)) == 1
    assert sent == [(A("fe80::1").packed, GUEST_LL, RA_EXPECTED)]


def test_solicitation_from_unspecified_answered_to_all_nodes(ctx, sent):
    ndp.ndp(ctx, bytes(16), RS_MSG[:8])
    assert sent[0][1] == A("ff02::1").packed


def test_ra_without_mtu_dns_or_search(ctx, sent):
    ctx.mtu = 0
    ctx.ip6.dns = []
    ndp.ndp(ctx, GUEST_LL, RS_MSG)
    assert sent[0][2] == RA_EXPECTED[:56]


def test_search_list_only_sent_with_servers(ctx, sent):
    ctx.ip6.dns = []
    ctx.mtu = 0
    ctx.dns_search = ["example.com", "example.org"]
    ndp.ndp(ctx, GUEST_LL, RS_MSG)
    assert len(sent[0][2]) == 56


def test_no_dhcp_dns_and_no_dhcp_search(ctx, sent):
    ctx.no_dhcp_dns_search = True
    ndp.ndp(ctx, GUEST_LL, RS_MSG)
    assert sent[0][2] == RA_EXPECTED[:-24]
    ctx.no_dhcp_dns = True
    ndp.ndp(ctx, GUEST_LL, RS_MSG)
    assert sent[1][2] == RA_EXPECTED[:64]


def test_dnssl_padding_and_length_are_consistent():
    # 16 bytes of names: no padding, option of 3 units of 8 bytes
    opt = ndp.ndp_dnssl_opt(["abcdefghij.com"])
    assert opt == bytes.fromhex("1f030000ffffffff") + \
        b"\x0aabcdefghij\x03com\x00"
    opt = ndp.ndp_dnssl_opt(["a.b.", "example.com"])
    assert len(opt) == opt[1] * 8 == 8 + 24
    assert opt[8:] == b"\x01a\x01b\x00\x07example\x03com\x00" + bytes(6)
    assert ndp.ndp_dnssl_opt(["", "."]) == b""


def test_rdnss_at_most_three_servers(ctx, sent):
    ctx.ip6.dns = [A("2001:db8::%d" % i) for i in range(1, 6)]
    ctx.no_dhcp_dns_search = True
    ctx.mtu = 0
    ndp.ndp(ctx, GUEST_LL, RS_MSG)
    ra = sent[0][2]
    assert ra[56:58] == b"\x19\x07" and len(ra) == 56 + 56


def test_no_ra_ignores_router_solicitations(ctx, sent):
    ctx.no_ra = True
    assert ndp.ndp(ctx, GUEST_LL, RS_MSG) == 1
    assert sent == []


def test_neighbour_solicitation_gets_advertisement_from_target(ctx, sent):
    target = A("2001:db8:1::1").packed
    ns = bytes.fromhex("87000000" "00000000") + target + \
        bytes.fromhex("0101525400123456")
    assert ndp.ndp(ctx, GUEST_LL, ns) == 1
    assert sent == [(target, GUEST_LL, bytes.fromhex(
        "88000000" "e0000000") + target + bytes.fromhex("02019a559a559a55"))]


def test_dad_probe_is_not_answered(ctx, sent):
    ns = bytes.fromhex("8700000000000000") + GUEST_LL
    assert ndp.ndp(ctx, bytes(16), ns) == 1
    assert sent == []


def test_truncated_solicitation_is_rejected(ctx, sent):
    ns = bytes.fromhex("8700000000000000") + GUEST_LL
    assert ndp.ndp(ctx, GUEST_LL, ns[:23]) == -1
    assert ndp.ndp(ctx, GUEST_LL, ns[:7]) == -1
    assert sent == []


def test_other_icmpv6_is_left_to_icmp(ctx, sent):
    echo = bytes.fromhex("8000000012340001")
    assert ndp.ndp(ctx, GUEST_LL, echo) == 0
    ra_from_guest = RA_EXPECTED
    assert ndp.ndp(ctx, GUEST_LL, ra_from_guest) == 1
    assert sent == []


def test_no_ndp_swallows_everything(ctx, sent):
    ctx.no_ndp = True
    assert ndp.ndp(ctx, GUEST_LL, RS_MSG) == 1
    assert sent == []


def test_garbage_never_raises(ctx, sent):
    rnd = random.Random(5)
    for _ in range(3000):
        n = rnd.randrange(0, 40)
        msg = bytes([rnd.choice((133, 134, 135, 136, 128, 1))]) + \
            bytes(rnd.getrandbits(8) for _ in range(n))
        assert ndp.ndp(ctx, GUEST_LL, memoryview(msg)) in (-1, 0, 1)


def test_timer_first_schedules_then_sends_unsolicited(ctx, sent, monkeypatch):
    monkeypatch.setattr(ndp, "next_ra", None)
    ndp.ndp_timer(ctx, 1000.0)
    assert sent == []
    due = ndp.next_ra
    assert 1000 + 200 <= due < 1000 + 600
    ndp.ndp_timer(ctx, due - 1)
    assert sent == []
    ndp.ndp_timer(ctx, due)
    assert sent == [(A("fe80::1").packed, A("ff02::1").packed, RA_EXPECTED)]
    assert 200 <= ndp.next_ra - due < 600


def test_timer_silent_with_no_ra(ctx, sent, monkeypatch):
    monkeypatch.setattr(ndp, "next_ra", 5.0)
    ctx.no_ra = True
    ndp.ndp_timer(ctx, 10000.0)
    assert sent == []


def test_init_request_and_unsolicited_na(ctx, sent):
    ndp.ndp_send_init_req(ctx)
    guest = A("2001:db8:1::2").packed
    assert sent[0] == (A("fe80::1").packed, guest,
                       bytes.fromhex("8700000000000000") + guest)
    ndp.ndp_unsolicited_na(ctx, A("2001:db8:1::1"))
    assert sent[1][1] == A("ff02::1").packed
    assert sent[1][2][:8] == bytes.fromhex("88000000e0000000")
