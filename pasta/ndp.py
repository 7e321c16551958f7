# SPDX-License-Identifier: GPL-2.0-or-later
"""NDP: neighbour and router discovery (RFC 4861) towards the guest.

Theory of operation
-------------------

Like ARP for IPv4, neighbour discovery here has no real link behind it:
pasta pretends to be the neighbour owning every address the guest asks
about and the router of the guest's link.

- A Neighbour Solicitation is answered with a Neighbour Advertisement
  for the target address, with the router, solicited and override flags
  set and a target link-layer address option carrying the neighbour
  table's MAC address for it (our own, normally).  Solicitations from
  the unspecified address are duplicate address detection probes and
  get no answer, so the guest can claim its addresses.
- A Router Solicitation is answered with a Router Advertisement, unless
  ``--no-ra`` was given.  The advertisement carries, in this order:
  the managed-configuration flag (so that a DHCPv6 client asks for its
  address too), a router lifetime of 65535 s and a hop limit of 255;
  a prefix information option with the first 64 bits of the guest's
  address, on-link and autonomous (for SLAAC), with infinite lifetimes;
  our link-layer address; the link MTU if one is configured; the DNS
  servers (RDNSS, RFC 8106) unless ``--no-dhcp-dns``, and, only when
  there are servers, the search domains (DNSSL) unless
  ``--no-dhcp-search``.
- ``ndp_timer()`` also sends unsolicited advertisements to all nodes,
  at random intervals between 200 and 600 seconds (RFC 4861, 6.2.1),
  the first one a whole interval after the timer first runs.
- Other ICMPv6 types are left to the ICMP echo code (``ndp()`` returns
  0); router and neighbour advertisements from the guest are swallowed.

Unlike upstream, the prefix information carries the prefix with the bits
past its 64 zeroed, as RFC 4861 requires (upstream copies the whole
address; receivers ignore those bits), and a search list whose encoding
fills a multiple of eight bytes gets no padding (upstream adds eight
bytes the option length does not count).  A solicitation from the
unspecified address is answered to all nodes rather than to "::".

With ``--no-ndp`` nothing is answered at all.  Messages are built by
pure functions (``ndp_na_msg()``, ``ndp_ra_msg()``, ``ndp_ns_msg()``)
and sent through ``tap.tap_icmp6_send()``, which adds the IPv6 header
from our link-local address and fills in the ICMPv6 checksum.
"""

import random
import struct

from pasta import log
from pasta.ip import in6addr_any, in6addr_ll_all_nodes

RT_LIFETIME = 65535

RS = 133
RA = 134
NS = 135
NA = 136

OPT_SRC_L2_ADDR = 1
OPT_TARGET_L2_ADDR = 2
OPT_PREFIX_INFO = 3
OPT_MTU = 5
OPT_RDNSS_TYPE = 25
OPT_DNSSL_TYPE = 31

MAXNS = 3                       # DNS servers announced at most

# Flags in the first byte after the checksum of a neighbour advertisement
NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20

RA_MANAGED = 0x80               # "M": addresses available through DHCPv6

DEFAULT_MAX_RTR_ADV_INTERVAL = 600     # s, RFC 4861, 6.2.1
MIN_DELAY_BETWEEN_RAS = 3              # s, RFC 4861, 10

_ICMP6_HDR = struct.Struct("!BBHI")
# type, code, checksum, hop limit, flags, lifetime, reachable, retrans
_RA_HDR = struct.Struct("!BBHBBHII")
_OPT_L2 = struct.Struct("!BB6s")
_OPT_PREFIX = struct.Struct("!BBBBIII16s")
_OPT_MTU = struct.Struct("!BBHI")
_OPT_LIFETIME = struct.Struct("!BBHI")  # RDNSS and DNSSL headers

NS_LEN = _ICMP6_HDR.size + 16          # 24 bytes

next_ra = None                         # time of the next unsolicited RA


def ndp_na_msg(target, mac):
    """Neighbour Advertisement for ``target`` (packed) owned by ``mac``,
    with the router, solicited and override flags set."""
    flags = (NA_ROUTER | NA_SOLICITED | NA_OVERRIDE) << 24
    return (_ICMP6_HDR.pack(NA, 0, 0, flags) + bytes(target) +
            _OPT_L2.pack(OPT_TARGET_L2_ADDR, 1, mac))


def ndp_ns_msg(target):
    """Neighbour Solicitation for ``target`` (packed), without options."""
    return _ICMP6_HDR.pack(NS, 0, 0, 0) + bytes(target)


def ndp_dnssl_opt(names):
    """DNS Search List option (RFC 8106, 5.2) for the domain names in
    ``names`` (strings), or b"" if none of them can be encoded."""
    from pasta.dhcp import encode_domain_name

    data = b""
    for name in names:
        enc = encode_domain_name(name)
        if enc is None or enc == b"\0":
            continue
        data += enc
    if not data:
        return b""

    data += bytes(-len(data) % 8)
    return _OPT_LIFETIME.pack(OPT_DNSSL_TYPE, 1 + len(data) // 8, 0,
                              0xffffffff) + data


