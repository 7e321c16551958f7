# SPDX-License-Identifier: GPL-2.0-or-later
"""The DHCPv6 server (pasta/dhcpv6.py): replies to hand-built client
messages, byte for byte, and strict option parsing, with the tap device
replaced by a list collecting what would be sent."""

import ipaddress
import random
import struct

import pytest

from pasta import dhcpv6, tap
from pasta.passt import Ctx

A = ipaddress.IPv6Address
OUR_MAC = bytes.fromhex("9a559a559a55")
GUEST_LL = A("fe80::5054:ff:fe12:3456").packed
ALL_SERVERS = A("ff02::1:2").packed
XID = bytes.fromhex("abcdef")
IAID = bytes.fromhex("0a0b0c0d")
CLIENT_ID = bytes.fromhex("0001000e" "00010001" "2a2b2c2d" "525400123456")
SERVER_ID = bytes.fromhex("0002000e" "00010001" "12345678" "9a559a559a55")
ELAPSED = bytes.fromhex("00080002" "0000")
ORO = bytes.fromhex("00060004" "00170018")
LEASE = A("2001:db8:1::2").packed


@pytest.fixture
def ctx(monkeypatch):
    c = Ctx()
    c.ifi6 = 1
    c.ip6.addr = A("2001:db8:1::2")
    c.ip6.our_tap_ll = A("fe80::1")
    c.ip6.dns = [A("2001:db8:1::1")]
    c.dns_search = ["example.com"]
    monkeypatch.setattr(dhcpv6.time, "time",
                        lambda: dhcpv6.Y2K + 0x12345678)
    monkeypatch.setattr(dhcpv6, "last_iaid", b"\x01\0\0\0")
    dhcpv6.dhcpv6_init(c)
    return c


@pytest.fixture
def sent(monkeypatch):
    out = []

    def fake(c, src, sport, dst, dport, flow, payload):
        out.append((bytes(src), sport, bytes(dst), dport, flow,
                    bytes(payload)))

    monkeypatch.setattr(tap, "tap_udp6_send", fake)
    return out


def ia_na(addrs=(), iaid=IAID):
    sub = b"".join(bytes.fromhex("00050018") + A(a).packed +
                   bytes.fromhex("0000000000000000") for a in addrs)
    return struct.pack("!HH", 3, 12 + len(sub)) + iaid + bytes(8) + sub


def udp(msg, dport=547, ulen=None):
    if ulen is None:
        ulen = len(msg) + 8
    return struct.pack("!HHHH", 546, dport, ulen, 0) + msg


def message(mtype, *opts):
    return bytes((mtype,)) + XID + b"".join(opts)


REPLY_TAIL = (bytes.fromhex("00030028") + IAID + b"\xff" * 8 +
              bytes.fromhex("00050018") + LEASE + b"\xff" * 8 +
              CLIENT_ID +
              bytes.fromhex("00170010") + A("2001:db8:1::1").packed +
              bytes.fromhex("0018000d") + b"\x07example\x03com\x00")


def test_server_duid_is_llt_of_our_mac(ctx):
    assert dhcpv6.server_id == SERVER_ID


def test_solicit_gets_advertise_byte_for_byte(ctx, sent):
    sol = message(1, CLIENT_ID, ELAPSED, ia_na(), ORO)
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS,
                         memoryview(udp(sol))) == 1
    assert sent == [(A("fe80::1").packed, 547, GUEST_LL, 546,
                     int.from_bytes(XID, "little"),
                     b"\x02" + XID + SERVER_ID + REPLY_TAIL)]
    assert ctx.ip6.addr_seen == A("2001:db8:1::2")


def test_request_naming_us_gets_reply(ctx, sent):
    req = message(3, CLIENT_ID, SERVER_ID, ia_na([LEASE]), ELAPSED)
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(req)) == 1
    assert sent[0][5] == b"\x07" + XID + SERVER_ID + REPLY_TAIL


@pytest.mark.parametrize("mtype", [3, 5, 6])
def test_request_renew_rebind_for_other_server_dropped(ctx, sent, mtype):
    other = SERVER_ID[:-1] + b"\x00"
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS,
                         udp(message(mtype, CLIENT_ID, other,
                                     ia_na()))) == -1
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS,
                         udp(message(mtype, CLIENT_ID, ia_na()))) == -1
    assert sent == []


def test_renew_and_rebind_naming_us_get_reply(ctx, sent):
    for mtype in (5, 6):
        m = message(mtype, CLIENT_ID, SERVER_ID, ia_na([LEASE]))
        assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == 1
    assert [s[5][0] for s in sent] == [7, 7]


def test_confirm_with_our_address_gets_reply(ctx, sent):
    m = message(4, CLIENT_ID, ia_na([LEASE]))
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == 1
    assert sent[0][5] == b"\x07" + XID + SERVER_ID + REPLY_TAIL


