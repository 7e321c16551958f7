# SPDX-License-Identifier: GPL-2.0-or-later
"""UDP: datagrams between the guest and sockets, in both directions.

Theory of operation
-------------------

Flows.  UDP has no connections, but most of what runs over it behaves as
if it had: a client sends from a port of its own (often ephemeral) to a
well-known port of a server, and the server answers from that port to
the client's.  Such an exchange is kept as a flow of type ``FLOW_UDP``
(see ``udp_flow.py``): the side that sent the first datagram is the
initiating side, the side it was forwarded to the target side, and
datagrams seen later with the same addresses and ports, in either
direction, belong to the same flow.  A flow expires when nothing has
been seen on it for ``c.udp.timeout`` seconds, or ``c.udp.stream_timeout``
once both sides have sent something and one of them more than once.
The two values are the host's connection tracking timeouts, read at
start-up, as a firewall on the host would use them.

Sockets.  A side of a flow on the host or in the namespace (the
``PIF_HOST`` and ``PIF_SPLICE`` interfaces) has a socket of its own,
bound to our address and port on that side and connected to the peer:
the kernel then delivers only that peer's datagrams to it, so its epoll
reference names the flow side directly and no lookup is needed.  Sockets
of the ``-u``/``-U`` forwarding rules ("listening" sockets, opened by
``fwd.py``) are not connected; each datagram arriving there is matched
to a flow by its source address and the local address it was sent to
(``IP_PKTINFO``), and a new flow is created when none matches.  The
flow's own socket for that side is bound to the same address and port as
the listening socket, so replies leave from the address the peer sent to.

The tap side.  The guest's datagrams reach ``udp_tap_handler()`` already
grouped by addresses and ports; after a look-up (or the creation of a
flow, see ``udp_flow_from_tap()``) each one is written to the target
side's socket.  Datagrams for the guest are read from a flow socket into
a fixed set of ``UDP_MAX_FRAMES`` buffers, and each gets Ethernet, IP and
UDP headers built in a small buffer of its own; the batch is then handed
to ``tap.tap_send_frames()`` as lists of buffers, so payloads are never
copied.  IPv4 datagrams carry no UDP checksum (it is optional there,
and upstream leaves it out too, see ``checksum.UDP4_REAL_CHECKSUMS``);
over IPv6, where it is mandatory, the checksum is left to the kernel
through the virtio-net header when the tap device has one, and computed
here otherwise.

Spliced flows.  A datagram sent to a loopback address in the namespace
and caught by a ``-U`` listening socket there goes to the host's
loopback through a pair of sockets, one in each namespace, without ever
becoming a frame; host loopback traffic caught by ``-u`` may go the
other way.  Datagrams are simply received from one socket and sent on
the other.

Errors.  Flow sockets on the host have ``IP_RECVERR`` (``IPV6_RECVERR``)
set: when the peer answers with an ICMP error (port unreachable,
fragmentation needed, ...), the kernel queues it on the socket, the loop
sees ``EPOLLERR``, and ``udp_sock_recverr()`` rebuilds the ICMP or ICMPv6
message the guest would have received for the datagram it sent, so that
a program in the namespace sees, for instance, ``ECONNREFUSED``.

Input from the guest is untrusted: every datagram's UDP length is
checked against what was received, and anything inconsistent is dropped
and counted in ``udp_dropped``.  Nothing a peer sends can make a handler
raise.
"""

import errno
import os
import socket
import struct

from pasta import checksum, fwd, log, tap, udp_flow
from pasta.checksum import (csum_fold, csum_ip4_header, csum_udp4,
                            csum_udp6, csum_unfolded)
from pasta.epoll_ctl import EPOLLERR, EPOLLIN
from pasta.flow import (MAC_UNDEF, flow_at_sidx, flow_dbg,
                        flow_dbg_perror_ratelimit, flow_err_ratelimit,
                        flow_idx, flow_lookup_sa, flow_perror,
                        flow_sidx_valid, flow_trace, flow_warn_ratelimit,
                        flowside_at_sidx, pif_at_sidx)
from pasta.inany import inany_from_v4, inany_ntop, inany_v4
from pasta.ip import (ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IP_DF, IPPROTO_UDP,
                      UDP_HDR)
from pasta.pif import PIF_HOST, PIF_NONE, PIF_TAP, pif_is_socket, pif_name

