# SPDX-License-Identifier: GPL-2.0-or-later
"""Port forwarding: NAT decisions, rule lookup, listening sockets, "auto".

Three layers, from the inside out:

- pure tests on values: a context as conf would leave it for the test
  bed (guest 198.51.100.2, gateway 198.51.100.1 mapped to the host's
  loopback), flow sides as plain objects;
- scenarios driving fwd.py alone inside the bed's namespaces (this file
  run as a script there): listening sockets, /proc/net scanning;
- our pasta attached to a namespace of the bed, with real clients and
  servers: each -t/-u/-T/-U form forwards exactly the ports it names,
  "auto" follows listeners, --splice-only, long spliced transfers, and
  no descriptor left behind after many connections.
"""

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from pasta import fwd
from pasta.fwd_rule import FWD_CAP_ALL, FwdTable, fwd_rule_parse
from pasta.inany import inany_from_ip, inany_to_ip
from pasta.passt import Ctx, MODE_PASTA
from pasta.pif import PIF_HOST, PIF_NONE, PIF_SPLICE, PIF_TAP

TCP = socket.IPPROTO_TCP
UDP = socket.IPPROTO_UDP
A = inany_from_ip


def side(eaddr="0.0.0.0", eport=0, oaddr="0.0.0.0", oport=0):
    return SimpleNamespace(eaddr=A(eaddr), eport=eport, oaddr=A(oaddr),
                           oport=oport)


def empty():
    return SimpleNamespace(eaddr=bytes(16), eport=0, oaddr=bytes(16),
                           oport=0)


def show(s):
    return (str(inany_to_ip(s.eaddr)), s.eport, str(inany_to_ip(s.oaddr)),
            s.oport)


@pytest.fixture
def c():
    c = Ctx()
    c.mode = MODE_PASTA
    c.ifi4 = c.ifi6 = 2
    ip = ipaddress.ip_address
    c.ip4.addr = c.ip4.addr_seen = ip("198.51.100.2")
    c.ip4.guest_gw = c.ip4.map_host_loopback = ip("198.51.100.1")
    c.ip4.our_tap_addr = ip("198.51.100.1")
    c.ip6.addr = c.ip6.addr_seen = ip("2001:db8:1::2")
    c.ip6.addr_ll_seen = ip("fe80::2")
    c.ip6.guest_gw = c.ip6.map_host_loopback = ip("fe80::1")
    c.ip6.our_tap_ll = ip("fe80::1")
    return c


def rule(spec, opt="t"):
    t = FwdTable(FWD_CAP_ALL)
    fwd_rule_parse(opt, False, spec, t)
    return t.rules[0]


# From the tap (the guest opens a connection)

def test_tap_to_world_unchanged(c):
    tgt = empty()
    pif = fwd.fwd_nat_from_tap(c, TCP, side("198.51.100.2", 40000,
                                            "203.0.113.10", 80), tgt)
    assert pif == PIF_HOST
    assert show(tgt) == ("203.0.113.10", 80, "0.0.0.0", 0)


def test_tap_gateway_is_host_loopback(c):
    tgt = empty()
    fwd.fwd_nat_from_tap(c, TCP, side("198.51.100.2", 40000,
                                      "198.51.100.1", 22), tgt)
    assert show(tgt)[:2] == ("127.0.0.1", 22)


def test_tap_gateway6_is_host_loopback(c):
    tgt = empty()
    fwd.fwd_nat_from_tap(c, TCP, side("fe80::2", 40000, "fe80::1", 22), tgt)
    assert show(tgt)[:2] == ("::1", 22)


def test_tap_no_map_gw_leaves_gateway(c):
    c.ip4.map_host_loopback = ipaddress.IPv4Address(0)
    tgt = empty()
    fwd.fwd_nat_from_tap(c, TCP, side("198.51.100.2", 1, "198.51.100.1", 22),
                         tgt)
    assert show(tgt)[0] == "198.51.100.1"


def test_tap_map_guest_addr(c):
    c.ip4.map_guest_addr = ipaddress.ip_address("192.0.2.2")
    tgt = empty()
    fwd.fwd_nat_from_tap(c, TCP, side("198.51.100.2", 1, "192.0.2.2", 22),
                         tgt)
    assert show(tgt)[0] == "198.51.100.2"


def test_tap_dns_forward(c):
    c.ip4.dns_match = ipaddress.ip_address("198.51.100.3")
    c.ip4.dns_host = ipaddress.ip_address("203.0.113.10")
    tgt = empty()
    fwd.fwd_nat_from_tap(c, UDP, side("198.51.100.2", 5353,
                                      "198.51.100.3", 53), tgt)
    assert show(tgt) == ("203.0.113.10", 53, "0.0.0.0", 5353)


def test_tap_dns_match_only_for_dns_ports(c):
    c.ip4.dns_match = ipaddress.ip_address("198.51.100.3")
    c.ip4.dns_host = ipaddress.ip_address("203.0.113.10")
    tgt = empty()
    fwd.fwd_nat_from_tap(c, TCP, side("198.51.100.2", 1, "198.51.100.3", 80),
                         tgt)
    assert show(tgt)[0] == "198.51.100.3"


def test_tap_addr_out(c):
    c.ip4.addr_out = ipaddress.ip_address("198.51.100.2")
    tgt = empty()
    fwd.fwd_nat_from_tap(c, TCP, side("198.51.100.2", 1, "203.0.113.10", 80),
                         tgt)
    assert show(tgt)[2] == "198.51.100.2"


