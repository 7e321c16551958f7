# SPDX-License-Identifier: GPL-2.0-or-later
"""The flow table: one entry per connection or pseudo-connection.

A "flow" is anything pasta forwards between two places as a unit: a TCP
connection (through the tap interface, or spliced between sockets), a
sequence of pings, a UDP exchange.  Every flow has two sides, numbered
``INISIDE`` (0, the side that started it) and ``TGTSIDE`` (1, the side it
was forwarded to).  Each side sits on a pif (``pif.py``) and is described
by a ``FlowSide``: the endpoint's address and port (``eaddr``, ``eport``,
the peer as pasta sees it) and our own address and port on that side
(``oaddr``, ``oport``).  Addresses are 16-byte inany values (``inany.py``).

Table and indices
    ``flowtab`` maps indices below ``FLOW_MAX`` to entries; a free slot
    is simply absent (so the table costs memory only for what is used).
    A flow is known by its index, and one side of a flow by a "sidx", the
    integer ``flowi * 2 + sidei``, which is what epoll references and the
    hash table carry.  New flows take the lowest free index (a heap of
    freed indices below a high-water mark), so the table stays dense.
    When no slot is free, ``flow_alloc()`` returns None and the protocol
    refuses the connection cleanly (TCP answers with a RST); nothing is
    allocated for it.

Life of an entry
    ``flow_alloc()`` gives a NEW entry; ``flow_initiate_af()`` or
    ``flow_initiate_sa()`` fills in the initiating side (INI);
    ``flow_target()`` asks the forwarding rules and NAT of ``fwd.py`` where
    the flow goes and fills in the target side (TGT); ``flow_set_type()``
    turns the entry into the protocol's own object (TYPED), a subclass of
    ``Flow`` with the protocol's fields; ``flow_activate()`` makes it
    ACTIVE.  Until then, ``flow_alloc_cancel()`` puts the entry back.  Only
    one entry may be in these intermediate states at a time, and never
    across a return to the main loop.  An ACTIVE flow is freed when its
    protocol's deferred or timer handler, called from
    ``flow_defer_handler()`` after every batch of events, says it is done.
    Scanning every flow after every batch costs too much in Python with
    thousands of connections, so the types in ``FLOW_DEFER_MARKED_TYPES``
    (TCP) are looked at only once per ``FLOW_TIMER_INTERVAL``, or when
    ``flow_defer_mark()`` said they have work (a connection that closed).

Lookup
    Each side that must be found from packets or socket addresses is
    inserted in a hash table (a dict) keyed by the protocol, the pif and
    the four address and port fields packed into one ``bytes`` key.  The
    dict hashes bytes with CPython's SipHash under a per-process random
    key, so a guest cannot choose colliding 4-tuples to slow lookups
    down.  ``flow_hash_insert()`` also returns a 64-bit keyed hash of the
    same fields (BLAKE2b keyed with ``c.hash_secret``, in place of
    upstream's SipHash), which TCP uses for RFC 6528 initial sequence
    numbers.

Logging
    ``flow_dbg()``, ``flow_trace()``, ``flow_err()`` and friends prefix the
    message with the flow's index and type, so every line can be traced
    back to its flow; state changes also print both sides' addresses.
"""

import heapq
import socket
import struct

try:
    from _blake2 import blake2b as _blake2b    # without loading OpenSSL
except ImportError:
    from hashlib import blake2b as _blake2b

from pasta import log
from pasta.epoll_ctl import EpollRef, EpollType, epoll_add, epoll_mod
from pasta.inany import (inany_any4, inany_any6, inany_from_af,
                         inany_from_sockaddr, inany_ntop, inany_v4,
                         inany_is_loopback)
from pasta.pif import (PIF_HOST, PIF_NONE, PIF_SPLICE, PIF_TAP,
                       pif_is_socket, pif_name, pif_sockaddr)

FLOW_TIMER_INTERVAL = 1.0       # s, how often per-flow timers run

