# SPDX-License-Identifier: GPL-2.0-or-later
"""Hostile input: what the namespace sends, and what a user types.

Frames from the namespace are untrusted. These tests write garbage into
the tap interface from inside pasta's namespace (an AF_PACKET socket on
``h0``), then check that pasta is still alive and still serving: ICMP
echo to the world server, ARP after a neighbour flush, a DHCP lease, a
TCP transfer that arrives intact, and no Python traceback or "error
handling frame" in its log. Odd command lines must end with one line
naming the problem and a non-zero status, quickly, leaving nothing
behind; the lifecycle tests check how pasta ends with its command or
its namespace.

Everything runs in the bed's own namespaces (see bed.py). Destination
addresses of generated IP packets are always bed addresses; the
namespaces made by netns_add() have no resolver file, so nothing here
ever resolves a name.
"""

import hashlib
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from bed import Bed, needs_root  # noqa: F401  (Bed for type reference)

pytestmark = needs_root

G4 = socket.inet_aton(Bed.HOST4)
GW4 = socket.inet_aton(Bed.GW4)
W4 = socket.inet_aton(Bed.WORLD4)
G6 = socket.inet_pton(socket.AF_INET6, Bed.HOST6)
GW6 = socket.inet_pton(socket.AF_INET6, Bed.GW6)
W6 = socket.inet_pton(socket.AF_INET6, Bed.WORLD6)
BCAST = b"\xff" * 6
ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86dd

# Run inside pasta's namespace: send the frames stored in a file (each
# preceded by its 32-bit big-endian length) through an AF_PACKET socket.
# Pauses now and then so the tap queue does not simply overflow.
SENDER = r'''
import socket, struct, sys, time
ifname, path = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
data = open(path, "rb").read()
off = sent = err = 0
while off < len(data):
    n = struct.unpack_from("!I", data, off)[0]
    f = data[off + 4:off + 4 + n]
    off += 4 + n
    try:
        s.send(f)
        sent += 1
    except OSError:
        err += 1
    if (sent + err) % 100 == 0:
        time.sleep(0.01)
print(sent, err)
'''

# Run inside pasta's namespace: a TCP client whose connection is attacked
# with forged segments of the same four-tuple half way through.
#   argv: ifname port our_mac peer_mac part1_file part2_file
# The forged segments are built here, from the sequence numbers sniffed
# off our own connection.
TCP_INJECT = r'''
import socket, struct, sys, time
ifname, port, mac_ns, mac_pasta, p1, p2 = sys.argv[1:7]
port = int(port)
mac_ns = bytes.fromhex(mac_ns)
mac_pasta = bytes.fromhex(mac_pasta)
part1 = open(p1, "rb").read()
part2 = open(p2, "rb").read()
W4 = socket.inet_aton("203.0.113.10")
G4 = socket.inet_aton("198.51.100.2")

raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
raw.bind((ifname, 0))
raw.settimeout(0.2)
s = socket.create_connection(("203.0.113.10", port), timeout=10)
sport = s.getsockname()[1]
s.sendall(part1)
time.sleep(0.5)

seq = ack = None
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    try:
        f = raw.recv(70000)
    except socket.timeout:
        break
    if len(f) < 54 or f[12:14] != b"\x08\x00" or f[23] != 6:
        continue
    ihl = (f[14] & 15) * 4
    tot = struct.unpack_from("!H", f, 16)[0]
    t = 14 + ihl
    sp, dp, sq, ak, doff = struct.unpack_from("!HHIIB", f, t)
    if sp == sport and dp == port and f[30:34] == W4:
        seq = (sq + tot - ihl - (doff >> 4) * 4) & 0xffffffff
        ack = ak
if seq is None:
    print("no segment of our connection seen")
    sys.exit(3)

def seg(sq, ak, flags, payload=b"", doff=5, opts=b"", win=65535):
    th = struct.pack("!HHIIBBHHH", sport, port, sq & 0xffffffff,
                     ak & 0xffffffff, doff << 4, flags, win, 0, 0) + opts
    l4 = th + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000,
                     64, 6, 0, G4, W4)
    return mac_pasta + mac_ns + b"\x08\x00" + ip + l4

ACK, PSH, FIN, SYN, RST, URG = 0x10, 0x08, 0x01, 0x02, 0x04, 0x20
evil = b"EVIL" * 64
forged = [
    seg(seq + (1 << 31), ack, ACK | PSH, evil),
    seg(seq - (1 << 30), ack, ACK | PSH, evil),
    seg(seq + 3000000, ack, ACK | PSH, evil),
    seg(seq + (1 << 31), ack, ACK | FIN),
    seg(seq, ack + (1 << 31), ACK),
    seg(seq, ack - 100000, ACK),
    seg(seq, ack, ACK | PSH, evil, doff=0),
    seg(seq, ack, ACK | PSH, evil, doff=3),
    seg(seq, ack, ACK | PSH, b"", doff=15),
    seg(seq, ack, ACK, b"", doff=6, opts=b"\x02\x00\x00\x00"),
    seg(seq, ack, ACK, b"", doff=6, opts=b"\x08\x01\x00\x00"),
    seg(seq, ack, ACK, b"", doff=6, opts=b"\x05\xff\x00\x00"),
    seg(seq + (1 << 31), ack, SYN, evil),
    seg(seq + (1 << 31), ack, SYN | ACK),
    seg(seq + (1 << 31), ack, URG | ACK, evil),
]
for f in forged:
    raw.send(f)
    time.sleep(0.02)
time.sleep(0.3)

s.sendall(part2)
s.shutdown(socket.SHUT_WR)
s.settimeout(15)
try:
    while s.recv(4096):
        pass
except OSError as e:
    print("connection failed after forged segments:", e)
    sys.exit(4)
print("ok")
'''


# -- frame builders -------------------------------------------------------

