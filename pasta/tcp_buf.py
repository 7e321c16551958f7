# SPDX-License-Identifier: GPL-2.0-or-later
"""Frames for TCP segments towards the guest: headers, payload, sending.

``tcp.py`` decides what to send; this module turns that into Ethernet
frames and writes them.  Data segments carry payload that still sits in
the host socket's receive queue: ``tcp_buf_data_from_sock()`` peeks it
(``MSG_PEEK``, from the socket's ``SO_PEEK_OFF`` offset, which the kernel
advances as we read) into one preallocated buffer, ``tcp_buf``, with a
single ``recvmsg_into()`` scattering it over the payload slots of several
frames, builds a header for each slot and writes the frames with one
``writev()`` each.  Nothing is kept after the call returns: if the guest
does not acknowledge the data, it is peeked again from the socket.

Headers are packed with one precompiled ``struct.Struct`` per family
(Ethernet, IP and TCP header in one go).  The IPv4 header checksum is
derived from a sum of the constant fields computed once per connection;
the TCP checksum depends on the mode of the tap device:

- with the virtio-net header (``c.tap_vnet_len`` non-zero, the default)
  every frame asks the kernel to finish the checksum
  (``VIRTIO_NET_HDR_F_NEEDS_CSUM``; the header carries the pseudo-header
  sum), and a frame may carry up to 64 KiB of payload as a segmentation
  super-frame that the kernel cuts into segments of the guest's MSS
  (``VIRTIO_NET_HDR_GSO_TCPV4/6``);
- without it (``--no-tap-offload``) every frame is at most one MSS and
  its checksum is computed here: for all full frames of a batch at once
  with NumPy when it was importable at start-up (about 12 us per 64 KiB),
  else frame by frame with ``checksum.py`` (about 110 us per 64 KiB).

Measured with ``tools/bench`` (same run, same bed, world to namespace,
IPv4): at MTU 65520 both carry one segment per frame, 6.6 Gbit/s and
0.5 CPU s/GiB with offload against 3.4 Gbit/s and 1.7 s/GiB without (the
checksums); at MTU 1500, 8.3 Gbit/s and 0.7 s/GiB against 0.7 Gbit/s and
8.4 s/GiB, since each Python-built frame costs some microseconds however
small it is.  Offload is therefore the default.

A frame that the tap device does not take (its queue is full) is given
back: the connection's sequence is rewound to the first unsent frame,
like upstream's ``tcp_revert_seq()``.
"""

import errno
import socket
import struct

from pasta import checksum, tap
from pasta import tcp as _tcp

# Frame buffers
TCP_BUF_BYTES = 1 << 20         # payload peeked per call, at most
GSO_MAX_L3 = 65535              # IP total length of a super-frame, at most

tcp_buf = bytearray(TCP_BUF_BYTES)
_tcp_view = memoryview(tcp_buf)

MAC_ZERO = bytes(6)
MAC_BROADCAST = b"\xff" * 6
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86dd
ETH_ZLEN = 60
IPPROTO_TCP = 6

# Ethernet + IPv4 + TCP (no options), and Ethernet + IPv6 + TCP
HDR4 = struct.Struct("!6s6sH BBHHHBBH4s4s HHIIBBHHH")
HDR6 = struct.Struct("!6s6sH IHBB16s16s HHIIBBHHH")
HDR4_LEN = HDR4.size            # 54
HDR6_LEN = HDR6.size            # 74
L2L3_4 = 14 + 20
L2L3_6 = 14 + 40

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VNET_HDR = struct.Struct("<BBHHHHH")

_np = None                      # NumPy, imported on first use if at all
_np_tried = False

# Counters, for tests and the benchmark
stats = {"frames": 0, "data_frames": 0, "flag_frames": 0, "bytes": 0,
         "revert": 0, "fast_rexmit": 0, "rto": 0, "short_send": 0}


def _fold(s):
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def _sum16(buf):
    """Unfolded ones' complement sum of ``buf`` (network order words)."""
    global _np, _np_tried
    n = len(buf)
    if n >= 2048:
        if not _np_tried:
            _np_tried = True
            try:
                import numpy
                _np = numpy
            except ImportError:
                _np = None
        if _np is not None:
            even = n & ~1
            s = int(_np.frombuffer(buf[:even], dtype=">u2").sum(
                dtype=_np.uint64))
            if n & 1:
                s += buf[n - 1] << 8
            return s
    return checksum.csum_unfolded(buf)


def _addr_sum(a):
    s = 0
    for i in range(0, len(a), 2):
        s += (a[i] << 8) | a[i + 1]
    return s


