# SPDX-License-Identifier: GPL-2.0-or-later
"""The epoll instance of the main loop, and what each descriptor stands for.

The C implementation packs an "epoll reference" (the kind of descriptor, the
descriptor and a small payload such as a flow index) into the 64 bits that
epoll hands back with every event.  Python's ``select.epoll`` returns only
the descriptor, so here the reference is an ``EpollRef`` kept in a dict
keyed by descriptor, ``c.epoll_refs``; ``epoll_add()`` and ``epoll_del()``
keep the dict and the kernel's interest list in step, and the main loop in
``passt.py`` looks the reference up for every event and dispatches on its
``type``.
"""

import enum
import select


class EpollType(enum.IntEnum):
    """Kinds of descriptor in the main loop, in the C implementation's
    order, so that statistics and logs line up with it."""

    NONE = 0
    TCP = 1
    TCP_SPLICE = 2
    TCP_LISTEN = 3
    TCP_TIMER = 4
    UDP_LISTEN = 5
    UDP = 6
    PING = 7
    NSQUIT_INOTIFY = 8
    NSQUIT_TIMER = 9
    TAP_PASTA = 10
    TAP_PASST = 11
    TAP_LISTEN = 12
    VHOST_CMD = 13
    VHOST_KICK = 14
    REPAIR_LISTEN = 15
    REPAIR = 16
    NL_NEIGH = 17
    CONF_LISTEN = 18
    CONF = 19


EPOLL_TYPE_STR = {
    EpollType.NONE: "none",
    EpollType.TCP: "connected TCP socket",
    EpollType.TCP_SPLICE: "connected spliced TCP socket",
    EpollType.TCP_LISTEN: "listening TCP socket",
    EpollType.TCP_TIMER: "TCP timer",
    EpollType.UDP_LISTEN: "listening UDP socket",
    EpollType.UDP: "UDP flow socket",
    EpollType.PING: "ICMP/ICMPv6 ping socket",
    EpollType.NSQUIT_INOTIFY: "namespace inotify watch",
    EpollType.NSQUIT_TIMER: "namespace timer watch",
    EpollType.TAP_PASTA: "/dev/net/tun device",
    EpollType.TAP_PASST: "connected qemu socket",
    EpollType.TAP_LISTEN: "listening qemu socket",
    EpollType.VHOST_CMD: "vhost-user command socket",
    EpollType.VHOST_KICK: "vhost-user kick socket",
    EpollType.REPAIR_LISTEN: "TCP_REPAIR helper listening socket",
    EpollType.REPAIR: "TCP_REPAIR helper socket",
    EpollType.NL_NEIGH: "netlink neighbour notifier socket",
    EpollType.CONF_LISTEN: "configuration listening socket",
    EpollType.CONF: "configuration socket",
}


class EpollRef:
    """What a descriptor in the epoll set is for.

    ``type`` is an ``EpollType``, ``fd`` the descriptor.  The payload is
    one of: ``flow`` (a flow index), ``sidx`` (a flow side index, see
    ``flow.py``), ``listen`` (a forwarding rule reference for listening
    sockets, see ``fwd.py``), or ``data`` (anything else a handler needs).
    """

    __slots__ = ("type", "fd", "flow", "sidx", "listen", "data")

    def __init__(self, type, fd, flow=None, sidx=None, listen=None,
                 data=None):
        self.type = type
        self.fd = fd
        self.flow = flow
        self.sidx = sidx
        self.listen = listen
        self.data = data

    def __repr__(self):
        return f"EpollRef({self.type.name}, fd={self.fd})"


def epoll_add(c, events, ref):
    """Add ``ref.fd`` to the loop's epoll set with the given event mask.

    Raises ``OSError`` as ``epoll.register()`` does.
    """
    c.epoll.register(ref.fd, events)
    c.epoll_refs[ref.fd] = ref


def epoll_mod(c, events, ref):
    """Change the event mask of a descriptor already in the set, and its
    reference."""
    c.epoll.modify(ref.fd, events)
    c.epoll_refs[ref.fd] = ref


def epoll_del(c, fd):
    """Remove a descriptor from the set; a descriptor not in it, or closed
    already, is not an error."""
    if c.epoll_refs.pop(fd, None) is None:
        return
    try:
        c.epoll.unregister(fd)
    except (OSError, ValueError):
        pass


EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLHUP = select.EPOLLHUP
EPOLLERR = select.EPOLLERR
EPOLLET = select.EPOLLET
EPOLLONESHOT = select.EPOLLONESHOT
