# SPDX-License-Identifier: GPL-2.0-or-later
"""pasta specifics: the namespace, the command in it, its configuration.

API summary:

    pasta_child_handler(signum, frame)   SIGCHLD handler (passt.py installs
                                         it): exit with the command's status
    pasta_open_ns(c, netns)              attach to an existing namespace
                                         (path); sets c.pasta_netns_fd,
                                         c.netns_base, c.netns_dir
    pasta_start_ns(c, uid, gid, config_idmaps, argv)
                                         spawn argv (or $SHELL) in new
                                         namespaces; sets c.pasta_child_pid,
                                         c.pasta_netns_fd
                                         create the tap device c.pasta_ifn in
                                         the namespace; sets c.pasta_ifi
    pasta_ns_conf(c)                     loopback, MAC, and with
                                         --config-net MTU, addresses, routes
    pasta_netns_quit_init(c)             watch the --netns path
    pasta_netns_quit_inotify_handler(c, fd)
    pasta_netns_quit_timer_handler(c, ref)

All of them stop the program with a message (``log.die()``) on errors that
upstream treats as fatal, and return nothing unless listed.

Theory of operation
-------------------
pasta connects one network namespace to the network it runs in.  Either
the namespace exists already (``--netns PATH``, or the PID of a process
whose namespaces to join, resolved by the configuration), and
``pasta_open_ns()`` opens it and checks, from a child process, that we
can enter it; or pasta creates it and starts a command there:
``pasta_start_ns()``.

Spawning.  The C implementation calls ``clone()`` with new network, UTS,
IPC, mount and PID namespaces and runs the command in the child.  Python
can fork but not clone with a function, and a new PID namespace only
applies to the children of the process that asks for it.  So the command
is started in two steps:

- the *keeper* is forked from pasta.  It unshares the network, UTS, IPC,
  mount and PID namespaces, forks the command's process, tells pasta it
  is done (a byte on a pipe), and then only relays signals: SIGUSR1 (and
  SIGTERM, SIGHUP) from pasta to the command, and the command's end back
  to pasta: it exits with the command's exit status, or kills itself with
  the signal that killed the command.  Its network namespace is the
  command's, and ``c.pasta_child_pid`` is the keeper: its exit status is
  exactly what pasta passes on.  SIGINT and SIGQUIT are ignored by the
  keeper; from a terminal the command gets them directly.  As PID 1 of
  its namespace (as upstream), the command only receives the signals it
  has a handler for, SIGKILL and SIGSTOP aside.
- the *command's process* is PID 1 of the new PID namespace.  It mounts a
  fresh ``/proc``, allows ping sockets for group 0 (``ping_group_range``
  "0 0"), sets the host name (``--hostname``, or ``pasta-`` and ours),
  waits for SIGUSR1 (pasta sends it when its set-up is complete), stops
  dying with its parent, restores default signal handling and an empty
  signal mask, and executes the command, or ``$SHELL`` (``/bin/sh`` if
  unset) as a login shell (argument zero: ``-`` and the path).

Both die with their parent until the command is executed
(``PR_SET_PDEATHSIG``).  The keeper's mount namespace is made a slave of
ours, so the new ``/proc`` never propagates back even without a user
namespace.  User and group mappings ("0 UID 1", "0 GID 1") are written
for pasta's own user namespace, created earlier by
``isolation.isolate_user()``, and both processes inherit it.

pasta itself never enters the namespace (see util.py): the tap device is
created by a child of ``util.ns_call()``, and the namespace's netlink
socket (``netlink.nl_sock_ns``) is created by another one and handed back,
so that ``pasta_ns_conf()`` configures the namespace from here.

Quitting with the namespace.  When attached to a namespace given by path,
pasta exits once the path is gone: an inotify watch on its directory
reports the deletion, or, where inotify can't be used (``/proc``,
``/sys``, devpts), a one-second timer checks whether the entry is still
there.  For ``/proc/PID/ns/net`` a refused look-up counts as "still
there", as upstream: once our capabilities are dropped, a process that
exited is seen as gone only when its parent has reaped it.
"""