# Entry states
FLOW_STATE_FREE = 0
FLOW_STATE_NEW = 1
FLOW_STATE_INI = 2
FLOW_STATE_TGT = 3
FLOW_STATE_TYPED = 4
FLOW_STATE_ACTIVE = 5

flow_state_str = ["FREE", "NEW", "INI", "TGT", "TYPED", "ACTIVE"]

# Flow types
FLOW_TYPE_NONE = 0
FLOW_TCP = 1
FLOW_TCP_SPLICE = 2
FLOW_PING4 = 3
FLOW_PING6 = 4
FLOW_UDP = 5
FLOW_NUM_TYPES = 6

flow_type_str = ["<none>", "TCP connection", "TCP connection (spliced)",
                 "ICMP ping sequence", "ICMPv6 ping sequence", "UDP flow"]

flow_proto = [0, socket.IPPROTO_TCP, socket.IPPROTO_TCP, socket.IPPROTO_ICMP,
              socket.IPPROTO_ICMPV6, socket.IPPROTO_UDP]

flow_epoll = [EpollType.NONE, EpollType.TCP, EpollType.TCP_SPLICE,
              EpollType.PING, EpollType.PING, EpollType.UDP]

SIDES = 2
INISIDE = 0
TGTSIDE = 1

FLOW_INDEX_BITS = 17
FLOW_MAX = (1 << FLOW_INDEX_BITS) - 1

FLOW_TABLE_PRESSURE = 30        # % of FLOW_MAX
FLOW_FILE_PRESSURE = 30         # % of c.nofile

FLOW_SIDX_NONE = -1

FWD_NO_HINT = -1

EPOLL_CTL_ADD = 1
EPOLL_CTL_DEL = 2
EPOLL_CTL_MOD = 3

EPOLLFD_ID_DEFAULT = 0

MAC_UNDEF = b"\xff" * 6


class FlowSide:
    """Addresses and ports of one side of a flow (``struct flowside``):
    ``eaddr``/``eport`` the endpoint, ``oaddr``/``oport`` ourselves."""

    __slots__ = ("oaddr", "eaddr", "oport", "eport")

    def __init__(self, oaddr=inany_any6, eaddr=inany_any6, oport=0,
                 eport=0):
        self.oaddr = oaddr
        self.eaddr = eaddr
        self.oport = oport
        self.eport = eport

    def __eq__(self, other):
        return flowside_eq(self, other)

    __hash__ = None

    def __repr__(self):
        return "FlowSide([%s]:%d -> [%s]:%d)" % (
            inany_ntop(self.eaddr), self.eport, inany_ntop(self.oaddr),
            self.oport)


def flowside_eq(left, right):
    """Are two flowsides equal in all four fields?"""
    return (left.eaddr == right.eaddr and left.eport == right.eport and
            left.oaddr == right.oaddr and left.oport == right.oport)


class Flow:
    """Fields common to all flows (``struct flow_common``).

    Protocols subclass it with their own ``__slots__``; ``flow_set_type()``
    moves an entry from a plain ``Flow`` to such a subclass.
    """

    __slots__ = ("state", "type", "pif", "side", "tap_omac", "epollid",
                 "idx")

    def __init__(self):
        self.state = FLOW_STATE_FREE
        self.type = FLOW_TYPE_NONE
        self.pif = [PIF_NONE, PIF_NONE]
        self.side = [FlowSide(), FlowSide()]
        self.tap_omac = MAC_UNDEF
        self.epollid = EPOLLFD_ID_DEFAULT
        self.idx = -1

    @property
    def f(self):
        """The common part, as upstream's ``flow->f``: the object itself."""
        return self


# Global state: the table proper is a dict from index to entry (a free
# slot is simply absent), so that it costs memory only for what is used
flowtab = {}
_active = flowtab           # idx -> flow, for every non-free entry
_free_heap = []             # freed indices below _high_water
_high_water = 0             # lowest index never used so far
flow_new_entry = None
_hashtab = {}               # key bytes -> sidx
_ctx = None                 # context, for epoll and hashing
_flow_timer_run = 0.0
_PORTS = struct.Struct("!BBHH")


def flow_count():
    """Number of entries in use (any state but FREE)."""
    return len(_active)


