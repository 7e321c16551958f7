# SPDX-License-Identifier: GPL-2.0-or-later
"""TCP through the tap interface: unit tests with a scripted guest.

The "guest" here is the test itself: it builds TCP segments by hand and
feeds them to ``tcp.tcp_tap_handler()``, and reads the frames pasta would
write to the tap device from a capture that replaces
``tap.tap_send_frames()``.  The host side is real: sockets on the
loopback interface of a network namespace the fixture creates (and
deletes), entered with ``setns()`` for the duration of the test, so
nothing touches the namespace the tests run in.

Integration tests with the real kernel as the guest are at the end
(they use the shared test bed, ``tests/bed.py``).
"""

import ipaddress
import os
import select
import socket
import struct
import subprocess
import time

import pytest

from pasta import checksum, flow, tap, tcp, util
from pasta.epoll_ctl import EpollType
from pasta.passt import Ctx
from pasta.pif import PIF_TAP

GUEST4 = "192.0.2.2"
SERVER4 = "192.0.2.1"
GUEST6 = "2001:db8::2"
SERVER6 = "2001:db8::1"
GUEST_MAC = bytes.fromhex("0a0000000002")

_counter = [0]


@pytest.fixture
def netns():
    """Run the test inside a fresh network namespace with loopback up and
    the server addresses on it."""
    if os.geteuid() != 0:
        pytest.skip("needs root for ip netns")
    _counter[0] += 1
    name = "ptcp%d_%d" % (os.getpid(), _counter[0])
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", SERVER4 + "/32", "dev", "lo"],
                    ["ip", "addr", "add", SERVER6 + "/128", "dev", "lo",
                     "nodad"]):
            subprocess.run(["ip", "netns", "exec", name] + cmd, check=True,
                           timeout=10)
        fd = os.open("/var/run/netns/" + name, os.O_RDONLY)
        util.setns(fd, util.CLONE_NEWNET)
        os.close(fd)
        yield name
    finally:
        util.setns(orig, util.CLONE_NEWNET)
        os.close(orig)
        subprocess.run(["ip", "netns", "del", name], timeout=10)


def _csum_ok(src, dst, l4):
    if len(src) == 4:
        ps = checksum.proto_ipv4_header_psum(len(l4), 6, src, dst)
    else:
        ps = checksum.proto_ipv6_header_psum(len(l4), 6, src, dst)
    return checksum.csum(bytes(l4), ps) == 0


class Seg:
    """A TCP segment pasta sent, parsed."""

    def __init__(self, frame, vnet_len):
        self.vnet = frame[:vnet_len]
        f = frame[vnet_len:]
        self.frame = f
        proto = struct.unpack_from("!H", f, 12)[0]
        if proto == 0x0800:
            ihl = (f[14] & 15) * 4
            tot = struct.unpack_from("!H", f, 16)[0]
            self.src, self.dst = f[26:30], f[30:34]
            self.ip_csum_ok = checksum.csum(f[14:14 + ihl]) == 0
            l4 = f[14 + ihl:14 + tot]
            self.l4off = 14 + ihl
        else:
            plen = struct.unpack_from("!H", f, 18)[0]
            self.src, self.dst = f[22:38], f[38:54]
            self.ip_csum_ok = True
            l4 = f[54:54 + plen]
            self.l4off = 54
        self.l4 = l4
        (self.sport, self.dport, self.seq, self.ack, off, self.flags,
         self.win, self.check, _u) = struct.unpack_from("!HHIIBBHHH", l4)
        doff = (off >> 4) * 4
        self.opts = l4[20:doff]
        self.data = l4[doff:]
        if vnet_len and self.vnet[0] & 1:
            # Checksum left to the kernel: the field holds the pseudo
            # header sum
            ps = (checksum.proto_ipv4_header_psum(len(l4), 6, self.src,
                                                  self.dst)
                  if len(self.src) == 4 else
                  checksum.proto_ipv6_header_psum(len(l4), 6, self.src,
                                                  self.dst))
            self.csum_ok = self.check == checksum.csum_fold(ps)
        else:
            self.csum_ok = _csum_ok(self.src, self.dst, l4)

    def has(self, flag):
        return bool(self.flags & flag)

    def __repr__(self):
        names = [n for n, b in (("F", 1), ("S", 2), ("R", 4), ("P", 8),
                                ("A", 16)) if self.flags & b]
        return "Seg(%s seq=%d ack=%d win=%d len=%d)" % (
            "".join(names), self.seq, self.ack, self.win, len(self.data))


