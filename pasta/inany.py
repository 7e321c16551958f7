# SPDX-License-Identifier: GPL-2.0-or-later
"""Addresses of either family in one form: 16 bytes, IPv4 as v4-mapped.

A flow or a forwarding rule compares and hashes addresses without caring
about the family.  Here such an address is a ``bytes`` object of length 16:
an IPv6 address as it is, an IPv4 address as ``::ffff:a.b.c.d``.  Being
``bytes``, it is immutable, hashable and can be copied into a header
without conversion.  The helpers below classify such addresses and convert
them to and from ``ipaddress`` objects, packed 4-byte IPv4 addresses and
socket address tuples.
"""

import ipaddress
import socket

V4MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"

inany_any6 = bytes(16)
inany_any4 = V4MAPPED_PREFIX + bytes(4)
inany_loopback6 = bytes(15) + b"\x01"
inany_loopback4 = V4MAPPED_PREFIX + b"\x7f\0\0\x01"


def inany_from_v4(a4):
    """From a packed 4-byte IPv4 address."""
    return V4MAPPED_PREFIX + bytes(a4)


def inany_from_af(af, packed):
    """From a packed address of family ``af``."""
    if af == socket.AF_INET:
        return V4MAPPED_PREFIX + bytes(packed)
    return bytes(packed)


def inany_from_ip(addr):
    """From an ``ipaddress`` object (or a string parsed as one)."""
    if not isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr = ipaddress.ip_address(addr)
    if addr.version == 4:
        return V4MAPPED_PREFIX + addr.packed
    return addr.packed


def inany_v4(a):
    """The packed IPv4 address if ``a`` is v4-mapped, else None."""
    if a[:12] == V4MAPPED_PREFIX:
        return a[12:]
    return None


def inany_is_v4(a):
    return a[:12] == V4MAPPED_PREFIX


def inany_to_ip(a):
    """As an ``IPv4Address`` or ``IPv6Address``."""
    if a[:12] == V4MAPPED_PREFIX:
        return ipaddress.IPv4Address(a[12:])
    return ipaddress.IPv6Address(a)


def inany_ntop(a):
    """As text, dotted quad for IPv4."""
    if a is None:
        return "*"
    return str(inany_to_ip(a))


def inany_af(a):
    return socket.AF_INET if a[:12] == V4MAPPED_PREFIX else socket.AF_INET6


def inany_is_loopback4(a):
    return a[:12] == V4MAPPED_PREFIX and a[12] == 127


def inany_is_loopback6(a):
    return a == inany_loopback6


def inany_is_loopback(a):
    return inany_is_loopback4(a) or a == inany_loopback6


def inany_is_unspecified4(a):
    return a == inany_any4


def inany_is_unspecified6(a):
    return a == inany_any6


def inany_is_unspecified(a):
    return a == inany_any4 or a == inany_any6


def inany_is_linklocal6(a):
    return a[0] == 0xfe and (a[1] & 0xc0) == 0x80


def inany_is_multicast(a):
    if a[:12] == V4MAPPED_PREFIX:
        return (a[12] & 0xf0) == 0xe0
    return a[0] == 0xff


def inany_is_unicast4(a):
    return (a[:12] == V4MAPPED_PREFIX and not inany_is_unspecified4(a)
            and not inany_is_multicast(a) and a[12:] != b"\xff" * 4)


def inany_is_unicast6(a):
    return (a[:12] != V4MAPPED_PREFIX and a != inany_any6
            and a[0] != 0xff)


def inany_is_unicast(a):
    if a[:12] == V4MAPPED_PREFIX:
        return inany_is_unicast4(a)
    return inany_is_unicast6(a)


def inany_default_prefix_len(a):
    return 32 if a[:12] == V4MAPPED_PREFIX else 128


def inany_equals4(a, a4):
    """Does ``a`` stand for the packed IPv4 address ``a4``?"""
    return a[:12] == V4MAPPED_PREFIX and a[12:] == a4


def inany_matches(a, b):
    """Do two addresses match?  An address matches itself, and an
    unspecified address (or None) matches anything of its family."""
    if a is None or b is None:
        return True
    if inany_is_unspecified(a) or inany_is_unspecified(b):
        return inany_is_v4(a) == inany_is_v4(b)
    return a == b


def inany_from_sockaddr(family, sa):
    """Address and port of a socket address tuple as returned by
    ``recvfrom()``/``getpeername()``: ``(inany, port)``."""
    if family == socket.AF_INET:
        return V4MAPPED_PREFIX + socket.inet_aton(sa[0]), sa[1]
    host = sa[0].split("%", 1)[0]
    a = socket.inet_pton(socket.AF_INET6, host)
    return a, sa[1]


def sockaddr_from_inany(a, port, scope_id=0):
    """``(family, address tuple)`` for ``bind()``/``connect()``."""
    if a[:12] == V4MAPPED_PREFIX:
        return socket.AF_INET, (socket.inet_ntoa(a[12:]), port)
    return socket.AF_INET6, (socket.inet_ntop(socket.AF_INET6, a), port, 0,
                             scope_id)
