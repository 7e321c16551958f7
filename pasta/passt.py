# SPDX-License-Identifier: GPL-2.0-or-later
"""Entry point, execution context and main loop of both commands.

One program, two modes, chosen by the name it is started as: ``pasta``
connects a network namespace through a tap device, ``passt`` connects a
virtual machine through a UNIX domain socket.  ``main()`` parses the
command line into the execution context (``Ctx``, the counterpart of the
C ``struct ctx``, with the same field names), sets up the namespace, the
tap interface and the listening sockets, goes to the background unless
told not to, and then runs one loop for the rest of its life:

- wait on the epoll set for at most ``TIMER_INTERVAL`` milliseconds;
- for every ready descriptor, look up its ``EpollRef`` and call the handler
  of its kind (tap device, TCP socket, UDP socket, timer, ...);
- then run the deferred and periodic work: closing flows marked for it,
  TCP timers, port scans for automatic forwarding, router advertisements.

The loop ends only through ``passt_exit()``: on SIGTERM, SIGINT or SIGQUIT,
when the command pasta spawned exits (with that command's status), or when
the namespace pasta was attached to is deleted.
"""

import errno
import ipaddress
import os
import resource
import select
import signal
import sys
import time
import traceback

from pasta import log
from pasta.epoll_ctl import (EPOLL_TYPE_STR, EPOLLIN, EpollRef, EpollType,
                             epoll_add)

MODE_PASST = 0
MODE_PASTA = 1
MODE_VU = 2

MAC_OUR_LAA = bytes.fromhex("9a559a559a55")
MAC_ZERO = bytes(6)
MAC_BROADCAST = b"\xff" * 6

TIMER_INTERVAL = 1000       # ms: the longest the loop sleeps
NUM_EPOLL_EVENTS = 8

IN4_ANY = ipaddress.IPv4Address(0)
IN6_ANY = ipaddress.IPv6Address(0)


class Ip4Ctx:
    """IPv4 configuration (``struct ip4_ctx``).

    Addresses are ``ipaddress.IPv4Address``; the unspecified address
    (0.0.0.0) stands for "not set".  ``addr`` .. ``our_tap_addr`` are seen
    from the tap side (the guest), ``dns_host`` and ``addr_out`` from the
    host side.
    """

    def __init__(self):
        self.addr = IN4_ANY            # address given to the guest
        self.addr_seen = IN4_ANY       # address the guest was seen using
        self.prefix_len = 0
        self.guest_gw = IN4_ANY        # default gateway the guest uses
        self.map_host_loopback = IN4_ANY
        self.map_guest_addr = IN4_ANY
        self.dns = []                  # DNS servers announced to the guest
        self.dns_match = IN4_ANY       # --dns-forward address
        self.our_tap_addr = IN4_ANY    # our source address towards the tap
        self.dns_host = IN4_ANY        # host-side resolver for forwarding
        self.addr_out = IN4_ANY        # -o: source address of host sockets
        self.ifname_out = ""           # --outbound-if4
        self.no_copy_routes = False
        self.no_copy_addrs = False
        self.addr_fixed = False        # -a given: do not learn addr_seen


class Ip6Ctx:
    """IPv6 configuration (``struct ip6_ctx``), as ``Ip4Ctx``."""

    def __init__(self):
        self.addr = IN6_ANY
        self.addr_seen = IN6_ANY
        self.addr_ll_seen = IN6_ANY
        self.guest_gw = IN6_ANY
        self.map_host_loopback = IN6_ANY
        self.map_guest_addr = IN6_ANY
        self.dns = []
        self.dns_match = IN6_ANY
        self.our_tap_ll = IN6_ANY      # our link-local address on the tap
        self.dns_host = IN6_ANY
        self.addr_out = IN6_ANY
        self.ifname_out = ""
        self.no_copy_routes = False
        self.no_copy_addrs = False
        self.addr_fixed = False