def flow_first_free():
    """Index flow_alloc() would use next, FLOW_MAX if the table is full."""
    if _free_heap:
        return _free_heap[0]
    return _high_water if _high_water < FLOW_MAX else FLOW_MAX


# Indices of sides

def flow_sidx_valid(sidx):
    """Does ``sidx`` refer to a flow side at all?"""
    return sidx is not None and 0 <= sidx < 2 * FLOW_MAX


def flow_sidx_eq(a, b):
    return a == b


def flow_sidx(f, sidei):
    """Index of side ``sidei`` of flow ``f``."""
    return (f.idx << 1) | (sidei & 1)


FLOW_SIDX = flow_sidx


def sidx_flowi(sidx):
    return sidx >> 1


def sidx_sidei(sidx):
    return sidx & 1


def flow_idx(f):
    return f.idx


FLOW_IDX = flow_idx


def FLOW(idx):
    """Entry at index ``idx`` (None if free)."""
    return flowtab.get(idx)


def flow_at_sidx(sidx):
    """Flow of a side index, or None."""
    if sidx is None or sidx < 0:
        return None
    return flowtab.get(sidx >> 1)


def pif_at_sidx(sidx):
    f = flow_at_sidx(sidx)
    if f is None:
        return PIF_NONE
    return f.pif[sidx & 1]


def flowside_at_sidx(sidx):
    f = flow_at_sidx(sidx)
    if f is None:
        return None
    return f.side[sidx & 1]


def flow_sidx_opposite(sidx):
    if not flow_sidx_valid(sidx):
        return FLOW_SIDX_NONE
    return sidx ^ 1


def flow_foreach():
    """The ACTIVE flows, in index order (a snapshot: safe to modify the
    table while iterating)."""
    return [f for _i, f in sorted(_active.items())
            if f.state == FLOW_STATE_ACTIVE]


def flow_foreach_of_type(type_):
    return [f for f in flow_foreach() if f.type == type_]


# Logging

def _dbg_enabled():
    return log.log_level >= log.LOG_DEBUG or not log.log_conf_parsed


def _type_or_state(f):
    if f.state < FLOW_STATE_TYPED:
        return flow_state_str[f.state]
    if 0 <= f.type < FLOW_NUM_TYPES:
        return flow_type_str[f.type]
    return "?"


def flow_log_(f, pri, fmt, args, details=False, state=None, exc=None):
    """Print a message about flow ``f`` with priority ``pri``; with
    ``details``, a second line with both sides' addresses (as far as
    ``state`` says they are known); ``exc`` appends its reason."""
    msg = fmt % args if args else fmt
    if exc is not None:
        reason = getattr(exc, "strerror", None) or str(exc)
        msg = "%s: %s" % (msg, reason)
    log.logmsg(pri, "Flow %u (%s): %s", f.idx, _type_or_state(f), msg)

    if not details:
        return
    if state is None:
        state = f.state
    ini, tgt = f.side
    if state >= FLOW_STATE_TGT:
        log.logmsg(pri, "Flow %u (%s):     %s [%s]:%d -> [%s]:%d => "
                   "%s [%s]:%d -> [%s]:%d", f.idx, _type_or_state(f),
                   pif_name(f.pif[INISIDE]), inany_ntop(ini.eaddr),
                   ini.eport, inany_ntop(ini.oaddr), ini.oport,
                   pif_name(f.pif[TGTSIDE]), inany_ntop(tgt.oaddr),
                   tgt.oport, inany_ntop(tgt.eaddr), tgt.eport)
    elif state >= FLOW_STATE_INI:
        log.logmsg(pri, "Flow %u (%s):     %s [%s]:%d -> [%s]:%d => ?",
                   f.idx, _type_or_state(f), pif_name(f.pif[INISIDE]),
                   inany_ntop(ini.eaddr), ini.eport, inany_ntop(ini.oaddr),
                   ini.oport)


def flow_dbg(f, fmt, *args):
    if _dbg_enabled():
        flow_log_(f, log.LOG_DEBUG, fmt, args)


