# SPDX-License-Identifier: GPL-2.0-or-later
"""TCP between the guest (tap interface) and ordinary host sockets.

Theory of operation
===================

pasta does not run a TCP stack of its own.  A connection the guest opens
is terminated here: its SYN makes us open a host socket and ``connect()``
it to where the forwarding rules say (``fwd.fwd_nat_from_tap()``), and
the guest's segments become ``sendmsg()`` calls on that socket.  What the
socket receives goes back to the guest as segments we build.  A
connection accepted on a listening socket (``-t``) goes the other way:
we send a SYN to the guest and, once it answers, carry data the same
way.  The host kernel does retransmission, congestion control and
everything else towards the real peer; here we only translate, keeping
sequence numbers, windows and the few timers the guest needs.

Data towards the guest is never copied into a buffer of ours: it stays
in the socket's receive queue until the guest acknowledges it.  We peek
at it (``MSG_PEEK`` from the offset set with ``SO_PEEK_OFF``; on kernels
before 6.9, which lack that option for TCP, what was sent already is
peeked again into a discard buffer that is never read), send it,
and only discard it from the socket (``recv`` with ``MSG_TRUNC``) once
it is acknowledged.  Retransmitting is rewinding: set the peek offset
back to zero and send again from the last acknowledged byte.

Events and flags
----------------

Instead of an explicit state machine, each connection keeps the events
it has seen (``events``); the state printed in logs is derived from
them.  Events: ``SOCK_ACCEPTED`` (accepted on a listening socket, SYN
sent to the guest), ``TAP_SYN_RCVD`` (SYN from the guest, socket
connecting), ``TAP_SYN_ACK_SENT`` (socket connected, SYN-ACK sent),
``ESTABLISHED``, ``SOCK_FIN_RCVD`` (the host peer closed its side),
``SOCK_FIN_SENT`` (we shut the socket down for writing), ``TAP_FIN_RCVD``,
``TAP_FIN_SENT`` and ``TAP_FIN_ACKED``.  Setting ``SOCK_ACCEPTED``,
``TAP_SYN_RCVD`` or ``ESTABLISHED`` clears the others; no events at all is
``CLOSED``, after which the flow table frees the entry and the socket is
closed.  Flags are attributes rather than history: ``STALLED`` (socket
data waits for the guest's window or ACK), ``LOCAL``, ``ACTIVE_CLOSE``,
``ACK_TO_TAP_DUE``, ``ACK_FROM_TAP_DUE``, ``ACK_FROM_TAP_BLOCKS`` and
``SYN_RETRIED``.  Both are logged by name whenever they change.

Sequence numbers and windows
----------------------------

- ``seq_to_tap``: next sequence we send; ``seq_ack_from_tap``: what the
  guest acknowledged.  The difference is data peeked but not yet
  acknowledged, and also the socket's peek offset.
- ``seq_from_tap``: next sequence we expect from the guest, which is also
  everything the socket accepted; ``seq_ack_to_tap``: what we
  acknowledged.
- Our initial sequence number is the keyed hash of the connection's
  addresses (from the flow table, RFC 6528) plus a clock ticking every
  32 ns.
- Window scaling and MSS are negotiated from the SYN: the guest's MSS
  option bounds the segments we send, its window scale interprets its
  window; we advertise a window scale of ``MAX_WS`` (if the guest offered
  scaling at all) and an MSS derived from the MTU.
- Segments we send are at most one MSS each (or super-frames of several
  MSS that the tap device segments, see ``tcp_buf.py``) and never go
  beyond the window the guest advertised.

Difference from upstream: flow control towards the host socket
---------------------------------------------------------------

Upstream, for a peer with a very low round-trip time (under 10 us, as any
peer on the same host), acknowledges the guest's data at once and
advertises the host peer's receive window.  A sender on the same host
then overruns our socket's send buffer: ``sendmsg()`` takes only part of
a batch, the rest is dropped, and with a single duplicate ACK per gap
each loss waits for a retransmission timeout.  This port never advertises
more than the socket can take: the window is always the free space of the
socket's send buffer (from ``SO_MEMINFO`` and ``SIOCOUTQ``, counting the
kernel's per-segment overhead, as upstream does for other peers), we
acknowledge exactly what ``sendmsg()`` accepted, and when the window is
low we also wait for ``EPOLLOUT`` on the socket to announce the space as
soon as it frees (which also lets the kernel grow the send buffer).  If
part of a batch is still refused, or the guest's data has a gap, we send
``DUP_ACK_COUNT`` (3) duplicate ACKs, enough for the guest's fast
retransmit, once per gap and again after the window reopens.

Timers
------

- ``ACK_FROM_TAP_DUE``: data (or a SYN, or a FIN) sent and not yet
  acknowledged.  After ``RTO_INIT`` seconds, doubled on each retry, we
  rewind and send again; after ``TCP_MAX_RETRIES`` retries (SYN: the
  host's ``tcp_syn_retries`` and ``tcp_syn_linear_timeouts``) the
  connection is reset.  A duplicate ACK from the guest rewinds at once
  (fast retransmit).
- ``ACK_TO_TAP_DUE``: an ACK to the guest is owed, or we advertised a
  zero window: after half the round-trip time the kernel reports for the
  socket, check again and send what is due (a window update forces one).
  For a zero window alone, while ``EPOLLOUT`` is awaited anyway, the
  check waits at least ``ZERO_WINDOW_RECHECK`` (50 ms) instead of
  spinning every 50 us as upstream would.
- Every ``TCP_TIMER_INTERVAL``: socket pools are refilled, connections
  without guest activity for ``KEEPALIVE_INTERVAL`` get a keepalive
  (which makes a guest that forgot the connection answer with a RST), and
  connections without any activity for ``INACTIVITY_INTERVAL`` are reset.

Difference from upstream: timers.  Upstream gives every connection its
own timerfd.  Here one timerfd serves all connections: each connection
keeps its deadline, a heap orders them, and the timerfd is armed for the
earliest one.  Rescheduling a deadline later costs no system call.

Closing
-------

A FIN from the guest shuts the socket down for writing; end of file on
the socket (``EPOLLRDHUP``) makes us send a FIN once all data before it
was sent.  A RST from the guest closes the socket with ``SO_LINGER`` zero,
which resets the host peer; an error or reset on the socket sends a RST
to the guest at once.  A connection refused by the host peer is reset
towards the guest; an unreachable destination is reported to the guest
with an ICMP destination unreachable message quoting its SYN, so that the
guest's ``connect()`` fails with ``EHOSTUNREACH`` or ``ENETUNREACH`` as it
would for a local program; a destination that never answers times out
in the guest's own SYN retries.

Inbound connections (``-t``): ``tcp_listen_handler()`` accepts, asks
``fwd.fwd_nat_from_host()`` where the connection goes, and either hands
it to ``tcp_splice.py`` (loopback sources, spliced between sockets) or
opens a connection to the guest, keeping the original source address
(mapped if it was a loopback or the host's own address).

Frames from the guest are untrusted: every length and offset is checked
before use; a segment that does not parse is dropped, one for an unknown
connection is answered with a RST (RFC 9293, 3.10.7.1), and nothing the
guest sends can raise out of ``tcp_tap_handler()``.  A SYN that cannot be
given a connection (flow table full, no socket) is refused with a RST.

Other differences from upstream, each explained where it is coded:

- sequence numbers compare over half the sequence space (``SEQ_LT()``);
- a zero window from the guest is stored, not ignored
  (``tcp_tap_window_update()``);
- after a fast retransmit, duplicate ACKs do not rewind again until the
  guest acknowledged what was in flight (``tcp_fast_rexmit_ok()``);
- an ACK for data never sent is ignored rather than trusted;
- a RST from the guest counts only within a window's reach of what we
  expect (not a blind one from anywhere in the sequence space);
- the window scale we offer is ``MAX_WS``, and none at all when the
  guest's SYN offered none (RFC 7323 then forbids scaling);
- the TCP checksum may be left to the tap device, and segments may be
  sent as super-frames the device segments (``tcp_buf.py``).
"""

import errno
import fcntl
import heapq
import os
import socket
import struct

from pasta import flow as _flow
from pasta import log
from pasta.epoll_ctl import (EpollRef, EpollType, epoll_add, epoll_del,
                             EPOLLET, EPOLLIN, EPOLLOUT, EPOLLRDHUP,
                             EPOLLHUP, EPOLLERR)
from pasta.flow import (Flow, FLOW_TCP, INISIDE, TGTSIDE, flow_dbg,
                        flow_trace, flow_dbg_perror,
                        flow_perror_ratelimit, flow_warn_perror_ratelimit,
                        flow_err_ratelimit, flowtab)
from pasta.inany import (inany_is_unicast, inany_ntop, inany_v4,
                         inany_from_sockaddr, inany_is_unspecified)
from pasta.pif import (PIF_HOST, PIF_SPLICE, PIF_TAP, pif_name,
                       pif_sockaddr)

# Limits and defaults
MAX_WS = 8
MAX_WINDOW = 1 << (16 + MAX_WS)
TCP_WS_MAX = 14
MSS_DEFAULT = 536
WINDOW_DEFAULT = 14600          # RFC 6928
IP_MAX_MTU = 65535
MSS4 = (IP_MAX_MTU - 20 - 20) & ~3
MSS6 = (IP_MAX_MTU - 20 - 40) & ~3
PAGE_SIZE = 4096

RTO_INIT = 1                    # s, RFC 6298
RTO_INIT_AFTER_SYN_RETRIES = 3  # s
TCP_RETRIES_BITS = 3
TCP_MAX_RETRIES = (1 << TCP_RETRIES_BITS) - 1
INACTIVITY_INTERVAL = 7200      # s
KEEPALIVE_INTERVAL = 30         # s
TCP_TIMER_INTERVAL = 1.0        # s

LOW_RTT_TABLE_SIZE = 8
LOW_RTT_THRESHOLD = 10          # us
SNDBUF_TO_BW_DELAY_INTERACTIVE = 20
SNDBUF_BIG = 4 * 1024 * 1024
SNDBUF_SMALL = 128 * 1024

RTT_STORE_MIN = 100             # us
RTT_EXP_MAX = 15

SYN_RETRIES = "/proc/sys/net/ipv4/tcp_syn_retries"
SYN_LINEAR_TIMEOUTS = "/proc/sys/net/ipv4/tcp_syn_linear_timeouts"
RTO_MAX_MS = "/proc/sys/net/ipv4/tcp_rto_max_ms"
SYN_RETRIES_DEFAULT = 6
SYN_LINEAR_TIMEOUTS_DEFAULT = 4
RTO_MAX_DEFAULT = 120
MAX_SYNCNT = 127

TCP_SOCK_POOL_SIZE = 32
DUP_ACK_COUNT = 3               # duplicate ACKs sent per gap
ZERO_WINDOW_RECHECK = 0.05      # s, see tcp_timer_ctl()