import ctypes
import ctypes.util
import errno
import os
import resource
import signal
import socket
import struct

from pasta import isolation, log, netlink, util
from pasta.epoll_ctl import EpollRef, EpollType, epoll_add, EPOLLIN

HOSTNAME_PREFIX = "pasta-"
HOST_NAME_MAX = 64

# PID of the keeper of the command we spawned (also c.pasta_child_pid): the
# SIGCHLD handler has no context argument
pasta_child_pid = 0

_SPAWN_FLAGS = (util.CLONE_NEWNET | util.CLONE_NEWUTS | util.CLONE_NEWIPC |
                util.CLONE_NEWNS | util.CLONE_NEWPID)

# File systems where inotify doesn't report deletions of namespace entries
PROC_SUPER_MAGIC = 0x9fa0
SYSFS_MAGIC = 0x62656572
DEVPTS_SUPER_MAGIC = 0x1cd1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                    use_errno=True)


def pasta_child_handler(signum, frame=None):
    """SIGCHLD: if the spawned command is done, have the main loop exit
    with its status (or 128 plus the signal that ended it); reap other
    children that ended.

    Children of ``util.ns_call()`` may be reaped here first; that is
    harmless, ``ns_call()`` has their answer already and accepts it.
    """
    if signum != signal.SIGCHLD:
        return

    # Look before reaping, so that the command's end can't be reaped by
    # the loop below and lost, should it come in between
    for _ in range(64):
        try:
            info = os.waitid(os.P_ALL, 0,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return

        if pasta_child_pid and info.si_pid == pasta_child_pid:
            if info.si_code == os.CLD_EXITED:
                log.passt_exit_request(info.si_status)
            else:
                log.passt_exit_request(info.si_status + 128)
            return

        try:
            os.waitpid(info.si_pid, os.WNOHANG)
        except ChildProcessError:
            pass


# Attaching

def _ns_check():
    """In the namespace: entering it worked (``ns_call()`` did that)."""
    return True


def pasta_open_ns(c, netns):
    """Open the network namespace at path ``netns``, check that we can
    enter it, and remember where it lives (to quit when it goes)."""
    try:
        nfd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        log.die_perror(e, "Couldn't open network namespace %s", netns)

    c.pasta_netns_fd = nfd

    try:
        util.ns_call(nfd, _ns_check, userns_fd=c.pasta_userns_fd)
    except OSError as e:
        if e.errno == errno.EINVAL:
            log.die("Couldn't switch to pasta namespaces: %s is not a "
                    "network namespace", netns)
        log.die_perror(e, "Couldn't switch to pasta namespaces")

    if not c.no_netns_quit:
        c.netns_base = os.path.basename(netns)
        c.netns_dir = os.path.dirname(netns) or "."


# Spawning

def _write_file(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _write_idmaps(uid, gid):
    """Map UID and GID 0 of our user namespace to ``uid`` and ``gid``."""
    try:
        _write_file("/proc/self/uid_map", "0 %d 1" % uid)
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/gid_map", "0 %d 1" % gid)
    except OSError as e:
        log.warn("Couldn't configure user mappings: %s", e.strerror)


def _spawn_hostname(c):
    if c.hostname:
        return c.hostname
    name = HOSTNAME_PREFIX + socket.gethostname()
    return name[:HOST_NAME_MAX]


def _reset_signals_for_exec():
    """Default dispositions and an empty mask, as a fresh command expects
    (an ignored signal would survive exec)."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _pasta_spawn_cmd(c, exe, argv, hostname):
    """The command's process, PID 1 of its namespace: prepare, wait for
    SIGUSR1, run the command.  Never returns."""
    util.set_pdeathsig(signal.SIGKILL)

    try:
        isolation.mount("proc", "/proc", "proc",
                        isolation.MS_NOSUID | isolation.MS_NODEV |
                        isolation.MS_NOEXEC)
    except OSError as e:
        log.warn_perror(e, "Couldn't mount /proc")

    try:
        _write_file("/proc/sys/net/ipv4/ping_group_range", "0 0")
    except OSError:
        log.warn("Cannot set ping_group_range, ICMP requests might fail")

    try:
        socket.sethostname(hostname)
    except OSError:
        log.warn("Unable to set %s hostname",
                 "configured" if c.hostname else "pasta-prefixed")

    signal.sigwaitinfo({signal.SIGUSR1})

    util.set_pdeathsig(0)
    _reset_signals_for_exec()
    try:
        if not exe:                 # Python refuses it; C says ENOENT
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        os.execvp(exe, argv)
    except (OSError, ValueError) as e:
        log.err_perror(e, "Failed to start command or shell")
    os._exit(1)


def _keeper_exit_like(status):
    """End the keeper the way the command ended (``status`` from
    waitpid())."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (OSError, ValueError):
            pass
        try:
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xff)


def _pasta_keeper(c, exe, argv, hostname, ready_w):
    """The keeper (see module docstring).  Never returns."""
    util.set_pdeathsig(signal.SIGKILL)
    relay = {signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, relay | {signal.SIGCHLD})
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)

    try:
        util.unshare(_SPAWN_FLAGS)
    except OSError as e:
        os.write(ready_w, b"E" + struct.pack("i", e.errno or errno.EIO))
        os._exit(1)

    try:
        isolation.mount(None, "/", None, isolation.MS_REC | isolation.MS_SLAVE)
    except OSError:
        pass

    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_w)
            for sig in (signal.SIGINT, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_DFL)
            _pasta_spawn_cmd(c, exe, argv, hostname)
        finally:
            os._exit(1)

    os.write(ready_w, b"K")
    os.close(ready_w)

    while True:
        info = signal.sigwaitinfo(relay | {signal.SIGCHLD})
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(pid, info.si_signo)
            except ProcessLookupError:
                pass
            continue
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            os._exit(1)
        if done == pid:
            _keeper_exit_like(status)