def test_tap_udp_keeps_source_port(c):
    tgt = empty()
    fwd.fwd_nat_from_tap(c, UDP, side("2001:db8:1::2", 4242,
                                      "2001:db8:2::10", 7), tgt)
    assert show(tgt) == ("2001:db8:2::10", 7, "::", 4242)


# From the host (-t, -u)

def test_host_loopback_source_is_spliced(c):
    tgt = empty()
    pif = fwd.fwd_nat_from_host(c, rule("8080:80"), TCP,
                                side("127.0.0.1", 50000, "127.0.0.1", 8080),
                                tgt)
    assert pif == PIF_SPLICE
    assert show(tgt) == ("198.51.100.2", 80, "0.0.0.0", 0)


def test_host_lo_to_ns_lo(c):
    c.host_lo_to_ns_lo = True
    tgt = empty()
    pif = fwd.fwd_nat_from_host(c, rule("8080"), TCP,
                                side("::1", 50000, "::1", 8080), tgt)
    assert pif == PIF_SPLICE
    assert show(tgt) == ("::1", 8080, "::", 0)


def test_host_no_splice_goes_through_tap(c):
    c.no_splice = True
    tgt = empty()
    pif = fwd.fwd_nat_from_host(c, rule("8080"), TCP,
                                side("127.0.0.1", 50000, "127.0.0.1", 8080),
                                tgt)
    assert pif == PIF_TAP
    assert show(tgt) == ("198.51.100.2", 8080, "198.51.100.1", 50000)


def test_host_remote_source_through_tap(c):
    tgt = empty()
    pif = fwd.fwd_nat_from_host(c, rule("22"), TCP,
                                side("203.0.113.10", 40000,
                                     "198.51.100.2", 22), tgt)
    assert pif == PIF_TAP
    assert show(tgt) == ("198.51.100.2", 22, "203.0.113.10", 40000)


def test_host_source_with_guest_address_uses_our_tap_addr(c):
    tgt = empty()
    fwd.fwd_nat_from_host(c, rule("22"), TCP,
                          side("198.51.100.2", 40000, "198.51.100.2", 22),
                          tgt)
    assert show(tgt)[2] == "198.51.100.1"


def test_host_ipv6_link_local_target(c):
    c.no_splice = True
    tgt = empty()
    fwd.fwd_nat_from_host(c, rule("22"), TCP,
                          side("::1", 40000, "::1", 22), tgt)
    # ::1 shows as the mapped gateway, a link-local address: so the guest
    # is reached on its link-local address too
    assert show(tgt) == ("fe80::2", 22, "fe80::1", 40000)


def test_host_rule_target_address(c):
    tgt = empty()
    pif = fwd.fwd_nat_from_host(c, rule("0.0.0.0/80:192.0.2.9/8080"), TCP,
                                side("127.0.0.1", 1000, "127.0.0.1", 80),
                                tgt)
    assert pif == PIF_TAP
    assert show(tgt)[:2] == ("192.0.2.9", 8080)


def test_splice_only_refuses_non_loopback_source(c):
    c.splice_only = c.host_lo_to_ns_lo = True
    tgt = empty()
    assert fwd.fwd_nat_from_host(c, rule("22"), TCP,
                                 side("198.51.100.2", 40000,
                                      "198.51.100.2", 22), tgt) == PIF_NONE
    tgt = empty()
    assert fwd.fwd_nat_from_host(c, rule("22"), TCP,
                                 side("127.0.0.1", 40000, "127.0.0.1", 22),
                                 tgt) == PIF_SPLICE
    assert show(tgt)[:2] == ("127.0.0.1", 22)


# From the namespace (-T, -U)

def test_splice_loopback_to_host_loopback(c):
    tgt = empty()
    pif = fwd.fwd_nat_from_splice(rule("5000:6000", "T"), TCP,
                                  side("127.0.0.1", 40000, "127.0.0.1",
                                       5000), tgt)
    assert pif == PIF_HOST
    assert show(tgt) == ("127.0.0.1", 6000, "127.0.0.1", 0)


def test_splice_non_loopback_refused(c):
    assert fwd.fwd_nat_from_splice(rule("5000", "T"), TCP,
                                   side("198.51.100.2", 1, "127.0.0.1", 5000),
                                   empty()) == PIF_NONE


# Inbound translation

def test_nat_inbound(c):
    assert inany_to_ip(fwd.nat_inbound(c, A("127.0.0.1"))) == \
        ipaddress.ip_address("198.51.100.1")
    assert fwd.nat_inbound(c, A("127.0.0.2")) is None
    assert fwd.nat_inbound(c, A("203.0.113.10")) == A("203.0.113.10")
    assert fwd.nat_inbound(c, A("198.51.100.2")) is None
    assert fwd.nat_inbound(c, A("0.0.0.0")) is None


# Rule lookup

def test_rule_search_and_hint():
    t = FwdTable(FWD_CAP_ALL)
    fwd_rule_parse("t", False, "22", t)
    fwd_rule_parse("t", False, "192.0.2.1/80", t)
    fwd_rule_parse("u", False, "80", t)
    ini = side("203.0.113.10", 1, "192.0.2.1", 80)
    assert fwd.fwd_rule_search(t, ini, TCP) is t.rules[1]
    assert fwd.fwd_rule_search(t, ini, UDP) is t.rules[2]
    assert fwd.fwd_rule_search(t, ini, TCP, 1) is t.rules[1]
    assert fwd.fwd_rule_search(t, ini, TCP, 0) is None
    assert fwd.fwd_rule_search(t, side(oaddr="192.0.2.2", oport=80),
                               TCP) is None


