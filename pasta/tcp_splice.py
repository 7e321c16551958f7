# SPDX-License-Identifier: GPL-2.0-or-later
"""Spliced TCP: local connections between the host and the namespace.

Theory of operation
===================

A TCP connection that starts on a loopback address, on either side, does
not need the tap device and a TCP implementation of our own: pasta holds
one socket on each side -- the accepted one (side 0) and one it connects
to the target (side 1), in the namespace or on the host -- and moves
bytes between them with ``splice()``, through one pipe per direction,
without the data ever entering this process.  Each direction copies from
its source socket into its pipe, then from the pipe into the other
socket; ``pending[i]`` counts the bytes sitting in the pipe of direction
``i`` (from side ``i``).

A connection is a flow of type ``FLOW_TCP_SPLICE`` (``flow.py``) whose
state is a set of events, each set once:

- ``SPLICE_CONNECT``: the target socket is connecting;
- ``SPLICE_ESTABLISHED``: it connected, pipes are in place, data flows;
- ``OUT_WAIT_0``/``OUT_WAIT_1``: the socket of that side did not take all
  the pipe had for it: wait until it is writable (and stop reading from
  the other side meanwhile, so the pipe does not overflow);
- ``FIN_RCVD_0``/``FIN_RCVD_1``: that side's peer shut its writing half
  (end of file on the socket);
- ``FIN_SENT_0``/``FIN_SENT_1``: we shut the writing half of that side's
  socket, once its pipe was drained after a FIN from the opposite side.

So a FIN travels like the data does, and each direction closes on its
own: the other one keeps flowing until its own FIN.  With both FINs sent,
the connection closes cleanly.  A socket error, a hang-up, or a failure
to splice resets both sides (``SO_LINGER`` with a zero timeout, so that
closing sends a RST) instead.  Closing is deferred: the ``CLOSING`` flag
takes the sockets out of the epoll set, and ``tcp_splice_flow_defer()``,
called from the flow table after the batch of events, closes sockets and
pipes and frees the flow.

The epoll interest of each socket follows from the events
(``tcp_splice_conn_epoll_events()``): readable and read-hang-up while
established and its direction is not finished; writable while the
target connects or while a pipe towards it waits.

Resources are prepared outside the connection path: a pool of spare
pipes, already enlarged (``F_SETPIPE_SZ``) to the largest size the
system allows up to 8 MiB, and a pool of unconnected sockets in the
namespace, from the socket helper (``util.ns_socket()``), since this
process never enters the namespace.  Both are refilled from the TCP
timer (``tcp_splice_refill()``).
"""

import errno
import fcntl
import os
import select
import socket
import struct

from pasta import log
from pasta.epoll_ctl import epoll_del
from pasta.flow import (EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLLFD_ID_DEFAULT,
                        FLOW_TCP_SPLICE, Flow, TGTSIDE, flow_activate,
                        flow_at_sidx, flow_dbg, flow_epoll_set,
                        flow_epollid_set, flow_set_type, flow_trace,
                        flow_dbg_ratelimit, flow_err_ratelimit,
                        flow_perror_ratelimit)
from pasta.inany import inany_v4
from pasta.pif import PIF_HOST, PIF_SPLICE, pif_name, pif_sockaddr

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032

MAX_PIPE_SIZE = 8 * 1024 * 1024
TCP_SPLICE_PIPE_POOL_SIZE = 32
TCP_SOCK_POOL_SIZE = 32

SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
SPLICE_F_MORE = getattr(os, "SPLICE_F_MORE", 4)

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLHUP = select.EPOLLHUP
EPOLLERR = select.EPOLLERR

_LINGER0 = struct.pack("ii", 1, 0)

# Connection events
SPLICE_CLOSED = 0
SPLICE_CONNECT = 1 << 0
SPLICE_ESTABLISHED = 1 << 1


def OUT_WAIT(sidei):
    return 1 << 3 if sidei else 1 << 2


def FIN_RCVD(sidei):
    return 1 << 5 if sidei else 1 << 4


def FIN_SENT(sidei):
    return 1 << 7 if sidei else 1 << 6