# Segment flags, and flags for internal use
FIN = 1 << 0
SYN = 1 << 1
RST = 1 << 2
PSH = 1 << 3
ACK = 1 << 4
DUP_ACK = 1 << 5
KEEPALIVE = 1 << 6
ACK_IF_NEEDED = 0

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WS = 3
OPT_SACKP = 4
OPT_SACK = 5
OPT_TS = 8

# Connection events
CLOSED = 0
SOCK_ACCEPTED = 1 << 0
TAP_SYN_RCVD = 1 << 1
ESTABLISHED = 1 << 2
TAP_SYN_ACK_SENT = 1 << 3
SOCK_FIN_RCVD = 1 << 3
SOCK_FIN_SENT = 1 << 4
TAP_FIN_RCVD = 1 << 5
TAP_FIN_SENT = 1 << 6
TAP_FIN_ACKED = 1 << 7
CONN_STATE_BITS = SOCK_ACCEPTED | TAP_SYN_RCVD | ESTABLISHED

# Connection flags
STALLED = 1 << 0
LOCAL = 1 << 1
ACTIVE_CLOSE = 1 << 2
ACK_TO_TAP_DUE = 1 << 3
ACK_FROM_TAP_DUE = 1 << 4
ACK_FROM_TAP_BLOCKS = 1 << 5
SYN_RETRIED = 1 << 6

tcp_event_str = ["SOCK_ACCEPTED", "TAP_SYN_RCVD", "ESTABLISHED",
                 "TAP_SYN_ACK_SENT", "SOCK_FIN_RCVD", "SOCK_FIN_SENT",
                 "TAP_FIN_RCVD", "TAP_FIN_SENT", "TAP_FIN_ACKED"]
tcp_state_str = ["SYN_RCVD", "SYN_SENT", "ESTABLISHED", "SYN_RCVD",
                 "CLOSE_WAIT", "CLOSE_WAIT", "CLOSE_WAIT", "LAST_ACK",
                 "LAST_ACK",
                 "CLOSING", "FIN_WAIT_1", "FIN_WAIT_1", "FIN_WAIT_2",
                 "TIME_WAIT"]
tcp_flag_str = ["STALLED", "LOCAL", "ACTIVE_CLOSE", "ACK_TO_TAP_DUE",
                "ACK_FROM_TAP_DUE", "ACK_FROM_TAP_BLOCKS", "SYN_RETRIED"]

# Socket options and ioctls the socket module lacks
SO_PEEK_OFF = 42
SO_MEMINFO = 55
SIOCOUTQ = 0x5411
SK_MEMINFO_SNDBUF = 3
SK_MEMINFO_WMEM_QUEUED = 5
TCP_INFO = getattr(socket, "TCP_INFO", 11)
TCP_INFO_LEN = 232

_TH = struct.Struct("!HHIIBBHHH")
_U32 = struct.Struct("I")
_MEMINFO = struct.Struct("9I")
_TI_WSCALE = 6
_TI_SND_MSS = 16
_TI_LAST_DATA_SENT = 44
_TI_RTT = 68
_TI_BYTES_ACKED = 120
_TI_MIN_RTT = 148
_TI_DELIVERY_RATE = 160
_TI_SND_WND = 228
_TI_U32 = struct.Struct("I")
_TI_U64 = struct.Struct("Q")

SEQ_MASK = 0xffffffff
# Sequence numbers compare over half the sequence space (RFC 1982).
# Upstream compares within MAX_WINDOW, which misjudges an ACK for exactly
# MAX_WINDOW bytes in flight as old: the connection then stalls until the
# retransmission timeout, and again at every window's worth.
SEQ_HALF = 1 << 31


def SEQ_LE(a, b):
    return ((b - a) & SEQ_MASK) < SEQ_HALF


def SEQ_LT(a, b):
    return ((b - a - 1) & SEQ_MASK) < SEQ_HALF


def SEQ_GE(a, b):
    return ((a - b) & SEQ_MASK) < SEQ_HALF


def SEQ_GT(a, b):
    return ((a - b - 1) & SEQ_MASK) < SEQ_HALF


def fls(x):
    """Index of the highest bit set, -1 for 0."""
    return x.bit_length() - 1


class TcpTapConn(Flow):
    """A TCP connection between the guest and a host socket
    (``struct tcp_tap_conn``); the common flow fields come first.

    ``sock`` is the host ``socket.socket``, ``sockfd`` its descriptor.
    ``timer_at`` is the connection's timer deadline (``time.monotonic()``
    seconds, 0 when disarmed); the remaining extra fields cache values
    derived from the addresses for building frames (``tcp_buf.py``).
    """

    __slots__ = ("retries", "ws_from_tap", "ws_to_tap", "tap_mss",
                 "rtt_exp", "tap_inactive", "inactive", "sock", "sockfd",
                 "events", "timer", "flags", "sndbuf", "seq_dup_ack_approx",
                 "wnd_from_tap", "wnd_to_tap", "seq_to_tap",
                 "seq_ack_from_tap", "seq_from_tap", "seq_ack_to_tap",
                 "seq_init_from_tap",
                 # this port's own
                 "tapsidei", "timer_at", "timer_queued", "epoll_events",
                 "ws_ok", "dup_ack_due", "want_out", "recover_seq",
                 "seq_max_to_tap", "v4", "ip_src", "ip_dst",
                 "ip_csum_base", "psum_base", "flow_lbl", "omac")

    def __init__(self):
        Flow.__init__(self)
        self.retries = 0
        self.ws_from_tap = 0
        self.ws_to_tap = 0
        self.tap_mss = MSS_DEFAULT
        self.rtt_exp = 0
        self.tap_inactive = False
        self.inactive = False
        self.sock = None
        self.sockfd = -1
        self.events = CLOSED
        self.timer = -1
        self.flags = 0
        self.sndbuf = 0
        self.seq_dup_ack_approx = -1
        self.wnd_from_tap = 0
        self.wnd_to_tap = 0
        self.seq_to_tap = 0
        self.seq_ack_from_tap = 0
        self.seq_from_tap = 0
        self.seq_ack_to_tap = 0
        self.seq_init_from_tap = 0
        self.tapsidei = TGTSIDE
        self.timer_at = 0.0
        self.timer_queued = 0.0
        self.epoll_events = None
        self.ws_ok = True
        self.dup_ack_due = False
        self.want_out = False
        self.recover_seq = 0
        self.seq_max_to_tap = 0
        self.v4 = True
        self.ip_src = b""
        self.ip_dst = b""
        self.ip_csum_base = 0
        self.psum_base = 0
        self.flow_lbl = 0
        self.omac = b""


def TAPSIDE(conn):
    """Index of the side of ``conn`` that is on the tap interface."""
    return 1 if conn.pif[1] == PIF_TAP else 0


def HOSTSIDE(conn):
    return 1 if conn.pif[1] == PIF_HOST else 0


def TAPFLOW(conn):
    return conn.side[conn.tapsidei]


def TAP_SIDX(conn):
    return (conn.idx << 1) | conn.tapsidei


def CONN_V4(conn):
    return inany_v4(TAPFLOW(conn).oaddr) is not None


def CONN_IS_CLOSING(conn):
    return bool(conn.events & ESTABLISHED) and \
        bool(conn.events & (SOCK_FIN_RCVD | TAP_FIN_RCVD))


def CONN_HAS(conn, bits):
    return (conn.events & bits) == bits


def RTT_GET(conn):
    """Approximate round-trip time of the socket, in microseconds."""
    return RTT_STORE_MIN << conn.rtt_exp


def RTT_SET(conn, rtt):
    v = rtt // RTT_STORE_MIN
    conn.rtt_exp = min(RTT_EXP_MAX, max(0, v.bit_length() - 1))


def clamped_scale(x, y, lo, hi, f):
    """``x`` scaled to ``f`` percent when ``y`` >= ``hi``, not scaled when
    ``y`` <= ``lo``, linearly in between."""
    if y < lo:
        return x
    if y > hi:
        return x * f // 100
    return x - (x * (y - lo) // (hi - lo)) * (100 - f) // 100


# Module state (set up by tcp_init())
peek_offset_cap = False
tcp_info_size = 0
low_rtt_dst = []
init_sock_pool4 = []
init_sock_pool6 = []
_timer_heap = []
_timer_fd = -1
_timer_armed = 0.0
_timer_seq = 0
_discard = None                 # buffer that MSG_TRUNC never writes to
_spare_fd = -1                  # see _tcp_accept_refuse()
_ctx = None


class TcpCtx:
    """TCP part of the execution context (``struct tcp_ctx``)."""

    def __init__(self):
        self.scan_in = None
        self.scan_out = None
        self.timer_run = 0.0
        self.pipe_size = 0
        self.rto_max = RTO_MAX_DEFAULT
        self.syn_retries = SYN_RETRIES_DEFAULT
        self.syn_linear_timeouts = SYN_LINEAR_TIMEOUTS_DEFAULT
        self.keepalive_run = 0.0
        self.inactivity_run = 0.0


# Small helpers around the socket

def tcp_set_peek_offset(conn, offset, now):
    """Set the socket's peek offset; returns -1 on failure, else 0."""
    if not peek_offset_cap:
        return 0
    try:
        conn.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, offset)
    except OSError as e:
        flow_perror_ratelimit(conn, now, e, "Failed to set SO_PEEK_OFF to %i",
                              offset)
        return -1
    return 0


def tcp_info(conn):
    """TCP_INFO of the connection's socket as bytes, or None."""
    try:
        return conn.sock.getsockopt(socket.SOL_TCP, TCP_INFO, TCP_INFO_LEN)
    except OSError:
        return None


def _ti32(ti, off):
    if ti is None or len(ti) < off + 4:
        return 0
    return _TI_U32.unpack_from(ti, off)[0]


def _ti64(ti, off):
    if ti is None or len(ti) < off + 8:
        return 0
    return _TI_U64.unpack_from(ti, off)[0]


