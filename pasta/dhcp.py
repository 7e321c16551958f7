# SPDX-License-Identifier: GPL-2.0-or-later
"""A minimal DHCP server (RFC 2131, RFC 2132) for the guest.

Theory of operation
-------------------

There is exactly one client and one address to hand out, so the server
keeps no leases and no state between messages: every request is answered
from the configuration alone.

- DHCPDISCOVER is answered with DHCPOFFER, or with DHCPACK right away if
  the client asked for Rapid Commit (option 80, RFC 4039), in which case
  the reply carries an empty option 80 too.
- DHCPREQUEST, and BOOTP requests without a message type, are answered
  with DHCPACK, whatever address the client asks for: the address it gets
  is always ``c.ip4.addr``.
- Anything else (DECLINE, RELEASE, INFORM, ...) is dropped.

Replies always carry the subnet mask (1), router (3), lease time (51,
infinite), message type (53) and server identifier (54); the DNS servers
(6), unless ``--no-dhcp-dns``; host name (12) from ``-H``; MTU (26) when
one is configured; client FQDN (81, RFC 4702) from ``--fqdn``; domain
search list (119, RFC 3397, names compressed as in RFC 1035, 4.1.4)
unless ``--no-dhcp-search``; and a classless static route (121, RFC 3442)
to the gateway when the gateway lies outside the guest's subnet.  The
options the client lists in its parameter request list (55) come first,
in its order, then the others in numeric order; the message type goes
first unless the client asked for it somewhere else, since some small
clients look for it there.  The option field is limited to what fits in
a 576-byte message and padded to the 64 bytes BOOTP expects.

A reply goes to the broadcast address if the client set the broadcast
flag, otherwise straight to the address being handed out.  It is sent
through ``tap.tap_udp4_send()``, from our address on the tap side, port
67, to port 68; at the Ethernet level the destination is always the
guest's MAC address, which is what a broadcast would reach anyway.

Two details differ from upstream on purpose: an option the client lists
twice in its request list is sent once; and the search list is
compressed the RFC 1035 way, a name that ends in labels already written
pointing back at them.  Upstream only points at whole earlier names,
and compares them by prefix, so that "foo.example" after "example.com"
reaches its clients as "foo.example.com".  Where the two agree (names
that share no ending, or end in a whole earlier name) replies match
upstream's byte for byte (``tests/test_dhcp_clients.py`` compares them
when given an upstream binary).

Requests are parsed strictly: a message whose UDP length does not match
the frame, that is shorter than the fixed BOOTP part, or whose options
run past its end, is dropped without an answer.  The parsing and
building functions are pure; ``dhcp()`` only glues them to the context.
"""

import struct

from pasta import log
from pasta.ip import ETH_HLEN, UDP_HDR, in4addr_any, in4addr_broadcast

DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8
DHCPFORCERENEW = 9

BOOTREQUEST = 1
BOOTREPLY = 2

FLAG_BROADCAST = 0x8000

OPT_MIN = 60        # RFC 951: the vendor field is at least 64 bytes
OPT_MAX = 307       # 576 bytes (RFC 2131) less the fixed part, less "end"

OPT_PAD = 0
OPT_END = 255

MAXNS = 3           # DNS servers sent at most

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68

# Fixed part of a BOOTP message: op, htype, hlen, hops, xid, secs, flags,
# ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file, magic cookie
MSG_HDR = struct.Struct("!BBBB4sHH4s4s4s4s16s64s128s4s")
MSG_HDR_LEN = MSG_HDR.size          # 240

MAGIC_COOKIE = b"\x63\x82\x53\x63"


def encode_domain_name(name):
    """Domain name ``name`` (a string, a trailing dot allowed) in the
    wire format of RFC 1035, 3.1: length-prefixed labels and a final zero
    byte.  Returns None if a label is empty or longer than 63 bytes, or
    the whole name longer than 255 bytes."""
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return b"\0"

    out = bytearray()
    for label in name.split("."):
        lb = label.encode("utf-8", "replace")
        if not lb or len(lb) > 63:
            return None
        out.append(len(lb))
        out += lb
    out.append(0)

    if len(out) > 255:
        return None
    return bytes(out)


