# SPDX-License-Identifier: GPL-2.0-or-later
"""Layouts, constants and builders for Ethernet, ARP, IPv4 and IPv6 headers.

Theory of operation
-------------------

Every header that the port reads or writes is described once, here, by a
``struct.Struct`` compiled at import time, in network byte order.  Code
that parses a frame calls ``unpack_from(buf, offset)`` on the right
layout after checking that ``offset + layout.size`` fits in the buffer;
code that builds one calls ``pack()`` or ``pack_into()``.  The builders
below put together the headers pasta sends towards the guest with the
same fixed field values as upstream: IPv4 without options, TOS 0,
identification 0, "don't fragment" and TTL 255; IPv6 with traffic class
0, hop limit 255 and the flow label given by the caller.

Addresses are packed ``bytes`` (4 or 16) throughout, MAC addresses
6-byte ``bytes``.  ``ipv6_l4hdr()`` walks IPv6 extension headers to find
the transport header, bounded by the length of the packet: every step
consumes at least eight bytes, so a hostile chain cannot loop.
"""

import ipaddress
import struct

from pasta.checksum import csum

# Ethernet
ETH_ALEN = 6
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86dd
ETH_MAX_MTU = 0xffff

# ARP
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2

# IP protocol numbers
IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1fff

IPV4_MIN_MTU = 68
IPV6_MIN_MTU = 1280

# Header layouts, fields in order:
# Ethernet: destination, source, EtherType
ETH_HDR = struct.Struct("!6s6sH")
# ARP: hardware type, protocol type, their address lengths, operation
ARP_HDR = struct.Struct("!HHBBH")
# ARP for Ethernet and IPv4: sender MAC and IP, target MAC and IP
ARP_MSG = struct.Struct("!6s4s6s4s")
# The two above together
ARP_PKT = struct.Struct("!HHBBH6s4s6s4s")
# IPv4: version and IHL, TOS, total length, identification, flags and
# fragment offset, TTL, protocol, checksum, source, destination
IP4_HDR = struct.Struct("!BBHHHBBH4s4s")
# IPv6: version, traffic class and flow label, payload length, next
# header, hop limit, source, destination
IP6_HDR = struct.Struct("!IHBB16s16s")
# IPv6 extension header start: next header, length in 8 bytes beyond 8
IP6_OPT_HDR = struct.Struct("!BB")
# UDP: source port, destination port, length, checksum
UDP_HDR = struct.Struct("!HHHH")
# TCP: ports, sequence, acknowledgement, data offset << 4, flags, window,
# checksum, urgent pointer
TCP_HDR = struct.Struct("!HHIIBBHHH")
# ICMP echo: type, code, checksum, identifier, sequence
ICMP_HDR = struct.Struct("!BBHHH")
# ICMPv6: type, code, checksum, the first 32 bits of the body
ICMP6_HDR = struct.Struct("!BBHI")
# ICMPv6 echo: type, code, checksum, identifier, sequence
ICMP6_ECHO = struct.Struct("!BBHHH")

ETH_P_IP_BYTES = ETH_P_IP.to_bytes(2, "big")
ETH_P_IPV6_BYTES = ETH_P_IPV6.to_bytes(2, "big")
ETH_P_ARP_BYTES = ETH_P_ARP.to_bytes(2, "big")

# Well-known addresses, packed
in4addr_any = bytes(4)
in4addr_broadcast = b"\xff" * 4
in4addr_loopback = b"\x7f\0\0\x01"
in6addr_any = bytes(16)
in6addr_loopback = bytes(15) + b"\x01"
in6addr_ll_all_nodes = b"\xff\x02" + bytes(13) + b"\x01"
in6addr_ll_all_routers = b"\xff\x02" + bytes(13) + b"\x02"

# Next header values that announce an extension header to skip
IPV6_NH_OPT = frozenset((0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254))


def eth_hdr(dst, src, proto):
    """Ethernet header to ``dst`` from ``src`` (6-byte MACs) for the
    EtherType ``proto``."""
    return ETH_HDR.pack(dst, src, proto)


