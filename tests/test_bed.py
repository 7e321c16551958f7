# SPDX-License-Identifier: GPL-2.0-or-later
"""Checks of the test bed itself, and of Debian's pasta running in it.

The first group needs no pasta at all: it shows that the host namespace
reaches the world's servers directly, that the world's DNS answers, that
commands start with clean signal state and that closing a bed leaves
nothing behind. The second group runs Debian's reference pasta
(/usr/bin/pasta) in a bed, the way our own pasta will be run, and checks
what a user would see in its namespace; it is skipped when the passt
package is not installed.

Debian's pasta (2023) as root switches to user "nobody" and then fails to
write the uid map of the namespace it spawns (and spins); the reference
tests therefore pass ``--runas 0:0`` and, where root is needed inside,
attach pasta to a namespace made with ``ip netns add``.
"""

import json
import os
import subprocess
import sys
import time

import pytest

import bed as bedmod
from bed import Bed, needs_ref_pasta, needs_root


def _addrs(ip_j_addr_output):
    """Map interface name -> set of "address/prefix" from ``ip -j addr``."""
    out = {}
    for ifc in json.loads(ip_j_addr_output):
        out[ifc["ifname"]] = {"%s/%d" % (a["local"], a["prefixlen"])
                              for a in ifc.get("addr_info", [])}
    return out


def _routes(ip_j_route_output):
    """Map destination -> gateway (or None) from ``ip -j route``."""
    return {r["dst"]: r.get("gateway")
            for r in json.loads(ip_j_route_output)}


def _gone(pid, timeout=3.0):
    """Tell whether *pid* ends (exits, or is a zombie) within *timeout*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


# -- the bed alone ---------------------------------------------------------

def test_host_has_template_addresses_and_routes(bed):
    """h0 carries HOST4/HOST6 and the default routes point at the gateway."""
    r = bed.run(bed.host, ["ip", "-j", "addr", "show", "dev", "h0"],
                check=True)
    assert {"198.51.100.2/24", "2001:db8:1::2/64"} <= _addrs(r.stdout)["h0"]

    r4 = bed.run(bed.host, ["ip", "-j", "-4", "route"], check=True)
    r6 = bed.run(bed.host, ["ip", "-j", "-6", "route"], check=True)
    assert _routes(r4.stdout)["default"] == bed.GW4
    assert _routes(r6.stdout)["default"] == bed.GW6


def test_no_tentative_ipv6_address_after_setup(bed):
    """A fresh bed has no address still doing DAD, on either side."""
    for ns in (bed.host, bed.world):
        r = bed.run(ns, ["ip", "-j", "-6", "addr", "show", "tentative"],
                    check=True)
        assert not any(i.get("addr_info") for i in json.loads(r.stdout))


@pytest.mark.parametrize("addr", [Bed.WORLD4, Bed.WORLD6])
def test_host_pings_world_server(bed, addr):
    """The host namespace reaches the world's server addresses by ICMP."""
    r = bed.run(bed.host, ["ping", "-c1", "-W3", addr])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 received" in r.stdout


@pytest.mark.parametrize("addr", [Bed.WORLD4, Bed.WORLD6])
def test_host_sends_tcp_data_to_world_server(bed, addr):
    """A TCP transfer from host to a world server arrives intact."""
    path, digest = bed.make_blob(256 * 1024)
    sink = bed.tcp_sink(bed.world, 7001, bind=addr)
    target = "TCP6:[%s]:7001" % addr if ":" in addr else \
        "TCP4:%s:7001" % addr

    r = bed.run(bed.host, ["socat", "-u", "OPEN:" + path, target])

    assert r.returncode == 0, r.stderr
    assert sink.wait() == (256 * 1024, digest)


def test_host_resolv_conf_names_world_dns(bed):
    """Commands in host see the bed's resolv.conf, not the machine's."""
    r = bed.run(bed.host, ["cat", "/etc/resolv.conf"], check=True)
    assert r.stdout.split() == ["nameserver", Bed.WORLD4,
                                "nameserver", Bed.WORLD6]


def test_world_dns_answers_through_host_resolver(dns_bed):
    """dig in host, with no server given, gets the world's answers."""
    b = dns_bed
    a = b.run(b.host, ["dig", "+short", "+time=2", "+tries=1",
                       b.DNS_NAME, "A"], check=True)
    aaaa = b.run(b.host, ["dig", "+short", "+time=2", "+tries=1",
                          "@" + b.WORLD6, b.DNS_NAME, "AAAA"], check=True)
    assert a.stdout.strip() == "192.0.2.99"
    assert aaaa.stdout.strip() == "2001:db8:3::99"


def test_host_ping_group_range_is_open(bed):
    """Everyone may open ping sockets in host (pasta's ICMP needs it)."""
    r = bed.run(bed.host, ["sysctl", "-n", "net.ipv4.ping_group_range"],
                check=True)
    assert r.stdout.split() == ["0", "2147483647"]


def test_commands_start_with_no_ignored_or_blocked_signal(bed):
    """Nothing the test runner ignores or blocks leaks into commands."""
    r = bed.run(bed.host, ["grep", "-E", "^Sig(Ign|Blk):",
                           "/proc/self/status"], check=True)
    for line in r.stdout.splitlines():
        assert int(line.split()[1], 16) == 0, line


def test_run_timeout_kills_the_command(bed):
    """A command that outlives its timeout is killed and reported."""
    with pytest.raises(subprocess.TimeoutExpired):
        bed.run(bed.host, ["sleep", "30"], timeout=0.5)
    r = bedmod._root(["ip", "netns", "pids", bed.host])
    assert r.stdout.split() == [], "sleep survived its timeout"


