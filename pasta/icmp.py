# SPDX-License-Identifier: GPL-2.0-or-later
"""ICMP and ICMPv6 echo: the guest's pings, relayed through ping sockets.

Theory of operation
-------------------

pasta needs no privileges to relay pings: Linux offers "ping sockets"
(``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`` and the ICMPv6
counterpart) to any group listed in ``net.ipv4.ping_group_range``.  Such
a socket sends echo requests and receives the matching echo replies; the
kernel owns the echo identifier (it picks one when the socket is bound,
and writes it into every request sent) and computes the checksum.

Each identifier the guest uses towards one destination is a flow of type
``FLOW_PING4`` or ``FLOW_PING6`` (``IcmpPingFlow``): the initiating side
is the guest, with the identifier standing in for both ports, and the
target side is a ping socket on the host, opened when the first request
arrives (``icmp_ping_new()``).  Requests from the guest are written to
the socket as they are, the kernel replacing the identifier with the
socket's own; replies read from it (``icmp_sock_handler()``) get the
guest's identifier back and go to the guest from the address it pinged.
Sequence numbers pass through untouched.

Only echo requests from the guest are relayed; any other ICMP type is
ignored, as are messages too short to hold an echo header.  A flow ends
after ``ICMP_ECHO_TIMEOUT`` seconds without a request, which closes its
socket.  When ping sockets are not allowed, requests are dropped with a
warning that says how to allow them.
"""

import socket
import struct

from pasta import fwd, log, tap
from pasta.epoll_ctl import EPOLLIN, EpollType, epoll_del
from pasta.flow import (EPOLL_CTL_ADD, EPOLLFD_ID_DEFAULT, FLOW_PING4,
                        FLOW_PING6, FWD_NO_HINT, INISIDE, TGTSIDE, Flow,
                        FLOW_ACTIVATE, FLOW_SET_TYPE, MAC_UNDEF, flow_alloc,
                        flow_alloc_cancel, flow_at_sidx, flow_dbg,
                        flow_epoll_set, flow_epollid_set,
                        flow_err_ratelimit, flow_hash_insert,
                        flow_hash_remove, flow_initiate_af, flow_lookup_af,
                        flow_perror_ratelimit, flow_sidx, flow_target,
                        flow_warn_perror_ratelimit, flowside_sock_l4)
from pasta.inany import inany_v4
from pasta.passt import MODE_PASTA
from pasta.pif import PIF_HOST, PIF_TAP, pif_name, pif_sockaddr

ICMP_ECHO_TIMEOUT = 60          # s without a request before closing
ICMP_NUM_IDS = 1 << 16
ICMP_MAX_BATCH = 32             # replies read per event

ICMP_ECHOREPLY = 0
ICMP_ECHO = 8
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

ICMP_HDR_LEN = 8                # type, code, checksum, id, sequence

_ECHO = struct.Struct("!BBHHH")

_buf = bytearray(0xffff)
_view = memoryview(_buf)

# Counters of messages dropped, by reason, for debugging and tests.
icmp_dropped = {}


def _drop(reason):
    icmp_dropped[reason] = icmp_dropped.get(reason, 0) + 1
    if log.log_trace:
        log.trace("icmp: dropped message: %s", reason)


class IcmpPingFlow(Flow):
    """A sequence of pings with one identifier (``struct
    icmp_ping_flow``): ``seq``, the last sequence number relayed to the
    guest (-1: none yet); ``sock``, the ping socket; ``ts``, the time of
    the last request from the guest."""

    __slots__ = ("seq", "sock", "ts")

    def __init__(self):
        super().__init__()
        self.seq = -1
        self.sock = None
        self.ts = 0.0


def ping_at_sidx(sidx):
    """The ping flow of side index ``sidx``, or None."""
    if sidx is None or sidx < 0:
        return None
    f = flow_at_sidx(sidx)
    if f is None or not isinstance(f, IcmpPingFlow) or \
       f.type not in (FLOW_PING4, FLOW_PING6):
        return None
    return f


