# SPDX-License-Identifier: GPL-2.0-or-later
"""ARP: answer the guest's address resolution requests for IPv4.

Theory of operation
-------------------

pasta has no link of its own to resolve addresses on: every IPv4 address
the guest may want to reach sits "behind" the tap interface, so every ARP
request the guest sends is answered with a reply, and the hardware
address in it is the one from the neighbour table (``fwd`` module) for
the requested address, which is normally our own MAC address
(``c.our_tap_mac``).  A few requests are left unanswered:

- anything that is not an Ethernet/IPv4 request (replies, other hardware
  or protocol types, odd address lengths);
- announcements, where the sender claims the address it asks for
  (RFC 5227, 2.3); probes, whose sender address is 0.0.0.0, are still
  answered;
- requests for the address assigned to the guest itself, so that the
  guest's duplicate address detection does not see a conflict.

Besides replying, this module sends an initial request for the guest's
own address when the tap interface comes up, so that the guest answers
and we learn its MAC address early, and announcements (gratuitous
requests, RFC 5227) of addresses whose hardware address changes.

Frames are built by the pure functions ``arp_frame()``, ``arp_reply()``
and ``arp_request_frame()``; the functions taking the context only
decide and send.
"""

from pasta import log
from pasta.ip import (ARP_PKT, ARPHRD_ETHER, ARPOP_REPLY, ARPOP_REQUEST,
                      ETH_ALEN, ETH_HDR, ETH_HLEN, ETH_P_ARP, ETH_P_IP,
                      in4addr_any)

MAC_BROADCAST = b"\xff" * 6
MAC_ZERO = bytes(6)

ARP_FRAME_LEN = ETH_HLEN + ARP_PKT.size         # 42 bytes


def arp_frame(eth_dst, eth_src, op, sha, sip, tha, tip):
    """An Ethernet frame carrying one Ethernet/IPv4 ARP message."""
    return (ETH_HDR.pack(eth_dst, eth_src, ETH_P_ARP) +
            ARP_PKT.pack(ARPHRD_ETHER, ETH_P_IP, ETH_ALEN, 4, op,
                         sha, sip, tha, tip))


def arp_parse(frame):
    """Unpack an ARP frame into a tuple ``(eth_src, hrd, pro, hln, pln,
    op, sha, sip, tha, tip)``, or None if the frame is too short."""
    if len(frame) < ARP_FRAME_LEN:
        return None
    eth_src = bytes(frame[6:12])
    return (eth_src,) + ARP_PKT.unpack_from(frame, ETH_HLEN)


def ignore_arp(guest_addr, msg):
    """True if the parsed ARP message ``msg`` (see ``arp_parse()``) is not
    to be answered; ``guest_addr`` is the guest's assigned address,
    packed."""
    _src, hrd, pro, hln, pln, op, _sha, sip, _tha, tip = msg

    if hrd != ARPHRD_ETHER or pro != ETH_P_IP or hln != ETH_ALEN or \
       pln != 4 or op != ARPOP_REQUEST:
        return True

    # Announcements claim the sender's own address; probes come from
    # 0.0.0.0 and are answered
    if sip != in4addr_any and sip == tip:
        return True

    # The guest's own address: let its duplicate address detection pass
    if tip == guest_addr:
        return True

    return False


def arp_reply(msg, our_mac, reply_mac):
    """Reply frame to the parsed ARP request ``msg``, sent from
    ``our_mac``, telling that ``reply_mac`` has the requested address."""
    eth_src, _hrd, _pro, _hln, _pln, _op, sha, sip, _tha, tip = msg
    return arp_frame(eth_src, our_mac, ARPOP_REPLY,
                     reply_mac, tip, sha, sip)


def _neigh_mac(c, addr4):
    """Hardware address to give out for IPv4 address ``addr4`` (packed):
    the neighbour table's entry if the forwarding module has one, else
    our own MAC address."""
    try:
        from pasta import fwd
        get = fwd.fwd_neigh_mac_get
    except (ImportError, AttributeError):
        return c.our_tap_mac

    from pasta.inany import inany_from_v4
    mac = get(c, inany_from_v4(addr4))
    if mac is None or len(mac) != ETH_ALEN:
        return c.our_tap_mac
    return bytes(mac)


def arp(c, frame):
    """Answer the ARP request in Ethernet frame ``frame`` if it should be.

    Returns 1 if the frame was an ARP message (answered or ignored), -1 if
    it was too short to be one.
    """
    from pasta import tap

    msg = arp_parse(frame)
    if msg is None:
        return -1

    if ignore_arp(c.ip4.addr.packed, msg):
        return 1

    frame = arp_reply(msg, c.our_tap_mac, _neigh_mac(c, msg[9]))
    tap.tap_send_single(c, frame)
    return 1


def arp_request_frame(our_mac, our_addr, target_addr):
    """Broadcast request from ``our_mac``/``our_addr`` for
    ``target_addr``."""
    return arp_frame(MAC_BROADCAST, our_mac, ARPOP_REQUEST,
                     our_mac, our_addr, MAC_BROADCAST, target_addr)


def arp_send_init_req(c):
    """Ask for the guest's address, so that its answer tells us its MAC
    address."""
    from pasta import tap

    frame = arp_request_frame(c.our_tap_mac, c.ip4.our_tap_addr.packed,
                              c.ip4.addr.packed)
    log.debug("Sending initial ARP request for guest MAC address")
    tap.tap_send_single(c, frame)


def arp_announce_frame(ip4, mac):
    """Announcement (RFC 5227, 2.3) that ``mac`` owns ``ip4`` (packed):
    a broadcast request whose sender and target addresses are both
    ``ip4``, with a zero target hardware address."""
    return arp_frame(MAC_BROADCAST, mac, ARPOP_REQUEST,
                     mac, ip4, MAC_ZERO, ip4)


def arp_announce(c, ip4, mac):
    """Announce to the guest that ``mac`` owns the IPv4 address ``ip4``
    (packed 4 bytes, or an ``IPv4Address``), if the tap interface can
    send."""
    from pasta import tap

    if not tap.tap_is_ready(c):
        return

    ip4 = bytes(ip4.packed if hasattr(ip4, "packed") else ip4)
    log.debug("ARP announcement for %s / %s",
              ".".join(str(b) for b in ip4),
              ":".join("%02x" % b for b in mac))
    tap.tap_send_single(c, arp_announce_frame(ip4, bytes(mac)))
