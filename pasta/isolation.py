# SPDX-License-Identifier: GPL-2.0-or-later
"""Self-isolation: capabilities, user namespace, empty root, seccomp.

API summary:

    isolate_initial(c)          at start-up: drop capabilities never needed
    isolate_user(c, uid, gid, use_userns, userns)
                                set our IDs, join ``userns`` (a path) or,
                                with ``use_userns``, create a user namespace
    isolate_prefork(c) -> 0 or -errno
                                before going to the background: own mount,
                                IPC and UTS namespaces, an empty read-only
                                root, fewer capabilities
    isolate_postfork(c)         after that: no core dumps, seccomp filter
    mount(), umount2(), pivot_root()   thin libc wrappers raising OSError

Theory of operation
-------------------
The program needs privileges only for a few things, and mostly only at
start-up, so it gives them up in stages, each as soon as the next part of
start-up no longer needs what it drops:

1. ``isolate_initial()`` runs first.  Of the capabilities we may have been
   started with, only those some later step needs survive: binding low
   ports on the host, changing user and group, entering and configuring
   namespaces (``CAP_SYS_ADMIN``, ``CAP_NET_ADMIN``), ``chroot()`` for
   ``--chroot-fallback``, and, when started as root, ``CAP_SETFCAP`` and
   ``CAP_SYS_PTRACE``.  Keeping ``CAP_SETFCAP`` until the user namespace
   is created is what lets a process running as root map UID 0 of the new
   namespace to root outside ("0 0 1"): since Linux 5.12 the kernel
   allows that only if the creator held ``CAP_SETFCAP`` when it called
   ``unshare()``.  Upstream drops it too early, so with ``--runas 0`` its
   command ends up with unmapped IDs; here the command runs as root, with
   all capabilities inside its own namespaces.

2. ``isolate_user()`` runs once the options are known.  It drops
   supplementary groups, switches to the final GID and UID, and then joins
   the given user namespace or creates a new one; being the owner of that
   namespace gives us every capability in it, and we keep only those the
   rest of the run needs (see the function).  The ID maps of a new
   namespace are written by ``pasta.pasta_start_ns()`` (it knows whether
   to).  When the UID changes, every module of this package is imported
   first: Python imports lazily, and the new user may not be allowed to
   read the interpreter's library (``/root`` is private on many systems).
   Changing IDs also makes the kernel mark us non-dumpable, which would
   hand ``/proc/self`` (so our own ID maps) and our children's namespace
   files to root: we become dumpable again until ``isolate_postfork()``.

3. ``isolate_prefork()`` runs when set-up is done.  It moves to new IPC,
   UTS and mount namespaces (and a new PID namespace when going to the
   background, for passt always), builds an empty read-only tmpfs, and
   makes it our root with ``pivot_root()`` (or ``chroot()`` with
   ``--chroot-fallback``).  A few paths are bind-mounted into it because
   the processes we fork later still need them: ``util.ns_call()``
   children open ``/dev/net/tun`` in the namespace, daemonising opens
   ``/dev/null``, and ``/proc`` (read-only) carries the socket tables that
   port scanning reads, seen from the namespace a reader is in.
   Namespace descriptors are open already, so ``setns()`` keeps working.
   In pasta mode ``CAP_SYS_ADMIN`` (to enter the namespace),
   ``CAP_NET_BIND_SERVICE`` (low ports) and, unlike upstream,
   ``CAP_NET_ADMIN`` stay, so that children can still create a tap device
   or configure links in the namespace later; everything else goes, from
   the bounding and inheritable sets too.  ``/`` is made private rather
   than unbindable as upstream does, since the paths above are bound from
   it.

4. ``isolate_postfork()`` runs after daemonising: no core dumps, no new
   privileges, and a seccomp filter.  The filter is a deny list (see
   ``_SECCOMP_DENY``): calls we never need at run time fail with EPERM.
   The children ``util.ns_call()`` forks afterwards inherit it, which is
   fine: they need ``setns()``, sockets, ``open()`` and ``ioctl()``, none
   of which is denied.

Not done, compared to upstream:

- TODO: the seccomp filter is a deny list, not upstream's allow list of
  the few system calls it uses; an interpreter makes far more calls than
  the C program, and a missing one would kill us at an arbitrary point.
  Effect: a compromised process can still make calls we do not use.
- TODO: the seccomp filter is only installed on x86_64 (the only system
  call table written out here); elsewhere it is skipped with a debug
  message.  Effect: no filter on other architectures.
- TODO: ``/proc`` stays visible (read-only) in the empty root, see above.
  Effect: process and system information remains readable.
- TODO: descriptors inherited from the parent are not closed at start-up
  (upstream's ``isolate_fds()``).  Effect: leaked descriptors stay open.
"""

