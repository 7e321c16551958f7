# SPDX-License-Identifier: GPL-2.0-or-later
"""The guest's side: frames to and from the tap device or the qemu socket.

In pasta mode the guest is a network namespace and frames come and go
through a tap device created inside it (``/dev/net/tun``); in passt mode
the guest is a virtual machine connected to a UNIX domain socket, each
frame preceded by its length as a 32-bit big-endian number.

Input.  When the descriptor is readable, as many frames as fit are read
into one preallocated buffer (``pkt_buf``); each frame is then looked at
only through ``memoryview`` slices of it.  Every length is checked before
it is used: a frame shorter than its headers claim, with a bad header
length, a fragment, or loopback addresses is dropped and counted, never
allowed to raise.  ARP, DHCP, NDP and DHCPv6 are answered on the spot;
TCP and UDP segments are grouped by their addresses and ports, keeping
arrival order, and each group goes to the protocol handler in one call,
so that a connection's segments can be written to its socket together.
The guest's MAC address and the addresses it uses are learnt from what
it sends.

Output.  Protocol handlers hand over complete Ethernet frames, or ask for
UDP and ICMP messages to be wrapped in headers built here (with our MAC
address as source, the guest's as destination, and correct checksums).
Each frame is written with one ``writev()``.

Offloads (a deliberate difference from the C implementation, which
does not use them on the tap device).  Unless ``--no-tap-offload`` is
given, the tap device is opened with a virtio-net header in front of every
frame and with checksum and TCP segmentation offloads enabled.  Towards
the guest, a frame may then leave its TCP checksum for the kernel to
finish, and may be a TCP "super-frame" of up to 64 KiB that the kernel
cuts into segments of the guest's MTU; from the guest, the kernel hands
over TCP segments of up to 64 KiB whatever the MTU is.  The cost of a
frame in Python is what limits throughput, so fewer, larger frames are
what makes the port fast.  Frames sent without offload information carry
an all-zero header, which means "complete frame, nothing to do".
``c.tap_vnet_len`` is the header's length, 0 when it is not used.
"""

import errno
import fcntl
import ipaddress
import os
import socket
import struct

from pasta import log
from pasta.epoll_ctl import (EpollRef, EpollType, epoll_add, EPOLLET,
                             EPOLLIN, EPOLLRDHUP, EPOLLHUP, EPOLLERR)
from pasta.pif import PIF_TAP

from pasta.ip import (ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IP4_HDR,
                      IP6_HDR, IP_DF, IPPROTO_ICMP, IPPROTO_ICMPV6,
                      IPPROTO_TCP, IPPROTO_UDP, eth_hdr, ip4_hdr, ip6_hdr,
                      ipv6_l4hdr, udp_hdr)
from pasta.checksum import csum_icmp4, csum_icmp6, csum_udp4, csum_udp6

ETH_ZLEN = 60
L2_MAX_LEN_PASTA = 0xffff
L2_MAX_LEN_PASST = 0xffff
# With segmentation offload a frame from the kernel carries up to 64 KiB of
# IP packet, plus the Ethernet and virtio-net headers.
TAP_READ_MAX = 65536 + ETH_HLEN + 64

PKT_BUF_BYTES = 8 << 20

# virtio-net header
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VNET_HDR = struct.Struct("<BBHHHHH")       # num_buffers included: 12 bytes
VNET_HDR_ZERO = bytes(VNET_HDR.size)

# /dev/net/tun
TUNSETIFF = 0x400454ca
TUNSETOFFLOAD = 0x400454d0
TUNSETVNETHDRSZ = 0x400454d8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

_PORTS = struct.Struct("!HH")

pkt_buf = bytearray(PKT_BUF_BYTES)
_pkt_view = memoryview(pkt_buf)

# Counters of dropped frames, by reason, for debugging and tests.
tap_dropped = {}


def _drop(reason):
    tap_dropped[reason] = tap_dropped.get(reason, 0) + 1
    if log.log_trace:
        log.trace("tap: dropped frame: %s", reason)


