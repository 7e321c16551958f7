# SPDX-License-Identifier: GPL-2.0-or-later
"""A minimal DHCPv6 server (RFC 8415) for the guest.

Theory of operation
-------------------

As for DHCP over IPv4 there is one client and one address,
``c.ip6.addr`` as it was when ``dhcpv6_init()`` ran, so nothing is
remembered between messages.  Our server DUID is of the link-layer
address plus time type (DUID-LLT): Ethernet, the seconds since
2000-01-01 at start-up, our MAC address.

Client messages are answered as follows; anything else, and messages
sent to a unicast address, are dropped:

- SOLICIT (without a server identifier): ADVERTISE.  Rapid commit is
  not offered, so the client goes on with a REQUEST;
- REQUEST and RENEW naming our server identifier, CONFIRM naming none:
  REPLY, except when one of the client's identity associations (IA_NA
  or IA_TA) holds an address other than ours, which gets a REPLY whose
  IA carries a NotOnLink status (RFC 8415, 18.3.2 and 18.3.3);
- REBIND: REPLY, but only if it names our server identifier (as
  upstream does; RFC 8415 clients leave it out, so in practice they
  fall back to SOLICIT when their lease would run out, which it never
  does: every lifetime is infinite);
- INFORMATION-REQUEST without identity associations, naming no server
  or ours: REPLY.

Every ADVERTISE and REPLY carries, in this order: our server
identifier; an IA_NA with the client's IAID (or the one seen last),
infinite T1 and T2, holding our address for the client with infinite
lifetimes; the client's identifier, copied; the DNS servers (option 23)
unless ``--no-dhcp-dns``; the search domains (option 24) unless
``--no-dhcp-search``; the client FQDN (option 39, RFC 4704) from
``--fqdn``, with the "O" flag set when the client asked us to update
DNS ourselves (we do not, so we override its "S" flag).

Where upstream's code reads the client's FQDN flags it wants some 250
bytes of message after the option start, so in practice it never sets
"O"; here the flag is read from the option itself.  Addresses are looked
for inside each identity association only (upstream's search runs on
into the options after it), and the NotOnLink answer to an IA_TA
carries an IA_TA of the right length.  Otherwise replies match
upstream's byte for byte.

Replies go from our link-local address, port 547, to the client's
address, port 546, with part of the transaction ID as flow label.
Options are parsed strictly: the walk stops at the first option that
runs past the end of the message, and options of a known type with a
wrong length make the whole message be dropped.
"""

import ipaddress
import struct
import time

from pasta import log

OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_IA_NA = 3
OPT_IA_TA = 4
OPT_IAAADR = 5
OPT_STATUS_CODE = 13
STATUS_NOTONLINK = 4
OPT_DNS_SERVERS = 23
OPT_DNS_SEARCH = 24
OPT_CLIENT_FQDN = 39
STR_NOTONLINK = b"Prefix not appropriate for link."

TYPE_SOLICIT = 1
TYPE_ADVERTISE = 2
TYPE_REQUEST = 3
TYPE_CONFIRM = 4
TYPE_RENEW = 5
TYPE_REBIND = 6
TYPE_REPLY = 7
TYPE_RELEASE = 8
TYPE_DECLINE = 9
TYPE_INFORMATION_REQUEST = 11

DUID_TYPE_LLT = 1
ARPHRD_ETHER = 1

DHCPV6_SERVER_PORT = 547
DHCPV6_CLIENT_PORT = 546

MAXNS = 3
CLIENT_ID_MAX = 128             # DUID length, RFC 8415, 11.1
SERVER_ID_LEN = 14              # DUID-LLT for Ethernet
IA_NA_LEN = 12                  # IAID, T1, T2
IA_TA_LEN = 4                   # IAID
IA_ADDR_LEN = 24                # address, preferred and valid lifetimes

# What fits in a minimum-MTU IPv6 packet after the IPv6, UDP and DHCPv6
# message headers
OPT_MAX_SIZE = 1280 - (40 + 8 + 4)

Y2K = 946684800                 # the epoch of DUID-LLT times

_OPT_HDR = struct.Struct("!HH")
_SERVER_ID = struct.Struct("!HHHHI6s")
_IA_NA = struct.Struct("!HH4sII")
_IA_ADDR = struct.Struct("!HH16sII")
_STATUS = struct.Struct("!HHH")

# Set by dhcpv6_init(): our server identifier option (header included),
# the address we hand out, and the IAID seen last.  Until a client sends
# one, the IAID is what upstream's initialiser leaves in memory on a
# little-endian machine.
server_id = _SERVER_ID.pack(OPT_SERVERID, SERVER_ID_LEN, DUID_TYPE_LLT,
                            ARPHRD_ETHER, 0, bytes(6))
lease_addr = bytes(16)
last_iaid = (1).to_bytes(4, "little")


