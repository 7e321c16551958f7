# SPDX-License-Identifier: GPL-2.0-or-later
"""Spawning and attaching namespaces: pasta.py and isolation.py.

Until the configuration module drives them, these tests call the
functions of ``pasta.pasta`` and ``pasta.isolation`` directly, from a
small driver program (``DRIVER`` below) run as a separate process: the
functions change the calling process for good (IDs, user namespace,
signal mask), so they can't run inside pytest itself.  The driver follows
the start-up order of ``passt.main()`` and ``conf.conf()``: initial
isolation, ``isolate_user()``, spawning or attaching, the tap device and
``pasta_ns_conf()`` if asked for, the quit watch, then SIGUSR1 to the
command and a small event loop that only serves the quit watch.  Its exit
status is what pasta's would be.

Spawning needs no test bed: the new namespaces are empty and nothing is
sent anywhere.  Attaching uses namespaces made for the test (``ip netns
add`` through the bed, or an ``unshare -rn sleep`` holder started here),
and the configuration test runs the driver in the bed's "host" namespace,
whose h0 is the template.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bed import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="namespaces are created as root")

DRIVER = r'''
import json, os, select, signal, socket, sys, time
from pasta import tap
from pasta import isolation, log, netlink, passt, pasta
from pasta.epoll_ctl import EpollType

cfg = json.loads(sys.argv[1])
c = passt.Ctx()
passt.passt_ctx = c
c.epoll = select.epoll()
c.hostname = cfg.get("hostname", "")
c.debug = True
c.foreground = True             # -f: no daemon, so no new PID namespace


def conf_template(c):
    """What conf.py will do: read the template interface (h0)."""
    netlink.nl_sock_init(c, False)
    s = netlink.nl_sock
    for af in (socket.AF_INET, socket.AF_INET6):
        ifi = netlink.nl_get_ext_if(s, af)
        gw = netlink.nl_route_get_def(s, ifi, af)
        addr, plen, ll = netlink.nl_addr_get(s, ifi, af)
        ip = c.ip4 if af == socket.AF_INET else c.ip6
        ip.guest_gw, ip.addr = gw, addr
        if af == socket.AF_INET:
            c.ifi4, ip.prefix_len = ifi, plen
        else:
            c.ifi6 = ifi
        c.pasta_ifn = socket.if_indextoname(ifi)
    c.pasta_conf_ns = True
    c.mtu = 65520


def sandbox(c):
    """Isolate as before the main loop, then use the namespace again."""
    from pasta import util
    assert isolation.isolate_prefork(c) == 0
    print("ROOT %s" % sorted(os.listdir("/")), flush=True)
    c.pasta_ifn = "tapx"
    tap.tap_ns_tun_open(c, False)
    isolation.isolate_postfork(c)
    c.pasta_ifn = "tapy"
    tap.tap_ns_tun_open(c, False)
    s = util.ns_socket(c, socket.AF_INET, socket.SOCK_DGRAM,
                       bind=("127.0.0.1", 0))
    print("NSSOCK %s" % s.getsockname()[0], flush=True)
    try:
        os.execv("/bin/true", ["true"])
    except OSError as e:
        print("EXEC %s" % e.errno, flush=True)
    os.close(os.open("/dev/null", os.O_RDWR))


def main():
    signal.signal(signal.SIGCHLD, pasta.pasta_child_handler)
    isolation.isolate_initial(c)
    if cfg.get("conf"):
        conf_template(c)

    uid = cfg.get("uid", 0)
    netns, userns = cfg.get("netns", ""), cfg.get("userns", "")
    netns_only = bool(netns and not userns)
    isolation.isolate_user(c, uid, uid, not netns_only, userns)
    if netns:
        pasta.pasta_open_ns(c, netns)
    else:
        pasta.pasta_start_ns(c, uid, uid, not netns_only, cfg["argv"])

    if cfg.get("tap"):
        c.pasta_ifn = c.pasta_ifn or cfg["tap"]
        tap.tap_ns_tun_open(c, False)
        fd, ifi = c.fd_tap, c.pasta_ifi
        pasta.pasta_ns_conf(c)
    pasta.pasta_netns_quit_init(c)
    if cfg.get("sandbox"):
        sandbox(c)
    print("READY %d" % c.pasta_child_pid, flush=True)

    marker = cfg.get("marker")
    time.sleep(cfg.get("delay", 0))
    if marker:
        print("BEFORE %s" % os.path.exists(marker), flush=True)
    if c.pasta_child_pid:
        os.kill(c.pasta_child_pid, signal.SIGUSR1)

    deadline = time.monotonic() + cfg.get("timeout", 20)
    while time.monotonic() < deadline:
        for fd, ev in c.epoll.poll(0.2):
            ref = c.epoll_refs[fd]
            if ref.type == EpollType.NSQUIT_INOTIFY:
                pasta.pasta_netns_quit_inotify_handler(c, fd)
            elif ref.type == EpollType.NSQUIT_TIMER:
                pasta.pasta_netns_quit_timer_handler(c, ref)
        log.passt_exit_check()      # what the main loop does
    print("TIMEOUT", flush=True)
    return 99


try:
    sys.exit(main())
except log.PasstExit as e:
    sys.exit(e.code)
'''


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO
    env.update(extra)
    return env


def _reset():
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def drive(cfg, timeout=30, input=None, env=None):
    """Run the driver with ``cfg`` in this (root) namespace and wait."""
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cfg)],
                          capture_output=True, text=True, timeout=timeout,
                          input=input if input is not None else "",
                          env=env or _env(), preexec_fn=_reset)


def drive_popen(cfg, argv_prefix=(), env=None):
    return subprocess.Popen(list(argv_prefix) +
                            [sys.executable, "-c", DRIVER, json.dumps(cfg)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=env or _env(), preexec_fn=_reset)


def _ready_pid(proc, timeout=20):
    """Read the driver's READY line; returns the keeper PID."""
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or line.startswith("READY"):
            break
    assert line.startswith("READY"), proc.stderr.read()
    return int(line.split()[1])


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# Spawning

