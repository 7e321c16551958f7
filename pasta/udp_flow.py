# SPDX-License-Identifier: GPL-2.0-or-later
"""UDP flows: finding, creating and expiring them.

Theory of operation
-------------------

A UDP flow (``UdpFlow``, an entry of type ``FLOW_UDP`` in the flow table
of ``flow.py``) stands for the datagrams exchanged between two endpoints,
one address and port on each side.  It is created by the first datagram
that matches no flow: ``udp_flow_from_tap()`` for one from the guest,
``udp_flow_from_sock()`` for one caught by a listening socket.  Both
sides are entered in the flow hash table, so that later datagrams in
either direction find it from their addresses and ports.

Every side on a socket pif (host or namespace) gets a socket of its own
(``udp_flow_sock()``), bound to our address and port on that side,
connected to the endpoint, and watched by the main loop with an epoll
reference naming that flow side.  Between ``bind()`` and ``connect()``
such a socket may catch datagrams meant for other flows, and a burst of
datagrams for the new flow may be split between it and the listening
socket; so a new socket is marked for flushing, and before the next
round of events ``udp_flow_defer()`` passes whatever it holds through the
look-up path of listening sockets, in order.

Each side counts the datagrams it sent (up to 255) and the flow keeps
the time of the last one.  ``udp_flow_timer()``, run by the flow table
about once a second, closes a flow silent for longer than
``c.udp.timeout`` seconds, or ``c.udp.stream_timeout`` once the target
side has answered and either side sent more than one datagram.
Closing removes the hash entries and closes the sockets; the flow table
frees the entry when the deferred or timer handler reports it closed.
"""

import socket

from pasta import log
from pasta.epoll_ctl import EPOLLIN, epoll_del
from pasta.flow import (EPOLL_CTL_ADD, EPOLLFD_ID_DEFAULT, FLOW_SIDX_NONE,
                        FLOW_UDP, FWD_NO_HINT, INISIDE, TGTSIDE, Flow,
                        FLOW_ACTIVATE, FLOW_SET_TYPE, flow_alloc,
                        flow_alloc_cancel, flow_at_sidx, flow_dbg,
                        flow_epoll_set, flow_epollid_set, flow_err_ratelimit,
                        flow_hash_insert, flow_hash_remove, flow_initiate_af,
                        flow_initiate_sa, flow_lookup_af, flow_lookup_sa,
                        flow_perror, flow_perror_ratelimit, flow_sidx,
                        flow_target, flow_warn_perror_ratelimit,
                        flowside_connect, flowside_sock_l4)
from pasta.epoll_ctl import EpollType
from pasta.inany import (inany_from_sockaddr, inany_is_unicast,
                         inany_is_unspecified)
from pasta.pif import PIF_TAP, pif_is_socket, pif_name

IPPROTO_UDP = socket.IPPROTO_UDP
UINT8_MAX = 255


class UdpFlow(Flow):
    """A flow of UDP datagrams (``struct udp_flow``).

    ``ttl``: TTL or hop limit last set on each side's socket;
    ``closed``: sockets and hash entries are gone; ``flush0``/``flush1``:
    that side's socket may hold datagrams of other flows; ``ts``: time
    of the last datagram (``time.monotonic()``); ``s``: each side's
    ``socket.socket``, or None; ``activity``: datagrams seen from each
    side, up to 255.
    """

    __slots__ = ("ttl", "closed", "flush0", "flush1", "ts", "s",
                 "activity")

    def __init__(self):
        super().__init__()
        self.ttl = [0, 0]
        self.closed = False
        self.flush0 = False
        self.flush1 = False
        self.ts = 0.0
        self.s = [None, None]
        self.activity = [0, 0]


def udp_at_sidx(sidx):
    """The UDP flow of side index ``sidx``, or None if ``sidx`` is not a
    valid side or its entry is free or not a UDP flow."""
    if sidx is None or sidx < 0:
        return None
    f = flow_at_sidx(sidx)
    if f is None or not isinstance(f, UdpFlow) or f.type != FLOW_UDP:
        return None
    return f


def udp_flow_close(c, uflow):
    """Close the flow's sockets and drop its hash entries (once)."""
    if uflow.closed:
        return
    for sidei in (INISIDE, TGTSIDE):
        flow_hash_remove(c, flow_sidx(uflow, sidei))
        s = uflow.s[sidei]
        if s is not None:
            epoll_del(c, s.fileno())
            s.close()
            uflow.s[sidei] = None
    uflow.closed = True