UDP_MAX_FRAMES = 32          # datagrams handled per event and socket
UDP_LISTEN_BUDGET = 4096     # most datagrams read from a listening socket

UDP_TIMEOUT = "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"
UDP_TIMEOUT_STREAM = \
    "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream"
UDP_TIMEOUT_DEFAULT = 30             # s
UDP_TIMEOUT_STREAM_DEFAULT = 120     # s

IPV6_MIN_MTU = 1280
ICMP4_MAX_DLEN = 8           # UDP data quoted in ICMP errors we build
ICMP6_MAX_DLEN = IPV6_MIN_MTU - 8 - 40

USHRT_MAX = 0xffff
UDP_PAYLOAD_MAX = USHRT_MAX - 8

# Socket options and messages the socket module of Python 3.11 lacks
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
IPV6_RECVPKTINFO = socket.IPV6_RECVPKTINFO
IPV6_PKTINFO = socket.IPV6_PKTINFO
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)

SO_EE_ORIGIN_NONE = 0
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP6_PACKET_TOO_BIG = 2

ETH_ZLEN = 60

# struct sock_extended_err, followed by the offender's sockaddr
_EE = struct.Struct("=IBBBBII")
_UDPH = UDP_HDR
_IN_PKTINFO = struct.Struct("=i4s4s")
_IN6_PKTINFO = struct.Struct("=16si")
_SA_FAMILY = struct.Struct("=H")
_SIN = struct.Struct("!H4s")                  # after the family
_SIN6 = struct.Struct("!HI16s")               # port, flowinfo, address

# Ethernet + IP + UDP headers of frames towards the guest
_HDR4 = struct.Struct("!6s6sHBBHHHBBH4s4sHHHH")
_HDR6 = struct.Struct("!6s6sHIHBB16s16sHHHH")
_HDR4_LEN = _HDR4.size                        # 42
_U16 = struct.Struct("!H")
_HDR6_LEN = _HDR6.size                        # 62
_ICMP_HDR = struct.Struct("!BBHI")
_IP4H = struct.Struct("!BBHHHBBH4s4s")
_IP6H = struct.Struct("!IHBB16s16s")

_CMSG_SPACE_PKTINFO = max(socket.CMSG_SPACE(_IN_PKTINFO.size),
                          socket.CMSG_SPACE(_IN6_PKTINFO.size))
_CMSG_SPACE_RECVERR = max(socket.CMSG_SPACE(_EE.size + 16),
                          socket.CMSG_SPACE(_EE.size + 28))


class UdpCtx:
    """Execution context for UDP (``struct udp_ctx``).

    ``scan_in``/``scan_out``: port scanning state for automatic
    forwarding, owned by ``fwd.py``; ``timeout``: seconds of silence after
    which a flow expires; ``stream_timeout``: the same for flows with
    traffic both ways.
    """

    def __init__(self):
        self.scan_in = None
        self.scan_out = None
        self.timeout = UDP_TIMEOUT_DEFAULT
        self.stream_timeout = UDP_TIMEOUT_STREAM_DEFAULT


# Preallocated buffers: payloads received from sockets, and the headers
# of the frames built around them.
udp_payload = [bytearray(USHRT_MAX) for _ in range(UDP_MAX_FRAMES)]
_payload_view = [memoryview(b) for b in udp_payload]
udp_l2_hdr = [bytearray(_HDR6_LEN) for _ in range(UDP_MAX_FRAMES)]
_l2_hdr_view = [memoryview(b) for b in udp_l2_hdr]
_eth_pad = bytes(ETH_ZLEN)
_err_buf = bytearray(ICMP6_MAX_DLEN)

# Counters of datagrams dropped, by reason, for debugging and tests.
udp_dropped = {}

# Use the virtio-net header to leave IPv6 UDP checksums to the kernel.
UDP_VNET_CSUM6 = True


def _drop(reason, n=1):
    udp_dropped[reason] = udp_dropped.get(reason, 0) + n
    if log.log_trace:
        log.trace("udp: dropped %d datagram(s): %s", n, reason)


def udp_update_l2_buf(eth_d):
    """The guest's MAC address changed: nothing is prebuilt with it here,
    every frame takes ``c.guest_mac`` when it is built."""


