# SPDX-License-Identifier: GPL-2.0-or-later
"""rtnetlink: interfaces, addresses and routes, here and in the namespace.

API summary (``s`` is a pyroute2 ``IPRoute``, ``af`` is ``socket.AF_INET``
or ``socket.AF_INET6``, ``ifi`` an interface index, addresses are
``ipaddress`` objects; every function raises ``OSError`` with the kernel's
errno when a request fails, and returns ``None`` otherwise unless a value
is listed):

    nl_sock, nl_sock_ns                  module globals, set by nl_sock_init()
    nl_sock_init(c, ns)                  ns=False: host socket; ns=True:
                                         socket living in c.pasta_netns_fd
    nl_sock_ns_open()                    new IPRoute for the caller's netns
                                         (for use inside util.ns_call())
    nl_sock_of_ns(netns_fd, userns_fd=None)  new IPRoute bound to netns_fd
    nl_sock_close(s)                     close an IPRoute made here
    nl_get_ext_if(s, af) -> int          template interface, 0 if none
    nl_route_get_def(s, ifi, af) -> gw   default gateway, or None
    nl_route_set_def(s, ifi, af, gw)
    nl_route_dup(s_src, ifi_src, s_dst, ifi_dst, af)
    nl_addr_get(s, ifi, af) -> (addr, prefix_len, addr_ll)
                                         addr/addr_ll None when missing;
                                         addr_ll is always None for AF_INET
    nl_addr_get_ll(s, ifi) -> IPv6Address or None
    nl_addr_set(s, ifi, af, addr, prefix_len)
    nl_addr_set_ll_nodad(s, ifi)
    nl_addr_dup(s_src, ifi_src, s_dst, ifi_dst, af)
    nl_link_get_mac(s, ifi) -> bytes (6) or None
    nl_link_set_mac(s, ifi, mac)         mac: 6 bytes
    nl_link_get_mtu(s, ifi) -> int or None
    nl_link_set_mtu(s, ifi, mtu)
    nl_link_set_flags(s, ifi, set, change)   IFF_* bits, like ifi_flags

Theory of operation
-------------------
pasta reads the configuration of the host's "template" interface (the one
carrying the default route) and, with ``--config-net``, copies addresses
and routes from there to the tap interface in the namespace.  This needs
one rtnetlink socket in each network namespace.  A netlink socket stays
bound to the namespace it was created in, wherever its descriptor goes
later, so the namespace's socket is created by a short-lived child that
enters the namespace (``util.ns_call()``), and its descriptor is handed
back to this process: from then on ``nl_sock_ns`` talks to the namespace
without this process ever leaving its own.  The same function that opens
the socket there, ``nl_sock_ns_open()``, is available to code that runs
inside other ``ns_call()`` children.

Both sockets are wrapped in pyroute2's ``IPRoute`` (never ``NDB``: it
starts threads, and ``setns()`` refuses to move a process with threads).
pyroute2 parses dumps into messages whose attributes can be edited and
sent again, which is how routes and addresses are copied: a dump of the
template interface is taken, each message is adjusted (the interface
index is rewritten to the tap's, attributes that only make sense on the
host are dropped, IPv6 addresses get the "no duplicate address detection"
flag) and sent to the namespace as a new object.

Dumps ask the kernel for strict filtering where it supports it, and are
filtered here again (main table, unicast routes, the given interface), so
that results do not depend on the kernel's support for filtered dumps.

Errors: a failed request raises ``OSError(errno)``, as upstream's negative
return codes; ``nl_sock_init()`` is the exception and stops the program,
as it does upstream, when no socket can be had.

TODO: upstream's neighbour notifier (``nl_neigh_notify_init()`` and its
handler, which keep the forwarding neighbour table in step with the
host's) is not ported.  Effect: the namespace sees our own MAC address
for every host-side peer, as with older upstream versions.
"""

import errno
import ipaddress
import os
import socket

from pyroute2 import IPRoute
from pyroute2.netlink import (NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
                              NLM_F_REPLACE, NLM_F_REQUEST)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pasta import log, util

RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
RTPROT_BOOT = 3

IFA_F_NODAD = 0x02
IFA_F_DEPRECATED = 0x20