def udp_flow_sock(c, uflow, sidei, now):
    """Open the socket of side ``sidei``: bound to our address and port
    there, in the epoll set, connected to the endpoint.  Returns it, or
    None on failure (logged)."""
    from pasta import udp

    side = uflow.side[sidei]
    pif = uflow.pif[sidei]
    try:
        s = flowside_sock_l4(c, EpollType.UDP, pif, side)
    except OSError as e:
        flow_perror_ratelimit(uflow, now,
                              e, "Couldn't open flow specific socket")
        return None

    try:
        s.setblocking(False)
        udp.udp_sock_opts(s, s.family)
    except OSError as e:
        flow_perror_ratelimit(uflow, now, e,
                              "Couldn't set options on flow socket")
        s.close()
        return None

    flow_epollid_set(uflow, EPOLLFD_ID_DEFAULT)
    try:
        flow_epoll_set(uflow, EPOLL_CTL_ADD, EPOLLIN, s.fileno(), sidei)
    except OSError as e:
        flow_perror_ratelimit(uflow, now, e, "Couldn't add flow socket")
        s.close()
        return None

    try:
        flowside_connect(c, s, pif, side)
    except OSError as e:
        flow_warn_perror_ratelimit(uflow, now, e,
                                   "Couldn't connect flow socket")
        epoll_del(c, s.fileno())
        s.close()
        return None

    uflow.s[sidei] = s
    # Datagrams that arrived between bind() and connect() may belong to
    # other flows: udp_flow_defer() sorts them out before the next round.
    if sidei:
        uflow.flush1 = True
    else:
        uflow.flush0 = True
    return s


def udp_flow_new(c, flow, rule_hint, now):
    """Finish setting up a new flow whose initiating side is known:
    target, sockets, hash entries.  Returns the target side's index, or
    ``FLOW_SIDX_NONE`` (the entry is then given back)."""
    uflow = None

    tgt = flow_target(c, flow, rule_hint, IPPROTO_UDP)
    if tgt is None:
        flow_alloc_cancel(flow)
        return FLOW_SIDX_NONE

    uflow = FLOW_SET_TYPE(flow, FLOW_UDP, UdpFlow)
    uflow.ts = now
    uflow.activity[INISIDE] = 1
    uflow.activity[TGTSIDE] = 0

    for sidei in (INISIDE, TGTSIDE):
        if pif_is_socket(uflow.pif[sidei]):
            if udp_flow_sock(c, uflow, sidei, now) is None:
                return _cancel(c, uflow)

    if uflow.s[TGTSIDE] is not None and inany_is_unspecified(tgt.oaddr):
        # connect() chose our address: replies must be matched against it
        s = uflow.s[TGTSIDE]
        try:
            addr, port = inany_from_sockaddr(s.family, s.getsockname())
        except (OSError, ValueError) as e:
            flow_perror(uflow, e, "Unable to determine local address")
            return _cancel(c, uflow)
        if port != tgt.oport:
            flow_err_ratelimit(uflow, now, "Unexpected local port")
            return _cancel(c, uflow)
        tgt.oaddr = addr

    # The tap side is always found by hash; socket sides are too when a
    # datagram reaches them through a socket shared by several flows.
    for sidei in (INISIDE, TGTSIDE):
        flow_hash_insert(c, flow_sidx(uflow, sidei))

    FLOW_ACTIVATE(uflow)
    return flow_sidx(uflow, TGTSIDE)


def _cancel(c, uflow):
    udp_flow_close(c, uflow)
    flow_alloc_cancel(uflow)
    return FLOW_SIDX_NONE


def _udp_flow_new_guarded(c, flow, rule_hint, now):
    """``udp_flow_new()``, giving the entry back if it fails on a bug:
    an entry left half set up would stop every later allocation."""
    try:
        return udp_flow_new(c, flow, rule_hint, now)
    except Exception:
        from pasta import flow as flowtab
        f = flowtab.flow_new_entry
        if f is not None:
            if isinstance(f, UdpFlow):
                udp_flow_close(c, f)
            flow_alloc_cancel(f)
        raise


