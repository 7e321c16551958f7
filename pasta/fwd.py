# SPDX-License-Identifier: GPL-2.0-or-later
"""Port forwarding: where a new flow goes, and the sockets that accept them.

Theory of operation
===================

Every flow has an initiating side and a target side.  When a flow starts,
the flow table (``flow.py``) knows the initiating side and asks this module
where the flow goes: which pif the target side is on, and the addresses
and ports to use there.  That decision is a pure function of the
configuration, the matching forwarding rule and the initiating side, one
function per initiating pif:

- ``fwd_nat_from_tap()``: the guest opened it.  It goes to the host.  The
  address standing for the host's loopback (by default the guest's
  gateway, ``--map-host-loopback``) becomes 127.0.0.1 or ::1, the address
  standing for the guest itself (``--map-guest-addr``) becomes the
  guest's address as the host knows it, DNS queries to ``--dns-forward``
  go to the host's resolver, the source address is ``-o`` (or the
  kernel's choice) and the source port is the kernel's choice (kept for
  UDP).
- ``fwd_nat_from_splice()``: a socket in the namespace accepted it (-T,
  -U).  Only loopback flows qualify; they go to the host's loopback, to
  the rule's target port.
- ``fwd_nat_from_host()``: a socket on the host accepted it (-t, -u).
  Loopback sources are spliced into the namespace (the target is then a
  socket in the namespace, not the tap device) unless ``--no-splice``;
  other sources go through the tap device with their address translated
  by ``nat_inbound()``, or nowhere in ``--splice-only`` mode.

Flow sides are passed by convention rather than type: any object with the
attributes of upstream's ``struct flowside`` -- ``eaddr``, ``eport``
(the endpoint, the far end as seen from that side) and ``oaddr``,
``oport`` (our own address and port on that side) -- where addresses are
16-byte inany ``bytes`` (see ``inany.py``) and ports ints;
``flow.FlowSide`` is one.  The NAT functions read ``ini`` and fill all
four attributes of ``tgt``, and return the target pif, ``PIF_NONE`` for
a flow that must not be forwarded.

Listening sockets: for every rule of ``c.fwd[PIF_HOST]`` (-t, -u) there is
one listening socket per port on the host, and for ``c.fwd[PIF_SPLICE]``
(-T, -U) one per port in the namespace, created there by the socket helper
(``util.ns_socket()``) since this process never enters the namespace.
Each is in the epoll set with an ``EpollRef`` of type ``TCP_LISTEN`` or
``UDP_LISTEN`` whose ``listen`` is a ``FwdListenRef`` (port, pif, rule
index) and whose ``data`` is the ``socket.socket`` itself.

Automatic forwarding ("auto"): rules with ``FWD_SCAN`` listen only on the
ports that something listens on at the other side.  Once a second,
``fwd_scan_ports_timer()`` reads the listening sockets from
``/proc/net/{tcp,tcp6,udp,udp6}`` -- of the namespace for -t/-u, of the
host for -T/-U -- leaving out the ports this process listens on itself at
that other side (or every forwarded port would see itself), and opens or
closes sockets to match.  A UDP auto rule also follows TCP listeners of
the same port number (iperf3 and other protocols pair them).  The
namespace's files are opened once, by a short-lived child inside it, and
the descriptors passed back keep showing that namespace.  Unlike
upstream, the once-a-second pass only revisits scanning rules: ports of
other rules that could not be listened on at start-up (weak rules such as
"all") are not retried every second.

The neighbour table (``fwd_neigh_*``) remembers which MAC address the
guest should see for each host-side address, for ARP and NDP.
"""

import errno
import os
import select
import socket

from pasta import log
from pasta.epoll_ctl import EpollRef, EpollType, epoll_add, epoll_del
from pasta import fwd_rule
from pasta.fwd_rule import FWD_SCAN, FWD_WEAK, fwd_rule_addr, ipproto_name
from pasta.inany import (inany_any4, inany_any6, inany_from_v4,
                         inany_is_linklocal6, inany_is_loopback,
                         inany_is_multicast, inany_is_unspecified,
                         inany_loopback4, inany_loopback6, inany_matches,
                         inany_ntop, inany_v4)
from pasta.pif import (PIF_HOST, PIF_NONE, PIF_SPLICE, PIF_TAP,
                       pif_is_socket, pif_name, pif_sockaddr)

