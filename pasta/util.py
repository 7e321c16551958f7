# SPDX-License-Identifier: GPL-2.0-or-later
"""System calls the standard library lacks, and working in the namespace.

Python 3.11 has no ``setns()``, ``unshare()``, timerfd or inotify, so they
are reached through ctypes here, behind small functions that raise
``OSError`` like the rest of the ``os`` module.

Working in the namespace: the process stays in the network namespace it
was started in (where the host's sockets live) for its whole life.  When it
runs unprivileged it lives in a user namespace of its own, which gives it
no right to return to the original network namespace once it left it, so
it never leaves it.  Work that must happen inside the target namespace is
done by other processes instead:

- ``ns_call()`` forks a short-lived child that enters the namespace, runs a
  function there (configuring links with netlink, opening the tap device),
  and hands back the function's result and any file descriptors it
  returned over a UNIX socket pair (``SCM_RIGHTS``).  Descriptors keep
  pointing to objects of the namespace where they were created.
- ``NsSockHelper`` is a long-lived child that stays in the namespace and
  opens sockets on request (the spliced paths need a supply of them while
  running); a request and its answer are one datagram each, so no fork is
  paid per socket.
"""

import array
import ctypes
import ctypes.util
import errno
import os
import pickle
import signal
import socket
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                    use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong, ctypes.c_ulong)
_libc.syscall.restype = ctypes.c_long


def _check(rc):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


def setns(fd, nstype=0):
    """Move the calling process into the namespace open as ``fd``."""
    _check(_libc.setns(fd, nstype))


def unshare(flags):
    """Move the calling process into new namespaces of the given kinds."""
    _check(_libc.unshare(flags))


def ns_is_init():
    """True if we run in the initial user namespace (its UID map is the
    identity over the whole range).  Dies if that can't be read."""
    from pasta import log

    try:
        with open("/proc/self/uid_map") as f:
            fields = f.read().split()
    except OSError as e:
        log.die_perror(e, "Can't determine if we're in init namespace")
    return fields == ["0", "0", "4294967295"]


def set_pdeathsig(sig):
    """Have the kernel send ``sig`` to this process when its parent dies."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0))


# timerfd

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _ts(seconds):
    sec = int(seconds)
    return _Timespec(sec, int((seconds - sec) * 1e9))


def timerfd_create(flags=TFD_NONBLOCK | TFD_CLOEXEC):
    """Create a timerfd on the monotonic clock."""
    return _check(_libc.timerfd_create(CLOCK_MONOTONIC, flags))


def timerfd_settime(fd, value, interval=0.0):
    """Arm (or, with ``value`` 0, disarm) a timerfd: first expiry after
    ``value`` seconds, then every ``interval`` seconds if non-zero."""
    its = _Itimerspec(_ts(interval), _ts(value))
    if value and not its.it_value.tv_sec and not its.it_value.tv_nsec:
        its.it_value.tv_nsec = 1
    _check(_libc.timerfd_settime(fd, 0, ctypes.byref(its), None))


# inotify

IN_DELETE = 0x00000200
_INOTIFY_EVENT = struct.Struct("iIII")


def inotify_init1(flags=os.O_NONBLOCK | os.O_CLOEXEC):
    return _check(_libc.inotify_init1(flags))


def inotify_add_watch(fd, path, mask):
    return _check(_libc.inotify_add_watch(fd, os.fsencode(path), mask))


def inotify_names(buf):
    """Names carried by the inotify events in ``buf``."""
    names = []
    off = 0
    while off + _INOTIFY_EVENT.size <= len(buf):
        _wd, _mask, _cookie, length = _INOTIFY_EVENT.unpack_from(buf, off)
        off += _INOTIFY_EVENT.size
        name = bytes(buf[off:off + length]).rstrip(b"\0")
        off += length
        names.append(os.fsdecode(name))
    return names


# Passing descriptors between processes

def send_fds(sock, data, fds):
    """Send ``data`` with descriptors ``fds`` attached, as one message."""
    anc = []
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                array.array("i", fds).tobytes())]
    sock.sendmsg([data], anc)


def recv_fds(sock, maxlen=1 << 16, maxfds=16):
    """Receive one message and the descriptors attached to it."""
    fds = array.array("i")
    data, anc, _flags, _addr = sock.recvmsg(
        maxlen, socket.CMSG_SPACE(maxfds * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % fds.itemsize
            fds.frombytes(payload[:usable])
    return data, list(fds)


class NsFds:
    """Wrap a value returned by a function run with ``ns_call()`` together
    with the descriptors to hand back: ``NsFds(value, [fd, ...])``."""

    def __init__(self, value, fds):
        self.value = value
        self.fds = list(fds)


def ns_call(netns_fd, fn, *args, userns_fd=None):
    """Run ``fn(*args)`` in the network namespace open as ``netns_fd``.

    ``fn`` runs in a forked child.  Its return value (which must pickle)
    comes back to the caller; if it returns an ``NsFds``, the descriptors
    listed there are duplicated into this process and the caller receives
    ``(value, [fd, ...])``.  An exception raised by ``fn`` is raised again
    here (``OSError`` keeps its ``errno``); ``SystemExit`` from ``die()``
    in the child is passed on as such, after the child printed its message.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            parent.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            if userns_fd is not None:
                setns(userns_fd, CLONE_NEWUSER)
            setns(netns_fd, CLONE_NEWNET)
            result = fn(*args)
            if isinstance(result, NsFds):
                send_fds(child, pickle.dumps(("fds", result.value)),
                         result.fds)
            else:
                child.send(pickle.dumps(("ok", result)))
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
            child.send(pickle.dumps(("exit", status)))
        except BaseException as e:          # handed to the parent
            try:
                if isinstance(e, OSError):
                    payload = ("oserror", (e.errno, e.strerror))
                else:
                    payload = ("error", repr(e))
                child.send(pickle.dumps(payload))
            except BaseException:
                status = 2
        finally:
            os._exit(status)

    child.close()
    try:
        data, fds = recv_fds(parent)
    finally:
        parent.close()
        _waitpid_retry(pid)

    if not data:
        raise OSError(errno.EIO, "namespace helper died")
    kind, value = pickle.loads(data)
    if kind == "ok":
        return value
    if kind == "fds":
        return value, fds
    if kind == "oserror":
        raise OSError(*value)
    if kind == "exit":
        raise SystemExit(value)
    raise RuntimeError(value)