def udp_flow_from_sock(c, pif, dst, port, family, s_in, rule_hint, now):
    """Flow of a datagram from ``s_in`` (a socket address of ``family``)
    to our address ``dst`` (inany, None if not known) and ``port``,
    received on a socket of ``pif``: found, or created.  Returns the side
    index of the flow's other side (where the datagram goes), or
    ``FLOW_SIDX_NONE``."""
    sidx = flow_lookup_sa(c, IPPROTO_UDP, pif, family, s_in, dst, port)
    uflow = udp_at_sidx(sidx)
    if uflow is not None:
        udp_flow_activity(uflow, sidx & 1, now)
        return sidx ^ 1

    flow = flow_alloc()
    if flow is None:
        if log.ratelimit("udp flow alloc"):
            log.err("Couldn't allocate flow for UDP datagram from %s %s",
                    pif_name(pif), s_in)
        return FLOW_SIDX_NONE

    try:
        ini = flow_initiate_sa(flow, pif, family, s_in, dst, port)
    except (OSError, ValueError, IndexError):
        flow_alloc_cancel(flow)
        return FLOW_SIDX_NONE

    if not inany_is_unicast(ini.eaddr) or ini.eport == 0 or \
       ini.oport == 0:
        # Our address may be unspecified: with a socket bound to the
        # wildcard and no PKTINFO, we do not know it.
        flow_err_ratelimit(flow, now, "Invalid endpoint on UDP recvfrom()")
        flow_alloc_cancel(flow)
        return FLOW_SIDX_NONE

    return _udp_flow_new_guarded(c, flow, rule_hint, now)


def udp_flow_from_tap(c, pif, af, saddr, daddr, srcport, dstport, now):
    """Flow of datagrams from the guest (``saddr``:``srcport`` to
    ``daddr``:``dstport``, packed addresses of family ``af``): found, or
    created.  Returns the side index the datagrams go to, or
    ``FLOW_SIDX_NONE``."""
    assert pif == PIF_TAP

    sidx = flow_lookup_af(c, IPPROTO_UDP, pif, af, saddr, daddr, srcport,
                          dstport)
    uflow = udp_at_sidx(sidx)
    if uflow is not None:
        udp_flow_activity(uflow, sidx & 1, now)
        return sidx ^ 1

    flow = flow_alloc()
    if flow is None:
        if log.ratelimit("udp flow alloc"):
            log.err("Couldn't allocate flow for UDP datagram from %s "
                    "%s:%d -> %s:%d", pif_name(pif),
                    socket.inet_ntop(af, bytes(saddr)), srcport,
                    socket.inet_ntop(af, bytes(daddr)), dstport)
        return FLOW_SIDX_NONE

    ini = flow_initiate_af(flow, PIF_TAP, af, bytes(saddr), srcport,
                           bytes(daddr), dstport)

    if not inany_is_unicast(ini.eaddr) or ini.eport == 0 or \
       inany_is_unspecified(ini.oaddr) or ini.oport == 0:
        flow_dbg(flow, "Invalid endpoint on UDP packet")
        flow_alloc_cancel(flow)
        return FLOW_SIDX_NONE

    return _udp_flow_new_guarded(c, flow, FWD_NO_HINT, now)


def udp_flush_flow(c, uflow, sidei, now):
    """Pass what side ``sidei``'s socket holds through the look-up path:
    the datagrams may be for any flow with that pif and our port."""
    from pasta import udp
    s = uflow.s[sidei]
    if s is None:
        return
    udp.udp_sock_fwd(c, s, -1, uflow.pif[sidei], uflow.side[sidei].oport,
                     now)


def udp_flow_defer(c, uflow, now):
    """Deferred work of a flow: flush new sockets.  Returns True when the
    flow is closed and its entry can be freed."""
    if uflow.closed:
        return True
    if uflow.flush0:
        uflow.flush0 = False
        udp_flush_flow(c, uflow, INISIDE, now)
    if uflow.flush1:
        uflow.flush1 = False
        udp_flush_flow(c, uflow, TGTSIDE, now)
    return uflow.closed


def udp_flow_timer(c, uflow, now):
    """Expire the flow after its timeout of silence.  Returns True when
    it was closed and the entry can be freed."""
    timeout = c.udp.timeout
    if uflow.activity[TGTSIDE] and \
       (uflow.activity[INISIDE] > 1 or uflow.activity[TGTSIDE] > 1):
        timeout = c.udp.stream_timeout

    if now - uflow.ts <= timeout:
        return False

    udp_flow_close(c, uflow)
    return True


def udp_flow_activity(uflow, sidei, now):
    """A datagram was seen from side ``sidei``."""
    uflow.ts = now
    if uflow.activity[sidei] < UINT8_MAX:
        uflow.activity[sidei] += 1