def _neigh_mac(c, addr):
    get = getattr(fwd, "fwd_neigh_mac_get", None)
    if get is not None:
        try:
            mac = get(c, addr)
            if mac:
                return bytes(mac)
        except Exception:
            pass
    return c.our_tap_mac


def icmp_sock_handler(c, ref, now):
    """Replies on a ping socket: give them the guest's identifier and
    pass them to the guest."""

    if c.no_icmp:
        return
    pingf = ping_at_sidx(ref.sidx)
    if pingf is None or pingf.sock is None:
        return
    ini = pingf.side[INISIDE]
    v4 = pingf.type == FLOW_PING4

    for _ in range(ICMP_MAX_BATCH):
        try:
            n, sa = pingf.sock.recvfrom_into(_view, len(_buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            flow_perror_ratelimit(pingf, now, e, "recvfrom() error")
            return

        family = socket.AF_INET if len(sa) == 2 else socket.AF_INET6
        if n < ICMP_HDR_LEN or \
           family != (socket.AF_INET if v4 else socket.AF_INET6) or \
           _buf[0] != (ICMP_ECHOREPLY if v4 else ICMPV6_ECHO_REPLY):
            flow_err_ratelimit(pingf, now,
                               "Unexpected packet on ping socket")
            _drop("unexpected reply")
            continue

        # Back to the identifier the guest chose
        struct.pack_into("!H", _buf, 4, ini.eport)
        seq = (_buf[6] << 8) | _buf[7]

        # In pasta mode a request may come back to us as well: relay each
        # sequence number once.
        if c.mode == MODE_PASTA:
            if pingf.seq == seq:
                _drop("duplicate sequence")
                continue
            pingf.seq = seq

        flow_dbg(pingf, "echo reply to tap, ID: %d, seq: %d", ini.eport,
                 seq)

        if pingf.tap_omac == MAC_UNDEF:
            pingf.tap_omac = _neigh_mac(c, ini.oaddr)

        if v4:
            tap.tap_icmp4_send(c, inany_v4(ini.oaddr), inany_v4(ini.eaddr),
                               _view[:n], pingf.tap_omac)
        else:
            tap.tap_icmp6_send(c, ini.oaddr, ini.eaddr, _view[:n],
                               pingf.tap_omac)


def icmp_ping_close(c, pingf):
    """Close the flow's socket and drop its hash entry."""
    if pingf.sock is not None:
        epoll_del(c, pingf.sock.fileno())
        pingf.sock.close()
        pingf.sock = None
    flow_hash_remove(c, flow_sidx(pingf, INISIDE))


_warned_sock = False


def icmp_ping_new(c, af, id_, saddr, daddr, now):
    """Open a ping flow (and socket) for identifier ``id_`` from ``saddr``
    to ``daddr`` (packed).  Returns the flow, or None."""
    global _warned_sock

    proto = socket.IPPROTO_ICMP if af == socket.AF_INET else \
        socket.IPPROTO_ICMPV6
    flowtype = FLOW_PING4 if af == socket.AF_INET else FLOW_PING6

    flow = flow_alloc()
    if flow is None:
        return None

    flow_initiate_af(flow, PIF_TAP, af, saddr, id_, daddr, id_)
    tgt = flow_target(c, flow, FWD_NO_HINT, proto)
    if tgt is None:
        flow_alloc_cancel(flow)
        return None

    if flow.pif[TGTSIDE] != PIF_HOST:
        flow_err_ratelimit(flow, now,
                           "No support for forwarding %s from %s to %s",
                           "ICMP" if proto == socket.IPPROTO_ICMP
                           else "ICMPv6", pif_name(flow.pif[INISIDE]),
                           pif_name(flow.pif[TGTSIDE]))
        flow_alloc_cancel(flow)
        return None

    pingf = FLOW_SET_TYPE(flow, flowtype, IcmpPingFlow)
    pingf.seq = -1

    try:
        pingf.sock = flowside_sock_l4(c, EpollType.PING, PIF_HOST, tgt)
    except OSError as e:
        if not _warned_sock or log.ratelimit("icmp ping socket"):
            _warned_sock = True
            log.warn("Cannot open \"ping\" socket (%s). You might need to:",
                     e.strerror or e)
            log.warn("  sysctl -w net.ipv4.ping_group_range=\"0 "
                     "2147483647\"")
            log.warn("...echo requests/replies will fail.")
        flow_alloc_cancel(pingf)
        return None

    pingf.sock.setblocking(False)
    flow_epollid_set(pingf, EPOLLFD_ID_DEFAULT)
    try:
        flow_epoll_set(pingf, EPOLL_CTL_ADD, EPOLLIN, pingf.sock.fileno(),
                       TGTSIDE)
    except OSError as e:
        flow_perror_ratelimit(pingf, now, e, "Couldn't add ping socket")
        pingf.sock.close()
        pingf.sock = None
        flow_alloc_cancel(pingf)
        return None

    flow_dbg(pingf, "new socket %d for echo ID %d", pingf.sock.fileno(),
             id_)
    flow_hash_insert(c, flow_sidx(pingf, INISIDE))
    FLOW_ACTIVATE(pingf)
    return pingf


def icmp_tap_handler(c, pif, af, saddr, daddr, msg, now):
    """An ICMP or ICMPv6 message from the guest (``msg`` from its
    header): relay echo requests, ignore anything else.  Returns 1."""
    assert pif == PIF_TAP

    if len(msg) < ICMP_HDR_LEN:
        _drop("short message")
        return 1

    mtype, _code, _check, id_, seq = _ECHO.unpack_from(msg)
    if af == socket.AF_INET:
        if mtype != ICMP_ECHO:
            return 1
        proto = socket.IPPROTO_ICMP
    elif af == socket.AF_INET6:
        if mtype != ICMPV6_ECHO_REQUEST:
            return 1
        proto = socket.IPPROTO_ICMPV6
    else:
        return 1

    saddr = bytes(saddr)
    daddr = bytes(daddr)
    pingf = ping_at_sidx(flow_lookup_af(c, proto, PIF_TAP, af, saddr,
                                        daddr, id_, id_))
    if pingf is None:
        try:
            pingf = icmp_ping_new(c, af, id_, saddr, daddr, now)
        except Exception:
            # Never leave a half set up entry behind: it would stop
            # every later allocation
            from pasta import flow as flowtab
            f = flowtab.flow_new_entry
            if f is not None:
                if isinstance(f, IcmpPingFlow) and f.sock is not None:
                    epoll_del(c, f.sock.fileno())
                    f.sock.close()
                flow_alloc_cancel(f)
            raise
        if pingf is None:
            _drop("no flow")
            return 1

    tgt = pingf.side[TGTSIDE]
    pingf.ts = now

    _family, sa = pif_sockaddr(c, PIF_HOST, tgt.eaddr, 0)
    try:
        pingf.sock.sendto(msg, socket.MSG_NOSIGNAL, sa)
    except OSError as e:
        _drop("send error")
        flow_warn_perror_ratelimit(pingf, now, e,
                                   "failed to relay request to socket")
    else:
        flow_dbg(pingf, "echo request to socket, ID: %d, seq: %d", id_,
                 seq)
    return 1


def icmp_ping_timer(c, pingf, now):
    """Close the flow after ``ICMP_ECHO_TIMEOUT`` seconds without
    requests.  Returns True when the entry can be freed."""
    if now - pingf.ts <= ICMP_ECHO_TIMEOUT:
        return False
    icmp_ping_close(c, pingf)
    return True


def icmp_init():
    """Nothing to set up: ping sockets are opened per flow."""
