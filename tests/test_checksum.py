# SPDX-License-Identifier: GPL-2.0-or-later
"""Checksums and IP header helpers (pasta/checksum.py, pasta/ip.py),
checked against a word-by-word reference implementation of RFC 1071 and
against headers and messages whose checksums are known."""

import ipaddress
import random
import socket

import pytest

from pasta import checksum as ck
from pasta import ip


def ref_sum(data):
    """RFC 1071 ones' complement sum, one word at a time, carries folded."""
    data = bytes(data)
    if len(data) & 1:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xffff) + (s >> 16)
    return s


def ref_csum(data):
    return ~ref_sum(data) & 0xffff


A4 = socket.inet_aton("192.0.2.1")
B4 = socket.inet_aton("198.51.100.7")
A6 = ipaddress.IPv6Address("fe80::1").packed
B6 = ipaddress.IPv6Address("2001:db8::42").packed


@pytest.mark.parametrize("n", [0, 1, 2, 3, 19, 20, 1499, 1500, 8191, 8192,
                               8193, 9000, 65519, 65520])
def test_sum_matches_reference_on_random_data(n):
    rnd = random.Random(n)
    for _ in range(3):
        data = bytes(rnd.getrandbits(8) for _ in range(n))
        assert ck.csum(data) == ref_csum(data)
        assert ck.csum_fold(ck.csum_unfolded(data)) == ref_sum(data)


def test_empty_and_all_zero_buffers_sum_to_zero():
    for n in (0, 1, 2, 7, 64, 9001):
        assert ck.csum_fold(ck.csum_unfolded(bytes(n))) == 0
        assert ck.csum(bytes(n)) == 0xffff


@pytest.mark.parametrize("data", [b"\xff\xff", b"\xff\xff" * 5000,
                                  b"\x12\x34\xed\xcb", b"\xff",
                                  b"\x80\x00\x7f\xff",
                                  b"\xff\xff" * 4097 + b"\xff"])
def test_nonzero_multiple_of_ffff_folds_to_ffff_not_zero(data):
    assert ck.csum_fold(ck.csum_unfolded(data)) == ref_sum(data)
    assert ck.csum(data) == ref_csum(data)


def test_csum_fold_matches_carry_folding():
    for s in (0, 1, 0xfffe, 0xffff, 0x10000, 0x1fffe, 0xffff * 7,
              0xffffffff, 123456789):
        f = s
        while f >> 16:
            f = (f & 0xffff) + (f >> 16)
        assert ck.csum_fold(s) == f


def test_init_chains_even_pieces():
    rnd = random.Random(1)
    data = bytes(rnd.getrandbits(8) for _ in range(10001))
    psum = ck.csum_unfolded(data[:5000])
    assert ck.csum(data[5000:], psum) == ref_csum(data)
    assert ck.csum_iov([data[:20], data[20:9000], data[9000:]]) == \
        ref_csum(data)
    assert ck.csum_unaligned(memoryview(data)) == ref_csum(data)


def test_memoryview_and_bytearray_inputs():
    data = bytearray(range(256)) * 40
    assert ck.csum(memoryview(data)[1:]) == ref_csum(data[1:])
    assert ck.csum(data) == ref_csum(data)


def test_ip4_header_checksum_known_value():
    # RFC 1071-style worked example (Wikipedia's IPv4 header checksum)
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ck.csum(hdr) == 0xb861


def test_csum_ip4_header_matches_built_header():
    for proto in (1, 6, 17):
        for l4len in (0, 8, 1480, 65515):
            h = ip.ip4_hdr(l4len, proto, A4, B4)
            assert ck.csum_ip4_header(l4len + 20, proto, A4, B4) == \
                int.from_bytes(h[10:12], "big")
            assert ref_sum(h) == 0xffff


def test_ip4_hdr_fields_as_upstream():
    h = ip.ip4_hdr(100, ip.IPPROTO_UDP, A4, B4)
    v = ip.IP4_HDR.unpack(h)
    assert v[:7] == (0x45, 0, 120, 0, ip.IP_DF, 255, 17)
    assert v[8:] == (A4, B4)


def test_udp6_checksum_verifies_and_is_never_zero():
    payload = b"hello, world"
    uh = ip.udp_hdr(546, 547, len(payload))
    c = ck.csum_udp6(uh, A6, B6, payload)
    full = uh[:6] + c.to_bytes(2, "big") + payload
    psum = ck.proto_ipv6_header_psum(len(full), 17, A6, B6)
    assert ck.csum_fold(ck.csum_unfolded(full, psum)) == 0xffff
    # A datagram whose checksum computes to 0 is sent with 0xffff:
    # pseudo-header 17 + 10, header 10, so a payload word of 0xffff - 37
    uh0 = ip.udp_hdr(0, 0, 2)
    filler = (0xffff - 37).to_bytes(2, "big")
    assert ck.csum_udp6(uh0, bytes(16), bytes(16), filler) == 0xffff