# Next hop state the kernel reports but refuses in a new route
RTNH_F_DEAD = 0x01
RTNH_F_OFFLOAD = 0x08
RTNH_F_LINKDOWN = 0x10
RTNH_F_TRAP = 0x40
RTNH_COMPARE_MASK = RTNH_F_DEAD | RTNH_F_LINKDOWN | RTNH_F_OFFLOAD | \
    RTNH_F_TRAP

IFF_UP = 0x1
IFF_NOARP = 0x80

SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12

_DO = NLM_F_REQUEST | NLM_F_ACK

nl_sock = None          # IPRoute in the namespace pasta runs in
nl_sock_ns = None       # IPRoute bound to the target namespace

# Sockets under the IPRoute objects, kept here so that they are not closed
# (by garbage collection) while pyroute2 uses their descriptors; closing
# the IPRoute closes the descriptor.
_raw = {}


def _oserror(e):
    """An ``OSError`` carrying the errno of pyroute2's ``NetlinkError``."""
    code = abs(e.code) if isinstance(e.code, int) and e.code else errno.EIO
    return OSError(code, os.strerror(code))


def _nl_socket():
    """A bound rtnetlink socket in the caller's network namespace, with
    strict dump checking when the kernel has it."""
    s = socket.socket(socket.AF_NETLINK,
                      socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                      socket.NETLINK_ROUTE)
    s.bind((0, 0))
    try:
        s.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    except OSError:
        log.debug("netlink: cannot set NETLINK_GET_STRICT_CHK on %d",
                  s.fileno())
    return s


def _wrap(sock):
    """Wrap a netlink socket in an ``IPRoute``; the socket is kept alive
    as long as the ``IPRoute`` is."""
    ipr = IPRoute(fileno=sock.fileno())
    _raw[id(ipr)] = sock
    return ipr


def nl_sock_close(s):
    """Close an ``IPRoute`` made by this module, and its socket."""
    if s is None:
        return
    sock = _raw.pop(id(s), None)
    if sock is not None:
        sock.detach()           # the descriptor is closed by pyroute2
    try:
        s.close()
    except Exception:           # pyroute2 may complain on a closed loop
        pass


def nl_sock_ns_open():
    """A new ``IPRoute`` for the network namespace the caller is in.

    Meant for code running inside a ``util.ns_call()`` child, which is in
    the target namespace already.  Raises ``OSError``.
    """
    return _wrap(_nl_socket())


def _nl_sock_ns_fd():
    """In the namespace (``ns_call()`` child): open a netlink socket and
    hand its descriptor back."""
    s = _nl_socket()
    return util.NsFds(None, [s.detach()])


def nl_sock_of_ns(netns_fd, userns_fd=None):
    """A new ``IPRoute`` talking to the network namespace open as
    ``netns_fd``, without leaving ours.  Raises ``OSError``."""
    _, fds = util.ns_call(netns_fd, _nl_sock_ns_fd, userns_fd=userns_fd)
    return _wrap(socket.socket(fileno=fds[0]))


def nl_sock_init(c, ns):
    """Open the netlink socket of the host (``ns`` False) or of the target
    namespace ``c.pasta_netns_fd`` (``ns`` True); dies on failure."""
    global nl_sock, nl_sock_ns

    try:
        if ns:
            s = nl_sock_of_ns(c.pasta_netns_fd, c.pasta_userns_fd)
            nl_sock_close(nl_sock_ns)
            nl_sock_ns = s
        else:
            nl_sock_close(nl_sock)
            nl_sock = _wrap(_nl_socket())
    except (OSError, NetlinkError) as e:
        log.die("Failed to get netlink socket: %s", e)


# Requests and dumps

def _do(s, msg, msg_type, flags=0):
    """Send one request and wait for its acknowledgement."""
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = _DO | flags
    try:
        s.nlm_request_batch([msg])
    except NetlinkError as e:
        raise _oserror(e) from None