def _pasta_wait_for_ns():
    """In the namespace: we could enter it."""
    return True


def pasta_start_ns(c, uid, gid, config_idmaps, argv):
    """Start ``argv`` (a list; empty: ``$SHELL`` as login shell) in new
    namespaces, waiting for SIGUSR1 before it runs; see the module
    docstring.  ``uid``/``gid`` are our IDs outside, mapped to 0 inside
    when ``config_idmaps`` is set."""
    global pasta_child_pid

    c.foreground = True
    if not c.debug:
        c.quiet = True

    if config_idmaps:
        _write_idmaps(uid, gid)

    argv = list(argv or ())
    if argv:
        exe = argv[0]
    else:
        exe = os.environ.get("SHELL") or "/bin/sh"
        argv = ["-" + exe]
    hostname = _spawn_hostname(c)

    ready_r, ready_w = os.pipe()
    old = signal.pthread_sigmask(signal.SIG_BLOCK,
                                 {signal.SIGUSR1, signal.SIGCHLD})
    try:
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_r)
                _pasta_keeper(c, exe, argv, hostname, ready_w)
            finally:
                os._exit(1)
        pasta_child_pid = c.pasta_child_pid = pid
    finally:
        # SIGUSR1 stays blocked here, as upstream: it is meant for the
        # command only
        signal.pthread_sigmask(signal.SIG_SETMASK,
                               (old - {signal.SIGCHLD}) | {signal.SIGUSR1})
    os.close(ready_w)

    try:
        msg = os.read(ready_r, 16)
    finally:
        os.close(ready_r)
    if msg[:1] == b"E" and len(msg) >= 5:
        e = struct.unpack("i", msg[1:5])[0]
        log.die_perror(OSError(e, os.strerror(e)),
                       "Failed to clone process with detached namespaces")
    if msg[:1] != b"K":
        log.die("Failed to clone process with detached namespaces")

    try:
        c.pasta_netns_fd = os.open("/proc/%d/ns/net" % pid,
                                   os.O_RDONLY | os.O_CLOEXEC)
        util.ns_call(c.pasta_netns_fd, _pasta_wait_for_ns,
                     userns_fd=c.pasta_userns_fd)
    except OSError as e:
        log.die_perror(e, "Failed to join network namespace")