def flow_trace(f, fmt, *args):
    if log.log_trace:
        flow_log_(f, log.LOG_DEBUG, fmt, args)


def flow_warn(f, fmt, *args):
    flow_log_(f, log.LOG_WARNING, fmt, args)


def flow_err(f, fmt, *args):
    flow_log_(f, log.LOG_ERR, fmt, args)


def flow_dbg_perror(f, e, fmt, *args):
    if _dbg_enabled():
        flow_log_(f, log.LOG_DEBUG, fmt, args, exc=e)


def flow_warn_perror(f, e, fmt, *args):
    flow_log_(f, log.LOG_WARNING, fmt, args, exc=e)


def flow_perror(f, e, fmt, *args):
    flow_log_(f, log.LOG_ERR, fmt, args, exc=e)


def _rl(fmt):
    return log.ratelimit("flow: " + fmt)


def flow_dbg_ratelimit(f, now, fmt, *args):
    if _dbg_enabled() and _rl(fmt):
        flow_log_(f, log.LOG_DEBUG, fmt, args)


def flow_warn_ratelimit(f, now, fmt, *args):
    if _rl(fmt):
        flow_log_(f, log.LOG_WARNING, fmt, args)


def flow_err_ratelimit(f, now, fmt, *args):
    if _rl(fmt):
        flow_log_(f, log.LOG_ERR, fmt, args)


def flow_perror_ratelimit(f, now, e, fmt, *args):
    if _rl(fmt):
        flow_log_(f, log.LOG_ERR, fmt, args, exc=e)


def flow_warn_perror_ratelimit(f, now, e, fmt, *args):
    if _rl(fmt):
        flow_log_(f, log.LOG_WARNING, fmt, args, exc=e)


def flow_dbg_perror_ratelimit(f, now, e, fmt, *args):
    if _dbg_enabled() and _rl(fmt):
        flow_log_(f, log.LOG_DEBUG, fmt, args, exc=e)


def flow_set_state(f, state):
    """Change the state of entry ``f``, logging it with its addresses."""
    old = f.state
    f.state = state
    if _dbg_enabled():
        flow_log_(f, log.LOG_DEBUG, "%s -> %s",
                  (flow_state_str[old], flow_state_str[state]),
                  details=True, state=max(state, old))


# Sockets for flow sides

def _sock_l4(c, type_, family, sa, ifname):
    """Open a socket of the kind ``type_`` (an EpollType) bound to ``sa``
    (used when util.py provides no ``sock_l4``)."""
    if type_ == EpollType.TCP_LISTEN:
        kind, proto = socket.SOCK_STREAM, socket.IPPROTO_TCP
    elif type_ in (EpollType.UDP_LISTEN, EpollType.UDP):
        kind, proto = socket.SOCK_DGRAM, socket.IPPROTO_UDP
    elif type_ == EpollType.PING:
        kind = socket.SOCK_DGRAM
        proto = (socket.IPPROTO_ICMP if family == socket.AF_INET
                 else socket.IPPROTO_ICMPV6)
    else:
        raise ValueError("no socket for epoll type %r" % type_)

    s = socket.socket(family, kind | socket.SOCK_NONBLOCK, proto)
    try:
        if family == socket.AF_INET6 and sa[0] == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ifname:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                         ifname.encode())
        if getattr(c, "freebind", False) and type_ != EpollType.PING:
            if family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, 15, 1)     # IP_FREEBIND
            else:
                s.setsockopt(socket.IPPROTO_IPV6, 78, 1)   # IPV6_FREEBIND
        try:
            s.bind(sa)
        except OSError:
            if type_ != EpollType.PING:
                raise
        if type_ == EpollType.TCP_LISTEN:
            s.listen(128)
    except BaseException:
        s.close()
        raise
    return s