# Upstream keeps these in fwd.c: reachable under both module names
fwd_rule_init = fwd_rule.fwd_rule_init
fwd_rule_parse = fwd_rule.fwd_rule_parse
fwd_probe_ephemeral = fwd_rule.fwd_probe_ephemeral
FwdRule = fwd_rule.FwdRule
FwdTable = fwd_rule.FwdTable

FWD_NO_HINT = -1
FWD_PORT_SCAN_INTERVAL = 1.0        # seconds

IPPROTO_TCP = socket.IPPROTO_TCP
IPPROTO_UDP = socket.IPPROTO_UDP

_IP_FREEBIND = 15
_IPV6_FREEBIND = 78
_IPV6_RECVERR = 25
_IP_RECVERR = 11
_IP_PKTINFO = 8

# Listening states in /proc/net/*, from the kernel's tcp_states.h
UDP_LISTEN = 0x07
TCP_LISTEN = 0x0a

_IN4_LOOPBACK = b"\x7f\0\0\x01"


class FwdListenRef:
    """What a listening socket is for (``struct fwd_listen_ref``): the
    port it is bound to, its pif and the index of its rule in
    ``c.fwd[pif].rules`` (a hint for ``fwd_rule_search()``)."""

    __slots__ = ("port", "pif", "rule")

    def __init__(self, port, pif, rule):
        self.port = port
        self.pif = pif
        self.rule = rule

    def __repr__(self):
        return "FwdListenRef(%s port %d, rule %d)" % (
            pif_name(self.pif), self.port, self.rule)


class FwdScan:
    """Port scanning state for one protocol and direction (``struct
    fwd_scan``): descriptors of the IPv4 and IPv6 ``/proc/net`` files and
    the set of ports found listening (less our own)."""

    def __init__(self):
        self.scan4 = -1
        self.scan6 = -1
        self.map = set()


def _scan_state(c):
    """The four scanning states of ``c``, created on first use: keys
    ``(proto, "in")`` (namespace's ports, for -t/-u) and ``(proto,
    "out")`` (host's ports, for -T/-U).

    They live in ``c.fwd_scan`` rather than in ``c.tcp``/``c.udp`` as
    upstream, because those are created later by their own modules.
    """
    s = getattr(c, "fwd_scan", None)
    if s is None:
        s = c.fwd_scan = {(p, d): FwdScan()
                          for p in (IPPROTO_TCP, IPPROTO_UDP)
                          for d in ("in", "out")}
    return s


def _in4(a):
    """Packed 4 bytes of an IPv4 address from the context."""
    return a.packed


def _in6(a):
    return a.packed


def _is4(a):
    return inany_v4(a) is not None


# Rules and flows

def fwd_rule_match(rule, ini, proto):
    """Does the rule cover a new flow whose initiating side is ``ini``?"""
    return (rule.proto == proto and
            inany_matches(ini.oaddr, fwd_rule_addr(rule)) and
            rule.first <= ini.oport <= rule.last)


def fwd_rule_search(fwd, ini, proto, hint=FWD_NO_HINT):
    """The first rule of table ``fwd`` covering the flow, or None.

    ``hint`` is the index of the rule a listening socket belongs to: then
    only that rule is checked.
    """
    if hint is not None and hint >= 0:
        if hint >= len(fwd.rules):
            return None
        rule = fwd.rules[hint]
        if fwd_rule_match(rule, ini, proto):
            return rule
        log.debug("Incorrect rule hint: %s:%d does not match %s:%d-%d",
                  inany_ntop(ini.oaddr), ini.oport,
                  inany_ntop(fwd_rule_addr(rule)), rule.first, rule.last)
        return None

    for rule in fwd.rules:
        if fwd_rule_match(rule, ini, proto):
            return rule
    return None


def is_dns_flow(proto, ini):
    """A TCP or UDP flow to port 53 or 853?"""
    return proto in (IPPROTO_TCP, IPPROTO_UDP) and ini.oport in (53, 853)


def fwd_guest_accessible4(c, a4):
    """Can the guest reach host address ``a4`` (packed) untranslated?"""
    if a4[0] == 127:
        return False
    if a4 == bytes(4):          # "this host" on the wire: ambiguous
        return False
    if a4 == _in4(c.ip4.addr) or a4 == _in4(c.ip4.addr_seen):
        return False
    return True


