# SPDX-License-Identifier: GPL-2.0-or-later
"""TCP through our pasta with slow, stalling and misbehaving peers.

Every test attaches our pasta to a namespace of a fresh bed (bed.py) and
runs real programs on both ends: small Python peers (``PEER`` below,
started with a mode and its parameters) in the namespace and in the
world. What is checked is what a user of the namespace, or of a server
in the world, would see: every byte arrives (length and SHA-256), a
connection that should survive does, one that should end ends promptly
and with the error the kernel gives a local program, and pasta itself
keeps running, logs no bug of its own, keeps its memory bounded and gets
back to the number of file descriptors it had before the test.

Slow peers read a chunk at a time with a sleep between reads, so that
backpressure (a full receive window, then a zero window) lasts seconds;
a peer that stops reading for ten seconds checks that a zero window is
not taken for a dead connection. Peers that go away do so by closing,
resetting (``SO_LINGER`` zero) or being killed with SIGKILL.
"""

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from bed import needs_root

pytestmark = needs_root

PY = sys.executable
MIB = 1 << 20

# One script for every peer; argv[1] is the mode:
#
#   sink ADDR PORT CHUNK DELAY PAUSE_AT PAUSE
#       server: read at most CHUNK bytes, then sleep DELAY seconds; once
#       PAUSE_AT bytes are in, stop reading for PAUSE seconds. At end of
#       file, answer "LENGTH SHA256", print it too, and close. One
#       thread a connection.
#   source ADDR PORT FILE [reset]
#       server: send FILE and close (with "reset": send it, then reset the
#       connection with SO_LINGER zero). Prints "sent" or the error, and
#       the time it happened, for each connection.
#   send ADDR PORT FILE
#       client: send FILE, half-close, print the answer (or the error).
#   recv ADDR PORT CHUNK DELAY PAUSE_AT PAUSE
#       client: read like "sink" until end of file, print "LENGTH SHA256"
#       (or the error and the time it happened).
#   race ADDR PORT FILE [listen]
#       send FILE and half-close while reading the other way until end of
#       file, then print "LENGTH SHA256" of what was read; a server with
#       "listen" (one connection), else a client.
#   echo ADDR PORT
#       server: echo every connection until the peer closes; a
#       connection whose first bytes are "bye" gets them back, then the
#       server closes it at once.
#   idle ADDR PORT N HOLD
#       client: open N connections to an echo server, keep them idle for
#       HOLD seconds, then check each one with a message; print how many
#       answered correctly.
#   churn ADDR PORT N
#       client: N connections one after the other, each sending "bye"
#       to an echo server, reading the answer and closing; print how
#       many got their answer, and the time taken.
#   probe ADDR PORT TIMEOUT
#       client: connect, print the exception's name and errno (or
#       "connected"), and the seconds it took.
PEER = r"""
import hashlib, os, resource, selectors, socket, struct, sys, threading
import time

mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
args = sys.argv[4:]
AF = socket.AF_INET6 if ":" in addr else socket.AF_INET
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))


def listener(backlog=512):
    ls = socket.socket(AF)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(backlog)
    return ls


def connect(timeout=60):
    return socket.create_connection((addr, port), timeout=timeout)


def slow_read(s, chunk, delay, pause_at, pause):
    h, n, paused = hashlib.sha256(), 0, False
    while True:
        d = s.recv(chunk)
        if not d:
            return n, h.hexdigest()
        n += len(d)
        h.update(d)
        if not paused and pause and n >= pause_at:
            paused = True
            time.sleep(pause)
        elif delay:
            time.sleep(delay)


def read_all(s):
    h, n = hashlib.sha256(), 0
    while True:
        d = s.recv(1 << 20)
        if not d:
            return n, h.hexdigest()
        n += len(d)
        h.update(d)


def send_file(s, path):
    with open(path, "rb") as f:
        while True:
            d = f.read(1 << 20)
            if not d:
                break
            s.sendall(d)


def say(*words):
    print(*words, flush=True)


def serve_forever(ls, fn):
    while True:
        s, _ = ls.accept()
        threading.Thread(target=fn, args=(s,), daemon=True).start()


if mode == "sink":
    chunk, delay = int(args[0]), float(args[1])
    pause_at, pause = int(args[2]), float(args[3])

    def serve(s):
        n, h = slow_read(s, chunk, delay, pause_at, pause)
        say(n, h)
        try:
            s.sendall(b"%d %s\n" % (n, h.encode()))
        except OSError:
            pass
        s.close()
    serve_forever(listener(), serve)

elif mode == "source":
    reset = args[1:] == ["reset"]

    def serve(s):
        try:
            send_file(s, args[0])
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))
            s.close()
            say("sent", time.time())
        except OSError as e:
            say(type(e).__name__, time.time())
    serve_forever(listener(), serve)

elif mode == "send":
    try:
        s = connect()
        send_file(s, args[0])
        s.shutdown(socket.SHUT_WR)
        say(s.makefile().read().strip())
    except OSError as e:
        say(type(e).__name__, time.time())

elif mode == "recv":
    chunk, delay = int(args[0]), float(args[1])
    pause_at, pause = int(args[2]), float(args[3])
    try:
        s = connect()
        say(*slow_read(s, chunk, delay, pause_at, pause))
    except OSError as e:
        say(type(e).__name__, time.time())

elif mode == "race":
    if args[1:] == ["listen"]:
        s, _ = listener().accept()
    else:
        s = connect()

    def up():
        send_file(s, args[0])
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=up)
    t.start()
    n, h = read_all(s)
    t.join(60)
    say(n, h)

elif mode == "echo":
    sel = selectors.DefaultSelector()
    ls = listener(4096)
    sel.register(ls, selectors.EVENT_READ)
    while True:
        for k, _e in sel.select():
            if k.fileobj is ls:
                c, _ = ls.accept()
                sel.register(c, selectors.EVENT_READ)
                continue
            c = k.fileobj
            try:
                d = c.recv(65536)
            except OSError:
                d = b""
            if d:
                try:
                    c.sendall(d)
                except OSError:
                    d = b""
            if not d or d.startswith(b"bye"):
                sel.unregister(c)
                c.close()

elif mode == "idle":
    n, hold = int(args[0]), float(args[1])
    socks = [connect(10) for _i in range(n)]
    time.sleep(hold)
    ok = 0
    for i, s in enumerate(socks):
        msg = b"hello %d\n" % i
        try:
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = s.recv(100)
                if not d:
                    break
                got += d
            ok += got == msg
        except OSError as e:
            say("connection", i, type(e).__name__)
    say(ok)

elif mode == "churn":
    n, ok, t0 = int(args[0]), 0, time.monotonic()
    for i in range(n):
        try:
            s = connect(10)
            s.sendall(b"bye %d" % i)
            ok += s.recv(100) == b"bye %d" % i
            s.close()
        except OSError as e:
            say("connection", i, type(e).__name__)
    say(ok, "%.1f" % (time.monotonic() - t0))

elif mode == "probe":
    t0 = time.monotonic()
    try:
        connect(float(args[0]))
        r = "connected"
    except OSError as e:
        r = "%s %s" % (type(e).__name__, e.errno)
    say(r, "%.1f" % (time.monotonic() - t0))
"""