def tcp_sock_set_nodelay(s):
    if s is None:
        return
    try:
        s.setsockopt(socket.SOL_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        log.debug("TCP: failed to set TCP_NODELAY on socket %i", s.fileno())


def tcp_opt_get(opts, type_find):
    """Value of TCP option ``type_find`` in the option bytes ``opts``:
    an int for options of up to 4 bytes (0 if it has no value), -1 if
    absent or if the options are malformed."""
    i = 0
    n = len(opts)
    while n - i >= 2:
        kind = opts[i]
        if kind == OPT_EOL:
            return -1
        if kind == OPT_NOP:
            i += 1
            continue
        olen = opts[i + 1]
        if olen < 2 or olen > n - i:
            return -1
        if kind == type_find:
            vlen = olen - 2
            v = opts[i + 2:i + olen]
            if vlen == 0:
                return 0
            if vlen == 1:
                return v[0]
            if vlen == 2:
                return (v[0] << 8) | v[1]
            return int.from_bytes(v[:4], "big")
        i += olen
    return -1


# Events, flags, epoll and timers

def tcp_conn_epoll_events(events, conn_flags):
    """epoll mask for the socket in the connection's current state."""
    if not events:
        return 0
    if events & ESTABLISHED:
        if events & TAP_FIN_SENT:
            return EPOLLET
        if conn_flags & STALLED:
            if conn_flags & ACK_FROM_TAP_BLOCKS:
                return EPOLLRDHUP | EPOLLET
            return EPOLLIN | EPOLLRDHUP | EPOLLET
        return EPOLLIN | EPOLLRDHUP
    if events == TAP_SYN_RCVD:
        return EPOLLOUT | EPOLLET | EPOLLRDHUP
    return EPOLLET | EPOLLRDHUP


def _epoll_set(conn, events):
    if conn.epoll_events == events:
        return 0
    cmd = _flow.EPOLL_CTL_ADD if conn.epoll_events is None \
        else _flow.EPOLL_CTL_MOD
    _flow.flow_epoll_set(conn, cmd, events, conn.sockfd,
                         1 - conn.tapsidei)
    conn.epoll_events = events
    return 0


def tcp_epoll_ctl(conn, extra=0):
    """Bring the socket's epoll registration in line with the connection
    (plus ``extra`` events); remove it when the connection is closed."""
    if conn.events == CLOSED:
        if conn.epoll_events is not None:
            epoll_del(_ctx, conn.sockfd)
            conn.epoll_events = None
        return 0
    if conn.want_out and conn.events & ESTABLISHED:
        extra |= EPOLLOUT
    try:
        return _epoll_set(conn, tcp_conn_epoll_events(conn.events,
                                                      conn.flags) | extra)
    except OSError as e:
        return -(e.errno or errno.EIO)


def _timer_arm(deadline, now):
    global _timer_armed
    if _timer_fd < 0:
        return
    if _timer_armed and _timer_armed <= deadline:
        return
    from pasta import util
    _timer_armed = deadline
    try:
        util.timerfd_settime(_timer_fd, max(deadline - now, 1e-6))
    except OSError as e:
        log.err_perror(e, "TCP: failed to set timer")


def _timer_queue(conn, deadline, now):
    global _timer_seq
    if conn.timer_queued and conn.timer_queued <= deadline:
        return          # an earlier entry will find the new deadline
    conn.timer_queued = deadline
    _timer_seq += 1
    heapq.heappush(_timer_heap, (deadline, _timer_seq, conn))
    _timer_arm(deadline, now)


def tcp_timer_ctl(c, conn, now):
    """Set the connection's timer from its flags (see the theory of
    operation), or disarm it."""
    if conn.events == CLOSED:
        return

    if conn.flags & ACK_TO_TAP_DUE:
        timeout = RTT_GET(conn) / 2 / 1e6
        if conn.want_out and SEQ_GE(conn.seq_ack_to_tap, conn.seq_from_tap):
            # Only a zero window to reopen, and EPOLLOUT will tell us when:
            # the timer is a fallback, don't spin on it
            timeout = max(timeout, ZERO_WINDOW_RECHECK)
    elif conn.flags & ACK_FROM_TAP_DUE:
        exp = conn.retries
        timeout = RTO_INIT
        if not conn.events & ESTABLISHED:
            exp -= c.tcp.syn_linear_timeouts
        elif conn.flags & SYN_RETRIED:
            timeout = max(timeout, RTO_INIT_AFTER_SYN_RETRIES)
        timeout = timeout * (1 << max(exp, 0))
        timeout = min(timeout, c.tcp.rto_max)
    else:
        conn.timer_at = 0.0
        if log.log_trace:
            flow_trace(conn, "timer disarmed")
        return

    conn.timer_at = now + timeout
    if log.log_trace:
        flow_trace(conn, "timer expires in %.3fms", timeout * 1000)
    _timer_queue(conn, conn.timer_at, now)


def conn_flag(c, conn, flag, now):
    """Set ``flag``, or clear it if given as ``~flag``; log it, and update
    epoll and the timer as the flag requires."""
    if flag < 0:
        bit = ~flag
        if not conn.flags & bit:
            return
        conn.flags &= flag
        if _flow._dbg_enabled():
            flow_dbg(conn, "%s dropped", tcp_flag_str[fls(bit)])
    else:
        bit = flag
        if conn.flags & flag:
            if flag == ACK_FROM_TAP_DUE:
                tcp_timer_ctl(c, conn, now)      # reschedule
            return
        conn.flags |= flag
        if _flow._dbg_enabled():
            flow_dbg(conn, "%s", tcp_flag_str[fls(flag)])

    if bit == STALLED:
        tcp_epoll_ctl(conn)

    if (flag == ACK_FROM_TAP_DUE or flag == ACK_TO_TAP_DUE or
            (flag == ~ACK_FROM_TAP_DUE and conn.flags & ACK_TO_TAP_DUE) or
            (flag == ~ACK_TO_TAP_DUE and conn.flags & ACK_FROM_TAP_DUE)):
        tcp_timer_ctl(c, conn, now)


def conn_event(c, conn, event, now):
    """Record ``event`` (or ``CLOSED``), log the state change, and update
    epoll (or the hash table, on closing)."""
    if conn.events & event:
        return

    if _flow._dbg_enabled():
        prev = fls(conn.events)
        if conn.flags & ACTIVE_CLOSE:
            prev += 5
        if (conn.events & ESTABLISHED) and conn.events != ESTABLISHED:
            prev += 1

    if event == CLOSED or (event & CONN_STATE_BITS):
        conn.events = event
    else:
        conn.events |= event

    if _flow._dbg_enabled():
        num = fls(event)
        new = fls(conn.events)
        if (conn.events & ESTABLISHED) and conn.events != ESTABLISHED:
            num += 1
            new += 1
        if conn.flags & ACTIVE_CLOSE:
            new += 5
        ename = "CLOSED" if num == -1 else tcp_event_str[min(num, 8)]
        if prev != new:
            pname = "CLOSED" if prev < 0 else \
                tcp_state_str[min(prev, len(tcp_state_str) - 1)]
            nname = "CLOSED" if new < 0 or num == -1 else \
                tcp_state_str[min(new, len(tcp_state_str) - 1)]
            flow_dbg(conn, "%s: %s -> %s", ename, pname, nname)
        else:
            flow_dbg(conn, "%s", ename)

    if event == TAP_FIN_RCVD and not conn.events & SOCK_FIN_RCVD:
        conn_flag(c, conn, ACTIVE_CLOSE, now)
    else:
        if event == CLOSED:
            _flow.flow_hash_remove(c, TAP_SIDX(conn))
            _flow.flow_defer_mark(conn)
            conn.timer_at = 0.0
        tcp_epoll_ctl(conn)


# Round-trip time, buffers, windows

def tcp_rtt_dst_low(conn):
    return TAPFLOW(conn).oaddr in low_rtt_dst


def tcp_rtt_dst_check(conn, ti):
    """Remember the guest-side address of a peer with a very low RTT."""
    if tcp_info_size < _TI_MIN_RTT + 4:
        return
    if _ti32(ti, _TI_MIN_RTT) > LOW_RTT_THRESHOLD:
        return
    a = TAPFLOW(conn).oaddr
    if a in low_rtt_dst:
        return
    low_rtt_dst.append(a)
    if len(low_rtt_dst) > LOW_RTT_TABLE_SIZE:
        del low_rtt_dst[0]


def tcp_get_sndbuf(conn):
    """Store the socket's send buffer size, scaled down for large ones."""
    try:
        sndbuf = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    except OSError:
        conn.sndbuf = WINDOW_DEFAULT
        return
    conn.sndbuf = clamped_scale(sndbuf, sndbuf, SNDBUF_SMALL, SNDBUF_BIG,
                                75)


def tcp_wnd_from_sndbuf(conn, ti):
    """Window the socket can take now: free space in its send buffer, in
    payload bytes (not scaled).  Also says, as a second value, whether it
    is worth waiting for ``EPOLLOUT`` to announce more."""
    s = conn.sock
    mss = conn.tap_mss
    try:
        sendq = _U32.unpack(fcntl.ioctl(conn.sockfd, SIOCOUTQ,
                                        b"\0\0\0\0"))[0]
    except OSError:
        sendq = 0

    try:
        mem = _MEMINFO.unpack(s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO,
                                           _MEMINFO.size))
    except (OSError, struct.error):
        tcp_get_sndbuf(conn)
        limit = 0 if sendq > conn.sndbuf else conn.sndbuf - sendq
        return limit, False

    sndbuf = mem[SK_MEMINFO_SNDBUF]
    wmemq = mem[SK_MEMINFO_WMEM_QUEUED]
    conn.sndbuf = clamped_scale(sndbuf, sndbuf, SNDBUF_SMALL, SNDBUF_BIG,
                                75)

    if wmemq > conn.sndbuf:
        limit = 0
    elif not sendq or not mss or wmemq <= sendq:
        limit = conn.sndbuf - wmemq
    else:
        used_segs = max(sendq // mss, 1)
        overhead = (wmemq - sendq) // used_segs
        remaining = conn.sndbuf - wmemq
        limit = (remaining // (mss + overhead)) * mss

    # Silly window avoidance: below one MSS, with data still queued, wait
    # for the buffer to drain rather than invite tiny segments
    if limit < mss and sendq:
        limit = 0

    # The kernel reports the socket writable (EPOLLOUT) again once its
    # free space is at least half of what is queued: worth waiting for
    # exactly when that is not the case now
    return limit, sndbuf - wmemq < wmemq // 2


def tcp_update_seqack_wnd(c, conn, force_seq, ti, now):
    """Update what we acknowledge to the guest and the window we
    advertise.  Returns True if either changed."""
    prev_wnd = conn.wnd_to_tap << conn.ws_to_tap
    prev_ack = conn.seq_ack_to_tap
    ack_everything = True

    # Acknowledge only what the host peer acknowledged, for interactive
    # traffic over a real network path; everything the socket accepted
    # otherwise
    if (not force_seq and not CONN_IS_CLOSING(conn) and
            not conn.flags & LOCAL and not tcp_rtt_dst_low(conn) and
            tcp_info_size >= _TI_DELIVERY_RATE + 8):
        if ti is None:
            ti = tcp_info(conn)
        if ti is not None:
            rtt = _ti32(ti, _TI_RTT)
            rate = _ti64(ti, _TI_DELIVERY_RATE)
            if conn.sndbuf > rtt * rate // 1000000 * \
                    SNDBUF_TO_BW_DELAY_INTERACTIVE:
                ack_everything = False

    if ack_everything:
        conn.seq_ack_to_tap = conn.seq_from_tap
    else:
        acked = (_ti64(ti, _TI_BYTES_ACKED) + conn.seq_init_from_tap) & \
            SEQ_MASK
        # bytes_acked counts the SYN too: never beyond what we accepted
        if SEQ_GT(acked, conn.seq_from_tap):
            acked = conn.seq_from_tap
        conn.seq_ack_to_tap = acked

    if SEQ_LT(conn.seq_ack_to_tap, prev_ack):
        conn.seq_ack_to_tap = prev_ack

    new_wnd, want_out = tcp_wnd_from_sndbuf(conn, ti)
    new_wnd = min(new_wnd, MAX_WINDOW)
    if not conn.events & ESTABLISHED:
        new_wnd = max(new_wnd, WINDOW_DEFAULT)

    conn.wnd_to_tap = min(new_wnd >> conn.ws_to_tap, 0xffff)

    if not conn.wnd_to_tap:
        conn_flag(c, conn, ACK_TO_TAP_DUE, now)

    want_out = bool(want_out and conn.events & ESTABLISHED and
                    not conn.events & (SOCK_FIN_SENT | TAP_FIN_RCVD))
    if want_out != conn.want_out:
        # Have the kernel tell us when space frees up
        conn.want_out = want_out
        tcp_epoll_ctl(conn)

    if ti is not None:
        RTT_SET(conn, _ti32(ti, _TI_RTT))

    return (conn.wnd_to_tap << conn.ws_to_tap) != prev_wnd or \
        conn.seq_ack_to_tap != prev_ack


def tcp_update_seqack_from_tap(c, conn, seq, now):
    """Take note of an ACK number from the guest."""
    if seq == conn.seq_to_tap:
        conn_flag(c, conn, ~ACK_FROM_TAP_DUE, now)

    if SEQ_GT(seq, conn.seq_ack_from_tap):
        if SEQ_LT(seq, conn.seq_to_tap):
            conn_flag(c, conn, ACK_FROM_TAP_DUE, now)   # reschedule
        conn.retries = 0
        conn.seq_ack_from_tap = seq


def tcp_rewind_seq(c, conn, now):
    """Go back to sending from the last byte the guest acknowledged.
    Returns -1 if the connection had to be reset, else 0."""
    conn.seq_to_tap = conn.seq_ack_from_tap
    conn.events &= ~TAP_FIN_SENT
    if tcp_set_peek_offset(conn, 0, now):
        tcp_rst(c, conn, now)
        return -1
    return 0


def _syn_opts(mss, ws):
    if ws is None:
        return struct.pack("!BBH", OPT_MSS, 4, mss)
    return struct.pack("!BBHBBBB", OPT_MSS, 4, mss, OPT_NOP, OPT_WS, 3, ws)


def tcp_prepare_flags(c, conn, flags, now):
    """Decide on a segment without payload.

    Returns ``(ret, tcp_flags, options)``: ``ret`` is negative if the
    connection was closed, 0 if nothing needs to be sent (``flags`` was
    ``ACK_IF_NEEDED`` and no ACK is due), 1 otherwise.
    """
    if (SEQ_GE(conn.seq_ack_to_tap, conn.seq_from_tap) and not flags and
            conn.wnd_to_tap):
        conn_flag(c, conn, ~ACK_TO_TAP_DUE, now)
        return 0, 0, b""

    ti = tcp_info(conn)
    if ti is None:
        conn_event(c, conn, CLOSED, now)
        return -errno.ECONNRESET, 0, b""

    if not conn.flags & LOCAL:
        tcp_rtt_dst_check(conn, ti)

    if not tcp_update_seqack_wnd(c, conn, bool(flags), ti, now) and \
            not flags:
        return 0, 0, b""

    opts = b""
    if flags & SYN:
        if not c.mtu:
            mss = _ti32(ti, _TI_SND_MSS) or MSS_DEFAULT
        else:
            mss = c.mtu - 20 - (20 if CONN_V4(conn) else 40)
            if getattr(c, "low_wmem", False) and \
                    not conn.flags & LOCAL and not tcp_rtt_dst_low(conn):
                mss = min(mss, PAGE_SIZE)
            elif mss > PAGE_SIZE:
                mss = mss // PAGE_SIZE * PAGE_SIZE
        mss = max(min(mss, 0xffff), 88)
        if conn.ws_ok:
            conn.ws_to_tap = MAX_WS
            opts = _syn_opts(mss, conn.ws_to_tap)
        else:
            conn.ws_to_tap = 0
            opts = _syn_opts(mss, None)
    else:
        flags |= ACK

    th = flags & (FIN | SYN | RST | PSH | ACK)

    if th & ACK:
        if SEQ_GE(conn.seq_ack_to_tap, conn.seq_from_tap) and \
                conn.wnd_to_tap:
            conn_flag(c, conn, ~ACK_TO_TAP_DUE, now)
        else:
            conn_flag(c, conn, ACK_TO_TAP_DUE, now)

    if th & FIN:
        conn_flag(c, conn, ACK_FROM_TAP_DUE, now)

    if th & (FIN | SYN):
        conn.seq_to_tap = (conn.seq_to_tap + 1) & SEQ_MASK
        if SEQ_GT(conn.seq_to_tap, conn.seq_max_to_tap):
            conn.seq_max_to_tap = conn.seq_to_tap

    return 1, th, opts


def tcp_send_flag(c, conn, flags, now):
    """Send a segment without payload (``ACK_IF_NEEDED``: only if an ACK
    is due).  Returns a negative errno value on a fatal failure, else 0."""
    ret = tcp_buf.tcp_buf_send_flag(c, conn, flags, now)
    return 0 if ret == -errno.EAGAIN else ret


def tcp_linger0(f, s):
    """Have ``close()`` of socket ``s`` reset the connection."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
    except OSError as e:
        if f is None:
            log.debug_perror(e, "SO_LINGER failed, may not send RST to peer")
        else:
            flow_dbg_perror(f, e, "SO_LINGER failed, may not send RST to "
                            "peer")


def tcp_sock_rst(c, conn, now):
    """Close the connection, resetting the host peer."""
    if conn.sock is not None:
        tcp_linger0(conn, conn.sock)
    conn_event(c, conn, CLOSED, now)


def tcp_rst(c, conn, now):
    """Reset the connection on both sides and close it."""
    if conn.events == CLOSED:
        return
    if _flow._dbg_enabled():
        flow_dbg(conn, "TCP reset")
    tcp_send_flag(c, conn, RST, now)
    tcp_sock_rst(c, conn, now)


# Upstream's macros log and call these; here they are the same functions
tcp_rst_do = tcp_rst
conn_flag_do = conn_flag
conn_event_do = conn_event
tcp_linger0_ = tcp_linger0


def tcp_get_tap_ws(conn, opts):
    ws = tcp_opt_get(opts, OPT_WS)
    if 0 <= ws <= TCP_WS_MAX:
        conn.ws_from_tap = ws
    else:
        conn.ws_from_tap = 0
    return ws >= 0


def tcp_tap_window_update(c, conn, wnd, now):
    """Take a window from the guest (unscaled, as received).  Returns
    False for a zero window, True otherwise.

    A zero window with data in flight also rewinds: the guest drops what
    does not fit, and we send it again once the window reopens.  Unlike
    upstream, which keeps the old window (working around guest kernels
    that do not announce a reopened window), the zero window is stored:
    sending stops until the guest's window update, or until the
    retransmission timer sends a one-byte zero-window probe.  Sending on
    into a closed window made the guest drop everything, and if its
    window update came while we believed data in flight, the connection
    stalled until the retransmission timeout.
    """
    wnd = min(MAX_WINDOW, wnd << conn.ws_from_tap)
    if not wnd:
        if SEQ_LT(conn.seq_ack_from_tap, conn.seq_to_tap):
            tcp_rewind_seq(c, conn, now)
        conn.wnd_from_tap = 0
        return False
    conn.wnd_from_tap = min(wnd >> conn.ws_from_tap, 0xffff)
    return True


def tcp_init_seq(hash_, now):
    """Initial sequence number (RFC 6528): keyed hash of the connection's
    addresses plus a 32 ns clock."""
    ns = (int(now * 1e9)) >> 5
    return (((hash_ >> 32) ^ hash_) + ns) & SEQ_MASK


# Sockets

def tcp_conn_new_sock(af):
    """A new non-blocking TCP socket of family ``af``; raises OSError."""
    s = socket.socket(af, socket.SOCK_STREAM | socket.SOCK_NONBLOCK |
                      socket.SOCK_CLOEXEC, socket.IPPROTO_TCP)
    tcp_sock_set_nodelay(s)
    return s


def tcp_conn_pool_sock(pool):
    """A socket from ``pool`` (a list), or None if it is empty."""
    if pool:
        return pool.pop()
    return None


def tcp_conn_sock(af):
    """A connectable socket in the host's namespace, or None."""
    pool = init_sock_pool6 if af == socket.AF_INET6 else init_sock_pool4
    s = tcp_conn_pool_sock(pool)
    if s is not None:
        return s
    try:
        return tcp_conn_new_sock(af)
    except OSError as e:
        if log.ratelimit("tcp: socket"):
            log.err_perror(e, "TCP: Unable to open socket for new connection")
        return None


def tcp_sock_refill_pool(pool, af):
    """Fill ``pool`` up to ``TCP_SOCK_POOL_SIZE``; returns 0, or a
    negative errno value if a socket could not be opened."""
    while len(pool) < TCP_SOCK_POOL_SIZE:
        try:
            pool.append(tcp_conn_new_sock(af))
        except OSError as e:
            return -(e.errno or errno.EIO)
    return 0


def tcp_sock_refill_init(c):
    if c.ifi4:
        rc = tcp_sock_refill_pool(init_sock_pool4, socket.AF_INET)
        if rc < 0 and log.ratelimit("tcp: refill4"):
            log.warn("TCP: Error refilling IPv4 host socket pool: %s",
                     os.strerror(-rc))
    if c.ifi6:
        rc = tcp_sock_refill_pool(init_sock_pool6, socket.AF_INET6)
        if rc < 0 and log.ratelimit("tcp: refill6"):
            log.warn("TCP: Error refilling IPv6 host socket pool: %s",
                     os.strerror(-rc))


def tcp_conn_tap_mss(conn, opts):
    """The guest's MSS from its SYN options, within what IP allows."""
    mss = tcp_opt_get(opts, OPT_MSS)
    if mss <= 0:
        mss = MSS_DEFAULT
    mss = min(MSS4 if CONN_V4(conn) else MSS6, mss)
    return max(mss, 64)


def tcp_bind_outbound(c, conn, s, now):
    """Bind the host socket to the -o address and --outbound-if4/6."""
    tgt = conn.side[TGTSIDE]
    family, sa = pif_sockaddr(c, PIF_HOST, tgt.oaddr, tgt.oport)
    if not inany_is_unspecified(tgt.oaddr) or tgt.oport:
        try:
            s.bind(sa)
        except OSError as e:
            flow_warn_perror_ratelimit(
                conn, now, e, "Can't bind TCP outbound socket to %s:%d",
                inany_ntop(tgt.oaddr), tgt.oport)

    ifname = c.ip4.ifname_out if family == socket.AF_INET \
        else c.ip6.ifname_out
    if ifname:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                         ifname.encode())
        except OSError as e:
            flow_warn_perror_ratelimit(
                conn, now, e, "Can't bind %s TCP socket to interface %s",
                "IPv4" if family == socket.AF_INET else "IPv6", ifname)


def _conn_setup_sock(c, conn, s, sidei, now):
    """Attach socket ``s`` to ``conn`` and register it with epoll."""
    conn.sock = s
    conn.sockfd = s.fileno()
    conn.tapsidei = TAPSIDE(conn)
    tcp_buf.tcp_hdr_init(c, conn)
    _flow.flow_epoll_set(conn, _flow.EPOLL_CTL_ADD, 0, conn.sockfd, sidei)
    conn.epoll_events = 0


# Guest-initiated connections

def tcp_conn_from_tap(c, af, saddr, daddr, th, opts, now):
    """Handle a SYN from the guest: open and connect a host socket."""
    sport, dport, seq, _ack, _off, _fl, window = th[:7]

    f = _flow.flow_alloc()
    if f is None:
        # Table full: refuse cleanly
        if log.ratelimit("tcp: flow table full"):
            log.warn("TCP: flow table full, refusing connection")
        return False

    ini = _flow.flow_initiate_af(f, PIF_TAP, af, saddr, sport, daddr,
                                 dport)
    tgt = _flow.flow_target(c, f, _flow.FWD_NO_HINT, socket.IPPROTO_TCP)
    if tgt is None:
        _flow.flow_alloc_cancel(f)
        return False

    if f.pif[TGTSIDE] != PIF_HOST:
        flow_err_ratelimit(f, now, "No support for forwarding TCP from %s "
                           "to %s", pif_name(f.pif[INISIDE]),
                           pif_name(f.pif[TGTSIDE]))
        _flow.flow_alloc_cancel(f)
        return False

    conn = _flow.flow_set_type(f, FLOW_TCP, TcpTapConn)

    if (not inany_is_unicast(ini.eaddr) or ini.eport == 0 or
            not inany_is_unicast(ini.oaddr) or ini.oport == 0):
        if log.ratelimit("tcp: invalid endpoint"):
            log.warn("Invalid endpoint in TCP SYN: %s:%d -> %s:%d",
                     inany_ntop(ini.eaddr), ini.eport,
                     inany_ntop(ini.oaddr), ini.oport)
        _flow.flow_alloc_cancel(conn)
        return False

    family, sa = pif_sockaddr(c, PIF_HOST, tgt.eaddr, tgt.eport)
    s = tcp_conn_sock(family)
    if s is None:
        _flow.flow_alloc_cancel(conn)
        return False

    # Is the target a local, bound address?  bind() fails with
    # EADDRINUSE then: mark the connection LOCAL.
    try:
        s.bind(sa)
    except OSError as e:
        if e.errno not in (errno.EADDRNOTAVAIL, errno.EACCES):
            conn.flags |= LOCAL
    else:
        s.close()
        s = tcp_conn_sock(family)
        if s is None:
            _flow.flow_alloc_cancel(conn)
            return False

    try:
        _conn_setup_sock(c, conn, s, TGTSIDE, now)
    except OSError as e:
        flow_perror_ratelimit(conn, now, e, "Can't register with epoll")
        s.close()
        _flow.flow_alloc_cancel(conn)
        return False

    conn_event(c, conn, TAP_SYN_RCVD, now)
    conn.wnd_to_tap = WINDOW_DEFAULT

    mss = tcp_conn_tap_mss(conn, opts)
    try:
        s.setsockopt(socket.SOL_TCP, socket.TCP_MAXSEG, mss)
    except OSError:
        flow_trace(conn, "failed to set TCP_MAXSEG on socket %i",
                   conn.sockfd)
    conn.tap_mss = mss

    conn.ws_ok = tcp_get_tap_ws(conn, opts)

    conn.wnd_from_tap = window >> conn.ws_from_tap or 1
    conn.seq_init_from_tap = seq
    conn.seq_from_tap = (seq + 1) & SEQ_MASK
    conn.seq_ack_to_tap = conn.seq_from_tap

    h = _flow.flow_hash_insert(c, TAP_SIDX(conn))
    conn.seq_to_tap = tcp_init_seq(h, now)
    conn.seq_ack_from_tap = conn.recover_seq = conn.seq_to_tap
    conn.seq_max_to_tap = conn.seq_to_tap

    tcp_bind_outbound(c, conn, s, now)

    try:
        s.connect(sa)
    except (BlockingIOError, InterruptedError):
        tcp_get_sndbuf(conn)
    except OSError as e:
        flow_dbg_perror(conn, e, "connect() failed")
        _flow.flow_activate(conn)
        _tcp_connect_failed(c, conn, e.errno, now)
        return True
    else:
        tcp_get_sndbuf(conn)
        if tcp_send_flag(c, conn, SYN | ACK, now):
            _flow.flow_activate(conn)
            tcp_rst(c, conn, now)
            return True
        conn_event(c, conn, TAP_SYN_ACK_SENT, now)

    tcp_epoll_ctl(conn)
    _flow.flow_activate(conn)
    return True


def _tcp_icmp_unreach(c, conn, err):
    """Tell the guest its SYN hit an unreachable destination: ICMP or
    ICMPv6 destination unreachable, quoting the SYN."""
    from pasta import tap
    tapside = TAPFLOW(conn)
    th = _TH.pack(tapside.eport, tapside.oport, conn.seq_init_from_tap, 0,
                  5 << 4, SYN, 0, 0, 0)[:8]
    if conn.v4:
        src, dst = conn.ip_dst, conn.ip_src          # as the guest sent it
        code = 0 if err == errno.ENETUNREACH else 1
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6,
                          0, src, dst)
        msg = struct.pack("!BBHI", 3, code, 0, 0) + iph + th
        tap.tap_icmp4_send(c, conn.ip_src, conn.ip_dst, msg)
    else:
        src, dst = conn.ip_dst, conn.ip_src
        code = 0 if err == errno.ENETUNREACH else 3
        ip6h = struct.pack("!IHBB16s16s", 0x60000000, 20, 6, 64, src, dst)
        msg = struct.pack("!BBHI", 1, code, 0, 0) + ip6h + th
        tap.tap_icmp6_send(c, conn.ip_src, conn.ip_dst, msg)