def tcp_hdr_init(c, conn):
    """Precompute what every frame of ``conn`` shares: addresses, the sums
    of the constant IP header fields and of the pseudo-header."""
    tapside = conn.side[_tcp.TAPSIDE(conn)]
    src, dst = tapside.oaddr, tapside.eaddr
    if src[:12] == b"\0" * 10 + b"\xff\xff":
        conn.v4 = True
        conn.ip_src = src[12:]
        conn.ip_dst = dst[12:]
        asum = _addr_sum(conn.ip_src) + _addr_sum(conn.ip_dst)
        conn.ip_csum_base = 0x4500 + 0x4000 + ((255 << 8) | IPPROTO_TCP) + \
            asum
    else:
        conn.v4 = False
        conn.ip_src = src
        conn.ip_dst = dst
        asum = _addr_sum(src) + _addr_sum(dst)
        conn.ip_csum_base = 0
    conn.psum_base = IPPROTO_TCP + asum
    conn.flow_lbl = conn.sockfd & 0xfffff if conn.sockfd >= 0 else 0

    # Our MAC address as the guest should see it for this peer
    conn.omac = bytes(c.our_tap_mac)
    try:
        from pasta import fwd
        mac = fwd.fwd_neigh_mac_get(c, src)
        if mac and len(mac) == 6 and mac != b"\xff" * 6:
            conn.omac = bytes(mac)
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    conn.tap_omac = conn.omac


def tcp_fill_headers(c, conn, seq, flags, wnd, opts, payload, dlen,
                     gso_size, dsum=None):
    """The buffers of one frame for ``conn``: ``[vnet?, headers, opts?,
    payload?, padding?]``, with checksums (or checksum offload) filled
    in; upstream's ``tcp_fill_headers()``, ``tcp_update_csum()`` and
    ``tcp_l2_buf_pad()`` in one.  ``dsum``, if given, is the unfolded
    sum of the payload."""
    tapside = conn.side[conn.tapsidei]
    dmac = c.guest_mac
    if dmac == MAC_ZERO:
        dmac = MAC_BROADCAST        # not learnt yet: reach it anyway
    optlen = len(opts)
    l4len = 20 + optlen + dlen
    doff = (5 + (optlen >> 2)) << 4
    ack = conn.seq_ack_to_tap
    vlen = c.tap_vnet_len

    psum = conn.psum_base + l4len
    if vlen:
        tcsum = _fold(psum)
    else:
        s = (psum + tapside.oport + tapside.eport + (seq >> 16) +
             (seq & 0xffff) + (ack >> 16) + (ack & 0xffff) +
             ((doff << 8) | flags) + wnd)
        if optlen:
            s += _sum16(opts)
        if dlen:
            s += _sum16(payload) if dsum is None else dsum
        tcsum = ~_fold(s) & 0xffff

    if conn.v4:
        l3len = 20 + l4len
        ipcsum = ~_fold(conn.ip_csum_base + l3len) & 0xffff
        hdr = HDR4.pack(dmac, conn.omac, ETH_P_IP, 0x45, 0,
                        l3len, 0, 0x4000, 255, IPPROTO_TCP, ipcsum,
                        conn.ip_src, conn.ip_dst, tapside.oport,
                        tapside.eport, seq, ack, doff, flags, wnd, tcsum, 0)
        l2l3 = L2L3_4
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    else:
        hdr = HDR6.pack(dmac, conn.omac, ETH_P_IPV6,
                        0x60000000 | conn.flow_lbl, l4len, IPPROTO_TCP, 255,
                        conn.ip_src, conn.ip_dst, tapside.oport,
                        tapside.eport, seq, ack, doff, flags, wnd, tcsum, 0)
        l2l3 = L2L3_6
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6

    bufs = []
    if vlen:
        if gso_size and dlen > gso_size:
            vh = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type,
                               l2l3 + 20 + optlen, gso_size, l2l3, 16, 0)
        else:
            vh = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, l2l3,
                               16, 0)
        bufs.append(vh[:vlen])
    bufs.append(hdr)
    if optlen:
        bufs.append(opts)
    if dlen:
        bufs.append(payload)
    else:
        pad = ETH_ZLEN - (l2l3 + 20 + optlen)
        if pad > 0:
            bufs.append(bytes(pad))
    return bufs


_pending = []                   # flag-only frames not written yet


def tcp_update_l2_buf(mac):
    """The guest's MAC changed: nothing is cached per connection (frames
    take ``c.guest_mac`` when they are built)."""


def tcp_sock_iov_init(c):
    """Prepare for building frames.  Without checksum offload, import
    NumPy now, if it is there: once isolated, pasta sees no file system
    to import it from (and with offload it is not needed at all)."""
    global _np, _np_tried
    if c.tap_vnet_len or _np_tried:
        return
    _np_tried = True
    try:
        import numpy
        _np = numpy
    except ImportError:
        _np = None