def dhcp_parse_options(data):
    """Options of a DHCP message, from ``data`` (what follows the magic
    cookie), as a dict mapping code to value bytes.

    Pad options are skipped, parsing stops at the end option or at the
    end of ``data``.  If an option appears more than once the last one
    counts.  Returns None if a length byte is missing or an option runs
    past the end of ``data``.
    """
    opts = {}
    n = len(data)
    i = 0
    while i < n:
        t = data[i]
        if t == OPT_END:
            break
        if t == OPT_PAD:
            i += 1
            continue
        if i + 1 >= n:
            return None
        olen = data[i + 1]
        if i + 2 + olen > n:
            return None
        opts[t] = bytes(data[i + 2:i + 2 + olen])
        i += 2 + olen
    return opts


def _dns_search_compress(names, max_len):
    """Encoded domain search list (option 119) for ``names``, names that
    repeat the end of an earlier one pointing back to it (RFC 1035,
    4.1.4).  Names are added in order as long as they fit in ``max_len``
    bytes; the first one that does not ends the list."""
    out = bytearray()
    suffixes = {}               # tuple of labels -> offset in out

    for name in names:
        if encode_domain_name(name) in (None, b"\0"):
            continue
        labels = tuple(name.rstrip(".").split("."))

        enc = bytearray()
        offsets = []
        for i in range(len(labels)):
            ptr = suffixes.get(labels[i:])
            if ptr is not None:
                enc += bytes((0xc0 | (ptr >> 8), ptr & 0xff))
                break
            offsets.append((labels[i:], len(out) + len(enc)))
            lb = labels[i].encode("utf-8", "replace")
            enc.append(len(lb))
            enc += lb
        else:
            enc.append(0)

        if len(out) + len(enc) > max_len:
            break

        for key, off in offsets:
            if off < 0x3fff:
                suffixes.setdefault(key, off)
        out += enc

    return bytes(out)


def dhcp_server_options(c, msg_type, rapid_commit=False):
    """Options the server sends, as a dict mapping code to value, for a
    reply of type ``msg_type`` built from the context ``c``."""
    opts = {}

    plen = c.ip4.prefix_len
    mask = (0xffffffff << (32 - plen)) & 0xffffffff if plen else 0
    opts[1] = mask.to_bytes(4, "big")
    opts[3] = c.ip4.guest_gw.packed
    opts[51] = b"\xff\xff\xff\xff"
    opts[53] = bytes((msg_type,))
    opts[54] = c.ip4.our_tap_addr.packed

    if rapid_commit:
        opts[80] = b""

    addr = int(c.ip4.addr)
    gw = int(c.ip4.guest_gw)
    if addr & mask != gw & mask:
        # gateway/32 through 0.0.0.0, then default route through gateway
        g = c.ip4.guest_gw.packed
        opts[121] = bytes((32,)) + g + in4addr_any + b"\0" + g

    if c.mtu:
        opts[26] = (c.mtu & 0xffff).to_bytes(2, "big")

    if not c.no_dhcp_dns:
        dns = b""
        for a in c.ip4.dns[:MAXNS]:
            if a.packed == in4addr_any:
                break
            dns += a.packed
        if dns:
            opts[6] = dns

    if c.hostname:
        h = c.hostname.encode("utf-8", "replace")[:255]
        opts[12] = h

    if c.fqdn:
        enc = encode_domain_name(c.fqdn)
        if enc is not None and len(enc) + 3 <= 255:
            # flags: E (canonical wire format), RCODE1 and RCODE2 = 255
            opts[81] = b"\x04\xff\xff" + enc
        else:
            log.debug("DHCP: client FQDN option doesn't fit, skipping")

    if not c.no_dhcp_dns_search and c.dns_search:
        used = sum(2 + len(v) for v in opts.values())
        room = min(255, OPT_MAX - used - 2)
        if room > 0:
            s = _dns_search_compress(c.dns_search, room)
            if s:
                opts[119] = s

    return opts