def _tcp_connect_failed(c, conn, err, now):
    """The host socket could not connect: end the guest's attempt the way
    the kernel ends a local program's."""
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH) and \
            conn.events & TAP_SYN_RCVD and \
            not conn.events & TAP_SYN_ACK_SENT:
        try:
            _tcp_icmp_unreach(c, conn, err)
        except Exception as e:          # fall back to a reset
            flow_dbg(conn, "ICMP unreachable failed: %r", e)
            tcp_rst(c, conn, now)
            return
        tcp_sock_rst(c, conn, now)
        return
    tcp_rst(c, conn, now)


def tcp_sock_consume(conn, ack_seq):
    """Discard from the socket what the guest acknowledged up to
    ``ack_seq``.  Returns 0, or a negative errno value."""
    if SEQ_LE(ack_seq, conn.seq_ack_from_tap):
        return 0
    n = (ack_seq - conn.seq_ack_from_tap) & SEQ_MASK
    try:
        conn.sock.recv_into(_discard, n, socket.MSG_DONTWAIT |
                            socket.MSG_TRUNC)
    except BlockingIOError:
        return 0
    except OSError as e:
        return -(e.errno or errno.EIO)
    return 0


def tcp_data_from_sock(c, conn, now):
    """Send new socket data to the guest, within its window.  Returns a
    negative value if the connection was reset, else 0."""
    if SEQ_LT(conn.seq_to_tap, conn.seq_ack_from_tap):
        flow_trace(conn, "ACK sequence gap: ACK for %u, sent: %u",
                   conn.seq_ack_from_tap, conn.seq_to_tap)
        conn.seq_to_tap = conn.seq_ack_from_tap
        if tcp_set_peek_offset(conn, 0, now):
            tcp_rst(c, conn, now)
            return -1

    already_sent = (conn.seq_to_tap - conn.seq_ack_from_tap) & SEQ_MASK
    wnd_scaled = conn.wnd_from_tap << conn.ws_from_tap

    if not wnd_scaled or already_sent >= wnd_scaled:
        conn_flag(c, conn, ACK_FROM_TAP_BLOCKS, now)
        conn_flag(c, conn, STALLED, now)
        conn_flag(c, conn, ACK_FROM_TAP_DUE, now)
        return 0

    return tcp_buf.tcp_buf_data_from_sock(c, conn, already_sent, now)