def tcp_payload_flush(c, now):
    """Write the flag-only frames queued by ``tcp_buf_send_flag()``."""
    global _pending
    if not _pending:
        return
    frames = _pending
    _pending = []
    m = tap.tap_send_frames(c, frames)
    stats["frames"] += m
    stats["flag_frames"] += m


def tcp_buf_send_flag(c, conn, flags, now):
    """Queue a segment without payload; see ``tcp.tcp_prepare_flags()``.

    Returns a negative errno value if the connection was reset, else 0.
    Frames are written at the end of the batch (``tcp_payload_flush()``),
    or at once when the queue is long.
    """
    seq = conn.seq_to_tap
    ret, tcpflags, opts = _tcp.tcp_prepare_flags(c, conn, flags, now)
    if ret <= 0:
        return ret

    if flags & _tcp.KEEPALIVE:
        seq = (seq - 1) & 0xffffffff

    if conn.events & _tcp.ESTABLISHED:
        wnd = conn.wnd_to_tap
    else:
        wnd = min(conn.wnd_to_tap << conn.ws_to_tap, 0xffff)
    frame = tcp_fill_headers(c, conn, seq, tcpflags, wnd, opts, None, 0, 0)
    _pending.append(frame)
    if flags & _tcp.DUP_ACK:
        for _i in range(_tcp.DUP_ACK_COUNT):
            _pending.append(frame)

    if len(_pending) > 128:
        tcp_payload_flush(c, now)
    return 0


def tcp_prepare_iov(bufs, already_sent):
    """Buffers for the peek: ``bufs``, behind a discard buffer for the
    ``already_sent`` bytes when the kernel has no SO_PEEK_OFF for TCP
    (Linux before 6.9), as every peek then starts at the head of the
    queue.  The discard buffer is an anonymous mapping whose pages are
    touched only this way."""
    if _tcp.peek_offset_cap or not already_sent:
        return bufs
    return [memoryview(_tcp._discard)[:already_sent]] + bufs


def tcp_revert_seq(c, conn, seq, now):
    """Frames from sequence ``seq`` on did not go out: send them again
    later.  Returns -1 if the connection had to be reset."""
    stats["revert"] += 1
    conn.seq_to_tap = seq
    off = (conn.seq_to_tap - conn.seq_ack_from_tap) & 0xffffffff
    if _tcp.tcp_set_peek_offset(conn, off, now):
        _tcp.tcp_rst(c, conn, now)
        return -1
    return 0