def fwd_guest_accessible6(c, a6):
    """Can the guest reach host address ``a6`` (packed) untranslated?"""
    if a6 == inany_loopback6:
        return False
    if a6 == _in6(c.ip6.addr):
        return False
    seen = _in6(c.ip6.addr_seen)
    if seen != bytes(16) and a6 == seen:
        return False
    return True


def fwd_guest_accessible(c, addr):
    """Can the guest reach host address ``addr`` (inany) untranslated,
    that is, is it neither loopback nor one of the guest's own?"""
    a4 = inany_v4(addr)
    if a4 is not None:
        return fwd_guest_accessible4(c, a4)
    return fwd_guest_accessible6(c, addr)


def _equals4(addr, ctx_addr):
    """``addr`` (inany) is the set (not unspecified) IPv4 ``ctx_addr``."""
    p = ctx_addr.packed
    return p != bytes(4) and inany_v4(addr) == p


def _equals6(addr, ctx_addr):
    p = ctx_addr.packed
    return p != bytes(16) and addr == p


def nat_outbound(c, addr):
    """Translate a destination address as the guest sees it into the one
    the host sees (address-only rules); returns the new inany."""
    if _equals4(addr, c.ip4.map_host_loopback):
        return inany_loopback4
    if _equals6(addr, c.ip6.map_host_loopback):
        return inany_loopback6
    if _equals4(addr, c.ip4.map_guest_addr):
        return inany_from_v4(_in4(c.ip4.addr))
    if _equals6(addr, c.ip6.map_guest_addr):
        return _in6(c.ip6.addr)
    return addr


def nat_inbound(c, addr):
    """Translate a source address seen on the host into the one the guest
    should see; returns the new inany, or None if the guest cannot be
    shown this address."""
    if (c.ip4.map_host_loopback.packed != bytes(4) and
            inany_v4(addr) == _IN4_LOOPBACK):
        # 127.0.0.1 only, not the whole of 127.0.0.0/8
        return inany_from_v4(_in4(c.ip4.map_host_loopback))
    if (c.ip6.map_host_loopback.packed != bytes(16) and
            addr == inany_loopback6):
        return _in6(c.ip6.map_host_loopback)
    if (c.ip4.map_guest_addr.packed != bytes(4) and
            _equals4(addr, c.ip4.addr)):
        return inany_from_v4(_in4(c.ip4.map_guest_addr))
    if (c.ip6.map_guest_addr.packed != bytes(16) and
            _equals6(addr, c.ip6.addr)):
        return _in6(c.ip6.map_guest_addr)
    if fwd_guest_accessible(c, addr):
        return addr
    return None


def fwd_nat_from_tap(c, proto, ini, tgt):
    """Decide where a flow the guest initiated goes: always the host.
    Fills ``tgt`` and returns ``PIF_HOST``."""
    if is_dns_flow(proto, ini) and _equals4(ini.oaddr, c.ip4.dns_match):
        tgt.eaddr = inany_from_v4(_in4(c.ip4.dns_host))
    elif is_dns_flow(proto, ini) and _equals6(ini.oaddr, c.ip6.dns_match):
        tgt.eaddr = _in6(c.ip6.dns_host)
    else:
        tgt.eaddr = nat_outbound(c, ini.oaddr)

    tgt.eport = ini.oport

    # -o: our source address on the host, or let the kernel choose
    if _is4(tgt.eaddr):
        tgt.oaddr = inany_from_v4(_in4(c.ip4.addr_out))
    else:
        tgt.oaddr = _in6(c.ip6.addr_out)

    # The kernel picks the source port, except that UDP keeps it
    tgt.oport = ini.eport if proto == IPPROTO_UDP else 0

    return PIF_HOST


