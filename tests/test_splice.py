# SPDX-License-Identifier: GPL-2.0-or-later
"""Spliced TCP connections (tcp_splice.py), driven directly.

Each scenario runs as a separate Python process inside the "host"
namespace of a test bed (this file, run as a script), with a second
namespace of the bed standing for pasta's namespace: the scenario builds
a context and an epoll loop of its own, accepts a client connection on
the host's loopback, and hands it to ``tcp_splice_conn_from_sock()`` with
the target either in that namespace (PIF_SPLICE, what -t does) or on the
host's loopback (PIF_HOST, what -T does).  Clients and servers are
threads of the scenario process using blocking sockets; everything they
see is checked there, and the scenario prints one JSON line of results.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

MIB = 1024 * 1024


# -- the scenario side (runs inside the bed) ------------------------------

def _ctx(nsname):
    import select
    from pasta import flow, tcp_splice
    from pasta.passt import Ctx, MODE_PASTA

    c = Ctx()
    c.mode = MODE_PASTA
    c.ifi4 = c.ifi6 = 1
    c.epoll = select.epoll()
    c.pasta_netns_fd = os.open("/run/netns/" + nsname, os.O_RDONLY)
    flow.flow_init(c)
    tcp_splice.tcp_splice_init(c)
    return c


def _server(c, pif, family, addr):
    """A listening socket at the target: in the namespace or on the
    host."""
    from pasta import util
    from pasta.pif import PIF_SPLICE

    sa = (addr, 0) if family == socket.AF_INET else (addr, 0, 0, 0)
    if pif == PIF_SPLICE:
        s = util.ns_socket(c, family, socket.SOCK_STREAM, bind=sa)
    else:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind(sa)
    s.setblocking(True)
    s.listen(1024)
    return s


class Loop:
    """The pasta side: a front listening socket and the epoll loop."""

    def __init__(self, c, tgtpif, family, addr, tport):
        from pasta.inany import inany_from_ip
        self.c = c
        self.tgtpif = tgtpif
        self.family = family
        self.tgt = inany_from_ip(addr)
        self.tport = tport
        self.front = socket.socket(family, socket.SOCK_STREAM)
        self.front.bind((addr, 0) if family == socket.AF_INET
                        else (addr, 0, 0, 0))
        self.front.listen(1024)
        self.front.setblocking(False)
        self.fport = self.front.getsockname()[1]
        self.conns = 0

    def accept(self):
        from pasta import flow, tcp_splice
        from pasta.inany import inany_from_sockaddr, inany_v4
        from pasta.pif import PIF_HOST
        try:
            s, peer = self.front.accept()
        except BlockingIOError:
            return False
        f = flow.flow_alloc()
        local, lport = inany_from_sockaddr(self.family, s.getsockname())
        flow.flow_initiate_sa(f, PIF_HOST, self.family, peer, local, lport)
        af = self.family
        packed = inany_v4(self.tgt) if af == socket.AF_INET else self.tgt
        flow.flow_target_af(f, self.tgtpif, af, None, 0, packed,
                            self.tport)
        tcp_splice.tcp_splice_conn_from_sock(self.c, f, s, time.monotonic())
        self.conns += 1
        return True

    def run(self, until, timeout=60.0):
        from pasta import flow, tcp_splice
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise TimeoutError("scenario loop timed out")
            while self.accept():
                pass
            for fd, ev in self.c.epoll.poll(0.01, 64):
                ref = self.c.epoll_refs.get(fd)
                if ref is not None:
                    tcp_splice.tcp_splice_sock_handler(self.c, ref, ev,
                                                       time.monotonic())
            flow.flow_defer_handler(self.c, time.monotonic())


def _thread(fn, res):
    """A daemon thread running ``fn``, an exception noted in ``res``."""
    def run():
        try:
            fn()
        except Exception as e:
            res.setdefault("exceptions", []).append(
                "%s: %r" % (fn.__name__, e))
    return threading.Thread(target=run, daemon=True)


def _recv_all(s):
    h = hashlib.sha256()
    n = 0
    while True:
        b = s.recv(1 << 16)
        if not b:
            return n, h.hexdigest()
        n += len(b)
        h.update(b)


def _send_blob(s, size, seed):
    h = hashlib.sha256()
    block = hashlib.sha256(seed).digest() * 2048      # 64 KiB
    left = size
    while left:
        chunk = block[:min(left, len(block))]
        s.sendall(chunk)
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def scenario_halfclose(nsname, pifname, family_name, size):
    """Client sends ``size`` bytes and shuts its writing half; the server
    reads to EOF, then answers with ``size`` bytes of its own and closes.
    Both sides must get everything, intact, after the other's FIN."""
    from pasta import pif
    c = _ctx(nsname)
    tgtpif = getattr(pif, "PIF_" + pifname)
    family = socket.AF_INET if str(family_name) == "4" else socket.AF_INET6
    addr = "127.0.0.1" if family == socket.AF_INET else "::1"
    srv = _server(c, tgtpif, family, addr)
    loop = Loop(c, tgtpif, family, addr, srv.getsockname()[1])
    res = {}

    def server():
        s, _ = srv.accept()
        res["srv_rx"] = _recv_all(s)
        res["srv_tx"] = _send_blob(s, size, b"server")
        s.close()

    def client():
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect((addr, loop.fport))
        res["cli_tx"] = _send_blob(s, size, b"client")
        s.shutdown(socket.SHUT_WR)
        res["cli_rx"] = _recv_all(s)
        s.close()

    threads = [_thread(server, res), _thread(client, res)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    loop.run(lambda: not any(t.is_alive() for t in threads))
    res["seconds"] = time.monotonic() - t0
    loop.run(lambda: not _splice_flows(), timeout=5)
    res["flows_left"] = len(_splice_flows())
    return res


def _splice_flows():
    from pasta import flow
    return flow.flow_foreach_of_type(flow.FLOW_TCP_SPLICE)


def scenario_reset(nsname, pifname):
    """The server resets the connection: the client must see it, at once."""
    import struct
    from pasta import pif
    c = _ctx(nsname)
    tgtpif = getattr(pif, "PIF_" + pifname)
    srv = _server(c, tgtpif, socket.AF_INET, "127.0.0.1")
    loop = Loop(c, tgtpif, socket.AF_INET, "127.0.0.1",
                srv.getsockname()[1])
    res = {}

    def server():
        s, _ = srv.accept()
        s.recv(5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                     struct.pack("ii", 1, 0))
        s.close()

    def client():
        s = socket.socket()
        s.settimeout(10)
        s.connect(("127.0.0.1", loop.fport))
        s.sendall(b"hello")
        t0 = time.monotonic()
        try:
            b = s.recv(10)
            res["client"] = "eof" if not b else "data"
        except ConnectionResetError:
            res["client"] = "reset"
        except socket.timeout:
            res["client"] = "timeout"
        res["delay"] = time.monotonic() - t0
        s.close()

    threads = [_thread(server, res), _thread(client, res)]
    for t in threads:
        t.start()
    loop.run(lambda: not any(t.is_alive() for t in threads), timeout=20)
    loop.run(lambda: not _splice_flows(), timeout=5)
    res["flows_left"] = len(_splice_flows())
    return res


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


def scenario_many(nsname, pifname, count):
    """Open and close ``count`` spliced connections, a few at a time; no
    descriptor (socket or pipe) may be left behind."""
    from pasta import pif, tcp_splice
    c = _ctx(nsname)
    tgtpif = getattr(pif, "PIF_" + pifname)
    srv = _server(c, tgtpif, socket.AF_INET, "127.0.0.1")
    loop = Loop(c, tgtpif, socket.AF_INET, "127.0.0.1",
                srv.getsockname()[1])
    res = {"errors": 0, "ok": 0}
    fds_before = _fd_count()

    def server():
        for _i in range(count):
            s, _ = srv.accept()
            b = s.recv(100)
            s.sendall(b.upper())
            s.close()

    def client():
        for i in range(count):
            try:
                s = socket.socket()
                s.settimeout(10)
                s.connect(("127.0.0.1", loop.fport))
                msg = b"conn %d" % i
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while True:
                    b = s.recv(100)
                    if not b:
                        break
                    got += b
                s.close()
                if got == msg.upper():
                    res["ok"] += 1
                else:
                    res["errors"] += 1
            except OSError:
                res["errors"] += 1

    threads = [_thread(server, res), _thread(client, res)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    loop.run(lambda: not any(t.is_alive() for t in threads), timeout=120)
    res["seconds"] = time.monotonic() - t0
    loop.run(lambda: not _splice_flows(), timeout=5)
    tcp_splice.tcp_sock_refill_ns(c)
    tcp_splice.tcp_splice_pipe_refill(c)
    res["flows_left"] = len(_splice_flows())
    res["fds_before"] = fds_before
    res["fds_after"] = _fd_count()
    res["conns"] = loop.conns
    return res


def bench_splice(bed, ref=False, seconds=5, direction="-t",
                 reverse=False, addr="127.0.0.1"):
    """Spliced TCP throughput in Gbit/s, measured with iperf3 through our
    pasta (or with ``ref``, Debian's /usr/bin/pasta) attached to a fresh
    namespace of ``bed``.

    ``direction`` "-t": iperf3 client on the host's loopback, server in
    the namespace; "-T": the other way round.  ``reverse`` makes the
    server send (iperf3 -R).
    """
    ns = bed.netns_add("bench")
    fwd = ["-t", "none", "-u", "none", "-T", "none", "-U", "none"]
    i = fwd.index(direction)
    fwd[i + 1] = "5201"
    if ref:
        bed.ref_pasta_attach(ns, ["-q"] + fwd)
    else:
        bed.pasta_attach(ns, ["--runas", "0:0", "-q"] + fwd)
    srv_ns, cli_ns = (ns, bed.host) if direction == "-t" else (bed.host, ns)
    # Spliced -t connections reach the namespace's own address, not its
    # loopback (see fwd_nat_from_host()): the server there binds to any
    bind = ["-B", addr] if direction == "-T" else []
    bed.popen(srv_ns, ["iperf3", "-s", "-1"] + bind,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bed.wait_listen(srv_ns, 5201)
    argv = ["iperf3", "-c", addr, "-t", str(seconds), "-J"]
    if reverse:
        argv.append("-R")
    r = bed.run(cli_ns, argv, timeout=seconds + 30)
    res = json.loads(r.stdout)
    return res["end"]["sum_received"]["bits_per_second"] / 1e9


def _bench(argv):
    """python3 tests/test_splice.py bench [SECONDS]: ours vs Debian's."""
    from bed import Bed
    seconds = int(argv[2]) if len(argv) > 2 else 5
    for ref in (False, True):
        for direction in ("-t", "-T"):
            for reverse in (False, True):
                with Bed() as bed:
                    g = bench_splice(bed, ref, seconds, direction, reverse)
                print("%-6s %s %-8s %6.2f Gbit/s" % (
                    "debian" if ref else "ours", direction,
                    "reverse" if reverse else "forward", g))
                sys.stdout.flush()


def _main(argv):
    name = argv[1]
    if name == "bench":
        sys.path.insert(0, HERE)
        _bench(argv)
        return
    fn = globals()["scenario_" + name]
    args = [int(a) if a.isdigit() else a for a in argv[2:]]
    print(json.dumps(fn(*args)))
    sys.stdout.flush()
    os._exit(0)


# -- the pytest side ------------------------------------------------------

if __name__ != "__main__":
    import pytest

    @pytest.fixture
    def nsbed(bed):
        """The bed, plus a namespace standing for pasta's, lo up."""
        ns = bed.netns_add("pns")
        bed.run(ns, ["ip", "link", "set", "lo", "up"], check=True)
        return bed, ns

    def run_scenario(nsbed, *args, timeout=120):
        bed, ns = nsbed
        argv = ["env", "PYTHONPATH=" + REPO, sys.executable,
                os.path.abspath(__file__), args[0], ns] + \
            [str(a) for a in args[1:]]
        r = bed.run(bed.host, argv, timeout=timeout)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    @pytest.mark.parametrize("pifname,fam", [("SPLICE", "4"),
                                             ("SPLICE", "6"),
                                             ("HOST", "4"), ("HOST", "6")])
    def test_half_closed_transfer_both_ways_intact(nsbed, pifname, fam):
        size = 10 * MIB
        res = run_scenario(nsbed, "halfclose", pifname, fam, size)
        assert res["srv_rx"] == [size, res["cli_tx"]]
        assert res["cli_rx"] == [size, res["srv_tx"]]
        assert res["flows_left"] == 0

    @pytest.mark.parametrize("pifname", ["SPLICE", "HOST"])
    def test_reset_reaches_the_client(nsbed, pifname):
        res = run_scenario(nsbed, "reset", pifname)
        assert res["client"] == "reset"
        assert res["delay"] < 2
        assert res["flows_left"] == 0

    def test_thousand_connections_leave_nothing_behind(nsbed):
        res = run_scenario(nsbed, "many", "SPLICE", 1000, timeout=200)
        assert res["ok"] == 1000 and res["errors"] == 0
        assert res["conns"] == 1000
        assert res["flows_left"] == 0
        assert res["fds_after"] == res["fds_before"]


if __name__ == "__main__":
    _main(sys.argv)
