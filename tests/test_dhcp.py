# SPDX-License-Identifier: GPL-2.0-or-later
"""The DHCP server (pasta/dhcp.py): replies to hand-built DISCOVER,
REQUEST and BOOTP messages, byte for byte, and strict parsing, with the
tap device replaced by a list collecting what would be sent."""

import ipaddress
import random
import struct

import pytest

from pasta import dhcp, tap
from pasta.passt import Ctx

V4 = ipaddress.IPv4Address
GUEST_MAC = bytes.fromhex("525400123456")
XID = bytes.fromhex("3903f326")
MAGIC = bytes.fromhex("63825363")


@pytest.fixture
def ctx():
    c = Ctx()
    c.ifi4 = 1
    c.ip4.addr = V4("198.51.100.2")
    c.ip4.prefix_len = 24
    c.ip4.guest_gw = V4("198.51.100.1")
    c.ip4.our_tap_addr = V4("198.51.100.1")
    c.ip4.dns = [V4("198.51.100.1")]
    c.dns_search = ["example.com", "sub.example.com"]
    c.mtu = 65520
    c.guest_mac = GUEST_MAC
    return c


@pytest.fixture
def sent(monkeypatch):
    out = []

    def fake(c, src, sport, dst, dport, payload):
        out.append((bytes(src), sport, bytes(dst), dport, bytes(payload)))

    monkeypatch.setattr(tap, "tap_udp4_send", fake)
    return out


def bootp(options, flags=0x8000, op=1, ciaddr=bytes(4), magic=MAGIC):
    return (struct.pack("!BBBB4sHH4s4s4s4s", op, 1, 6, 0, XID, 3, flags,
                        ciaddr, bytes(4), bytes(4), bytes(4)) +
            GUEST_MAC + bytes(10) + bytes(64) + bytes(128) + magic +
            options)


def frame(msg, dport=67, ulen=None, src="0.0.0.0", ihl_opts=b""):
    """Ethernet + IPv4 + UDP around ``msg``."""
    if ulen is None:
        ulen = len(msg) + 8
    udp = struct.pack("!HHHH", 68, dport, ulen, 0) + msg
    ihl = 5 + len(ihl_opts) // 4
    iph = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0,
                      ihl * 4 + len(udp), 0, 0, 64, 17, 0,
                      V4(src).packed, b"\xff" * 4) + ihl_opts
    return b"\xff" * 6 + GUEST_MAC + b"\x08\x00" + iph + udp


DISCOVER_OPTS = bytes.fromhex("350101" "3707010306770f0c1a" "ff")


def reply_header(flags=0x8000, ciaddr=bytes(4)):
    return (struct.pack("!BBBB4sHH4s4s4s4s", 2, 1, 6, 0, XID, 0, flags,
                        ciaddr, V4("198.51.100.2").packed, bytes(4),
                        bytes(4)) +
            GUEST_MAC + bytes(10) + bytes(64) + bytes(128) + MAGIC)


SEARCH_119 = b"\x07example\x03com\x00" + b"\x03sub\xc0\x00"


def test_discover_gets_offer_byte_for_byte(ctx, sent):
    assert dhcp.dhcp(ctx, memoryview(frame(bootp(DISCOVER_OPTS)))) == 1
    opts = (bytes.fromhex("350102"                  # type: offer, first
                          "0104ffffff00"            # requested, in order
                          "0304c6336401"
                          "0604c6336401")
            + b"\x77" + bytes((len(SEARCH_119),)) + SEARCH_119
            + bytes.fromhex("1a02fff0"                # MTU 65520
                            "3304ffffffff"            # then the others
                            "3604c6336401"
                            "ff"))
    opts += bytes(60 - len(opts))             # BOOTP's minimum
    assert sent == [(V4("198.51.100.1").packed, 67, b"\xff" * 4, 68,
                     reply_header() + opts)]