class Guest:
    """A scripted guest on the tap side, and the loop around pasta."""

    def __init__(self, v6=False, vnet=False, mtu=65520, monkeypatch=None):
        c = Ctx()
        c.mode = 1
        c.mtu = mtu
        c.ifi4 = 1
        c.ifi6 = 1
        c.guest_mac = GUEST_MAC
        c.hash_secret = os.urandom(16)
        c.tap_vnet_len = 12 if vnet else 0
        c.epoll = select.epoll()
        c.epoll_refs = {}
        c.ip4.addr = ipaddress.IPv4Address(GUEST4)
        c.ip6.addr = ipaddress.IPv6Address(GUEST6)
        self.c = c
        self.v6 = v6
        self.af = socket.AF_INET6 if v6 else socket.AF_INET
        self.gaddr = socket.inet_pton(self.af, GUEST6 if v6 else GUEST4)
        self.saddr = socket.inet_pton(self.af, SERVER6 if v6 else SERVER4)
        self.frames = []
        self.sent = []
        monkeypatch.setattr(tap, "tap_send_frames", self._capture)
        monkeypatch.setattr(tap, "tap_send_single", self._single)
        flow.flow_init(c)
        tcp.tcp_init(c)

    def _capture(self, c, frames):
        for bufs in frames:
            self.frames.append(b"".join(bytes(b) for b in bufs))
        return len(frames)

    def _single(self, c, frame):
        vn = bytes(c.tap_vnet_len)
        self.frames.append(vn + bytes(frame))

    def segs(self):
        """Segments pasta sent since the last call."""
        out = []
        for f in self.frames:
            et = struct.unpack_from("!H", f, self.c.tap_vnet_len + 12)[0]
            ipproto = (f[self.c.tap_vnet_len + 23] if et == 0x0800 else
                       f[self.c.tap_vnet_len + 20])
            if ipproto == 6:
                out.append(Seg(f, self.c.tap_vnet_len))
            else:
                self.icmp.append(f)
        self.frames = []
        self.sent.extend(out)
        return out

    icmp = []

    def seg(self, sport, dport, seq, ack, flags, win=65535, data=b"",
            opts=b"", doff=None):
        if doff is None:
            doff = (20 + len(opts)) // 4
        return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4,
                           flags, win, 0, 0) + opts + data

    def feed(self, *segs):
        tcp.tcp_tap_handler(self.c, PIF_TAP, self.af, self.gaddr,
                            self.saddr, [memoryview(s) for s in segs],
                            time.monotonic())
        self.post()

    def post(self):
        now = time.monotonic()
        tcp.tcp_defer_handler(self.c, now)
        flow.flow_defer_handler(self.c, now)

    def pump(self, timeout=0.05, rounds=1):
        """Run pasta's loop for TCP sockets and timers."""
        for _i in range(rounds):
            for fd, ev in self.c.epoll.poll(timeout):
                ref = self.c.epoll_refs.get(fd)
                if ref is None:
                    continue
                now = time.monotonic()
                if ref.type == EpollType.TCP:
                    tcp.tcp_sock_handler(self.c, ref, ev, now)
                elif ref.type == EpollType.TCP_TIMER:
                    tcp.tcp_timer_handler(self.c, ref, now)
                elif ref.type == EpollType.TCP_LISTEN:
                    tcp.tcp_listen_handler(self.c, ref, now)
            self.post()

    def connect(self, port, gport=40000, isn=1000, opts=None):
        """Three-way handshake from the guest; returns the SYN-ACK."""
        if opts is None:
            opts = struct.pack("!BBHBBBB", 2, 4, 1460, 1, 3, 3, 7)
        self.gport, self.port = gport, port
        self.gseq = isn + 1
        self.feed(self.seg(gport, port, isn, 0, tcp.SYN, 65535, opts=opts))
        deadline = time.monotonic() + 2
        synack = None
        while time.monotonic() < deadline and synack is None:
            for s in self.segs():
                if s.has(tcp.SYN) and s.has(tcp.ACK):
                    synack = s
            if synack is None:
                self.pump()
        return synack

    def establish(self, port, **kw):
        synack = self.connect(port, **kw)
        assert synack is not None
        self.pseq = synack.seq + 1
        self.feed(self.seg(self.gport, port, self.gseq, self.pseq, tcp.ACK,
                           65535))
        return synack

    def send(self, data, flags=tcp.ACK | tcp.PSH, seq=None, win=65535):
        if seq is None:
            seq = self.gseq
            self.gseq = (self.gseq + len(data)) & 0xffffffff
        self.feed(self.seg(self.gport, self.port, seq, self.pseq, flags,
                           win, data=data))

    def conn(self):
        conns = flow.flow_foreach_of_type(flow.FLOW_TCP)
        return conns[0] if conns else None