def flowside_sock_l4(c, type_, pif, side):
    """A socket of kind ``type_`` on ``pif`` (HOST or SPLICE), bound to
    our address and port of ``side``.

    Returns a non-blocking ``socket.socket``; raises ``OSError``.  Host
    sockets not bound to loopback honour ``--outbound-if4/6``; sockets on
    the splice pif are opened inside the namespace (``util.ns_socket``).
    """
    assert pif_is_socket(pif)
    family, sa = pif_sockaddr(c, pif, side.oaddr, side.oport)

    if pif == PIF_HOST:
        ifname = None
        if not inany_is_loopback(side.oaddr):
            ifname = (c.ip4.ifname_out if family == socket.AF_INET
                      else c.ip6.ifname_out) or None
        from pasta import util
        fn = getattr(util, "sock_l4", None)
        if fn is not None:
            return fn(c, type_, family, sa, ifname)
        return _sock_l4(c, type_, family, sa, ifname)

    from pasta import util
    if type_ == EpollType.PING:
        kind = socket.SOCK_DGRAM
        proto = (socket.IPPROTO_ICMP if family == socket.AF_INET
                 else socket.IPPROTO_ICMPV6)
    elif type_ == EpollType.TCP_LISTEN:
        kind, proto = socket.SOCK_STREAM, socket.IPPROTO_TCP
    else:
        kind, proto = socket.SOCK_DGRAM, socket.IPPROTO_UDP
    opts = [(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)]
    s = util.ns_socket(c, family, kind | socket.SOCK_NONBLOCK, proto,
                       bind=sa, opts=opts)
    return s


def flowside_connect(c, s, pif, tgt):
    """Connect socket ``s`` to the endpoint of flowside ``tgt`` on
    ``pif``; raises ``OSError`` (``BlockingIOError`` for a connection
    in progress on a non-blocking socket)."""
    _family, sa = pif_sockaddr(c, pif, tgt.eaddr, tgt.eport)
    s.connect(sa)


# epoll

def flow_epollfd(f):
    """The epoll object of the loop handling flow ``f``."""
    return _ctx.epoll if _ctx is not None else None


def flow_epollid_set(f, epollid):
    f.epollid = epollid


def flow_epollid_register(epollid, epollfd):
    """Only one epoll instance exists in this port: nothing to record."""


def flow_epoll_set(f, command, events, fd, sidei):
    """Add (``EPOLL_CTL_ADD``) or change (``EPOLL_CTL_MOD``) the epoll
    registration of descriptor ``fd`` of side ``sidei`` of flow ``f``,
    with the epoll type of the flow's type.  Raises ``OSError``."""
    ref = EpollRef(flow_epoll[f.type], fd, sidx=(f.idx << 1) | sidei,
                   flow=f.idx)
    if command == EPOLL_CTL_ADD:
        epoll_add(_ctx, events, ref)
    else:
        epoll_mod(_ctx, events, ref)
    return 0


# Allocation and state transitions

def flow_alloc():
    """A NEW entry at the lowest free index, or None if the table is
    full (the caller refuses what it was about to accept)."""
    global flow_new_entry, _high_water
    assert flow_new_entry is None

    if _free_heap:
        idx = heapq.heappop(_free_heap)
    elif _high_water < FLOW_MAX:
        idx = _high_water
        _high_water += 1
    else:
        return None

    f = Flow()
    f.idx = idx
    flowtab[idx] = f
    flow_new_entry = f
    flow_set_state(f, FLOW_STATE_NEW)
    return f


def _flow_free(f):
    idx = f.idx
    flowtab.pop(idx, None)
    _scan_always.pop(idx, None)
    heapq.heappush(_free_heap, idx)


def flow_alloc_cancel(f):
    """Give back the entry just allocated, in any state before ACTIVE."""
    global flow_new_entry
    assert flow_new_entry is f
    assert FLOW_STATE_NEW <= f.state <= FLOW_STATE_TYPED
    for sidei in (INISIDE, TGTSIDE):
        if f.pif[sidei] != PIF_NONE:
            flow_hash_remove(_ctx, flow_sidx(f, sidei))
    flow_set_state(f, FLOW_STATE_FREE)
    _flow_free(f)
    flow_new_entry = None


def _flowside_from_af(side, af, eaddr, eport, oaddr, oport):
    side.oaddr = inany_from_af(af, oaddr) if oaddr is not None \
        else inany_any6
    side.oport = oport
    side.eaddr = inany_from_af(af, eaddr) if eaddr is not None \
        else inany_any6
    side.eport = eport