def fwd_nat_from_splice(rule, proto, ini, tgt):
    """Decide where a flow accepted in the namespace (-T, -U) goes: loopback
    flows to the host's loopback, at the rule's target port; anything else
    nowhere (``PIF_NONE``)."""
    if not inany_is_loopback(ini.eaddr) or not inany_is_loopback(ini.oaddr):
        log.debug("Non loopback address on %s: [%s]:%d -> [%s]:%d",
                  pif_name(PIF_SPLICE), inany_ntop(ini.eaddr), ini.eport,
                  inany_ntop(ini.oaddr), ini.oport)
        return PIF_NONE

    # Both loopback addresses stay as they are
    tgt.oaddr = ini.eaddr
    tgt.eaddr = ini.oaddr
    tgt.oport = ini.eport if proto == IPPROTO_UDP else 0
    tgt.eport = rule.tport(ini.oport)

    return PIF_HOST


def fwd_default_guest_addr(c, template):
    """The guest's address of the family and scope of ``template``."""
    if _is4(template):
        return inany_from_v4(_in4(c.ip4.addr_seen))
    if inany_is_linklocal6(template):
        return _in6(c.ip6.addr_ll_seen)
    return _in6(c.ip6.addr_seen)


def fwd_nat_from_host(c, rule, proto, ini, tgt):
    """Decide where a flow accepted on the host (-t, -u) goes.

    Loopback sources are spliced (``PIF_SPLICE``): the namespace gets a
    connection from a socket of its own, to the guest's address, or to
    its loopback with ``--host-lo-to-ns-lo``.  Other sources go to the
    guest through the tap (``PIF_TAP``), source address translated by
    ``nat_inbound()``; in ``--splice-only`` mode they go nowhere.
    """
    # Destination address and port: from the rule where it says so
    tgt.eport = rule.tport(ini.oport)
    tgt.eaddr = inany_any6 if not _is4(ini.oaddr) else inany_any4
    if not inany_is_unspecified(rule.taddr):
        tgt.eaddr = rule.taddr
    elif (inany_is_multicast(ini.oaddr) or
          (c.host_lo_to_ns_lo and inany_is_loopback(ini.oaddr))):
        tgt.eaddr = ini.oaddr

    # TODO: splicing to a rule's target address is not supported: such
    # flows take the tap path, as upstream
    if (not c.no_splice and inany_is_unspecified(rule.taddr) and
            inany_is_loopback(ini.eaddr) and
            proto in (IPPROTO_TCP, IPPROTO_UDP)):
        # The kernel in the namespace picks the source address and port
        # (UDP keeps the port); by default the destination is the guest's
        # external address, so that services bound to its loopback only
        # are not exposed unless --host-lo-to-ns-lo says so
        tgt.oaddr = inany_any4 if _is4(ini.eaddr) else inany_any6
        tgt.oport = ini.eport if proto == IPPROTO_UDP else 0
        if inany_is_unspecified(tgt.eaddr):
            tgt.eaddr = fwd_default_guest_addr(c, tgt.oaddr)
        return PIF_SPLICE

    if c.splice_only:
        return PIF_NONE

    oaddr = nat_inbound(c, ini.eaddr)
    if oaddr is None:
        if _is4(ini.eaddr):
            if c.ip4.our_tap_addr.packed == bytes(4):
                return PIF_NONE     # no source address we could use
            oaddr = inany_from_v4(_in4(c.ip4.our_tap_addr))
        else:
            oaddr = _in6(c.ip6.our_tap_ll)
    tgt.oaddr = oaddr
    tgt.oport = ini.eport

    if inany_is_unspecified(tgt.eaddr):
        tgt.eaddr = fwd_default_guest_addr(c, tgt.oaddr)

    return PIF_TAP


# Neighbour table: MAC addresses the guest sees for host-side addresses

def _neigh(c):
    t = getattr(c, "fwd_neigh", None)
    if t is None:
        t = c.fwd_neigh = {}
    return t


NEIGH_TABLE_SIZE = 512


def fwd_neigh_table_update(c, addr, mac, permanent=False):
    """Remember (or update) the MAC address for ``addr`` (inany), and tell
    the guest about it unless it is our own MAC address.  Permanent
    entries never change."""
    t = _neigh(c)
    e = t.get(addr)
    if e is not None:
        if not e[1]:
            t[addr] = (bytes(mac), False)
        return
    if len(t) >= NEIGH_TABLE_SIZE:
        log.debug("Failed to allocate neighbour table entry")
        return
    t[addr] = (bytes(mac), permanent)

    if bytes(mac) == bytes(c.our_tap_mac):
        return
    try:
        a4 = inany_v4(addr)
        if a4 is not None:
            from pasta import arp
            announce = getattr(arp, "arp_announce", None)
            if announce:
                announce(c, a4, bytes(mac))
        else:
            from pasta import ndp
            na = getattr(ndp, "ndp_unsolicited_na", None)
            if na:
                na(c, addr)
    except Exception as e:      # no tap yet, or no such module: not fatal
        log.debug("Can't announce neighbour %s: %r", inany_ntop(addr), e)


