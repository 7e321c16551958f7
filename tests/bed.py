# SPDX-License-Identifier: GPL-2.0-or-later
"""A private two-namespace network for running pasta in tests and demos.

Theory of operation
-------------------
pasta forwards whatever its namespace sends to the network it runs in. To
keep every packet off the machine's real uplink, a :class:`Bed` builds a
small network of its own out of two network namespaces, both created from
the root namespace with ``ip netns add`` under names nobody else uses (the
prefix ``pt``, the process id and a counter, so that pytest-xdist workers
can build beds side by side):

``host``
    where pasta runs. Its only real interface, ``h0``, is the template
    pasta copies its addresses and routes from: 198.51.100.2/24 with a
    default route via .1, and 2001:db8:1::2/64 with a default route via
    2001:db8:1::1. ``net.ipv4.ping_group_range`` is opened to every group
    so that pasta's ping sockets work, and ``/etc/netns/<host>/
    resolv.conf`` names the world's DNS server: ``ip netns exec``
    bind-mounts that file over ``/etc/resolv.conf``, so the resolver
    pasta reads points into the bed.

``world``
    the "internet": ``w0``, the other end of the veth pair, carries the
    gateway addresses (198.51.100.1, 2001:db8:1::1) and the loopback
    carries the server addresses 203.0.113.10 and 2001:db8:2::10. Servers
    started there (socat, iperf3, dnsmasq through :meth:`Bed.dns_world`)
    listen on those. Since pasta maps the gateway address to the host's
    own loopback by default, tests aim at the server addresses instead.

Duplicate address detection is switched off on both veth ends, and the
bed waits (with a deadline) until no IPv6 address is tentative, so the
first packet of a test is not lost to DAD.

Every command runs through ``ip netns exec NAME``; there is no way in this
module to run anything in the root namespace other than the ``ip netns``
and ``ip link`` set-up commands themselves, which send nothing.

Processes are started with the signal dispositions reset (a Python parent
ignores SIGPIPE, and an ignored signal survives exec) and in a session of
their own. :meth:`Bed.close` stops every process the bed started, by its
PID (and its own process group), then any process still left inside the
bed's namespaces (which only the bed's processes can have put there),
deletes the namespaces and the ``/etc/netns`` files. Every wait has a
deadline; a command that outlives its timeout is killed and
:class:`subprocess.TimeoutExpired` is raised.

Our pasta is the package in this repository, run as ``python3 -m pasta``
with the repository first on ``PYTHONPATH``; Debian's ``/usr/bin/pasta``
is only ever used through the ``ref_*`` methods, as a reference.
"""

import atexit
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF_PASTA = "/usr/bin/pasta"
NETNS_ETC = "/etc/netns"

_counter = itertools.count()
_live_beds = []


def _prepend_pythonpath(env):
    """Put the repository first on ``PYTHONPATH`` in the mapping *env*."""
    old = env.get("PYTHONPATH", "")
    parts = [p for p in old.split(os.pathsep) if p and p != REPO]
    env["PYTHONPATH"] = os.pathsep.join([REPO] + parts)
    return env


# Commands started by the bed (and whatever else the test starts with
# subprocess from this process, e.g. with bed.pasta_cmd()) must import our
# package, not an installed copy of something else.
_prepend_pythonpath(os.environ)


def have_ref_pasta():
    """Tell whether Debian's reference pasta is installed."""
    return os.access(REF_PASTA, os.X_OK)


try:
    import pytest
except ImportError:             # the demo runs without pytest
    pytest = None
else:
    #: Skip marker for tests that build namespaces (they need root).
    needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                    reason="network namespaces need root")
    #: Skip marker for tests that run Debian's reference pasta.
    needs_ref_pasta = pytest.mark.skipif(
        not have_ref_pasta(),
        reason="Debian's reference pasta (%s, package passt) is not "
               "installed" % REF_PASTA)


def _reset_signals():
    """Give a child default dispositions and an empty signal mask.

    Runs between fork and exec: ignored signals would otherwise stay
    ignored in the program started.
    """
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) is not signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _argv(cmd):
    """Turn *cmd* into an argument vector: a string runs through ``sh -c``."""
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    return [str(a) for a in cmd]


def _kill(proc, grace=2.0):
    """Stop *proc* (a Popen we started) and reap it, within bounded time.

    SIGTERM first, then SIGKILL after *grace* seconds. The signal goes to
    the process group the child leads (it was started in a new session),
    and to the PID alone if it is no longer a group leader.
    """
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _root(cmd, timeout=20, check=True):
    """Run an ``ip`` set-up command in the root namespace (sends nothing)."""
    assert cmd[0] == "ip", cmd
    return subprocess.run(cmd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout,
                          check=check, preexec_fn=_reset_signals)