def tcp_packet_data_len(th_off, l4len):
    """Payload length of a segment, -1 for a bad data offset."""
    off = (th_off >> 4) * 4
    if off < 20 or off > l4len:
        return -1
    return l4len - off


def tcp_fast_rexmit_ok(conn):
    """May a duplicate ACK from the guest rewind the sequence now?

    Not again before the guest acknowledged everything sent before the
    previous fast retransmit: the copies we sent then make the guest send
    duplicate ACKs of its own, which must not start another round (the
    idea of NewReno's recovery point, RFC 6582).  Upstream rewinds on
    every duplicate ACK.
    """
    if SEQ_LT(conn.seq_ack_from_tap, conn.recover_seq):
        return False
    conn.recover_seq = conn.seq_to_tap
    tcp_buf.stats["fast_rexmit"] += 1
    return True


def _send_dup_acks(c, conn, now):
    """Duplicate ACKs for a gap at ``seq_from_tap``, once per gap."""
    if conn.seq_dup_ack_approx != conn.seq_from_tap:
        conn.seq_dup_ack_approx = conn.seq_from_tap
        return tcp_send_flag(c, conn, ACK | DUP_ACK, now)
    return 0


def tcp_data_from_tap(c, conn, segs, idx, now):
    """Data and ACKs from the guest for an established connection.
    Returns the count of segments used, -1 to have the connection reset.
    """
    if conn.events == CLOSED:
        return len(segs) - idx

    ack = fin = retr = False
    max_ack_seq_wnd = conn.wnd_from_tap
    max_ack_seq = conn.seq_ack_from_tap
    seq_from_tap = conn.seq_from_tap
    data = []           # (seq, payload) of segments carrying new data
    th_unpack = _TH.unpack_from

    for i in range(idx, len(segs)):
        seg = segs[i]
        l4len = len(seg)
        if l4len < 20:
            return -1
        (_sp, _dp, seq, ack_seq, off, flags, window, _ck,
         _urg) = th_unpack(seg, 0)
        off = (off >> 4) * 4
        if off < 20 or off > l4len:
            return -1

        if flags & RST:
            tcp_sock_rst(c, conn, now)
            return len(segs) - idx

        dlen = l4len - off

        if SEQ_LT(seq, conn.seq_from_tap) and dlen <= 1 and \
                not flags & (FIN | SYN):
            flow_trace(conn, "keep-alive sequence: %u, previous: %u",
                       seq, conn.seq_from_tap)
            if tcp_send_flag(c, conn, ACK, now):
                return -1
            tcp_timer_ctl(c, conn, now)
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET,
                                     socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
            if len(segs) - idx == 1:
                tcp_tap_window_update(c, conn, window, now)
                return 1
            continue

        if flags & ACK and SEQ_GT(ack_seq, conn.seq_max_to_tap):
            _tcp_drop("ACK for data never sent")
            flags &= ~ACK
        if flags & ACK:
            ack = True
            if SEQ_GE(ack_seq, conn.seq_ack_from_tap) and \
                    SEQ_GE(ack_seq, max_ack_seq):
                # A pure duplicate ACK: fast retransmit
                retr = (not dlen and not flags & FIN and
                        ack_seq == max_ack_seq and
                        window == max_ack_seq_wnd)
                if not window:
                    tcp_rewind_seq(c, conn, now)
                max_ack_seq_wnd = window
                max_ack_seq = ack_seq

        if flags & FIN:
            fin_seq = (seq + dlen) & SEQ_MASK
            fin = True
        if dlen:
            data.append((seq, seg[off:], flags & FIN))

    # Assemble data in sequence order, from seq_from_tap on
    iov = []
    keep = False
    fin_ok = False
    progress = True
    while progress and data:
        progress = False
        rest = []
        for seq, payload, sfin in data:
            plen = len(payload)
            end = (seq + plen) & SEQ_MASK
            if SEQ_GE(seq_from_tap, seq) and SEQ_LE(end, seq_from_tap):
                continue            # old data
            if SEQ_LT(seq_from_tap, seq):
                rest.append((seq, payload, sfin))
                continue            # beyond a gap, for now
            offset = (seq_from_tap - seq) & SEQ_MASK
            iov.append(payload[offset:])
            seq_from_tap = end
            progress = True
        data = rest
    if data:
        keep = True

    if fin:
        fin_ok = fin_seq == seq_from_tap and not keep

    if ack and not tcp_sock_consume(conn, max_ack_seq):
        tcp_update_seqack_from_tap(c, conn, max_ack_seq, now)

    if not tcp_tap_window_update(c, conn, max_ack_seq_wnd, now) and ack:
        # The guest answers (our zero-window probes, too) but cannot
        # take data: that is no reason to give up, however long it
        # lasts.  Upstream counts these as retries and resets after two
        # minutes of a guest application that does not read.
        conn.retries = 0

    if retr and tcp_fast_rexmit_ok(conn):
        flow_trace(conn, "fast re-transmit, ACK: %u, previous sequence: %u",
                   conn.seq_ack_from_tap, conn.seq_to_tap)
        if tcp_rewind_seq(c, conn, now):
            return -1
        tcp_data_from_sock(c, conn, now)

    partial_send = False
    if iov:
        total = (seq_from_tap - conn.seq_from_tap) & SEQ_MASK
        n = 0
        try:
            while iov:
                chunk = iov[:1000]
                try:
                    sent = conn.sock.sendmsg(chunk, [], socket.MSG_DONTWAIT |
                                             socket.MSG_NOSIGNAL)
                except InterruptedError:
                    continue
                n += sent
                clen = sum(len(b) for b in chunk)
                if sent < clen:
                    break
                iov = iov[1000:]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            conn.seq_from_tap = seq_from_tap
            if tcp_send_flag(c, conn, ACK, now):
                return -1
            return len(segs) - idx
        except OSError as e:
            flow_dbg_perror(conn, e, "sendmsg() to socket")
            return -1

        conn.seq_from_tap = (conn.seq_from_tap + n) & SEQ_MASK
        if n < total:
            tcp_buf.stats["short_send"] += 1
            partial_send = True
            conn.dup_ack_due = True
            conn.want_out = True
        tcp_epoll_ctl(conn)

    if keep or partial_send:
        if _send_dup_acks(c, conn, now):
            return -1
        return len(segs) - idx

    if ack and conn.events & TAP_FIN_SENT and \
            conn.seq_ack_from_tap == conn.seq_to_tap:
        conn_event(c, conn, TAP_FIN_ACKED, now)

    if fin and fin_ok:
        conn.seq_from_tap = (conn.seq_from_tap + 1) & SEQ_MASK
        conn_event(c, conn, TAP_FIN_RCVD, now)
    else:
        if tcp_send_flag(c, conn, ACK_IF_NEEDED, now):
            return -1

    return len(segs) - idx