class Ctx:
    """Execution context (``struct ctx``): configuration and run-time
    state shared by all modules, with the C field names.

    Flags that the C code keeps as ``int`` are booleans here; descriptors
    are ``-1`` when not open.  Per-protocol state lives in ``tcp``, ``udp``
    (set up by their modules' ``*_init()``) and forwarding tables in
    ``fwd`` (see ``fwd.py``).
    """

    def __init__(self):
        self.mode = MODE_PASTA
        self.debug = False
        self.trace = False
        self.stats = 0
        self.quiet = False
        self.foreground = False
        self.nofile = 0
        self.sock_path = ""
        self.control_path = ""
        self.repair_path = ""
        self.pcap = ""
        self.pidfile = ""
        self.pidfile_fd = -1
        self.one_off = False

        self.pasta_netns_fd = -1
        self.pasta_userns_fd = None    # set when the namespace is entered
                                       # together with its user namespace
        self.no_netns_quit = False
        self.netns_base = ""
        self.netns_dir = ""

        self.epoll = None              # select.epoll of the main loop
        self.epoll_refs = {}           # fd -> EpollRef
        self.fd_tap_listen = -1
        self.fd_tap = -1
        self.fd_control_listen = -1
        self.fd_control = -1
        self.fd_repair_listen = -1
        self.fd_repair = -1
        self.our_tap_mac = MAC_OUR_LAA
        self.guest_mac = MAC_ZERO
        self.mtu = 0

        self.hash_secret = bytes(16)

        self.ifi4 = 0
        self.ip4 = Ip4Ctx()
        self.dns_search = []           # search domains, as str

        self.hostname = ""
        self.fqdn = ""

        self.ifi6 = 0
        self.ip6 = Ip6Ctx()

        self.pasta_ifn = ""
        self.pasta_ifi = 0
        self.pasta_conf_ns = False

        self.fwd = {}                  # pif -> forwarding table (fwd.py)
        self.fwd_pending = {}

        self.no_tcp = False
        self.tcp = None
        self.no_udp = False
        self.udp = None
        self.no_icmp = False

        self.no_dns = False
        self.no_dns_search = False
        self.no_dhcp_dns = False
        self.no_dhcp_dns_search = False
        self.no_dhcp = False
        self.no_dhcpv6 = False
        self.no_ndp = False
        self.no_ra = False
        self.no_splice = False
        self.splice_only = False
        self.host_lo_to_ns_lo = False
        self.freebind = False
        self.chroot_fallback = False

        self.low_wmem = False
        self.low_rmem = False
        self.no_bindtodevice = False
        self.no_ipv6 = False

        # State of this port that has no C field
        self.ns_sock = None            # util.NsSockHelper, once started
        self.tap_vnet_len = 0          # virtio-net header on tap frames
        self.tap_sock = None           # passt: the guest's socket object
        self.tap_listen_sock = None    # passt: listening socket object
        self.no_tap_offload = False    # --no-tap-offload
        self.pasta_child_pid = 0
        self.fd_signal = None          # (read, write) ends of signal pipe


passt_ctx = None


def random_init(c):
    """Draw the secret for hashing flows and initial sequence numbers."""
    c.hash_secret = os.urandom(16)


def post_handler(c, now):
    """Deferred and periodic work after each round of events."""
    from pasta import flow, fwd, ndp, tcp

    if not c.no_tcp:
        tcp.tcp_defer_handler(c, now)

    flow.flow_defer_handler(c, now)
    fwd.fwd_scan_ports_timer(c, now)

    if not c.no_ndp:
        ndp.ndp_timer(c, now)