class Bed:
    """Two private network namespaces, "host" and "world", wired by veth.

    Attributes: ``host``, ``world`` (namespace names), ``tmp`` (a private
    directory, removed at close, for pid files, captures and data), and
    the addresses ``HOST4``/``HOST6`` (h0), ``GW4``/``GW6`` (w0, the
    host's gateway), ``WORLD4``/``WORLD6`` (servers on the world's
    loopback), ``DNS_NAME`` -> ``DNS_ADDR4``/``DNS_ADDR6`` (dns_world()).

    Besides run()/popen() and the pasta helpers, there are helpers for
    common steps: netns_add(), dns_world(), pasta_attach() (our pasta on
    a namespace of netns_add(), in foreground), make_blob(), tcp_sink(),
    wait_listen(), wait_not_tentative(), and ref_* twins of the pasta
    helpers running Debian's /usr/bin/pasta.
    """

    HOST_IF = "h0"
    WORLD_IF = "w0"
    HOST4 = "198.51.100.2"
    HOST6 = "2001:db8:1::2"
    GW4 = "198.51.100.1"
    GW6 = "2001:db8:1::1"
    PREFIX4 = 24
    PREFIX6 = 64
    WORLD4 = "203.0.113.10"
    WORLD6 = "2001:db8:2::10"

    DNS_NAME = "test.example."
    DNS_ADDR4 = "192.0.2.99"
    DNS_ADDR6 = "2001:db8:3::99"

    MTU = 65520

    def __init__(self, tentative_timeout=10.0):
        """Create and wire the namespaces; wait for IPv6 to be usable."""
        self.name = self._free_name()
        self.host = self.name + "-h"
        self.world = self.name + "-w"
        self._netns = []
        self._etc = []
        self._procs = []
        self._closed = False
        _live_beds.append(self)
        self.tmp = tempfile.mkdtemp(prefix=self.name + "-")
        os.chmod(self.tmp, 0o755)

        try:
            self._setup()
            self.wait_not_tentative(tentative_timeout)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _free_name():
        """Pick a bed name ("pt" PID "-" counter) no namespace uses yet.

        A bed left behind by a killed process that had our PID keeps its
        names; we step over them rather than touch them.
        """
        while True:
            name = "pt%d-%d" % (os.getpid(), next(_counter))
            taken = [os.path.exists(p) for p in (
                "/run/netns/%s-h" % name, "/run/netns/%s-w" % name,
                os.path.join(NETNS_ETC, name + "-h"))]
            if not any(taken):
                return name

    # -- set-up -----------------------------------------------------------

    def _setup(self):
        """Build the namespaces, addresses, routes and resolver file."""
        for ns in (self.host, self.world):
            _root(["ip", "netns", "add", ns])
            self._netns.append(ns)

        etc = os.path.join(NETNS_ETC, self.host)
        os.makedirs(etc, exist_ok=True)
        self._etc.append(etc)
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write("nameserver %s\nnameserver %s\n"
                    % (self.WORLD4, self.WORLD6))

        h, w = self.host, self.world
        steps = [
            ["ip", "-n", h, "link", "set", "lo", "up"],
            ["ip", "-n", w, "link", "set", "lo", "up"],
            ["ip", "-n", h, "link", "add", self.HOST_IF, "mtu",
             str(self.MTU), "type", "veth", "peer", "name", self.WORLD_IF,
             "mtu", str(self.MTU), "netns", w],
        ]
        for cmd in steps:
            _root(cmd)

        self._sysctl(h, "net.ipv6.conf.%s.accept_dad=0" % self.HOST_IF)
        self._sysctl(w, "net.ipv6.conf.%s.accept_dad=0" % self.WORLD_IF)
        self._sysctl(h, "net.ipv4.ping_group_range=0 2147483647")
        self._sysctl(w, "net.ipv4.ip_forward=1")
        self._sysctl(w, "net.ipv6.conf.all.forwarding=1")

        hi, wi = self.HOST_IF, self.WORLD_IF
        steps = [
            ["ip", "-n", w, "addr", "add",
             "%s/%d" % (self.GW4, self.PREFIX4), "dev", wi],
            ["ip", "-n", w, "addr", "add",
             "%s/%d" % (self.GW6, self.PREFIX6), "dev", wi, "nodad"],
            ["ip", "-n", w, "addr", "add", self.WORLD4 + "/32", "dev", "lo"],
            ["ip", "-n", w, "addr", "add", self.WORLD6 + "/128", "dev",
             "lo"],
            ["ip", "-n", w, "link", "set", wi, "up"],
            ["ip", "-n", h, "addr", "add",
             "%s/%d" % (self.HOST4, self.PREFIX4), "dev", hi],
            ["ip", "-n", h, "addr", "add",
             "%s/%d" % (self.HOST6, self.PREFIX6), "dev", hi, "nodad"],
            ["ip", "-n", h, "link", "set", hi, "up"],
            ["ip", "-n", h, "route", "add", "default", "via", self.GW4,
             "dev", hi],
            ["ip", "-n", h, "-6", "route", "add", "default", "via",
             self.GW6, "dev", hi],
        ]
        for cmd in steps:
            _root(cmd)

    def _sysctl(self, ns, setting):
        """Set one sysctl (``key=value``) inside namespace *ns*."""
        key, value = setting.split("=", 1)
        r = self.run(ns, ["sysctl", "-q", "-w", "%s=%s" % (key, value)])
        if r.returncode:
            raise RuntimeError("sysctl %s in %s failed: %s"
                               % (setting, ns, r.stderr.strip()))

    def wait_not_tentative(self, timeout=10.0, namespaces=None):
        """Wait until no IPv6 address in the namespaces is tentative.

        Raises RuntimeError when *timeout* seconds pass first.
        """
        namespaces = namespaces or [self.host, self.world]
        deadline = time.monotonic() + timeout
        while True:
            left = []
            for ns in namespaces:
                r = self.run(ns, ["ip", "-j", "-6", "addr", "show",
                                  "tentative"])
                if r.returncode == 0 and r.stdout.strip():
                    for ifc in json.loads(r.stdout):
                        if ifc.get("addr_info"):
                            left.append((ns, ifc["ifname"]))
            if not left:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("IPv6 addresses still tentative: %s"
                                   % left)
            time.sleep(0.1)

    # -- running things ---------------------------------------------------

    @staticmethod
    def nsexec(ns, cmd):
        """Return the argument vector running *cmd* inside namespace *ns*."""
        if not ns:
            raise ValueError("no namespace given: refusing to run in the "
                             "root namespace")
        return ["ip", "netns", "exec", ns] + _argv(cmd)

    def popen(self, ns, cmd, **kw):
        """Start *cmd* in namespace *ns*; it is stopped at :meth:`close`.

        Keyword arguments go to :class:`subprocess.Popen`; stdin defaults
        to /dev/null. Returns the Popen.
        """
        return self._spawn(self.nsexec(ns, cmd), **kw)

    def _spawn(self, argv, **kw):
        """Start *argv* with reset signals in a new session, tracked."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("cwd", REPO)
        env = dict(kw.pop("env", None) or os.environ)
        kw["env"] = _prepend_pythonpath(env)
        proc = subprocess.Popen(argv, preexec_fn=_reset_signals,
                                start_new_session=True, **kw)
        self._procs.append(proc)
        return proc

    def _wait(self, proc, timeout, input=None):
        """Collect *proc*'s output within *timeout*, or kill it and raise."""
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            try:
                # bounded too: something it left in the background may
                # still hold the pipes open
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out = err = None
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err)
        return subprocess.CompletedProcess(proc.args, proc.returncode,
                                           out, err)

    def _run_argv(self, argv, timeout, input, check, **kw):
        """Run *argv* to completion, capturing text output."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        if input is not None:
            kw["stdin"] = subprocess.PIPE
        proc = self._spawn(argv, **kw)
        r = self._wait(proc, timeout, input)
        if check and r.returncode:
            raise subprocess.CalledProcessError(r.returncode, r.args,
                                                r.stdout, r.stderr)
        return r

    def run(self, ns, cmd, timeout=20, input=None, check=False, **kw):
        """Run *cmd* in namespace *ns* and wait; returns CompletedProcess.

        Output is captured as text. *cmd* is a list, or a string for
        ``sh -c``. On timeout the command is killed and TimeoutExpired is
        raised; with *check*, a non-zero exit raises CalledProcessError.
        """
        return self._run_argv(self.nsexec(ns, cmd), timeout, input, check,
                              **kw)

    # -- pasta ------------------------------------------------------------

    def pasta_cmd(self, args, cmd=None):
        """Argument vector running OUR pasta, from this repository, in host.

        ``PYTHONPATH`` names the repository first (set in this process's
        environment when this module is imported, and by the bed's own
        spawning), so ``-m pasta`` imports the port, never
        ``/usr/bin/pasta``.
        """
        argv = self.nsexec(self.host, [sys.executable, "-m", "pasta"]
                           + [str(a) for a in args])
        if cmd:
            argv += ["--"] + _argv(cmd)
        return argv

    def ref_pasta_cmd(self, args, cmd=None):
        """Argument vector running Debian's /usr/bin/pasta in host."""
        argv = self.nsexec(self.host, [REF_PASTA] + [str(a) for a in args])
        if cmd:
            argv += ["--"] + _argv(cmd)
        return argv

    def pasta(self, args, cmd, timeout=30, input=None, check=False, **kw):
        """Run our pasta with *cmd* and wait; returns CompletedProcess."""
        return self._run_argv(self.pasta_cmd(args, cmd), timeout, input,
                              check, **kw)

    def pasta_popen(self, args, cmd=None, **kw):
        """Start our pasta (tracked, stopped at close); returns Popen."""
        return self._spawn(self.pasta_cmd(args, cmd), **kw)

    def ref_pasta(self, args, cmd, timeout=30, input=None, check=False,
                  **kw):
        """Run Debian's pasta with *cmd* and wait; CompletedProcess."""
        return self._run_argv(self.ref_pasta_cmd(args, cmd), timeout,
                              input, check, **kw)

    def ref_pasta_popen(self, args, cmd=None, **kw):
        """Start Debian's pasta (tracked); returns Popen."""
        return self._spawn(self.ref_pasta_cmd(args, cmd), **kw)

    def pasta_attach(self, ns, args=(), timeout=15.0):
        """Attach our pasta to namespace *ns* (from netns_add), in foreground.

        Runs ``pasta -f --config-net --netns /run/netns/NS ARGS``, waits
        (bounded) until the namespace has HOST4 and no tentative IPv6
        address, and returns the tracked Popen; its output goes to the
        file named by the Popen's ``log_path`` attribute.
        """
        return self._attach(self.pasta_cmd, ns, list(args), timeout)

    def ref_pasta_attach(self, ns, args=(), timeout=15.0):
        """Like pasta_attach(), with Debian's /usr/bin/pasta.

        Adds ``--runas 0:0`` unless *args* has ``--runas``: as root,
        Debian's pasta otherwise switches to nobody, which then may not
        enter a namespace made by root.
        """
        args = list(args)
        if "--runas" not in args:
            args = ["--runas", "0:0"] + args
        return self._attach(self.ref_pasta_cmd, ns, args, timeout)

    def _attach(self, cmdfn, ns, args, timeout):
        """Start pasta attached to *ns* via *cmdfn* and wait until ready."""
        log_path = os.path.join(self.tmp, "pasta-%s-%d.log"
                                % (ns, len(self._procs)))
        log = open(log_path, "w")
        argv = cmdfn(["-f", "--config-net", "--netns",
                      "/run/netns/" + ns] + args)
        try:
            proc = self._spawn(argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        proc.log_path = log_path

        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                with open(log_path) as f:
                    raise RuntimeError("pasta exited with %d: %s"
                                       % (proc.returncode, f.read()))
            r = self.run(ns, ["ip", "-j", "-4", "addr", "show"])
            if r.returncode == 0 and self.HOST4 in r.stdout:
                break
            if time.monotonic() > deadline:
                _kill(proc)
                raise RuntimeError("pasta did not configure %s within %gs"
                                   % (ns, timeout))
            time.sleep(0.05)
        self.wait_not_tentative(max(deadline - time.monotonic(), 1.0),
                                [ns])
        return proc

    # -- more namespaces, servers -----------------------------------------

    def netns_add(self, name_suffix="ns"):
        """Create one more namespace (from the root one); deleted at close.

        Returns its name. Only the loopback exists there, still down.
        """
        name = "%s-%s" % (self.name, name_suffix)
        _root(["ip", "netns", "add", name])
        self._netns.append(name)
        return name

    def dns_world(self, timeout=10.0):
        """Start dnsmasq in the world on WORLD4 and WORLD6; returns Popen.

        It answers DNS_NAME with DNS_ADDR4 (A) and DNS_ADDR6 (AAAA), and
        forwards nothing. Returns once it answers, within *timeout*.
        """
        name = self.DNS_NAME.rstrip(".")
        log_path = os.path.join(self.tmp, "dnsmasq.log")
        log = open(log_path, "w")
        proc = self.popen(self.world, [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
            "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces",
            "--pid-file", "--user=root", "--group=root",
            "--listen-address=%s" % self.WORLD4,
            "--listen-address=%s" % self.WORLD6,
            "--address=/%s/%s" % (name, self.DNS_ADDR4),
            "--address=/%s/%s" % (name, self.DNS_ADDR6),
            "--log-facility=-",
        ], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        proc.log_path = log_path
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                with open(log_path) as f:
                    raise RuntimeError("dnsmasq exited: %s" % f.read())
            r = self.run(self.world, ["dig", "+short", "+time=1",
                                      "+tries=1", "@" + self.WORLD4,
                                      self.DNS_NAME, "A"], timeout=5)
            if r.stdout.strip() == self.DNS_ADDR4:
                return proc
            time.sleep(0.1)
        raise RuntimeError("dnsmasq did not answer within %gs" % timeout)

    def wait_listen(self, ns, port, proto="tcp", timeout=10.0):
        """Wait until something listens on *port* in *ns* (bounded)."""
        opt = "-ltnH" if proto == "tcp" else "-lunH"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.run(ns, ["ss", opt, "sport = :%d" % port])
            if r.stdout.strip():
                return
            time.sleep(0.05)
        raise RuntimeError("nothing listens on %s port %d in %s"
                           % (proto, port, ns))

    def make_blob(self, size, name="blob"):
        """Write *size* random bytes to a file in tmp; returns (path, sha256).

        The file is world-readable, so a command running as another user
        (e.g. pasta's "nobody") can send it.
        """
        path = os.path.join(self.tmp, name)
        data = os.urandom(size)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
        return path, hashlib.sha256(data).hexdigest()

    def tcp_sink(self, ns, port, bind=None):
        """Start a one-shot socat TCP receiver in *ns*; returns a TcpSink.

        It accepts one connection on *port* (on *bind*, an IPv4 or IPv6
        address, if given) and stores what it receives; call ``wait()``.
        """
        if bind and ":" in bind:
            spec = "TCP6-LISTEN:%d,bind=[%s],reuseaddr" % (port, bind)
        elif bind:
            spec = "TCP4-LISTEN:%d,bind=%s,reuseaddr" % (port, bind)
        else:
            spec = "TCP-LISTEN:%d,reuseaddr" % port
        path = os.path.join(self.tmp, "sink-%s-%d" % (ns, port))
        out = open(path, "wb")
        try:
            proc = self.popen(ns, ["socat", "-u", spec, "STDOUT"],
                              stdout=out, stderr=subprocess.PIPE)
        finally:
            out.close()
        self.wait_listen(ns, port)
        return TcpSink(proc, path)

    # -- tear-down --------------------------------------------------------

    def close(self):
        """Stop the bed's processes, delete its namespaces and files.

        Safe to call twice; runs every step even when one fails.
        """
        if self._closed:
            return
        self._closed = True
        if self in _live_beds:
            _live_beds.remove(self)

        for proc in reversed(self._procs):
            try:
                _kill(proc)
            except Exception:
                pass
        for stream in ("stdout", "stderr", "stdin"):
            for proc in self._procs:
                f = getattr(proc, stream)
                if f:
                    try:
                        f.close()
                    except Exception:
                        pass

        # Anything still inside our namespaces got there through a process
        # we started (daemonised pasta, a server's child): stop it too.
        for ns in self._netns:
            self._kill_netns_pids(ns)

        for ns in reversed(self._netns):
            try:
                _root(["ip", "netns", "del", ns], check=False)
            except Exception:
                pass
        for etc in self._etc:
            shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    @staticmethod
    def _kill_netns_pids(ns):
        """SIGKILL the processes left in the bed's own namespace *ns*."""
        for _ in range(3):
            try:
                r = _root(["ip", "netns", "pids", ns], check=False,
                          timeout=10)
            except Exception:
                return
            pids = [int(p) for p in r.stdout.split() if p.isdigit()]
            pids = [p for p in pids if p != os.getpid()]
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def __enter__(self):
        """Use the bed as a context manager."""
        return self

    def __exit__(self, *exc):
        """Close the bed on leaving the ``with`` block."""
        self.close()


class TcpSink:
    """A socat receiver started by Bed.tcp_sink()."""

    def __init__(self, proc, path):
        """Remember the receiver's Popen and the file it writes."""
        self.proc = proc
        self.path = path

    def wait(self, timeout=20.0):
        """Wait for the sender to close; returns (length, sha256 hex).

        Raises TimeoutExpired (after killing socat) if it takes longer.
        """
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            raise
        with open(self.path, "rb") as f:
            data = f.read()
        return len(data), hashlib.sha256(data).hexdigest()


@atexit.register
def _close_leftovers():
    """Close beds a caller forgot, so no namespace outlives the process."""
    for b in list(_live_beds):
        b.close()
