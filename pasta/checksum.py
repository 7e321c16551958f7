# SPDX-License-Identifier: GPL-2.0-or-later
"""Internet checksums (RFC 1071) for IPv4, UDP, ICMP and ICMPv6 headers.

Theory of operation
-------------------

The Internet checksum is the ones' complement of the ones' complement sum
of a message taken as a sequence of 16-bit big-endian words, an odd
trailing byte being padded with a zero byte.  Everything here works on
plain integers holding the value of that sum in network byte order: the
number returned by ``csum()`` is the one to pack with ``struct`` (``!H``)
into the checksum field.

The sum is computed without a Python loop over the words.  Read as one
big-endian integer, a buffer of 2n bytes is sum(w_i * 65536**(n-1-i)),
and since 65536 leaves a remainder of 1 when divided by 0xffff, that
integer and the plain sum of its words leave the same remainder: one
``int.from_bytes()`` and one ``%`` give the ones' complement sum.  Two
details make the result exact rather than nearly right:

- an odd-length buffer is shifted left by 8 bits, which is what padding
  it with a zero byte does;
- in ones' complement arithmetic 0x0000 and 0xffff are both "zero", but a
  real end-around-carry sum is 0x0000 only when every word is zero.  The
  remainder is therefore mapped with ``(s - 1) % 0xffff + 1`` for s > 0,
  which turns positive multiples of 0xffff into 0xffff and leaves 0 for
  an all-zero (or empty) buffer, just like folding carries would.

Large buffers are converted in slices of a few KiB whose integers are
added up before the single remainder: this stays exact (each slice has
an even length, so the weights still leave a remainder of 1) and halves
the time of one remainder taken on a 64 KiB integer.

"Unfolded" sums, as returned by ``csum_unfolded()`` and the pseudo-header
helpers, are non-negative integers that may exceed 16 bits; they can be
added together and passed as ``init`` to further calls, and only
``csum_fold()`` brings them down to 16 bits.  When a message is summed
in pieces, every piece but the last must have an even length.

UDP over IPv4 is sent without a checksum, as upstream does (it is
optional there); for IPv6 it is mandatory and a computed value of 0 is
sent as 0xffff (RFC 768, RFC 8200 8.1).
"""

_from_bytes = int.from_bytes

# Slices used by _sum_large(): big enough that the per-slice cost does not
# matter, small enough that the final remainder is cheap
_CHUNK = 4096
_LARGE = 2 * _CHUNK

# UDP checksums are optional over IPv4: upstream leaves them at zero
UDP4_REAL_CHECKSUMS = False

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

_IP_DF = 0x4000


def _sum_large(buf):
    """Unfolded sum of a large even-length buffer, slice by slice."""
    m = memoryview(buf)
    s = 0
    for i in range(0, len(m), _CHUNK):
        s += _from_bytes(m[i:i + _CHUNK], "big")
    return s


def _sum(buf):
    """Unfolded ones' complement sum of ``buf``, reduced to 0..0xffff.

    The result is 0 only if every byte is zero.
    """
    n = len(buf)
    if n > _LARGE:
        if n & 1:
            m = memoryview(buf)
            s = _sum_large(m[:n - 1]) + (m[n - 1] << 8)
        else:
            s = _sum_large(buf)
    elif n & 1:
        s = _from_bytes(buf, "big") << 8
    else:
        s = _from_bytes(buf, "big")

    if s:
        return (s - 1) % 0xffff + 1
    return 0


def csum_fold(s):
    """Fold an unfolded sum into 16 bits, without complementing it.

    Equivalent to adding the carries back until nothing is left above
    bit 15: the result is 0 only for a sum of 0, and positive multiples
    of 0xffff give 0xffff.
    """
    if s:
        return (s - 1) % 0xffff + 1
    return 0


def csum_unfolded(buf, init=0):
    """Unfolded sum of ``buf`` (any bytes-like object) plus ``init``."""
    return _sum(buf) + init


def csum(buf, init=0):
    """Checksum of ``buf``: the folded, complemented 16-bit sum, starting
    from the unfolded sum ``init``."""
    return ~csum_fold(_sum(buf) + init) & 0xffff


def csum_unaligned(buf, init=0):
    """Same as ``csum()``: Python has no alignment constraints."""
    return ~csum_fold(_sum(buf) + init) & 0xffff