def _handlers():
    """Map each EpollType to the function handling its events, as
    ``fn(c, ref, events, now)``."""
    from pasta import icmp, pasta, tap, tcp, tcp_splice, udp

    return {
        EpollType.TAP_PASTA:
            lambda c, r, e, n: tap.tap_handler_pasta(c, e, n),
        EpollType.TAP_PASST:
            lambda c, r, e, n: tap.tap_handler_passt(c, e, n),
        EpollType.TAP_LISTEN:
            lambda c, r, e, n: tap.tap_listen_handler(c, e),
        EpollType.NSQUIT_INOTIFY:
            lambda c, r, e, n: pasta.pasta_netns_quit_inotify_handler(
                c, r.fd),
        EpollType.NSQUIT_TIMER:
            lambda c, r, e, n: pasta.pasta_netns_quit_timer_handler(c, r),
        EpollType.TCP: tcp.tcp_sock_handler,
        EpollType.TCP_SPLICE: tcp_splice.tcp_splice_sock_handler,
        EpollType.TCP_LISTEN:
            lambda c, r, e, n: tcp.tcp_listen_handler(c, r, n),
        EpollType.TCP_TIMER:
            lambda c, r, e, n: tcp.tcp_timer_handler(c, r, n),
        EpollType.UDP_LISTEN: udp.udp_listen_sock_handler,
        EpollType.UDP: udp.udp_sock_handler,
        EpollType.PING:
            lambda c, r, e, n: icmp.icmp_sock_handler(c, r, n),
    }


def passt_worker(c, handlers, events):
    """Handle one batch of epoll events, then the deferred work."""
    now = time.monotonic()

    for fd, mask in events:
        ref = c.epoll_refs.get(fd)
        if ref is None:
            continue
        if log.log_trace:
            log.trace("%s: epoll event on %s %d (events: 0x%08x)",
                      "pasta" if c.mode == MODE_PASTA else "passt",
                      EPOLL_TYPE_STR.get(ref.type, "?"), fd, mask)
        handler = handlers.get(ref.type)
        if handler is not None:
            try:
                handler(c, ref, mask, now)
            except (log.PasstExit, KeyboardInterrupt):
                raise
            except Exception as e:
                # A bug of ours, triggered by one descriptor: say so and
                # keep serving the others
                _handler_failed(ref, e)
        elif ref.type == EpollType.NONE:
            signal_pipe_drain(fd)

    log.passt_exit_check()
    try:
        post_handler(c, now)
    except (log.PasstExit, KeyboardInterrupt):
        raise
    except Exception as e:
        _handler_failed(EpollRef(EpollType.NONE, -1), e)


def _handler_failed(ref, e):
    """Report an exception out of an event handler, rate-limited, with
    the traceback at debug level."""
    kind = EPOLL_TYPE_STR.get(ref.type, "?")
    if log.ratelimit("handler failed: " + kind):
        log.err("error handling event on %s %d: %s: %s", kind, ref.fd,
                type(e).__name__, e)
        if log.log_debug:
            log.debug("%s", "".join(traceback.format_exception(e)))


def exit_handler(signum, frame):
    """SIGTERM, SIGQUIT, SIGINT: leave through the normal exit path, from
    the main loop (see ``log.passt_exit_request()``)."""
    log.passt_exit_request(0)