# -- helpers ---------------------------------------------------------------

def _attach(bed, args=(), suffix="t"):
    """A namespace with our pasta attached; returns (ns, Popen).

    The namespace's loopback is brought up: some peers listen there.
    """
    ns = bed.netns_add(suffix)
    p = bed.pasta_attach(ns, ["--runas", "0:0"] + list(args), timeout=30)
    bed.run(ns, ["ip", "link", "set", "lo", "up"], check=True)
    return ns, p


def _addr(bed, v6):
    return bed.WORLD6 if v6 else bed.WORLD4


def _peer(bed, ns, *argv, **kw):
    """Start PEER in *ns*; returns the Popen (text stdout piped)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    return bed.popen(ns, [PY, "-c", PEER] + [str(a) for a in argv], **kw)


def _run_peer(bed, ns, *argv, timeout=60):
    """Run PEER in *ns* to completion; returns its stripped stdout."""
    r = bed.run(ns, [PY, "-c", PEER] + [str(a) for a in argv],
                timeout=timeout)
    assert not r.stderr.strip(), r.stderr
    return r.stdout.strip()


def _fds(p):
    return len(os.listdir("/proc/%d/fd" % p.pid))


def _readline(proc, timeout):
    """A line of *proc*'s piped stdout, words split, within *timeout*.

    Reads the descriptor itself, so nothing is left in Python's buffer
    for a later communicate(); raises AssertionError on timeout.
    """
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            what = proc.args[proc.args.index(PEER) + 1:]
            raise AssertionError("no line from %s within %gs (got %r)"
                                 % (" ".join(what), timeout, line))
        d = os.read(fd, 1)
        if not d:
            break
        line += d
    return line.decode().split()


def _host_conns(bed):
    """pasta's host sockets still connected (not in TIME-WAIT).

    Only pasta has sockets in the bed's host namespace. The descriptor
    count alone can hide a socket that pasta closed but something else
    still holds: the socket itself is what must be gone.
    """
    r = bed.run(bed.host, ["ss", "-tnH", "state", "connected", "exclude",
                           "time-wait"])
    return r.stdout.strip().splitlines()


def _wait_no_host_conns(bed, timeout=15.0):
    """Wait (bounded) until pasta holds no connection on the host side."""
    deadline = time.monotonic() + timeout
    while True:
        left = _host_conns(bed)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _status_kib(p, key):
    with open("/proc/%d/status" % p.pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for pasta (PID %d)" % (key, p.pid))


def _baseline(p):
    """Descriptors pasta holds when idle, once its socket pools are full.

    Pools are refilled once a second, when pasta is woken up anyway: the
    highest of a few counts over more than a refill interval.
    """
    time.sleep(1.2)
    counts = []
    for _i in range(6):
        counts.append(_fds(p))
        time.sleep(0.25)
    return max(counts)


def _wait_fds(p, base, timeout=15.0):
    """Wait (bounded) until pasta is back to *base* descriptors."""
    deadline = time.monotonic() + timeout
    while True:
        n = _fds(p)
        if n <= base or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def _assert_healthy(p):
    """pasta still runs and logged no error of its own handlers."""
    assert p.poll() is None, "pasta exited with %s" % p.returncode
    with open(p.log_path) as f:
        log = f.read()
    for bad in ("Traceback", "TCP: error in", "error handling"):
        assert bad not in log, log[-3000:]


def _answer(size, digest):
    return "%d %s" % (size, digest)


# -- 1, 2: slow receivers ---------------------------------------------------

def test_slow_world_receiver_gets_every_byte_with_bounded_memory(bed):
    ns, p = _attach(bed)
    path, digest = bed.make_blob(20 * MIB)
    addr = bed.WORLD6
    # 64 KiB every 50 ms: about 1.3 MB/s, so 20 MiB take some 16 s, with
    # the namespace's sender blocked on a full window all along
    _peer(bed, bed.world, "sink", addr, 5101, 64 << 10, 0.05, 0, 0)
    bed.wait_listen(bed.world, 5101)
    rss0 = _status_kib(p, "VmRSS")

    out = _run_peer(bed, ns, "send", addr, 5101, path, timeout=90)

    assert out == _answer(20 * MIB, digest)
    # pasta holds no copy of the data: its peak stays within some MiB of
    # where it was (the data is 20 MiB)
    assert _status_kib(p, "VmHWM") - rss0 < 12 * 1024
    _assert_healthy(p)


def test_slow_namespace_listener_gets_every_byte_from_the_world(bed):
    ns, p = _attach(bed, ["-t", "5102"])
    path, digest = bed.make_blob(20 * MIB)
    # 256 KiB every 50 ms, about 5 MB/s: some 4 s of backpressure
    _peer(bed, ns, "sink", "0.0.0.0", 5102, 256 << 10, 0.05, 0, 0)
    bed.wait_listen(ns, 5102)
    rss0 = _status_kib(p, "VmRSS")

    out = _run_peer(bed, bed.world, "send", bed.HOST4, 5102, path,
                    timeout=90)

    assert out == _answer(20 * MIB, digest)
    assert _status_kib(p, "VmHWM") - rss0 < 12 * 1024
    _assert_healthy(p)


def test_slow_namespace_reader_downloads_every_byte_from_fast_world(bed):
    ns, p = _attach(bed)
    path, digest = bed.make_blob(20 * MIB)
    _peer(bed, bed.world, "source", bed.WORLD4, 5103, path)
    bed.wait_listen(bed.world, 5103)
    rss0 = _status_kib(p, "VmRSS")

    out = _run_peer(bed, ns, "recv", bed.WORLD4, 5103, 256 << 10, 0.05,
                    0, 0, timeout=90)

    assert out == _answer(20 * MIB, digest)
    assert _status_kib(p, "VmHWM") - rss0 < 12 * 1024
    _assert_healthy(p)


# -- 3: a receiver that stops reading for ten seconds -----------------------

@pytest.mark.parametrize("stopper", ["world", "namespace",
                                     "namespace-listener"])
def test_receiver_stopping_for_ten_seconds_then_resuming_completes(
        bed, stopper):
    ns, p = _attach(bed, ["-t", "5104"])
    path, digest = bed.make_blob(20 * MIB)
    t0 = time.monotonic()
    if stopper == "namespace-listener":
        # Through -t: the world sends, the namespace stops reading
        _peer(bed, ns, "sink", "0.0.0.0", 5104, 1 << 20, 0, MIB, 10)
        bed.wait_listen(ns, 5104)
        out = _run_peer(bed, bed.world, "send", bed.HOST4, 5104, path,
                        timeout=90)
    elif stopper == "world":
        _peer(bed, bed.world, "sink", bed.WORLD4, 5104, 1 << 20, 0,
              MIB, 10)
        bed.wait_listen(bed.world, 5104)
        out = _run_peer(bed, ns, "send", bed.WORLD4, 5104, path,
                        timeout=90)
    else:
        _peer(bed, bed.world, "source", bed.WORLD4, 5104, path)
        bed.wait_listen(bed.world, 5104)
        out = _run_peer(bed, ns, "recv", bed.WORLD4, 5104, 1 << 20, 0,
                        MIB, 10, timeout=90)

    assert out == _answer(20 * MIB, digest)
    assert time.monotonic() - t0 >= 10
    _assert_healthy(p)


# -- 4: many idle connections -----------------------------------------------

@pytest.mark.parametrize("inbound", [False, True],
                         ids=["to-world", "from-world"])
def test_two_hundred_idle_connections_still_work_after_six_seconds(
        bed, inbound):
    ns, p = _attach(bed, ["-t", "5105"] if inbound else [])
    if inbound:
        _peer(bed, ns, "echo", "0.0.0.0", 5105)
        bed.wait_listen(ns, 5105)
        base = _baseline(p)
        out = _run_peer(bed, bed.world, "idle", bed.HOST4, 5105, 200, 6)
    else:
        _peer(bed, bed.world, "echo", bed.WORLD4, 5105)
        bed.wait_listen(bed.world, 5105)
        base = _baseline(p)
        out = _run_peer(bed, ns, "idle", bed.WORLD4, 5105, 200, 6)

    assert out == "200"
    assert _wait_no_host_conns(bed) == []
    assert _wait_fds(p, base) <= base
    _assert_healthy(p)


# -- 5: peers that close, reset or die mid-transfer -------------------------

@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_both_sides_half_close_while_data_flows_the_other_way(bed, v6):
    ns, p = _attach(bed)
    up, up_digest = bed.make_blob(8 * MIB, "up")
    down, down_digest = bed.make_blob(8 * MIB, "down")
    addr = _addr(bed, v6)
    base = _baseline(p)
    srv = _peer(bed, bed.world, "race", addr, 5106, down, "listen")
    bed.wait_listen(bed.world, 5106)

    out = _run_peer(bed, ns, "race", addr, 5106, up)

    assert out == _answer(8 * MIB, down_digest)
    assert srv.communicate(timeout=20)[0].strip() == \
        _answer(8 * MIB, up_digest)
    assert _wait_no_host_conns(bed) == []
    assert _wait_fds(p, base) <= base
    _assert_healthy(p)


def test_world_server_closing_on_a_sender_ends_it_promptly(bed):
    ns, p = _attach(bed)
    _peer(bed, bed.world, "echo", bed.WORLD4, 5107)
    bed.wait_listen(bed.world, 5107)
    base = _baseline(p)
    # The server echoes "bye" and closes while the client keeps sending:
    # the client's kernel must see the reset the server's kernel sends
    client = (
        "import socket, time\n"
        "s = socket.create_connection(('%s', 5107), timeout=10)\n"
        "s.sendall(b'bye')\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    while time.monotonic() - t < 10:\n"
        "        s.sendall(b'x' * 65536)\n"
        "        time.sleep(0.01)\n"
        "    print('no error')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, '%%.1f' %% (time.monotonic() - t))\n"
        % bed.WORLD4)

    r = bed.run(ns, [PY, "-c", client], timeout=30)

    name, took = r.stdout.split()
    assert name in ("ConnectionResetError", "BrokenPipeError"), r.stdout
    assert float(took) < 3
    assert _wait_no_host_conns(bed) == []
    assert _wait_fds(p, base) <= base
    _assert_healthy(p)


def test_world_server_reset_reaches_slow_namespace_reader_promptly(bed):
    ns, p = _attach(bed)
    path, _digest = bed.make_blob(8 * MIB)
    srv = _peer(bed, bed.world, "source", bed.WORLD4, 5108, path, "reset")
    bed.wait_listen(bed.world, 5108)
    base = _baseline(p)

    # The reader takes 64 KiB every 20 ms: the server has long written
    # everything into the buffers when it resets
    out = _run_peer(bed, ns, "recv", bed.WORLD4, 5108, 64 << 10, 0.02,
                    0, 0)

    name, when = out.split()
    assert name == "ConnectionResetError", out
    sent = _readline(srv, 5)
    assert sent[0] == "sent"
    assert float(when) - float(sent[1]) < 3
    assert _wait_no_host_conns(bed) == []
    assert _wait_fds(p, base) <= base
    _assert_healthy(p)


@pytest.mark.parametrize("direction", ["download", "upload", "inbound"])
def test_namespace_process_killed_mid_transfer_ends_world_side(
        bed, direction):
    ns, p = _attach(bed, ["-t", "5109"])
    path, _digest = bed.make_blob(64 * MIB)
    base = _baseline(p)
    if direction == "inbound":
        # A world client sends through -t to a namespace server that dies
        victim = _peer(bed, ns, "sink", "0.0.0.0", 5109, 64 << 10, 0.01,
                       0, 0)
        bed.wait_listen(ns, 5109)
        world = _peer(bed, bed.world, "send", bed.HOST4, 5109, path)
    elif direction == "download":
        world = _peer(bed, bed.world, "source", bed.WORLD4, 5109, path)
        bed.wait_listen(bed.world, 5109)
        victim = _peer(bed, ns, "recv", bed.WORLD4, 5109, 64 << 10, 0.01,
                       0, 0)
    else:
        world = _peer(bed, bed.world, "sink", bed.WORLD4, 5109, 64 << 10,
                      0.01, 0, 0)
        bed.wait_listen(bed.world, 5109)
        victim = _peer(bed, ns, "send", bed.WORLD4, 5109, path)
    # victim: the namespace's process; world: its peer in the world
    time.sleep(1.5)
    assert victim.poll() is None, victim.communicate()

    os.killpg(victim.pid, signal.SIGKILL)
    killed = time.time()
    victim.wait(10)

    if direction != "upload":
        # The namespace's kernel resets (unread data), pasta closes its
        # socket with SO_LINGER zero, and the world's next write fails.
        # That reset only happens if no other process still holds a copy
        # of pasta's socket (as a forked helper that kept every
        # descriptor it inherited did)
        line = _readline(world, 5)
        assert line[0] in ("ConnectionResetError", "BrokenPipeError"), line
        assert float(line[1]) - killed < 3
    else:
        # The namespace's kernel still delivers what it had queued, then
        # closes: the sink sees the end of a shorter stream
        n, _h = _readline(world, 10)
        assert 0 < int(n) < 64 * MIB
    assert _wait_no_host_conns(bed) == []
    assert _wait_fds(p, base) <= base
    _assert_healthy(p)


# -- 6: a destination that drops SYNs ----------------------------------------

def test_blackholed_destination_times_out_and_leaves_no_flow(bed):
    ns, p = _attach(bed)
    bed.run(bed.world, ["ip", "route", "add", "blackhole",
                        "203.0.113.99/32"], check=True)
    # The namespace's kernel gives up after one retry (1 s + 2 s), the
    # host's, which pasta's socket uses, after two (1 + 2 + 4 s)
    bed.run(ns, ["sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=1"],
            check=True)
    bed.run(bed.host, ["sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=2"],
            check=True)
    _peer(bed, bed.world, "echo", bed.WORLD4, 5110)
    bed.wait_listen(bed.world, 5110)
    base = _baseline(p)

    probes = [_peer(bed, ns, "probe", "203.0.113.99", 5110 + i, 30)
              for i in range(20)]
    outs = [pr.communicate(timeout=30)[0].split() for pr in probes]

    for out in outs:
        assert out[:2] == ["TimeoutError", "110"], outs
        assert 2.5 < float(out[2]) < 6, outs
    # Meanwhile, and afterwards, the world is reachable as before
    assert _run_peer(bed, ns, "churn", bed.WORLD4, 5110, 5).startswith("5")
    assert _wait_no_host_conns(bed) == []
    assert _wait_fds(p, base, timeout=15) <= base
    _assert_healthy(p)


# -- 7: connection churn ------------------------------------------------------

def test_two_thousand_short_connections_in_a_row(bed):
    ns, p = _attach(bed)
    _peer(bed, bed.world, "echo", bed.WORLD4, 5111)
    bed.wait_listen(bed.world, 5111)
    base = _baseline(p)

    out = _run_peer(bed, ns, "churn", bed.WORLD4, 5111, 2000, timeout=90)

    ok, took = out.split()
    assert ok == "2000", out
    assert float(took) < 60
    assert _wait_no_host_conns(bed) == []
    assert _wait_fds(p, base) <= base
    _assert_healthy(p)