tcp_splice_event_str = ["SPLICE_CONNECT", "SPLICE_ESTABLISHED",
                        "OUT_WAIT_0", "OUT_WAIT_1", "FIN_RCVD_0",
                        "FIN_RCVD_1", "FIN_SENT_0", "FIN_SENT_1"]


# Connection flags
def RCVLOWAT_SET(sidei):
    return 1 << 1 if sidei else 1 << 0


def RCVLOWAT_ACT(sidei):
    return 1 << 3 if sidei else 1 << 2


CLOSING = 1 << 4

tcp_splice_flag_str = ["RCVLOWAT_SET_0", "RCVLOWAT_SET_1", "RCVLOWAT_ACT_0",
                       "RCVLOWAT_ACT_1", "CLOSING"]

# Module state, allocated once by tcp_splice_init()
pipe_size = MAX_PIPE_SIZE
splice_pipe_pool = []           # spare (read fd, write fd) pairs
ns_sock_pool4 = []              # spare unconnected sockets in the namespace
ns_sock_pool6 = []


class TcpSpliceConn(Flow):
    """A spliced connection (``struct tcp_splice_conn``): the flow's common
    fields plus ``s`` (the two sockets, side 0 accepted, side 1 connected
    by us), ``pipe`` (per direction, ``[read fd, write fd]``, -1 when
    none), ``pending`` (bytes in each pipe), ``events`` and ``flags``."""

    __slots__ = ("s", "pipe", "pending", "events", "flags", "hup")

    def __init__(self):
        super().__init__()
        self.hup = [False, False]
        self.s = [None, None]
        self.pipe = [[-1, -1], [-1, -1]]
        self.pending = [0, 0]
        self.events = SPLICE_CLOSED
        self.flags = 0


def _bit_name(table, bit):
    i = bit.bit_length() - 1
    return table[i] if 0 <= i < len(table) else "?"


def tcp_splice_conn_epoll_events(events, sidei):
    """Epoll events to wait for on the socket of side ``sidei``."""
    e = 0
    if events & SPLICE_ESTABLISHED:
        if not events & FIN_SENT(not sidei):
            e = EPOLLIN | EPOLLRDHUP
    elif sidei == 1 and events & SPLICE_CONNECT:
        e = EPOLLOUT

    if events & OUT_WAIT(sidei):
        e |= EPOLLOUT
    if events & OUT_WAIT(not sidei):
        e &= ~EPOLLIN
    return e


def tcp_splice_epoll_ctl(conn, now=None):
    """Update the epoll interest of both sockets from the events; returns
    0, or -1 after a (rate-limited) error message."""
    try:
        for sidei in (0, 1):
            if conn.s[sidei] is not None and not conn.hup[sidei]:
                flow_epoll_set(conn, EPOLL_CTL_MOD,
                               tcp_splice_conn_epoll_events(conn.events,
                                                            sidei),
                               conn.s[sidei].fileno(), sidei)
    except (OSError, ValueError, KeyError) as e:
        flow_perror_ratelimit(conn, now, e, "ERROR on epoll_ctl()")
        return -1
    return 0


def conn_flag(conn, flag, unset=False):
    """Set (or with ``unset``, clear) a connection flag, and log it; setting
    ``CLOSING`` takes both sockets out of the epoll set."""
    if unset:
        if not conn.flags & flag:
            return
        conn.flags &= ~flag
        flow_dbg(conn, "%s dropped", _bit_name(tcp_splice_flag_str, flag))
        return

    if conn.flags & flag:
        return
    conn.flags |= flag
    flow_dbg(conn, "%s", _bit_name(tcp_splice_flag_str, flag))

    if flag == CLOSING:
        from pasta import flow as _flow
        c = _flow._ctx
        for s in conn.s:
            if s is not None and c is not None:
                epoll_del(c, s.fileno())


def conn_event(conn, event, now=None, unset=False):
    """Record (or with ``unset``, clear) a connection event, log it, and
    update the epoll interest; a failure there closes the connection."""
    if unset:
        if not conn.events & event:
            return
        conn.events &= ~event
        flow_dbg(conn, "~%s", _bit_name(tcp_splice_event_str, event))
    else:
        if conn.events & event:
            return
        conn.events |= event
        flow_dbg(conn, "%s", _bit_name(tcp_splice_event_str, event))

    if tcp_splice_epoll_ctl(conn, now):
        conn_flag(conn, CLOSING)