# Configuring the namespace

def pasta_ns_conf(c):
    """Bring up the namespace's loopback; unless ``--splice-only``, read or
    set the tap interface's MAC address and, with ``--config-net``, set
    its MTU, addresses and routes, copied from the template interfaces
    or as given."""
    from pasta.passt import MAC_ZERO

    if netlink.nl_sock_ns is None:
        netlink.nl_sock_init(c, True)
    if netlink.nl_sock is None and c.pasta_conf_ns:
        netlink.nl_sock_init(c, False)
    s = netlink.nl_sock_ns
    ifi = c.pasta_ifi

    try:
        netlink.nl_link_set_flags(s, 1, netlink.IFF_UP, netlink.IFF_UP)
    except OSError as e:
        log.die("Couldn't bring up loopback interface in namespace: %s",
                e.strerror)

    if c.splice_only:
        return

    try:
        if c.guest_mac == MAC_ZERO:
            mac = netlink.nl_link_get_mac(s, ifi)
            if mac:
                c.guest_mac = mac
        else:
            netlink.nl_link_set_mac(s, ifi, c.guest_mac)
    except OSError as e:
        log.die("Couldn't set MAC address in namespace: %s", e.strerror)

    if not c.pasta_conf_ns:
        return

    flags = netlink.IFF_UP
    if c.mtu:
        try:
            netlink.nl_link_set_mtu(s, ifi, c.mtu)
        except OSError as e:
            log.warn("Couldn't set MTU %d in namespace: %s", c.mtu,
                     e.strerror)
    if c.ifi6:          # no duplicate address detection when it comes up
        flags |= netlink.IFF_NOARP
    try:
        netlink.nl_link_set_flags(s, ifi, flags, flags)
    except OSError as e:
        log.warn("Couldn't bring up %s in namespace: %s", c.pasta_ifn,
                 e.strerror)

    if c.ifi4:
        _pasta_ns_conf_ip4(c, s, ifi)
    if c.ifi6:
        _pasta_ns_conf_ip6(c, s, ifi)


def _pasta_ns_conf_ip4(c, s, ifi):
    nl = netlink
    try:
        if c.ip4.no_copy_addrs:
            nl.nl_addr_set(s, ifi, socket.AF_INET, c.ip4.addr,
                           c.ip4.prefix_len)
        else:
            nl.nl_addr_dup(nl.nl_sock, c.ifi4, s, ifi, socket.AF_INET)
    except OSError as e:
        if c.ifi4 == -1 and e.errno == errno.EOPNOTSUPP:
            log.warn("IPv4 not supported, disabling")
            c.ifi4 = 0
            return
        log.die("Couldn't set IPv4 address(es) in namespace: %s",
                e.strerror)

    try:
        if c.ip4.no_copy_routes:
            nl.nl_route_set_def(s, ifi, socket.AF_INET, c.ip4.guest_gw)
        else:
            nl.nl_route_dup(nl.nl_sock, c.ifi4, s, ifi, socket.AF_INET)
    except OSError as e:
        log.die("Couldn't set IPv4 route(s) in guest: %s", e.strerror)


def _pasta_ns_conf_ip6(c, s, ifi):
    nl = netlink
    try:
        ll = nl.nl_addr_get_ll(s, ifi)
        if ll is not None:
            c.ip6.addr_ll_seen = ll
    except OSError as e:
        log.warn("Can't get LL address from namespace: %s", e.strerror)

    try:
        nl.nl_addr_set_ll_nodad(s, ifi)
    except OSError as e:
        log.warn("Can't set nodad for LL in namespace: %s", e.strerror)

    # Duplicate address detection was dodged: let neighbour solicitations
    # through again
    try:
        nl.nl_link_set_flags(s, ifi, 0, nl.IFF_NOARP)
    except OSError as e:
        log.warn("Couldn't clear NOARP on %s: %s", c.pasta_ifn, e.strerror)

    try:
        if c.ip6.no_copy_addrs:
            if not c.ip6.addr.is_unspecified:
                nl.nl_addr_set(s, ifi, socket.AF_INET6, c.ip6.addr, 64)
        else:
            nl.nl_addr_dup(nl.nl_sock, c.ifi6, s, ifi, socket.AF_INET6)
    except OSError as e:
        log.die("Couldn't set IPv6 address(es) in namespace: %s",
                e.strerror)

    try:
        if c.ip6.no_copy_routes:
            nl.nl_route_set_def(s, ifi, socket.AF_INET6, c.ip6.guest_gw)
        else:
            nl.nl_route_dup(nl.nl_sock, c.ifi6, s, ifi, socket.AF_INET6)
    except OSError as e:
        if c.ifi6 == -1 and e.errno == errno.EOPNOTSUPP:
            log.warn("IPv6 not supported, disabling")
            c.ifi6 = 0
            return
        log.die("Couldn't set IPv6 route(s) in guest: %s", e.strerror)


