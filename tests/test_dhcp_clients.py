# SPDX-License-Identifier: GPL-2.0-or-later
"""ARP, NDP, DHCP and DHCPv6 against the real clients: udhcpc, dhclient
(-4 and -6), rdisc6, ndisc6, arping and the kernel's own SLAAC.

Every client test runs twice, against two kinds of "guest" namespace
made in a test bed, whose only link is a tap interface:

- "responder": a small responder (this file, run as a script inside the
  namespace) creates ``tap0``, reads the frames the clients and the
  kernel send on it, hands them to ``arp.arp()``, ``dhcp.dhcp()``,
  ``ndp.ndp()`` and ``dhcpv6.dhcpv6()`` as the tap code would, and writes
  what they send back to the device through the product's ``tap`` send
  functions.  This checks the handlers alone;
- "pasta": our pasta attached to the namespace (``--netns``, without
  ``--config-net``, so that the clients do the configuring).

Clients run with hook scripts that only write down what they were told,
so each test checks what a user would see: the lease, the options, the
advertised prefix.  No frame leaves the bed.

With ``PASTA_UPSTREAM`` naming an upstream pasta binary built from
passt's sources, one more test sends the same hand-made requests to it
and to our handlers and compares the replies byte for byte."""

import ipaddress
import json
import os
import select
import struct
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

GUEST_MAC = "52:54:00:12:34:56"
GUEST4 = "198.51.100.2"
GW4 = "198.51.100.1"
GUEST6 = "2001:db8:1::2"
SLAAC6 = "2001:db8:1:0:5054:ff:fe12:3456"
DNS4 = "198.51.100.1"
DNS6 = "2001:db8:1::1"
OUR_LL = "fe80::1"
MTU = 65520
SEARCH = ["example.com", "sub.example.com"]
HOSTNAME = "guest"
FQDN = "guest.example.com"


# -- the responder side (runs inside the namespace) ------------------------

def _tap_open(name):
    import fcntl
    TUNSETIFF = 0x400454ca
    IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(),
                                           IFF_TAP | IFF_NO_PI))
    return fd


def _ctx(fd):
    from pasta.passt import Ctx, MODE_PASTA

    V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address
    c = Ctx()
    c.mode = MODE_PASTA
    c.fd_tap = fd
    c.ifi4 = c.ifi6 = 1
    c.pasta_conf_ns = True
    c.mtu = MTU
    c.ip4.addr = V4(GUEST4)
    c.ip4.prefix_len = 24
    c.ip4.guest_gw = V4(GW4)
    c.ip4.our_tap_addr = V4(GW4)
    c.ip4.dns = [V4(DNS4)]
    c.ip6.addr = V6(GUEST6)
    c.ip6.guest_gw = V6(OUR_LL)
    c.ip6.our_tap_ll = V6(OUR_LL)
    c.ip6.dns = [V6(DNS6)]
    c.dns_search = list(SEARCH)
    c.hostname = HOSTNAME
    c.fqdn = FQDN
    return c


def _dispatch(c, frame, stats):
    """Hand one frame to the right handler, as tap4/tap6_handler do."""
    from pasta import arp, dhcp, dhcpv6, ndp

    if len(frame) < 14:
        return
    c.guest_mac = bytes(frame[6:12])
    proto = frame[12] << 8 | frame[13]
    if proto == 0x0806:
        stats["arp"] = stats.get("arp", 0) + 1
        arp.arp(c, frame)
    elif proto == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 15) * 4
        tot = frame[16] << 8 | frame[17]
        if frame[23] == 17 and len(frame) >= 14 + ihl + 8:
            stats["udp4"] = stats.get("udp4", 0) + 1
            if frame[14 + ihl + 2:14 + ihl + 4] == b"\0\x43":
                stats["dhcp"] = stats.get("dhcp", 0) + 1
                stats["dhcp_ret"] = dhcp.dhcp(c, frame[:14 + tot])
    elif proto == 0x86dd and len(frame) >= 54:
        from pasta.ip import ipv6_l4hdr
        plen = frame[18] << 8 | frame[19]
        pkt = frame[14:14 + 40 + plen]
        r = ipv6_l4hdr(pkt)
        if r is None:
            return
        nh, off = r
        saddr, daddr = bytes(pkt[8:24]), bytes(pkt[24:40])
        if nh == 58:
            stats["icmp6_%d" % pkt[off]] = \
                stats.get("icmp6_%d" % pkt[off], 0) + 1
            ndp.ndp(c, saddr, pkt[off:])
        elif nh == 17 and pkt[off + 2:off + 4] == b"\x02\x23":
            stats["dhcpv6"] = stats.get("dhcpv6", 0) + 1
            stats["dhcpv6_ret"] = dhcpv6.dhcpv6(c, saddr, daddr, pkt[off:])


