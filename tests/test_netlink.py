# SPDX-License-Identifier: GPL-2.0-or-later
"""netlink.py against real kernels' views: the bed's namespaces.

The "host" namespace of the test bed has the template interface h0
(198.51.100.2/24 via .1, 2001:db8:1::2/64 via ::1).  Each test also makes
an empty "dst" namespace with a veth pair t0/t1, standing for pasta's
namespace.  The test process stays in its own namespace: its sockets are
created inside the others through ``util.ns_call()``, exactly as pasta
gets its namespace socket, and what the functions did is checked with
iproute2's JSON output.
"""

import errno
import ipaddress
import json
import os
import socket

import pytest

from pasta import netlink as nl

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="network namespaces need root")

AF4, AF6 = socket.AF_INET, socket.AF_INET6


class Ns:
    """A namespace of the bed, its netlink socket and its iproute2."""

    def __init__(self, bed, name):
        self.bed = bed
        self.name = name
        self.fd = os.open("/run/netns/" + name, os.O_RDONLY | os.O_CLOEXEC)
        self.s = nl.nl_sock_of_ns(self.fd)

    def ip(self, *args, check=True):
        r = self.bed.run(self.name, ["ip"] + list(args), check=check)
        return r.stdout

    def ipj(self, *args):
        return json.loads(self.ip("-j", *args) or "[]")

    def ifi(self, name):
        return self.ipj("link", "show", name)[0]["ifindex"]

    def close(self):
        nl.nl_sock_close(self.s)
        os.close(self.fd)


@pytest.fixture
def host(bed):
    ns = Ns(bed, bed.host)
    yield ns
    ns.close()


@pytest.fixture
def dst(bed):
    name = bed.netns_add("dst")
    bed.run(name, ["ip", "link", "add", "t0", "type", "veth", "peer",
                   "name", "t1"], check=True)
    for dev in ("lo", "t0", "t1"):
        bed.run(name, ["ip", "link", "set", dev, "up"], check=True)
    ns = Ns(bed, name)
    yield ns
    ns.close()


def _globals(ns, dev):
    link = ns.ipj("addr", "show", dev)[0]
    return {(a["local"], a["prefixlen"], bool(a.get("nodad")))
            for a in link["addr_info"] if a.get("scope") == "global"}


# Reading the template

def test_ext_if_is_the_interface_with_the_default_route(host):
    h0 = host.ifi("h0")
    assert nl.nl_get_ext_if(host.s, AF4) == h0
    assert nl.nl_get_ext_if(host.s, AF6) == h0


def test_ext_if_is_zero_without_routes(dst):
    dst.ip("link", "set", "t0", "down")
    dst.ip("link", "set", "t1", "down")
    assert nl.nl_get_ext_if(dst.s, AF4) == 0
    assert nl.nl_get_ext_if(dst.s, AF6) == 0


def test_route_get_def_gives_the_gateways(host, bed):
    h0 = host.ifi("h0")
    assert nl.nl_route_get_def(host.s, h0, AF4) == \
        ipaddress.ip_address(bed.GW4)
    assert nl.nl_route_get_def(host.s, h0, AF6) == \
        ipaddress.ip_address(bed.GW6)


def test_route_get_def_is_none_without_default_route(dst):
    assert nl.nl_route_get_def(dst.s, dst.ifi("t0"), AF4) is None
    assert nl.nl_route_get_def(dst.s, dst.ifi("t0"), AF6) is None


def test_route_get_def_multipath_takes_heaviest_next_hop(dst):
    dst.ip("addr", "add", "10.0.0.2/24", "dev", "t0")
    dst.ip("route", "add", "default", "nexthop", "via", "10.0.0.1",
           "dev", "t0", "weight", "1", "nexthop", "via", "10.0.0.3",
           "dev", "t0", "weight", "5")
    assert nl.nl_route_get_def(dst.s, dst.ifi("t0"), AF4) == \
        ipaddress.ip_address("10.0.0.3")