def tcp_linger0(conn, s):
    """Make closing ``s`` send a RST rather than a FIN."""
    if s is None:
        return
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    except OSError:
        flow_trace(conn, "SO_LINGER failed, close will not reset")


def tcp_splice_rst(conn):
    """Close the connection, resetting both sides."""
    if conn.flags & CLOSING:
        return
    for s in conn.s:
        tcp_linger0(conn, s)
    conn_flag(conn, CLOSING)


def _close_pipe(p):
    for fd in p:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def tcp_splice_flow_defer(conn):
    """Deferred work of a flow: once ``CLOSING``, close sockets and pipes.
    Returns True when the flow can be freed."""
    if not conn.flags & CLOSING:
        return False

    for sidei in (0, 1):
        # Pipes may still hold data: close rather than recycle them
        _close_pipe(conn.pipe[sidei])
        conn.pipe[sidei] = [-1, -1]
        s = conn.s[sidei]
        if s is not None:
            s.close()
            conn.s[sidei] = None
        conn.pending[sidei] = 0

    conn.events = SPLICE_CLOSED
    conn.flags = 0
    flow_dbg(conn, "CLOSED")
    return True


def _new_pipe():
    """A non-blocking pipe enlarged to ``pipe_size``: ``[r, w]``.  Raises
    ``OSError``."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if fcntl.fcntl(r, F_SETPIPE_SZ, pipe_size) != pipe_size:
            log.trace("TCP (spliced): cannot set pipe size to %d", pipe_size)
    except OSError:
        log.trace("TCP (spliced): cannot set pipe size to %d", pipe_size)
    return [r, w]


def tcp_splice_connect_finish(c, conn, now=None):
    """The target socket is connected: give each direction a pipe and mark
    the connection established.  Returns 0, or -1 after resetting it."""
    for sidei in (0, 1):
        if conn.pipe[sidei][0] >= 0:
            continue
        if splice_pipe_pool:
            conn.pipe[sidei] = list(splice_pipe_pool.pop())
            continue
        try:
            conn.pipe[sidei] = _new_pipe()
        except OSError as e:
            flow_perror_ratelimit(conn, now, e, "cannot create %d->%d pipe",
                                  sidei, not sidei)
            tcp_splice_rst(conn)
            return -1

    if not conn.events & SPLICE_ESTABLISHED:
        conn_event(conn, SPLICE_ESTABLISHED, now)
    return 0


def _pool_sock(pool):
    while pool:
        s = pool.pop()
        if s is not None:
            return s
    return None


def tcp_conn_sock_ns(c, af):
    """An unconnected TCP socket in the namespace, from the pool if
    possible.  Returns None (after an error message) if none can be
    had."""
    pool = ns_sock_pool6 if af == socket.AF_INET6 else ns_sock_pool4
    s = _pool_sock(pool)
    if s is not None:
        return s

    # The pool ran dry: refill it now, we pay the round trip anyway
    tcp_sock_refill_ns(c)
    s = _pool_sock(pool)
    if s is None:
        log.err("TCP: No available ns sockets for new connection")
    return s


def tcp_conn_sock(af):
    """An unconnected, non-blocking TCP socket on the host."""
    try:
        from pasta import tcp
        fn = getattr(tcp, "tcp_conn_sock", None)
    except ImportError:
        fn = None
    if fn is not None:
        s = fn(af)
        if isinstance(s, int):
            s = socket.socket(fileno=s) if s >= 0 else None
        if s is not None:
            return s
    try:
        return socket.socket(af, socket.SOCK_STREAM | socket.SOCK_NONBLOCK |
                             socket.SOCK_CLOEXEC, socket.IPPROTO_TCP)
    except OSError as e:
        log.err_perror(e, "TCP: can't open socket for spliced connection")
        return None


def _setsockopt_tcp(conn, s, opt, what):
    try:
        s.setsockopt(socket.SOL_TCP, opt, 1)
    except OSError:
        flow_trace(conn, "failed to set %s on socket %d", what, s.fileno())


def tcp_splice_connect(c, conn, now=None):
    """Open the target side's socket and start connecting it.  Returns 0
    if connected or in progress, -1 on failure."""
    tgt = conn.side[TGTSIDE]
    af = socket.AF_INET if inany_v4(tgt.eaddr) is not None \
        else socket.AF_INET6
    tgtpif = conn.pif[TGTSIDE]

    if tgtpif == PIF_HOST:
        s1 = tcp_conn_sock(af)
    elif tgtpif == PIF_SPLICE:
        s1 = tcp_conn_sock_ns(c, af)
    else:
        raise AssertionError("spliced connection to %s" % pif_name(tgtpif))
    if s1 is None:
        return -1
    s1.setblocking(False)
    conn.s[1] = s1

    _setsockopt_tcp(conn, s1, socket.TCP_QUICKACK, "TCP_QUICKACK")
    _setsockopt_tcp(conn, conn.s[0], socket.TCP_NODELAY, "TCP_NODELAY")
    _setsockopt_tcp(conn, s1, socket.TCP_NODELAY, "TCP_NODELAY")

    _family, sa = pif_sockaddr(c, tgtpif, tgt.eaddr, tgt.eport)

    flow_epollid_set(conn, EPOLLFD_ID_DEFAULT)
    try:
        flow_epoll_set(conn, EPOLL_CTL_ADD, 0, conn.s[0].fileno(), 0)
        flow_epoll_set(conn, EPOLL_CTL_ADD, 0, s1.fileno(), 1)
    except (OSError, ValueError) as e:
        flow_perror_ratelimit(conn, now, e, "Cannot register to epollfd")
        return -1

    conn_event(conn, SPLICE_CONNECT, now)

    rc = s1.connect_ex(sa)
    if rc == 0:
        conn_event(conn, SPLICE_ESTABLISHED, now)
        return tcp_splice_connect_finish(c, conn, now)
    if rc not in (errno.EINPROGRESS, errno.EAGAIN):
        flow_trace(conn, "Couldn't connect socket for splice: %s",
                   os.strerror(rc))
        return -1
    return 0


def tcp_splice_conn_from_sock(c, flow, s0, now=None):
    """Turn a flow whose target is decided (HOST or SPLICE) into a spliced
    connection for accepted socket ``s0`` (a ``socket.socket``, or a
    descriptor, which the connection then owns), and start connecting
    its target side.  Returns the connection object that now stands for
    the flow in the table; on failure it is already closing (reset)."""
    from pasta.passt import MODE_PASTA
    assert c.mode == MODE_PASTA

    if isinstance(s0, int):
        s0 = socket.socket(fileno=s0)
    s0.setblocking(False)

    conn = flow_set_type(flow, FLOW_TCP_SPLICE, TcpSpliceConn)
    conn.hup = [False, False]
    conn.s = [s0, None]
    conn.pipe = [[-1, -1], [-1, -1]]
    conn.pending = [0, 0]

    _setsockopt_tcp(conn, s0, socket.TCP_QUICKACK, "TCP_QUICKACK")

    if tcp_splice_connect(c, conn, now):
        tcp_splice_rst(conn)
        if not conn.flags & CLOSING:
            conn_flag(conn, CLOSING)

    flow_activate(conn)
    return conn


def _splice(src, dst, n, flags):
    """One ``splice()`` call: bytes moved, 0 at end of file, or None if it
    would block.  Other errors raise ``OSError``."""
    while True:
        try:
            return os.splice(src, dst, n, flags=flags)
        except BlockingIOError:
            return None
        except InterruptedError:
            continue


def tcp_splice_forward(c, conn, fromsidei, now=None):
    """Move what can be moved from side ``fromsidei`` to the other side,
    through that direction's pipe, and pass a FIN on once the pipe is
    empty.  Returns 0, or -1 if the connection must be reset."""
    tosidei = 1 - fromsidei
    src = conn.s[fromsidei].fileno()
    dst = conn.s[tosidei].fileno()
    pr, pw = conn.pipe[fromsidei]
    size = pipe_size
    base = SPLICE_F_MOVE | SPLICE_F_NONBLOCK

    while True:
        more = 0
        try:
            readlen = _splice(src, pw, size, base)
        except OSError as e:
            flow_perror_ratelimit(conn, now, e, "Splicing from %s socket",
                                  pif_name(conn.pif[fromsidei]))
            return -1

        if log.log_trace:
            flow_trace(conn, "%s from read-side call", readlen)

        if not readlen:
            if readlen == 0:            # end of file
                conn_event(conn, FIN_RCVD(fromsidei), now)
            # Blocked or finished reading, and nothing to write either
            if not conn.pending[fromsidei]:
                break
        else:
            conn.pending[fromsidei] += readlen
            if readlen >= size * 90 // 100:
                more = SPLICE_F_MORE
            if conn.flags & RCVLOWAT_SET(fromsidei):
                conn_flag(conn, RCVLOWAT_ACT(fromsidei))

        try:
            written = _splice(pr, dst, size, base | more)
        except OSError as e:
            flow_perror_ratelimit(conn, now, e, "Splicing to %s socket",
                                  pif_name(conn.pif[tosidei]))
            return -1

        if log.log_trace:
            flow_trace(conn, "%s from write-side call (passed %d)", written,
                       size)

        if written is None:
            break

        conn.pending[fromsidei] -= written

        if not conn.pending[fromsidei] and not readlen:
            break

    # Wake up on the writing side if and only if the pipe holds data
    if conn.pending[fromsidei]:
        conn_event(conn, OUT_WAIT(tosidei), now)
    else:
        conn_event(conn, OUT_WAIT(tosidei), now, unset=True)

    if (conn.events & FIN_RCVD(fromsidei) and
            not conn.events & FIN_SENT(tosidei) and
            not conn.pending[fromsidei]):
        try:
            conn.s[tosidei].shutdown(socket.SHUT_WR)
        except OSError as e:
            flow_perror_ratelimit(conn, now, e, "shutdown() on %s",
                                  pif_name(conn.pif[tosidei]))
            return -1
        conn_event(conn, FIN_SENT(tosidei), now)

    return 0


def tcp_splice_sock_handler(c, ref, events, now):
    """Events on either socket of a spliced connection."""
    conn = flow_at_sidx(ref.sidx)
    if conn is None or not isinstance(conn, TcpSpliceConn):
        return
    evsidei = ref.sidx & 1

    if conn.events == SPLICE_CLOSED or conn.flags & CLOSING:
        return

    if events & EPOLLERR:
        s = conn.s[evsidei]
        try:
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            flow_dbg_ratelimit(conn, now, "Error event on %s socket: %s",
                               pif_name(conn.pif[evsidei]),
                               os.strerror(e) if e else "none")
        except OSError as e:
            flow_perror_ratelimit(conn, now, e, "Error retrieving SO_ERROR")
        tcp_splice_rst(conn)
        return

    if conn.events == SPLICE_CONNECT:
        if not events & EPOLLOUT:
            flow_err_ratelimit(conn, now,
                               "Unexpected events 0x%x during connect",
                               events)
            tcp_splice_rst(conn)
            return
        if tcp_splice_connect_finish(c, conn, now):
            tcp_splice_rst(conn)
            return

    if events & EPOLLOUT:
        if tcp_splice_forward(c, conn, 1 - evsidei, now):
            tcp_splice_rst(conn)
            return

    if events & (EPOLLIN | EPOLLRDHUP):
        if tcp_splice_forward(c, conn, evsidei, now):
            tcp_splice_rst(conn)
            return

    if (conn.events & (FIN_SENT(0) | FIN_SENT(1))) == \
            (FIN_SENT(0) | FIN_SENT(1)):
        # Both directions finished: a clean close, no reset
        conn_flag(conn, CLOSING)
        return

    if events & EPOLLHUP:
        if conn.events & FIN_SENT(evsidei):
            # Both halves of this socket are shut, cleanly (a reset would
            # have come with EPOLLERR), but what it still has to read, or
            # its pipe still holds, is waiting for the other side to take
            # it: that side's EPOLLOUT drives the rest.  A hang-up cannot
            # be masked, so stop watching this socket rather than spin.
            from pasta import flow as _flow
            flow_dbg(conn, "side %d hung up after our FIN, draining",
                     evsidei)
            conn.hup[evsidei] = True
            epoll_del(_flow._ctx, conn.s[evsidei].fileno())
            return
        flow_dbg_ratelimit(conn, now, "Hangup from %s socket",
                           pif_name(conn.pif[evsidei]))
        tcp_splice_rst(conn)


def tcp_set_pipe_size(c):
    """Find the largest pipe size, halving from ``MAX_PIPE_SIZE``, that a
    whole pool's worth of pipes can be given."""
    global pipe_size

    size = MAX_PIPE_SIZE
    while size:
        pipes = []
        ok = True
        try:
            for _i in range(TCP_SPLICE_PIPE_POOL_SIZE):
                p = os.pipe2(os.O_CLOEXEC)
                pipes.append(p)
                fcntl.fcntl(p[0], F_SETPIPE_SZ, size)
        except OSError:
            ok = False
        for p in pipes:
            _close_pipe(p)
        if ok:
            break
        size //= 2
    pipe_size = size or MAX_PIPE_SIZE
    tcp = getattr(c, "tcp", None)
    if tcp is not None:
        try:
            tcp.pipe_size = pipe_size
        except AttributeError:
            pass


