# SPDX-License-Identifier: GPL-2.0-or-later
"""passt mode: a virtual machine's frames over a UNIX domain socket.

A small stand-in for qemu connects to the socket and speaks its "stream"
protocol (each frame preceded by its length, 32 bits, big-endian); passt
runs in the bed's host namespace, as pasta does."""

import os
import socket
import struct
import sys
import time

import pytest

from bed import needs_root

pytestmark = needs_root

VM_MAC = bytes.fromhex("525400123456")
BCAST = b"\xff" * 6


def passt_cmd(bed, *args):
    """Our passt: the same program as pasta, started under the name
    passt."""
    code = "import sys; from pasta.passt import main; " \
           "sys.exit(main(['passt'] + sys.argv[1:]))"
    return ["ip", "netns", "exec", bed.host, sys.executable, "-c", code] + \
        list(args)


class Vm:
    """The guest's end of the qemu socket."""

    def __init__(self, path, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.s.settimeout(5)
        self.buf = b""

    def send(self, frame):
        self.s.sendall(struct.pack("!I", len(frame)) + frame)

    def recv(self, want, timeout=5.0):
        """The first frame for which ``want(frame)`` is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while len(self.buf) >= 4:
                n = struct.unpack("!I", self.buf[:4])[0]
                if len(self.buf) < 4 + n:
                    break
                frame, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                if want(frame):
                    return frame
            try:
                data = self.s.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            self.buf += data
        return None


def arp_request(target, sender=b"\0\0\0\0"):
    return (BCAST + VM_MAC + b"\x08\x06" +
            struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) +
            VM_MAC + sender + bytes(6) + socket.inet_aton(target))


def dhcp_discover():
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0,
                        0x12345678, 0, 0x8000, bytes(4), bytes(4),
                        bytes(4), bytes(4), VM_MAC, b"", b"")
    options = b"\x63\x82\x53\x63" + b"\x35\x01\x01" + \
        b"\x37\x03\x01\x03\x06" + b"\xff"
    payload = bootp + options
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64,
                     17, 0, bytes(4), b"\xff" * 4)
    return BCAST + VM_MAC + b"\x08\x00" + ip + udp


@pytest.fixture
def passt(bed):
    path = os.path.join(bed.tmp, "passt.socket")
    proc = bed.popen(bed.host, passt_cmd(bed, "-f", "-q", "-s", path),
                     stdout=open(os.path.join(bed.tmp, "passt.out"), "w"),
                     stderr=subprocess_stdout())
    vm = Vm(path)
    yield proc, vm, path
    vm.s.close()


def subprocess_stdout():
    import subprocess
    return subprocess.STDOUT


def test_guest_resolves_gateway_over_the_socket(passt):
    _proc, vm, _path = passt
    vm.send(arp_request("198.51.100.1", socket.inet_aton("198.51.100.2")))
    reply = vm.recv(lambda f: f[12:14] == b"\x08\x06" and f[21] == 2)
    assert reply is not None
    assert reply[:6] == VM_MAC
    assert reply[22:28] == bytes.fromhex("9a559a559a55")
    assert socket.inet_ntoa(reply[28:32]) == "198.51.100.1"


def test_guest_gets_the_host_address_from_dhcp(passt):
    _proc, vm, _path = passt
    vm.send(dhcp_discover())
    offer = vm.recv(lambda f: f[12:14] == b"\x08\x00" and f[23] == 17 and
                    f[36:38] == b"\x00\x44")
    assert offer is not None
    bootp = offer[42:]
    assert socket.inet_ntoa(bootp[16:20]) == "198.51.100.2"   # yiaddr
    options = bootp[240:]
    assert b"\x35\x01\x02" in options                          # OFFER
    assert b"\x03\x04" + socket.inet_aton("198.51.100.1") in options


def test_a_second_guest_is_turned_away_and_the_first_keeps_working(passt):
    _proc, vm, path = passt
    # passt greets an accepted guest with an ARP request: wait for it, so
    # the second connection does not find the (one place) backlog full
    assert vm.recv(lambda f: f[12:14] == b"\x08\x06") is not None
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.settimeout(5)
    other.connect(path)
    assert other.recv(10) == b""            # closed at once
    other.close()
    vm.send(arp_request("198.51.100.1", socket.inet_aton("198.51.100.2")))
    assert vm.recv(lambda f: f[12:14] == b"\x08\x06") is not None


def test_a_bad_frame_length_resets_only_the_connection(passt):
    proc, vm, path = passt
    vm.s.sendall(struct.pack("!I", 3) + b"abc")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and vm.s.recv(65536):
        pass                                # frames sent before the reset
    assert vm.s.recv(1) == b""              # closed by passt
    assert proc.poll() is None
    vm2 = Vm(path)
    vm2.send(arp_request("198.51.100.1", socket.inet_aton("198.51.100.2")))
    assert vm2.recv(lambda f: f[12:14] == b"\x08\x06") is not None


def test_one_off_exits_when_the_guest_leaves(bed):
    path = os.path.join(bed.tmp, "passt1.socket")
    proc = bed.popen(bed.host, passt_cmd(bed, "-f", "-q", "-1", "-s", path))
    vm = Vm(path)
    vm.s.close()
    assert proc.wait(timeout=10) == 0