def _flow_initiate(f, pif):
    assert pif != PIF_NONE
    assert flow_new_entry is f and f.state == FLOW_STATE_NEW
    f.pif[INISIDE] = pif
    flow_set_state(f, FLOW_STATE_INI)


def flow_initiate_af(f, pif, af, saddr, sport, daddr, dport):
    """Fill in the initiating side from packed addresses of family ``af``
    (source = endpoint, destination = us) and move to INI."""
    ini = f.side[INISIDE]
    _flowside_from_af(ini, af, saddr, sport, daddr, dport)
    _flow_initiate(f, pif)
    return ini


def flow_initiate_sa(f, pif, family, ssa, daddr, dport):
    """Fill in the initiating side from a socket address tuple ``ssa`` of
    ``family`` (the endpoint) and our address ``daddr`` (inany, or None
    for unspecified) and port, and move to INI."""
    ini = f.side[INISIDE]
    ini.eaddr, ini.eport = inany_from_sockaddr(family, ssa)
    if daddr is not None:
        ini.oaddr = daddr
    elif inany_v4(ini.eaddr) is not None:
        ini.oaddr = inany_any4
    else:
        ini.oaddr = inany_any6
    ini.oport = dport
    _flow_initiate(f, pif)
    return ini


def flow_target_af(f, pif, af, saddr, sport, daddr, dport):
    """Fill in the target side directly (our address ``saddr``, the
    endpoint ``daddr``) and move to TGT."""
    assert flow_new_entry is f and f.state == FLOW_STATE_INI
    tgt = f.side[TGTSIDE]
    _flowside_from_af(tgt, af, daddr, dport, saddr, sport)
    f.pif[TGTSIDE] = pif
    flow_set_state(f, FLOW_STATE_TGT)
    return tgt


def flow_target(c, f, rule_hint, proto):
    """Decide where flow ``f`` goes (forwarding rules and NAT, in
    ``fwd.py``), fill in its target side and move to TGT.

    Returns the target ``FlowSide``, or None if the flow must not be
    forwarded (logged; the caller cancels the entry).
    """
    from pasta import fwd

    assert flow_new_entry is f and f.state == FLOW_STATE_INI
    ini = f.side[INISIDE]
    tgt = f.side[TGTSIDE]
    inipif = f.pif[INISIDE]
    tgtpif = PIF_NONE
    rule = None

    tables = getattr(c, "fwd", None) or {}
    table = tables.get(inipif) if isinstance(tables, dict) else None
    if table is not None:
        rule = fwd.fwd_rule_search(table, ini, proto, rule_hint)
        if rule is None:
            flow_dbg(f, "Missing forward rule")
            return _flow_target_fail(f, proto)

    if inipif == PIF_TAP:
        f.tap_omac = MAC_UNDEF
        tgtpif = fwd.fwd_nat_from_tap(c, proto, ini, tgt)
    elif inipif == PIF_SPLICE and rule is not None:
        tgtpif = fwd.fwd_nat_from_splice(rule, proto, ini, tgt)
    elif inipif == PIF_HOST and rule is not None:
        tgtpif = fwd.fwd_nat_from_host(c, rule, proto, ini, tgt)

    if tgtpif is None or tgtpif == PIF_NONE:
        return _flow_target_fail(f, proto)

    f.pif[TGTSIDE] = tgtpif
    flow_set_state(f, FLOW_STATE_TGT)
    return tgt


def _flow_target_fail(f, proto):
    ini = f.side[INISIDE]
    names = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP",
             socket.IPPROTO_ICMP: "ICMP", socket.IPPROTO_ICMPV6: "ICMPv6"}
    if log.ratelimit("flow: no rules"):
        flow_err(f, "No rules to forward %s %s [%s]:%d -> [%s]:%d",
                 pif_name(f.pif[INISIDE]), names.get(proto, "?"),
                 inany_ntop(ini.eaddr), ini.eport, inany_ntop(ini.oaddr),
                 ini.oport)
    return None


