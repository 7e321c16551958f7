# SPDX-License-Identifier: GPL-2.0-or-later
"""DNS: resolver defaults, --dns-forward, -D/-S and what DHCP hands out.

What upstream pasta does, and these tests check:

- The namespace pasta spawns shares the host's files, so a program there
  reads the same ``/etc/resolv.conf`` as pasta and sends its queries to
  the same resolver, through the tap device like any other traffic.
- The resolvers pasta would announce (``c.ip4.dns``) are those of the
  host's resolv.conf, except that a loopback resolver, unreachable from
  the guest as such, is announced as the address that maps to the host's
  loopback (the gateway by default), which also becomes the
  ``--dns-forward`` address (``c.ip4.dns_match``).
- ``--dns-forward ADDR``: queries the guest sends to ADDR port 53 go to
  the host's resolver (the first nameserver of resolv.conf, or
  ``--dns-host``), and the answers come back from ADDR.
- In pasta mode DNS servers and search domains go in DHCP answers only
  with ``--dhcp-dns`` and ``--dhcp-search``.

The world's dnsmasq (``Bed.dns_world``) answers test.example. with
192.0.2.99 and 2001:db8:3::99; the bed's resolv.conf for the host
namespace names it, so no query ever leaves the bed.
"""

import ipaddress
import os
import socket
import subprocess
import time

import pytest

from test_udp import (GUEST4, GUEST6, WORLD4, WORLD6, FakeTap, Netns,
                      from_guest, in_ns, make_ctx, needs_root, parse_frame,
                      pump, server, udp_dgram)

PASTA = ["--config-net", "-f", "--runas", "0:0"]
FWD4 = "10.53.0.1"           # --dns-forward addresses used here
FWD6 = "fd53::1"


# -- get_dns(): defaults from resolv.conf (pure) ---------------------------

def _conf_ctx():
    from pasta.passt import Ctx
    c = Ctx()
    c.ifi4 = c.ifi6 = 1
    c.ip4.map_host_loopback = ipaddress.IPv4Address("198.51.100.1")
    c.ip6.map_host_loopback = ipaddress.IPv6Address("2001:db8:1::1")
    return c


def _get_dns(tmp_path, text, c=None):
    from pasta import conf
    c = c or _conf_ctx()
    path = tmp_path / "resolv.conf"
    path.write_text(text)
    conf.get_dns(c, str(path))
    return c


def test_get_dns_takes_host_resolvers_and_search_list(tmp_path):
    c = _get_dns(tmp_path, "search a.example b.example\n"
                 "nameserver 203.0.113.10\nnameserver 2001:db8:2::10\n")
    assert [str(a) for a in c.ip4.dns] == ["203.0.113.10"]
    assert [str(a) for a in c.ip6.dns] == ["2001:db8:2::10"]
    assert (str(c.ip4.dns_host), str(c.ip6.dns_host)) == \
        ("203.0.113.10", "2001:db8:2::10")
    # Nothing to redirect: the guest can reach these resolvers itself
    assert (str(c.ip4.dns_match), str(c.ip6.dns_match)) == ("0.0.0.0", "::")
    assert c.dns_search == ["a.example", "b.example"]


def test_get_dns_loopback_resolver_is_announced_as_mapped_gateway(tmp_path):
    c = _get_dns(tmp_path, "nameserver 127.0.0.53\nnameserver ::1\n"
                 "nameserver 203.0.113.10\n")
    assert [str(a) for a in c.ip4.dns] == ["198.51.100.1", "203.0.113.10"]
    assert [str(a) for a in c.ip6.dns] == ["2001:db8:1::1"]
    assert (str(c.ip4.dns_match), str(c.ip6.dns_match)) == \
        ("198.51.100.1", "2001:db8:1::1")
    # Queries to the gateway go to the resolver pasta itself would use
    assert (str(c.ip4.dns_host), str(c.ip6.dns_host)) == ("127.0.0.53",
                                                          "::1")


def test_get_dns_loopback_resolver_with_dns_forward_and_no_map(tmp_path):
    c = _conf_ctx()
    c.ip4.map_host_loopback = ipaddress.IPv4Address(0)
    c.ip4.dns_match = ipaddress.IPv4Address(FWD4)
    c = _get_dns(tmp_path, "nameserver 127.0.0.1\n", c)
    assert [str(a) for a in c.ip4.dns] == [FWD4]
    assert str(c.ip4.dns_host) == "127.0.0.1"