def _dump(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except NetlinkError as e:
        raise _oserror(e) from None


def _ip(af, value):
    if value is None:
        return None
    return ipaddress.ip_address(value)


def _route_table(r):
    table = r.get_attr("RTA_TABLE")
    return table if table is not None else r["table"]


def _routes(s, af, ifi=None):
    """Unicast routes of the main table, optionally only those using
    ``ifi`` (directly or in one of their next hops)."""
    kw = {"family": af}
    out = []
    for r in _dump(s.get_routes, **kw):
        if r["family"] != af or r["type"] != RTN_UNICAST:
            continue
        if _route_table(r) != RT_TABLE_MAIN:
            continue
        if ifi is not None and ifi not in _route_ifis(r):
            continue
        out.append(r)
    return out


def _route_ifis(r):
    """Interface indices a route uses: its output interface, or those of
    its next hops."""
    oif = r.get_attr("RTA_OIF")
    if oif:
        return [oif]
    return [nh.get("oif", 0) for nh in (r.get_attr("RTA_MULTIPATH") or [])]


# Interfaces and routes

def _linklocal_prefix(af, dst, dst_len):
    if dst is None:
        return False
    a = ipaddress.ip_address(dst)
    if af == socket.AF_INET:
        return dst_len >= 16 and a in ipaddress.ip_network("169.254.0.0/16")
    return dst_len >= 10 and a.is_link_local


def nl_get_ext_if(s, af):
    """Index of the interface to use as template for ``af``: the first one
    with a default route, else the first one with any route; 0 if none.

    Loopback and routes to link-local prefixes are not considered.
    """
    defifi = anyifi = 0
    ndef = nany = 0

    try:
        routes = _routes(s, af)
    except OSError as e:
        log.warn("netlink: RTM_GETROUTE failed: %s", e.strerror)
        routes = []

    for r in routes:
        ifis = _route_ifis(r)
        thisifi = ifis[0] if ifis else 0
        if not thisifi or thisifi == 1:
            continue
        if _linklocal_prefix(af, r.get_attr("RTA_DST"), r["dst_len"]):
            continue

        if r["dst_len"] == 0:
            ndef += 1
            defifi = defifi or thisifi
        else:
            nany += 1
            anyifi = anyifi or thisifi

    name = "IPv4" if af == socket.AF_INET else "IPv6"
    if defifi:
        if ndef > 1:
            log.info("Multiple default %s routes, picked first", name)
        return defifi
    if anyifi:
        if nany > 1:
            log.info("Multiple interfaces with %s routes, picked first",
                     name)
        return anyifi

    log.info("No interfaces with usable %s routes", name)
    return 0


def _multipath_gw(hops):
    """Gateway of the next hop with the highest weight (the last one of
    equal weight), or None."""
    gw = None
    best = -1
    for nh in hops:
        if nh.get("hops", 0) < best:
            continue
        best = nh.get("hops", 0)
        for name, value in nh.get("attrs", ()):
            if name == "RTA_GATEWAY":
                gw = value
    return gw


def nl_route_get_def(s, ifi, af):
    """Gateway of the first default route through ``ifi`` (for multipath
    routes, the heaviest next hop's), as an ``ipaddress`` object, or None
    if there is no such route."""
    for r in _routes(s, af, ifi):
        if r["dst_len"]:
            continue
        gw = r.get_attr("RTA_GATEWAY")
        if gw is None and r.get_attr("RTA_MULTIPATH"):
            gw = _multipath_gw(r.get_attr("RTA_MULTIPATH"))
        if gw is not None:
            return _ip(af, gw)
    return None


def nl_route_set_def(s, ifi, af, gw):
    """Add a default route via ``gw`` through ``ifi``."""
    m = rtmsg()
    m["family"] = af
    m["table"] = RT_TABLE_MAIN
    m["scope"] = RT_SCOPE_UNIVERSE
    m["type"] = RTN_UNICAST
    m["proto"] = RTPROT_BOOT
    any_addr = "0.0.0.0" if af == socket.AF_INET else "::"
    m["attrs"] = [("RTA_OIF", ifi), ("RTA_DST", any_addr),
                  ("RTA_GATEWAY", str(gw))]
    _do(s, m, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)


# Route attributes not copied to the namespace: a preferred source is one
# of the host's addresses, a next hop object identifier means nothing
# there, and cache information is the kernel's own bookkeeping.
_ROUTE_DROP = ("RTA_PREFSRC", "RTA_NH_ID", "RTA_CACHEINFO")


def _route_copy(r, ifi_src, ifi_dst):
    """A new route message equal to dumped route ``r`` but on ``ifi_dst``,
    or None if ``r`` also uses interfaces other than ``ifi_src``."""
    m = rtmsg()
    for k in ("family", "dst_len", "src_len", "tos", "table", "proto",
              "scope", "type"):
        m[k] = r[k]
    m["flags"] = r["flags"] & ~RTNH_COMPARE_MASK

    attrs = []
    for name, value in r["attrs"]:
        if name == "RTA_OIF":
            if value != ifi_src:
                return None
            value = ifi_dst
        elif name == "RTA_MULTIPATH":
            hops = []
            for nh in value:
                if nh.get("oif") != ifi_src:
                    return None
                hop = {"oif": ifi_dst, "hops": nh.get("hops", 0),
                       "flags": nh.get("flags", 0) & ~RTNH_COMPARE_MASK,
                       "attrs": [a for a in nh.get("attrs", ())
                                 if a[0] not in _ROUTE_DROP]}
                hops.append(hop)
            value = hops
        elif name in _ROUTE_DROP or name.startswith("UNKNOWN"):
            continue
        attrs.append((name, value))
    m["attrs"] = attrs
    return m


def nl_route_dup(s_src, ifi_src, s_dst, ifi_dst, af):
    """Copy the routes of ``ifi_src`` (seen by ``s_src``) to ``ifi_dst``
    (seen by ``s_dst``).

    Routes that also use other interfaces are skipped.  As routes can
    depend on each other (a gateway must be reachable first), the whole
    set is sent up to as many times as there are routes, ignoring
    "exists" and "unreachable" answers, so that the kernel sorts out the
    order; a round that adds nothing ends it early, as the next one would
    add nothing either.
    """
    copies = []
    for r in _routes(s_src, af, ifi_src):
        m = _route_copy(r, ifi_src, ifi_dst)
        if m is not None:
            copies.append(m)

    for _ in range(len(copies)):
        added = 0
        for m in copies:
            m = _route_copy_again(m)
            try:
                _do(s_dst, m, RTM_NEWROUTE, NLM_F_CREATE)
                added += 1
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENETUNREACH,
                                   errno.EHOSTUNREACH):
                    raise
        if not added:
            break