def test_exit_status_of_command_passes_through():
    r = drive({"argv": ["sh", "-c", "exit 7"]})
    assert r.returncode == 7, r.stderr


def test_command_killed_by_signal_gives_128_plus_signal():
    proc = drive_popen({"argv": ["sleep", "20"]})
    try:
        keeper = _ready_pid(proc)
        children = ""
        deadline = time.monotonic() + 10
        while not children and time.monotonic() < deadline:
            with open("/proc/%d/task/%d/children" % (keeper, keeper)) as f:
                children = f.read().split()
            time.sleep(0.05)
        os.kill(int(children[0]), signal.SIGKILL)
        assert proc.wait(timeout=15) == 128 + signal.SIGKILL
    finally:
        _stop(proc)


def test_command_runs_as_pid_1_with_own_hostname_and_proc():
    r = drive({"argv": ["sh", "-c",
                        "echo $$; hostname; "
                        "cat /proc/sys/net/ipv4/ping_group_range; "
                        "ls /proc | grep -c '^[0-9]'"]})
    pid, hostname, ping_range, nprocs = r.stdout.split("\n")[1:5]
    assert r.returncode == 0, r.stderr
    assert pid == "1"
    assert hostname == "pasta-" + os.uname().nodename
    assert ping_range.split() == ["0", "0"]
    assert int(nprocs) <= 3          # a fresh /proc: sh, grep, ls