# Neighbour table

def test_neigh_table(c, monkeypatch):
    announced = []
    from pasta import arp
    monkeypatch.setattr(arp, "arp_announce",
                        lambda c, a, m: announced.append((a, m)))
    fwd.fwd_neigh_table_init(c)
    gw = A("198.51.100.1")
    # The mapped address is blocked: always our MAC
    assert fwd.fwd_neigh_mac_get(c, gw) == c.our_tap_mac
    fwd.fwd_neigh_table_update(c, gw, b"\x02" * 6)
    assert fwd.fwd_neigh_mac_get(c, gw) == c.our_tap_mac
    # Other hosts: learnt, announced, forgotten
    h = A("203.0.113.10")
    fwd.fwd_neigh_table_update(c, h, b"\x02" * 6)
    assert fwd.fwd_neigh_mac_get(c, h) == b"\x02" * 6
    assert announced == [(h[12:], b"\x02" * 6)]
    fwd.fwd_neigh_table_free(c, h)
    # Unknown: the gateway's entry (ours)
    assert fwd.fwd_neigh_mac_get(c, h) == c.our_tap_mac


# /proc/net parsing

PROC_TCP = b"""\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000
   1: 0100007F:0016 0100007F:9C40 01 00000000:00000000 00:00000000 00000000
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000
"""


def test_procfs_scan_listen(tmp_path):
    p = tmp_path / "tcp"
    p.write_bytes(PROC_TCP)
    fd = os.open(p, os.O_RDONLY)
    try:
        m = set()
        fwd.procfs_scan_listen(fd, fwd.TCP_LISTEN, m)
        assert m == {8080, 80}
        m2 = set()
        fwd.procfs_scan_listen(fd, fwd.TCP_LISTEN, m2)   # re-read
        assert m2 == m
    finally:
        os.close(fd)


# -- Listening sockets and automatic forwarding, in namespaces -------------
#
# These scenarios run as separate processes inside the "host" namespace
# of a test bed (this file run as a script), with one more namespace of
# the bed standing for pasta's.  They drive fwd.py directly, without the
# rest of pasta, and print one JSON line of what they saw.


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scn_ctx(nsname, specs=()):
    import select as _select
    from pasta import flow, fwd_rule as _fr
    c = Ctx()
    c.mode = MODE_PASTA
    c.ifi4 = c.ifi6 = 1
    c.epoll = _select.epoll()
    c.pasta_netns_fd = os.open("/run/netns/" + nsname, os.O_RDONLY)
    flow.flow_init(c)
    _fr.fwd_probe_ephemeral()
    _fr.fwd_rule_init(c)
    for opt, spec in specs:
        pif = PIF_SPLICE if opt in "TU" else PIF_HOST
        fwd_rule_parse(opt, False, spec, c.fwd[pif])
    return c


def _ns_listener(c, port, family=socket.AF_INET, udp=False):
    from pasta import util
    addr = ("127.0.0.1", port) if family == socket.AF_INET else \
        ("::1", port, 0, 0)
    s = util.ns_socket(c, family,
                       socket.SOCK_DGRAM if udp else socket.SOCK_STREAM,
                       bind=addr,
                       opts=[(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)])
    if not udp:
        s.listen(10)
    return s


def _listening(c, pif, proto=TCP):
    return sorted(fwd.current_listen_map(c.fwd[pif], proto))


def scenario_procfd(nsname):
    """A /proc/net/tcp descriptor opened in the namespace by a child
    that has exited keeps listing the namespace's sockets."""
    c = _scn_ctx(nsname)
    fds = fwd._open_proc_files_in_ns(c)
    s = _ns_listener(c, 0)
    port = s.getsockname()[1]
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen(1)
    hport = host.getsockname()[1]
    m = set()
    fwd.procfs_scan_listen(fds[0], fwd.TCP_LISTEN, m)
    hfd = os.open("/proc/net/tcp", os.O_RDONLY)
    hm = set()
    fwd.procfs_scan_listen(hfd, fwd.TCP_LISTEN, hm)
    s.close()
    time.sleep(0.1)
    m2 = set()
    fwd.procfs_scan_listen(fds[0], fwd.TCP_LISTEN, m2)
    return {"ns_port_seen": port in m, "host_port_in_ns": hport in m,
            "ns_port_in_host": port in hm, "host_port_seen": hport in hm,
            "gone_after_close": port not in m2, "fds": fds}


def _timed_scan(c):
    """Seconds one full rescan and resync takes."""
    t0 = time.monotonic()
    fwd.fwd_scan_ports(c)
    scan = fwd._scan_state(c)
    fwd.fwd_listen_sync(c, PIF_HOST, scan[(TCP, "in")], scan[(UDP, "in")],
                        full=False)
    fwd.fwd_listen_sync(c, PIF_SPLICE, scan[(TCP, "out")],
                        scan[(UDP, "out")], full=False)
    return time.monotonic() - t0


def _tick(c, t):
    fwd.fwd_scan_ports_timer(c, t)