def ndp_ra_msg(prefix, mac, mtu=0, dns=(), dns_search=()):
    """Router Advertisement as described in the module documentation.

    ``prefix`` is the guest's address (packed; the guest uses its first 64
    bits), ``mac`` our MAC address, ``mtu`` the MTU option's value or 0
    for none, ``dns`` packed addresses of DNS servers (at most ``MAXNS``
    are sent), ``dns_search`` domain names, sent only together with
    servers.
    """
    msg = _RA_HDR.pack(RA, 0, 0, 255, RA_MANAGED, RT_LIFETIME, 0, 0)
    # Upstream copies the whole address; RFC 4861, 4.6.2 wants the bits
    # past the prefix length zeroed (receivers ignore them either way)
    prefix = bytes(prefix)[:8] + bytes(8)
    msg += _OPT_PREFIX.pack(OPT_PREFIX_INFO, 4, 64, 0xc0, 0xffffffff,
                            0xffffffff, 0, prefix)
    msg += _OPT_L2.pack(OPT_SRC_L2_ADDR, 1, mac)

    if mtu:
        msg += _OPT_MTU.pack(OPT_MTU, 1, 0, mtu)

    dns = [bytes(a) for a in dns][:MAXNS]
    if dns:
        msg += _OPT_LIFETIME.pack(OPT_RDNSS_TYPE, 1 + 2 * len(dns), 0,
                                  0xffffffff) + b"".join(dns)
        msg += ndp_dnssl_opt(dns_search)

    return msg


def _dns_packed(addrs):
    """Packed addresses from a list of ``IPv6Address``, up to the first
    unspecified one."""
    out = []
    for a in addrs[:MAXNS]:
        p = a.packed
        if p == in6addr_any:
            break
        out.append(p)
    return out


def _neigh_mac(c, addr6):
    """Hardware address to give out for IPv6 address ``addr6``: from the
    neighbour table if the forwarding module has one, else ours."""
    try:
        from pasta import fwd
        get = fwd.fwd_neigh_mac_get
    except (ImportError, AttributeError):
        return c.our_tap_mac

    mac = get(c, bytes(addr6))
    if mac is None or len(mac) != 6:
        return c.our_tap_mac
    return bytes(mac)


def ndp_send(c, dst, msg):
    """Send ICMPv6 message ``msg`` to ``dst`` (packed) from our
    link-local address."""
    from pasta import tap

    tap.tap_icmp6_send(c, c.ip6.our_tap_ll.packed, bytes(dst), msg)


def ndp_na(c, dst, addr):
    """Advertise ``addr`` (packed) to ``dst``.

    The advertisement comes from the address it is about, as a host
    answering for its own address would send it (the C implementation
    always sends from our link-local address).  The kernel accepts both,
    but tools such as ndisc6 only accept an answer from the target
    itself.  Advertisements to all nodes keep our link-local source.
    """
    from pasta import tap

    msg = ndp_na_msg(addr, _neigh_mac(c, addr))
    if addr[0] == 0xff or addr == bytes(16) or dst == in6addr_ll_all_nodes:
        ndp_send(c, dst, msg)
        return
    tap.tap_icmp6_send(c, bytes(addr), bytes(dst), msg)


def ndp_unsolicited_na(c, addr):
    """Advertise ``addr`` (packed, or ``IPv6Address``) to all nodes, if
    the tap interface can send."""
    from pasta import tap

    if tap.tap_is_ready(c):
        addr = addr.packed if hasattr(addr, "packed") else bytes(addr)
        ndp_na(c, in6addr_ll_all_nodes, addr)


def ndp_ra(c, dst):
    """Send our Router Advertisement to ``dst`` (packed)."""
    dns = [] if c.no_dhcp_dns else _dns_packed(c.ip6.dns)
    search = () if c.no_dhcp_dns_search else c.dns_search
    msg = ndp_ra_msg(c.ip6.addr.packed, c.our_tap_mac, c.mtu, dns, search)
    ndp_send(c, dst, msg)


def ndp(c, saddr, icmp6):
    """Answer the solicitation in ICMPv6 message ``icmp6`` from ``saddr``.

    Returns 0 if the message is not a router or neighbour discovery one
    (so it is left to the ICMP code), 1 if it was handled, -1 if it was
    too short.
    """
    if len(icmp6) < _ICMP6_HDR.size:
        return -1

    t = icmp6[0]
    if t < RS or t > NA:
        return 0

    if c.no_ndp:
        return 1

    saddr = bytes(saddr)
    if t == NS:
        if len(icmp6) < NS_LEN:
            return -1
        if saddr == in6addr_any:
            return 1

        if log.ratelimit("ndp ns"):
            log.info("NDP: received NS, sending NA")
        ndp_na(c, saddr, bytes(icmp6[8:24]))
    elif t == RS:
        if c.no_ra:
            return 1

        if log.ratelimit("ndp rs"):
            log.info("NDP: received RS, sending RA")
        # A host without an address yet solicits from ::, answer to all
        ndp_ra(c, in6addr_ll_all_nodes if saddr == in6addr_any else saddr)

    return 1


def ndp_timer(c, now):
    """Send an unsolicited Router Advertisement when it is due.

    ``now`` is ``time.monotonic()``.  The first call only schedules the
    first advertisement.
    """
    from pasta import tap
    global next_ra

    if c.no_ra or (next_ra is not None and now < next_ra) or \
       not tap.tap_is_ready(c):
        return

    max_int = max(min(DEFAULT_MAX_RTR_ADV_INTERVAL, RT_LIFETIME - 1),
                  MIN_DELAY_BETWEEN_RAS)
    min_int = max(max_int // 3, MIN_DELAY_BETWEEN_RAS)
    interval = min_int + random.randrange(max_int - min_int)

    if next_ra is not None:
        log.info("NDP: sending unsolicited RA, next in %ds", interval)
        ndp_ra(c, in6addr_ll_all_nodes)

    next_ra = now + interval


def ndp_send_init_req(c):
    """Solicit the guest's address, so that its advertisement tells us
    its MAC address."""
    log.debug("Sending initial NDP NS request for guest MAC address")
    ndp_send(c, c.ip6.addr.packed, ndp_ns_msg(c.ip6.addr.packed))