def test_addr_get_returns_address_prefix_and_link_local(host, bed):
    h0 = host.ifi("h0")
    assert nl.nl_addr_get(host.s, h0, AF4) == \
        (ipaddress.ip_address(bed.HOST4), 24, None)

    addr, plen, ll = nl.nl_addr_get(host.s, h0, AF6)
    assert (addr, plen) == (ipaddress.ip_address(bed.HOST6), 64)
    lls = [a["local"] for a in host.ipj("-6", "addr", "show", "h0")[0]
           ["addr_info"] if a.get("scope") == "link"]
    assert [str(ll)] == lls
    assert nl.nl_addr_get_ll(host.s, h0) == ll


def test_addr_get_of_interface_without_addresses(dst):
    assert nl.nl_addr_get(dst.s, dst.ifi("t0"), AF4) == (None, 0, None)


def test_link_get_mac_and_mtu(host):
    link = host.ipj("link", "show", "h0")[0]
    h0 = link["ifindex"]
    assert nl.nl_link_get_mac(host.s, h0) == \
        bytes.fromhex(link["address"].replace(":", ""))
    assert nl.nl_link_get_mtu(host.s, h0) == link["mtu"]


# Writing into the namespace

def test_addr_dup_copies_global_addresses_without_dad(host, dst, bed):
    h0, t0 = host.ifi("h0"), dst.ifi("t0")
    nl.nl_addr_dup(host.s, h0, dst.s, t0, AF4)
    nl.nl_addr_dup(host.s, h0, dst.s, t0, AF6)
    assert _globals(dst, "t0") == {(bed.HOST4, 24, False),
                                   (bed.HOST6, 64, True)}


def test_route_dup_copies_routes_of_the_template(host, dst, bed):
    h0, t0 = host.ifi("h0"), dst.ifi("t0")
    host.ip("route", "add", "192.0.2.0/24", "nexthop", "via", bed.GW4,
            "dev", "h0", "weight", "2", "nexthop", "via", "198.51.100.3",
            "dev", "h0", "weight", "3")
    nl.nl_addr_dup(host.s, h0, dst.s, t0, AF4)
    nl.nl_addr_dup(host.s, h0, dst.s, t0, AF6)

    nl.nl_route_dup(host.s, h0, dst.s, t0, AF4)
    nl.nl_route_dup(host.s, h0, dst.s, t0, AF6)

    r4 = {r["dst"]: r for r in dst.ipj("-4", "route", "show")}
    assert r4["default"]["gateway"] == bed.GW4
    assert r4["default"]["dev"] == "t0"
    hops = {(h["gateway"], h["dev"], h["weight"])
            for h in r4["192.0.2.0/24"]["nexthops"]}
    assert hops == {(bed.GW4, "t0", 2), ("198.51.100.3", "t0", 3)}
    r6 = [r for r in dst.ipj("-6", "route", "show")
          if r["dst"] == "default"]
    assert [(r["gateway"], r["dev"]) for r in r6] == [(bed.GW6, "t0")]


def test_route_dup_resolves_order_of_dependent_routes(host, dst):
    # 10.1.0.0/24 comes first in a dump, but its gateway is only on-link
    # through 10.200.0.0/24, which comes later
    host.ip("route", "add", "10.200.0.0/24", "dev", "h0", "scope", "link")
    host.ip("route", "add", "10.1.0.0/24", "via", "10.200.0.1", "dev",
            "h0")
    h0, t0 = host.ifi("h0"), dst.ifi("t0")

    nl.nl_route_dup(host.s, h0, dst.s, t0, AF4)

    r4 = {r["dst"]: r for r in dst.ipj("-4", "route", "show")}
    assert r4["10.1.0.0/24"]["gateway"] == "10.200.0.1"
    assert "10.200.0.0/24" in r4