def csum(data):
    """Internet checksum of *data*."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


class Frames:
    """Builders for frames from the namespace's MAC to pasta's."""

    def __init__(self, ns_mac, pasta_mac):
        self.src = ns_mac
        self.dst = pasta_mac

    def eth(self, proto, payload, dst=None, src=None):
        return (dst or self.dst) + (src or self.src) + \
            struct.pack("!H", proto) + payload

    def ip4(self, proto, l4, src=G4, dst=W4, frag=0x4000, ihl=5, tot=None,
            opts=b"", ver=4):
        tot = 20 + len(opts) + len(l4) if tot is None else tot
        hdr = struct.pack("!BBHHHBBH4s4s", (ver << 4) | ihl, 0,
                          tot & 0xffff, 7, frag, 64, proto, 0, src, dst)
        hdr += opts
        hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
        return self.eth(ETH_P_IP, hdr + l4)

    def ip6(self, nh, l4, src=G6, dst=W6, plen=None, ver=6):
        plen = len(l4) if plen is None else plen
        return self.eth(ETH_P_IPV6, struct.pack(
            "!IHBB16s16s", ver << 28, plen & 0xffff, nh, 64, src, dst) + l4)


def tcp_hdr(sport=40000, dport=9, seq=1, ack=0, flags=0x02, doff=5,
            opts=b"", payload=b"", win=65535):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4,
                       flags, win, 0, 0) + opts + payload


def udp_hdr(sport=40000, dport=9, payload=b"x", ulen=None):
    ulen = 8 + len(payload) if ulen is None else ulen
    return struct.pack("!HHHH", sport, dport, ulen & 0xffff, 0) + payload


def icmp_echo(ident=1, seq=1, payload=b"ping", typ=8):
    m = struct.pack("!BBHHH", typ, 0, 0, ident, seq) + payload
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def bootp(options, op=1, magic=b"\x63\x82\x53\x63", chaddr=b"\x02" * 6):
    hdr = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", op, 1, 6, 0,
                      0x12345678, 0, 0x8000, bytes(4), bytes(4), bytes(4),
                      bytes(4), chaddr, bytes(64), bytes(128))
    return hdr + magic + options


# -- bed helpers ----------------------------------------------------------

def ns_mac(bed, ns):
    r = bed.run(ns, ["cat", "/sys/class/net/h0/address"], check=True)
    return bytes.fromhex(r.stdout.strip().replace(":", ""))


def pasta_mac(proc):
    with open(proc.log_path) as f:
        m = re.search(r"host: ([0-9a-f:]{17})", f.read())
    return bytes.fromhex(m.group(1).replace(":", "")) if m else BCAST


def attached(bed, args=()):
    """A namespace with our pasta attached; returns (ns, proc, Frames)."""
    ns = bed.netns_add()
    proc = bed.pasta_attach(ns, args)
    return ns, proc, Frames(ns_mac(bed, ns), pasta_mac(proc))


def send_frames(bed, ns, frames, timeout=60):
    """Write *frames* into h0 from inside *ns*; returns (sent, errors)."""
    path = os.path.join(bed.tmp, "frames-%d" % time.monotonic_ns())
    with open(path, "wb") as f:
        for fr in frames:
            f.write(struct.pack("!I", len(fr)) + fr)
    r = bed.run(ns, [sys.executable, "-c", SENDER, "h0", path],
                timeout=timeout)
    os.unlink(path)
    assert r.returncode == 0, r.stderr
    sent, err = (int(x) for x in r.stdout.split())
    return sent, err


def rss_kib(proc):
    with open("/proc/%d/status" % proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pasta (PID %d)" % proc.pid)


def log_text(proc):
    with open(proc.log_path, errors="replace") as f:
        return f.read()


def assert_clean_log(proc):
    text = log_text(proc)
    assert "Traceback" not in text, text[-3000:]
    assert "error handling frame from guest" not in text, \
        [line for line in text.splitlines() if "error handling" in line]


def assert_serving(bed, ns, proc, tcp=True, port=7001):
    """pasta is alive and answers ARP, ICMP, DHCP, and carries TCP."""
    time.sleep(0.3)
    assert proc.poll() is None, "pasta exited with %s: %s" % (
        proc.returncode, log_text(proc)[-3000:])

    bed.run(ns, ["ip", "neigh", "flush", "dev", "h0"])
    r = bed.run(ns, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                     Bed.WORLD4], timeout=15)
    assert r.returncode == 0, "no ICMP echo reply: %s" % r.stdout
    r = bed.run(ns, ["ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                     Bed.WORLD6], timeout=15)
    assert r.returncode == 0, "no ICMPv6 echo reply: %s" % r.stdout
    r = bed.run(ns, ["udhcpc", "-i", "h0", "-n", "-q", "-f", "-s",
                     "/bin/true", "-t", "3", "-T", "1"], timeout=15)
    assert r.returncode == 0, "no DHCP lease: %s" % r.stderr

    if tcp:
        blob, digest = bed.make_blob(300000, "blob-%d" % port)
        sink = bed.tcp_sink(bed.world, port, bind=Bed.WORLD4)
        r = bed.run(ns, ["socat", "-u", "FILE:" + blob,
                         "TCP4:%s:%d" % (Bed.WORLD4, port)], timeout=20)
        assert r.returncode == 0, r.stderr
        assert sink.wait(20) == (300000, digest)

    assert proc.poll() is None
    assert_clean_log(proc)


# -- 1. crafted garbage, by layer -----------------------------------------

def l2_l3_garbage(fr):
    """Truncated and lying Ethernet, IPv4 and IPv6 headers."""
    out = []
    tcp = tcp_hdr()
    udp = udp_hdr()
    for n in range(0, 60, 3):                       # truncated anything
        for proto in (ETH_P_IP, ETH_P_IPV6, ETH_P_ARP):
            out.append(fr.eth(proto, bytes(n)))
    for proto in (0x0000, 0x0005, 0x05ff, 0x8100, 0x88a8, 0x88cc, 0x8847,
                  0x8035, 0xffff):
        out.append(fr.eth(proto, fr.ip4(17, udp)[14:]))
    out.append(fr.eth(ETH_P_IP, b"", dst=BCAST))
    for ihl in range(16):
        out.append(fr.ip4(6, tcp, ihl=ihl))
        out.append(fr.ip4(17, udp, ihl=ihl, opts=bytes(max(0, ihl - 5) * 4)))
    for tot in (0, 1, 19, 20, 21, 39, 40, 41, 1000, 65535):
        out.append(fr.ip4(6, tcp, tot=tot))
        out.append(fr.ip4(17, udp, tot=tot))
        out.append(fr.ip4(1, icmp_echo(), tot=tot))
    out.append(fr.ip4(6, tcp, ver=6))
    out.append(fr.ip4(6, tcp, ver=0))
    for frag in (0x2000, 0x0001, 0x2001, 0x1fff, 0x3fff, 0x8000, 0xffff):
        out.append(fr.ip4(17, udp_hdr(payload=b"f" * 100), frag=frag))
        out.append(fr.ip4(6, tcp, frag=frag))
    # options: record route pointing past the header, zero-length option
    out.append(fr.ip4(17, udp, ihl=6, opts=b"\x07\xff\x04\x00"))
    out.append(fr.ip4(17, udp, ihl=6, opts=b"\x44\x00\x00\x00"))
    for proto in (0, 2, 4, 41, 47, 50, 58, 132, 136, 255):
        out.append(fr.ip4(proto, bytes(40)))
    # addresses: broadcast, multicast, zero, ours, the gateway
    for dst in (b"\xff" * 4, b"\xe0\0\0\1", bytes(4), G4, GW4):
        out.append(fr.ip4(17, udp, dst=dst))
        out.append(fr.ip4(1, icmp_echo(), dst=dst))
        out.append(fr.ip4(6, tcp, dst=dst))
    out.append(fr.ip4(17, udp, src=b"\xff" * 4))
    out.append(fr.ip4(17, udp, src=b"\xe0\0\0\1"))

    # IPv6 payload length lies
    for plen in (0, 1, 7, 8, 19, 21, 100, 1500, 65535):
        out.append(fr.ip6(6, tcp, plen=plen))
        out.append(fr.ip6(17, udp, plen=plen))
        out.append(fr.ip6(58, icmp_echo(typ=128), plen=plen))
    out.append(fr.ip6(6, tcp, ver=4))
    out.append(fr.ip6(6, tcp, ver=15))
    # extension header chains: long, looping, running past the end
    hbh = lambda nh, ln=0: bytes([nh, ln]) + bytes(6 + ln * 8)  # noqa
    for n in (1, 10, 100, 180):
        out.append(fr.ip6(0, hbh(0) * (n - 1) + hbh(17) + udp))
        out.append(fr.ip6(60, hbh(60) * n))           # never ends
        out.append(fr.ip6(43, hbh(43) * n + hbh(6) + tcp))
    for ln in (1, 50, 255):
        out.append(fr.ip6(0, hbh(17, 0)[:2] + bytes([0]) + udp,
                          plen=None))
        out.append(fr.ip6(0, bytes([17, ln]) + bytes(6) + udp))
    out.append(fr.ip6(44, bytes([17, 0, 0, 1, 0, 0, 0, 1]) + udp))  # frag
    out.append(fr.ip6(44, bytes([17, 0, 0, 8, 0, 0, 0, 1]) + udp))
    out.append(fr.ip6(44, bytes([6, 0, 0, 0, 0, 0, 0, 1]) + tcp))
    out.append(fr.ip6(50, bytes(40)))                   # ESP
    out.append(fr.ip6(51, bytes([6, 255]) + bytes(30)))  # AH past the end
    out.append(fr.ip6(51, bytes([6, 1]) + bytes(10) + tcp))
    out.append(fr.ip6(59, bytes(40)))
    out.append(fr.ip6(0, bytes([59, 0]) + bytes(6)))
    for nh in (0, 4, 41, 47, 132, 135, 139, 140, 253, 254, 255):
        out.append(fr.ip6(nh, bytes(2)))
        out.append(fr.ip6(nh, bytes([nh, 0]) + bytes(6)))
    for dst in (b"\xff\x02" + bytes(13) + b"\x01", bytes(16),
                bytes(15) + b"\x01", G6, GW6,
                bytes(10) + b"\xff\xff" + W4):
        out.append(fr.ip6(17, udp, dst=dst))
        out.append(fr.ip6(6, tcp, dst=dst))
        out.append(fr.ip6(58, icmp_echo(typ=128), dst=dst))
    out.append(fr.ip6(17, udp, src=b"\xff\x02" + bytes(13) + b"\x01"))
    out.append(fr.ip6(17, udp, src=bytes(10) + b"\xff\xff" + G4))
    return out


def tcp_garbage(fr):
    """TCP segments no well-behaved stack sends."""
    out = []
    for doff in range(16):
        out.append(fr.ip4(6, tcp_hdr(doff=doff, payload=b"d" * 10)))
        out.append(fr.ip6(6, tcp_hdr(doff=doff, payload=b"d" * 10)))
        out.append(fr.ip4(6, tcp_hdr(doff=doff, flags=0x10)))
    bad_opts = [b"\x02\x00\x00\x00", b"\x02\x01\x00\x00", b"\x02\xff\x05\xb4",
                b"\x03\x00\x00\x00", b"\x03\x03\xff\x00", b"\x04\x00\x00\x00",
                b"\x08\x0a" + bytes(2), b"\x05\x00\x00\x00",
                b"\x1e\x00\x00\x00",
                b"\x02", b"\x01" * 40, b"\xfe\x02" * 20, b"\x02\x04\x00\x00"]
    for i, opts in enumerate(bad_opts):
        padded = opts + bytes(-len(opts) % 4)
        doff = 5 + len(padded) // 4
        if doff > 15:
            continue
        for flags in (0x02, 0x12, 0x10):
            out.append(fr.ip4(6, tcp_hdr(sport=41000 + i, flags=flags,
                                         doff=doff, opts=padded)))
            out.append(fr.ip6(6, tcp_hdr(sport=41000 + i, flags=flags,
                                         doff=doff, opts=padded)))
    # options claimed by the data offset but cut off by tot_len
    out.append(fr.ip4(6, tcp_hdr(doff=15, opts=b"\x02\x04\x05\xb4")))
    # SYN with data, odd flag mixes, segments for unknown connections
    for i, flags in enumerate((0x02, 0x03, 0x06, 0x07, 0x12, 0x14, 0x11,
                               0x01, 0x04, 0x10, 0x18, 0x3f, 0xff, 0x00,
                               0x20, 0x40, 0x80, 0xc2)):
        for payload in (b"", b"data" * 50):
            out.append(fr.ip4(6, tcp_hdr(sport=42000 + i, dport=7999,
                                         flags=flags, payload=payload,
                                         seq=0xfffffff0, ack=0xffffffff)))
            out.append(fr.ip6(6, tcp_hdr(sport=42000 + i, dport=7999,
                                         flags=flags, payload=payload)))
    # ports 0, window 0, to the gateway (mapped to the host's loopback)
    for sp, dp in ((0, 80), (40000, 0), (0, 0), (65535, 65535)):
        out.append(fr.ip4(6, tcp_hdr(sport=sp, dport=dp)))
        out.append(fr.ip6(6, tcp_hdr(sport=sp, dport=dp)))
    out.append(fr.ip4(6, tcp_hdr(win=0, payload=b"x")))
    out.append(fr.ip4(6, tcp_hdr(dport=22), dst=GW4))
    out.append(fr.ip6(6, tcp_hdr(dport=22), dst=GW6))
    # the same SYN many times, then data and FIN for it
    for _ in range(20):
        out.append(fr.ip4(6, tcp_hdr(sport=43000, dport=7999)))
    out.append(fr.ip4(6, tcp_hdr(sport=43000, dport=7999, flags=0x18,
                                 seq=2, payload=b"late")))
    out.append(fr.ip4(6, tcp_hdr(sport=43000, dport=7999, flags=0x11,
                                 seq=6)))
    return out


def udp_icmp_garbage(fr):
    """UDP length lies, DHCP/DHCPv6 options past the end, bad ICMP/NDP."""
    out = []
    for ulen in (0, 1, 7, 8, 9, 100, 65535):
        out.append(fr.ip4(17, udp_hdr(payload=b"abc", ulen=ulen)))
        out.append(fr.ip6(17, udp_hdr(payload=b"abc", ulen=ulen)))
        out.append(fr.ip4(17, udp_hdr(68, 67, bootp(b"\x35\x01\x01\xff"),
                                      ulen=ulen), dst=b"\xff" * 4))
        out.append(fr.ip6(17, udp_hdr(546, 547, b"\x01" + bytes(3),
                                      ulen=ulen)))
    for sp, dp in ((0, 9), (9, 0), (0, 0), (53, 53), (67, 68), (547, 546)):
        out.append(fr.ip4(17, udp_hdr(sp, dp)))
        out.append(fr.ip6(17, udp_hdr(sp, dp)))

    # DHCP
    dopts = [b"", b"\xff", b"\x35", b"\x35\x01", b"\x35\x00\xff",
             b"\x35\x01\x01\x37", b"\x35\x01\x01\x37\xff\x01",
             b"\x35\x01\x01\x37\x00\xff", b"\x35\x01\x03\x32\x04\x01",
             b"\x35\x01\x01\x34\x01\x03\xff", b"\x35\x01\x08\xff",
             b"\x35\x01\x07\xff", b"\x35\x01\xff\xff",
             b"\x00" * 300, b"\x35\x01\x01" + b"\x37\xff" + bytes(255),
             b"\x35\x01\x01\x50\x00\xff", b"\x3d\xff\x01", b"\x0c\x00\xff",
             b"\x35\x01\x01" + b"\x37\x01\x37" * 100 + b"\xff"]
    for opts in dopts:
        out.append(fr.ip4(17, udp_hdr(68, 67, bootp(opts)), src=bytes(4),
                          dst=b"\xff" * 4))
    out.append(fr.ip4(17, udp_hdr(68, 67, bootp(b"\x35\x01\x01\xff",
                                                op=2))))
    out.append(fr.ip4(17, udp_hdr(68, 67, bootp(b"\x35\x01\x01\xff",
                                                magic=b"abcd"))))
    out.append(fr.ip4(17, udp_hdr(68, 67, bootp(b"")[:100])))
    out.append(fr.ip4(17, udp_hdr(68, 67, b"")))
    # DHCPv6: message type, transaction id, then options
    d6 = [b"", b"\x01", b"\x01\x00\x00\x01", b"\x01\x00\x00\x01\x00\x01",
          b"\x01\x00\x00\x01\x00\x01\xff\xff", b"\x01\x00\x00\x01" +
          b"\x00\x03\x00\x0c" + bytes(12), b"\x01\x00\x00\x01" +
          b"\x00\x03\x00\x10" + bytes(12) + b"\x00\x05\xff\xff",
          b"\x03\x00\x00\x01\x00\x01\x00\x00\x00\x02\x00\x00",
          b"\x0b\x00\x00\x01\x00\x06\x00\x01\x00",
          b"\x05\x00\x00\x01" + b"\x00\x00\x00\x00" * 200,
          b"\x01\x00\x00\x01\x00\x19\x00\x04" + bytes(4),
          b"\x0c" + bytes(40), b"\xff" * 40]
    ll = b"\xfe\x80" + bytes(13) + b"\x02"
    allsrv = b"\xff\x02" + bytes(11) + b"\x01\x00\x02"
    for m in d6:
        out.append(fr.ip6(17, udp_hdr(546, 547, m), src=ll, dst=allsrv))

    # ICMP
    for n in range(0, 12):
        out.append(fr.ip4(1, icmp_echo()[:n]))
    for typ in (0, 3, 5, 11, 13, 17, 42, 255):
        out.append(fr.ip4(1, icmp_echo(typ=typ)))
    out.append(fr.ip4(1, icmp_echo(ident=0)))
    out.append(fr.ip4(1, icmp_echo(ident=65535, seq=65535)))
    # ICMPv6, NDP with zero-length and oversized options
    for n in range(0, 10):
        out.append(fr.ip6(58, icmp_echo(typ=128)[:n]))
    for typ in (1, 2, 3, 4, 129, 130, 131, 143, 255):
        out.append(fr.ip6(58, icmp_echo(typ=typ)))
    allr = b"\xff\x02" + bytes(13) + b"\x02"
    sn = b"\xff\x02" + bytes(9) + b"\x01\xff" + GW6[-3:]
    for opt in (b"\x01\x00" + bytes(6), b"\x01\xff" + bytes(6), b"\x01",
                b"\x00\x00", b"\x05\x00" + bytes(6), b"\x01\x01\x02\x02",
                b"\x0e\x00" + bytes(6)):
        out.append(fr.ip6(58, b"\x85\x00\x00\x00" + bytes(4) + opt,
                          src=ll, dst=allr))                      # RS
        out.append(fr.ip6(58, b"\x87\x00\x00\x00" + bytes(4) + GW6 + opt,
                          src=ll, dst=sn))                        # NS
        out.append(fr.ip6(58, b"\x86\x00\x00\x00" + bytes(12) + opt,
                          src=ll, dst=allr))                      # RA
        out.append(fr.ip6(58, b"\x89\x00\x00\x00" + bytes(36) + opt,
                          src=ll, dst=allr))                      # redirect
    for n in (4, 8, 12, 20, 23):
        out.append(fr.ip6(58, (b"\x87\x00\x00\x00" + bytes(4) + GW6)[:n],
                          src=ll, dst=sn))
        out.append(fr.ip6(58, (b"\x85\x00\x00\x00" + bytes(4))[:n],
                          src=ll, dst=allr))
    out.append(fr.ip6(58, b"\x87\x00\x00\x00" + bytes(4) + GW6,
                      src=bytes(16), dst=sn))                     # DAD NS
    out.append(fr.ip6(58, b"\x88\x00\x00\x00" + bytes(4) + G6, src=ll,
                      dst=b"\xff\x02" + bytes(13) + b"\x01"))     # NA

    # ARP with odd lengths and operations
    def arp(hrd=1, pro=0x0800, hln=6, pln=4, op=1, tail=None):
        body = struct.pack("!HHBBH", hrd, pro, hln, pln, op)
        if tail is None:
            tail = fr.src + G4 + bytes(6) + GW4
        return fr.eth(ETH_P_ARP, body + tail, dst=BCAST)
    for hln, pln in ((0, 0), (0, 4), (6, 0), (255, 255), (6, 16), (16, 4),
                     (1, 1), (8, 4)):
        out.append(arp(hln=hln, pln=pln))
        out.append(arp(hln=hln, pln=pln, tail=bytes(hln * 2 + pln * 2)))
    for op in (0, 2, 3, 8, 0xffff):
        out.append(arp(op=op))
    for hrd, pro in ((0, 0x0800), (6, 0x0800), (1, 0x86dd), (1, 0)):
        out.append(arp(hrd=hrd, pro=pro))
    for n in (0, 4, 8, 20, 27):
        out.append(arp(tail=b"")[:14 + n])
    out.append(arp(tail=fr.src + G4 + bytes(6) + G4))      # announcement
    out.append(arp(tail=fr.src + bytes(4) + bytes(6) + GW4))  # probe
    out.append(arp(tail=fr.src + G4 + bytes(6) + b"\xff" * 4))
    return out


@pytest.mark.parametrize("batch", [l2_l3_garbage, tcp_garbage,
                                   udp_icmp_garbage])
def test_crafted_garbage_leaves_pasta_serving(bed, batch):
    ns, proc, fr = attached(bed)
    frames = batch(fr)

    sent, _err = send_frames(bed, ns, frames)

    assert sent > len(frames) // 2
    assert_serving(bed, ns, proc)


def test_frames_up_to_65535_bytes_leave_pasta_serving(bed):
    ns, proc, fr = attached(bed)
    bed.run(ns, ["ip", "link", "set", "h0", "mtu", "65521"], check=True)
    big = []
    # the tap device takes an MTU of 65521: frames of 65535 bytes
    for less in (0, 1, 7):
        v4 = 65521 - 20 - less
        v6 = 65521 - 40 - less
        big.append(fr.ip4(17, udp_hdr(payload=b"u" * (v4 - 8))))
        big.append(fr.ip4(6, tcp_hdr(flags=0x02, payload=b"t" * (v4 - 20))))
        big.append(fr.ip4(6, tcp_hdr(flags=0x10, payload=b"t" * (v4 - 20))))
        big.append(fr.ip4(1, icmp_echo(payload=b"i" * (v4 - 8))))
        big.append(fr.ip6(17, udp_hdr(payload=b"u" * (v6 - 8))))
        big.append(fr.ip6(6, tcp_hdr(flags=0x18, payload=b"t" * (v6 - 20))))
        big.append(fr.ip6(58, icmp_echo(typ=128, payload=b"i" * (v6 - 8))))
    # headers that claim the maximum, on frames that do not carry it
    big.append(fr.ip4(17, udp_hdr(payload=b"u" * 1000), tot=65535))
    big.append(fr.ip6(17, udp_hdr(payload=b"u" * 1000), plen=65535))
    # IPv6 jumbogram: payload length 0 and a jumbo payload option
    jumbo = bytes([17, 0, 0xc2, 4]) + struct.pack("!I", 70000)
    big.append(fr.ip6(0, jumbo + udp_hdr(payload=b"j" * 60000), plen=0))
    big.append(fr.eth(ETH_P_IP, b"\x45" + bytes(65521)))   # too long
    # the largest frames the interface takes, of garbage
    big.append(fr.eth(ETH_P_IP, b"\x45" + bytes(65520)))
    big.append(fr.eth(ETH_P_IPV6, b"\x60" + bytes(65520)))
    big.append(fr.eth(0x1234, bytes(65521)))

    sent, err = send_frames(bed, ns, big)

    assert (sent, err) == (len(big) - 1, 1)
    bed.run(ns, ["ip", "link", "set", "h0", "mtu", str(Bed.MTU)])
    assert_serving(bed, ns, proc)


def test_forged_segments_do_not_corrupt_a_tcp_stream(bed):
    ns, proc, fr = attached(bed)
    port = 7100
    p1, d1 = bed.make_blob(100000, "part1")
    p2, d2 = bed.make_blob(100000, "part2")
    with open(p1, "rb") as a, open(p2, "rb") as b:
        want = hashlib.sha256(a.read() + b.read()).hexdigest()
    sink = bed.tcp_sink(bed.world, port, bind=Bed.WORLD4)

    r = bed.run(ns, [sys.executable, "-c", TCP_INJECT, "h0", str(port),
                     fr.src.hex(), fr.dst.hex(), p1, p2], timeout=40)

    assert r.returncode == 0, r.stdout + r.stderr
    assert sink.wait(20) == (200000, want)
    assert_serving(bed, ns, proc, port=7101)


# -- 2. random fuzzing ----------------------------------------------------

def random_frames(fr, rnd, count):
    """*count* frames: mutated valid frames and plain noise.

    Whatever comes out, an IPv4 or IPv6 destination address is put back
    to one inside the bed, so nothing is ever aimed elsewhere.
    """
    ll = b"\xfe\x80" + bytes(13) + b"\x02"
    templates = [
        fr.ip4(6, tcp_hdr(sport=50000, dport=7999)),
        fr.ip4(6, tcp_hdr(flags=0x18, payload=b"p" * 40)),
        fr.ip4(17, udp_hdr(payload=b"q" * 30)),
        fr.ip4(17, udp_hdr(68, 67, bootp(b"\x35\x01\x01\x37\x03\x01\x03\x06"
                                         b"\xff")), src=bytes(4),
               dst=b"\xff" * 4),
        fr.ip4(1, icmp_echo()),
        fr.ip6(6, tcp_hdr(sport=50001, dport=7999)),
        fr.ip6(17, udp_hdr(payload=b"r" * 30)),
        fr.ip6(17, udp_hdr(546, 547, b"\x01\x00\x00\x01\x00\x01\x00\x0a"
                           b"\x00\x03\x00\x01" + fr.src + b"\x00\x03\x00\x0c"
                           + bytes(12)), src=ll,
               dst=b"\xff\x02" + bytes(11) + b"\x01\x00\x02"),
        fr.ip6(58, icmp_echo(typ=128)),
        fr.ip6(58, b"\x85\x00\x00\x00" + bytes(4) + b"\x01\x01" + fr.src,
               src=ll, dst=b"\xff\x02" + bytes(13) + b"\x02"),
        fr.ip6(58, b"\x87\x00\x00\x00" + bytes(4) + GW6 + b"\x01\x01" +
               fr.src, src=ll,
               dst=b"\xff\x02" + bytes(9) + b"\x01\xff" + GW6[-3:]),
        fr.ip6(0, bytes([17, 0]) + bytes(6) + udp_hdr()),
        fr.eth(ETH_P_ARP, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) +
               fr.src + G4 + bytes(6) + GW4, dst=BCAST),
    ]
    dsts4 = (W4, GW4, G4, b"\xff" * 4)
    dsts6 = (W6, GW6, G6)
    out = []
    for _ in range(count):
        kind = rnd.random()
        if kind < 0.1:
            f = bytearray(rnd.getrandbits(8) for _ in
                          range(rnd.randrange(0, 200)))
        else:
            f = bytearray(rnd.choice(templates))
            for _ in range(rnd.randrange(1, 6)):
                op = rnd.random()
                if op < 0.6 and len(f) > 14:
                    f[rnd.randrange(14, len(f))] = rnd.getrandbits(8)
                elif op < 0.8:
                    del f[rnd.randrange(14, max(15, len(f))):]
                else:
                    f += bytes(rnd.getrandbits(8) for _ in
                               range(rnd.randrange(1, 64)))
        if len(f) >= 14 and rnd.random() < 0.5:
            f[0:6] = fr.dst
            f[6:12] = fr.src
        if len(f) >= 14:
            proto = (f[12] << 8) | f[13]
            if proto == ETH_P_IP and len(f) >= 34:
                f[30:34] = rnd.choice(dsts4)
            elif proto == ETH_P_IPV6 and len(f) >= 54:
                if f[38] != 0xff and f[38:40] != b"\xfe\x80":
                    f[38:54] = rnd.choice(dsts6)
        out.append(bytes(f))
    return out


def test_random_frames_leave_pasta_serving_with_bounded_memory(bed):
    ns, proc, fr = attached(bed)
    rnd = random.Random(20240607)
    assert_serving(bed, ns, proc, tcp=False)
    send_frames(bed, ns, random_frames(fr, rnd, 3000))
    time.sleep(0.5)
    before = rss_kib(proc)

    deadline = time.monotonic() + 40
    rounds = 0
    while rounds < 3 and time.monotonic() < deadline:
        send_frames(bed, ns, random_frames(fr, rnd, 3000))
        rounds += 1
    time.sleep(0.5)
    after = rss_kib(proc)

    assert rounds >= 2
    assert after - before < 16 * 1024, (before, after)
    assert_serving(bed, ns, proc)


def test_many_flows_from_the_namespace_keep_memory_bounded(bed):
    ns, proc, fr = attached(bed)
    frames = []
    for i in range(2000):
        frames.append(fr.ip4(17, udp_hdr(sport=10000 + i, dport=7999)))
        frames.append(fr.ip4(6, tcp_hdr(sport=10000 + i, dport=7999)))
        frames.append(fr.ip6(17, udp_hdr(sport=10000 + i, dport=7999)))
    send_frames(bed, ns, frames[:600])
    time.sleep(0.5)
    before = rss_kib(proc)

    send_frames(bed, ns, frames[600:])
    time.sleep(1)
    after = rss_kib(proc)

    assert after - before < 48 * 1024, (before, after)
    assert_serving(bed, ns, proc)


# -- 3. command line ------------------------------------------------------

# sleep argument that marks the commands of this worker process
SENTINEL = "31.%d" % os.getpid()


def _stray_sentinels():
    """PIDs of processes running our sentinel command (read-only scan)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", SENTINEL.encode()]:
            found.append(int(pid))
    return found