def test_refuses_to_run_without_a_namespace(bed):
    """There is no way to run a command in the root namespace by mistake."""
    with pytest.raises(ValueError):
        bed.run(None, ["true"])
    with pytest.raises(ValueError):
        bed.run("", ["true"])


def test_beds_get_distinct_names():
    """Two beds alive at once use different namespace names."""
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root")
    with Bed() as a, Bed() as b:
        names = {a.host, a.world, b.host, b.world}
        assert len(names) == 4
        assert all(n.startswith("pt%d-" % os.getpid()) for n in names)


@needs_root
def test_close_removes_namespaces_files_and_processes():
    """close() stops started processes and deletes namespaces and files."""
    b = Bed()
    extra = b.netns_add("x")
    proc = b.popen(b.world, ["sleep", "60"])
    daemon = b.run(b.host, "sleep 60 >/dev/null 2>&1 & echo $!",
                   check=True)
    etc = os.path.join(bedmod.NETNS_ETC, b.host)
    names = (b.host, b.world, extra)
    assert os.path.exists(os.path.join(etc, "resolv.conf"))
    assert all(os.path.exists("/run/netns/" + n) for n in names)

    b.close()

    assert proc.returncode is not None
    assert _gone(int(daemon.stdout))
    assert not any(os.path.exists("/run/netns/" + n) for n in names)
    assert not os.path.exists(etc)
    assert not os.path.exists(b.tmp)
    b.close()


def test_pasta_cmd_runs_our_package(bed):
    """pasta_cmd() runs this repository's package, not /usr/bin/pasta."""
    argv = bed.pasta_cmd(["--version"], ["true"])
    assert argv[:4] == ["ip", "netns", "exec", bed.host]
    assert argv[4:7] == [sys.executable, "-m", "pasta"]
    assert argv[-2:] == ["--", "true"]
    assert bedmod.REF_PASTA not in argv

    r = bed.run(bed.host, [sys.executable, "-c",
                           "import pasta; print(pasta.__file__)"],
                check=True)
    assert r.stdout.strip() == os.path.join(bedmod.REPO, "pasta",
                                            "__init__.py")


def test_netns_add_makes_an_empty_namespace(bed):
    """netns_add() gives a named namespace with only a loopback."""
    ns = bed.netns_add("t")
    r = bed.run(ns, ["ip", "-j", "link"], check=True)
    assert [i["ifname"] for i in json.loads(r.stdout)] == ["lo"]


# -- Debian's reference pasta in the bed -----------------------------------

@needs_ref_pasta
def test_ref_pasta_config_net_copies_h0(bed):
    """Spawned by reference pasta, a command sees h0's addresses/routes."""
    r = bed.ref_pasta(["--config-net", "--runas", "0:0"],
                      "ip -j addr show; echo; ip -j -4 route;"
                      " echo; ip -j -6 route", timeout=20)
    assert r.returncode == 0, r.stderr
    addr, route4, route6 = r.stdout.split("\n\n")

    addrs = _addrs(addr)
    assert {"198.51.100.2/24", "2001:db8:1::2/64"} <= addrs["h0"]
    assert _routes(route4)["default"] == bed.GW4
    assert _routes(route6)["default"] == bed.GW6


@needs_ref_pasta
def test_ref_pasta_attached_reaches_world(bed):
    """Through reference pasta, an attached namespace pings and sends TCP."""
    ns = bed.netns_add("c")
    bed.ref_pasta_attach(ns)
    path, digest = bed.make_blob(512 * 1024)
    sink = bed.tcp_sink(bed.world, 7002, bind=bed.WORLD4)

    p4 = bed.run(ns, ["ping", "-c1", "-W3", bed.WORLD4])
    p6 = bed.run(ns, ["ping", "-c1", "-W3", bed.WORLD6])
    send = bed.run(ns, ["socat", "-u", "OPEN:" + path,
                        "TCP4:%s:7002" % bed.WORLD4])

    assert "1 received" in p4.stdout, p4.stdout + p4.stderr
    assert "1 received" in p6.stdout, p6.stdout + p6.stderr
    assert send.returncode == 0, send.stderr
    assert sink.wait() == (512 * 1024, digest)


@needs_ref_pasta
def test_ref_pasta_forwards_port_from_world(bed):
    """With -t, a world client reaches a listener in pasta's namespace."""
    ns = bed.netns_add("c")
    bed.ref_pasta_attach(ns, ["-t", "7003"])
    path, digest = bed.make_blob(512 * 1024)
    sink = bed.tcp_sink(ns, 7003)

    send = bed.run(bed.world, ["socat", "-u", "OPEN:" + path,
                               "TCP4:%s:7003" % bed.HOST4])

    assert send.returncode == 0, send.stderr
    assert sink.wait() == (512 * 1024, digest)


@needs_ref_pasta
def test_ref_pasta_dns_forward_reaches_world_dns(dns_bed):
    """Queries to --dns-forward's address are answered by the world DNS."""
    b = dns_bed
    ns = b.netns_add("c")
    b.ref_pasta_attach(ns, ["--dns-forward", "192.0.2.53"])

    r = b.run(ns, ["dig", "+short", "+time=2", "+tries=2",
                   "@192.0.2.53", b.DNS_NAME, "A"])

    assert r.stdout.strip() == b.DNS_ADDR4, r.stdout + r.stderr