def signal_pipe_init(c):
    """Make signals wake the main loop up: Python's C-level handler writes
    a byte to this pipe, which is in the epoll set, so that the loop sees
    the request of a signal handler without waiting for its timeout."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    c.fd_signal = (r, w)
    epoll_add(c, EPOLLIN, EpollRef(EpollType.NONE, r))


def signal_pipe_drain(fd):
    try:
        while os.read(fd, 256):
            pass
    except OSError:
        pass


def conf_mode(argv0):
    """Choose the mode from the name the program was started as: anything
    ending in ``pasta`` is pasta, anything else passt."""
    base = os.path.basename(argv0 or "")
    if base.endswith("pasta") or base in ("__main__.py", "-m"):
        return MODE_PASTA
    return MODE_PASST


def _raise_nofile(c):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        c.nofile = hard
    except (OSError, ValueError):
        c.nofile = soft


def _populate_std_fds():
    """Make sure descriptors 0, 1 and 2 exist, so nothing we open later
    lands on them by accident."""
    for fd in range(3):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def __daemon(c, devnull_fd):
    """Go to the background: the parent writes the PID file and exits 0,
    the child detaches from the terminal and session.  ``devnull_fd`` is
    /dev/null, opened before the sandbox hid the file system."""
    pid = os.fork()
    if pid:
        pidfile_write(c, pid)
        os._exit(0)

    os.setsid()
    for fd in range(3):
        os.dup2(devnull_fd, fd)


def pidfile_write(c, pid):
    """Write ``pid`` to the PID file opened by the configuration, if any."""
    if c.pidfile_fd < 0:
        return
    try:
        os.write(c.pidfile_fd, b"%d\n" % pid)
    except OSError as e:
        log.die_perror(e, "Failed to write PID file")


def _reset_signals():
    """Undo dispositions inherited from whatever started us: an ignored
    SIGPIPE would otherwise reach the spawned command."""
    for sig in (signal.SIGPIPE, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def main(argv=None):
    """Entry point of ``pasta`` and ``passt``; returns the exit status."""
    if argv is None:
        argv = sys.argv
    try:
        return _main(argv)
    except log.PasstExit as e:
        return e.code
    except KeyboardInterrupt:
        return 0


def _main(argv):
    global passt_ctx
    from pasta import (conf, dhcp, dhcpv6, flow, fwd, isolation, pasta,
                       pcap, tap, tcp, udp)

    _populate_std_fds()
    _reset_signals()

    c = Ctx()
    passt_ctx = c
    c.mode = conf_mode(argv[0])

    signal.signal(signal.SIGTERM, exit_handler)
    signal.signal(signal.SIGQUIT, exit_handler)
    signal.signal(signal.SIGINT, exit_handler)
    if c.mode == MODE_PASTA:
        signal.signal(signal.SIGCHLD, pasta.pasta_child_handler)

    c.epoll = select.epoll()
    signal_pipe_init(c)
    _raise_nofile(c)

    isolation.isolate_initial(c)

    conf.conf(c, argv)
    log.trace_init(c.trace)
    log.passt_exit_check()

    pasta.pasta_netns_quit_init(c)
    tap.tap_backend_init(c)
    random_init(c)

    flow.flow_init(c)
    fwd.fwd_scan_ports_init(c)

    if not c.no_udp:
        udp.udp_init(c)
    if not c.no_tcp:
        tcp.tcp_init(c)
    fwd.fwd_listen_init(c)
    log.passt_exit_check()

    if c.ifi4 and not c.no_dhcp:
        dhcp.dhcp_init(c)
    if c.ifi6 and not c.no_dhcpv6:
        dhcpv6.dhcpv6_init(c)

    pcap.pcap_init(c)
    fwd.fwd_neigh_table_init(c)

    devnull_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    if isolation.isolate_prefork(c):
        log.die("Failed to sandbox process, exiting")

    # Nothing may fork between here and __daemon(): in the background, the
    # process forked there becomes the first of a new PID namespace.
    if not c.foreground:
        __daemon(c, devnull_fd)
        log.log_to_background()
    else:
        pidfile_write(c, os.getpid())
    os.close(devnull_fd)

    if c.pidfile_fd >= 0:
        os.close(c.pidfile_fd)
        c.pidfile_fd = -1

    if c.pasta_child_pid:
        os.kill(c.pasta_child_pid, signal.SIGUSR1)
        log.log_to_background()

    isolation.isolate_postfork(c)
    log.passt_exit_check()

    handlers = _handlers()
    while True:
        try:
            events = c.epoll.poll(TIMER_INTERVAL / 1000, NUM_EPOLL_EVENTS)
        except InterruptedError:
            events = []
        except OSError as e:
            if e.errno != errno.EINTR:
                log.die_perror(e, "epoll_wait() failed in main loop")
            events = []
        passt_worker(c, handlers, events)