def _free_pid():
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for pid in range(pid_max - 1, 300, -1):
        if not os.path.exists("/proc/%d" % pid):
            return pid
    raise AssertionError("no free PID")


def _ns_pids(ns):
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                       text=True, timeout=10)
    return r.stdout.split()


BAD_ARGS = [
    (["-m", "65522"], "65522"),
    (["-m", ""], "MTU"),
    (["-m", "9" * 100000], "MTU"),
    (["-m", "-1"], "MTU"),
    (["-m", "0x"], "MTU"),
    (["--mtu=65522"], "65522"),
    (["--mtu="], "MTU"),
    (["-m=1500"], "MTU"),
    (["--mtu", "--"], "MTU"),
    (["-a", "198.51.100.7/33"], "33"),
    (["-a", "198.51.100.7", "-n", "33"], "33"),
    (["-a", ""], "address"),
    (["-a", "1.2.3.4" * 15000], "address"),
    (["-i", "nonexistent0"], "nonexistent0"),
    (["-i", "\udcff\udcfe"], "interface"),
    (["-I", "x" * 40], "interface"),
    (["-I", ""], "interface"),
    (["--dns", ""], "DNS"),
    (["--dns", "\udcff"], "DNS"),
    (["-t", ""], "port"),
    (["-t", "70000"], "70000"),
    (["-t", "1-2-3"], "1-2-3"),
    (["-t", "\udcff"], "port"),
    (["-u", "abc"], "abc"),
    (["--runas", "nosuchuser_xyz"], "nosuchuser_xyz"),
    (["--runas", "1:2:3"], "runas"),
    (["--runas", "\udcff"], "runas"),
    (["--mac-addr", "zz"], "zz"),
    (["--config-net=yes"], "config-net"),
    (["--bogus-option"], "bogus-option"),
    (["-P", "/nonexistent/dir/pid"], "/nonexistent/dir/pid"),
    (["--log-size", "x"], "log-size"),
    (["--fqdn", "a" * 300], "FQDN"),

]