def _batch_sums(n, fsz):
    """Payload sums of all the full ``fsz``-byte frames among the first
    ``n`` bytes of ``tcp_buf``, in one NumPy operation (None without
    NumPy, or for an odd frame size)."""
    if not _np_tried:
        _sum16(bytes(2048))             # decides whether NumPy is there
    k = n // fsz
    if _np is None or fsz & 1 or k < 2:
        return None
    a = _np.frombuffer(tcp_buf, dtype=">u2", count=k * fsz // 2)
    return [int(x) for x in a.reshape(k, fsz // 2).sum(axis=1,
                                                       dtype=_np.uint64)]


def _slots(size, fsz):
    """Memoryview slices of ``tcp_buf`` of ``fsz`` bytes covering
    ``size`` bytes."""
    view = _tcp_view[:size]
    return [view[i:i + fsz] for i in range(0, size, fsz)]


def tcp_buf_data_from_sock(c, conn, already_sent, now):
    """Peek new data from the socket of ``conn`` and send it to the guest
    within its window.  Returns a negative value if the connection was
    reset, else 0."""
    T = _tcp
    wnd_scaled = conn.wnd_from_tap << conn.ws_from_tap
    mss = conn.tap_mss
    budget = min(wnd_scaled - already_sent, TCP_BUF_BYTES)
    if budget <= 0:
        return 0

    vlen = c.tap_vnet_len
    if vlen:
        l3max = GSO_MAX_L3 - (20 if conn.v4 else 0) - 20
        fsz = max(mss, (l3max // mss) * mss)
    else:
        fsz = mss
    if fsz > TCP_BUF_BYTES:
        fsz = TCP_BUF_BYTES

    bufs = _slots(budget, fsz)
    if len(bufs) > 1000:
        bufs = bufs[:1000]

    iov = tcp_prepare_iov(bufs, already_sent)

    while True:
        try:
            n = conn.sock.recvmsg_into(iov, 0, socket.MSG_PEEK |
                                       socket.MSG_DONTWAIT)[0]
            break
        except InterruptedError:
            continue
        except BlockingIOError:
            if already_sent:
                T.conn_flag(c, conn, T.STALLED, now)
            return 0
        except OSError as e:
            T.flow_dbg_perror(conn, e, "peek from socket")
            T.tcp_rst(c, conn, now)
            return -(e.errno or errno.EIO)

    if n == 0:
        if already_sent:
            T.conn_flag(c, conn, T.STALLED, now)
        elif (conn.events & (T.SOCK_FIN_RCVD | T.TAP_FIN_SENT)) == \
                T.SOCK_FIN_RCVD:
            conn.seq_ack_to_tap = conn.seq_from_tap
            ret = tcp_buf_send_flag(c, conn, T.FIN | T.ACK, now)
            if ret:
                T.tcp_rst(c, conn, now)
                return ret
            T.conn_event(c, conn, T.TAP_FIN_SENT, now)
            T.conn_flag(c, conn, T.ACK_FROM_TAP_DUE, now)
        return 0

    if not T.peek_offset_cap:
        n -= already_sent
        if n <= 0:
            T.conn_flag(c, conn, T.STALLED, now)
            return 0

    T.conn_flag(c, conn, ~T.ACK_FROM_TAP_BLOCKS, now)
    T.conn_flag(c, conn, ~T.STALLED, now)

    T.tcp_update_seqack_wnd(c, conn, False, None, now)

    # Anything queued for this connection (an ACK) goes first
    tcp_payload_flush(c, now)

    frames = []
    seqs = []
    seq = conn.seq_to_tap
    left = n
    wnd = conn.wnd_to_tap
    gso = mss if vlen else 0
    sums = None if vlen else _batch_sums(n, fsz)
    if sums is not None:
        # The common case without offload, many full frames: the same
        # computation as tcp_fill_headers(), with what all frames share
        # taken out of the loop
        k = len(sums)
        tapside = conn.side[conn.tapsidei]
        ack = conn.seq_ack_to_tap
        l4len = 20 + fsz
        base = (conn.psum_base + l4len + tapside.oport + tapside.eport +
                (ack >> 16) + (ack & 0xffff) + ((0x50 << 8) | T.ACK) + wnd)
        if conn.v4:
            ipcsum = ~_fold(conn.ip_csum_base + 20 + l4len) & 0xffff
            pack = HDR4.pack
            args = (c.guest_mac, conn.omac, ETH_P_IP, 0x45, 0, 20 + l4len,
                    0, 0x4000, 255, IPPROTO_TCP, ipcsum, conn.ip_src,
                    conn.ip_dst, tapside.oport, tapside.eport)
        else:
            pack = HDR6.pack
            args = (c.guest_mac, conn.omac, ETH_P_IPV6,
                    0x60000000 | conn.flow_lbl, l4len, IPPROTO_TCP, 255,
                    conn.ip_src, conn.ip_dst, tapside.oport, tapside.eport)
        for i in range(min(k, len(bufs))):
            if left <= fsz:
                break           # the last frame (PSH) goes the slow way
            x = base + (seq >> 16) + (seq & 0xffff) + sums[i]
            x = (x & 0xffff) + (x >> 16)
            x = (x & 0xffff) + (x >> 16)
            x = (x & 0xffff) + (x >> 16)
            hdr = pack(*args, seq, ack, 0x50, T.ACK, wnd, ~x & 0xffff, 0)
            frames.append([hdr, bufs[i]])
            seqs.append(seq)
            seq = (seq + fsz) & 0xffffffff
            left -= fsz
        bufs = bufs[len(frames):]
        sums = None
    for i, b in enumerate(bufs):
        if left <= 0:
            break
        dlen = len(b) if len(b) <= left else left
        left -= dlen
        payload = b if dlen == len(b) else b[:dlen]
        flags = T.ACK | (T.PSH if left <= 0 else 0)
        dsum = sums[i] if sums is not None and i < len(sums) else None
        frames.append(tcp_fill_headers(c, conn, seq, flags, wnd, b"",
                                       payload, dlen, gso, dsum))
        seqs.append(seq)
        seq = (seq + dlen) & 0xffffffff
    conn.seq_to_tap = seq

    m = tap.tap_send_frames(c, frames)
    stats["frames"] += m
    stats["data_frames"] += m
    stats["bytes"] += n
    if m < len(frames) and tcp_revert_seq(c, conn, seqs[m], now):
        return -1

    if T.SEQ_GT(conn.seq_to_tap, conn.seq_max_to_tap):
        conn.seq_max_to_tap = conn.seq_to_tap
    T.conn_flag(c, conn, T.ACK_FROM_TAP_DUE, now)
    return 0