def _route_copy_again(m):
    """A fresh copy of a route message (pyroute2 messages keep their
    encoded state once sent)."""
    n = rtmsg()
    for k in ("family", "dst_len", "src_len", "tos", "table", "proto",
              "scope", "type", "flags"):
        n[k] = m[k]
    n["attrs"] = list(m["attrs"])
    return n


# Addresses

def _addrs(s, af, ifi):
    return [a for a in _dump(s.get_addr, family=af)
            if a["index"] == ifi and a["family"] == af]


def _addr_flags(a):
    """32-bit flags of an address (IFA_FLAGS when present)."""
    flags = a.get_attr("IFA_FLAGS")
    return flags if flags is not None else a["flags"]


def nl_addr_get(s, ifi, af):
    """Addresses of ``ifi``: ``(addr, prefix_len, addr_ll)``.

    ``addr`` is the address with the longest prefix (IPv4: any; IPv6:
    global scope only), ``prefix_len`` its prefix length (0 if none),
    ``addr_ll`` the IPv6 link-local address with the longest prefix (None
    for IPv4).  Deprecated addresses are skipped.  Missing ones are None.
    """
    addr = addr_ll = None
    prefix_max = prefix_max_ll = 0
    attr = "IFA_LOCAL" if af == socket.AF_INET else "IFA_ADDRESS"

    for a in _addrs(s, af, ifi):
        if _addr_flags(a) & IFA_F_DEPRECATED:
            continue
        value = a.get_attr(attr)
        if value is None:
            continue
        plen = a["prefixlen"]

        if plen > prefix_max and \
           (af == socket.AF_INET or a["scope"] < RT_SCOPE_LINK):
            addr = _ip(af, value)
            prefix_max = plen

        if af == socket.AF_INET6 and a["scope"] == RT_SCOPE_LINK and \
           plen > prefix_max_ll:
            addr_ll = _ip(af, value)
            prefix_max_ll = plen

    return addr, prefix_max, addr_ll


def nl_addr_get_ll(s, ifi):
    """First IPv6 link-local address of ``ifi``, or None."""
    for a in _addrs(s, socket.AF_INET6, ifi):
        if a["scope"] != RT_SCOPE_LINK:
            continue
        value = a.get_attr("IFA_ADDRESS")
        if value is not None:
            return ipaddress.IPv6Address(value)
    return None