def test_without_request_list_options_in_numeric_order(ctx, sent):
    ctx.dns_search = []
    dhcp.dhcp(ctx, frame(bootp(bytes.fromhex("350101ff"))))
    opts = sent[0][4][240:]
    assert opts == bytes.fromhex(
        "0104ffffff00" "0304c6336401" "0604c6336401" "1a02fff0"
        "3304ffffffff" "350102" "3604c6336401" "ff") + bytes(60 - 38)


def test_reply_is_padded_to_bootp_minimum(ctx, sent):
    ctx.dns_search = []
    ctx.ip4.dns = []
    ctx.mtu = 0
    dhcp.dhcp(ctx, frame(bootp(bytes.fromhex("350101ff"))))
    assert len(sent[0][4]) == 240 + 60


def test_unicast_reply_without_broadcast_flag(ctx, sent):
    dhcp.dhcp(ctx, frame(bootp(DISCOVER_OPTS, flags=0)))
    assert sent[0][2] == V4("198.51.100.2").packed


def test_request_gets_ack_and_ciaddr_is_echoed(ctx, sent):
    ci = V4("198.51.100.2").packed
    req = bootp(bytes.fromhex("350103" "3204c6336402" "3604c6336401"
                              "37020103" "ff"), flags=0, ciaddr=ci)
    assert dhcp.dhcp(ctx, frame(req, src="198.51.100.2")) == 1
    p = sent[0][4]
    assert p[:240] == reply_header(flags=0, ciaddr=ci)
    assert p[240:251] == bytes.fromhex("350105" "0104ffffff00" "0304")


def test_rapid_commit_discover_gets_ack_with_option_80(ctx, sent):
    dhcp.dhcp(ctx, frame(bootp(bytes.fromhex("350101" "5000" "ff"))))
    p = sent[0][4]
    assert b"\x35\x01\x05" in p[240:]
    assert b"\x50\x00" in p[240:]


def test_bootp_request_without_type_gets_ack(ctx, sent):
    assert dhcp.dhcp(ctx, frame(bootp(b"\xff"))) == 1
    assert b"\x35\x01\x05" in sent[0][4][240:]


@pytest.mark.parametrize("mtype", [4, 7, 8, 2])
def test_decline_release_inform_are_dropped(ctx, sent, mtype):
    assert dhcp.dhcp(ctx, frame(bootp(bytes((53, 1, mtype, 255))))) == -1
    assert sent == []


def test_hostname_fqdn_and_route_to_off_link_gateway(ctx, sent):
    ctx.hostname = "guest"
    ctx.fqdn = "guest.example.com"
    ctx.ip4.guest_gw = V4("192.0.2.1")
    ctx.dns_search = []
    dhcp.dhcp(ctx, frame(bootp(bytes.fromhex("350101ff"))))
    opts = dhcp.dhcp_parse_options(sent[0][4][240:])
    assert opts[12] == b"guest"
    assert opts[81] == b"\x04\xff\xff\x05guest\x07example\x03com\x00"
    assert opts[121] == bytes.fromhex("20c0000201" "00000000" "00c0000201")
    assert opts[3] == V4("192.0.2.1").packed


def test_no_dhcp_dns_and_search(ctx, sent):
    ctx.no_dhcp_dns = True
    ctx.no_dhcp_dns_search = True
    dhcp.dhcp(ctx, frame(bootp(DISCOVER_OPTS)))
    opts = dhcp.dhcp_parse_options(sent[0][4][240:])
    assert 6 not in opts and 119 not in opts


def test_search_list_compression_points_to_shared_suffixes():
    s = dhcp._dns_search_compress(["a.example.com", "b.example.com",
                                   "example.com", "example.org."], 255)
    assert s == (b"\x01a\x07example\x03com\x00"
                 b"\x01b\xc0\x02"
                 b"\xc0\x02"
                 b"\x07example\x03org\x00")