def tap_vnet_hdr(flags=0, gso_type=VIRTIO_NET_HDR_GSO_NONE, hdr_len=0,
                 gso_size=0, csum_start=0, csum_offset=0):
    """A virtio-net header: ``flags`` (``VIRTIO_NET_HDR_F_NEEDS_CSUM``),
    segmentation type and size, length of the headers before the payload,
    and where the checksum to finish starts and is stored."""
    return VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start,
                         csum_offset, 0)


def tap_l2_max_len(c):
    from pasta.passt import MODE_PASST
    return L2_MAX_LEN_PASST if c.mode == MODE_PASST else L2_MAX_LEN_PASTA


# Output

def tap_push_l2h(c, src_mac, proto):
    """Ethernet header towards the guest."""
    return eth_hdr(c.guest_mac, src_mac, proto)


def tap_udp4_send(c, src, sport, dst, dport, payload):
    """Send a UDP datagram over IPv4 to the guest (``src``, ``dst``:
    packed addresses).  As in the C implementation, without checksum
    (see ``checksum.csum_udp4()``)."""
    payload = bytes(payload)
    uh = udp_hdr(sport, dport, len(payload))
    check = csum_udp4(uh, src, dst, payload)
    tap_send_single(c, tap_push_l2h(c, c.our_tap_mac, ETH_P_IP) +
                    ip4_hdr(len(uh) + len(payload), IPPROTO_UDP, src,
                            dst) +
                    udp_hdr(sport, dport, len(payload), check) + payload)


def tap_udp6_send(c, src, sport, dst, dport, flow, payload):
    """Send a UDP datagram over IPv6 to the guest, with flow label
    ``flow``."""
    payload = bytes(payload)
    uh = udp_hdr(sport, dport, len(payload))
    check = csum_udp6(uh, src, dst, payload)
    tap_send_single(c, tap_push_l2h(c, c.our_tap_mac, ETH_P_IPV6) +
                    ip6_hdr(len(uh) + len(payload), IPPROTO_UDP, src, dst,
                            flow) +
                    udp_hdr(sport, dport, len(payload), check) + payload)


def tap_icmp4_send(c, src, dst, msg, src_mac=None):
    """Send an ICMP message (header and data; its checksum is filled in
    here) over IPv4 to the guest."""
    if len(msg) < 4:
        return
    msg = bytearray(msg)
    msg[2:4] = csum_icmp4(msg).to_bytes(2, "big")
    tap_send_single(c, tap_push_l2h(c, src_mac or c.our_tap_mac, ETH_P_IP) +
                    ip4_hdr(len(msg), IPPROTO_ICMP, src, dst) + msg)


def tap_icmp6_send(c, src, dst, msg, src_mac=None):
    """Send an ICMPv6 message (checksum filled in here) to the guest."""
    if len(msg) < 4:
        return
    msg = bytearray(msg)
    msg[2:4] = csum_icmp6(msg, src, dst).to_bytes(2, "big")
    tap_send_single(c, tap_push_l2h(c, src_mac or c.our_tap_mac,
                                    ETH_P_IPV6) +
                    ip6_hdr(len(msg), IPPROTO_ICMPV6, src, dst) + msg)


def tap_send_single(c, frame):
    """Send one complete Ethernet frame, padded to the Ethernet minimum."""
    if len(frame) < ETH_ZLEN:
        frame = bytes(frame) + bytes(ETH_ZLEN - len(frame))
    if c.tap_vnet_len:
        tap_send_frames(c, [[VNET_HDR_ZERO, frame]])
    else:
        tap_send_frames(c, [[frame]])


def _send_frames_pasta(c, frames):
    fd = c.fd_tap
    sent = 0
    for bufs in frames:
        try:
            os.writev(fd, bufs)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR, errno.ENOBUFS,
                           errno.ENOSPC, errno.EIO):
                log.debug_perror(e, "tap write")
                break
            log.die_perror(e, "Write error on tap device, exiting")
        sent += 1
    return sent