@pytest.mark.parametrize("args, check", [
    (["-I", "\udcff\udcfe"],
     "ip -o link show dev $(printf '\\377\\376') >/dev/null"),
    (["-H", "\udcff" * 3], "test \"$(hostname)\" = \"$(printf "
     "'\\377\\377\\377')\""),
], ids=["-I bytes", "-H bytes"])
def test_names_that_are_not_utf8_are_used_as_bytes(bed, args, check):
    # as the C implementation does: names are bytes to the kernel
    r = bed.pasta(["--config-net"] + args, check, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, word", BAD_ARGS,
                         ids=[repr(a)[:40] for a, _ in BAD_ARGS])
def test_bad_option_gives_one_clear_line(bed, args, word):
    t0 = time.monotonic()
    try:
        r = bed.pasta(["--config-net"] + args, ["sleep", SENTINEL],
                      timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail("pasta accepted %r and ran the command" % (args,))
    took = time.monotonic() - t0

    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode > 0, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    # getopt errors are followed by the usage text; the first line says it
    if "usage" not in r.stderr.lower():
        assert len(lines) == 1, r.stderr[-2000:]
    assert word.lower() in lines[0].lower(), lines[0][:500]
    assert took < 10
    assert _stray_sentinels() == []
    assert _ns_pids(bed.host) == []


def _namespace_args(bed):
    plain = os.path.join(bed.tmp, "plain")
    with open(plain, "w") as f:
        f.write("not a namespace\n")
    return {
        "plain file": (["--netns", plain], "plain"),
        "directory": (["--netns", bed.tmp], bed.tmp),
        "missing path": (["--netns", "/nonexistent/x"], "/nonexistent/x"),
        "missing name": (["--netns", "nosuchname"], "nosuchname"),
        "non-UTF-8 path": (["--netns", "/tmp/\udcff"], "/tmp/"),
        "empty": (["--netns", ""], "netns"),
        "too long": (["--netns", "x" * 5000], "too long"),
        "free PID": ([str(_free_pid())], "/proc/"),
        "PID 0": (["0"], "0"),
        "netns and PID": (["--netns", "nosuchname", "1"], "PID"),
    }


@pytest.mark.parametrize("case", ["plain file", "directory", "missing path",
                                  "missing name", "non-UTF-8 path", "empty",
                                  "too long", "free PID", "PID 0",
                                  "netns and PID"])
def test_bad_namespace_target_gives_one_clear_line(bed, case):
    args, word = _namespace_args(bed)[case]
    t0 = time.monotonic()
    r = bed.pasta(["--config-net", "-f"] + args, None, timeout=20)
    took = time.monotonic() - t0

    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode > 0, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1, r.stderr[-2000:]
    assert word in lines[0], lines[0][:500]
    assert took < 10
    assert _ns_pids(bed.host) == []


@pytest.mark.parametrize("cmd, word", [
    ([""], "command"),
    (["/nonexistent/cmd"], "command"),
    (["\udcff"], "command"),
    (["--", "--mtu"], "command"),
], ids=["empty", "missing", "non-UTF-8", "dashes"])
def test_command_that_cannot_start_gives_one_clear_line(bed, cmd, word):
    r = bed.pasta(["--config-net"], cmd, timeout=20)

    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode > 0
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1, r.stderr
    assert word in lines[0].lower()
    assert _ns_pids(bed.host) == []


# /sys in a spawned namespace still shows the parent's interfaces (nothing
# remounts it), so the MTU is read through netlink

def test_v4_mapped_address_means_the_ipv4_address(bed):
    # as current upstream reads -a (older releases refused it)
    r = bed.pasta(["--config-net", "-a", "::ffff:198.51.100.7"],
                  "ip -o -4 addr show h0")
    assert r.returncode == 0, r.stderr
    assert " inet 198.51.100.7/24 " in r.stdout


def test_mtu_65521_is_the_largest_accepted(bed):
    r = bed.pasta(["--config-net", "-m", "65521"],
                  "ip -o link show h0 | sed 's/.* mtu \\([0-9]*\\).*/\\1/'")

    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "65521"


def test_repeated_option_last_one_wins(bed):
    r = bed.pasta(["--config-net", "-m", "1500", "-m", "1400"],
                  "ip -o link show h0 | sed 's/.* mtu \\([0-9]*\\).*/\\1/'")

    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1400"


# -- 4. lifecycle ---------------------------------------------------------

def test_pasta_ends_with_a_command_that_exits_at_once(bed):
    t0 = time.monotonic()
    r = bed.pasta(["--config-net"], "exit 7", timeout=20)

    assert r.returncode == 7, r.stderr
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in r.stderr
    assert _ns_pids(bed.host) == []


def _descendants(pid):
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = _children(parent)
        found += kids
        todo += kids
    return found


def _command_of(proc, timeout=15):
    """PID of the sentinel command pasta *proc* spawned (bounded wait):
    the process running ``sleep SENTINEL`` itself, not one of pasta's own
    processes, whose command lines name the sentinel too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for kid in _descendants(proc.pid):
            try:
                with open("/proc/%d/cmdline" % kid, "rb") as f:
                    if f.read().split(b"\0")[:2] == [b"sleep",
                                                     SENTINEL.encode()]:
                        return kid
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError("the command did not start")


def test_command_killed_by_sigkill_gives_137(bed):
    proc = bed.pasta_popen(["--config-net", "-f"], ["sleep", SENTINEL],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child = _command_of(proc)

    os.kill(child, signal.SIGKILL)          # the command we started
    proc.wait(timeout=10)

    assert proc.returncode == 137
    assert b"Traceback" not in proc.stderr.read()
    assert _ns_pids(bed.host) == []


def _children(pid):
    kids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(p))
    return kids


def _procs_in_netns(ino):
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/ns/net" % p) == ino:
                found.append(int(p))
        except OSError:
            continue
    return found


def test_sigterm_ends_pasta_and_leaves_the_command_offline(bed):
    # output to a file: the command, which outlives pasta, keeps it open
    path = os.path.join(bed.tmp, "sigterm.log")
    with open(path, "w") as out:
        proc = bed.pasta_popen(["--config-net", "-f"], ["sleep", SENTINEL],
                               stdout=out, stderr=subprocess.STDOUT)
    child = _command_of(proc)

    os.kill(proc.pid, signal.SIGTERM)
    try:
        assert proc.wait(timeout=10) == 0
        with open(path) as f:
            assert "Traceback" not in f.read()

        # As with upstream, the command outlives pasta, without its tap
        # interface: only loopback is left in its namespace
        r = subprocess.run(["nsenter", "-t", str(child), "-n", "ip", "-o",
                            "link"], capture_output=True, text=True,
                           timeout=10)
        names = [line.split(":")[1].strip() for line in
                 r.stdout.splitlines()]
        assert names == ["lo"], r.stdout + r.stderr
    finally:
        try:
            os.kill(child, signal.SIGKILL)      # the command we started
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while _stray_sentinels() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stray_sentinels() == []


def test_pasta_exits_when_its_namespace_is_deleted(bed):
    ns, proc, _fr = attached(bed)

    subprocess.run(["ip", "netns", "del", ns], check=True, timeout=10)

    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("pasta still runs 10s after its namespace was deleted")
    assert "Traceback" not in log_text(proc)


def test_pid_file_names_the_foreground_pasta(bed):
    pidfile = os.path.join(bed.tmp, "pasta.pid")
    ns, proc, _fr = attached(bed, ["-P", pidfile])

    with open(pidfile) as f:
        content = f.read()

    assert content == "%d\n" % proc.pid


def test_pid_file_names_the_background_pasta(bed):
    ns = bed.netns_add()
    pidfile = os.path.join(bed.tmp, "pasta.pid")
    r = bed.pasta(["--config-net", "--netns", "/run/netns/" + ns, "-P",
                   pidfile], None, timeout=20)
    assert r.returncode == 0, r.stderr

    with open(pidfile) as f:
        content = f.read()
    pid = int(content)
    try:
        assert content == "%d\n" % pid
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            assert b"pasta" in f.read()
        r = bed.run(ns, ["ping", "-n", "-c", "1", "-W", "3", Bed.WORLD4])
        assert r.returncode == 0
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_second_pasta_on_a_namespace_fails_and_first_keeps_serving(bed):
    ns, proc, _fr = attached(bed)

    r = bed.pasta(["-f", "--config-net", "--netns", "/run/netns/" + ns],
                  None, timeout=20)

    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode > 0, r.stderr
    assert "Traceback" not in r.stderr
    # the configuration summary may come first; the error ends it
    assert "tap device" in lines[-1], r.stderr
    assert_serving(bed, ns, proc, tcp=False)
