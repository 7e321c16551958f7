# SPDX-License-Identifier: GPL-2.0-or-later
"""Packet interfaces ("pifs"): the places a flow's sides can be.

Every flow has two sides, each on one pif: ``PIF_HOST`` (ordinary sockets
in the namespace pasta runs in), ``PIF_TAP`` (the guest, reached through
the tap device or the qemu socket, where pasta builds every frame itself)
or ``PIF_SPLICE`` (sockets inside the guest's namespace, used for loopback
traffic that is spliced rather than translated).
"""

import enum
import socket

from pasta.inany import inany_is_linklocal6, sockaddr_from_inany


class Pif(enum.IntEnum):
    NONE = 0
    HOST = 1
    TAP = 2
    SPLICE = 3


PIF_NONE = Pif.NONE
PIF_HOST = Pif.HOST
PIF_TAP = Pif.TAP
PIF_SPLICE = Pif.SPLICE
PIF_NUM_TYPES = 4

_PIF_NAME = {PIF_NONE: "<none>", PIF_HOST: "HOST", PIF_TAP: "TAP",
             PIF_SPLICE: "SPLICE"}


def pif_name(pif):
    return _PIF_NAME.get(pif, "?")


def pif_is_socket(pif):
    return pif == PIF_HOST or pif == PIF_SPLICE


def pif_sockaddr(c, pif, addr, port):
    """``(family, address tuple)`` to reach ``addr`` (inany) and ``port``
    from pif ``pif``, with the scope of link-local IPv6 addresses set to
    the interface that pif uses."""
    assert pif_is_socket(pif)
    scope = 0
    if len(addr) == 16 and inany_is_linklocal6(addr):
        scope = c.ifi6 if pif == PIF_HOST else c.pasta_ifi
    family, sa = sockaddr_from_inany(addr, port, scope)
    return family, sa


AF_NAMES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