def _send_frames_passt(c, frames):
    sock = c.tap_sock
    sent = 0
    for bufs in frames:
        length = sum(len(b) for b in bufs)
        data = [struct.pack("!I", length)] + list(bufs)
        try:
            n = sock.sendmsg(data, [], socket.MSG_NOSIGNAL)
        except BlockingIOError:
            break
        except OSError as e:
            log.debug_perror(e, "tap send")
            break
        if n < length + 4:
            # Never leave half a frame on a stream: finish it, blocking.
            rest = b"".join(bytes(b) for b in data)[n:]
            try:
                sock.setblocking(True)
                sock.sendall(rest)
            except OSError as e:
                log.err_perror(e, "tap: partial frame send")
                return sent
            finally:
                sock.setblocking(False)
        sent += 1
    return sent


def tap_send_frames(c, frames):
    """Write frames to the guest; each frame is a list of buffers making
    up one Ethernet frame.  When ``c.tap_vnet_len`` is non-zero the first
    buffer of each frame must be its virtio-net header.  Returns how many
    frames were sent (all of them, when there is no guest yet)."""
    from pasta import pcap
    from pasta.passt import MODE_PASTA

    if c.fd_tap < 0:
        return len(frames)
    if not frames:
        return 0

    if c.mode == MODE_PASTA:
        m = _send_frames_pasta(c, frames)
    else:
        m = _send_frames_passt(c, frames)

    if m < len(frames):
        log.debug("tap: failed to send %d frames of %d", len(frames) - m,
                  len(frames))

    if pcap.pcap_fd >= 0:
        pcap.pcap_multiple(frames[:m], c.tap_vnet_len)
    return m


# Input

def _learn_mac(c, src):
    if src != c.guest_mac:
        c.guest_mac = bytes(src)
        if log.ratelimit("guest MAC"):
            log.info("New guest MAC address observed: %s",
                     ":".join("%02x" % b for b in c.guest_mac))
        proto_update_l2_buf(c, c.guest_mac)


def proto_update_l2_buf(c, mac):
    """Tell the protocols that keep prebuilt headers the guest's MAC."""
    from pasta import tcp, udp

    tcp.tcp_update_l2_buf(mac)
    udp.udp_update_l2_buf(mac)


def tap4_handler(c, frames, now):
    """Handle the ARP and IPv4 frames of one batch."""
    from pasta import arp, dhcp, icmp

    if not c.ifi4:
        return
    groups = {}

    for frame in frames:
        flen = len(frame)
        proto = (frame[12] << 8) | frame[13]
        if proto == ETH_P_ARP:
            try:
                arp.arp(c, frame)
            except Exception as e:      # a peer's bytes must not stop us
                _handler_bug("arp", e)
            continue

        if flen < ETH_HLEN + 20:
            _drop("short IPv4")
            continue
        (vihl, _tos, tot_len, _id, frag, ttl, l4proto, _check, saddr,
         daddr) = IP4_HDR.unpack_from(frame, ETH_HLEN)
        hlen = (vihl & 0x0f) * 4
        l3len = flen - ETH_HLEN
        if vihl >> 4 != 4 or hlen < 20 or tot_len > l3len or \
           hlen > tot_len:
            _drop("bad IPv4 header")
            continue
        if frag & ~IP_DF & 0xffff:
            _drop("IPv4 fragment")
            if log.ratelimit("ipv4 fragments"):
                log.warn("Can't process IPv4 fragments (%d dropped)",
                         tap_dropped.get("IPv4 fragment", 0))
            continue
        if saddr[0] == 127 or daddr[0] == 127:
            _drop("loopback address")
            if log.ratelimit("tap loopback"):
                log.debug("Loopback address on tap interface: %s -> %s",
                          socket.inet_ntoa(saddr), socket.inet_ntoa(daddr))
            continue

        if not c.ip4.addr_fixed and saddr != b"\0\0\0\0" and \
           c.ip4.addr_seen.packed != saddr:
            c.ip4.addr_seen = ipaddress.IPv4Address(saddr)

        l4 = frame[ETH_HLEN + hlen:ETH_HLEN + tot_len]
        l4len = len(l4)

        if l4proto == IPPROTO_ICMP:
            if c.no_icmp:
                continue
            if l4len < 8:
                _drop("short ICMP")
                continue
            try:
                icmp.icmp_tap_handler(c, PIF_TAP, socket.AF_INET, saddr,
                                      daddr, l4, now)
            except Exception as e:
                _handler_bug("icmp", e)
            continue

        if l4proto == IPPROTO_UDP:
            if l4len < 8:
                _drop("short UDP")
                continue
            if _PORTS.unpack_from(l4, 0)[1] == 67:
                try:
                    if dhcp.dhcp(c, frame[:ETH_HLEN + tot_len]):
                        continue
                except Exception as e:
                    _handler_bug("dhcp", e)
                    continue
        elif l4proto == IPPROTO_TCP:
            if l4len < 20:
                _drop("short TCP")
                continue
        else:
            _drop("unsupported IPv4 protocol")
            continue

        key = (l4proto, saddr, daddr, bytes(l4[0:4]), ttl)
        group = groups.get(key)
        if group is None:
            groups[key] = [l4]
        else:
            group.append(l4)

    _tap_l4_dispatch(c, socket.AF_INET, groups, now)