def fwd_neigh_table_free(c, addr):
    """Forget the entry for ``addr``, unless it is permanent."""
    t = _neigh(c)
    e = t.get(addr)
    if e is not None and not e[1]:
        del t[addr]


def fwd_neigh_mac_get(c, addr, mac=None):
    """MAC address the guest should see for ``addr``: its entry, else the
    guest gateway's, else our own.  Returns 6 bytes (and copies them into
    ``mac`` if that is a bytearray)."""
    t = _neigh(c)
    e = t.get(addr)
    if e is None:
        if _is4(addr):
            ggw = inany_from_v4(_in4(c.ip4.guest_gw))
        else:
            ggw = _in6(c.ip6.guest_gw)
        e = t.get(ggw)
    res = e[0] if e is not None else bytes(c.our_tap_mac)
    if mac is not None:
        mac[:6] = res
    return res


def fwd_neigh_table_init(c):
    """Empty the table and block the mapped addresses, so that no
    notification makes them point anywhere but at us."""
    c.fwd_neigh = {}
    for a in (c.ip4.map_host_loopback, c.ip4.map_guest_addr):
        if a.packed != bytes(4):
            fwd_neigh_table_update(c, inany_from_v4(a.packed),
                                   c.our_tap_mac, True)
    for a in (c.ip6.map_host_loopback, c.ip6.map_guest_addr):
        if a.packed != bytes(16):
            fwd_neigh_table_update(c, a.packed, c.our_tap_mac, True)


# Listening sockets

def _sock_l4_opts(c, family, proto, ifname, v6only):
    """Socket options for a listening socket, as (level, name, value)."""
    opts = []
    if v6only is not None:
        opts.append((socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only))
    opts.append((socket.SOL_SOCKET, socket.SO_REUSEADDR, 1))
    if proto == IPPROTO_UDP:
        if family == socket.AF_INET:
            opts.append((socket.IPPROTO_IP, _IP_RECVERR, 1))
            opts.append((socket.IPPROTO_IP, _IP_PKTINFO, 1))
        else:
            opts.append((socket.IPPROTO_IPV6, _IPV6_RECVERR, 1))
            opts.append((socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1))
    if ifname:
        opts.append((socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                     os.fsencode(ifname)))
    if c.freebind:
        if family == socket.AF_INET:
            opts.append((socket.IPPROTO_IP, _IP_FREEBIND, 1))
        else:
            opts.append((socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1))
    return opts


def _sock_l4(c, pif, proto, family, sa, ifname, v6only):
    """A bound, non-blocking socket, on the host or (``PIF_SPLICE``) in
    the namespace.  Raises ``OSError``."""
    stype = socket.SOCK_STREAM if proto == IPPROTO_TCP else socket.SOCK_DGRAM
    stype |= socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    opts = _sock_l4_opts(c, family, proto, ifname, v6only)

    if pif == PIF_SPLICE:
        from pasta import util
        s = util.ns_socket(c, family, stype, proto, bind=sa, opts=opts)
        s.setblocking(False)
        return s

    s = socket.socket(family, stype, proto)
    try:
        for level, name, value in opts:
            try:
                s.setsockopt(level, name, value)
            except OSError as e:
                if name == socket.SO_BINDTODEVICE:
                    log.warn("SO_BINDTODEVICE %s failed for %s: %s", ifname,
                             sa, os.strerror(e.errno))
                    raise
                log.debug("Failed to set socket option %d:%d", level, name)
        s.bind(sa)
    except OSError:
        s.close()
        raise
    return s