def test_get_dns_keeps_given_servers_and_search(tmp_path):
    c = _conf_ctx()
    c.ip4.dns = [ipaddress.IPv4Address("192.0.2.7")]
    c.ip6.dns = [ipaddress.IPv6Address("2001:db8::7")]
    c.dns_search = ["given.example"]
    c = _get_dns(tmp_path, "search other.example\nnameserver 203.0.113.10\n",
                 c)
    assert [str(a) for a in c.ip4.dns] == ["192.0.2.7"]
    assert c.dns_search == ["given.example"]
    assert str(c.ip4.dns_host) == "0.0.0.0"


# -- the UDP path of --dns-forward, driven directly ---------------------------

def _dns_forward_udp(af, closed=False):
    c = make_ctx()
    tap = FakeTap(c)
    if af == socket.AF_INET:
        c.ip4.dns_match = ipaddress.IPv4Address(FWD4)
        c.ip4.dns_host = ipaddress.IPv4Address(WORLD4)
        guest, fwd, world = GUEST4, FWD4, WORLD4
    else:
        c.ip6.dns_match = ipaddress.IPv6Address(FWD6)
        c.ip6.dns_host = ipaddress.IPv6Address(WORLD6)
        guest, fwd, world = GUEST6, FWD6, WORLD6
    query = b"\x12\x34" + os.urandom(30)
    if closed:
        from_guest(c, af, guest, fwd, [udp_dgram(41000, 53, query)])
        pump(c, 2, lambda: tap.frames)
        return None, [parse_frame(v, f) for v, f in tap.take()]
    with server(af, world, 53) as srv:
        from_guest(c, af, guest, fwd, [udp_dgram(41000, 53, query)])
        data, peer = srv.recvfrom(1000)
        srv.sendto(data[::-1], peer)
        pump(c, 2, lambda: tap.frames)
    frames = [parse_frame(v, f) for v, f in tap.take()]
    return (data == query, peer[1]), [
        (f["src"], f["sport"], f["dst"], f["dport"],
         f["payload"] == query[::-1]) for f in frames]


@needs_root
@pytest.mark.parametrize("af", [socket.AF_INET, socket.AF_INET6])
def test_dns_forward_query_reaches_host_resolver_answer_from_forward_addr(
        af):
    ns = Netns()
    try:
        seen, frames = in_ns(ns, _dns_forward_udp, af)
    finally:
        ns.close()
    guest, fwd = (GUEST4, FWD4) if af == socket.AF_INET else (GUEST6, FWD6)
    assert seen == (True, 41000)
    assert frames == [(fwd, 53, guest, 41000, True)]


@needs_root
def test_dns_forward_resolver_port_unreachable_comes_from_forward_addr():
    ns = Netns()
    try:
        _, frames = in_ns(ns, _dns_forward_udp, socket.AF_INET, True)
    finally:
        ns.close()
    (f,) = frames
    assert (f["src"], f["dst"], f["proto"], f["l4"][:2]) == \
        (FWD4, GUEST4, 1, b"\x03\x03")
    # The quoted header is the one the guest sent: to the forward address
    assert socket.inet_ntoa(f["l4"][24:28]) == FWD4


# -- end to end, in the test bed --------------------------------------------