def tap6_handler(c, frames, now):
    """Handle the IPv6 frames of one batch."""
    from pasta import dhcpv6, icmp, ndp

    if not c.ifi6:
        return
    groups = {}

    for frame in frames:
        flen = len(frame)
        if flen < ETH_HLEN + 40:
            _drop("short IPv6")
            continue
        vtcfl, plen, _nh, hlim, saddr, daddr = IP6_HDR.unpack_from(frame,
                                                                ETH_HLEN)
        end = ETH_HLEN + 40 + plen
        # The payload length must match the frame, unless the frame was
        # padded to the Ethernet minimum
        if vtcfl >> 28 != 6 or end > flen or \
           (end < flen and end >= ETH_ZLEN):
            _drop("bad IPv6 length")
            continue
        found = ipv6_l4hdr(frame[ETH_HLEN:end])
        if found is None:
            _drop("bad IPv6 extension headers")
            continue
        l4proto, l4off = found
        l4off += ETH_HLEN

        if saddr == _IN6_LOOPBACK or daddr == _IN6_LOOPBACK:
            _drop("loopback address")
            continue

        if saddr[0] == 0xfe and (saddr[1] & 0xc0) == 0x80:
            ll = ipaddress.IPv6Address(saddr)
            c.ip6.addr_ll_seen = ll
            if not c.ip6.addr_fixed and c.ip6.addr_seen.packed == _IN6_ANY:
                c.ip6.addr_seen = ll
            if c.ip6.addr.packed == _IN6_ANY:
                c.ip6.addr = ll
        elif not c.ip6.addr_fixed and saddr != _IN6_ANY and \
                c.ip6.addr_seen.packed != saddr:
            c.ip6.addr_seen = ipaddress.IPv6Address(saddr)

        l4 = frame[l4off:end]
        l4len = len(l4)

        if l4proto == IPPROTO_ICMPV6:
            if c.no_icmp or l4len < 4:
                if l4len < 4:
                    _drop("short ICMPv6")
                continue
            try:
                if ndp.ndp(c, saddr, l4):
                    continue
                if l4len >= 8:
                    icmp.icmp_tap_handler(c, PIF_TAP, socket.AF_INET6,
                                          saddr, daddr, l4, now)
            except Exception as e:
                _handler_bug("icmpv6", e)
            continue

        if l4proto == IPPROTO_UDP:
            if l4len < 8:
                _drop("short UDP")
                continue
            if _PORTS.unpack_from(l4, 0)[1] == 547:
                try:
                    if dhcpv6.dhcpv6(c, saddr, daddr, l4):
                        continue
                except Exception as e:
                    _handler_bug("dhcpv6", e)
                    continue
        elif l4proto == IPPROTO_TCP:
            if l4len < 20:
                _drop("short TCP")
                continue
        else:
            _drop("unsupported IPv6 protocol")
            continue

        key = (l4proto, saddr, daddr, bytes(l4[0:4]), hlim,
               vtcfl & 0xfffff)
        group = groups.get(key)
        if group is None:
            groups[key] = [l4]
        else:
            group.append(l4)

    _tap_l4_dispatch(c, socket.AF_INET6, groups, now)