def tcp_splice_pipe_refill(c):
    """Top the pool of spare pipes up."""
    while len(splice_pipe_pool) < TCP_SPLICE_PIPE_POOL_SIZE:
        try:
            splice_pipe_pool.append(_new_pipe())
        except OSError:
            break


def _refill_pool(c, pool, af):
    from pasta import util

    while len(pool) < TCP_SOCK_POOL_SIZE:
        try:
            s = util.ns_socket(c, af, socket.SOCK_STREAM |
                               socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                               socket.IPPROTO_TCP)
        except OSError as e:
            log.warn("TCP: Error refilling %s ns socket pool: %s",
                     "IPv4" if af == socket.AF_INET else "IPv6",
                     os.strerror(e.errno) if e.errno else e)
            return
        s.setblocking(False)
        pool.append(s)


def tcp_sock_refill_ns(c):
    """Fill the pools of spare sockets in the namespace."""
    if c.pasta_netns_fd is None or c.pasta_netns_fd < 0:
        return
    if c.ifi4:
        _refill_pool(c, ns_sock_pool4, socket.AF_INET)
    if c.ifi6:
        _refill_pool(c, ns_sock_pool6, socket.AF_INET6)


def tcp_splice_refill(c):
    """Top the socket and pipe pools up (call from the TCP timer).

    Upstream waits until a socket pool is half empty, because entering
    the namespace is what costs there; through the socket helper every
    socket costs one round trip however they are grouped, so the pools
    are simply kept full.
    """
    tcp_sock_refill_ns(c)
    tcp_splice_pipe_refill(c)


def tcp_splice_init(c):
    """Choose the pipe size and fill the pools (pasta mode, from
    ``tcp_init()``)."""
    for p in splice_pipe_pool:
        _close_pipe(p)
    splice_pipe_pool.clear()
    for pool in (ns_sock_pool4, ns_sock_pool6):
        for s in pool:
            s.close()
        pool.clear()

    tcp_set_pipe_size(c)
    tcp_splice_pipe_refill(c)
    tcp_sock_refill_ns(c)


def tcp_splice_timer(conn):
    """Per-second timer of a connection: drop low-water marks that did
    their job."""
    for sidei in (0, 1):
        if (conn.flags & RCVLOWAT_SET(sidei) and
                not conn.flags & RCVLOWAT_ACT(sidei)):
            try:
                conn.s[sidei].setsockopt(socket.SOL_SOCKET,
                                         socket.SO_RCVLOWAT, 1)
            except OSError:
                flow_trace(conn, "can't set SO_RCVLOWAT")
            conn_flag(conn, RCVLOWAT_SET(sidei), unset=True)
    for sidei in (0, 1):
        conn_flag(conn, RCVLOWAT_ACT(sidei), unset=True)