def scenario_auto(nsname):
    """-t auto, -u auto, -T auto, -U auto: listeners appearing on either
    side get a forwarding socket on the other within a scan, and lose it
    once they close; our own sockets do not echo back."""
    c = _scn_ctx(nsname, [("t", "auto"), ("u", "auto"), ("T", "auto"),
                          ("U", "auto")])
    fwd.fwd_scan_ports_init(c)
    fwd.fwd_listen_init(c)
    res = {"initial_host": _listening(c, PIF_HOST),
           "initial_ns": _listening(c, PIF_SPLICE)}
    t = 100.0

    # Ports below the ephemeral range: auto leaves that alone
    nport, uport, hport = 21001, 21002, 21003
    ns_l = _ns_listener(c, nport)
    ns_u = _ns_listener(c, uport, udp=True)
    res["udp_sock"] = ns_u.fileno() >= 0
    h_l = socket.socket(socket.AF_INET6)
    h_l.bind(("::1", hport))
    h_l.listen(1)

    t += 1.1
    _tick(c, t)
    res["host_tcp"] = _listening(c, PIF_HOST)
    res["host_udp"] = _listening(c, PIF_HOST, UDP)
    res["ns_tcp"] = _listening(c, PIF_SPLICE)
    res["ns_udp"] = _listening(c, PIF_SPLICE, UDP)
    res["nport"], res["uport"], res["hport"] = nport, uport, hport
    res["scan_s"] = _timed_scan(c)

    # The forwarding socket on the host is really there: connect to it
    probe = socket.socket()
    probe.settimeout(2)
    try:
        probe.connect(("127.0.0.1", nport))
        res["host_connect"] = "ok"
    except OSError as e:
        res["host_connect"] = repr(e)
    probe.close()

    # Stable: another scan changes nothing
    t += 1.1
    _tick(c, t)
    res["host_tcp2"] = _listening(c, PIF_HOST)
    res["ns_tcp2"] = _listening(c, PIF_SPLICE)

    # Within the interval, nothing is rescanned
    ns_l.close()
    h_l.close()
    _tick(c, t + 0.5)
    res["host_tcp_early"] = _listening(c, PIF_HOST)
    t += 1.1
    _tick(c, t)
    res["host_tcp3"] = _listening(c, PIF_HOST)
    res["ns_tcp3"] = _listening(c, PIF_SPLICE)
    fwd.fwd_listen_close(c, c.fwd[PIF_HOST])
    fwd.fwd_listen_close(c, c.fwd[PIF_SPLICE])
    res["epoll_left"] = len(c.epoll_refs)
    return res


def scenario_listen(nsname, opt, spec, family):
    """Listening sockets for one option: which (address, port) pairs are
    listened on, on the host or in the namespace."""
    c = _scn_ctx(nsname, [(opt, spec)])
    fwd.fwd_scan_ports_init(c)
    fwd.fwd_listen_init(c)
    pif = PIF_SPLICE if opt in "TU" else PIF_HOST
    out = []
    for rule, socks in zip(c.fwd[pif].rules, c.fwd[pif].rulesocks):
        for port, s in sorted(socks.items()):
            name = s.getsockname()
            out.append([name[0], port, s.type == socket.SOCK_STREAM])
            ref = c.epoll_refs[s.fileno()]
            assert ref.listen.port == port and ref.data is s
    return {"socks": out}


def _scn_main(argv):
    fn = globals()["scenario_" + argv[1]]
    print(json.dumps(fn(*argv[2:])))
    sys.stdout.flush()
    os._exit(0)


@pytest.fixture
def nsbed(bed):
    ns = bed.netns_add("pns")
    bed.run(ns, ["ip", "link", "set", "lo", "up"], check=True)
    return bed, ns