import ctypes
import ctypes.util
import errno
import importlib
import os
import pkgutil
import platform
import struct

import prctl

from pasta import log, util

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                    use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.syscall.restype = ctypes.c_long

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

SYS_pivot_root = 155            # x86_64; see pivot_root()

# Directory the empty root is mounted on (in our own mount namespace)
TMPDIR = "/tmp"

# Paths bound into the empty root, and whether read-only
_PREFORK_BINDS = (("/dev/null", False), ("/dev/net/tun", False),
                  ("/proc", True))


def _check(rc, what):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))
    return rc


def mount(source, target, fstype, flags, data=None):
    """mount(2); raises ``OSError``."""
    enc = (lambda s: None if s is None else os.fsencode(s))
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags,
                       enc(data)), "mount %s" % target)


def umount2(target, flags):
    """umount2(2); raises ``OSError``."""
    _check(_libc.umount2(os.fsencode(target), flags), "umount %s" % target)


def pivot_root(new_root, put_old):
    """pivot_root(2) (no libc wrapper); raises ``OSError``."""
    nr = SYS_pivot_root
    machine = platform.machine()
    if machine in ("aarch64", "riscv64", "loongarch64"):
        nr = 41
    elif machine != "x86_64":
        raise OSError(errno.ENOSYS, "pivot_root: unknown system call "
                      "number on %s" % machine)
    _check(_libc.syscall(ctypes.c_long(nr),
                         ctypes.c_char_p(os.fsencode(new_root)),
                         ctypes.c_char_p(os.fsencode(put_old))),
           "pivot_root")


# Capabilities

def _caps(*names):
    return [getattr(prctl, "CAP_" + n) for n in names]


def drop_caps_ep_except(keep):
    """Drop every capability not in ``keep`` (a list of prctl.CAP_*) from
    the effective and permitted sets; dies if that fails."""
    drop = [cap for cap in prctl.ALL_CAPS if cap not in keep]
    try:
        prctl.set_caps((drop, (prctl.CAP_EFFECTIVE, prctl.CAP_PERMITTED),
                        False))
    except OSError as e:
        log.die_perror(e, "Couldn't drop capabilities")


def clamp_caps():
    """Empty the bounding and inheritable sets, so that nothing we might
    run could gain capabilities.  Without CAP_SETPCAP (``--netns-only``
    as non-root) the bounding set stays as it is."""
    for cap in range(64):
        try:
            prctl.capbset_drop(cap)
        except (OSError, ValueError) as e:
            if isinstance(e, OSError) and \
               e.errno not in (errno.EINVAL, errno.EPERM):
                log.die_perror(e, "Couldn't drop cap %d from bounding set",
                               cap)
    try:
        prctl.set_caps((list(prctl.ALL_CAPS), prctl.CAP_INHERITABLE, False))
    except OSError as e:
        log.die_perror(e, "Couldn't drop inheritable capabilities")


def isolate_initial(c):
    """Drop the capabilities no later step needs (see the module
    docstring)."""
    keep = _caps("NET_BIND_SERVICE", "SETUID", "SETGID", "SYS_ADMIN",
                 "NET_ADMIN", "DAC_OVERRIDE", "SYS_CHROOT")
    if os.geteuid() == 0:
        keep += _caps("SETFCAP", "SYS_PTRACE")
    drop_caps_ep_except(keep)