def flow_set_type(f, type_, cls=None):
    """Give entry ``f`` its type and move it to TYPED.

    With ``cls`` (a subclass of ``Flow``), the entry is replaced in the
    table by a new ``cls()`` carrying the common fields over, and that
    object is returned: use it from then on.  Without, ``f`` itself is
    returned.
    """
    global flow_new_entry
    assert type_ != FLOW_TYPE_NONE
    assert flow_new_entry is f and f.state == FLOW_STATE_TGT
    assert f.pif[INISIDE] != PIF_NONE and f.pif[TGTSIDE] != PIF_NONE

    if cls is not None and type(f) is not cls:
        new = cls()
        for name in Flow.__slots__:
            setattr(new, name, getattr(f, name))
        flowtab[f.idx] = new
        flow_new_entry = new
        f = new

    f.type = type_
    if type_ not in FLOW_DEFER_MARKED_TYPES:
        _scan_always[f.idx] = f
    flow_set_state(f, FLOW_STATE_TYPED)
    return f


def FLOW_SET_TYPE(f, type_, cls=None):
    return flow_set_type(f, type_, cls)


def flow_activate(f):
    """Move the entry being set up to ACTIVE."""
    global flow_new_entry
    assert flow_new_entry is f and f.state == FLOW_STATE_TYPED
    flow_set_state(f, FLOW_STATE_ACTIVE)
    flow_new_entry = None


FLOW_ACTIVATE = flow_activate


# Hash table

def _key(proto, pif, side):
    return side.oaddr + side.eaddr + _PORTS.pack(proto, pif, side.oport,
                                                 side.eport)


def flow_hash(c, proto, pif, side):
    """64-bit keyed hash (BLAKE2b, key ``c.hash_secret``) of a side."""
    h = _blake2b(_key(proto, pif, side), digest_size=8,
                 key=bytes(c.hash_secret))
    return int.from_bytes(h.digest(), "little")


def flow_hash_insert(c, sidx):
    """Make side ``sidx`` findable by its addresses; returns the side's
    keyed hash."""
    f = flow_at_sidx(sidx)
    side = f.side[sidx & 1]
    pif = f.pif[sidx & 1]
    assert pif != PIF_NONE
    key = _key(flow_proto[f.type], pif, side)
    _hashtab[key] = sidx
    if _dbg_enabled():
        flow_dbg(f, "Side %u hash table insert", sidx & 1)
    return flow_hash(c, flow_proto[f.type], pif, side)


def flow_hash_remove(c, sidx):
    """Forget side ``sidx`` in the hash table (not an error if absent)."""
    f = flow_at_sidx(sidx)
    if f is None:
        return
    pif = f.pif[sidx & 1]
    if pif == PIF_NONE:
        return
    key = _key(flow_proto[f.type], pif, f.side[sidx & 1])
    if _hashtab.get(key) == sidx:
        del _hashtab[key]
        if _dbg_enabled():
            flow_dbg(f, "Side %u hash table remove", sidx & 1)


def flowside_lookup(c, proto, pif, side):
    return _hashtab.get(_key(proto, pif, side), FLOW_SIDX_NONE)


def flow_lookup_af(c, proto, pif, af, eaddr, oaddr, eport, oport):
    """Side index matching packed addresses of family ``af``, or
    ``FLOW_SIDX_NONE``."""
    key = (inany_from_af(af, oaddr) + inany_from_af(af, eaddr) +
           _PORTS.pack(proto, pif, oport, eport))
    return _hashtab.get(key, FLOW_SIDX_NONE)


def flow_lookup_sa(c, proto, pif, family, esa, oaddr, oport):
    """Side index matching endpoint socket address ``esa`` and our
    address (inany or None) and port, or ``FLOW_SIDX_NONE``."""
    try:
        eaddr, eport = inany_from_sockaddr(family, esa)
    except (OSError, ValueError, IndexError):
        if log.ratelimit("flow: bad sockaddr"):
            log.warn("Flow lookup on bad socket address %r", esa)
        return FLOW_SIDX_NONE
    if oaddr is None:
        oaddr = inany_any4 if inany_v4(eaddr) is not None else inany_any6
    return _hashtab.get(oaddr + eaddr + _PORTS.pack(proto, pif, oport,
                                                    eport), FLOW_SIDX_NONE)