def udp_at_sidx(sidx):
    """The UDP flow of side index ``sidx``, or None (see udp_flow.py)."""
    return udp_flow.udp_at_sidx(sidx)


def _neigh_mac(c, addr):
    """MAC address the guest should see as source for ``addr`` (inany):
    from the forwarding helper's neighbour table when it has one, our own
    otherwise."""
    get = getattr(fwd, "fwd_neigh_mac_get", None)
    if get is not None:
        try:
            mac = get(c, addr)
            if mac:
                return bytes(mac)
        except Exception:           # not ours to fail on
            pass
    return c.our_tap_mac


def _flow_omac(c, uflow, addr):
    """Source MAC of frames of ``uflow`` towards the guest, looked up once
    per flow."""
    if uflow.tap_omac == MAC_UNDEF:
        uflow.tap_omac = _neigh_mac(c, addr)
    return uflow.tap_omac


# Socket options of UDP sockets

def udp_sock_opts(s, family):
    """Ask for errors in the error queue and for the local address of
    every datagram (``IP_RECVERR``, ``IP_PKTINFO`` or their IPv6
    counterparts) on UDP socket ``s``.  Raises ``OSError``."""
    if family == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)


# Frames towards the guest

def udp_tap_template(c, omac, toside):
    """Headers shared by every datagram towards guest side ``toside``:
    ``(v4, template, base, vnet, partial)`` where ``template`` holds the
    Ethernet, IP and UDP headers with lengths and checksums at zero,
    ``base`` the part of the IPv4 header checksum (or of the IPv6
    pseudo-header sum) that does not depend on the length, ``vnet`` the
    virtio-net header to put first (None without one) and ``partial``
    whether that header leaves the UDP checksum to the kernel."""
    src4 = inany_v4(toside.oaddr)
    dst4 = inany_v4(toside.eaddr)
    vlen = c.tap_vnet_len

    if src4 is not None and dst4 is not None:
        tmpl = _HDR4.pack(c.guest_mac, omac, ETH_P_IP, 0x45, 0, 0, 0, IP_DF,
                          255, IPPROTO_UDP, 0, src4, dst4, toside.oport,
                          toside.eport, 0, 0)
        base = 0x4500 + IP_DF + (0xff00 | IPPROTO_UDP) + \
            csum_unfolded(src4 + dst4)
        return True, tmpl, base, (tap.VNET_HDR_ZERO if vlen else None), \
            False

    src, dst = toside.oaddr, toside.eaddr
    tmpl = _HDR6.pack(c.guest_mac, omac, ETH_P_IPV6, 0x60000000, 0,
                      IPPROTO_UDP, 255, src, dst, toside.oport, toside.eport,
                      0, 0)
    base = csum_unfolded(src + dst) + IPPROTO_UDP
    if vlen and UDP_VNET_CSUM6:
        return False, tmpl, base, _VNET_CSUM6, True
    return False, tmpl, base, (tap.VNET_HDR_ZERO if vlen else None), False


def udp_tap_prepare(i, dlen, tmpl, frames):
    """Build the headers of slot ``i`` around the ``dlen`` bytes of
    payload in ``udp_payload[i]``, from ``tmpl`` (``udp_tap_template()``),
    and append the frame (a list of buffers) to ``frames``."""
    v4, template, base, vnet, partial = tmpl
    hdr = udp_l2_hdr[i]
    hview = _l2_hdr_view[i]
    payload = _payload_view[i][:dlen]
    l4len = dlen + 8

    if v4:
        hdr[:_HDR4_LEN] = template
        l3len = l4len + 20
        _U16.pack_into(hdr, 16, l3len)
        _U16.pack_into(hdr, 24, ~csum_fold(base + l3len) & 0xffff)
        _U16.pack_into(hdr, 38, l4len)
        if checksum.UDP4_REAL_CHECKSUMS:
            _U16.pack_into(hdr, 40, csum_udp4(hview[34:42], template[26:30],
                                              template[30:34], payload,
                                              True))
        hlen = _HDR4_LEN
    else:
        hdr[:_HDR6_LEN] = template
        _U16.pack_into(hdr, 18, l4len)
        _U16.pack_into(hdr, 58, l4len)
        if partial:
            _U16.pack_into(hdr, 60, csum_fold(base + l4len))
        else:
            _U16.pack_into(hdr, 60, csum_udp6(hview[54:62], template[22:38],
                                              template[38:54], payload))
        hlen = _HDR6_LEN

    if vnet is None:
        frame = [hview[:hlen], payload]
    else:
        frame = [vnet, hview[:hlen], payload]
    if hlen + dlen < ETH_ZLEN:
        frame.append(_eth_pad[:ETH_ZLEN - hlen - dlen])
    frames.append(frame)