def csum_iov(bufs, init=0):
    """Checksum over the concatenation of the buffers in ``bufs``.

    Every buffer but the last must have an even length.
    """
    s = init
    for b in bufs:
        s += _sum(b)
    return ~csum_fold(s) & 0xffff


def _addr_sum(a):
    """Sum of the 16-bit words of a packed 4- or 16-byte address."""
    return _sum(a)


def _sum_without_check(ih, payload):
    """Unfolded sum of header ``ih`` followed by ``payload``, with the
    16-bit field at offset 2 (the checksum) counted as zero."""
    ih = bytes(ih)
    if len(ih) & 1 == 0:
        return _sum(ih[:2]) + _sum(ih[4:]) + _sum(payload)
    return _sum(ih[:2] + b"\0\0" + ih[4:] + bytes(payload))


def csum_ip4_header(l3len, protocol, saddr, daddr):
    """Checksum of the IPv4 header that ``ip.ip4_hdr()`` builds by default:
    no options, TOS 0, identification 0, "don't fragment", TTL 255.

    ``l3len`` is the total length, ``saddr``/``daddr`` packed 4-byte
    addresses.
    """
    s = 0x4500 + _IP_DF + (0xff00 | protocol) + l3len
    s += _addr_sum(saddr) + _addr_sum(daddr)
    return ~csum_fold(s) & 0xffff


def proto_ipv4_header_psum(l4len, protocol, saddr, daddr):
    """Unfolded sum of the IPv4 pseudo-header (addresses, protocol and
    layer-4 length) used by TCP and UDP checksums."""
    return protocol + l4len + _addr_sum(saddr) + _addr_sum(daddr)


def proto_ipv6_header_psum(l4len, protocol, saddr, daddr):
    """Unfolded sum of the IPv6 pseudo-header (RFC 8200, 8.1), for
    packed 16-byte addresses."""
    return protocol + l4len + _addr_sum(saddr) + _addr_sum(daddr)


def csum_udp4(uh, saddr, daddr, payload, real=None):
    """Checksum to place in the UDP header ``uh`` (8 bytes, its checksum
    field ignored) of a datagram over IPv4 carrying ``payload``.

    Returns 0 (no checksum) unless ``real`` is true, or, when ``real`` is
    not given, unless ``UDP4_REAL_CHECKSUMS`` is set.
    """
    if real is None:
        real = UDP4_REAL_CHECKSUMS
    if not real:
        return 0

    l4len = 8 + len(payload)
    s = proto_ipv4_header_psum(l4len, IPPROTO_UDP, saddr, daddr)
    s += _sum(bytes(uh[:6]))
    return ~csum_fold(_sum(payload) + s) & 0xffff or 0xffff


def csum_udp6(uh, saddr, daddr, payload):
    """Checksum to place in the UDP header ``uh`` (8 bytes, its checksum
    field ignored) of a datagram over IPv6 carrying ``payload``; never 0.
    """
    l4len = 8 + len(payload)
    s = proto_ipv6_header_psum(l4len, IPPROTO_UDP, saddr, daddr)
    s += _sum(bytes(uh[:6]))
    return ~csum_fold(_sum(payload) + s) & 0xffff or 0xffff


def csum_icmp4(ih, payload=b""):
    """Checksum to place in the ICMP header ``ih`` (its checksum field,
    bytes 2-3, ignored) followed by ``payload``.

    ICMP over IPv4 has no pseudo-header.  ``ih`` may also be the whole
    message, with an empty ``payload``.
    """
    return ~csum_fold(_sum_without_check(ih, payload)) & 0xffff


def csum_icmp6(ih, saddr, daddr, payload=b""):
    """Checksum to place in the ICMPv6 header ``ih`` (its checksum field,
    bytes 2-3, ignored) followed by ``payload``, sent from ``saddr`` to
    ``daddr`` (packed 16-byte addresses).

    ``ih`` may also be the whole message, with an empty ``payload``.
    """
    l4len = len(ih) + len(payload)
    s = proto_ipv6_header_psum(l4len, IPPROTO_ICMPV6, saddr, daddr)
    return ~csum_fold(_sum_without_check(ih, payload) + s) & 0xffff