_IN6_ANY = bytes(16)
_IN6_LOOPBACK = bytes(15) + b"\x01"


def _tap_l4_dispatch(c, af, groups, now):
    """Hand each group of TCP segments or UDP datagrams (same protocol,
    addresses, ports, TTL or hop limit and, for IPv6, flow label) to its
    protocol handler, in one call per group."""
    from pasta import tcp, udp

    for key, segs in groups.items():
        l4proto, saddr, daddr, _ports, ttl = key[:5]
        try:
            if l4proto == IPPROTO_TCP:
                if not c.no_tcp:
                    tcp.tcp_tap_handler(c, PIF_TAP, af, saddr, daddr, segs,
                                        now)
            elif not c.no_udp:
                udp.udp_tap_handler(c, PIF_TAP, af, saddr, daddr, ttl,
                                    segs, now)
        except Exception as e:
            _handler_bug("tcp" if l4proto == IPPROTO_TCP else "udp", e)


def _handler_bug(what, e):
    """A protocol handler raised on guest input: that is our bug, not the
    guest's, but it must not take the other connections down with it."""
    _drop("%s handler error" % what)
    if log.ratelimit("handler error " + what):
        log.err("%s: error handling frame from guest: %s: %s", what,
                type(e).__name__, e)


def tap_handler(c, frames, now):
    """Sort one batch of frames by family, learn the guest's MAC, record
    them, and hand them to ``tap4_handler()`` and ``tap6_handler()``."""
    from pasta import pcap

    v4 = []
    v6 = []
    for frame in frames:
        if pcap.pcap_fd >= 0:
            pcap.pcap(frame)
        if len(frame) < ETH_HLEN:
            _drop("short Ethernet")
            continue
        src = frame[6:12]
        if src != c.guest_mac:
            _learn_mac(c, src)
        proto = (frame[12] << 8) | frame[13]
        if proto == ETH_P_IP or proto == ETH_P_ARP:
            v4.append(frame)
        elif proto == ETH_P_IPV6:
            v6.append(frame)
        else:
            _drop("unknown EtherType")

    if v4:
        tap4_handler(c, v4, now)
    if v6:
        tap6_handler(c, v6, now)


def tap_pasta_input(c, now):
    """Read all frames waiting on the tap device, then handle them."""
    fd = c.fd_tap
    vlen = c.tap_vnet_len
    view = _pkt_view
    frames = []
    n = 0
    limit = PKT_BUF_BYTES - TAP_READ_MAX

    while n <= limit:
        try:
            length = os.readv(fd, [view[n:n + TAP_READ_MAX]])
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        except OSError as e:
            log.die_perror(e, "Error on tap device, exiting")
        if length == 0:
            log.die("EOF on tap device, exiting")
        if length < vlen + ETH_HLEN or length - vlen > TAP_READ_MAX:
            _drop("bad frame length")
            continue
        frames.append(view[n + vlen:n + length])
        n += length

    if frames:
        tap_handler(c, frames, now)


def tap_handler_pasta(c, events, now):
    """Events on the tap device."""
    if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        log.die("Disconnect event on /dev/net/tun device, exiting")
    if events & EPOLLIN:
        tap_pasta_input(c, now)


_partial = b""