def _preload():
    """Import every module of this package (and the stdlib modules they
    would import lazily) while we can still read them."""
    import pasta
    for mod in pkgutil.iter_modules(pasta.__path__):
        if mod.name == "__main__":
            continue
        try:
            importlib.import_module("pasta." + mod.name)
        except Exception as e:          # a broken module is its problem
            log.debug("preloading pasta.%s failed: %s", mod.name, e)
    for name in ("encodings.idna", "encodings.ascii", "encodings.latin_1",
                 "stringprep", "unicodedata"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def isolate_user(c, uid, gid, use_userns, userns):
    """Switch to ``uid``/``gid`` and enter the final user namespace.

    ``userns`` is a path to join (may be empty); otherwise, with
    ``use_userns``, a new user namespace is created.  Dies on failure.
    """
    from pasta.passt import MODE_PASTA

    if uid != os.geteuid() or gid != os.getegid():
        _preload()

    try:
        os.setgroups([])
    except PermissionError:
        pass
    except OSError as e:
        log.die_perror(e, "Can't drop supplementary groups")

    try:
        os.setgid(gid)
    except OSError as e:
        log.die_perror(e, "Can't set GID to %u", gid)
    try:
        os.setuid(uid)
    except OSError as e:
        log.die_perror(e, "Can't set UID to %u", uid)

    # Changing IDs made us non-dumpable, which hands /proc/self (and so
    # our ID maps) and the namespaces of our children to root: undo that
    # until isolate_postfork().
    try:
        prctl.set_dumpable(True)
    except OSError:
        pass

    if userns:
        try:
            ufd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            log.die_perror(e, "Couldn't open user namespace %s", userns)
        try:
            util.setns(ufd, util.CLONE_NEWUSER)
        except OSError as e:
            log.die_perror(e, "Couldn't enter user namespace %s", userns)
        finally:
            os.close(ufd)
    elif use_userns:
        try:
            util.unshare(util.CLONE_NEWUSER)
        except OSError as e:
            log.die_perror(e, "Couldn't create user namespace")

    # Being in a new user namespace gives us everything there; keep what
    # the rest of set-up needs: entering and configuring the namespace,
    # unsharing more in isolate_prefork(), binding low ports for spliced
    # connections, and joining another process's namespaces.
    keep = _caps("SYS_ADMIN")
    if c.chroot_fallback:
        keep += _caps("SYS_CHROOT")
    if c.mode == MODE_PASTA:
        keep += _caps("NET_ADMIN", "NET_BIND_SERVICE")
        if userns or not use_userns:
            keep += _caps("SYS_PTRACE")
    drop_caps_ep_except(keep)


# Before daemonising

def _empty_root():
    """Mount the empty tmpfs on TMPDIR, with the paths of
    ``_PREFORK_BINDS`` bound into it, and make it read-only."""
    mount("", TMPDIR, "tmpfs", MS_NODEV | MS_NOEXEC | MS_NOSUID,
          "size=4k,nr_inodes=16,mode=0755")

    for path, ro in _PREFORK_BINDS:
        if not os.path.exists(path):
            continue
        target = TMPDIR + path
        try:
            # In a user namespace without ID maps (passt), creating files
            # fails with EOVERFLOW: then nothing is bound, as nothing there
            # needs these paths.
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.isdir(path):
                os.mkdir(target)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
            mount(path, target, None, MS_BIND | (MS_REC if ro else 0))
            if ro:
                mount(None, target, None,
                      MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID |
                      MS_NODEV | MS_NOEXEC)
        except OSError as e:
            log.debug("can't make %s visible in the empty root: %s",
                      path, e.strerror)

    mount(None, TMPDIR, None,
          MS_REMOUNT | MS_RDONLY | MS_NODEV | MS_NOEXEC | MS_NOSUID)


def _move_root():
    """``chroot()`` into the current directory (``--chroot-fallback``)."""
    mount(TMPDIR, "/", None, MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def isolate_prefork(c):
    """Detach from the file system and from IPC and UTS namespaces, and
    drop the capabilities set-up needed.  Returns 0, or a negative errno
    after logging what failed (as upstream, so the caller may stop)."""
    from pasta.passt import MODE_PASTA

    flags = util.CLONE_NEWIPC | util.CLONE_NEWNS | util.CLONE_NEWUTS
    if not c.foreground or c.mode != MODE_PASTA:
        flags |= util.CLONE_NEWPID

    _preload()

    try:
        util.unshare(flags)
    except OSError as e:
        log.err_perror(e, "Failed to detach isolating namespaces")
        return -e.errno

    try:
        mount("", "/", "", MS_PRIVATE | MS_REC)
        _empty_root()
        os.chdir(TMPDIR)
    except OSError as e:
        log.err_perror(e, "Failed to mount empty tmpfs for sandboxing")
        return -e.errno

    try:
        pivot_root(".", ".")
        umount2(".", MNT_DETACH | UMOUNT_NOFOLLOW)
    except OSError as e:
        if not c.chroot_fallback:
            log.err_perror(e, "Failed to pivot_root() into empty tmpfs")
            return -e.errno
        log.info("Failed to pivot_root(), fallback to chroot()...")
        try:
            _move_root()
        except OSError as e2:
            log.err_perror(e2, "Failed to chroot() into empty tmpfs")
            return -e2.errno

    keep = []
    if c.mode == MODE_PASTA:
        keep = _caps("SYS_ADMIN", "NET_BIND_SERVICE", "NET_ADMIN")
    clamp_caps()
    drop_caps_ep_except(keep)
    return 0


# After daemonising

SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7fff0000
SECCOMP_RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xc000003e
X32_SYSCALL_BIT = 0x40000000
PR_SET_SECCOMP = 22

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_RET_K = 0x06

# System calls nothing needs once we run (x86_64 numbers): executing
# programs, mounts and file system handles, modules, kexec and reboot,
# tracing other processes, keyrings, BPF and perf, new namespaces, device
# nodes, and changing the system's identity or clock.
_SECCOMP_DENY = {
    "execve": 59, "execveat": 322, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "name_to_handle_at": 303, "open_by_handle_at": 304,
    "init_module": 175, "finit_module": 313, "delete_module": 176,
    "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
    "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179,
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "add_key": 248, "request_key": 249, "keyctl": 250,
    "unshare": 272, "mknod": 133, "mknodat": 259,
    "sethostname": 170, "setdomainname": 171, "settimeofday": 164,
    "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305,
    "iopl": 172, "ioperm": 173, "personality": 135, "syslog": 103,
    "uselib": 134, "vhangup": 153,
}


def _bpf(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_deny_program(numbers, arch=AUDIT_ARCH_X86_64):
    """A classic BPF seccomp program failing ``numbers`` with EPERM, and
    any call of another architecture or ABI (x32) too."""
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    nrs = sorted(set(numbers))
    n = len(nrs)
    prog = [
        _bpf(BPF_LD_W_ABS, 0, 0, 4),                  # arch
        _bpf(BPF_JEQ_K, 1, 0, arch),
        _bpf(BPF_RET_K, 0, 0, deny),
        _bpf(BPF_LD_W_ABS, 0, 0, 0),                  # nr
        _bpf(BPF_JGE_K, n, 0, X32_SYSCALL_BIT),       # to "deny" below
    ]
    for i, nr in enumerate(nrs):
        prog.append(_bpf(BPF_JEQ_K, n - i, 0, nr))    # to "deny"
    prog.append(_bpf(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append(_bpf(BPF_RET_K, 0, 0, deny))
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _seccomp_install(prog):
    buf = ctypes.create_string_buffer(b"".join(prog))
    fprog = _SockFprog(len(prog), ctypes.addressof(buf))
    _libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p,
                            ctypes.c_ulong, ctypes.c_ulong)
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                       ctypes.byref(fprog), 0, 0), "seccomp")


def isolate_postfork(c):
    """Disable core dumps, forbid gaining privileges, and install the
    seccomp filter; dies if the filter can't be installed."""
    try:
        prctl.set_dumpable(False)
    except OSError:
        pass

    if platform.machine() != "x86_64":
        log.debug("no seccomp filter for %s", platform.machine())
        return

    try:
        prctl.set_no_new_privs(True)
        _seccomp_install(seccomp_deny_program(_SECCOMP_DENY.values()))
    except OSError as e:
        log.die_perror(e, "Failed to apply seccomp filter")