def pif_listen(c, proto, pif, addr, ifname, port, rule):
    """Open a listening socket for one port of rule index ``rule`` on a
    socket pif, and add it to the epoll set.

    ``addr`` is None for any address of both families.  Returns the
    ``socket.socket``; raises ``OSError`` (``EAFNOSUPPORT`` for a family
    that is disabled).
    """
    assert pif_is_socket(pif)

    if proto == IPPROTO_TCP:
        etype = EpollType.TCP_LISTEN
    elif proto == IPPROTO_UDP:
        etype = EpollType.UDP_LISTEN
    else:
        raise OSError(errno.EPROTONOSUPPORT,
                      os.strerror(errno.EPROTONOSUPPORT))

    if not c.ifi4:
        if addr is None:
            addr = inany_any6
        elif _is4(addr):
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
    if not c.ifi6:
        if addr is None:
            addr = inany_any4
        elif not _is4(addr):
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))

    if addr is None:
        family, sa, v6only = socket.AF_INET6, ("::", port, 0, 0), 0
    else:
        family, sa = pif_sockaddr(c, pif, addr, port)
        v6only = 1 if family == socket.AF_INET6 and \
            inany_is_unspecified(addr) else None

    s = _sock_l4(c, pif, proto, family, sa, ifname, v6only)
    try:
        if proto == IPPROTO_TCP:
            s.listen(128)
        ref = EpollRef(etype, s.fileno(),
                       listen=FwdListenRef(port, pif, rule), data=s)
        epoll_add(c, select.EPOLLIN, ref)
    except OSError:
        s.close()
        raise
    return s


def _close_listen(c, s):
    epoll_del(c, s.fileno())
    s.close()


def fwd_sync_one(c, pif, idx, tcp_map, udp_map, full=True):
    """Open or close listening sockets of rule ``idx`` of ``c.fwd[pif]``
    to match the rule and, for scanning rules, the port sets ``tcp_map``
    and ``udp_map``.  Returns 0, or -1 if a port of a strong rule could
    not be listened on, or no port of a non-scanning rule."""
    fwd = c.fwd[pif]
    rule = fwd.rules[idx]
    socks = fwd.rulesocks[idx]
    addr = fwd_rule_addr(rule)
    ifname = rule.ifname or None
    bound_one = False

    if rule.flags & FWD_SCAN:
        pmap = tcp_map if rule.proto == IPPROTO_TCP else udp_map
        # Stop listening where the other side no longer does
        for port in [p for p in socks if p not in pmap]:
            _close_listen(c, socks.pop(port))
        ports = sorted(p for p in pmap if rule.first <= p <= rule.last)
    elif full:
        ports = range(rule.first, rule.last + 1)
    else:
        return 0

    for port in ports:
        if port in socks:
            bound_one = True
            continue
        try:
            socks[port] = pif_listen(c, rule.proto, pif, addr, ifname,
                                     port, idx)
            bound_one = True
        except OSError as e:
            if not rule.flags & (FWD_WEAK | FWD_SCAN) or log.log_debug:
                log.warn("Listen failed for %s %s port %s%s%s/%d: %s",
                         pif_name(pif), ipproto_name(rule.proto),
                         inany_ntop(addr), "%" if ifname else "",
                         ifname or "", port, e.strerror or e)
            if not rule.flags & FWD_WEAK:
                return -1

    if not bound_one and not rule.flags & FWD_SCAN:
        log.warn("All listens failed for %s %s %s%s%s/%d-%d",
                 pif_name(pif), ipproto_name(rule.proto), inany_ntop(addr),
                 "%" if ifname else "", ifname or "", rule.first, rule.last)
        return -1
    return 0


def fwd_listen_sync(c, pif, tcp, udp, full=True):
    """Bring the listening sockets of ``c.fwd[pif]`` in line with its rules
    and the scanning states ``tcp`` and ``udp`` (``FwdScan``).  With
    ``full`` false, only scanning rules are looked at.  Returns 0 or -1
    (after an error message)."""
    fwd = c.fwd.get(pif)
    if fwd is None:
        return 0
    for i in range(len(fwd.rules)):
        if fwd_sync_one(c, pif, i, tcp.map, udp.map, full) < 0:
            log.err("Couldn't listen on requested ports")
            return -1
    return 0


def fwd_listen_close(c, fwd):
    """Close every listening socket of table ``fwd``."""
    for socks in fwd.rulesocks:
        for s in socks.values():
            _close_listen(c, s)
        socks.clear()