def run_scenario(nsbed, *args, timeout=60):
    bed, ns = nsbed
    argv = ["env", "PYTHONPATH=" + REPO, sys.executable,
            os.path.abspath(__file__), args[0], ns] + [str(a)
                                                       for a in args[1:]]
    r = bed.run(bed.host, argv, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_proc_fd_from_namespace_keeps_its_view(nsbed):
    res = run_scenario(nsbed, "procfd")
    assert res["ns_port_seen"] and res["host_port_seen"]
    assert not res["host_port_in_ns"] and not res["ns_port_in_host"]
    assert res["gone_after_close"]


def test_auto_follows_listeners_both_ways(nsbed):
    res = run_scenario(nsbed, "auto")
    assert res["initial_host"] == [] and res["initial_ns"] == []
    n, u, h = res["nport"], res["uport"], res["hport"]
    assert n in res["host_tcp"] and h not in res["host_tcp"]
    assert u in res["host_udp"] and n in res["host_udp"]   # UDP follows TCP
    assert h in res["ns_tcp"] and n not in res["ns_tcp"]
    assert res["host_connect"] == "ok"
    assert res["host_tcp2"] == res["host_tcp"]
    assert res["ns_tcp2"] == res["ns_tcp"]
    assert n in res["host_tcp_early"]
    assert n not in res["host_tcp3"] and h not in res["ns_tcp3"]
    assert res["epoll_left"] == 0


def test_listen_dual_stack_port(nsbed):
    res = run_scenario(nsbed, "listen", "t", "22,8080-8081", "any")
    assert res["socks"] == [["::", 22, True], ["::", 8080, True],
                            ["::", 8081, True]]


def test_listen_bound_address(nsbed):
    res = run_scenario(nsbed, "listen", "u", "198.51.100.2/5353", "4")
    assert res["socks"] == [["198.51.100.2", 5353, False]]


def test_listen_translated_range_listens_on_source_ports(nsbed):
    res = run_scenario(nsbed, "listen", "t", "2000-2001:3000-3001", "any")
    assert [p for _a, p, _t in res["socks"]] == [2000, 2001]


def test_listen_ns_side_in_namespace(nsbed):
    res = run_scenario(nsbed, "listen", "T", "5000", "any")
    assert res["socks"] == [["::", 5000, True]]


def test_listen_refused_for_address_not_on_host(nsbed):
    bed, ns = nsbed
    argv = ["env", "PYTHONPATH=" + REPO, sys.executable,
            os.path.abspath(__file__), "listen", ns, "t", "192.0.2.1/22",
            "4"]
    r = bed.run(bed.host, argv, timeout=30)
    assert r.returncode == 1
    assert "Listen failed for HOST TCP port 192.0.2.1/22" in r.stderr


# -- Peers for the tests through pasta (run with this file as a script) ---

def _pattern(n):
    """``n`` bytes of a fixed, non-repeating-looking pattern."""
    import hashlib
    block = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(2048))
    return (block * (n // len(block) + 1))[:n]


def scenario_serve(port, ready, proto="tcp", bind="::", count="1",
                   reply="0"):
    """Serve ``count`` clients on ``port``: read to EOF (TCP) or one
    datagram (UDP), answer with "<length> <sha256>" (TCP: then a newline
    and ``reply`` more bytes after the client's FIN) and, for TCP,
    close.  Touches ``ready`` once listening.  Returns what it served."""
    import hashlib
    port = int(port)
    reply = int(reply)
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((bind, port))
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    s.settimeout(30)
    open(ready, "w").close()
    peers = []
    for _i in range(int(count)):
        if kind == socket.SOCK_STREAM:
            a, peer = s.accept()
            a.settimeout(30)
            h, n = hashlib.sha256(), 0
            while True:
                b = a.recv(1 << 16)
                if not b:
                    break
                h.update(b)
                n += len(b)
            a.sendall(b"%d %s" % (n, h.hexdigest().encode()))
            if reply:
                a.sendall(b"\n" + _pattern(reply))
            a.close()
        else:
            b, peer = s.recvfrom(1 << 16)
            s.sendto(b"%d %s" % (len(b), hashlib.sha256(b).hexdigest()
                                 .encode()), peer)
        peers.append(peer[0])
    return {"peers": peers}


def scenario_send(addr, port, size, proto="tcp", timeout="10", reply="0"):
    """Send ``size`` bytes to ``addr``/``port`` and report the answer and
    whether it matches what was sent (and, for TCP, whether the ``reply``
    bytes the server sends after our FIN arrived intact)."""
    import hashlib
    size = int(size)
    reply = int(reply)
    data = os.urandom(size)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    expect = b"%d %s" % (size, hashlib.sha256(data).hexdigest().encode())
    if reply and proto == "tcp":
        expect += b"\n" + _pattern(reply)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.settimeout(float(timeout))
    t0 = time.monotonic()
    try:
        s.connect((addr, int(port)))
        if kind == socket.SOCK_STREAM:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                b = s.recv(1 << 16)
                if not b:
                    break
                got += b
        else:
            s.send(data)
            got = s.recv(1 << 16)
        res = "ok" if got == expect else "bad answer (%d bytes) %r" % (
            len(got), got[:80])
    except OSError as e:
        res = type(e).__name__
    return {"result": res, "seconds": time.monotonic() - t0}


def scenario_sendmany(addr, port, count):
    """Open, use and close ``count`` connections one after the other."""
    ok = 0
    for i in range(int(count)):
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            s = socket.socket(family)
            s.settimeout(10)
            s.connect((addr, int(port)))
            s.sendall(b"x" * (i % 100 + 1))
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                got += b
            s.close()
            ok += got.startswith(b"%d " % (i % 100 + 1))
        except OSError:
            pass
    return {"ok": ok}


# -- Through pasta: the forwarding options as a user sees them ------------

PEER = ["env", "PYTHONPATH=" + REPO, sys.executable,
        os.path.abspath(__file__)]
OFF = ["-t", "none", "-u", "none", "-T", "none", "-U", "none"]


def _opts(args):
    """``args`` plus "none" for the forwarding options it leaves out, so
    that the default ("auto") does not get in the way."""
    out = list(args)
    for i in range(0, len(OFF), 2):
        if OFF[i] not in args:
            out += OFF[i:i + 2]
    return out


def pasta_up(bed, args, splice_only=False, wait_port=None, timeout=20.0):
    """Our pasta attached to a fresh namespace of the bed; returns
    (namespace, Popen).  Runs as root (``--runas 0:0``): dropping to
    nobody would stop it from entering a namespace made by root.

    Normally ready once the namespace has its address (as
    ``Bed.pasta_attach()``); with ``wait_port``, once the host listens on
    that TCP port instead (for --splice-only and -6, where the namespace
    gets no IPv4 address).
    """
    ns = bed.netns_add("pns")
    args = ["--runas", "0:0"] + _opts(args)
    if wait_port is None:
        return ns, bed.pasta_attach(ns, args, timeout=timeout)

    args = (["--splice-only"] if splice_only else ["--config-net"]) + args
    log_path = os.path.join(bed.tmp, "pasta-%s.log" % ns)
    with open(log_path, "w") as logf:
        proc = bed._spawn(bed.pasta_cmd(["-f", "--netns", "/run/netns/" +
                                         ns] + args),
                          stdout=logf, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("pasta exited: " + open(log_path).read())
        r = bed.run(bed.host, ["ss", "-ltnH", "sport = :%d" % wait_port])
        if r.stdout.strip():
            break
        if time.monotonic() > deadline:
            raise RuntimeError("pasta not listening: " +
                               open(log_path).read())
        time.sleep(0.05)
    bed.wait_not_tentative(max(deadline - time.monotonic(), 1.0), [ns])
    return ns, proc


def serve(bed, ns, port, proto="tcp", bind="::", count=100, reply=0):
    """A peer serving ``port`` in ``ns`` (see scenario_serve), ready."""
    ready = os.path.join(bed.tmp, "ready-%s-%s-%d-%s" % (ns, proto, port,
                                                         bind))
    proc = bed.popen(ns, PEER + ["serve", port, ready, proto, bind, count,
                                 reply], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(ready):
        assert proc.poll() is None, "server on %d exited" % port
        assert time.monotonic() < deadline, "server on %d not ready" % port
        time.sleep(0.02)
    return proc


def send(bed, ns, addr, port, size=1000, proto="tcp", reply=0, timeout=10):
    """What a client in ``ns`` gets sending to ``addr``/``port``: "ok" or
    the name of the error."""
    r = bed.run(ns, PEER + ["send", addr, port, size, proto, timeout,
                            reply], timeout=timeout + 60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])["result"]


# Each case: the -t option, the ports served in the namespace, and probes
# (who connects, to what address and port, what they get).  "lo4"/"lo6"
# connect from the host's own loopback (the spliced path), "w4"/"w6"
# from the world to the host's address (the tap path).
REFUSED = "ConnectionRefusedError"
TCP_CASES = {
    "single": ("8080", [8080], [("lo4", 8080, "ok"), ("lo6", 8080, "ok"),
                                ("w4", 8080, "ok"), ("w6", 8080, "ok"),
                                ("lo4", 8081, REFUSED)]),
    "range": ("8080-8081", [8080, 8081], [("lo4", 8080, "ok"),
                                          ("w4", 8081, "ok"),
                                          ("lo4", 8082, REFUSED),
                                          ("lo4", 8079, REFUSED)]),
    "list": ("8080,8090", [8080, 8090], [("lo4", 8080, "ok"),
                                         ("w6", 8090, "ok"),
                                         ("lo4", 8085, REFUSED)]),
    "translated": ("8080:9090", [9090], [("lo4", 8080, "ok"),
                                         ("w4", 8080, "ok"),
                                         ("lo4", 9090, REFUSED)]),
    "translated_range": ("8080-8081:9090-9091", [9090, 9091],
                         [("lo6", 8081, "ok"), ("w4", 8080, "ok"),
                          ("lo4", 9091, REFUSED)]),
    "exclusion": ("8080-8090,~8082-8089", [8081, 8085, 8090],
                  [("lo4", 8081, "ok"), ("lo4", 8090, "ok"),
                   ("lo4", 8085, REFUSED), ("w4", 8085, REFUSED)]),
    "address4": ("198.51.100.2/8080", [8080], [("w4", 8080, "ok"),
                                               ("lo4", 8080, REFUSED),
                                               ("w6", 8080, REFUSED)]),
    "address6": ("[2001:db8:1::2]/8080", [8080], [("w6", 8080, "ok"),
                                                  ("w4", 8080, REFUSED)]),
    "loopback6": ("::1/8080", [8080], [("lo6", 8080, "ok"),
                                       ("lo4", 8080, REFUSED),
                                       ("w6", 8080, REFUSED)]),
    "interface": ("%h0/8080", [8080], [("w4", 8080, "ok"),
                                       ("w6", 8080, "ok"),
                                       ("lo4", 8080, REFUSED)]),
    "address_and_interface": ("198.51.100.2%h0/8080", [8080],
                              [("w4", 8080, "ok"), ("w6", 8080, REFUSED)]),
    # Only exclusions: everything else but the ephemeral ports (a small
    # "all": the file descriptor limit here is 20000)
    "exclusion_only": ("~1-30000", [30500, 61500],
                       [("lo4", 30500, "ok"), ("w6", 61500, "ok"),
                        ("lo4", 8080, REFUSED), ("lo4", 40000, REFUSED)]),
    # A target address: never spliced, the tap path takes it there
    "target_address": ("0.0.0.0/8080:198.51.100.2/9090", [9090],
                       [("lo4", 8080, "ok"), ("w4", 8080, "ok"),
                        ("lo6", 8080, REFUSED)]),
}


def _probe(bed, who, port, proto="tcp", size=1000):
    ns = bed.host if who.startswith("lo") else bed.world
    addr = {"lo4": "127.0.0.1", "lo6": "::1", "w4": bed.HOST4,
            "w6": bed.HOST6}[who]
    return send(bed, ns, addr, port, size, proto, timeout=5)


@pytest.mark.parametrize("case", sorted(TCP_CASES))
def test_tcp_spec_forwards_exactly_the_named_ports(bed, case):
    spec, served, probes = TCP_CASES[case]
    ns, _p = pasta_up(bed, ["-t", spec])
    for port in served:
        serve(bed, ns, port)
    got = [(who, port, _probe(bed, who, port)) for who, port, _e in probes]
    assert got == probes


UDP_CASES = {
    "single": ("5353", [5353], [("lo4", 5353, "ok"), ("lo6", 5353, "ok"),
                                ("w4", 5353, "ok"), ("w6", 5353, "ok")]),
    "translated": ("5353:6363", [6363], [("lo4", 5353, "ok"),
                                         ("w4", 5353, "ok")]),
    "address4": ("198.51.100.2/5353", [5353], [("w4", 5353, "ok")]),
    "address6": ("[2001:db8:1::2]/5353", [5353], [("w6", 5353, "ok")]),
    "range_exclusion": ("5350-5360,~5352-5359", [5351, 5355, 5360],
                        [("lo4", 5351, "ok"), ("w6", 5360, "ok"),
                         ("lo4", 5355, REFUSED)]),
    "translated_range": ("5350-5351:6350-6351", [6350, 6351],
                         [("lo6", 5351, "ok"), ("w4", 5350, "ok")]),
    "interface": ("%h0/5353", [5353], [("w4", 5353, "ok"),
                                       ("lo4", 5353, REFUSED)]),
}


@pytest.mark.parametrize("case", sorted(UDP_CASES))
def test_udp_spec_forwards_named_ports(bed, case):
    spec, served, probes = UDP_CASES[case]
    ns, _p = pasta_up(bed, ["-u", spec])
    for port in served:
        serve(bed, ns, port, proto="udp")
    got = [(who, port, _probe(bed, who, port, "udp"))
           for who, port, _e in probes]
    assert got == probes


def test_tcp_forwarded_port_without_server_resets_at_once(bed):
    _ns, _p = pasta_up(bed, ["-t", "8080"])
    t0 = time.monotonic()
    assert _probe(bed, "lo4", 8080) == "ConnectionResetError"
    assert _probe(bed, "w4", 8080) in ("ConnectionResetError",
                                       "ConnectionRefusedError")
    assert time.monotonic() - t0 < 4


def test_udp_unforwarded_port_gets_no_answer(bed):
    ns, _p = pasta_up(bed, ["-u", "5353"])
    serve(bed, ns, 5354, proto="udp")
    # Nothing listens on the host: a refusal comes back from the host's
    # own stack (or nothing at all)
    assert _probe(bed, "lo4", 5354, "udp") in ("ConnectionRefusedError",
                                               "timeout", "TimeoutError")


@pytest.mark.parametrize("only,works,refused",
                         [("-4", "lo4", "lo6"), ("-6", "lo6", "lo4")])
def test_single_ip_version_listens_on_its_family_only(bed, only, works,
                                                      refused):
    ns, _p = pasta_up(bed, [only, "-t", "8080"], wait_port=8080)
    serve(bed, ns, 8080)
    assert _probe(bed, works, 8080) == "ok"
    assert _probe(bed, refused, 8080) == REFUSED


def test_options_add_up(bed):
    ns, _p = pasta_up(bed, ["-t", "8080", "-t", "8090:9090", "-u", "5353"])
    serve(bed, ns, 8080)
    serve(bed, ns, 9090)
    serve(bed, ns, 5353, proto="udp")
    assert _probe(bed, "lo4", 8080) == "ok"
    assert _probe(bed, "w4", 8090) == "ok"
    assert _probe(bed, "w6", 5353, "udp") == "ok"
    assert _probe(bed, "lo4", 9090) == REFUSED


def test_bad_spec_stops_pasta_with_message(bed):
    ns = bed.netns_add("pns")
    r = bed.run(bed.host, bed.pasta_cmd(
        ["-f", "--runas", "0:0", "--netns", "/run/netns/" + ns, "-t",
         "22-80:32-91"])[4:], timeout=10)
    assert r.returncode == 1
    assert "Invalid port specifier '22-80:32-91'" in r.stderr


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
def test_ns_side_option_forwards_to_host_loopback(bed, addr):
    ns, _p = pasta_up(bed, ["-T", "5000:6000"])
    serve(bed, bed.host, 6000, bind=addr)
    assert send(bed, ns, addr, 5000) == "ok"
    assert send(bed, ns, addr, 6000) == REFUSED


def test_ns_side_udp_option(bed):
    ns, _p = pasta_up(bed, ["-U", "5000"])
    serve(bed, bed.host, 5000, proto="udp", bind="127.0.0.1")
    assert send(bed, ns, "127.0.0.1", 5000, proto="udp") == "ok"


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
def test_spliced_10mib_intact_both_ways_after_half_close(bed, addr):
    mib10 = 10 * 1024 * 1024
    ns, _p = pasta_up(bed, ["-t", "8080", "-T", "5000"])
    serve(bed, ns, 8080, reply=mib10)
    serve(bed, bed.host, 5000, bind=addr, reply=mib10)
    assert send(bed, bed.host, addr, 8080, mib10, reply=mib10,
                timeout=30) == "ok"
    assert send(bed, ns, addr, 5000, mib10, reply=mib10, timeout=30) == "ok"


def _wait_result(bed, want, port, timeout=5.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _probe(bed, "lo4", port) == want:
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def test_auto_picks_up_later_listener_and_drops_it(bed):
    ns, _p = pasta_up(bed, ["-t", "auto"])
    assert _probe(bed, "lo4", 8080) == REFUSED
    srv = serve(bed, ns, 8080, count=1000)
    picked = _wait_result(bed, "ok", 8080)
    assert picked is not None and picked < 3
    srv.kill()
    srv.wait(5)
    dropped = _wait_result(bed, REFUSED, 8080)
    assert dropped is not None and dropped < 3


def test_auto_udp_follows_listener(bed):
    ns, _p = pasta_up(bed, ["-u", "auto"])
    serve(bed, ns, 5353, proto="udp", count=1000)
    t0 = time.monotonic()
    while _probe(bed, "lo4", 5353, "udp") != "ok":
        assert time.monotonic() - t0 < 3
        time.sleep(0.2)


def test_auto_ns_side_follows_host_listener(bed):
    ns, _p = pasta_up(bed, ["-T", "auto"])
    serve(bed, bed.host, 6001, bind="127.0.0.1")
    t0 = time.monotonic()
    while send(bed, ns, "127.0.0.1", 6001) != "ok":
        assert time.monotonic() - t0 < 3
        time.sleep(0.2)


def test_splice_only(bed):
    mib10 = 10 * 1024 * 1024
    ns, _p = pasta_up(bed, ["-t", "8080", "-T", "5000"], splice_only=True,
                      wait_port=8080)
    links = bed.run(ns, ["ip", "-o", "link", "show"]).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]
    assert "state UP" in links or "LOOPBACK,UP" in links

    serve(bed, ns, 8080, reply=mib10)
    serve(bed, bed.host, 5000, bind="127.0.0.1", reply=mib10)
    assert send(bed, bed.host, "127.0.0.1", 8080, mib10, reply=mib10,
                timeout=30) == "ok"
    assert send(bed, ns, "127.0.0.1", 5000, mib10, reply=mib10,
                timeout=30) == "ok"

    # From outside the loopback: refused at once, not left hanging
    t0 = time.monotonic()
    res = send(bed, bed.world, bed.HOST4, 8080, timeout=5)
    assert res != "ok" and time.monotonic() - t0 < 4
    assert res in ("ConnectionResetError", "BrokenPipeError", "OSError") \
        or res.startswith("bad answer (0 bytes)")


# Outbound NAT through pasta: what the guest's destinations become

def test_gateway_reaches_host_loopback(bed):
    ns, _p = pasta_up(bed, [])
    serve(bed, bed.host, 7000, bind="127.0.0.1")
    assert send(bed, ns, bed.GW4, 7000) == "ok"


def test_no_map_gw_leaves_gateway_alone(bed):
    ns, _p = pasta_up(bed, ["--no-map-gw"])
    serve(bed, bed.host, 7000, bind="127.0.0.1")
    serve(bed, bed.world, 7000, bind=bed.GW4)
    # The world's own server answers now (its address shows the peer)
    assert send(bed, ns, bed.GW4, 7000) == "ok"
    r = bed.run(ns, PEER + ["send", bed.GW4, 7001, 10, "tcp", 5])
    assert json.loads(r.stdout)["result"] == REFUSED


def test_map_host_loopback_address(bed):
    ns, _p = pasta_up(bed, ["--map-host-loopback", "192.0.2.1"])
    serve(bed, bed.host, 7000, bind="127.0.0.1")
    bed.run(ns, ["ip", "route", "add", "192.0.2.1", "via", bed.GW4],
            check=True)
    assert send(bed, ns, "192.0.2.1", 7000) == "ok"


def test_map_guest_addr_reaches_host_address(bed):
    ns, _p = pasta_up(bed, ["--map-guest-addr", "192.0.2.2"])
    serve(bed, bed.host, 7002, bind=bed.HOST4)
    bed.run(ns, ["ip", "route", "add", "192.0.2.2", "via", bed.GW4],
            check=True)
    assert send(bed, ns, "192.0.2.2", 7002) == "ok"


def test_dns_forward_reaches_host_resolver(dns_bed):
    bed = dns_bed
    ns, _p = pasta_up(bed, ["--dns-forward", "198.51.100.3"])
    r = bed.run(ns, ["dig", "+short", "+time=2", "+tries=2",
                     "@198.51.100.3", bed.DNS_NAME, "A"], timeout=15)
    assert r.stdout.strip() == bed.DNS_ADDR4


def _fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def _settled_fd_count(pid, timeout=15.0):
    """The descriptor count of ``pid`` once it stopped changing for a
    while: pools refill on the TCP timer, which can take up to two wake-ups
    of the loop (one a second) to come round."""
    deadline = time.monotonic() + timeout
    last = _fd_count(pid)
    while time.monotonic() < deadline:
        time.sleep(2.5)
        now = _fd_count(pid)
        if now == last:
            return now
        last = now
    return last


def test_thousand_spliced_connections_leave_no_fds(bed):
    ns, proc = pasta_up(bed, ["-t", "8080"])
    serve(bed, ns, 8080, count=1001)
    assert send(bed, bed.host, "127.0.0.1", 8080) == "ok"
    before = _settled_fd_count(proc.pid)
    r = bed.run(bed.host, PEER + ["sendmany", "127.0.0.1", 8080, 1000],
                timeout=120)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"ok": 1000}
    assert _settled_fd_count(proc.pid) == before


if __name__ == "__main__":
    _scn_main(sys.argv)