def _dig(args):
    return "dig +time=2 +tries=2 " + args


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("tcp", [False, True])
def test_dig_to_dns_forward_address_gets_dnsmasq_answer(dns_bed, v, tcp):
    bed = dns_bed
    fwd, rr, want = (FWD4, "A", bed.DNS_ADDR4) if v == 4 else \
        (FWD6, "AAAA", bed.DNS_ADDR6)
    r = bed.pasta(PASTA + ["--dns-forward", fwd],
                  _dig("%s@%s %s %s" % ("+tcp " if tcp else "", fwd,
                                        bed.DNS_NAME, rr)), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    answer = [ln.split() for ln in r.stdout.splitlines()
              if ln.startswith(bed.DNS_NAME)]
    assert answer and answer[0][-1] == want
    # The answer came from the address the query was sent to
    assert ("SERVER: %s#53" % fwd) in r.stdout


def test_config_net_without_dns_options_resolves_through_host_resolv_conf(
        dns_bed):
    bed = dns_bed
    r = bed.pasta(PASTA, "cat /etc/resolv.conf; getent ahostsv4 %s; "
                  "dig +short +time=2 +tries=2 %s AAAA"
                  % (bed.DNS_NAME.rstrip("."), bed.DNS_NAME), timeout=60)
    assert r.returncode == 0, r.stderr
    # Same resolv.conf as the host: queries go to the world's resolver,
    # through the tap
    assert "nameserver %s" % bed.WORLD4 in r.stdout
    assert bed.DNS_ADDR4 in r.stdout
    assert bed.DNS_ADDR6 in r.stdout


@pytest.mark.skipif(not os.access("/usr/bin/pasta", os.X_OK),
                    reason="Debian's reference pasta is not installed")
def test_config_net_resolution_matches_reference_pasta(dns_bed):
    bed = dns_bed
    cmd = "getent ahostsv4 %s | head -1" % bed.DNS_NAME.rstrip(".")
    ours = bed.pasta(PASTA, cmd, timeout=60)
    ref = bed.ref_pasta(PASTA, cmd, timeout=60)
    assert ours.stdout.split()[:1] == ref.stdout.split()[:1] == \
        [bed.DNS_ADDR4]


def _host_resolv(bed, text):
    with open("/etc/netns/%s/resolv.conf" % bed.host, "w") as f:
        f.write(text)


def test_dns_host_overrides_resolver_for_dns_forward(dns_bed):
    bed = dns_bed
    # The host's resolv.conf names a resolver that does not exist
    _host_resolv(bed, "nameserver 203.0.113.99\n")
    r = bed.pasta(PASTA + ["--dns-forward", FWD4, "--dns-host", bed.WORLD4],
                  _dig("+short @%s %s A" % (FWD4, bed.DNS_NAME)),
                  timeout=60)
    assert r.stdout.split() == [bed.DNS_ADDR4], r.stderr


def test_loopback_host_resolver_is_reached_at_the_gateway(bed):
    # dnsmasq on the host's loopback, named by its resolv.conf: the guest
    # reaches it at the gateway address, which pasta maps to loopback
    name = bed.DNS_NAME.rstrip(".")
    bed.popen(bed.host, [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
        "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces",
        "--pid-file", "--user=root", "--group=root",
        "--listen-address=127.0.0.1", "--address=/%s/192.0.2.77" % name],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = bed.run(bed.host, ["dig", "+short", "+time=1", "+tries=1",
                               "@127.0.0.1", bed.DNS_NAME, "A"], timeout=5)
        if r.stdout.strip() == "192.0.2.77":
            break
        time.sleep(0.1)
    _host_resolv(bed, "nameserver 127.0.0.1\n")
    r = bed.pasta(PASTA, _dig("+short @%s %s A" % (bed.GW4, bed.DNS_NAME)),
                  timeout=60)
    assert r.stdout.split() == ["192.0.2.77"], r.stderr


UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "dns=$dns domain=$domain search=$search" >> %s
exit 0
"""


def _udhcpc(bed, args):
    out = os.path.join(bed.tmp, "udhcpc.out")
    script = os.path.join(bed.tmp, "udhcpc.sh")
    with open(script, "w") as f:
        f.write(UDHCPC_SCRIPT % out)
    os.chmod(script, 0o755)
    r = bed.pasta(["-f", "--runas", "0:0"] + args,
                  "ip link set %s up && udhcpc -i %s -f -q -n -t 5 -s %s"
                  % (bed.HOST_IF, bed.HOST_IF, script), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out) as f:
        return f.read().split()


def test_dhcp_hands_out_D_and_S_with_dhcp_dns_and_dhcp_search(bed):
    got = _udhcpc(bed, ["-D", "192.0.2.53", "-D", "192.0.2.54",
                        "-S", "one.example", "--dhcp-dns",
                        "--dhcp-search"])
    assert got[0] == "dns=192.0.2.53"
    assert "192.0.2.54" in got
    assert any(w.startswith("search=") and "one.example" in w
               for w in got)


def test_dhcp_has_no_dns_in_pasta_mode_by_default(bed):
    got = _udhcpc(bed, ["-D", "192.0.2.53", "-S", "one.example"])
    assert got == ["dns=", "domain=", "search="]


def test_D_none_leaves_guest_without_resolver_in_dhcp(bed):
    got = _udhcpc(bed, ["-D", "none", "--dhcp-dns"])
    assert got[0] == "dns="