def dhcpv6_server_id(mac, now=None):
    """Server identifier option, header included, with a DUID-LLT of
    ``mac`` and time ``now`` (seconds since the Unix epoch)."""
    if now is None:
        now = time.time()
    t = int(now - Y2K) & 0xffffffff
    return _SERVER_ID.pack(OPT_SERVERID, SERVER_ID_LEN, DUID_TYPE_LLT,
                           ARPHRD_ETHER, t, bytes(mac))


def dhcpv6_options(data, start=0, end=None):
    """Options in ``data[start:end]`` as a list of ``(code, offset,
    length)``, ``offset`` being that of the option header.

    The walk stops at the first option that does not fit, and at a tail
    too short for an option header."""
    if end is None:
        end = len(data)
    out = []
    i = start
    while i + _OPT_HDR.size <= end:
        code, olen = _OPT_HDR.unpack_from(data, i)
        if i + _OPT_HDR.size + olen > end:
            break
        out.append((code, i, olen))
        i += _OPT_HDR.size + olen
    return out


def dhcpv6_opt(opts, code):
    """The first ``(code, offset, length)`` of type ``code`` in ``opts``,
    or None."""
    for o in opts:
        if o[0] == code:
            return o
    return None


def dhcpv6_ia_notonlink(msg, opts, la):
    """Look for an address other than ``la`` (packed) in the client's
    identity associations.

    ``msg`` holds the options, ``opts`` is their list from
    ``dhcpv6_options()``.  Returns the ``(code, offset, length)`` of the
    first IA_NA or IA_TA holding such an address, or None.  A malformed
    IA or address option ends the search, as if all was well.
    """
    for ia_type, fixed in ((OPT_IA_NA, IA_NA_LEN), (OPT_IA_TA, IA_TA_LEN)):
        for ia in opts:
            code, off, olen = ia
            if code != ia_type:
                continue
            if olen < fixed:
                return None

            body = off + _OPT_HDR.size
            for sub, soff, slen in dhcpv6_options(msg, body + fixed,
                                                  body + olen):
                if sub != OPT_IAAADR:
                    continue
                if slen != IA_ADDR_LEN:
                    return None
                req = bytes(msg[soff + 4:soff + 20])
                if req != la:
                    if log.ratelimit("dhcpv6 notonlink"):
                        log.info("DHCPv6: requested address %s not on link",
                                 ipaddress.IPv6Address(req))
                    return ia
    return None


def dhcpv6_notonlink_msg(sid, msg, ia, client_id, xid):
    """REPLY with a NotOnLink status inside a copy of the client's
    identity association ``ia`` (``(code, offset, length)`` in ``msg``),
    then the client's identifier option ``client_id`` (bytes, header
    included)."""
    code, off, _olen = ia
    fixed = IA_NA_LEN if code == OPT_IA_NA else IA_TA_LEN
    status = _STATUS.pack(OPT_STATUS_CODE, 2 + len(STR_NOTONLINK),
                          STATUS_NOTONLINK) + STR_NOTONLINK
    ia_opt = (_OPT_HDR.pack(code, fixed + len(status)) +
              bytes(msg[off + 4:off + 4 + fixed]) + status)
    return bytes((TYPE_REPLY,)) + xid + sid + ia_opt + client_id


def dhcpv6_dns_fill(c):
    """DNS servers and domain search list options from the context."""
    from pasta.dhcp import encode_domain_name

    out = b""
    if not c.no_dhcp_dns:
        srv = b""
        for a in c.ip6.dns[:MAXNS]:
            if a.packed == bytes(16):
                break
            srv += a.packed
        if srv:
            out += _OPT_HDR.pack(OPT_DNS_SERVERS, len(srv)) + srv

    if not c.no_dhcp_dns_search:
        lst = b""
        for name in c.dns_search:
            enc = encode_domain_name(name)
            if enc is None:
                log.debug("DHCP: DNS search name '%s' too long, skipping",
                          name)
                continue
            if enc == b"\0":
                continue
            lst += enc
        if lst and len(lst) <= 0xffff:
            out += _OPT_HDR.pack(OPT_DNS_SEARCH, len(lst)) + lst

    return out


def dhcpv6_client_fqdn_fill(c, msg, opts, offset):
    """Client FQDN option for a reply whose length so far is ``offset``,
    or b"" if there is no FQDN configured or it does not fit."""
    from pasta.dhcp import encode_domain_name

    if not c.fqdn:
        return b""
    enc = encode_domain_name(c.fqdn)
    if enc is None or \
       len(enc) > OPT_MAX_SIZE - (offset + _OPT_HDR.size + 1):
        log.debug("DHCPv6: client FQDN option doesn't fit, skipping")
        return b""

    flags = 0x00
    req = dhcpv6_opt(opts, OPT_CLIENT_FQDN)
    if req is not None and req[2] >= 1 and msg[req[1] + 4] & 0x01:
        flags = 0x02            # "O": we override the client's "S"

    return _OPT_HDR.pack(OPT_CLIENT_FQDN, 1 + len(enc)) + \
        bytes((flags,)) + enc