_VNET_CSUM6 = tap.tap_vnet_hdr(flags=tap.VIRTIO_NET_HDR_F_NEEDS_CSUM,
                               csum_start=ETH_HLEN + 40, csum_offset=6)


def _tap_send(c, frames):
    if frames:
        sent = tap.tap_send_frames(c, frames)
        if sent < len(frames):
            _drop("tap busy", len(frames) - sent)


# Reading from sockets

def udp_sock_recv(c, s, n):
    """Receive up to ``n`` datagrams from connected socket ``s`` into the
    payload buffers; returns their lengths.  Errors stop the batch and are
    left for the ``EPOLLERR`` path."""
    lens = []
    views = _payload_view
    for i in range(n):
        try:
            lens.append(s.recv_into(views[i], USHRT_MAX))
        except (BlockingIOError, InterruptedError):
            break
        except OSError as e:
            if log.log_trace:
                log.trace("udp: error receiving datagrams: %s", e)
            break
    return lens


def udp_sock_to_sock(c, from_s, n, tosidx):
    """Forward up to ``n`` datagrams from ``from_s`` to the socket of
    flow side ``tosidx``."""
    uflow = udp_at_sidx(tosidx)
    to_s = uflow.s[tosidx & 1]
    lens = udp_sock_recv(c, from_s, n)
    for i, dlen in enumerate(lens):
        _sock_send(uflow, to_s, _payload_view[i][:dlen])


def _sock_send(uflow, s, data):
    """Send one datagram on a flow's (connected) socket; failures drop
    it."""
    if s is None:
        _drop("no socket")
        return
    try:
        s.send(data, socket.MSG_NOSIGNAL)
    except (BlockingIOError, InterruptedError):
        _drop("socket busy")
    except OSError as e:
        _drop("send error")
        flow_dbg_perror_ratelimit(uflow, 0, e, "failed to send datagram")


def udp_buf_sock_to_tap(c, s, n, tosidx):
    """Forward up to ``n`` datagrams from ``s`` to the guest, as the tap
    side ``tosidx`` of their flow."""
    toside = flowside_at_sidx(tosidx)
    uflow = udp_at_sidx(tosidx)
    lens = udp_sock_recv(c, s, n)
    if not lens:
        return
    tmpl = udp_tap_template(c, _flow_omac(c, uflow, toside.oaddr), toside)
    frames = []
    for i, dlen in enumerate(lens):
        udp_tap_prepare(i, dlen, tmpl, frames)
    _tap_send(c, frames)


def udp_pktinfo(anc):
    """Local address (inany) a datagram was sent to, from its ancillary
    data, or None when it is missing."""
    for level, kind, data in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and \
           len(data) >= _IN_PKTINFO.size:
            _ifi, _spec, addr = _IN_PKTINFO.unpack_from(data)
            return inany_from_v4(addr)
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and \
           len(data) >= _IN6_PKTINFO.size:
            return bytes(data[:16])
    return None