def _fwd_listen_init(c):
    from pasta.passt import MODE_PASTA

    scan = _scan_state(c)
    if fwd_listen_sync(c, PIF_HOST, scan[(IPPROTO_TCP, "in")],
                       scan[(IPPROTO_UDP, "in")]) < 0:
        return -1
    if c.mode == MODE_PASTA:
        if fwd_listen_sync(c, PIF_SPLICE, scan[(IPPROTO_TCP, "out")],
                           scan[(IPPROTO_UDP, "out")]) < 0:
            return -1
    return 0


def fwd_listen_init(c):
    """Open the listening sockets for all rules at start-up; exits with
    status 1 if a rule cannot be honoured, as upstream does."""
    if not c.fwd:
        return 0
    if _fwd_listen_init(c) < 0:
        log.passt_exit(1)
    return 0


def fwd_listen_switch(c):
    """Close the sockets of the current tables, make the pending tables
    current (and the old ones pending) and listen for the new rules."""
    for pif, fwd in c.fwd.items():
        log.debug("Flushing %d old %s rules", len(fwd.rules), pif_name(pif))
        fwd_listen_close(c, fwd)
        fwd.rules.clear()
        fwd.rulesocks.clear()

    c.fwd, c.fwd_pending = c.fwd_pending, c.fwd

    if _fwd_listen_init(c) < 0:
        log.err("Error switching to new forwarding rules")


# Automatic forwarding: scanning /proc/net

_PROC_READ_SIZE = 1 << 20


def procfs_read(fd, cache=None):
    """Whole content of the ``/proc/net`` file open as ``fd`` (b"" if it
    cannot be read).  Generating these files walks the kernel's socket
    hash tables, which costs milliseconds, so a scan reads each file
    once, through ``cache`` (a dict fd -> content), and asks for a lot
    at once: a short read is the end of the file."""
    if cache is not None and fd in cache:
        return cache[fd]
    chunks = []
    off = 0
    try:
        while True:
            b = os.pread(fd, _PROC_READ_SIZE, off)
            chunks.append(b)
            off += len(b)
            if len(b) < _PROC_READ_SIZE:
                break
    except OSError as e:
        log.warn_perror(e, "reading /proc/net file failed")
    data = b"".join(chunks)
    if cache is not None:
        cache[fd] = data
    return data


def procfs_scan_listen(fd, lstate, pmap, cache=None):
    """Add to the set ``pmap`` the local ports of sockets in state
    ``lstate`` listed in the ``/proc/net`` file open as ``fd``."""
    if fd < 0:
        return

    state = b"%02X" % lstate
    lines = procfs_read(fd, cache).split(b"\n")
    for line in lines[1:]:
        f = line.split(None, 4)
        if len(f) < 4 or f[3] != state:
            continue
        local = f[1]
        colon = local.rfind(b":")
        try:
            pmap.add(int(local[colon + 1:], 16))
        except ValueError:
            continue


def _has_scan_rules(fwd, proto):
    return fwd is not None and any(
        r.proto == proto and r.flags & FWD_SCAN for r in fwd.rules)


def current_listen_map(fwd, proto):
    """Set of ports on which table ``fwd`` has listening sockets for
    ``proto``."""
    ports = set()
    if fwd is None:
        return ports
    for rule, socks in zip(fwd.rules, fwd.rulesocks):
        if rule.proto == proto:
            ports.update(socks)
    return ports


def _scan_tcp(fwd, scan, exclude, cache):
    if not _has_scan_rules(fwd, IPPROTO_TCP):
        return
    m = set()
    procfs_scan_listen(scan.scan4, TCP_LISTEN, m, cache)
    procfs_scan_listen(scan.scan6, TCP_LISTEN, m, cache)
    scan.map = m - exclude


def _scan_udp(fwd, scan, tcp_scan, exclude, cache):
    if not _has_scan_rules(fwd, IPPROTO_UDP):
        return
    m = set()
    procfs_scan_listen(scan.scan4, UDP_LISTEN, m, cache)
    procfs_scan_listen(scan.scan6, UDP_LISTEN, m, cache)
    # TCP listeners bring their UDP port along (iperf3 and the like)
    procfs_scan_listen(tcp_scan.scan4, TCP_LISTEN, m, cache)
    procfs_scan_listen(tcp_scan.scan6, TCP_LISTEN, m, cache)
    scan.map = m - exclude