def nl_addr_set(s, ifi, af, addr, prefix_len):
    """Add ``addr``/``prefix_len`` to ``ifi`` (IPv6: without duplicate
    address detection: the address is a copy of the host's anyway)."""
    m = ifaddrmsg()
    m["family"] = af
    m["index"] = ifi
    m["prefixlen"] = prefix_len
    m["scope"] = RT_SCOPE_UNIVERSE
    m["flags"] = IFA_F_NODAD if af == socket.AF_INET6 else 0
    m["attrs"] = [("IFA_LOCAL", str(addr)), ("IFA_ADDRESS", str(addr))]
    _do(s, m, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)


def _addr_copy(a, ifi, extra_flags, drop=()):
    """A new address message equal to dumped address ``a``, on ``ifi``,
    with ``extra_flags`` added (in both flag fields)."""
    m = ifaddrmsg()
    m["family"] = a["family"]
    m["prefixlen"] = a["prefixlen"]
    m["scope"] = a["scope"]
    m["index"] = ifi
    m["flags"] = (a["flags"] | extra_flags) & 0xff
    attrs = []
    for name, value in a["attrs"]:
        if name in drop or name.startswith("UNKNOWN"):
            continue
        if name == "IFA_FLAGS":
            value |= extra_flags
        attrs.append((name, value))
    m["attrs"] = attrs
    return m


def nl_addr_set_ll_nodad(s, ifi):
    """Set the "no duplicate address detection" flag on the IPv6
    link-local addresses of ``ifi``.  All of them are tried; the first
    failure is raised afterwards."""
    first = None
    for a in _addrs(s, socket.AF_INET6, ifi):
        if a["scope"] != RT_SCOPE_LINK:
            continue
        m = _addr_copy(a, ifi, IFA_F_NODAD)
        try:
            _do(s, m, RTM_NEWADDR, NLM_F_REPLACE)
        except OSError as e:
            first = first or e
    if first is not None:
        raise first


def nl_addr_dup(s_src, ifi_src, s_dst, ifi_dst, af):
    """Copy the addresses of ``ifi_src`` to ``ifi_dst``, except link-local
    and deprecated ones, without labels and lifetimes, and with duplicate
    address detection disabled.  Stops at, and raises, the first error."""
    for a in _addrs(s_src, af, ifi_src):
        if a["scope"] == RT_SCOPE_LINK or \
           _addr_flags(a) & IFA_F_DEPRECATED:
            continue
        m = _addr_copy(a, ifi_dst, IFA_F_NODAD,
                       drop=("IFA_LABEL", "IFA_CACHEINFO"))
        _do(s_dst, m, RTM_NEWADDR, NLM_F_CREATE)


# Links

def _link(s, ifi):
    links = _dump(s.get_links, ifi)
    return links[0] if links else None


def nl_link_get_mac(s, ifi):
    """MAC address of ``ifi`` as 6 bytes, or None if it has none."""
    link = _link(s, ifi)
    mac = link.get_attr("IFLA_ADDRESS") if link is not None else None
    if not mac:
        return None
    b = bytes.fromhex(mac.replace(":", ""))
    return b[:6] if len(b) >= 6 else None


def nl_link_get_mtu(s, ifi):
    """MTU of ``ifi``, or None."""
    link = _link(s, ifi)
    return link.get_attr("IFLA_MTU") if link is not None else None


def _ifinfo(ifi, flags=0, change=0):
    m = ifinfmsg()
    m["family"] = socket.AF_UNSPEC
    m["index"] = ifi
    m["flags"] = flags
    m["change"] = change
    return m


def nl_link_set_mac(s, ifi, mac):
    """Set the MAC address of ``ifi`` (``mac``: 6 bytes)."""
    m = _ifinfo(ifi)
    m["attrs"] = [("IFLA_ADDRESS", ":".join("%02x" % b for b in mac))]
    _do(s, m, RTM_NEWLINK)


def nl_link_set_mtu(s, ifi, mtu):
    """Set the MTU of ``ifi``."""
    m = _ifinfo(ifi)
    m["attrs"] = [("IFLA_MTU", int(mtu))]
    _do(s, m, RTM_NEWLINK)


def nl_link_set_flags(s, ifi, set, change):
    """Change the device flags of ``ifi`` selected by the mask ``change``
    to their values in ``set`` (e.g. ``IFF_UP, IFF_UP`` brings it up)."""
    _do(s, _ifinfo(ifi, set, change), RTM_NEWLINK)