def tcp_conn_from_sock_finish(c, conn, th, opts, now):
    """The guest answered our SYN with a SYN-ACK: establish."""
    _sp, _dp, seq, _ack, _off, _fl, window = th[:7]
    conn.ws_ok = tcp_get_tap_ws(conn, opts)
    if not conn.ws_ok:
        conn.ws_to_tap = 0
    conn.wnd_from_tap = (window >> conn.ws_from_tap) or 1

    conn.tap_mss = tcp_conn_tap_mss(conn, opts)

    conn.seq_init_from_tap = (seq + 1) & SEQ_MASK
    conn.seq_from_tap = conn.seq_init_from_tap
    conn.seq_ack_to_tap = conn.seq_from_tap

    conn_event(c, conn, ESTABLISHED, now)
    if tcp_set_peek_offset(conn, 0, now):
        tcp_rst(c, conn, now)
        return
    if tcp_send_flag(c, conn, ACK, now):
        tcp_rst(c, conn, now)
        return

    tcp_data_from_sock(c, conn, now)


_RST_HDR = struct.Struct("!HHIIBBHHH")


def tcp_rst_no_conn(c, af, saddr, daddr, th, l4len):
    """Answer a segment for no known connection with a RST (RFC 9293,
    3.10.7.1); a RST is not answered."""
    from pasta import checksum, tap
    sport, dport, seq, ack_seq, off, flags = th[:6]
    if flags & RST:
        return

    if flags & ACK:
        rseq, rack, rflags = ack_seq, 0, RST
    else:
        dlen = l4len - (off >> 4) * 4
        if dlen < 0:
            dlen = 0
        if flags & SYN:
            dlen += 1
        if flags & FIN:
            dlen += 1
        rseq, rack, rflags = 0, (seq + dlen) & SEQ_MASK, RST | ACK

    if af == socket.AF_INET:
        psum = checksum.proto_ipv4_header_psum(20, 6, daddr, saddr)
    else:
        psum = checksum.proto_ipv6_header_psum(20, 6, daddr, saddr)
    th = _RST_HDR.pack(dport, sport, rseq, rack, 5 << 4, rflags, 0, 0, 0)
    check = checksum.csum(th, psum)
    th = th[:16] + check.to_bytes(2, "big") + th[18:]

    eth = struct.pack("!6s6sH", c.guest_mac, c.our_tap_mac,
                      0x0800 if af == socket.AF_INET else 0x86dd)
    if af == socket.AF_INET:
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 255, 6,
                          0, daddr, saddr)
        iph = iph[:10] + checksum.csum(iph).to_bytes(2, "big") + iph[12:]
    else:
        iph = struct.pack("!IHBB16s16s", 0x60000000, 20, 6, 255, daddr,
                          saddr)
    frame = eth + iph + th
    tap.tap_send_single(c, frame)


tcp_dropped = {}


def _tcp_drop(reason):
    tcp_dropped[reason] = tcp_dropped.get(reason, 0) + 1
    if log.log_trace:
        log.trace("tcp: dropped segment: %s", reason)


def tcp_tap_handler(c, pif, af, saddr, daddr, segs, now):
    """Segments from the guest, all of one 4-tuple, in arrival order.
    Returns the number of segments consumed (all of them)."""
    idx = 0
    n = len(segs)
    while idx < n:
        try:
            k = _tcp_tap_handler(c, pif, af, saddr, daddr, segs, idx, now)
        except Exception as e:          # our bug: keep going
            _tcp_drop("handler error")
            if _flow.flow_new_entry is not None:
                try:
                    _flow.flow_alloc_cancel(_flow.flow_new_entry)
                except Exception:
                    pass
            if log.ratelimit("tcp: handler error"):
                log.err("TCP: error handling segment from guest: %s: %s",
                        type(e).__name__, e)
            k = 1
        if k <= 0:
            k = 1
        idx += k
    tcp_payload_flush_all(c, now)
    return n


def tcp_payload_flush_all(c, now):
    tcp_buf.tcp_payload_flush(c, now)