def _waitpid_retry(pid):
    while True:
        try:
            return os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        except InterruptedError:
            continue


class NsSockHelper:
    """A child process kept in the namespace that opens sockets for us.

    ``socket(family, type, proto, bind=None, opts=())`` returns a new
    ``socket.socket`` created inside the namespace, optionally with socket
    options set (``(level, name, value)`` triples) and bound to ``bind``
    (an address tuple), or raises ``OSError`` with the child's errno.
    The child exits when this process closes its end or dies.
    """

    def __init__(self, netns_fd, userns_fd=None):
        parent, child = socket.socketpair(socket.AF_UNIX,
                                          socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                parent.close()
                set_pdeathsig(signal.SIGKILL)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.set_wakeup_fd(-1)
                if userns_fd is not None:
                    setns(userns_fd, CLONE_NEWUSER)
                setns(netns_fd, CLONE_NEWNET)
                # Keep nothing of ours but this end: a copy of one of
                # pasta's sockets held here would stay open after pasta
                # closed it, and its peer would never see a FIN or RST
                fd = child.fileno()
                os.closerange(3, fd)
                os.closerange(fd + 1, max(os.sysconf("SC_OPEN_MAX"),
                                          fd + 1))
                self._serve(child)
            finally:
                os._exit(0)
        child.close()
        self.pid = pid
        self.owner = os.getpid()
        self.sock = parent

    @staticmethod
    def _serve(sock):
        while True:
            try:
                req = sock.recv(4096)
            except InterruptedError:
                continue
            if not req:
                return
            family, type_, proto, bind, opts = pickle.loads(req)
            try:
                s = socket.socket(family, type_, proto)
                try:
                    for level, name, value in opts:
                        s.setsockopt(level, name, value)
                    if bind is not None:
                        s.bind(bind)
                    send_fds(sock, b"\0", [s.fileno()])
                finally:
                    s.close()
            except OSError as e:
                sock.send(struct.pack("i", e.errno or errno.EIO))

    def socket(self, family, type_, proto=0, bind=None, opts=()):
        self.sock.send(pickle.dumps((family, type_, proto, bind,
                                     tuple(opts))))
        data, fds = recv_fds(self.sock, 64, 1)
        if fds:
            return socket.socket(fileno=fds[0])
        if len(data) == 4:
            e = struct.unpack("i", data)[0]
            raise OSError(e, os.strerror(e))
        raise OSError(errno.EIO, "namespace socket helper died")

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            _waitpid_retry(self.pid)


def ns_socket(c, family, type_, proto=0, bind=None, opts=()):
    """A new socket created in the guest's namespace (see ``NsSockHelper``).

    The helper is started on first use, and again after the process went
    to the background (a fork leaves the old helper with a dead parent).
    Raises ``OSError``.
    """
    h = c.ns_sock
    if h is None or h.owner != os.getpid():
        h = c.ns_sock = NsSockHelper(c.pasta_netns_fd, c.pasta_userns_fd)
    return h.socket(family, type_, proto, bind, opts)
