# SPDX-License-Identifier: GPL-2.0-or-later
"""Packet capture of the tap interface (``-p FILE``).

Every frame that crosses the tap interface, in both directions, is written
to a classic libpcap file (link type Ethernet, microsecond timestamps) that
``tcpdump -r`` and Wireshark read.  Frames are written as they are on the
wire towards the guest: without the virtio-net header that may precede
them on the tap device.  Frames whose checksum the kernel completes
(see ``tap.py``) are captured before it does so, and show a partial
checksum.  Write errors are reported at debug level and otherwise
ignored: capturing must never stop the traffic it records.
"""

import os
import struct
import time

from pasta import log

PCAP_MAGIC = 0xa1b2c3d4
PCAP_VERSION_MAJOR = 2
PCAP_VERSION_MINOR = 4
PCAP_SNAPLEN = 0x40000
LINKTYPE_ETHERNET = 1

_GLOBAL_HDR = struct.Struct("=IHHiIII")
_PKT_HDR = struct.Struct("=IIII")

pcap_fd = -1


def pcap_init(c):
    """Open the capture file named by ``-p`` and write its header."""
    global pcap_fd
    if not c.pcap:
        return
    try:
        fd = os.open(c.pcap, os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                     os.O_CLOEXEC, 0o600)
    except OSError as e:
        log.die_perror(e, "Couldn't open pcap file %s", c.pcap)
    hdr = _GLOBAL_HDR.pack(PCAP_MAGIC, PCAP_VERSION_MAJOR,
                           PCAP_VERSION_MINOR, 0, 0, PCAP_SNAPLEN,
                           LINKTYPE_ETHERNET)
    try:
        os.write(fd, hdr)
    except OSError as e:
        log.die_perror(e, "Cannot write PCAP header")
    pcap_fd = fd
    log.info("Saving packet capture to %s", c.pcap)


def _frame(bufs, length, now):
    usec = int(now * 1e6)
    hdr = _PKT_HDR.pack(usec // 1000000, usec % 1000000, length, length)
    try:
        os.writev(pcap_fd, [hdr] + bufs)
    except OSError as e:
        log.debug_perror(e, "Cannot log packet, length %d", length)


def pcap(frame):
    """Record one Ethernet frame (a bytes-like object)."""
    if pcap_fd < 0:
        return
    _frame([frame], len(frame), time.time())


def pcap_multiple(frames, skip=0):
    """Record several frames, each a list of buffers; the first ``skip``
    bytes of each frame's first buffer (a length or virtio-net header) are
    left out."""
    if pcap_fd < 0:
        return
    now = time.time()
    for bufs in frames:
        if skip:
            bufs = [memoryview(bufs[0])[skip:]] + list(bufs[1:])
        length = sum(len(b) for b in bufs)
        _frame(list(bufs), length, now)