def _tcp_tap_handler(c, pif, af, saddr, daddr, segs, idx, now):
    seg = segs[idx]
    l4len = len(seg)
    if l4len < 20:
        _tcp_drop("short header")
        return 1
    th = _TH.unpack_from(seg, 0)
    sport, dport, seq, ack_seq, off, flags, window = th[:7]
    doff = (off >> 4) * 4
    if doff < 20 or doff > l4len:
        _tcp_drop("bad data offset")
        return 1
    opts = seg[20:doff]

    sidx = _flow.flow_lookup_af(c, socket.IPPROTO_TCP, PIF_TAP, af, saddr,
                                daddr, sport, dport)
    conn = _flow.flow_at_sidx(sidx)

    if conn is None:
        if flags & SYN and not flags & (ACK | RST | FIN):
            if l4len > doff:
                # SYN with data: accept the SYN, the guest retransmits
                # the data once the connection is established
                _tcp_drop("data in SYN")
            if not tcp_conn_from_tap(c, af, saddr, daddr, th, bytes(opts),
                                     now):
                # Refused (table full, no socket, no route): say so
                tcp_rst_no_conn(c, af, saddr, daddr, th, l4len)
        else:
            tcp_rst_no_conn(c, af, saddr, daddr, th, l4len)
        return 1

    if conn.type != FLOW_TCP:
        return 1

    if log.log_trace:
        flow_trace(conn, "packet length %d from tap", l4len)

    if flags & RST:
        # Only a RST within reach of what we expect counts: up to the
        # largest window we can advertise (ours may have shrunk since the
        # guest sent it), not a blind one from anywhere
        if conn.events & ESTABLISHED and \
                not (SEQ_GE(seq, conn.seq_from_tap) and
                     SEQ_LE(seq, (conn.seq_from_tap + MAX_WINDOW) &
                            SEQ_MASK)):
            _tcp_drop("RST out of window")
            return 1
        tcp_sock_rst(c, conn, now)
        return 1

    conn.inactive = False
    conn.tap_inactive = False

    if flags & ACK and not conn.events & ESTABLISHED:
        tcp_update_seqack_from_tap(c, conn, ack_seq, now)

    if conn.events & SOCK_ACCEPTED:
        if flags & SYN and flags & ACK and not flags & FIN:
            if ack_seq != conn.seq_to_tap:
                tcp_rst(c, conn, now)
                return 1
            tcp_conn_from_sock_finish(c, conn, th, bytes(opts), now)
            return 1
        if flags & SYN and not flags & ACK:
            return 1            # simultaneous open: ignore
        tcp_rst(c, conn, now)
        return 1

    if conn.events & TAP_SYN_RCVD:
        if flags & SYN and not flags & (ACK | FIN):
            return 1            # SYN retry: keep waiting

        if not conn.events & TAP_SYN_ACK_SENT:
            tcp_rst(c, conn, now)
            return len(segs) - idx

        if not flags & ACK or ack_seq != conn.seq_to_tap:
            tcp_rst(c, conn, now)
            return len(segs) - idx

        conn_event(c, conn, ESTABLISHED, now)
        if tcp_set_peek_offset(conn, 0, now):
            tcp_rst(c, conn, now)
            return len(segs) - idx

        if flags & FIN and l4len == doff:
            conn.seq_from_tap = (conn.seq_from_tap + 1) & SEQ_MASK
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                flow_warn_perror_ratelimit(conn, now, e,
                                           "shutdown() failed")
                tcp_rst(c, conn, now)
                return len(segs) - idx
            if tcp_send_flag(c, conn, ACK, now):
                tcp_rst(c, conn, now)
                return len(segs) - idx
            conn_event(c, conn, SOCK_FIN_SENT, now)
            conn_event(c, conn, TAP_FIN_RCVD, now)
            return 1

        if tcp_tap_window_update(c, conn, window, now):
            tcp_data_from_sock(c, conn, now)

        if len(segs) - idx == 1 and l4len == doff:
            return 1

    # A SYN on an established connection: the guest may have forgotten
    # it.  Answer with a challenge ACK (RFC 5961, 4.2): a guest in
    # SYN-SENT replies with a RST, which closes our side, and its next
    # SYN gets a new connection
    if flags & SYN and conn.events & ESTABLISHED:
        _tcp_drop("SYN on established connection")
        if tcp_send_flag(c, conn, ACK, now):
            tcp_rst(c, conn, now)
        return 1

    # Established, but no more data accepted from the guest
    if conn.events & TAP_FIN_RCVD:
        dlen = l4len - doff
        if dlen:
            flow_dbg(conn, "data segment in CLOSE-WAIT (%d B)", dlen)

        retr = (flags & ACK and not flags & FIN and
                ack_seq == conn.seq_ack_from_tap and
                window == conn.wnd_from_tap)

        if flags & ACK and SEQ_GT(ack_seq, conn.seq_max_to_tap):
            _tcp_drop("ACK for data never sent")
            return 1
        if flags & ACK and not tcp_sock_consume(conn, ack_seq):
            tcp_update_seqack_from_tap(c, conn, ack_seq, now)

        retr = retr and tcp_fast_rexmit_ok(conn)
        if retr:
            flow_trace(conn, "fast re-transmit, ACK: %u, previous "
                       "sequence: %u", ack_seq, conn.seq_to_tap)
            if tcp_rewind_seq(c, conn, now):
                return 1

        if tcp_tap_window_update(c, conn, window, now) or retr:
            tcp_data_from_sock(c, conn, now)

        if conn.seq_ack_from_tap == conn.seq_to_tap:
            if flags & ACK and conn.events & TAP_FIN_SENT:
                conn_event(c, conn, TAP_FIN_ACKED, now)
            if conn.events & SOCK_FIN_RCVD and \
                    conn.events & TAP_FIN_ACKED:
                conn_event(c, conn, CLOSED, now)
        return 1

    # Established, accepting data
    count = tcp_data_from_tap(c, conn, segs, idx, now)
    if count == -1:
        tcp_rst(c, conn, now)
        return len(segs) - idx
    if conn.events == CLOSED:
        return count

    conn_flag(c, conn, ~STALLED, now)

    ack_due = conn.seq_ack_to_tap != conn.seq_from_tap

    if conn.events & TAP_FIN_RCVD and not conn.events & SOCK_FIN_SENT:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            flow_warn_perror_ratelimit(conn, now, e, "shutdown() failed")
            tcp_rst(c, conn, now)
            return len(segs) - idx
        conn_event(c, conn, SOCK_FIN_SENT, now)
        if tcp_send_flag(c, conn, ACK, now):
            tcp_rst(c, conn, now)
            return len(segs) - idx
        ack_due = False

    if ack_due:
        conn_flag(c, conn, ACK_TO_TAP_DUE, now)

    return count


def tcp_connect_finish(c, conn, now):
    """The host socket's connect() completed (EPOLLOUT)."""
    try:
        so = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as e:
        so = e.errno or errno.EIO
    if so:
        flow_dbg(conn, "connect() failed: %s", os.strerror(so))
        _tcp_connect_failed(c, conn, so, now)
        return

    if tcp_send_flag(c, conn, SYN | ACK, now):
        tcp_rst(c, conn, now)
        return

    conn_event(c, conn, TAP_SYN_ACK_SENT, now)
    conn_flag(c, conn, ACK_FROM_TAP_DUE, now)


# Host-initiated connections

def tcp_tap_conn_from_sock(c, f, s, now):
    """Start a connection to the guest for socket ``s`` accepted on a
    listening socket: send it a SYN."""
    conn = _flow.flow_set_type(f, FLOW_TCP, TcpTapConn)
    conn.ws_to_tap = conn.ws_from_tap = 0

    try:
        _conn_setup_sock(c, conn, s, INISIDE, now)
    except OSError as e:
        flow_perror_ratelimit(conn, now, e, "Can't register with epoll")
        conn.sock = s
        conn.sockfd = s.fileno()
        _flow.flow_activate(conn)
        conn.events = CLOSED
        _flow.flow_defer_mark(conn)
        return

    conn_event(c, conn, SOCK_ACCEPTED, now)

    h = _flow.flow_hash_insert(c, TAP_SIDX(conn))
    conn.seq_to_tap = tcp_init_seq(h, now)
    conn.seq_ack_from_tap = conn.recover_seq = conn.seq_to_tap
    conn.seq_max_to_tap = conn.seq_to_tap
    conn.wnd_from_tap = WINDOW_DEFAULT
    tcp_get_sndbuf(conn)

    _flow.flow_activate(conn)

    if tcp_send_flag(c, conn, SYN, now):
        conn_event(c, conn, CLOSED, now)
        return

    conn_flag(c, conn, ACK_FROM_TAP_DUE, now)


def _tcp_accept_refuse(lsock):
    """Out of descriptors: accept one waiting connection with the spare
    descriptor kept for this and reset it, so that the listening socket
    does not stay readable (and the loop spin) until one frees up."""
    global _spare_fd
    if _spare_fd < 0:
        return
    os.close(_spare_fd)
    _spare_fd = -1
    try:
        s, _sa = lsock.accept()
        tcp_linger0(None, s)
        s.close()
    except OSError:
        pass
    try:
        _spare_fd = os.dup(_timer_fd)
    except OSError:
        _spare_fd = -1


def tcp_listen_handler(c, ref, now):
    """A connection waits on a listening socket: accept it and forward it
    as the rules say."""
    try:
        _tcp_listen_handler(c, ref, now)
    except Exception as e:
        f = _flow.flow_new_entry
        if f is not None:
            try:
                _flow.flow_alloc_cancel(f)
            except Exception:
                pass
        _handler_bug(c, "listen handler", e)


def _tcp_listen_handler(c, ref, now):
    lsock = ref.data
    listen = ref.listen

    for _i in range(16):
        f = _flow.flow_alloc()
        if f is None:
            # Table full: accept and reset at once, rather than leave the
            # peer waiting
            try:
                s, _sa = lsock.accept()
            except OSError:
                return
            tcp_linger0(None, s)
            s.close()
            if log.ratelimit("tcp: flow table full"):
                log.warn("TCP: flow table full, refusing connection")
            continue

        try:
            s, sa = lsock.accept()
        except (BlockingIOError, InterruptedError):
            _flow.flow_alloc_cancel(f)
            return
        except OSError as e:
            _flow.flow_alloc_cancel(f)
            if log.ratelimit("tcp: accept"):
                log.warn_perror(e, "TCP: accept() failed")
            if e.errno in (errno.EMFILE, errno.ENFILE):
                _tcp_accept_refuse(lsock)
            return

        s.setblocking(False)
        tcp_sock_set_nodelay(s)

        ini = _flow.flow_initiate_sa(f, listen.pif, s.family, sa, None,
                                     listen.port)
        try:
            ini.oaddr, ini.oport = inany_from_sockaddr(s.family,
                                                       s.getsockname())
        except OSError as e:
            log.err_perror(e, "Can't get local address for socket %i",
                           s.fileno())

        if not inany_is_unicast(ini.eaddr) or ini.eport == 0:
            log.err("Invalid endpoint from TCP accept(): %r", sa)
            tcp_linger0(f, s)
            s.close()
            _flow.flow_alloc_cancel(f)
            continue

        if _flow.flow_target(c, f, listen.rule, socket.IPPROTO_TCP) is None:
            tcp_linger0(f, s)
            s.close()
            _flow.flow_alloc_cancel(f)
            continue

        tgtpif = f.pif[TGTSIDE]
        if tgtpif in (PIF_SPLICE, PIF_HOST):
            from pasta import tcp_splice
            tcp_splice.tcp_splice_conn_from_sock(c, f, s)
        elif tgtpif == PIF_TAP:
            tcp_tap_conn_from_sock(c, f, s, now)
        else:
            flow_err_ratelimit(f, now, "No support for forwarding TCP from "
                               "%s to %s", pif_name(f.pif[INISIDE]),
                               pif_name(tgtpif))
            tcp_linger0(f, s)
            s.close()
            _flow.flow_alloc_cancel(f)


# Timers

def _tcp_timer_expired(c, conn, now):
    """The connection's deadline passed: act on its flags."""
    if conn.flags & ACK_TO_TAP_DUE:
        if tcp_send_flag(c, conn, ACK_IF_NEEDED, now):
            tcp_rst(c, conn, now)
            return
        if conn.dup_ack_due and conn.wnd_to_tap:
            conn.dup_ack_due = False
            conn.seq_dup_ack_approx = -1
            _send_dup_acks(c, conn, now)
        tcp_timer_ctl(c, conn, now)
    elif conn.flags & ACK_FROM_TAP_DUE:
        if not conn.events & ESTABLISHED:
            mx = min(TCP_MAX_RETRIES, c.tcp.syn_retries +
                     c.tcp.syn_linear_timeouts)
            if conn.retries >= mx:
                flow_dbg(conn, "handshake timeout")
                tcp_rst(c, conn, now)
            else:
                flow_trace(conn, "SYN timeout, retry")
                if conn.events & SOCK_ACCEPTED:
                    conn.seq_to_tap = (conn.seq_to_tap - 1) & SEQ_MASK
                    flags = SYN
                else:
                    conn.seq_to_tap = (conn.seq_to_tap - 1) & SEQ_MASK
                    flags = SYN | ACK
                if tcp_send_flag(c, conn, flags, now):
                    tcp_rst(c, conn, now)
                    return
                conn.retries += 1
                conn_flag(c, conn, SYN_RETRIED, now)
                tcp_timer_ctl(c, conn, now)
        elif conn.retries >= TCP_MAX_RETRIES:
            flow_dbg(conn, "retransmissions count exceeded")
            tcp_rst(c, conn, now)
        else:
            flow_dbg(conn, "ACK timeout, retry")
            tcp_buf.stats["rto"] += 1
            if not conn.wnd_from_tap:
                conn.wnd_from_tap = 1           # zero-window probe
            conn.retries += 1
            if tcp_rewind_seq(c, conn, now):
                return
            tcp_data_from_sock(c, conn, now)
            tcp_timer_ctl(c, conn, now)