def _server(v6=False):
    af = socket.AF_INET6 if v6 else socket.AF_INET
    ls = socket.socket(af, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((SERVER6 if v6 else SERVER4, 0))
    ls.listen(16)
    ls.settimeout(5)
    return ls, ls.getsockname()[1]


# Pure functions

def test_seq_comparisons_wrap_around():
    assert tcp.SEQ_LT(0xfffffff0, 5)
    assert tcp.SEQ_GT(5, 0xfffffff0)
    assert tcp.SEQ_LE(7, 7) and tcp.SEQ_GE(7, 7)
    assert not tcp.SEQ_LT(7, 7)


def test_opt_get_reads_mss_and_ws_and_rejects_garbage():
    opts = bytes([1, 2, 4, 0x05, 0xb4, 1, 3, 3, 7])
    assert tcp.tcp_opt_get(opts, tcp.OPT_MSS) == 1460
    assert tcp.tcp_opt_get(opts, tcp.OPT_WS) == 7
    assert tcp.tcp_opt_get(opts, tcp.OPT_SACKP) == -1
    assert tcp.tcp_opt_get(bytes([2, 40, 1, 1]), tcp.OPT_MSS) == -1
    assert tcp.tcp_opt_get(bytes([2, 0, 1, 1]), tcp.OPT_MSS) == -1
    assert tcp.tcp_opt_get(b"", tcp.OPT_MSS) == -1


def test_initial_sequence_depends_on_hash_and_time():
    a = tcp.tcp_init_seq(0x1234567890abcdef, 100.0)
    b = tcp.tcp_init_seq(0x1234567890abcdee, 100.0)
    d = tcp.tcp_init_seq(0x1234567890abcdef, 100.000001)
    assert a != b and a != d and 0 <= a < 1 << 32


# Scripted guest against real sockets

@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vnet", [False, True])
def test_handshake_and_data_both_ways(netns, monkeypatch, v6, vnet):
    g = Guest(v6=v6, vnet=vnet, monkeypatch=monkeypatch)
    ls, port = _server(v6)
    synack = g.establish(port)
    assert synack.csum_ok and synack.ip_csum_ok
    assert tcp.tcp_opt_get(bytes(synack.opts), tcp.OPT_MSS) > 0
    assert tcp.tcp_opt_get(bytes(synack.opts), tcp.OPT_WS) == tcp.MAX_WS
    s, _ = ls.accept()

    g.send(b"hello, world")
    s.settimeout(2)
    assert s.recv(100) == b"hello, world"
    acks = [x for x in g.segs() if x.ack == g.gseq]
    assert acks, "data was not acknowledged"

    s.sendall(b"x" * 5000)
    got = b""
    deadline = time.monotonic() + 3
    while len(got) < 5000 and time.monotonic() < deadline:
        g.pump()
        for x in g.segs():
            assert x.csum_ok and x.ip_csum_ok
            if x.data:
                assert len(x.data) <= 1460 or (vnet and x.vnet[1])
                got += bytes(x.data)
                g.feed(g.seg(g.gport, port, g.gseq,
                             (x.seq + len(x.data)) & 0xffffffff,
                             tcp.ACK, 65535))
    assert got == b"x" * 5000
    s.close()
    ls.close()


def test_window_follows_send_buffer_and_never_loses_acked_data(
        netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    s.setblocking(False)
    conn = g.conn()

    # The server does not read: keep sending whatever window we are given
    acked = g.gseq
    sent_total = 0
    chunk = b"z" * 60000
    for _i in range(200):
        segs = g.segs()
        for x in segs:
            if tcp.SEQ_GT(x.ack, acked):
                acked = x.ack
        wnd = conn.wnd_to_tap << conn.ws_to_tap
        inflight = (g.gseq - acked) & 0xffffffff
        room = wnd - inflight
        if room <= 0:
            g.pump(0.01)
            continue
        n = min(room, len(chunk))
        g.send(chunk[:n])
        sent_total += n
    for x in g.segs():
        if tcp.SEQ_GT(x.ack, acked):
            acked = x.ack

    # Everything acknowledged is in the socket, nothing more
    n_acked = (acked - conn.seq_init_from_tap - 1) & 0xffffffff
    received = 0
    s.settimeout(1)
    try:
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            received += len(d)
    except (socket.timeout, BlockingIOError):
        pass
    assert n_acked > 0
    assert received == n_acked
    s.close()
    ls.close()


def test_gap_in_guest_data_gives_three_duplicate_acks(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    g.segs()
    base = g.gseq
    # Segment two arrives before segment one
    g.send(b"B" * 100, seq=(base + 100) & 0xffffffff)
    dups = [x for x in g.segs() if x.ack == base and not x.data]
    assert len(dups) >= 3
    # Nothing after the gap was kept: the guest fills it and sends again
    g.send(b"A" * 100, seq=base)
    assert any(x.ack == base + 100 for x in g.segs())
    g.send(b"B" * 100, seq=base + 100)
    g.gseq = base + 200
    # Out of order within one batch: both delivered, in order
    g.feed(g.seg(g.gport, g.port, base + 300, g.pseq, tcp.ACK,
                 data=b"D" * 100),
           g.seg(g.gport, g.port, base + 200, g.pseq, tcp.ACK,
                 data=b"C" * 100))
    s.settimeout(2)
    got = b""
    while len(got) < 400:
        got += s.recv(1000)
    assert got == b"A" * 100 + b"B" * 100 + b"C" * 100 + b"D" * 100
    s.close()
    ls.close()


def test_refused_connection_resets_guest(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    ls.close()
    g.feed(g.seg(40001, port, 5000, 0, tcp.SYN, 65535))
    rst = None
    deadline = time.monotonic() + 1
    while rst is None and time.monotonic() < deadline:
        g.pump()
        for x in g.segs():
            if x.has(tcp.RST):
                rst = x
    assert rst is not None and rst.csum_ok
    g.post()
    assert flow.flow_count() == 0


def test_unknown_connection_gets_rst_and_rst_gets_nothing(netns,
                                                          monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    g.feed(g.seg(40002, 80, 1234, 999, tcp.ACK, 100, data=b"abc"))
    segs = g.segs()
    assert len(segs) == 1 and segs[0].has(tcp.RST) and segs[0].seq == 999
    assert segs[0].csum_ok
    g.feed(g.seg(40002, 80, 1234, 999, tcp.RST, 100))
    assert g.segs() == []


def test_malformed_segments_do_not_disturb_a_connection(netns,
                                                        monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    s.settimeout(2)
    gp = g.gport
    bad = [
        b"\x00" * 7,                                        # short
        g.seg(gp, port, g.gseq, g.pseq, tcp.ACK, doff=2),   # doff < 5
        g.seg(gp, port, g.gseq, g.pseq, tcp.ACK, doff=15),  # past end
        g.seg(gp, port, g.gseq, g.pseq, tcp.ACK,
              opts=bytes([2, 30, 0, 0])),                   # bad option
        g.seg(gp, port, g.gseq + 0x40000000, g.pseq, tcp.RST),  # blind
        g.seg(gp, port, g.gseq + 100000, g.pseq, tcp.ACK,
              data=b"far"),                                 # out of window
    ]
    for b in bad:
        g.feed(b)
    g.segs()
    g.send(b"still alive")
    assert s.recv(100) == b"still alive"
    assert g.conn() is not None
    s.close()
    ls.close()


def test_flow_table_full_refuses_with_rst(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    monkeypatch.setattr(flow, "FLOW_MAX", 3)
    for i in range(5):
        g.feed(g.seg(41000 + i, port, 100, 0, tcp.SYN, 65535))
    g.pump(0.1)
    segs = g.segs()
    rsts = [x for x in segs if x.has(tcp.RST)]
    assert flow.flow_count() == 3
    assert len(rsts) == 2
    ls.close()


def test_guest_fin_half_closes_socket_and_data_still_flows_back(
        netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    s.settimeout(2)
    g.send(b"request", flags=tcp.ACK | tcp.FIN)
    g.gseq += 1
    assert s.recv(100) == b"request"
    assert s.recv(100) == b""           # FIN reached the server
    s.sendall(b"response")
    s.close()
    got = b""
    fin = False
    deadline = time.monotonic() + 3
    while not fin and time.monotonic() < deadline:
        g.pump()
        for x in g.segs():
            got += bytes(x.data)
            fin = fin or x.has(tcp.FIN)
            if x.data or x.has(tcp.FIN):
                g.feed(g.seg(g.gport, port, g.gseq,
                             (x.seq + len(x.data) + x.has(tcp.FIN)) &
                             0xffffffff, tcp.ACK))
    g.pump()
    assert flow.flow_count() == 0
    assert got == b"response" and fin
    ls.close()


def test_server_reset_resets_guest(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1,
                                                                  0))
    s.close()
    rst = False
    deadline = time.monotonic() + 2
    while not rst and time.monotonic() < deadline:
        g.pump()
        rst = any(x.has(tcp.RST) for x in g.segs())
    assert rst
    ls.close()


def test_guest_rst_resets_server(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    s.settimeout(2)
    g.feed(g.seg(g.gport, port, g.gseq, g.pseq, tcp.RST))
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    ls.close()


def test_retransmission_after_timeout_then_reset(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    monkeypatch.setattr(tcp, "RTO_INIT", 0.05)
    monkeypatch.setattr(tcp, "TCP_MAX_RETRIES", 2)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    s.sendall(b"data!")
    copies = 0
    rst = False
    deadline = time.monotonic() + 5
    while not rst and time.monotonic() < deadline:
        g.pump(0.02)
        for x in g.segs():
            if x.data == b"data!":
                copies += 1
            if x.has(tcp.RST):
                rst = True
    assert copies == 3          # first send and two retries
    assert rst
    s.close()
    ls.close()


def test_inbound_connection_from_listening_socket(netns, monkeypatch):
    """tcp_listen_handler(): accept, SYN to the guest, data both ways."""
    g = Guest(monkeypatch=monkeypatch)
    from pasta import fwd

    class Rule:
        pass

    def nat(c, rule, proto, ini, tgt):
        tgt.eaddr = flow.inany_from_af(socket.AF_INET, g.gaddr)
        tgt.eport = 8080
        tgt.oaddr = ini.eaddr
        tgt.oport = ini.eport
        return PIF_TAP
    monkeypatch.setattr(fwd, "fwd_nat_from_host", nat)

    lsock = socket.socket()
    lsock.bind((SERVER4, 0))
    lsock.listen(4)
    lsock.setblocking(False)
    from pasta.epoll_ctl import EpollRef, epoll_add
    ref = EpollRef(EpollType.TCP_LISTEN, lsock.fileno(),
                   listen=fwd.FwdListenRef(lsock.getsockname()[1],
                                           flow.PIF_HOST, 0), data=lsock)
    epoll_add(g.c, select.EPOLLIN, ref)
    g.c.fwd = {flow.PIF_HOST: object()}
    monkeypatch.setattr(fwd, "fwd_rule_search", lambda t, i, p, h: Rule())

    cl = socket.create_connection(lsock.getsockname(), timeout=2)
    syn = None
    deadline = time.monotonic() + 2
    while syn is None and time.monotonic() < deadline:
        g.pump()
        for x in g.segs():
            if x.has(tcp.SYN):
                syn = x
    assert syn is not None and syn.dport == 8080
    assert syn.src == socket.inet_aton(SERVER4)     # original source
    g.gport, g.port = 8080, syn.sport
    g.gseq = 7001
    g.pseq = syn.seq + 1
    g.feed(g.seg(8080, syn.sport, 7000, g.pseq, tcp.SYN | tcp.ACK, 65535,
                 opts=struct.pack("!BBH", 2, 4, 1460)))
    g.send(b"banner")
    assert cl.recv(100) == b"banner"
    cl.close()
    lsock.close()


# Integration: the namespace's kernel as the guest, the shared test bed

PY = __import__("sys").executable

# A world server: for each connection, read until end of file, then send
# back the length read and the SHA-256 of what was read, and close
SUM_SERVER = r"""
import hashlib, socket, sys, threading
af = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
ls = socket.socket(af)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(64)
def serve(s):
    h = hashlib.sha256()
    n = 0
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        n += len(d)
        h.update(d)
    s.sendall(b"%d %s\n" % (n, h.hexdigest().encode()))
    s.close()
while True:
    s, _ = ls.accept()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
"""

# Send N bytes of a file (or the file), half-close, print the answer
SEND_CLIENT = r"""
import socket, sys
af = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
with open(sys.argv[3], "rb") as f:
    while True:
        d = f.read(1 << 20)
        if not d:
            break
        s.sendall(d)
s.shutdown(socket.SHUT_WR)
ans = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    ans += d
print(ans.decode().strip())
"""

# Connect, read until the server closes, print length and SHA-256
RECV_CLIENT = r"""
import hashlib, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
h = hashlib.sha256()
n = 0
while True:
    d = s.recv(1 << 20)
    if not d:
        break
    n += len(d)
    h.update(d)
print(n, h.hexdigest())
"""


def _attach(bed, args=(), suffix="t"):
    """A namespace with our pasta attached; returns (ns, Popen)."""
    ns = bed.netns_add(suffix)
    p = bed.pasta_attach(ns, ["--runas", "0:0"] + list(args), timeout=30)
    return ns, p


def _addr(bed, v6):
    return bed.WORLD6 if v6 else bed.WORLD4


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("size", [1, 2048, 100 << 20],
                         ids=["1B", "2KiB", "100MiB"])
def test_transfer_namespace_to_world(bed, v6, size):
    ns, _p = _attach(bed)
    path, digest = bed.make_blob(size)
    bed.popen(bed.world, [PY, "-c", SUM_SERVER, _addr(bed, v6), "5010"])
    bed.wait_listen(bed.world, 5010)
    r = bed.run(ns, [PY, "-c", SEND_CLIENT, _addr(bed, v6), "5010", path],
                timeout=120)
    assert r.stdout.strip() == "%d %s" % (size, digest), r.stderr


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("size", [1, 2048, 100 << 20],
                         ids=["1B", "2KiB", "100MiB"])
def test_transfer_world_to_namespace(bed, v6, size):
    ns, _p = _attach(bed)
    path, digest = bed.make_blob(size)
    addr = _addr(bed, v6)
    spec = ("TCP6-LISTEN:5011,bind=[%s],reuseaddr" % addr if v6 else
            "TCP4-LISTEN:5011,bind=%s,reuseaddr" % addr)
    bed.popen(bed.world, ["socat", "-u", "OPEN:" + path, spec])
    bed.wait_listen(bed.world, 5011)
    r = bed.run(ns, [PY, "-c", RECV_CLIENT, addr, "5011"], timeout=120)
    assert r.stdout.strip() == "%d %s" % (size, digest), r.stderr


@pytest.mark.parametrize("reverse", [False, True],
                         ids=["ns-to-world", "world-to-ns"])
def test_iperf3_through_tap(bed, reverse):
    import json
    ns, _p = _attach(bed)
    bed.popen(bed.world, ["iperf3", "-s", "-p", "5201"])
    bed.wait_listen(bed.world, 5201)
    argv = ["iperf3", "-c", bed.WORLD4, "-t", "2", "-J", "-p", "5201"]
    if reverse:
        argv.append("-R")
    r = bed.run(ns, argv, timeout=60)
    j = json.loads(r.stdout)
    assert j["end"]["sum_received"]["bits_per_second"] > 100e6


def test_refused_connection_fails_within_a_second(bed):
    ns, _p = _attach(bed)
    t0 = time.monotonic()
    r = bed.run(ns, [PY, "-c", "import socket; socket.create_connection("
                     "('%s', 5099), timeout=5)" % bed.WORLD4], timeout=20)
    assert time.monotonic() - t0 < 1.5
    assert "ConnectionRefusedError" in r.stderr


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_unreachable_destination_fails_like_a_local_program(bed, v6):
    ns, _p = _attach(bed)
    # The world rejects this destination with ICMP unreachable
    dst = "2001:db8:2::99" if v6 else "203.0.113.99"
    bed.run(bed.world, ["ip", "route", "add", "unreachable",
                        dst + ("/128" if v6 else "/32")], check=True)
    probe = ("import socket\n"
             "try: socket.create_connection(('%s', 80), timeout=10)\n"
             "except OSError as e: print(type(e).__name__, e.errno)" % dst)
    local = bed.run(bed.host, [PY, "-c", probe], timeout=30).stdout.strip()
    t0 = time.monotonic()
    r = bed.run(ns, [PY, "-c", probe], timeout=30)
    assert time.monotonic() - t0 < 5
    assert local and r.stdout.strip() == local, (local, r.stdout, r.stderr)


RESET_SERVER = r"""
import socket, struct, sys
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(4)
s, _ = ls.accept()
n = 0
while n < (1 << 20):
    n += len(s.recv(65536))
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
"""


def test_server_reset_mid_transfer_resets_namespace_side(bed):
    ns, _p = _attach(bed)
    bed.popen(bed.world, [PY, "-c", RESET_SERVER, bed.WORLD4, "5012"])
    bed.wait_listen(bed.world, 5012)
    client = (r"import socket, time; s = socket.create_connection(('%s', "
              r"5012), timeout=10); t = time.monotonic()" "\n"
              r"try:" "\n"
              r"    while time.monotonic() - t < 8: s.sendall(b'x' * 65536)"
              "\n" r"except OSError as e: print(type(e).__name__)"
              % bed.WORLD4)
    t0 = time.monotonic()
    r = bed.run(ns, [PY, "-c", client], timeout=30)
    assert r.stdout.strip() in ("ConnectionResetError", "BrokenPipeError")
    assert time.monotonic() - t0 < 5


# Half-close: the side that sent FIN keeps receiving
HALF_SERVER = r"""
import socket, sys
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(4)
s, _ = ls.accept()
s.sendall(b"server first\n")
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    got += d
sys.stdout.write(got.decode())
"""


def test_half_close_namespace_side_first(bed):
    ns, _p = _attach(bed)
    bed.popen(bed.world, ["socat", "TCP4-LISTEN:5013,bind=%s,"
                          "reuseaddr" % bed.WORLD4,
                          "SYSTEM:'read l; echo got $l'"],
              stdout=subprocess.PIPE, text=True)
    bed.wait_listen(bed.world, 5013)
    r = bed.run(ns, ["socat", "-", "TCP4:%s:5013" % bed.WORLD4],
                input="hello\n", timeout=20)
    assert r.stdout == "got hello\n"


def test_half_close_world_side_first(bed):
    ns, _p = _attach(bed)
    srv = bed.popen(bed.world, [PY, "-c", HALF_SERVER, bed.WORLD4, "5014"],
                    stdout=subprocess.PIPE, text=True)
    bed.wait_listen(bed.world, 5014)
    client = (r"import socket; s = socket.create_connection(('%s', 5014),"
              r" timeout=10)" "\n"
              r"got = b''" "\n"
              r"while True:" "\n"
              r"    d = s.recv(100)" "\n"
              r"    if not d: break" "\n"
              r"    got += d" "\n"
              r"s.sendall(b'after eof: ' + got); s.close()" % bed.WORLD4)
    bed.run(ns, [PY, "-c", client], timeout=20, check=True)
    out, _ = srv.communicate(timeout=10)
    assert out == "after eof: server first\n"


MANY_CLIENT = r"""
import socket, sys, resource, selectors, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
n = int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((sys.argv[1], 5015))
    except BlockingIOError:
        pass
    socks.append(s)
sel = selectors.DefaultSelector()
for s in socks:
    sel.register(s, selectors.EVENT_WRITE)
ok, left, t = 0, n, time.monotonic()
while left and time.monotonic() - t < 60:
    for k, _e in sel.select(1):
        sel.unregister(k.fileobj)
        left -= 1
        ok += not k.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
for s in socks:
    s.setblocking(True)
    s.settimeout(10)
    s.sendall(b"x")
print(ok)
for s in socks:
    s.close()
"""

HOLD_SERVER = r"""
import socket, selectors, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", 5015))
ls.listen(2048)
sel = selectors.DefaultSelector()
sel.register(ls, selectors.EVENT_READ)
while True:
    for k, _e in sel.select():
        if k.fileobj is ls:
            s, _ = ls.accept()
            sel.register(s, selectors.EVENT_READ)
        elif not k.fileobj.recv(10):
            sel.unregister(k.fileobj)
            k.fileobj.close()
"""


def test_thousand_connections_and_descriptors_come_back(bed):
    ns, p = _attach(bed)
    bed.popen(bed.world, [PY, "-c", HOLD_SERVER])
    bed.wait_listen(bed.world, 5015)
    time.sleep(0.5)
    base = len(os.listdir("/proc/%d/fd" % p.pid))
    r = bed.run(ns, [PY, "-c", MANY_CLIENT, bed.WORLD4, "1000"],
                timeout=120)
    assert r.stdout.strip() == "1000", r.stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        n = len(os.listdir("/proc/%d/fd" % p.pid))
        if n <= base:
            break
        time.sleep(0.2)
    assert n <= base
    assert p.poll() is None
    # Peak memory with 1000 connections open stays under 64 MiB
    with open("/proc/%d/status" % p.pid) as f:
        hwm = [int(line.split()[1]) for line in f
               if line.startswith("VmHWM:")][0]
    assert hwm < 64 * 1024, "peak RSS %d KiB" % hwm


# Crafted frames from the namespace, on the tap interface (AF_PACKET)
MALFORMED = r"""
import socket, struct, sys
ifname, dst = sys.argv[1], socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
mac = s.getsockname()[4]
src = socket.inet_aton(sys.argv[3])
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
def frame(tcp, tot=None):
    l = 20 + len(tcp)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot or l, 0, 0x4000, 64, 6, 0,
                     src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return b"\x9a\x55\x9a\x55\x9a\x55" + mac + b"\x08\x00" + ip + tcp
def th(sport, flags, doff=5, seq=1, ack=0, opts=b"", data=b""):
    return struct.pack("!HHIIBBHHH", sport, 5016, seq, ack, doff << 4,
                       flags, 1000, 0, 0) + opts + data
frames = [
    frame(th(50001, 0x02, doff=2)),
    frame(th(50002, 0x02, doff=15)),
    frame(th(50003, 0x02, doff=7, opts=bytes([2, 40, 0, 0, 3, 200, 0, 1]))),
    frame(th(50004, 0x02, data=b"data in syn")),
    frame(th(50005, 0x10, seq=12345, ack=999)),
    frame(th(50006, 0x04)),
    frame(th(50007, 0x12)),
    frame(th(50008, 0x10)[:10]),
    frame(th(50009, 0x02), tot=400),
    frame(b""),
]
for f in frames * 20:
    s.send(f)
print("sent", len(frames) * 20)
"""


def test_malformed_segments_from_namespace_leave_pasta_working(bed):
    ns, p = _attach(bed)
    bed.popen(bed.world, [PY, "-c", SUM_SERVER, bed.WORLD4, "5016"])
    bed.wait_listen(bed.world, 5016)
    path, digest = bed.make_blob(1 << 20)
    # A transfer in progress while the bad frames arrive
    good = bed.popen(ns, [PY, "-c", SEND_CLIENT, bed.WORLD4, "5016", path],
                     stdout=subprocess.PIPE, text=True)
    r = bed.run(ns, [PY, "-c", MALFORMED, "h0", bed.WORLD4, bed.HOST4],
                timeout=30)
    assert r.stdout.startswith("sent"), r.stderr
    out, _ = good.communicate(timeout=60)
    assert out.strip() == "%d %s" % (1 << 20, digest)
    r = bed.run(ns, [PY, "-c", SEND_CLIENT, bed.WORLD4, "5016", path],
                timeout=60)
    assert r.stdout.strip() == "%d %s" % (1 << 20, digest)
    assert p.poll() is None


BANNER = r"""
import socket, sys
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(4)
while True:
    s, a = ls.accept()
    s.sendall((sys.argv[3] + " " + a[0] + "\n").encode())
    s.close()
"""

FETCH = (r"import socket, sys; s = socket.create_connection((sys.argv[1], "
         r"int(sys.argv[2])), timeout=5); print(s.recv(100).decode().strip())")


def test_gateway_maps_to_host_loopback_unless_no_map_gw(bed):
    bed.popen(bed.host, [PY, "-c", BANNER, "127.0.0.1", "5017", "host-lo"])
    bed.popen(bed.world, [PY, "-c", BANNER, bed.GW4, "5017", "world-gw"])
    bed.wait_listen(bed.host, 5017)
    bed.wait_listen(bed.world, 5017)
    ns, p = _attach(bed)
    r = bed.run(ns, [PY, "-c", FETCH, bed.GW4, "5017"], timeout=20)
    assert r.stdout.startswith("host-lo"), r.stderr
    _kill_attached(p)
    ns2, _p2 = _attach(bed, ["--no-map-gw"], suffix="t2")
    r = bed.run(ns2, [PY, "-c", FETCH, bed.GW4, "5017"], timeout=20)
    assert r.stdout.startswith("world-gw"), r.stderr


def test_map_guest_addr_reaches_the_host(bed):
    bed.popen(bed.host, [PY, "-c", BANNER, bed.HOST4, "5018", "host"])
    bed.wait_listen(bed.host, 5018)
    ns, _p = _attach(bed, ["--map-guest-addr", "192.0.2.77"])
    r = bed.run(ns, [PY, "-c", FETCH, "192.0.2.77", "5018"], timeout=20)
    assert r.stdout.startswith("host"), r.stderr


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_inbound_port_forward_shows_original_source(bed, v6):
    ns, _p = _attach(bed, ["-t", "5019"])
    bed.popen(ns, [PY, "-c", BANNER.replace("socket.socket()",
                                            "socket.socket(socket.AF_INET6)"
                                            if v6 else "socket.socket()"),
                   "::" if v6 else "0.0.0.0", "5019", "ns"])
    bed.wait_listen(ns, 5019)
    r = bed.run(bed.world, [PY, "-c", FETCH, bed.HOST6 if v6 else bed.HOST4,
                            "5019"], timeout=20)
    assert r.stdout.strip() == "ns %s" % (bed.GW6 if v6 else bed.GW4), \
        r.stderr


def _kill_attached(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


# More scripted-guest tests: windows, timers

def test_zero_window_then_update_without_guest_action(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = g.conn()
    # Fill the socket until we are told to stop
    for _i in range(400):
        wnd = conn.wnd_to_tap << conn.ws_to_tap
        if wnd == 0:
            break
        g.send(b"q" * min(wnd, 65000))
        g.pump(0.005)
    assert conn.wnd_to_tap == 0
    g.segs()
    # The server reads: a window update follows by itself
    s.setblocking(False)
    deadline = time.monotonic() + 3
    update = None
    while update is None and time.monotonic() < deadline:
        try:
            while s.recv(1 << 20):
                pass
        except BlockingIOError:
            pass
        g.pump(0.02)
        for x in g.segs():
            if x.win > 0 and not x.data:
                update = x
    assert update is not None
    s.close()
    ls.close()


def test_keepalive_to_quiet_guest(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    conn = g.conn()
    g.segs()
    g.c.tcp.keepalive_run = time.monotonic() - 31
    conn.tap_inactive = True
    g.c.tcp.timer_run = 0.1
    g.post()
    ka = [x for x in g.segs() if x.seq == (g.pseq - 1) & 0xffffffff]
    assert len(ka) == 1 and not ka[0].data
    s.close()
    ls.close()


def test_inactive_connection_is_reset(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    conn = g.conn()
    g.segs()
    g.c.tcp.inactivity_run = time.monotonic() - 7201
    conn.inactive = True
    g.c.tcp.timer_run = 0.1
    g.post()
    assert any(x.has(tcp.RST) for x in g.segs())
    s.settimeout(2)
    with pytest.raises(ConnectionResetError):
        s.recv(10)
    ls.close()


def test_syn_ack_lost_is_retransmitted(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    monkeypatch.setattr(tcp, "RTO_INIT", 0.05)
    ls, port = _server()
    synack = g.connect(port)
    assert synack is not None
    again = None
    deadline = time.monotonic() + 2
    while again is None and time.monotonic() < deadline:
        g.pump(0.02)
        for x in g.segs():
            if x.has(tcp.SYN) and x.has(tcp.ACK):
                again = x
    assert again is not None and again.seq == synack.seq
    ls.close()


def test_outbound_address_is_the_source_seen_by_the_world(bed):
    bed.run(bed.host, ["ip", "addr", "add", "198.51.100.3/24", "dev", "h0"],
            check=True)
    bed.popen(bed.world, [PY, "-c", BANNER, bed.WORLD4, "5020", "w"])
    bed.wait_listen(bed.world, 5020)
    ns, _p = _attach(bed, ["-o", "198.51.100.3"])
    r = bed.run(ns, [PY, "-c", FETCH, bed.WORLD4, "5020"], timeout=20)
    assert r.stdout.strip() == "w 198.51.100.3", r.stderr


def test_outbound_interface_binds_host_sockets(bed):
    bed.popen(bed.world, [PY, "-c", BANNER, bed.WORLD4, "5021", "w"])
    bed.wait_listen(bed.world, 5021)
    ns, _p = _attach(bed, ["--outbound-if4", "h0"])
    r = bed.run(ns, [PY, "-c", FETCH, bed.WORLD4, "5021"], timeout=20)
    assert r.stdout.strip() == "w %s" % bed.HOST4, r.stderr


def test_inbound_from_host_loopback_is_spliced(bed):
    ns, _p = _attach(bed, ["-t", "5022"])
    bed.popen(ns, [PY, "-c", BANNER, "0.0.0.0", "5022", "ns"])
    bed.wait_listen(ns, 5022)
    r = bed.run(bed.host, [PY, "-c", FETCH, "127.0.0.1", "5022"],
                timeout=20)
    assert r.stdout.startswith("ns "), r.stderr


def test_inbound_to_closed_port_in_namespace_is_reset(bed):
    ns, _p = _attach(bed, ["-t", "5023"])
    client = (r"import socket" "\n"
              r"try:" "\n"
              r"    s = socket.create_connection(('%s', 5023), timeout=5)"
              "\n"
              r"    print(repr(s.recv(10)))" "\n"
              r"except OSError as e: print(type(e).__name__)" % bed.HOST4)
    t0 = time.monotonic()
    r = bed.run(bed.world, [PY, "-c", client], timeout=20)
    assert r.stdout.strip() in ("ConnectionResetError", "b''"), r.stderr
    assert time.monotonic() - t0 < 3


def test_duplicate_ack_from_guest_retransmits_at_once(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    s.sendall(b"1" * 1000)
    first = None
    deadline = time.monotonic() + 2
    while first is None and time.monotonic() < deadline:
        g.pump()
        for x in g.segs():
            if x.data:
                first = x
    assert first is not None
    # The guest lost it: duplicate ACK for what it had before
    g.feed(g.seg(g.gport, port, g.gseq, g.pseq, tcp.ACK, 65535))
    g.feed(g.seg(g.gport, port, g.gseq, g.pseq, tcp.ACK, 65535))
    again = [x for x in g.segs() if x.data]
    assert again and again[0].seq == first.seq
    assert bytes(again[0].data) == bytes(first.data)
    s.close()
    ls.close()


def test_listening_socket_with_full_table_resets_the_peer(netns,
                                                          monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    from pasta import fwd
    from pasta.epoll_ctl import EpollRef, epoll_add
    monkeypatch.setattr(flow, "FLOW_MAX", 0)
    lsock = socket.socket()
    lsock.bind((SERVER4, 0))
    lsock.listen(4)
    lsock.setblocking(False)
    ref = EpollRef(EpollType.TCP_LISTEN, lsock.fileno(),
                   listen=fwd.FwdListenRef(lsock.getsockname()[1],
                                           flow.PIF_HOST, 0), data=lsock)
    epoll_add(g.c, select.EPOLLIN, ref)
    cl = socket.create_connection(lsock.getsockname(), timeout=2)
    g.pump(0.1)
    with pytest.raises(ConnectionResetError):
        cl.recv(10)
    assert flow.flow_count() == 0
    lsock.close()


def test_no_tcp_means_no_tcp(bed):
    ns, _p = _attach(bed, ["--no-tcp"])
    bed.popen(bed.world, [PY, "-c", BANNER, bed.WORLD4, "5024", "w"])
    bed.wait_listen(bed.world, 5024)
    r = bed.run(ns, [PY, "-c", FETCH.replace("timeout=5", "timeout=2"),
                     bed.WORLD4, "5024"], timeout=20)
    assert "timed out" in r.stderr or "TimeoutError" in r.stderr, r.stderr


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("offload", [True, False],
                         ids=["offload", "no-offload"])
def test_transfer_both_ways_at_mtu_1500(bed, v6, offload):
    """Super-frames cut by the tap device (and TSO frames from the guest)
    at a small MTU carry the same bytes as plain frames."""
    args = ["-m", "1500"] + ([] if offload else ["--no-tap-offload"])
    ns, _p = _attach(bed, args)
    size = 20 << 20
    path, digest = bed.make_blob(size)
    addr = _addr(bed, v6)
    bed.popen(bed.world, [PY, "-c", SUM_SERVER, addr, "5025"])
    spec = ("TCP6-LISTEN:5026,bind=[%s],reuseaddr" % addr if v6 else
            "TCP4-LISTEN:5026,bind=%s,reuseaddr" % addr)
    bed.popen(bed.world, ["socat", "-u", "OPEN:" + path, spec])
    bed.wait_listen(bed.world, 5025)
    bed.wait_listen(bed.world, 5026)
    r = bed.run(ns, [PY, "-c", SEND_CLIENT, addr, "5025", path],
                timeout=120)
    assert r.stdout.strip() == "%d %s" % (size, digest), r.stderr
    r = bed.run(ns, [PY, "-c", RECV_CLIENT, addr, "5026"], timeout=120)
    assert r.stdout.strip() == "%d %s" % (size, digest), r.stderr


def test_segments_stay_within_mss_and_guest_window(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    # MSS 1000, window scale 2: window 700 << 2 = 2800 bytes
    opts = struct.pack("!BBHBBBB", 2, 4, 1000, 1, 3, 3, 2)
    synack = g.connect(port, opts=opts)
    g.pseq = synack.seq + 1
    g.feed(g.seg(g.gport, port, g.gseq, g.pseq, tcp.ACK, 700))
    s, _ = ls.accept()
    s.sendall(b"w" * 30000)
    acked = g.pseq
    got = 0
    deadline = time.monotonic() + 5
    while got < 30000 and time.monotonic() < deadline:
        g.pump(0.01)
        segs = [x for x in g.segs() if x.data]
        for x in segs:
            assert len(x.data) <= 1000
            end = (x.seq + len(x.data)) & 0xffffffff
            assert (end - acked) & 0xffffffff <= 2800
        if segs:
            top = max(((x.seq + len(x.data)) & 0xffffffff for x in segs),
                      key=lambda v: (v - acked) & 0xffffffff)
            got += (top - acked) & 0xffffffff
            acked = top
            g.feed(g.seg(g.gport, port, g.gseq, acked, tcp.ACK, 700))
    assert got == 30000
    s.close()
    ls.close()


PARALLEL = r"""
import hashlib, socket, sys, threading
addr, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = bytes(range(256)) * (size // 256)
want = "%d %s" % (len(data), hashlib.sha256(data).hexdigest())
ok = []
def up():
    s = socket.create_connection((addr, 5027), timeout=60)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    ans = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        ans += d
    ok.append(ans.decode().strip() == want)
def down():
    s = socket.create_connection((addr, 5028), timeout=60)
    h = hashlib.sha256()
    m = 0
    while True:
        d = s.recv(1 << 16)
        if not d:
            break
        m += len(d)
        h.update(d)
    ok.append("%d %s" % (m, h.hexdigest()) == want)
ts = [threading.Thread(target=f) for f in (up, down) for _i in range(n)]
for t in ts:
    t.start()
for t in ts:
    t.join(90)
print(sum(ok), len(ts))
"""

SOURCE_SERVER = r"""
import socket, sys, threading
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(256)
data = bytes(range(256)) * (int(sys.argv[3]) // 256)
def serve(s):
    s.sendall(data)
    s.close()
while True:
    s, _ = ls.accept()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
"""


def test_parallel_transfers_both_ways_keep_every_byte(bed):
    ns, p = _attach(bed, ["-m", "1500"])
    size = 1 << 20
    bed.popen(bed.world, [PY, "-c", SUM_SERVER, bed.WORLD4, "5027"])
    bed.popen(bed.world, [PY, "-c", SOURCE_SERVER, bed.WORLD4, "5028",
                          str(size)])
    bed.wait_listen(bed.world, 5027)
    bed.wait_listen(bed.world, 5028)
    r = bed.run(ns, [PY, "-c", PARALLEL, bed.WORLD4, "40", str(size)],
                timeout=150)
    assert r.stdout.strip() == "80 80", r.stderr
    assert p.poll() is None


def test_syn_on_established_connection_gets_challenge_ack(netns,
                                                          monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    g.segs()
    g.feed(g.seg(g.gport, port, 777777, 0, tcp.SYN, 65535))
    segs = g.segs()
    assert len(segs) == 1 and segs[0].flags == tcp.ACK
    assert segs[0].ack == g.gseq
    # The guest, in SYN-SENT, resets with the ACK's number
    g.feed(g.seg(g.gport, port, segs[0].ack, 0, tcp.RST, 0))
    g.post()
    assert flow.flow_count() == 0
    s.close()
    ls.close()


def test_without_peek_offset_data_still_flows(netns, monkeypatch):
    """Kernels before 6.9 have no SO_PEEK_OFF for TCP: data already sent
    is peeked into a discard buffer instead."""
    g = Guest(monkeypatch=monkeypatch)
    monkeypatch.setattr(tcp, "peek_offset_cap", False)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    blob = os.urandom(200000)
    chunks = [blob[i:i + 50000] for i in range(0, len(blob), 50000)]
    got = {}
    acked = g.pseq
    deadline = time.monotonic() + 5
    rounds = 0
    while acked != (g.pseq + len(blob)) & 0xffffffff and \
            time.monotonic() < deadline:
        if chunks:
            s.sendall(chunks.pop(0))    # new data behind unacked data
        g.pump(0.01)
        rounds += 1
        for x in g.segs():
            if x.data:
                got[x.seq] = bytes(x.data)
        # Acknowledge only every other round: data stays in flight and
        # the next peek must skip it
        if rounds % 2 == 0:
            while acked in got:
                acked = (acked + len(got[acked])) & 0xffffffff
            g.feed(g.seg(g.gport, port, g.gseq, acked, tcp.ACK, 65535))
    data = b""
    seq = g.pseq
    while seq in got:
        data += got[seq]
        seq = (seq + len(got[seq])) & 0xffffffff
    assert data == blob
    s.close()
    ls.close()


def test_out_of_descriptors_resets_instead_of_spinning(netns, monkeypatch):
    import errno as _errno
    g = Guest(monkeypatch=monkeypatch)
    from pasta import fwd
    from pasta.epoll_ctl import EpollRef, epoll_add
    lsock = socket.socket()
    lsock.bind((SERVER4, 0))
    lsock.listen(4)
    lsock.setblocking(False)

    class OutOfFds:
        """The listening socket, as accept() sees it with no descriptor
        left: the first call fails with EMFILE."""
        calls = 0

        def accept(self):
            OutOfFds.calls += 1
            if OutOfFds.calls == 1:
                raise OSError(_errno.EMFILE, "Too many open files")
            return lsock.accept()

    ref = EpollRef(EpollType.TCP_LISTEN, lsock.fileno(),
                   listen=fwd.FwdListenRef(lsock.getsockname()[1],
                                           flow.PIF_HOST, 0),
                   data=OutOfFds())
    epoll_add(g.c, select.EPOLLIN, ref)
    cl = socket.create_connection(lsock.getsockname(), timeout=2)
    g.pump(0.1)
    with pytest.raises(ConnectionResetError):
        cl.recv(10)
    # Nothing left waiting on the listening socket, nothing leaked
    assert not select.select([lsock], [], [], 0)[0]
    assert flow.flow_count() == 0
    assert tcp._spare_fd >= 0
    lsock.close()


def test_guest_zero_window_is_probed_without_giving_up(netns, monkeypatch):
    g = Guest(monkeypatch=monkeypatch)
    monkeypatch.setattr(tcp, "RTO_INIT", 0.02)
    monkeypatch.setattr(tcp, "TCP_MAX_RETRIES", 2)
    ls, port = _server()
    g.establish(port)
    s, _ = ls.accept()
    g.feed(g.seg(g.gport, port, g.gseq, g.pseq, tcp.ACK, 0))
    g.segs()
    s.sendall(b"p" * 10000)
    probes = 0
    deadline = time.monotonic() + 3
    while probes < 6 and time.monotonic() < deadline:
        g.pump(0.01)
        for x in g.segs():
            assert not x.has(tcp.RST)
            if x.data:
                probes += 1
                # Still no room: acknowledge nothing, window zero
                g.feed(g.seg(g.gport, port, g.gseq, g.pseq, tcp.ACK, 0))
    assert probes >= 6 and g.conn() is not None
    # The application reads at last
    g.feed(g.seg(g.gport, port, g.gseq, g.pseq, tcp.ACK, 65535))
    got = b""
    deadline = time.monotonic() + 3
    while len(got) < 10000 and time.monotonic() < deadline:
        g.pump(0.01)
        for x in g.segs():
            if x.data and x.seq == (g.pseq + len(got)) & 0xffffffff:
                got += bytes(x.data)
                g.feed(g.seg(g.gport, port, g.gseq,
                             (g.pseq + len(got)) & 0xffffffff, tcp.ACK,
                             65535))
    assert got == b"p" * 10000
    s.close()
    ls.close()


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_offload_sends_super_frames_for_the_device_to_cut(netns,
                                                          monkeypatch, v6):
    g = Guest(v6=v6, vnet=True, monkeypatch=monkeypatch)
    ls, port = _server(v6)
    opts = struct.pack("!BBHBBBB", 2, 4, 1000, 1, 3, 3, 7)
    g.establish(port, opts=opts)
    s, _ = ls.accept()
    g.segs()
    s.sendall(b"s" * 10000)
    data = []
    deadline = time.monotonic() + 2
    while sum(len(x.data) for x in data) < 10000 and \
            time.monotonic() < deadline:
        g.pump()
        data += [x for x in g.segs() if x.data]
    big = data[0]
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, _n = \
        struct.unpack("<BBHHHHH", big.vnet)
    l3 = 40 if v6 else 20
    assert len(big.data) == 10000
    assert flags == 1 and gso_type == (4 if v6 else 1)
    assert gso_size == 1000 and hdr_len == 14 + l3 + 20
    assert csum_start == 14 + l3 and csum_offset == 16
    assert big.csum_ok          # the pseudo-header sum, for the kernel
    s.close()
    ls.close()