def test_route_dup_skips_routes_using_other_interfaces(host, dst, bed):
    host.ip("link", "add", "x0", "type", "veth", "peer", "name", "x1")
    host.ip("link", "set", "x0", "up")
    host.ip("link", "set", "x1", "up")
    host.ip("addr", "add", "10.9.0.1/24", "dev", "x0")
    host.ip("route", "add", "192.0.2.0/24", "nexthop", "via", bed.GW4,
            "dev", "h0", "nexthop", "via", "10.9.0.2", "dev", "x0")
    h0, t0 = host.ifi("h0"), dst.ifi("t0")
    nl.nl_addr_dup(host.s, h0, dst.s, t0, AF4)

    nl.nl_route_dup(host.s, h0, dst.s, t0, AF4)

    dsts = {r["dst"] for r in dst.ipj("-4", "route", "show")}
    assert "default" in dsts
    assert "192.0.2.0/24" not in dsts
    assert "10.9.0.0/24" not in dsts


def test_addr_set_adds_address_and_refuses_duplicate(dst):
    t0 = dst.ifi("t0")
    nl.nl_addr_set(dst.s, t0, AF4, ipaddress.ip_address("10.0.0.2"), 24)
    nl.nl_addr_set(dst.s, t0, AF6,
                   ipaddress.ip_address("2001:db8:9::2"), 64)
    assert _globals(dst, "t0") == {("10.0.0.2", 24, False),
                                   ("2001:db8:9::2", 64, True)}
    with pytest.raises(OSError) as e:
        nl.nl_addr_set(dst.s, t0, AF4, ipaddress.ip_address("10.0.0.2"),
                       24)
    assert e.value.errno == errno.EEXIST


def test_route_set_def_adds_default_routes(dst):
    t0 = dst.ifi("t0")
    nl.nl_addr_set(dst.s, t0, AF4, ipaddress.ip_address("10.0.0.2"), 24)
    nl.nl_addr_set(dst.s, t0, AF6, ipaddress.ip_address("2001:db8:9::2"),
                   64)
    nl.nl_route_set_def(dst.s, t0, AF4, ipaddress.ip_address("10.0.0.1"))
    nl.nl_route_set_def(dst.s, t0, AF6,
                        ipaddress.ip_address("2001:db8:9::1"))
    assert nl.nl_route_get_def(dst.s, t0, AF4) == \
        ipaddress.ip_address("10.0.0.1")
    assert nl.nl_route_get_def(dst.s, t0, AF6) == \
        ipaddress.ip_address("2001:db8:9::1")
    with pytest.raises(OSError) as e:
        nl.nl_route_set_def(dst.s, t0, AF4,
                            ipaddress.ip_address("10.0.0.1"))
    assert e.value.errno == errno.EEXIST


def test_link_set_mtu_mac_and_flags(dst):
    t0 = dst.ifi("t0")
    nl.nl_link_set_flags(dst.s, t0, 0, nl.IFF_UP)
    nl.nl_link_set_mtu(dst.s, t0, 1400)
    nl.nl_link_set_mac(dst.s, t0, bytes.fromhex("9a559a559a56"))
    link = dst.ipj("link", "show", "t0")[0]
    assert (link["mtu"], link["address"]) == (1400, "9a:55:9a:55:9a:56")
    assert "UP" not in link["flags"]

    nl.nl_link_set_flags(dst.s, t0, nl.IFF_UP | nl.IFF_NOARP,
                         nl.IFF_UP | nl.IFF_NOARP)
    assert {"UP", "NOARP"} <= set(dst.ipj("link", "show", "t0")[0]
                                  ["flags"])
    nl.nl_link_set_flags(dst.s, t0, 0, nl.IFF_NOARP)
    flags = dst.ipj("link", "show", "t0")[0]["flags"]
    assert "UP" in flags and "NOARP" not in flags


def test_addr_set_ll_nodad_marks_link_local_addresses(dst):
    t0 = dst.ifi("t0")
    assert nl.nl_addr_get_ll(dst.s, t0) is not None
    nl.nl_addr_set_ll_nodad(dst.s, t0)
    ll = [a for a in dst.ipj("-6", "addr", "show", "t0")[0]["addr_info"]
          if a.get("scope") == "link"]
    assert len(ll) == 1 and ll[0].get("nodad")


def test_failed_request_raises_oserror_with_errno(dst):
    with pytest.raises(OSError) as e:
        nl.nl_link_set_mtu(dst.s, 9999, 1400)
    assert e.value.errno == errno.ENODEV