def dhcp_fill(server_opts, requested):
    """Option field of a reply: the options in ``server_opts`` (code ->
    value), those listed in ``requested`` (the client's option 55, bytes,
    or None) first, the end option, padding to ``OPT_MIN``."""
    out = bytearray()
    sent = set()

    def fill_one(o):
        v = server_opts[o]
        if len(out) + 2 + len(v) > OPT_MAX:
            log.debug("DHCP: skipping option %d", o)
            return
        out.append(o)
        out.append(len(v))
        out.extend(v)
        sent.add(o)

    if requested and 53 not in requested:
        fill_one(53)

    for o in requested or b"":
        if o in server_opts and o not in sent:
            fill_one(o)

    for o in sorted(server_opts):
        if o not in sent:
            fill_one(o)

    out.append(OPT_END)
    if len(out) < OPT_MIN:
        out += bytes(OPT_MIN - len(out))
    return bytes(out)


def dhcp_reply(c, msg):
    """Reply to the BOOTP/DHCP message ``msg`` (what follows the UDP
    header), as ``(payload, dst)`` with ``dst`` the packed destination
    address, or None if the message is to be dropped."""
    if len(msg) < MSG_HDR_LEN:
        return None

    (op, htype, hlen, _hops, xid, _secs, flags, ciaddr, _yiaddr, _siaddr,
     giaddr, chaddr, _sname, _file, magic) = MSG_HDR.unpack_from(msg, 0)
    if op != BOOTREQUEST:
        return None

    copts = dhcp_parse_options(msg[MSG_HDR_LEN:])
    if copts is None:
        return None

    mtype = copts.get(53)
    rapid = False
    if mtype and mtype[0] == DHCPDISCOVER:
        if 80 not in copts:
            reply_type = DHCPOFFER
            what = "DHCP: offer to discover"
        else:
            reply_type = DHCPACK
            rapid = True
            what = "DHCP: ack to discover (Rapid Commit)"
    elif not mtype or mtype[0] == DHCPREQUEST:
        reply_type = DHCPACK
        what = "%s: ack to request" % ("DHCP" if mtype else "BOOTP")
    else:
        return None

    if log.ratelimit("dhcp reply"):
        log.info("%s", what)
        log.info("    from %s", ":".join("%02x" % b for b in chaddr[:6]))

    hdr = MSG_HDR.pack(BOOTREPLY, htype, hlen, 0, xid, 0, flags, ciaddr,
                       c.ip4.addr.packed, in4addr_any, giaddr, chaddr,
                       bytes(64), bytes(128), magic)
    sopts = dhcp_server_options(c, reply_type, rapid)
    payload = hdr + dhcp_fill(sopts, copts.get(55))

    if flags & FLAG_BROADCAST:
        dst = in4addr_broadcast
    else:
        dst = c.ip4.addr.packed
    return payload, dst


def dhcp(c, frame):
    """Answer the DHCP request in the Ethernet frame ``frame`` (IPv4,
    UDP), trimmed to the IP packet's length.

    Returns 0 if the datagram is not for the DHCP server port, 1 if it
    was handled, -1 if it was malformed or not something we answer.
    """
    from pasta import tap

    n = len(frame)
    if n < ETH_HLEN + 20:
        return -1
    ihl = (frame[ETH_HLEN] & 0x0f) * 4
    if ihl < 20:
        return -1
    uoff = ETH_HLEN + ihl
    if uoff + UDP_HDR.size > n:
        return -1

    _sport, dport, ulen, _check = UDP_HDR.unpack_from(frame, uoff)
    if dport != DHCP_SERVER_PORT:
        return 0

    if c.no_dhcp:
        return 1

    moff = uoff + UDP_HDR.size
    if n - moff != ulen - UDP_HDR.size:
        return -1

    r = dhcp_reply(c, memoryview(frame)[moff:])
    if r is None:
        return -1

    payload, dst = r
    tap.tap_udp4_send(c, c.ip4.our_tap_addr.packed, DHCP_SERVER_PORT, dst,
                      DHCP_CLIENT_PORT, payload)
    return 1


def dhcp_init(c=None):
    """Nothing to prepare: replies are built from the context each time.
    Kept for the start-up sequence, which calls it as upstream does."""
    return None