def test_hostname_option_sets_hostname():
    r = drive({"argv": ["hostname"], "hostname": "chosen.example"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[1] == "chosen.example"


def test_no_command_runs_shell_from_SHELL_as_login_shell():
    r = drive({"argv": []}, input="echo \"$0\"\nexit 3\n",
              env=_env(SHELL="/bin/sh"))
    assert r.returncode == 3, r.stderr
    assert r.stdout.split("\n")[1] == "-/bin/sh"


def test_no_command_and_no_SHELL_runs_bin_sh():
    env = _env()
    env.pop("SHELL", None)
    r = drive({"argv": []}, input="echo \"$0\"\n", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[1] == "-/bin/sh"


def test_command_starts_only_after_sigusr1(tmp_path):
    marker = tmp_path / "started"
    r = drive({"argv": ["touch", str(marker)], "marker": str(marker),
               "delay": 1.0})
    assert r.returncode == 0, r.stderr
    assert "BEFORE False" in r.stdout
    assert marker.exists()


def test_root_is_mapped_to_root_and_has_capabilities():
    r = drive({"uid": 0, "argv": ["sh", "-c",
                                  "cat /proc/self/uid_map; "
                                  "ip link set lo up && echo UP"]})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[1].split() == ["0", "0", "1"]
    assert lines[2] == "UP"


def test_other_user_is_mapped_to_root_inside():
    r = drive({"uid": 65534, "argv": ["sh", "-c",
                                      "cat /proc/self/uid_map; id -u"]})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[1].split() == ["0", "65534", "1"]
    assert lines[2] == "0"


def test_tap_device_is_created_in_spawned_namespace():
    r = drive({"argv": ["cat", "/proc/net/dev"], "tap": "tap0"})
    assert r.returncode == 0, r.stderr
    devs = [ln.split(":")[0].strip() for ln in r.stdout.split("\n")[3:]
            if ":" in ln]
    assert sorted(devs) == ["lo", "tap0"]


# Attaching

def test_attach_to_pid_of_holder_and_quit_when_it_exits():
    holder = subprocess.Popen(["unshare", "-rn", "sleep", "30"],
                              preexec_fn=_reset)
    try:
        deadline = time.monotonic() + 10
        while os.readlink("/proc/%d/ns/net" % holder.pid) == \
                os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc = drive_popen({"netns": "/proc/%d/ns/net" % holder.pid,
                            "userns": "/proc/%d/ns/user" % holder.pid,
                            "tap": "tap0", "timeout": 20})
        try:
            _ready_pid(proc)
            with open("/proc/%d/net/dev" % holder.pid) as f:
                assert "tap0:" in f.read()
            holder.kill()
            holder.wait(timeout=5)
            assert proc.wait(timeout=10) == 0
            assert "Namespace net is gone, exiting" in proc.stderr.read()
        finally:
            _stop(proc)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=5)


def test_attach_to_netns_path_and_quit_when_it_is_deleted(bed):
    ns = bed.netns_add("att")
    proc = drive_popen({"netns": "/run/netns/" + ns, "tap": "tap0",
                        "timeout": 20})
    try:
        _ready_pid(proc)
        r = bed.run(ns, ["ip", "-br", "link", "show", "tap0"])
        assert r.returncode == 0 and r.stdout.startswith("tap0"), r.stderr
        r = bed.run(ns, ["ip", "-br", "link", "show", "lo"])
        assert "UP" in r.stdout

        subprocess.run(["ip", "netns", "del", ns], check=True, timeout=10)
        assert proc.wait(timeout=10) == 0
        assert "Namespace %s is gone, exiting" % ns in proc.stderr.read()
    finally:
        _stop(proc)


# Configuration of the namespace (--config-net)

def _ip_json(out, n):
    """The n-th line of ``ip -j`` output in ``out`` (after READY)."""
    lines = [ln for ln in out.split("\n") if ln.startswith("[")]
    return json.loads(lines[n])


def test_config_net_copies_template_addresses_routes_and_mtu(bed):
    cmd = ("for i in $(seq 30); do "
           "ip addr show h0 | grep -q tentative || break; sleep 0.1; done; "
           "ip -j addr show h0; ip -j -4 route show dev h0; "
           "ip -j -6 route show dev h0")
    proc = bed.popen(bed.host, [sys.executable, "-c", DRIVER, json.dumps(
        {"conf": True, "tap": "h0", "argv": ["sh", "-c", cmd]})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env())
    out, errout = proc.communicate(timeout=30)
    assert proc.returncode == 0, errout

    link = _ip_json(out, 0)[0]
    assert link["mtu"] == 65520
    addrs = {(a["local"], a["prefixlen"]) for a in link["addr_info"]
             if a.get("scope") == "global"}
    assert addrs == {(bed.HOST4, 24), (bed.HOST6, 64)}
    assert not [a for a in link["addr_info"] if a.get("tentative")]
    ll = [a for a in link["addr_info"] if a.get("scope") == "link"]
    assert len(ll) == 1 and ll[0].get("nodad")      # DAD was skipped
    assert all(a.get("nodad") for a in link["addr_info"]
               if a["family"] == "inet6")

    defaults4 = [r for r in _ip_json(out, 1) if r["dst"] == "default"]
    defaults6 = [r for r in _ip_json(out, 2) if r["dst"] == "default"]
    assert [r["gateway"] for r in defaults4] == [bed.GW4]
    assert [r["gateway"] for r in defaults6] == [bed.GW6]


# Self-isolation

def test_sandbox_leaves_empty_root_but_namespace_still_usable():
    r = drive({"uid": 0, "tap": "tap0", "sandbox": True,
               "argv": ["cat", "/proc/net/dev"]})
    assert r.returncode == 0, r.stderr
    assert "ROOT ['dev', 'proc']" in r.stdout
    assert "NSSOCK 127.0.0.1" in r.stdout
    assert "EXEC %d" % errno.EPERM in r.stdout     # seccomp
    devs = [ln.split(":")[0].strip() for ln in r.stdout.split("\n")
            if ln.count(":") == 1 and "|" not in ln and ln[:1] == " "]
    assert sorted(devs) == ["lo", "tap0", "tapx", "tapy"]