# Deferred work

def _handlers():
    """Per-type deferred and timer handlers, from whatever protocol
    modules exist: ``(defer, timer)`` functions of ``(c, flow, now)``."""
    h = {}
    try:
        from pasta import tcp
        h[FLOW_TCP] = (lambda c, f, now: tcp.tcp_flow_defer(f), None)
    except ImportError:
        pass
    try:
        from pasta import tcp_splice
        h[FLOW_TCP_SPLICE] = (
            lambda c, f, now: tcp_splice.tcp_splice_flow_defer(f),
            lambda c, f, now: tcp_splice.tcp_splice_timer(f) and False)
    except ImportError:
        pass
    try:
        from pasta import icmp
        h[FLOW_PING4] = h[FLOW_PING6] = (None, icmp.icmp_ping_timer)
    except ImportError:
        pass
    try:
        from pasta import udp_flow
        h[FLOW_UDP] = (udp_flow.udp_flow_defer, udp_flow.udp_flow_timer)
    except ImportError:
        pass
    return h


_defer_handlers = None

# Flow types whose modules call flow_defer_mark() whenever their deferred
# handler has work: those are not scanned on every cycle
FLOW_DEFER_MARKED_TYPES = frozenset((FLOW_TCP,))
_defer_marked = {}
_scan_always = {}           # idx -> flow of the other types


def flow_defer_mark(f):
    """Ask for ``f``'s deferred handler to run at the end of this cycle
    (for types in ``FLOW_DEFER_MARKED_TYPES``, which are otherwise only
    looked at once per ``FLOW_TIMER_INTERVAL``)."""
    _defer_marked[f.idx] = f


def flow_defer_handler(c, now):
    """After every batch of events: let each active flow's protocol do
    its deferred work, and once per ``FLOW_TIMER_INTERVAL`` its timers;
    free the flows they report as done."""
    global _flow_timer_run, _defer_handlers

    if _defer_handlers is None:
        _defer_handlers = _handlers()

    timer = False
    if now - _flow_timer_run >= FLOW_TIMER_INTERVAL:
        timer = True
        _flow_timer_run = now

    assert flow_new_entry is None, "incomplete flow at end of cycle"

    # Between timer runs, only flows of types that do not announce their
    # deferred work are scanned, plus those that announced it
    if timer:
        scan = list(_active.values())
    else:
        scan = list(_scan_always.values())
        if _defer_marked:
            scan.extend(_defer_marked.values())
    _defer_marked.clear()

    to_free = []
    for f in scan:
        if f.state != FLOW_STATE_ACTIVE or _active.get(f.idx) is not f:
            continue
        defer, tmr = _defer_handlers.get(f.type, (None, None))
        closed = False
        try:
            if defer is not None:
                closed = bool(defer(c, f, now))
            if not closed and timer and tmr is not None:
                closed = bool(tmr(c, f, now))
        except Exception as e:      # a bug in one flow must not stop us
            if log.ratelimit("flow: deferred handler"):
                flow_err(f, "deferred handler failed: %r", e)
            closed = False
        if closed:
            to_free.append(f)

    for f in to_free:
        for sidei in (INISIDE, TGTSIDE):
            flow_hash_remove(c, flow_sidx(f, sidei))
        flow_set_state(f, FLOW_STATE_FREE)
        _flow_free(f)


def flow_init(c):
    """Start with an empty table; remember the context for epoll and
    hashing."""
    global _ctx, _high_water, flow_new_entry, _flow_timer_run
    global _defer_handlers
    _ctx = c
    flowtab.clear()
    _defer_marked.clear()
    _scan_always.clear()
    _free_heap.clear()
    _hashtab.clear()
    _high_water = 0
    flow_new_entry = None
    _flow_timer_run = 0.0
    _defer_handlers = None