def ip4_hdr(l4len, proto, src, dst, ttl=255):
    """IPv4 header (20 bytes, checksum filled in) for a payload of
    ``l4len`` bytes of protocol ``proto`` from ``src`` to ``dst``.

    Fields other than ``ttl`` are fixed as in upstream's
    ``tap_push_ip4h()``: TOS 0, identification 0, "don't fragment".
    """
    l3len = l4len + IP4_HDR.size
    h = IP4_HDR.pack(0x45, 0, l3len, 0, IP_DF, ttl, proto, 0, src, dst)
    return h[:10] + csum(h).to_bytes(2, "big") + h[12:]


def ip6_hdr(l4len, proto, src, dst, flow=0, hop_limit=255):
    """IPv6 header (40 bytes) for a payload of ``l4len`` bytes with next
    header ``proto``, from ``src`` to ``dst``, with the low 20 bits of
    ``flow`` as flow label and traffic class 0."""
    return IP6_HDR.pack(0x60000000 | (flow & 0xfffff), l4len, proto,
                        hop_limit, src, dst)


def udp_hdr(sport, dport, dlen, check=0):
    """UDP header for ``dlen`` bytes of payload (``len`` = dlen + 8)."""
    return UDP_HDR.pack(sport, dport, dlen + UDP_HDR.size, check)


def ip6_set_flow_lbl(ip6h, flow):
    """Write the low 20 bits of ``flow`` as flow label of the IPv6 header
    at the start of the writable buffer ``ip6h``, keeping the traffic
    class bits that share its first bytes."""
    ip6h[1] = (ip6h[1] & 0xf0) | ((flow >> 16) & 0xf)
    ip6h[2] = (flow >> 8) & 0xff
    ip6h[3] = flow & 0xff


def ip6_get_flow_lbl(ip6h):
    """Flow label (20 bits) of the IPv6 header at the start of ``ip6h``."""
    return (ip6h[1] & 0xf) << 16 | ip6h[2] << 8 | ip6h[3]


def ipv6_l4hdr(pkt):
    """Find the transport header of the IPv6 packet ``pkt``.

    ``pkt`` starts at the IPv6 header and ends where the packet ends.
    Extension headers (hop-by-hop, routing, fragment, destination options
    and the others in ``IPV6_NH_OPT``) are skipped.

    Returns ``(proto, offset)``, the transport protocol and the offset of
    its header in ``pkt``, or None if the packet is too short, a header
    runs past its end, or there is no transport header (next header
    ``IPPROTO_NONE``).
    """
    n = len(pkt)
    if n < IP6_HDR.size:
        return None

    nh = pkt[6]
    off = IP6_HDR.size
    while nh in IPV6_NH_OPT:
        if off + IP6_OPT_HDR.size > n:
            return None
        nh = pkt[off]
        off += (pkt[off + 1] + 1) * 8
        if off > n:
            return None

    if nh == IPPROTO_NONE:
        return None
    return nh, off


_IPPROTO_NAMES = {IPPROTO_ICMP: "ICMP", IPPROTO_TCP: "TCP",
                  IPPROTO_UDP: "UDP", IPPROTO_ICMPV6: "ICMPv6"}


def ipproto_name(proto):
    """Short name of IP protocol number ``proto``, for messages."""
    return _IPPROTO_NAMES.get(proto, "<unknown protocol>")


def _v4_int(addr):
    if isinstance(addr, ipaddress.IPv4Address):
        return int(addr)
    if isinstance(addr, int):
        return addr
    return int.from_bytes(addr, "big")


def ip4_class_prefix_len(addr):
    """Prefix length of the class (A, B or C) of IPv4 address ``addr``
    (``IPv4Address``, packed bytes or int), 32 for other addresses."""
    a = _v4_int(addr)
    if a >> 31 == 0:
        return 8
    if a >> 30 == 0b10:
        return 16
    if a >> 29 == 0b110:
        return 24
    return 32


def in4_is_addr_linklocal(addr):
    """True if IPv4 address ``addr`` is in 169.254.0.0/16."""
    return _v4_int(addr) >> 16 == 0xa9fe


def in4_is_prefix_linklocal(addr, prefix_len):
    """True if ``addr``/``prefix_len`` lies within 169.254.0.0/16."""
    return prefix_len >= 16 and in4_is_addr_linklocal(addr)


def in6_is_prefix_linklocal(addr, prefix_len):
    """True if IPv6 ``addr``/``prefix_len`` lies within fe80::/10."""
    a = bytes(addr.packed if hasattr(addr, "packed") else addr)
    return prefix_len >= 10 and a[0] == 0xfe and a[1] & 0xc0 == 0x80