def test_confirm_with_other_address_gets_notonlink(ctx, sent):
    ctx.ip6.addr_seen = A("::")
    m = message(4, CLIENT_ID, ia_na(["2001:db8:9::9"]))
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == 1
    status = bytes.fromhex("000d0022" "0004") + \
        b"Prefix not appropriate for link."
    assert sent[0][5] == (b"\x07" + XID + SERVER_ID +
                          bytes.fromhex("00030032") + IAID + bytes(8) +
                          status + CLIENT_ID)
    assert ctx.ip6.addr_seen == A("::")


def test_confirm_naming_a_server_is_dropped(ctx, sent):
    m = message(4, CLIENT_ID, SERVER_ID, ia_na([LEASE]))
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == -1


def test_information_request(ctx, sent):
    m = message(11, CLIENT_ID, ELAPSED, ORO)
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == 1
    assert sent[0][5][0] == 7
    # with an IA, it is not an information request
    m = message(11, CLIENT_ID, ia_na())
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == -1


def test_solicit_naming_a_server_is_dropped(ctx, sent):
    m = message(1, CLIENT_ID, SERVER_ID, ia_na())
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == -1


@pytest.mark.parametrize("mtype", [2, 7, 8, 9, 12, 255])
def test_other_message_types_are_dropped(ctx, sent, mtype):
    m = message(mtype, CLIENT_ID, SERVER_ID, ia_na())
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == -1
    assert sent == []


def test_fqdn_option_and_override_flag(ctx, sent):
    ctx.fqdn = "guest.example.com"
    m = message(1, CLIENT_ID, ia_na())
    dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m))
    fqdn = b"\x05guest\x07example\x03com\x00"
    assert sent[0][5].endswith(struct.pack("!HH", 39, 1 + len(fqdn)) +
                               b"\x00" + fqdn)
    m = message(1, CLIENT_ID, ia_na(), bytes.fromhex("0027000101"))
    dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m))
    assert sent[1][5].endswith(b"\x02" + fqdn)


def test_no_dns_options(ctx, sent):
    ctx.no_dhcp_dns = True
    ctx.no_dhcp_dns_search = True
    dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS,
                  udp(message(1, CLIENT_ID, ia_na())))
    assert sent[0][5].endswith(CLIENT_ID)


def test_unicast_destination_is_dropped(ctx, sent):
    m = udp(message(1, CLIENT_ID, ia_na()))
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, A("fe80::1").packed, m) == -1


def test_not_for_port_547_and_no_dhcpv6(ctx, sent):
    m = message(1, CLIENT_ID, ia_na())
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m, dport=53)) == 0
    ctx.no_dhcpv6 = True
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == 1
    assert sent == []


@pytest.mark.parametrize("bad", [
    message(1, ia_na()),                                  # no client ID
    message(1, struct.pack("!HH", 1, 129) + bytes(129)),  # client ID > 128
    message(3, CLIENT_ID, SERVER_ID[:-2] + b"", ia_na()),
    message(3, CLIENT_ID, struct.pack("!HH", 2, 12) + SERVER_ID[4:16]),
    message(1, CLIENT_ID, struct.pack("!HH", 3, 2) + b"\0\0"),  # short IA
    b"\x01\x02\x03",                                      # no header
])
def test_malformed_messages_are_dropped(ctx, sent, bad):
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(bad)) == -1
    assert sent == []


def test_client_id_past_the_end_is_not_seen(ctx, sent):
    m = message(1, CLIENT_ID[:-1])
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == -1


def test_udp_length_must_match(ctx, sent):
    m = message(1, CLIENT_ID, ia_na())
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS,
                         udp(m, ulen=len(m) + 7)) == -1
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)[:7]) == -1


def test_malformed_address_in_ia_means_no_notonlink(ctx, sent):
    bad_addr = struct.pack("!HH", 5, 20) + bytes(20)
    ia = struct.pack("!HH", 3, 12 + len(bad_addr)) + IAID + bytes(8) + \
        bad_addr
    m = message(4, CLIENT_ID, ia)
    assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS, udp(m)) == 1
    assert sent[0][5][4:4 + len(SERVER_ID)] == SERVER_ID
    assert b"Prefix not appropriate" not in sent[0][5]


def test_garbage_never_raises(ctx, sent):
    base = bytearray(udp(message(3, CLIENT_ID, SERVER_ID,
                                 ia_na([LEASE, "2001:db8::5"]),
                                 ELAPSED, ORO)))
    rnd = random.Random(13)
    for _ in range(3000):
        g = bytearray(base)
        for _ in range(rnd.randrange(1, 6)):
            g[rnd.randrange(8, len(g))] = rnd.getrandbits(8)
        g = g[:rnd.randrange(len(g) + 1)]
        if len(g) >= 6:
            g[4:6] = struct.pack("!H", len(g))
        assert dhcpv6.dhcpv6(ctx, GUEST_LL, ALL_SERVERS,
                             memoryview(g)) in (-1, 0, 1)