def serve(stats_path, seconds):
    """Create tap0, configure it, answer until stdin closes or time ends."""
    from pasta import dhcpv6, tap

    fd = _tap_open("tap0")
    for cmd in (["ip", "link", "set", "tap0", "address", GUEST_MAC],
                ["ip", "link", "set", "tap0", "mtu", str(MTU)],
                ["sysctl", "-q", "-w", "net.ipv6.conf.tap0.accept_dad=0"],
                ["ip", "link", "set", "lo", "up"],
                ["ip", "link", "set", "tap0", "up"]):
        subprocess.run(cmd, check=True, timeout=10)

    c = _ctx(fd)
    sent = []

    def send_single(ctx, frame):
        os.write(fd, bytes(frame))
        sent.append(len(frame))

    tap.tap_send_single = send_single
    tap.tap_is_ready = lambda ctx: True
    dhcpv6.dhcpv6_init(c)

    stats = {}
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r, _w, _x = select.select([fd, sys.stdin], [], [], 0.5)
        if sys.stdin in r and not sys.stdin.read(1):
            break
        if fd in r:
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                _dispatch(c, memoryview(frame), stats)
        stats["sent"] = len(sent)
        with open(stats_path + ".tmp", "w") as f:
            json.dump(stats, f)
        os.replace(stats_path + ".tmp", stats_path)


def probe(seconds_per_request):
    """Send the frames given as JSON on stdin (a list of [name, hex]) on
    the namespace's only interface through a packet socket; print, as
    JSON, the frames received after each (ARP and our own router and
    neighbour solicitations and MLD reports left out)."""
    import socket

    links = json.loads(subprocess.run(["ip", "-j", "link"], check=True,
                                      capture_output=True, text=True,
                                      timeout=10).stdout)
    ifname = [i["ifname"] for i in links if i["ifname"] != "lo"][0]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((ifname, 0))
    out = []
    for name, f in json.load(sys.stdin):
        while select.select([s], [], [], 0)[0]:
            s.recv(70000)
        s.send(bytes.fromhex(f))
        got = []
        end = time.monotonic() + seconds_per_request
        while time.monotonic() < end:
            if not select.select([s], [], [], 0.05)[0]:
                continue
            d, addr = s.recvfrom(70000)
            if addr[2] == socket.PACKET_OUTGOING or d[12:14] == b"\x08\x06":
                continue
            if d[12:14] == b"\x86\xdd" and d[20] == 58 and \
               d[54] in (133, 135, 143):
                continue
            got.append(d.hex())
        out.append((name, got))
    print(json.dumps(out))


# -- the test side --------------------------------------------------------

pytestmark = [pytest.mark.skipif(os.geteuid() != 0,
                                 reason="network namespaces need root")]