def tap_passt_input(c, now):
    """Read frames from the qemu socket (length-prefixed), keeping an
    incomplete last frame for the next round."""
    global _partial
    view = _pkt_view
    plen = len(_partial)
    view[:plen] = _partial
    try:
        n = c.tap_sock.recv_into(view[plen:], PKT_BUF_BYTES - plen,
                                 socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return
    except OSError as e:
        log.err_perror(e, "Receive error on guest connection, reset")
        tap_sock_reset(c)
        return
    if n == 0:
        tap_sock_reset(c)
        return

    n += plen
    off = 0
    frames = []
    while n - off >= 4:
        l2len = int.from_bytes(view[off:off + 4], "big")
        if l2len < ETH_HLEN or l2len > L2_MAX_LEN_PASST:
            log.err("Bad frame size from guest, resetting connection")
            tap_sock_reset(c)
            return
        if off + 4 + l2len > n:
            break
        frames.append(view[off + 4:off + 4 + l2len])
        off += 4 + l2len

    if frames:
        tap_handler(c, frames, now)
    _partial = bytes(view[off:n])


def tap_handler_passt(c, events, now):
    """Events on the connected qemu socket."""
    if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
        tap_sock_reset(c)
        return
    if events & EPOLLIN:
        tap_passt_input(c, now)


def tap_sock_reset(c):
    """The guest closed its socket (or it failed): forget it, and exit in
    one-off mode."""
    from pasta.epoll_ctl import epoll_del
    global _partial

    log.info("Client connection closed%s", ", exiting" if c.one_off else "")
    if c.one_off:
        log.passt_exit(0)

    epoll_del(c, c.fd_tap)
    if c.tap_sock is not None:
        c.tap_sock.close()
        c.tap_sock = None
    c.fd_tap = -1
    _partial = b""


def tap_sock_unix_open(sock_path):
    """Bind the UNIX domain socket the guest connects to.  With no path,
    the first free one of /tmp/passt_1.socket ... passt_100.socket is
    taken; returns ``(socket, path)``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    if sock_path:
        candidates = [sock_path]
    else:
        candidates = ["/tmp/passt_%d.socket" % i for i in range(1, 101)]
    for path in candidates:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            probe.close()
            if sock_path:
                log.die("Socket path %s already in use", path)
            continue
        except (FileNotFoundError, ConnectionRefusedError):
            probe.close()
        except OSError:
            probe.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if sock_path:
                log.die_perror(e, "Couldn't remove %s", path)
            continue
        try:
            s.bind(path)
            return s, path
        except OSError as e:
            if sock_path:
                log.die_perror(e, "Couldn't bind to %s", path)
    log.die("UNIX socket path not available")


def tap_sock_unix_init(c):
    """Start listening on the qemu socket."""
    c.tap_listen_sock.listen(0)
    c.fd_tap_listen = c.tap_listen_sock.fileno()
    epoll_add(c, EPOLLIN | EPOLLET,
              EpollRef(EpollType.TAP_LISTEN, c.fd_tap_listen))


def tap_is_ready(c):
    """Can frames be sent to the guest now?"""
    from pasta.passt import MODE_PASTA
    if c.fd_tap < 0:
        return False
    if c.mode == MODE_PASTA:
        return c.pasta_conf_ns
    return True


def tap_start_connection(c):
    """Watch the guest's descriptor, and greet the guest with ARP and
    neighbour solicitations so it learns our MAC address."""
    from pasta import arp, ndp
    from pasta.passt import MODE_PASTA

    kind = EpollType.TAP_PASTA if c.mode == MODE_PASTA else \
        EpollType.TAP_PASST
    epoll_add(c, EPOLLIN | EPOLLRDHUP, EpollRef(kind, c.fd_tap))

    if not tap_is_ready(c):
        return
    if c.ifi4:
        arp.arp_send_init_req(c)
    if c.ifi6 and not c.no_ndp:
        ndp.ndp_send_init_req(c)


def tap_listen_handler(c, events):
    """A guest connects to the qemu socket.  Only one guest at a time:
    further connections are accepted and closed at once.  The listening
    socket is edge-triggered, so everything pending is accepted here."""
    if events != EPOLLIN:
        log.die("Error on listening Unix socket, exiting")

    cred = struct.Struct("iII")
    while True:
        try:
            conn, _ = c.tap_listen_sock.accept()
        except BlockingIOError:
            return
        except OSError as e:
            log.warn_perror(e, "Error accepting tap client")
            return

        try:
            pid = cred.unpack(conn.getsockopt(socket.SOL_SOCKET,
                                              socket.SO_PEERCRED,
                                              cred.size))[0]
        except OSError:
            pid = 0

        if c.fd_tap >= 0:
            log.info("discarding connection from PID %d", pid)
            conn.close()
            continue

        log.info("accepted connection from PID %d", pid)
        conn.setblocking(False)
        for opt, low in ((socket.SO_RCVBUF, c.low_rmem),
                         (socket.SO_SNDBUF, c.low_wmem)):
            if not low:
                try:
                    conn.setsockopt(socket.SOL_SOCKET, opt, 1 << 30)
                except OSError:
                    pass
        c.tap_sock = conn
        c.fd_tap = conn.fileno()
        tap_start_connection(c)


def tap_ns_tun(ifname, vnet_hdr):
    """In the namespace (an ``ns_call()`` child): create the tap device
    ``ifname``, with a virtio-net header and offloads if ``vnet_hdr``, and
    hand back its descriptor and interface index."""
    from pasta import util

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        ifr = struct.pack("16sH22x", os.fsencode(ifname)[:15], flags)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR.size))
            fcntl.ioctl(fd, TUNSETOFFLOAD,
                        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        ifi = socket.if_nametoindex(ifname)
    except BaseException:
        os.close(fd)
        raise
    return util.NsFds(ifi, [fd])


def tap_ns_tun_open(c, vnet_hdr):
    """Create the tap device ``c.pasta_ifn`` in the namespace; sets
    ``c.fd_tap``, ``c.pasta_ifi`` and ``c.tap_vnet_len``.  Dies on
    failure."""
    from pasta import util

    try:
        ifi, fds = util.ns_call(c.pasta_netns_fd, tap_ns_tun, c.pasta_ifn,
                                vnet_hdr, userns_fd=c.pasta_userns_fd)
    except OSError as e:
        log.die_perror(e, "Failed to set up tap device in namespace")
    if not ifi:
        log.die("Tap device opened but no network interface found")
    c.fd_tap = fds[0]
    c.pasta_ifi = ifi
    c.tap_vnet_len = VNET_HDR.size if vnet_hdr else 0


def tap_sock_tun_init(c):
    """Create the tap device in the namespace, configure the namespace,
    and start reading from the device."""
    from pasta import pasta

    if not c.splice_only:
        tap_ns_tun_open(c, not c.no_tap_offload)

    pasta.pasta_ns_conf(c)
    proto_update_l2_buf(c, c.guest_mac)

    if not c.splice_only:
        tap_start_connection(c)


def tap_backend_init(c):
    """Set up the guest's side: the tap device (pasta) or the listening
    qemu socket (passt)."""
    from pasta.passt import MAC_BROADCAST, MODE_PASTA

    if c.fd_tap >= 0:                   # passed with --fd
        c.tap_sock = socket.socket(fileno=c.fd_tap)
        c.tap_sock.setblocking(False)
        tap_start_connection(c)
        return

    if c.mode == MODE_PASTA:
        tap_sock_tun_init(c)
        return

    tap_sock_unix_init(c)
    # Until the guest sends something we don't know its MAC address:
    # broadcast, so that our first frames can reach it.
    c.guest_mac = MAC_BROADCAST
    log.info("\nqemu 7.2 or later connects to this socket with:")
    log.info("    kvm ... -device virtio-net-pci,netdev=s -netdev stream,"
             "id=s,server=off,addr.type=unix,addr.path=%s", c.sock_path)