def dhcpv6_reply(c, msg):
    """Answer to the DHCPv6 message ``msg`` (what follows the UDP header).

    Returns ``(payload, xid, leased)``: the reply, the 3-byte transaction
    ID and whether the reply hands out our address (False for a NotOnLink
    status), or None if the message is to be dropped.
    """
    global last_iaid

    if len(msg) < 4:
        return None
    mtype = msg[0]
    xid = bytes(msg[1:4])
    opts = dhcpv6_options(msg, 4)

    cid = dhcpv6_opt(opts, OPT_CLIENTID)
    if cid is None or cid[2] > CLIENT_ID_MAX:
        return None
    client_id = bytes(msg[cid[1]:cid[1] + 4 + cid[2]])

    sid = dhcpv6_opt(opts, OPT_SERVERID)
    if sid is not None:
        if sid[2] != SERVER_ID_LEN:
            return None
        sid_ours = bytes(msg[sid[1]:sid[1] + 4 + sid[2]]) == server_id
    else:
        sid_ours = False

    ia = dhcpv6_opt(opts, OPT_IA_NA)
    if ia is not None and ia[2] < min(IA_NA_LEN, IA_TA_LEN):
        return None

    rtype = TYPE_REPLY
    if mtype in (TYPE_REQUEST, TYPE_RENEW, TYPE_CONFIRM):
        if mtype == TYPE_CONFIRM:
            if sid is not None:
                return None
        elif not sid_ours:
            return None

        bad = dhcpv6_ia_notonlink(msg, opts, lease_addr)
        if bad is not None:
            if log.ratelimit("dhcpv6 reply"):
                log.info("DHCPv6: received CONFIRM with inappropriate IA,"
                         " sending NotOnLink status in REPLY")
            return dhcpv6_notonlink_msg(server_id, msg, bad, client_id,
                                        xid), xid, False
        what = "DHCPv6: received REQUEST/RENEW/CONFIRM, sending REPLY"
    elif mtype == TYPE_INFORMATION_REQUEST:
        if sid is not None and not sid_ours:
            return None
        if ia is not None or dhcpv6_opt(opts, OPT_IA_TA) is not None:
            return None
        what = "DHCPv6: received INFORMATION_REQUEST, sending REPLY"
    elif mtype == TYPE_REBIND:
        if not sid_ours:
            return None
        what = "DHCPv6: received REBIND, sending REPLY"
    elif mtype == TYPE_SOLICIT:
        if sid is not None:
            return None
        rtype = TYPE_ADVERTISE
        what = "DHCPv6: received SOLICIT, sending ADVERTISE"
    else:
        return None

    if log.ratelimit("dhcpv6 reply"):
        log.info("%s", what)

    if ia is not None:
        last_iaid = bytes(msg[ia[1] + 4:ia[1] + 8])

    out = bytes((rtype,)) + xid + server_id
    out += _IA_NA.pack(OPT_IA_NA, IA_NA_LEN + 4 + IA_ADDR_LEN, last_iaid,
                       0xffffffff, 0xffffffff)
    out += _IA_ADDR.pack(OPT_IAAADR, IA_ADDR_LEN, lease_addr,
                         0xffffffff, 0xffffffff)
    out += client_id
    out += dhcpv6_dns_fill(c)
    out += dhcpv6_client_fqdn_fill(c, msg, opts, len(out))
    return out, xid, True


def dhcpv6(c, saddr, daddr, udp):
    """Answer the DHCPv6 message in ``udp`` (UDP header and payload, to
    the length of the IPv6 payload) from ``saddr`` to ``daddr`` (packed).

    Returns 0 if it is not for the DHCPv6 server port, 1 if handled, -1
    if malformed or not something we answer.
    """
    from pasta import tap

    if len(udp) < 8:
        return -1
    dport = udp[2] << 8 | udp[3]
    if dport != DHCPV6_SERVER_PORT:
        return 0

    if c.no_dhcpv6:
        return 1

    if daddr[0] != 0xff:
        return -1

    ulen = udp[4] << 8 | udp[5]
    mlen = len(udp) - 8
    if mlen + 8 != ulen or mlen < 4:
        return -1

    r = dhcpv6_reply(c, memoryview(udp)[8:])
    if r is None:
        return -1

    payload, xid, leased = r
    # Upstream reads the 24-bit transaction ID in host (little-endian)
    # order as flow label; keep the same labels on the wire
    flow = int.from_bytes(xid, "little")
    tap.tap_udp6_send(c, c.ip6.our_tap_ll.packed, DHCPV6_SERVER_PORT,
                      bytes(saddr), DHCPV6_CLIENT_PORT, flow, payload)
    if leased:
        c.ip6.addr_seen = c.ip6.addr
    return 1


def dhcpv6_init(c):
    """Build our server DUID from ``c.our_tap_mac`` and the current time,
    and note the address to hand out."""
    global server_id, lease_addr

    server_id = dhcpv6_server_id(c.our_tap_mac)
    lease_addr = c.ip6.addr.packed