def _wait_file(path, pred=lambda s: True, timeout=20.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                s = f.read()
            if pred(s):
                return s
        if proc is not None and proc.poll() is not None:
            time.sleep(0.2)
            proc = None         # one more look, then give up
            deadline = min(deadline, time.monotonic() + 0.5)
            continue
        time.sleep(0.1)
    return None


def _env_script(tmp, name):
    """A client hook that appends its arguments and environment to a file
    (one JSON object per call) and does nothing else."""
    out = os.path.join(tmp, name + ".json")
    script = os.path.join(tmp, name + ".sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n%s -c 'import json, os, sys; "
                "print(json.dumps(dict(os.environ, ARGV=sys.argv[1:])))' "
                "\"$@\" >> %s\n" % (sys.executable, out))
    os.chmod(script, 0o755)
    return script, out


def _events(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _wait_link_local(b, ns, ifname, timeout=10.0):
    """Wait until the interface has a usable link-local address."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = b.run(ns, ["ip", "-6", "addr", "show", "dev", ifname, "scope",
                       "link"])
        if "fe80::" in r.stdout and "tentative" not in r.stdout:
            return
        time.sleep(0.1)


def _start_responder(b, ns):
    """The responder of this file on tap0, configured as ``_ctx()``."""
    stats = os.path.join(b.tmp, "stats.json")
    proc = b.popen(ns, [sys.executable, os.path.abspath(__file__), "serve",
                        stats, "240"],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", line
    b.stats = stats
    b.ifname = "tap0"
    b.dns4, b.dns6, b.our_ll = DNS4, DNS6, OUR_LL
    return proc


def _start_pasta(b, ns):
    """Our pasta, attached to ``ns`` without configuring it, so that the
    clients there do; its tap interface gets the guest's MAC address."""
    import re

    log = os.path.join(b.tmp, "pasta.log")
    search = sum((["-S", n] for n in SEARCH), [])
    with open(log, "w") as f:
        proc = b.pasta_popen(["-f", "-d", "--runas", "0:0", "--netns",
                              "/run/netns/" + ns, "--dhcp-dns",
                              "--dhcp-search", "-H", HOSTNAME, "--fqdn",
                              FQDN] + search,
                             stdout=f, stderr=subprocess.STDOUT)
    text = _wait_file(log, lambda t: "our link-local:" in t, 20, proc)
    assert text, "our pasta did not start: %s" % open(log).read()[-2000:]
    b.our_ll = re.search(r"our link-local: (\S+)", text).group(1)

    links = json.loads(b.run(ns, ["ip", "-j", "link"]).stdout)
    b.ifname = [i["ifname"] for i in links if i["ifname"] != "lo"][0]
    for cmd in (["ip", "link", "set", b.ifname, "address", GUEST_MAC],
                ["ip", "link", "set", b.ifname, "mtu", str(MTU)],
                ["sysctl", "-q", "-w",
                 "net.ipv6.conf.%s.accept_dad=0" % b.ifname],
                ["ip", "link", "set", b.ifname, "up"]):
        b.run(ns, cmd, check=True)
    b.stats = log
    b.dns4, b.dns6 = b.WORLD4, b.WORLD6
    return proc


@pytest.fixture(scope="module", params=["responder", "pasta"])
def guest(request):
    """A namespace whose only link is a tap interface answered by this
    file's responder (the handlers alone) or by our pasta, attached."""
    from bed import Bed

    b = Bed()
    try:
        ns = b.guest_ns = b.netns_add("cl")
        if request.param == "responder":
            proc = _start_responder(b, ns)
        else:
            proc = _start_pasta(b, ns)
        b.slaac6 = SLAAC6
        _wait_link_local(b, ns, b.ifname)
        yield b
        if proc.stdin:
            proc.stdin.close()
    finally:
        b.close()


def test_udhcpc_gets_lease_and_options(guest):
    script, out = _env_script(guest.tmp, "udhcpc")
    r = guest.run(guest.guest_ns,
                  ["udhcpc", "-i", guest.ifname, "-f", "-q", "-n", "-t", "5",
                   "-T", "1", "-s", script, "-O", "search", "-O", "mtu",
                   "-O", "hostname", "-O", "domain"], timeout=30)
    assert r.returncode == 0, r.stderr
    bound = [e for e in _events(out) if e["ARGV"][:1] == ["bound"]]
    assert bound, _events(out)
    e = bound[0]
    assert e["ip"] == GUEST4
    assert e["subnet"] == "255.255.255.0"
    assert e["router"].split() == [GW4]
    assert e["dns"].split() == [guest.dns4]
    assert e["serverid"] == GW4
    assert e["mtu"] == str(MTU)
    assert e["hostname"] == HOSTNAME
    assert e["search"].split() == SEARCH
    assert int(e["lease"]) == 0xffffffff


def test_udhcpc_broadcast_flag(guest):
    script, out = _env_script(guest.tmp, "udhcpc_b")
    r = guest.run(guest.guest_ns,
                  ["udhcpc", "-B", "-i", guest.ifname, "-f", "-q", "-n", "-t",
                   "5", "-T", "1", "-s", script], timeout=30)
    assert r.returncode == 0, r.stderr
    bound = [e for e in _events(out) if e["ARGV"][:1] == ["bound"]]
    assert bound and bound[0]["ip"] == GUEST4


def test_dhclient_gets_lease_and_options(guest):
    script, out = _env_script(guest.tmp, "dhclient4")
    lease = os.path.join(guest.tmp, "dhclient4.leases")
    pid = os.path.join(guest.tmp, "dhclient4.pid")
    p = guest.popen(guest.guest_ns,
                    ["dhclient", "-4", "-d", "-1", "-v", "-sf", script,
                     "-lf", lease, "-pf", pid, guest.ifname],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s = _wait_file(out, lambda s: '"BOUND"' in s, 30, p)
    finally:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    assert s, "no BOUND from dhclient; stats %s" % open(guest.stats).read()
    e = [e for e in _events(out) if e.get("reason") == "BOUND"][0]
    assert e["new_ip_address"] == GUEST4
    assert e["new_subnet_mask"] == "255.255.255.0"
    assert e["new_routers"] == GW4
    assert e["new_domain_name_servers"] == guest.dns4
    assert e["new_domain_search"].split() == [n + "." for n in SEARCH]
    assert e["new_interface_mtu"] == str(MTU)
    assert e["new_host_name"] == HOSTNAME
    assert e["new_dhcp_server_identifier"] == GW4


def _dhclient6(guest, name, extra):
    script, out = _env_script(guest.tmp, name)
    lease = os.path.join(guest.tmp, name + ".leases")
    pid = os.path.join(guest.tmp, name + ".pid")
    p = guest.popen(guest.guest_ns,
                    ["dhclient", "-6", "-d", "-1", "-v"] + extra +
                    ["-sf", script, "-lf", lease, "-pf", pid, guest.ifname],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, out


def _stop(p):
    p.terminate()
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def test_dhclient6_gets_address_dns_and_search(guest):
    p, out = _dhclient6(guest, "dhclient6", [])
    try:
        s = _wait_file(out, lambda s: '"BOUND6"' in s, 30, p)
    finally:
        _stop(p)
    assert s, "no BOUND6 from dhclient -6; stats %s" % \
        open(guest.stats).read()
    e = [e for e in _events(out) if e.get("reason") == "BOUND6"][0]
    assert e["new_ip6_address"] == GUEST6
    assert e["new_dhcp6_name_servers"] == guest.dns6
    assert e["new_dhcp6_domain_search"].split() == [n + "." for n in SEARCH]
    assert e["new_fqdn_fqdn"] == FQDN
    assert e["new_max_life"] == e["new_preferred_life"] == "4294967295"


def test_dhclient6_information_request(guest):
    # dhclient reports a stateless (-S) reply to its script as RENEW6
    p, out = _dhclient6(guest, "dhclient6s", ["-S"])
    try:
        s = _wait_file(out, lambda s: '"RENEW6"' in s, 30, p)
    finally:
        _stop(p)
    assert s, "no RENEW6 from dhclient -6 -S: %s" % (
        _events(out) if os.path.exists(out) else "no script run")
    e = [e for e in _events(out) if e.get("reason") == "RENEW6"][0]
    assert e["new_dhcp6_name_servers"] == guest.dns6
    assert e["new_dhcp6_domain_search"].split() == [n + "." for n in SEARCH]
    assert "new_ip6_address" not in e


def test_rdisc6_sees_router_advertisement(guest):
    r = guest.run(guest.guest_ns, ["rdisc6", "-1", "-w", "2000", guest.ifname],
                  timeout=20)
    assert r.returncode == 0, r.stderr
    lines = [line.rstrip() for line in r.stdout.splitlines()]
    for want in (
            "Hop limit                 :          255 (      0xff)",
            "Stateful address conf.    :          Yes",
            "Router lifetime           :        65535 (0x0000ffff) seconds",
            " Prefix                   : 2001:db8:1::/64",
            "  On-link                 :          Yes",
            "  Autonomous address conf.:          Yes",
            "  Valid time              :     infinite (0xffffffff)",
            "  Pref. time              :     infinite (0xffffffff)",
            " Source link-layer address: 9A:55:9A:55:9A:55",
            " MTU                      :        %d bytes (valid)" % MTU,
            " Recursive DNS server     : %s" % guest.dns6,
            " DNS search list          : " + " ".join(SEARCH),
            " from " + guest.our_ll):
        assert want in lines, r.stdout


def test_kernel_slaac_address_route_and_mtu(guest):
    ns = guest.guest_ns
    deadline = time.monotonic() + 20
    ok = False
    while time.monotonic() < deadline:
        r = guest.run(ns, ["ip", "-j", "-6", "addr", "show", "dev",
                           guest.ifname])
        addrs = [a for i in json.loads(r.stdout or "[]")
                 for a in i.get("addr_info", [])]
        slaac = [a for a in addrs if a.get("local") == guest.slaac6 and
                 a.get("dynamic") and not a.get("tentative")]
        if slaac:
            ok = True
            break
        time.sleep(0.2)
    assert ok, addrs
    assert slaac[0]["prefixlen"] == 64
    r = guest.run(ns, ["ip", "-6", "route", "show", "default"])
    assert "via %s dev %s" % (guest.our_ll, guest.ifname) in r.stdout, \
        r.stdout
    r = guest.run(ns, ["cat", "/proc/sys/net/ipv6/conf/%s/mtu"
                       % guest.ifname])
    assert r.stdout.strip() == str(MTU)


@pytest.mark.parametrize("target", ["our_ll", "2001:db8:1::1"])
def test_ndisc6_resolves_gateway_and_our_link_local(guest, target):
    # ndisc6 only accepts advertisements sent from the target address
    # itself: that is where our answers come from
    if target == "our_ll":
        target = guest.our_ll
    r = guest.run(guest.guest_ns, ["ndisc6", "-1", "-w", "2000", target,
                                   guest.ifname], timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Target link-layer address: 9A:55:9A:55:9A:55" in r.stdout
    assert "from " + target in r.stdout


def test_kernel_resolves_any_neighbour_to_our_mac(guest):
    ns = guest.guest_ns
    target = "2001:db8:1::77"
    guest.run(ns, ["ping", "-6", "-c", "1", "-W", "1", target], timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = guest.run(ns, ["ip", "-6", "neigh", "show", target])
        if "lladdr" in r.stdout:
            break
        time.sleep(0.1)
    assert "lladdr 9a:55:9a:55:9a:55 router" in r.stdout, r.stdout


def test_arping_resolves_gateway_and_not_own_address(guest):
    ns = guest.guest_ns
    ifname = guest.ifname
    guest.run(ns, ["ip", "addr", "add", GUEST4 + "/24", "dev", ifname])
    r = guest.run(ns, ["arping", "-c", "1", "-w", "3", "-I", ifname, GW4],
                  timeout=10)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "9A:55:9A:55:9A:55" in r.stdout.upper(), r.stdout
    # duplicate address detection of the guest's own address: no answer
    r = guest.run(ns, ["arping", "-D", "-c", "2", "-w", "3", "-I", ifname,
                       GUEST4], timeout=10)
    assert "reply" not in r.stdout.lower(), r.stdout


# -- byte for byte against upstream ---------------------------------------

UPSTREAM = os.environ.get("PASTA_UPSTREAM", "")


def _eth(dst, src, proto):
    return dst + src + proto.to_bytes(2, "big")


def _upstream_requests(mac, ll, sid=None):
    """Hand-made requests of every kind, as Ethernet frames from ``mac``
    and link-local ``ll``; those naming a server need its ``sid``."""
    from pasta import checksum, ip
    import test_dhcp as t4
    import test_dhcpv6 as t6

    def bootp(opts, **kw):
        m = t4.bootp(bytes.fromhex(opts), **kw)
        return m[:28] + mac + m[34:]

    def v4(msg):
        return b"\xff" * 6 + mac + t4.frame(msg)[12:]

    def v6(dst, dmac, nh, l4):
        return _eth(dmac, mac, 0x86dd) + \
            ip.ip6_hdr(len(l4), nh, ll, dst, hop_limit=255) + l4

    def icmp6(dst, dmac, msg):
        c = checksum.csum_icmp6(msg, ll, dst)
        return v6(dst, dmac, 58, msg[:2] + c.to_bytes(2, "big") + msg[4:])

    def dhcp6(mtype, *opts):
        msg = bytes((mtype,)) + bytes.fromhex("abcdef") + b"".join(opts)
        uh = ip.udp_hdr(546, 547, len(msg))
        c = checksum.csum_udp6(uh, ll, servers, msg)
        return v6(servers, b"\x33\x33\x00\x01\x00\x02", 17,
                  uh[:6] + c.to_bytes(2, "big") + msg)

    A = ipaddress.IPv6Address
    servers = A("ff02::1:2").packed
    cid = bytes.fromhex("0001000e" "00010001" "2a2b2c2d") + mac
    lease = A(GUEST6).packed
    if sid is not None:
        return [
            ("request6", dhcp6(3, cid, sid, t6.ia_na([lease]))),
            ("renew6", dhcp6(5, cid, sid, t6.ia_na([lease]))),
            ("rebind6", dhcp6(6, cid, t6.ia_na([lease]))),
            ("request6_other", dhcp6(3, cid, sid, t6.ia_na(["2001:db8::9"]))),
        ]
    return [
        ("discover", v4(bootp(t4.DISCOVER_OPTS.hex()))),
        ("discover_plain", v4(bootp("350101ff", flags=0))),
        ("request", v4(bootp("350103" "3204c6336402" "3604c6336401"
                             "37050103060f77" "ff", flags=0))),
        ("rapid_commit", v4(bootp("350101" "5000" "37020103" "ff"))),
        ("bootp", v4(bootp("ff"))),
        ("decline", v4(bootp("350104ff"))),
        ("rs", icmp6(A("ff02::2").packed, b"\x33\x33\0\0\0\x02",
                     bytes.fromhex("8500000000000000" "0101") + mac)),
        ("ns", icmp6(A("ff02::1:ff00:1").packed, b"\x33\x33\xff\0\0\x01",
                     bytes.fromhex("8700000000000000") +
                     A("2001:db8:1::1").packed +
                     bytes.fromhex("0101") + mac)),
        ("solicit", dhcp6(1, cid, t6.ELAPSED, t6.ia_na(), t6.ORO)),
        ("confirm_other", dhcp6(4, cid, t6.ia_na(["2001:db8:9::9"]))),
        ("confirm", dhcp6(4, cid, t6.ia_na([lease]))),
        ("info_request", dhcp6(11, cid, t6.ORO)),
    ]


def _normalise(frame):
    """Blank what this port sends differently on purpose: the UDP checksum
    over IPv4 (upstream leaves it out, our tap code fills it in) and, in
    router advertisements, the bits of the prefix past its length
    (upstream copies the whole address there) with the checksum."""
    f = bytearray(frame)
    if f[12:14] == b"\x08\x00" and f[23] == 17:
        f[40:42] = b"\0\0"
    if f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 134:
        f[56:58] = b"\0\0"
        f[94:102] = bytes(8)
    return bytes(f)


@pytest.mark.skipif(not UPSTREAM, reason="PASTA_UPSTREAM is not set to an "
                    "upstream pasta binary built from passt's sources")
def test_replies_match_upstream_byte_for_byte(monkeypatch):
    from bed import Bed
    from pasta import dhcpv6, tap

    b = Bed()
    try:
        ns = b.netns_add("up")
        logp = os.path.join(b.tmp, "upstream.log")
        search = sum((["-S", n] for n in SEARCH), [])
        with open(logp, "w") as log:
            b.popen(b.host, [UPSTREAM, "-f", "--runas", "0:0", "--netns",
                             "/run/netns/" + ns, "--mtu", str(MTU),
                             "-H", HOSTNAME, "--fqdn", FQDN, "--dhcp-dns",
                             "--dhcp-search"] + search,
                    stdout=log, stderr=subprocess.STDOUT)
        text = _wait_file(logp, lambda t: "our link-local:" in t, 15)
        assert text, "upstream pasta did not start"
        our_ll = text.split("our link-local:")[1].split()[0]

        links = json.loads(b.run(ns, ["ip", "-j", "link"]).stdout)
        ifc = [i for i in links if i["ifname"] != "lo"][0]
        mac = bytes.fromhex(ifc["address"].replace(":", ""))
        b.run(ns, ["sysctl", "-q", "-w",
                   "net.ipv6.conf.%s.accept_dad=0" % ifc["ifname"]])
        b.run(ns, ["ip", "link", "set", ifc["ifname"], "up"])
        ll = None
        deadline = time.monotonic() + 10
        while ll is None and time.monotonic() < deadline:
            r = b.run(ns, ["ip", "-j", "-6", "addr", "show", "scope",
                           "link", "dev", ifc["ifname"]])
            for a in (a for i in json.loads(r.stdout or "[]")
                      for a in i.get("addr_info", [])):
                if "local" in a and not a.get("tentative"):
                    ll = ipaddress.IPv6Address(a["local"]).packed
            time.sleep(0.1)
        assert ll, "no link-local address in the namespace"

        def run_probe(reqs):
            r = b.run(ns, [sys.executable, os.path.abspath(__file__),
                           "probe", "0.7"],
                      input=json.dumps([(n, f.hex()) for n, f in reqs]),
                      timeout=60, check=True)
            return {n: [bytes.fromhex(x) for x in got]
                    for n, got in json.loads(r.stdout)}

        reqs = _upstream_requests(mac, ll)
        up = run_probe(reqs)
        adv = up["solicit"][0]
        sid = adv[66:84]
        more = _upstream_requests(mac, ll, sid)
        up.update(run_probe(more))
    finally:
        b.close()

    # The same requests through our handlers, configured as upstream was
    V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address
    fd = -1
    c = _ctx(fd)
    c.ip4.dns = [V4(Bed.WORLD4)]
    c.ip6.dns = [V6(Bed.WORLD6)]
    c.ip6.guest_gw = V6(Bed.GW6)
    c.ip6.our_tap_ll = V6(our_ll)
    sent = []
    monkeypatch.setattr(tap, "tap_send_single",
                        lambda ctx, f: sent.append(bytes(f)))
    monkeypatch.setattr(tap, "tap_is_ready", lambda ctx: True)
    monkeypatch.setattr(dhcpv6, "server_id", bytes(sid))
    monkeypatch.setattr(dhcpv6, "lease_addr", V6(GUEST6).packed)

    def answers(name, frames):
        """The replies to request ``name``: the kernel of the namespace
        talks to upstream meanwhile, leave out what it got back."""
        icmp6_type = {"rs": 134, "ns": 136}.get(name)
        out = []
        for f in frames:
            v6 = f[12:14] == b"\x86\xdd"
            l4proto = f[20] if v6 else f[23]
            if icmp6_type is None and l4proto == 17 or \
               v6 and l4proto == 58 and f[54] == icmp6_type:
                out.append(_normalise(f))
        return out

    for name, frame in reqs + more:
        sent.clear()
        _dispatch(c, memoryview(frame), {})
        assert answers(name, sent) == answers(name, up[name]), name
        assert len(sent) == (0 if name in ("decline", "rebind6") else 1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.path.insert(0, os.path.dirname(HERE))
        serve(sys.argv[2], float(sys.argv[3]))
    elif sys.argv[1:2] == ["probe"]:
        probe(float(sys.argv[2]))