def tcp_timers_run(c, now):
    """Run the connections whose deadline has passed, and arm the timerfd
    for the next one."""
    global _timer_armed
    heap = _timer_heap
    while heap and heap[0][0] <= now + 1e-4:
        deadline, _n, conn = heapq.heappop(heap)
        if conn.timer_queued == deadline:
            conn.timer_queued = 0.0
        if flowtab.get(conn.idx) is not conn or conn.events == CLOSED:
            continue
        if not conn.timer_at:
            continue
        if conn.timer_at > now + 1e-4:
            _timer_queue(conn, conn.timer_at, now)
            continue
        conn.timer_at = 0.0
        try:
            _tcp_timer_expired(c, conn, now)
        except Exception as e:
            _handler_bug(c, "timer", e, conn, now)
        if conn.timer_at and not conn.timer_queued:
            _timer_queue(conn, conn.timer_at, now)

    _timer_armed = 0.0
    if heap:
        _timer_arm(heap[0][0], now)
    tcp_buf.tcp_payload_flush(c, now)


def tcp_timer_handler(c, ref, now):
    """The TCP timerfd expired."""
    try:
        os.read(ref.fd, 8)
    except OSError:
        pass
    try:
        tcp_timers_run(c, now)
    except Exception as e:
        _handler_bug(c, "timer handler", e)


def _handler_bug(c, what, e, conn=None, now=0.0):
    """One of our handlers raised: that is our bug, but it must not stop
    pasta or disturb the other connections.  Log it and reset the
    connection concerned, if any."""
    if log.ratelimit("tcp: bug " + what):
        log.err("TCP: error in %s: %s: %s", what, type(e).__name__, e)
    if conn is not None and conn.type == FLOW_TCP and conn.events != CLOSED:
        try:
            tcp_rst(c, conn, now)
        except Exception:
            conn.events = CLOSED
            _flow.flow_defer_mark(conn)


def tcp_sock_handler(c, ref, events, now):
    """Events on a connection's host socket."""
    conn = _flow.flow_at_sidx(ref.sidx)
    if conn is None or conn.type != FLOW_TCP or conn.events == CLOSED:
        return
    try:
        _tcp_sock_handler(c, conn, events, now)
    except Exception as e:
        _handler_bug(c, "socket handler", e, conn, now)


def _tcp_sock_handler(c, conn, events, now):

    if events & EPOLLERR:
        try:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            err = 0
        if conn.events == TAP_SYN_RCVD and err:
            _tcp_connect_failed(c, conn, err, now)
        else:
            tcp_rst(c, conn, now)
        _flush(c, now)
        return

    conn.inactive = False

    if conn.events & TAP_FIN_ACKED and events & EPOLLHUP:
        conn_event(c, conn, CLOSED, now)
        return

    if conn.events & ESTABLISHED:
        if CONN_HAS(conn, SOCK_FIN_SENT | TAP_FIN_ACKED):
            conn_event(c, conn, CLOSED, now)
            return

        if events & (EPOLLRDHUP | EPOLLHUP):
            conn_event(c, conn, SOCK_FIN_RCVD, now)

        if events & EPOLLIN or (events & (EPOLLRDHUP | EPOLLHUP) and
                                conn.events != CLOSED):
            tcp_data_from_sock(c, conn, now)

        if events & EPOLLOUT and conn.events != CLOSED:
            conn.want_out = False
            tcp_epoll_ctl(conn)
            if tcp_update_seqack_wnd(c, conn, False, None, now) and \
                    tcp_send_flag(c, conn, ACK, now):
                tcp_rst(c, conn, now)
                _flush(c, now)
                return
            if conn.dup_ack_due and conn.wnd_to_tap:
                conn.dup_ack_due = False
                conn.seq_dup_ack_approx = -1
                _send_dup_acks(c, conn, now)
        _flush(c, now)
        return

    if events & EPOLLHUP:
        tcp_rst(c, conn, now)
        _flush(c, now)
        return

    if conn.events & SOCK_ACCEPTED:
        return

    if conn.events == TAP_SYN_RCVD:
        if events & EPOLLOUT:
            tcp_connect_finish(c, conn, now)
            _flush(c, now)


def _flush(c, now):
    tcp_buf.tcp_payload_flush(c, now)


# Initialisation and periodic work

def tcp_probe_peek_offset_cap(af):
    try:
        s = socket.socket(af, socket.SOCK_STREAM | socket.SOCK_CLOEXEC,
                          socket.IPPROTO_TCP)
    except OSError as e:
        log.warn_perror(e, "Temporary TCP socket creation failed")
        return False
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        return True
    except OSError:
        return False
    finally:
        s.close()


def tcp_probe_tcp_info():
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM |
                          socket.SOCK_CLOEXEC)
    except OSError:
        return 0
    try:
        return len(s.getsockopt(socket.SOL_TCP, TCP_INFO, TCP_INFO_LEN))
    except OSError:
        return 0
    finally:
        s.close()


def _read_int(path, default):
    try:
        with open(path) as fp:
            return int(fp.read().strip())
    except (OSError, ValueError):
        return default


def tcp_get_rto_params(c):
    c.tcp.syn_retries = min(_read_int(SYN_RETRIES, SYN_RETRIES_DEFAULT),
                            MAX_SYNCNT)
    c.tcp.syn_linear_timeouts = min(
        _read_int(SYN_LINEAR_TIMEOUTS, SYN_LINEAR_TIMEOUTS_DEFAULT),
        MAX_SYNCNT)
    v = _read_int(RTO_MAX_MS, RTO_MAX_DEFAULT * 1000)
    c.tcp.rto_max = max(1, -(-v // 1000))
    log.debug("Using TCP RTO parameters, syn_retries: %d, "
              "syn_linear_timeouts: %d, rto_max: %d", c.tcp.syn_retries,
              c.tcp.syn_linear_timeouts, c.tcp.rto_max)


def tcp_init(c):
    """Set up TCP: parameters, socket pools, the timer, the splice part."""
    global peek_offset_cap, tcp_info_size, _timer_fd, _discard, _ctx
    global _timer_armed
    import mmap
    from pasta import util

    _ctx = c
    if not isinstance(getattr(c, "tcp", None), TcpCtx):
        c.tcp = TcpCtx()
    tcp_get_rto_params(c)
    tcp_buf.tcp_sock_iov_init(c)

    del init_sock_pool4[:]
    del init_sock_pool6[:]
    del low_rtt_dst[:]
    del _timer_heap[:]
    _timer_armed = 0.0
    tcp_sock_refill_init(c)

    # MSG_TRUNC never writes to this: its pages are never touched
    _discard = mmap.mmap(-1, MAX_WINDOW)

    if _timer_fd < 0:
        _timer_fd = util.timerfd_create()
        epoll_add(c, EPOLLIN, EpollRef(EpollType.TCP_TIMER, _timer_fd))
    global _spare_fd
    if _spare_fd < 0:
        _spare_fd = os.dup(_timer_fd)

    from pasta.passt import MODE_PASTA
    if c.mode == MODE_PASTA:
        try:
            from pasta import tcp_splice
        except ImportError:
            tcp_splice = None
        if tcp_splice is not None and hasattr(tcp_splice, "tcp_splice_init"):
            tcp_splice.tcp_splice_init(c)

    peek_offset_cap = ((not c.ifi4 or
                        tcp_probe_peek_offset_cap(socket.AF_INET)) and
                       (not c.ifi6 or
                        tcp_probe_peek_offset_cap(socket.AF_INET6)))
    log.debug("SO_PEEK_OFF%ssupported", " " if peek_offset_cap else " not ")
    if not peek_offset_cap:
        log.debug("TCP: no SO_PEEK_OFF, data already sent is peeked into "
                  "a discard buffer")

    tcp_info_size = tcp_probe_tcp_info()
    return 0


def tcp_keepalive(c, now):
    """Send keepalives to the guest on connections it was quiet on."""
    if now - c.tcp.keepalive_run < KEEPALIVE_INTERVAL:
        return
    c.tcp.keepalive_run = now
    for conn in _flow.flow_foreach_of_type(FLOW_TCP):
        if conn.events & ESTABLISHED and conn.tap_inactive:
            flow_dbg(conn, "No tap activity for least %us, send keepalive",
                     KEEPALIVE_INTERVAL)
            if tcp_send_flag(c, conn, KEEPALIVE, now):
                tcp_rst(c, conn, now)
        conn.tap_inactive = True


def tcp_inactivity(c, now):
    """Reset connections without any activity for a whole interval."""
    if now - c.tcp.inactivity_run < INACTIVITY_INTERVAL:
        return
    log.debug("TCP inactivity scan")
    c.tcp.inactivity_run = now
    for conn in _flow.flow_foreach_of_type(FLOW_TCP):
        if conn.inactive:
            flow_dbg(conn, "Inactive for at least %us, resetting",
                     INACTIVITY_INTERVAL)
            tcp_rst(c, conn, now)
        conn.inactive = True


def tcp_defer_handler(c, now):
    """After every batch of events: write queued frames, run due timers,
    and the periodic work once per ``TCP_TIMER_INTERVAL``."""
    tcp_buf.tcp_payload_flush(c, now)

    if _timer_heap and _timer_heap[0][0] <= now:
        tcp_timers_run(c, now)

    if now - c.tcp.timer_run < TCP_TIMER_INTERVAL:
        return
    if not c.tcp.timer_run:
        c.tcp.keepalive_run = c.tcp.inactivity_run = now
    c.tcp.timer_run = now

    tcp_sock_refill_init(c)
    from pasta.passt import MODE_PASTA
    if c.mode == MODE_PASTA:
        try:
            from pasta import tcp_splice
            refill = getattr(tcp_splice, "tcp_splice_refill", None)
        except ImportError:
            refill = None
        if refill is not None:
            refill(c)

    tcp_keepalive(c, now)
    tcp_inactivity(c, now)
    tcp_buf.tcp_payload_flush(c, now)

    global _stats_logged
    if log.log_debug and tcp_buf.stats != _stats_logged:
        _stats_logged = dict(tcp_buf.stats)
        log.debug("TCP: %s", " ".join("%s %d" % kv for kv in
                                      sorted(_stats_logged.items())))


_stats_logged = {}


def tcp_flow_defer(conn):
    """Free a closed connection's socket; True if the entry can go."""
    if conn.events != CLOSED:
        return False
    if conn.epoll_events is not None and _ctx is not None:
        epoll_del(_ctx, conn.sockfd)
        conn.epoll_events = None
    if conn.sock is not None:
        conn.sock.close()
        conn.sock = None
    conn.timer_at = 0.0
    return True


def tcp_flow_is_established(conn):
    return bool(conn.events & ESTABLISHED)


# tcp_buf.py builds and sends our frames; it imports this module, so it
# comes last
from pasta import tcp_buf  # noqa: E402


def tcp_update_l2_buf(mac):
    """The guest's MAC address changed (called by ``tap.py``): frames take
    it from the context when they are built, so nothing is cached."""
    tcp_buf.tcp_update_l2_buf(mac)