# Quitting when the namespace goes

class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


def _fs_type(fd):
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return buf.f_type & 0xffffffff


def pasta_netns_quit_timer():
    """A timerfd expiring every second; raises ``OSError``."""
    fd = util.timerfd_create(util.TFD_CLOEXEC | util.TFD_NONBLOCK)
    try:
        util.timerfd_settime(fd, 1.0, 1.0)
    except OSError:
        os.close(fd)
        raise
    return fd


def pasta_netns_quit_init(c):
    """When attached to a namespace by path, watch the path's directory
    and quit once the entry is deleted (inotify, or a timer on file
    systems where inotify doesn't see that)."""
    from pasta.passt import MODE_PASTA

    if c.mode != MODE_PASTA or c.no_netns_quit or not c.netns_base:
        return

    try:
        dir_fd = os.open(c.netns_dir, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        log.die("netns dir open: %s, exiting", e.strerror)

    try:
        try_inotify = _fs_type(dir_fd) not in (
            PROC_SUPER_MAGIC, SYSFS_MAGIC, DEVPTS_SUPER_MAGIC)
    except OSError:
        try_inotify = False

    fd = -1
    if try_inotify:
        try:
            fd = util.inotify_init1()
        except OSError as e:
            log.warn("inotify_init1(): %s, use a timer", e.strerror)
    if fd >= 0:
        try:
            util.inotify_add_watch(fd, c.netns_dir, util.IN_DELETE)
        except OSError as e:
            log.warn("inotify_add_watch(): %s, use a timer", e.strerror)
            os.close(fd)
            fd = -1

    if fd < 0:
        try:
            fd = pasta_netns_quit_timer()
        except OSError as e:
            log.die("Failed to set up fallback netns timer, exiting: %s",
                    e.strerror)
        ref = EpollRef(EpollType.NSQUIT_TIMER, fd, data=dir_fd)
    else:
        os.close(dir_fd)
        ref = EpollRef(EpollType.NSQUIT_INOTIFY, fd)

    epoll_add(c, EPOLLIN, ref)


def pasta_netns_quit_inotify_handler(c, inotify_fd):
    """inotify events on the namespace's directory: exit if the
    namespace's entry was deleted."""
    try:
        buf = os.read(inotify_fd, 4096)
    except (BlockingIOError, InterruptedError):
        return
    if c.netns_base in util.inotify_names(buf):
        log.info("Namespace %s is gone, exiting", c.netns_base)
        log.passt_exit(0)


def pasta_netns_quit_timer_handler(c, ref):
    """Timer tick: exit if the namespace's entry is gone (``ref.data`` is
    the descriptor of its directory)."""
    try:
        n = len(os.read(ref.fd, 8))
    except (BlockingIOError, InterruptedError):
        return
    except OSError as e:
        log.die_perror(e, "Namespace watch timer read() error")
    if n < 8:
        log.warn("Namespace watch timer: short read(): %d", n)

    try:
        fd = os.open(c.netns_base, os.O_PATH | os.O_CLOEXEC,
                     dir_fd=ref.data)
    except PermissionError:         # expected for an existing procfs entry
        return
    except OSError:
        log.info("Namespace %s is gone, exiting", c.netns_base)
        log.passt_exit(0)
    os.close(fd)