def test_udp4_checksum_left_out_as_upstream_unless_asked():
    payload = b"x" * 33
    uh = ip.udp_hdr(68, 67, len(payload))
    assert ck.csum_udp4(uh, A4, B4, payload) == 0
    c = ck.csum_udp4(uh, A4, B4, payload, real=True)
    full = uh[:6] + c.to_bytes(2, "big") + payload
    psum = ck.proto_ipv4_header_psum(len(full), 17, A4, B4)
    assert ck.csum_fold(ck.csum_unfolded(full, psum)) == 0xffff


def test_icmp4_echo_checksum():
    # ping -p 00 style echo request, id 0x1234 seq 1, 8 bytes of data
    msg = bytes.fromhex("0800000012340001") + bytes(range(8))
    c = ck.csum_icmp4(msg[:8], msg[8:])
    assert c == ref_csum(msg)
    assert ck.csum_icmp4(msg) == c
    # the checksum field's current content does not matter
    assert ck.csum_icmp4(b"\x08\x00\xab\xcd" + msg[4:]) == c


def test_icmp6_checksum_verifies_with_pseudo_header():
    msg = bytes.fromhex("8500000000000000")           # router solicitation
    c = ck.csum_icmp6(msg, A6, ip.in6addr_ll_all_routers)
    full = msg[:2] + c.to_bytes(2, "big") + msg[4:]
    pseudo = A6 + ip.in6addr_ll_all_routers + len(full).to_bytes(4, "big") \
        + b"\0\0\0\x3a"
    assert ref_sum(pseudo + full) == 0xffff
    # odd-length header part followed by payload
    c2 = ck.csum_icmp6(msg[:5], A6, B6, msg[5:] + b"abc")
    assert c2 == ck.csum_icmp6(msg + b"abc", A6, B6)


def test_ip6_hdr_and_flow_label():
    h = bytearray(ip.ip6_hdr(8, ip.IPPROTO_UDP, A6, B6, flow=0x123456))
    assert h[:8] == bytes.fromhex("60023456000811ff")
    assert ip.ip6_get_flow_lbl(h) == 0x23456
    ip.ip6_set_flow_lbl(h, 0xabcde)
    assert ip.ip6_get_flow_lbl(h) == 0xabcde
    assert h[0] == 0x60


def ip6(nh, exts, l4=b"\0" * 8):
    body = b"".join(exts) + l4
    return ip.ip6_hdr(len(body), nh, A6, B6) + body


def test_ipv6_l4hdr_plain_and_with_extensions():
    assert ip.ipv6_l4hdr(ip6(17, [])) == (17, 40)
    hbh = bytes([58, 0]) + bytes(6)                      # next: ICMPv6
    assert ip.ipv6_l4hdr(ip6(0, [hbh])) == (58, 48)
    dst = bytes([17, 1]) + bytes(14)                     # 16 bytes
    hbh2 = bytes([60, 0]) + bytes(6)
    assert ip.ipv6_l4hdr(ip6(0, [hbh2, dst])) == (17, 64)


def test_ipv6_l4hdr_rejects_truncated_and_none():
    assert ip.ipv6_l4hdr(b"\x60" + bytes(30)) is None
    assert ip.ipv6_l4hdr(ip6(59, [])) is None
    long_ext = bytes([17, 200]) + bytes(6)               # claims 1608 bytes
    assert ip.ipv6_l4hdr(ip6(0, [long_ext])) is None
    only_hdr = ip.ip6_hdr(0, 0, A6, B6)
    assert ip.ipv6_l4hdr(only_hdr) is None
    assert ip.ipv6_l4hdr(ip6(0, [bytes([59, 0]) + bytes(6)])) is None


def test_ipv6_l4hdr_random_garbage_never_raises():
    rnd = random.Random(7)
    for _ in range(2000):
        n = rnd.randrange(0, 120)
        data = bytes([0x60]) + bytes(rnd.getrandbits(8) for _ in range(n))
        r = ip.ipv6_l4hdr(data)
        assert r is None or r[1] <= len(data)


def test_ipproto_name_and_class_prefix():
    assert ip.ipproto_name(6) == "TCP"
    assert ip.ipproto_name(58) == "ICMPv6"
    assert ip.ipproto_name(99) == "<unknown protocol>"
    assert ip.ip4_class_prefix_len(ipaddress.IPv4Address("10.1.2.3")) == 8
    assert ip.ip4_class_prefix_len(socket.inet_aton("172.16.0.1")) == 16
    assert ip.ip4_class_prefix_len(socket.inet_aton("192.168.1.1")) == 24
    assert ip.ip4_class_prefix_len(socket.inet_aton("224.0.0.1")) == 32


def test_eth_hdr():
    h = ip.eth_hdr(b"\xff" * 6, b"\x9a\x55" * 3, ip.ETH_P_ARP)
    assert h == b"\xff" * 6 + b"\x9a\x55" * 3 + b"\x08\x06"