def udp_sock_fwd(c, s, rule_hint, frompif, port, now,
                 budget=UDP_LISTEN_BUDGET):
    """Forward datagrams waiting on a socket that may carry several flows
    (a listening socket, or a new flow socket that may have caught
    datagrams before it was connected), finding or creating the flow of
    each from its source and local addresses.

    The socket is emptied (up to ``budget`` datagrams, more than a
    default receive buffer holds): a new flow's own socket is flushed
    right after this, and datagrams left here would then arrive after
    later ones."""

    frames = []
    slot = 0
    tmpl_sidx = None
    tmpl = None
    for _ in range(budget):
        view = _payload_view[slot]
        try:
            dlen, anc, _flags, src = s.recvmsg_into(
                [view], _CMSG_SPACE_PKTINFO, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as e:
            if log.log_trace:
                log.trace("udp: error receiving on socket: %s", e)
            if udp_sock_errs(c, s, None, frompif, port, now) < 0:
                if log.ratelimit("udp listen unrecoverable"):
                    log.err("UDP: unrecoverable error on listening socket "
                            "(%s port %d)", pif_name(frompif), port)
                break
            continue

        dst = udp_pktinfo(anc)
        if dst is None and log.ratelimit("udp missing pktinfo"):
            log.debug("Missing PKTINFO cmsg on datagram")

        try:
            tosidx = udp_flow.udp_flow_from_sock(c, frompif, dst, port,
                                                 s.family, src, rule_hint,
                                                 now)
        except Exception as e:      # a peer's datagram must not stop us
            _bug("flow from socket", e)
            continue
        topif = pif_at_sidx(tosidx)

        if pif_is_socket(topif):
            uflow = udp_at_sidx(tosidx)
            _sock_send(uflow, uflow.s[tosidx & 1], view[:dlen])
        elif topif == PIF_TAP:
            if tosidx != tmpl_sidx:
                uflow = udp_at_sidx(tosidx)
                toside = flowside_at_sidx(tosidx)
                tmpl = udp_tap_template(c, _flow_omac(c, uflow,
                                                      toside.oaddr), toside)
                tmpl_sidx = tosidx
            udp_tap_prepare(slot, dlen, tmpl, frames)
            slot += 1
            if slot == UDP_MAX_FRAMES:
                _tap_send(c, frames)
                frames = []
                slot = 0
        elif flow_sidx_valid(tosidx):
            flow_err_ratelimit(udp_at_sidx(tosidx), now,
                               "No support for forwarding UDP from %s to %s",
                               pif_name(frompif), pif_name(topif))
            _drop("unsupported path")
        else:
            if log.ratelimit("udp no flow"):
                log.warn("Discarding datagram without flow")
            _drop("no flow")

    _tap_send(c, frames)


def _bug(what, e):
    _drop("handler error")
    if log.ratelimit("udp bug " + what):
        log.err("udp: %s: %s: %s", what, type(e).__name__, e)


# Errors

def str_ee_origin(origin):
    """Name of the origin of an extended socket error."""
    return {SO_EE_ORIGIN_NONE: "<no origin>", SO_EE_ORIGIN_LOCAL: "Local",
            SO_EE_ORIGIN_ICMP: "ICMP", SO_EE_ORIGIN_ICMP6: "ICMPv6"}.get(
                origin, "<invalid>")


def _sockaddr_parse(raw):
    """``(inany, port)`` from a raw ``struct sockaddr``, or None if it is
    neither IPv4 nor IPv6 (errors of local origin have no offender)."""
    if len(raw) < 2:
        return None
    family = _SA_FAMILY.unpack_from(raw)[0]
    if family == socket.AF_INET and len(raw) >= 2 + _SIN.size:
        port, a4 = _SIN.unpack_from(raw, 2)
        return inany_from_v4(a4), port
    if family == socket.AF_INET6 and len(raw) >= 2 + _SIN6.size:
        port, _fl, a6 = _SIN6.unpack_from(raw, 2)
        return bytes(a6), port
    return None


def udp_send_tap_icmp4(c, ee_type, ee_code, ee_info, toside, saddr, data):
    """Send the guest the ICMP error ``ee_type``/``ee_code`` (and MTU in
    ``ee_info`` when fragmentation is needed) about the datagram it sent
    on flow side ``toside``, from ``saddr`` (packed), quoting the first
    bytes ``data`` of its payload."""

    oaddr = inany_v4(toside.oaddr)
    eaddr = inany_v4(toside.eaddr)
    dlen = len(data)
    l4len = dlen + 8
    rest = 0
    if ee_type == ICMP_DEST_UNREACH and ee_code == ICMP_FRAG_NEEDED:
        rest = ee_info & 0xffff
    msg = bytearray(_ICMP_HDR.pack(ee_type, ee_code, 0, rest))
    msg += _IP4H.pack(0x45, 0, l4len + 20, 0, IP_DF, 255, IPPROTO_UDP,
                      csum_ip4_header(l4len + 20, IPPROTO_UDP, eaddr,
                                      oaddr), eaddr, oaddr)
    msg += _UDPH.pack(toside.eport, toside.oport, l4len, 0)
    msg += data
    tap.tap_icmp4_send(c, saddr, eaddr, msg,
                       _neigh_mac(c, inany_from_v4(saddr)))


def udp_send_tap_icmp6(c, ee_type, ee_code, ee_info, toside, saddr, data,
                       flow):
    """As ``udp_send_tap_icmp4()``, for ICMPv6; ``saddr`` is 16 bytes,
    ``flow`` the flow label of the quoted header."""

    oaddr = toside.oaddr
    eaddr = toside.eaddr
    dlen = len(data)
    l4len = dlen + 8
    rest = ee_info & 0xffffffff if ee_type == ICMP6_PACKET_TOO_BIG else 0
    uh = _UDPH.pack(toside.eport, toside.oport, l4len, 0)
    check = csum_udp6(uh, eaddr, oaddr, data)
    msg = bytearray(_ICMP_HDR.pack(ee_type, ee_code, 0, rest))
    msg += _IP6H.pack(0x60000000 | (flow & 0xfffff), l4len, IPPROTO_UDP,
                      255, eaddr, oaddr)
    msg += _UDPH.pack(toside.eport, toside.oport, l4len, check)
    msg += data
    tap.tap_icmp6_send(c, saddr, eaddr, msg, _neigh_mac(c, saddr))


def _nat_inbound(c, addr):
    """Address ``addr`` (inany, host side) as the guest should see it, or
    None (see ``fwd.nat_inbound``)."""
    fn = getattr(fwd, "nat_inbound", None)
    if fn is None:
        return None
    try:
        return fn(c, addr)
    except Exception as e:
        _bug("nat_inbound", e)
        return None


def udp_sock_recverr(c, s, sidx, pif, port, now):
    """Take one error from the error queue of socket ``s`` (flow side
    ``sidx``, or None if ``s`` is not a flow socket, then ``pif`` and
    local ``port`` identify it) and relay it to the guest where that
    makes sense.

    Returns 1 if an error was handled, 0 if the queue was empty, -1 if
    the queue could not be read.
    """

    try:
        dlen, anc, flags, src = s.recvmsg_into(
            [memoryview(_err_buf)],
            _CMSG_SPACE_PKTINFO + _CMSG_SPACE_RECVERR,
            MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return 0
    except OSError as e:
        if log.ratelimit("udp errqueue"):
            log.err_perror(e, "UDP: Failed to read error queue")
        return -1

    if not flags & MSG_ERRQUEUE:
        if log.ratelimit("udp errqueue flag"):
            log.err("Missing MSG_ERRQUEUE flag reading error queue")
        return -1

    ee = None
    level = None
    for lvl, kind, data in anc:
        if (lvl == socket.IPPROTO_IP and kind == IP_RECVERR) or \
           (lvl == socket.IPPROTO_IPV6 and kind == IPV6_RECVERR):
            if len(data) >= _EE.size:
                ee = data
                level = lvl
            break
    if ee is None:
        if log.ratelimit("udp recverr cmsg"):
            log.err("Missing RECVERR cmsg in error queue")
        return -1

    (ee_errno, ee_origin, ee_type, ee_code, _pad, ee_info,
     _ee_data) = _EE.unpack_from(ee)
    if log.ratelimit("udp socket error"):
        log.debug("%s error on UDP socket %d: %s", str_ee_origin(ee_origin),
                  s.fileno(), errno.errorcode.get(ee_errno, str(ee_errno)))

    if not flow_sidx_valid(sidx):
        dst = udp_pktinfo(anc)
        if dst is None:
            log.debug("Missing PKTINFO on UDP error")
            return 1
        if src is None:
            return 1
        sidx = flow_lookup_sa(c, IPPROTO_UDP, pif, s.family, src, dst, port)
        if not flow_sidx_valid(sidx):
            log.debug("Ignoring UDP error without flow")
            return 1
    else:
        pif = pif_at_sidx(sidx)

    uflow = udp_at_sidx(sidx)
    if uflow is None:
        return 1
    sidei = sidx & 1
    fromside = uflow.side[sidei]
    toside = uflow.side[sidei ^ 1]
    topif = uflow.pif[sidei ^ 1]
    data = bytes(_err_buf[:dlen])

    offender = _sockaddr_parse(bytes(ee[_EE.size:]))
    otap = None
    if offender is not None and pif == PIF_HOST and topif == PIF_TAP:
        if offender[0] == fromside.eaddr:
            # Keep the flow's own translation (--dns-forward, say)
            otap = toside.oaddr
        else:
            otap = _nat_inbound(c, offender[0])

    if otap is not None:
        o4 = inany_v4(otap)
        if level == socket.IPPROTO_IP and o4 is not None and \
           inany_v4(toside.eaddr) is not None:
            udp_send_tap_icmp4(c, ee_type, ee_code, ee_info, toside, o4,
                               data[:ICMP4_MAX_DLEN])
            return 1
        if level == socket.IPPROTO_IPV6 and \
           inany_v4(toside.eaddr) is None:
            udp_send_tap_icmp6(c, ee_type, ee_code, ee_info, toside, otap,
                               data[:ICMP6_MAX_DLEN], flow_idx(uflow))
            return 1

    flow_warn_ratelimit(uflow, now,
                        "Can't propagate %s error from %s %s to %s %s",
                        str_ee_origin(ee_origin), pif_name(pif),
                        inany_ntop(offender[0]) if offender else "?",
                        pif_name(topif), inany_ntop(toside.eaddr))
    return 1


def udp_sock_errs(c, s, sidx, pif, port, now):
    """Empty the error queue of socket ``s`` and clear its pending error.

    Returns the number of errors handled, or -1 if they could not be
    cleared (the caller gives up on the socket).
    """

    n_err = 0
    while True:
        rc = udp_sock_recverr(c, s, sidx, pif, port, now)
        if rc <= 0:
            break
        n_err += rc
        if n_err > 1024:        # a queue that never empties: give up
            return -1
    if rc < 0:
        return -1

    try:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as e:
        if log.ratelimit("udp SO_ERROR"):
            log.err_perror(e, "Error reading SO_ERROR")
        return -1

    if err:
        f = flow_at_sidx(sidx) if sidx is not None else None
        if f is not None:
            flow_dbg(f, "Unqueued error on UDP socket: %s",
                     errno.errorcode.get(err, str(err)))
        n_err += 1

    if not n_err:
        if log.ratelimit("udp EPOLLERR"):
            log.err("EPOLLERR event without reported errors")
        return -1

    return n_err


# Event handlers

def udp_listen_sock_handler(c, ref, events, now):
    """Datagrams (or errors) on a listening socket of a ``-u``/``-U``
    rule: ``ref.listen`` gives the rule, the pif and our port, and
    ``ref.data`` is the socket (see ``fwd.pif_listen()``)."""
    if c.no_udp or not events & (EPOLLERR | EPOLLIN):
        return
    lst = ref.listen
    rule = getattr(lst, "rule", -1)
    pif = getattr(lst, "pif", PIF_HOST)
    port = getattr(lst, "port", None)

    s = ref.data if isinstance(ref.data, socket.socket) else None
    owned = None
    if s is None or s.fileno() != ref.fd:
        # No socket object with the reference: use a duplicate of the
        # descriptor for this round, so that closing it leaves the
        # listening socket alone.
        try:
            owned = s = socket.socket(fileno=os.dup(ref.fd))
        except OSError as e:
            if log.ratelimit("udp listen dup"):
                log.err_perror(e, "UDP: can't use listening socket %d",
                               ref.fd)
            return
    try:
        if port is None:
            port = s.getsockname()[1]
        udp_sock_fwd(c, s, rule, pif, port, now)
    except Exception as e:
        _bug("listening socket", e)
    finally:
        if owned is not None:
            owned.close()


def udp_sock_handler(c, ref, events, now):
    """Datagrams or errors on the socket of one side of a flow."""

    uflow = udp_at_sidx(ref.sidx)
    if c.no_udp or uflow is None or uflow.closed:
        return
    sidei = ref.sidx & 1
    s = uflow.s[sidei]
    if s is None:
        return

    try:
        if events & EPOLLERR:
            if udp_sock_errs(c, s, ref.sidx, PIF_NONE, 0, now) < 0:
                flow_err_ratelimit(uflow, now,
                                   "Unrecoverable error on flow socket")
                udp_flow.udp_flow_close(c, uflow)
                return

        if events & EPOLLIN:
            tosidx = ref.sidx ^ 1
            topif = pif_at_sidx(tosidx)
            if log.log_trace:
                flow_trace(uflow, "Received data on reply socket")
            udp_flow.udp_flow_activity(uflow, sidei, now)

            if pif_is_socket(topif):
                udp_sock_to_sock(c, s, UDP_MAX_FRAMES, tosidx)
            elif topif == PIF_TAP:
                udp_buf_sock_to_tap(c, s, UDP_MAX_FRAMES, tosidx)
            else:
                flow_err_ratelimit(uflow, now,
                                   "No support for forwarding UDP from "
                                   "%s to %s",
                                   pif_name(pif_at_sidx(ref.sidx)),
                                   pif_name(topif))
                udp_flow.udp_flow_close(c, uflow)
    except Exception as e:
        _bug("flow socket", e)


def udp_tap_handler(c, pif, af, saddr, daddr, ttl, dgrams, now):
    """Datagrams from the guest, all with the same addresses and ports:
    ``dgrams`` is a list of memoryviews of UDP header and payload.

    Returns the number of datagrams consumed (all of them: the bad ones
    are dropped).
    """

    if c.no_udp or not dgrams:
        return len(dgrams)

    first = dgrams[0]
    if len(first) < 8:
        _drop("short header", len(dgrams))
        return len(dgrams)
    src, dst = struct.unpack_from("!HH", first)

    tosidx = udp_flow.udp_flow_from_tap(c, pif, af, saddr, daddr, src, dst,
                                        now)
    uflow = udp_at_sidx(tosidx)
    if uflow is None:
        if log.ratelimit("udp tap no flow"):
            log.warn("Dropping datagram with no flow %s %s:%d -> %s:%d",
                     pif_name(pif), socket.inet_ntop(af, bytes(saddr)), src,
                     socket.inet_ntop(af, bytes(daddr)), dst)
        _drop("no flow", len(dgrams))
        return len(dgrams)

    topif = pif_at_sidx(tosidx)
    if topif != PIF_HOST:
        flow_err_ratelimit(uflow, now,
                           "No support for forwarding UDP from %s to %s",
                           pif_name(pif_at_sidx(tosidx ^ 1)),
                           pif_name(topif))
        _drop("unsupported path", len(dgrams))
        return len(dgrams)

    sidei = tosidx & 1
    s = uflow.s[sidei]
    if s is None:
        _drop("no socket", len(dgrams))
        return len(dgrams)

    if ttl and ttl != uflow.ttl[sidei]:
        uflow.ttl[sidei] = ttl
        try:
            if af == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS,
                             ttl)
        except OSError as e:
            flow_perror(uflow, e, "setsockopt %s",
                        "IP_TTL" if af == socket.AF_INET
                        else "IPV6_UNICAST_HOPS")

    for d in dgrams:
        dlen = len(d)
        if dlen < 8:
            _drop("short header")
            continue
        ulen = (d[4] << 8) | d[5]
        if ulen < 8 or ulen > dlen:
            _drop("bad UDP length")
            if log.ratelimit("udp bad length"):
                log.debug("udp: bad length %d in datagram of %d bytes from "
                          "guest", ulen, dlen)
            continue
        try:
            s.send(d[8:ulen], socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            _drop("socket busy")
        except OSError as e:
            # A pending error (a port unreachable reported earlier, say):
            # the error queue path already told the guest.
            _drop("send error")
            flow_dbg_perror_ratelimit(uflow, now, e,
                                      "failed to send datagram")

    return len(dgrams)


# Start-up

def _read_file_integer(path, default):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return default


def udp_get_timeout_params(c):
    """Take the flow timeouts from the host's connection tracking
    settings, or the usual defaults when those are not available."""
    c.udp.timeout = _read_file_integer(UDP_TIMEOUT, UDP_TIMEOUT_DEFAULT)
    c.udp.stream_timeout = _read_file_integer(UDP_TIMEOUT_STREAM,
                                              UDP_TIMEOUT_STREAM_DEFAULT)
    log.debug("Using UDP timeout parameters, timeout: %d, "
              "stream_timeout: %d", c.udp.timeout, c.udp.stream_timeout)


def udp_init(c):
    """Set up UDP: the context (``c.udp``, kept if another module made it
    already) and its timeouts.  Returns 0."""
    if getattr(c, "udp", None) is None:
        c.udp = UdpCtx()
    udp_get_timeout_params(c)
    return 0