def fwd_scan_ports(c):
    """Refresh the four scanning states from ``/proc/net``."""
    scan = _scan_state(c)
    host = c.fwd.get(PIF_HOST)
    splice = c.fwd.get(PIF_SPLICE)

    excl_tcp_out = current_listen_map(host, IPPROTO_TCP)
    excl_tcp_in = current_listen_map(splice, IPPROTO_TCP)
    excl_udp_out = current_listen_map(host, IPPROTO_UDP)
    excl_udp_in = current_listen_map(splice, IPPROTO_UDP)

    cache = {}
    _scan_tcp(splice, scan[(IPPROTO_TCP, "out")], excl_tcp_out, cache)
    _scan_tcp(host, scan[(IPPROTO_TCP, "in")], excl_tcp_in, cache)
    _scan_udp(splice, scan[(IPPROTO_UDP, "out")],
              scan[(IPPROTO_TCP, "out")], excl_udp_out, cache)
    _scan_udp(host, scan[(IPPROTO_UDP, "in")],
              scan[(IPPROTO_TCP, "in")], excl_udp_in, cache)


_PROC_FILES = ("/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp",
               "/proc/net/udp6")


def _open_proc_files():
    """Open the ``/proc/net`` socket tables (run in the namespace)."""
    from pasta import util

    fds = []
    for path in _PROC_FILES:
        try:
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            fds.append(-1)
    present = [fd for fd in fds if fd >= 0]
    return util.NsFds([fd >= 0 for fd in fds], present)


def _open_proc_files_in_ns(c):
    """Descriptors of the namespace's ``/proc/net`` tables, -1 for those
    that could not be opened."""
    from pasta import util

    try:
        present, fds = util.ns_call(c.pasta_netns_fd, _open_proc_files,
                                    userns_fd=c.pasta_userns_fd)
    except (OSError, RuntimeError) as e:
        log.warn("Can't open /proc/net files in namespace: %s", e)
        return [-1] * len(_PROC_FILES)
    it = iter(fds)
    return [next(it) if p else -1 for p in present]


def fwd_scan_ports_init(c):
    """Open the ``/proc/net`` files for automatic forwarding (pasta only)
    and do a first scan."""
    from pasta.passt import MODE_PASTA

    scan = _scan_state(c)
    for s in scan.values():
        s.scan4 = s.scan6 = -1
    c.fwd_scan_run = None

    if c.mode != MODE_PASTA:
        return

    # Host side, for -T/-U: this process is in the host's namespace
    host_fds = []
    for path in _PROC_FILES:
        try:
            host_fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            host_fds.append(-1)
    out_t, out_u = scan[(IPPROTO_TCP, "out")], scan[(IPPROTO_UDP, "out")]
    out_t.scan4, out_t.scan6, out_u.scan4, out_u.scan6 = host_fds

    if c.pasta_netns_fd >= 0:
        ns_fds = _open_proc_files_in_ns(c)
        in_t, in_u = scan[(IPPROTO_TCP, "in")], scan[(IPPROTO_UDP, "in")]
        in_t.scan4, in_t.scan6, in_u.scan4, in_u.scan6 = ns_fds

    fwd_scan_ports(c)


def fwd_scan_ports_timer(c, now):
    """Once a second: rescan listening ports and follow them with the
    sockets of scanning rules."""
    from pasta.passt import MODE_PASTA

    if c.mode != MODE_PASTA or not c.fwd:
        return
    last = getattr(c, "fwd_scan_run", None)
    if last is not None and now - last < FWD_PORT_SCAN_INTERVAL:
        return
    c.fwd_scan_run = now

    scan = _scan_state(c)
    if not any(_has_scan_rules(t, p) for t in c.fwd.values()
               for p in (IPPROTO_TCP, IPPROTO_UDP)):
        return

    fwd_scan_ports(c)

    # Only scanning rules change here; ports that failed for other rules
    # were reported at start-up
    fwd_listen_sync(c, PIF_HOST, scan[(IPPROTO_TCP, "in")],
                    scan[(IPPROTO_UDP, "in")], full=False)
    fwd_listen_sync(c, PIF_SPLICE, scan[(IPPROTO_TCP, "out")],
                    scan[(IPPROTO_UDP, "out")], full=False)