def test_search_list_never_points_at_a_mere_prefix():
    # "foo.example" must not point at "example.com" (upstream does, so
    # its clients read "foo.example.com")
    s = dhcp._dns_search_compress(["example.com", "foo.example"], 255)
    assert s == b"\x07example\x03com\x00\x03foo\x07example\x00"


def test_search_list_stops_at_first_name_that_does_not_fit():
    s = dhcp._dns_search_compress(["a" * 60 + ".com", "b" * 60 + ".net",
                                   "c.com"], 70)
    assert s == b"\x3c" + b"a" * 60 + b"\x03com\x00"


def test_long_search_list_keeps_message_within_576_bytes(ctx, sent):
    ctx.dns_search = ["%s%d.example.net" % ("x" * 50, i) for i in range(6)]
    dhcp.dhcp(ctx, frame(bootp(DISCOVER_OPTS)))
    p = sent[0][4]
    assert len(p) <= 576 - 28
    opts = dhcp.dhcp_parse_options(p[240:])
    assert opts[119].startswith(b"\x33" + b"x" * 50 + b"0")
    assert 54 in opts and 51 in opts


def test_not_for_port_67_is_not_dhcp(ctx, sent):
    assert dhcp.dhcp(ctx, frame(bootp(DISCOVER_OPTS), dport=53)) == 0


def test_no_dhcp_swallows_requests(ctx, sent):
    ctx.no_dhcp = True
    assert dhcp.dhcp(ctx, frame(bootp(DISCOVER_OPTS))) == 1
    assert sent == []


def test_ip_options_are_skipped(ctx, sent):
    f = frame(bootp(DISCOVER_OPTS), ihl_opts=b"\x01\x01\x01\x00")
    assert dhcp.dhcp(ctx, f) == 1
    assert len(sent) == 1


@pytest.mark.parametrize("bad", [
    bootp(b"\x35"),                         # length byte missing
    bootp(b"\x35\x05\x01"),                 # option runs past the end
    bootp(b"", op=2),                       # a reply, not a request
    bootp(b"")[:239],                       # shorter than the fixed part
])
def test_malformed_messages_are_dropped(ctx, sent, bad):
    assert dhcp.dhcp(ctx, frame(bad)) == -1
    assert sent == []


def test_udp_length_must_match(ctx, sent):
    msg = bootp(DISCOVER_OPTS)
    assert dhcp.dhcp(ctx, frame(msg, ulen=len(msg) + 9)) == -1
    assert dhcp.dhcp(ctx, frame(msg, ulen=len(msg) + 7)) == -1
    assert dhcp.dhcp(ctx, frame(msg, ulen=3)) == -1
    assert sent == []


def test_pad_options_are_skipped():
    assert dhcp.dhcp_parse_options(b"\0\0\x35\x01\x01\0\xff\x35") == \
        {53: b"\x01"}
    assert dhcp.dhcp_parse_options(b"\x0c\x00") == {12: b""}


def test_truncations_and_garbage_never_raise(ctx, sent):
    f = frame(bootp(DISCOVER_OPTS))
    for n in range(len(f)):
        assert dhcp.dhcp(ctx, memoryview(f)[:n]) in (-1, 0, 1)
    rnd = random.Random(11)
    base = bytearray(f)
    for _ in range(3000):
        g = bytearray(base)
        for _ in range(rnd.randrange(1, 8)):
            g[rnd.randrange(len(g))] = rnd.getrandbits(8)
        g = g[:rnd.randrange(len(g) + 1)]
        assert dhcp.dhcp(ctx, g) in (-1, 0, 1)


def test_encode_domain_name():
    assert dhcp.encode_domain_name("example.com") == \
        b"\x07example\x03com\x00"
    assert dhcp.encode_domain_name("example.com.") == \
        b"\x07example\x03com\x00"
    assert dhcp.encode_domain_name("") == b"\0"
    assert dhcp.encode_domain_name("a..b") is None
    assert dhcp.encode_domain_name("x" * 64 + ".com") is None
