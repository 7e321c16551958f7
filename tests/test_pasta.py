# SPDX-License-Identifier: GPL-2.0-or-later
"""The pasta command as a user runs it: the namespace it sets up, how it
ends, and what it says about bad command lines.

Everything runs in a bed (see bed.py): pasta in the bed's host namespace,
with h0 (198.51.100.2/24, 2001:db8:1::2/64) as its template interface."""

import json
import os
import signal
import subprocess
import time

import pytest

from bed import needs_root

pytestmark = needs_root

OUR_MAC = "9a:55:9a:55:9a:55"


def jrun(bed, args, cmd, timeout=30):
    """Run pasta with a command printing JSON; return the parsed output."""
    r = bed.pasta(args, cmd, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def link(addrs, name):
    return next(i for i in addrs if i["ifname"] == name)


def inet(iface, family):
    return [(a["local"], a["prefixlen"]) for a in iface["addr_info"]
            if a["family"] == family and a.get("scope") == "global"]


def test_config_net_copies_the_template_interface(bed):
    addrs = jrun(bed, ["--config-net"], ["ip", "-j", "addr"])

    assert sorted(i["ifname"] for i in addrs) == ["h0", "lo"]
    h0 = link(addrs, "h0")
    assert inet(h0, "inet") == [("198.51.100.2", 24)]
    assert inet(h0, "inet6") == [("2001:db8:1::2", 64)]
    assert h0["mtu"] == 65520
    assert "UP" in h0["flags"]
    assert "UP" in link(addrs, "lo")["flags"]


def test_config_net_copies_the_default_routes(bed):
    routes = jrun(bed, ["--config-net"], ["ip", "-j", "route"])
    routes6 = jrun(bed, ["--config-net"], ["ip", "-j", "-6", "route"])

    assert [(r["gateway"], r["dev"]) for r in routes
            if r["dst"] == "default"] == [("198.51.100.1", "h0")]
    assert [(r["gateway"], r["dev"]) for r in routes6
            if r["dst"] == "default"] == [("2001:db8:1::1", "h0")]


def test_mtu_option_sets_the_interface_mtu(bed):
    addrs = jrun(bed, ["--config-net", "-m", "1280"], ["ip", "-j", "addr"])
    assert link(addrs, "h0")["mtu"] == 1280


def test_address_netmask_and_gateway_options(bed):
    args = ["--config-net", "-a", "10.0.0.5", "-n", "24", "-g", "10.0.0.1"]
    addrs = jrun(bed, args, ["ip", "-j", "addr"])
    routes = jrun(bed, args, ["ip", "-j", "route"])

    assert inet(link(addrs, "h0"), "inet") == [("10.0.0.5", 24)]
    assert [r["gateway"] for r in routes if r["dst"] == "default"] == \
        ["10.0.0.1"]
    # IPv6 is still copied from the template
    assert inet(link(addrs, "h0"), "inet6") == [("2001:db8:1::2", 64)]


@pytest.mark.parametrize("opt, v4, v6", [("-4", True, False),
                                         ("-6", False, True)])
def test_ip_version_options(bed, opt, v4, v6):
    addrs = jrun(bed, ["--config-net", opt], ["ip", "-j", "addr"])
    routes6 = jrun(bed, ["--config-net", opt], ["ip", "-j", "-6", "route"])

    h0 = link(addrs, "h0")
    assert bool(inet(h0, "inet")) == v4
    assert bool(inet(h0, "inet6")) == v6
    assert any(r["dst"] == "default" for r in routes6) == v6


def test_namespace_interface_name_and_mac(bed):
    mac = "02:12:34:56:78:9a"
    addrs = jrun(bed, ["--config-net", "--ns-ifname", "foo",
                       "--ns-mac-addr", mac], ["ip", "-j", "addr"])

    assert sorted(i["ifname"] for i in addrs) == ["foo", "lo"]
    foo = link(addrs, "foo")
    assert foo["address"] == mac
    assert inet(foo, "inet") == [("198.51.100.2", 24)]


def test_exit_status_of_the_command(bed):
    r = bed.pasta(["--config-net"], ["sh", "-c", "exit 7"])
    assert r.returncode == 7


def _descendants(pid):
    """PIDs of the processes below ``pid``, nearest first."""
    found = []
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            with open("/proc/%d/task/%d/children" % (p, p)) as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        found += kids
        todo += kids
    return found


def test_command_killed_by_a_signal(bed):
    p = bed.pasta_popen(["--config-net"], ["sleep", "60"])
    deadline = time.monotonic() + 10
    sleeper = None
    while sleeper is None and time.monotonic() < deadline:
        for pid in _descendants(p.pid):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    if f.read() == b"sleep\x0060\x00":
                        sleeper = pid
            except OSError:
                pass
        time.sleep(0.05)
    assert sleeper, "the command did not start"

    os.kill(sleeper, signal.SIGKILL)         # a process this test started
    assert p.wait(timeout=10) == 128 + signal.SIGKILL


def test_started_as_root_the_command_is_root_inside(bed):
    r = bed.pasta(["--config-net"],
                  ["sh", "-c", "id -u; ip addr add 192.0.2.7/32 dev lo && "
                   "echo created"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "created"]


def test_runas_nobody_fails_clearly_without_access_to_the_tun_device(bed):
    mode = os.stat("/dev/net/tun").st_mode & 0o777
    r = bed.pasta(["--config-net", "--runas", "65534:65534"], ["true"],
                  timeout=20)
    if mode & 0o006:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1
        assert r.stderr.strip().splitlines()[-1] == \
            "Failed to set up tap device in namespace: Permission denied"
    assert "Traceback" not in r.stderr


def test_attach_to_the_pid_of_a_namespace_holder(bed):
    holder = bed.popen(bed.host, ["unshare", "-rn", "sleep", "60"])
    nsfile = "/proc/%d/ns/net" % holder.pid
    deadline = time.monotonic() + 10
    while os.readlink(nsfile) == os.readlink("/proc/self/ns/net") and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    # holder.pid is ip(8)'s PID, which exec()ed into unshare
    p = bed.pasta_popen(["-f", "--config-net", str(holder.pid)],
                        stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    out = ""
    while time.monotonic() < deadline:
        r = subprocess.run(["nsenter", "-t", str(holder.pid), "-n", "-U",
                            "--preserve-credentials", "ip", "-j", "addr"],
                           capture_output=True, text=True, timeout=10)
        out = r.stdout
        if "198.51.100.2" in out and "2001:db8:1::2" in out:
            break
        time.sleep(0.1)
    addrs = json.loads(out)
    h0 = link(addrs, "h0")
    assert inet(h0, "inet") == [("198.51.100.2", 24)]
    assert h0["mtu"] == 65520

    holder.kill()
    holder.wait(timeout=10)
    assert p.wait(timeout=15) == 0        # gone with the namespace


def test_attach_to_a_netns_path_and_exit_when_it_is_deleted(bed):
    ns = bed.netns_add("att")
    p = bed.pasta_attach(ns)
    addrs = json.loads(bed.run(ns, ["ip", "-j", "addr"]).stdout)
    assert inet(link(addrs, "h0"), "inet6") == [("2001:db8:1::2", 64)]

    subprocess.run(["ip", "netns", "del", ns], check=True, timeout=10)
    assert p.wait(timeout=10) == 0


def test_podman_style_start_goes_to_background_once_ready(bed):
    ns = bed.netns_add("ctr")
    pidfile = os.path.join(bed.tmp, "pasta.pid")
    args = ["--config-net", "--dns-forward", "169.254.1.1", "-t", "none",
            "-u", "none", "-T", "none", "-U", "none", "--no-map-gw",
            "--quiet", "--netns", "/run/netns/" + ns, "-P", pidfile]
    r = bed.run(bed.host, bed.pasta_cmd(args), timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")

    # ready as soon as the parent returned
    addrs = json.loads(bed.run(ns, ["ip", "-j", "addr"]).stdout)
    assert inet(link(addrs, "h0"), "inet") == [("198.51.100.2", 24)]
    pid = int(open(pidfile).read())
    assert os.path.exists("/proc/%d" % pid)

    subprocess.run(["ip", "netns", "del", ns], check=True, timeout=10)
    deadline = time.monotonic() + 10
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists("/proc/%d" % pid)


def test_arp_and_ndp_answers_are_captured(bed):
    pcap = os.path.join(bed.tmp, "cap.pcap")
    r = bed.pasta(["--config-net", "-p", pcap],
                  ["sh", "-c", "arping -c 1 -w 3 -I h0 198.51.100.1 && "
                   "ndisc6 -1 -w 1000 2001:db8:1::1 h0"], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "from %s" % OUR_MAC in r.stdout.lower() or \
        OUR_MAC in r.stdout.lower()
    assert "from 2001:db8:1::1" in r.stdout

    dump = subprocess.run(["tcpdump", "-nr", pcap], capture_output=True,
                          text=True, timeout=20).stdout
    assert "ARP, Request who-has 198.51.100.1" in dump
    assert "ARP, Reply 198.51.100.1 is-at %s" % OUR_MAC in dump
    assert "neighbor solicitation, who has 2001:db8:1::1" in dump
    assert "2001:db8:1::1 > fe80::" in dump
    assert "neighbor advertisement, tgt is 2001:db8:1::1" in dump


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "pasta: unrecognized option '--bogus'"),
    (["-m", "10"], "MTU 10 too small (min 68)"),
    (["-a", "999.1.1.1"], "Invalid guest address: 999.1.1.1"),
    (["--splice-only", "--no-splice"],
     "--splice-only is incompatible with --no-splice"),
    (["--no-copy-routes"], "--no-copy-routes needs --config-net"),
])
def test_bad_command_lines_fail_fast_and_leave_nothing(bed, args, message):
    def pids():
        # read from the root namespace: looking sends nothing
        return subprocess.run(["ip", "netns", "pids", bed.host],
                              capture_output=True, text=True,
                              timeout=10).stdout.split()

    before = pids()
    t0 = time.monotonic()
    r = bed.pasta(args, ["true"], timeout=20)

    assert r.returncode == 1
    assert message in r.stderr.splitlines()
    assert "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 5
    assert pids() == before
    if args == ["--bogus"]:                 # followed by the usage text
        assert r.stderr.splitlines()[1].startswith("Usage: pasta ")


def test_no_tcp_and_no_udp_alone_start_normally(bed):
    for opt in ("--no-tcp", "--no-udp"):
        r = bed.pasta(["--config-net", opt], ["true"])
        assert (opt, r.returncode, r.stderr) == (opt, 0, "")
