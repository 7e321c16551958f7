# SPDX-License-Identifier: GPL-2.0-or-later
"""Forwarding rules: what -t, -u, -T and -U ask for, as tables of rules.

Theory of operation
===================

A forwarding rule says: connections (or datagrams) of one protocol that
arrive on a range of ports, on one listening address (or on any address
of both families) and optionally one interface, are forwarded to the
other side, to the same ports shifted by a constant offset, and
optionally to a given target address.  Rules are kept in a forwarding
table, one table per initiating pif: ``c.fwd[PIF_HOST]`` holds what -t and
-u asked for (the host listens, the namespace or guest receives) and, in
pasta mode, ``c.fwd[PIF_SPLICE]`` what -T and -U asked for (the namespace
listens on its loopback, the host receives).  Rules in a table never
overlap, so a port number and an address select at most one rule.

The specification language of the options, parsed here into rules::

    SPEC   := "none" | [ADDR][%IFNAME]/PORTS | PORTS
    PORTS  := CHUNK[,CHUNK]...
    CHUNK  := "all" [":" TADDR]
            | "auto"
            | "~" RANGE                          (exclusion)
            | RANGE [":" TADDR "/" RANGE]        (target address and ports)
            | RANGE [":" TADDR]                  (target address)
            | RANGE [":" RANGE]                  (translated ports)
    RANGE  := PORT ["-" PORT]

Parsing takes two passes over the chunks.  The first collects the
exclusions into a map of ports and notes whether "auto" was given (which
makes every rule from this option a scanning rule: its ports are only
listened on while something listens on them on the other side).  The
second pass turns every included range, minus the exclusions, into rules.
If no range was included at all -- the spec is "all", "auto", exclusions
only, or a mix of these -- the rule covers every port except the
exclusions and the ephemeral range of the host, and is "weak": failing to
listen on some of its ports is no error.

Errors in a specification stop the program with a message quoting the
specification.  The parser is pure: it only touches the table it is
given, so the unit tests need no sockets.

A table also holds, per rule, one slot per port for the listening socket
opened for it (``FwdTable.rulesocks``), filled in by ``fwd.py``.
"""

import errno
import os
import socket

from pasta import log
from pasta.inany import (inany_any4, inany_any6, inany_from_v4,
                         inany_is_multicast, inany_is_unspecified,
                         inany_loopback4, inany_loopback6, inany_matches,
                         inany_ntop, inany_v4)

NUM_PORTS = 1 << 16

FWD_CAP_IPV4 = 1 << 0
FWD_CAP_IPV6 = 1 << 1
FWD_CAP_TCP = 1 << 2
FWD_CAP_UDP = 1 << 3
FWD_CAP_SCAN = 1 << 4
FWD_CAP_IFNAME = 1 << 5
FWD_CAP_ALL = (FWD_CAP_IPV4 | FWD_CAP_IPV6 | FWD_CAP_TCP | FWD_CAP_UDP |
               FWD_CAP_SCAN | FWD_CAP_IFNAME)

FWD_DUAL_STACK_ANY = 1 << 0     # any address of either family
FWD_WEAK = 1 << 1               # failing to listen on a port is no error
FWD_SCAN = 1 << 2               # listen only where the other side listens

FWD_RULE_BITS = 8
MAX_FWD_RULES = (1 << FWD_RULE_BITS) - 1
MAX_LISTEN_SOCKS = NUM_PORTS * 5

IFNAMSIZ = 16

PORT_RANGE_SYSCTL = "/proc/sys/net/ipv4/ip_local_port_range"

# Ephemeral port range, RFC 6335 until probed
fwd_ephemeral_min = (1 << 15) + (1 << 14)
fwd_ephemeral_max = NUM_PORTS - 1
_ephemeral_probed = False


def ipproto_name(proto):
    """Name of an IP protocol number, as used in messages."""
    return {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP",
            socket.IPPROTO_ICMP: "ICMP",
            socket.IPPROTO_ICMPV6: "ICMPv6"}.get(proto, "<unknown protocol>")


class FwdRule:
    """One forwarding rule (``struct fwd_rule``).

    ``addr`` is the listening address (16-byte inany; ``::`` together with
    ``FWD_DUAL_STACK_ANY`` means any address of both families), ``taddr``
    the target address (unspecified: decided by the NAT functions),
    ``ifname`` the listening interface ("" for any), ``first``..``last``
    the listening ports, ``to`` the target port of ``first`` (port ``n``
    goes to ``to + n - first``), ``proto`` the IP protocol number and
    ``flags`` a combination of ``FWD_*`` flags.
    """

    __slots__ = ("addr", "taddr", "ifname", "first", "last", "to", "proto",
                 "flags")

    def __init__(self, addr=inany_any6, taddr=inany_any6, ifname="",
                 first=0, last=0, to=0, proto=socket.IPPROTO_TCP, flags=0):
        self.addr = addr
        self.taddr = taddr
        self.ifname = ifname
        self.first = first
        self.last = last
        self.to = to
        self.proto = proto
        self.flags = flags

    def copy(self):
        return FwdRule(self.addr, self.taddr, self.ifname, self.first,
                       self.last, self.to, self.proto, self.flags)

    def _key(self):
        return (self.addr, self.taddr, self.ifname, self.first, self.last,
                self.to, self.proto, self.flags)

    def __eq__(self, other):
        return isinstance(other, FwdRule) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return "FwdRule(%s)" % fwd_rule_fmt(self)

    def tport(self, port):
        """Target port for listening port ``port`` of this rule."""
        return (self.to + port - self.first) & 0xffff


class FwdTable:
    """Forwarding rules of one initiating pif (``struct fwd_table``).

    ``caps`` are the ``FWD_CAP_*`` bits saying what rules may use,
    ``rules`` the list of rules, and ``rulesocks[i]`` a dict mapping each
    port of ``rules[i]`` that has a listening socket open to that
    ``socket.socket``.
    """

    def __init__(self, caps=FWD_CAP_ALL):
        self.caps = caps
        self.rules = []
        self.rulesocks = []

    @property
    def count(self):
        return len(self.rules)

    @property
    def sock_count(self):
        """Listening sockets the rules may need, one per port."""
        return sum(r.last - r.first + 1 for r in self.rules)


def fwd_probe_ephemeral():
    """Learn which ports the host hands out as ephemeral ones, so that
    "all" and exclusion-only specs leave them alone; keep the RFC 6335
    range if the sysctl cannot be read."""
    global fwd_ephemeral_min, fwd_ephemeral_max, _ephemeral_probed

    _ephemeral_probed = True
    try:
        with open(PORT_RANGE_SYSCTL, "rb") as f:
            line = f.readline()
    except OSError as e:
        log.warn_perror(e, "Unable to open %s", PORT_RANGE_SYSCTL)
        return

    fields = line.split()
    try:
        lo, hi = int(fields[0]), int(fields[1])
        if len(fields) != 2 or lo >= NUM_PORTS or hi >= NUM_PORTS:
            raise ValueError
    except (ValueError, IndexError):
        log.warn("Unable to parse %s", PORT_RANGE_SYSCTL)
        return

    fwd_ephemeral_min, fwd_ephemeral_max = lo, hi


def _port_map_ephemeral(pmap):
    for port in range(fwd_ephemeral_min, fwd_ephemeral_max + 1):
        pmap[port] = 1


def fwd_rule_addr(rule):
    """Address a rule matches, or None if it matches any address."""
    if rule.flags & FWD_DUAL_STACK_ANY:
        return None
    return rule.addr


def fwd_rule_fmt(rule):
    """A rule as text, for messages: ``TCP [addr]%if:first-last  =>
    taddr:to-tolast``, with notes for weak and scanning rules."""
    percent = "%" if rule.ifname else ""
    taddr = ""
    if not inany_is_unspecified(rule.taddr):
        taddr = inany_ntop(rule.taddr) + ":"
    addr = inany_ntop(fwd_rule_addr(rule))
    weak = " (best effort)" if rule.flags & FWD_WEAK else ""
    scan = " (auto-scan)" if rule.flags & FWD_SCAN else ""

    if rule.first == rule.last:
        return "%s [%s]%s%s:%d  =>  %s%d %s%s" % (
            ipproto_name(rule.proto), addr, percent, rule.ifname,
            rule.first, taddr, rule.to, weak, scan)
    tolast = rule.last - rule.first + rule.to
    return "%s [%s]%s%s:%d-%d  =>  %s%d-%d %s%s" % (
        ipproto_name(rule.proto), addr, percent, rule.ifname, rule.first,
        rule.last, taddr, rule.to, tolast, weak, scan)


def fwd_rules_dump(fn, rules, prefix="", suffix=""):
    """Print every rule through ``fn`` (e.g. ``log.info``)."""
    for rule in rules:
        fn("%s%s%s", prefix, fwd_rule_fmt(rule), suffix)


def _fwd_rule_conflicts(a, b):
    """Do two rules claim a common protocol, address and port?"""
    if a.proto != b.proto:
        return False
    if not inany_matches(fwd_rule_addr(a), fwd_rule_addr(b)):
        return False
    return not (a.last < b.first or b.last < a.first)


def fwd_rule_clear(fwd):
    """Remove all rules of a table (which must have no open sockets)."""
    if fwd is None:
        return
    fwd.rules.clear()
    fwd.rulesocks.clear()


def fwd_rule_del(fwd, rule):
    """Delete the rule equal to ``rule`` from a table without sockets.

    Returns 0, ``-errno.ENOENT`` if there is no such rule, or
    ``-errno.EINVAL`` if ``rule`` overlaps a different rule.
    """
    for i, old in enumerate(fwd.rules):
        if old == rule:
            break
        if _fwd_rule_conflicts(rule, old):
            log.warn("Specifier %s conflicts with rule %s, but doesn't "
                     "match it, can't delete", fwd_rule_fmt(rule),
                     fwd_rule_fmt(old))
            return -errno.EINVAL
    else:
        log.warn("Couldn't find forwarding rule to delete: %s",
                 fwd_rule_fmt(rule))
        return -errno.ENOENT

    del fwd.rules[i]
    del fwd.rulesocks[i]
    return 0


def fwd_rule_add(fwd, new):
    """Check a rule against the table's capabilities and other rules, and
    add a copy of it.

    Returns 0, or a negative errno value after a warning saying why not:
    ``-EINVAL`` for a rule that is malformed or needs a capability the
    table lacks, ``-EEXIST`` if it overlaps a rule in the table,
    ``-ENOSPC`` if the table is full.
    """
    allowed = FWD_WEAK | FWD_SCAN | FWD_DUAL_STACK_ANY
    num = new.last - new.first + 1

    if new.first > new.last:
        log.warn("Rule has invalid port range %d-%d", new.first, new.last)
        return -errno.EINVAL
    if not new.first:
        log.warn("Forwarding rule attempts to map from port 0")
        return -errno.EINVAL
    if not new.to or new.to + new.last - new.first >= NUM_PORTS:
        log.warn("Forwarding rule attempts to map to port 0")
        return -errno.EINVAL
    if new.last >= NUM_PORTS:
        log.warn("Rule has invalid port range %d-%d", new.first, new.last)
        return -errno.EINVAL
    if new.flags & ~allowed:
        log.warn("Rule has invalid flags 0x%x", new.flags & ~allowed)
        return -errno.EINVAL

    if new.flags & FWD_DUAL_STACK_ANY:
        if new.addr != inany_any6:
            log.warn("Dual stack rule has non-wildcard address %s",
                     inany_ntop(new.addr))
            return -errno.EINVAL
        if not fwd.caps & FWD_CAP_IPV4:
            log.warn("Dual stack forward, but IPv4 not enabled")
            return -errno.EINVAL
        if not fwd.caps & FWD_CAP_IPV6:
            log.warn("Dual stack forward, but IPv6 not enabled")
            return -errno.EINVAL
    else:
        if inany_v4(new.addr) is not None and not fwd.caps & FWD_CAP_IPV4:
            log.warn("IPv4 forward, but IPv4 not enabled")
            return -errno.EINVAL
        if inany_v4(new.addr) is None and not fwd.caps & FWD_CAP_IPV6:
            log.warn("IPv6 forward, but IPv6 not enabled")
            return -errno.EINVAL

    if new.proto == socket.IPPROTO_TCP:
        if not fwd.caps & FWD_CAP_TCP:
            log.warn("Can't add TCP forwarding rule, TCP not enabled")
            return -errno.EINVAL
    elif new.proto == socket.IPPROTO_UDP:
        if not fwd.caps & FWD_CAP_UDP:
            log.warn("Can't add UDP forwarding rule, UDP not enabled")
            return -errno.EINVAL
    else:
        log.warn("Unsupported protocol 0x%x (%s) for forwarding rule",
                 new.proto, ipproto_name(new.proto))
        return -errno.EINVAL

    if not inany_is_unspecified(new.taddr):
        fam = "IPv4" if inany_v4(new.taddr) is not None else "IPv6"
        if inany_is_multicast(new.taddr):
            log.warn("Multicast target address %s for forwarding rule",
                     inany_ntop(new.taddr))
            return -errno.EINVAL
        if new.flags & FWD_DUAL_STACK_ANY:
            log.warn("Dual stack forward to %s address %s unsupported",
                     fam, inany_ntop(new.taddr))
            log.warn("Did you mean %s/... instead?",
                     "0.0.0.0" if fam == "IPv4" else "[::]")
            return -errno.EINVAL
        if (inany_v4(new.addr) is None) != (inany_v4(new.taddr) is None):
            log.warn("Forward from %s (%s) to %s (%s) unsupported",
                     "IPv4" if inany_v4(new.addr) is not None else "IPv6",
                     inany_ntop(new.addr), fam, inany_ntop(new.taddr))
            return -errno.EINVAL

    for old in fwd.rules:
        if _fwd_rule_conflicts(new, old):
            log.warn("Forwarding configuration conflict: %s versus %s",
                     fwd_rule_fmt(new), fwd_rule_fmt(old))
            return -errno.EEXIST

    if len(fwd.rules) >= MAX_FWD_RULES:
        log.warn("Too many rules (maximum %d)", MAX_FWD_RULES)
        return -errno.ENOSPC
    if fwd.sock_count + num > MAX_LISTEN_SOCKS:
        log.warn("Rules require too many listening sockets (maximum %d)",
                 MAX_LISTEN_SOCKS)
        return -errno.ENOSPC

    fwd.rules.append(new.copy())
    fwd.rulesocks.append({})
    return 0


def _fwd_rule_range_except(fwd, delete, proto, addr, ifname, first, last,
                           exclude, taddr, tfirst, flags, spec):
    """Add (or delete) rules for ports ``first``..``last`` except those set
    in ``exclude``, one rule per contiguous run of ports."""
    rule = FwdRule(addr=addr if addr is not None else inany_any6,
                   taddr=taddr if taddr is not None else inany_any6,
                   ifname="", proto=proto, flags=flags)
    delta = tfirst - first

    if addr is None:
        rule.flags |= FWD_DUAL_STACK_ANY
    if ifname:
        if len(os.fsencode(ifname)) >= IFNAMSIZ:
            log.die("Invalid interface name: %s", ifname)
        rule.ifname = ifname

    base = first
    while base <= last:
        if exclude is not None and exclude[base]:
            base += 1
            continue

        end = base
        while end <= last and not (exclude is not None and exclude[end]):
            end += 1

        rule.first = base
        rule.last = end - 1
        rule.to = base + delta

        if delete:
            rc = fwd_rule_del(fwd, rule)
        else:
            rc = fwd_rule_add(fwd, rule)
        if rc < 0:
            log.die("Unable to %s rule %s (port specifier '%s')",
                    "delete" if delete else "add", fwd_rule_fmt(rule), spec)

        base = end


# Parsing primitives: each takes the text and a position, and returns
# (value, new position) on success or None, consuming nothing on failure.

_DIGITS = "0123456789"
_V4CHARS = "0123456789."
_V6CHARS = "0123456789aAbBcCdDeEfF:."
_IFSTOP = "/ \f\n\r\t\v"


def _lit(s, i, lit):
    return i + len(lit) if s.startswith(lit, i) else None


def _span(s, i, chars):
    j = i
    while j < len(s) and s[j] in chars:
        j += 1
    return j


def _parse_unsigned(s, i):
    j = _span(s, i, _DIGITS)
    if j == i:
        return None
    return int(s[i:j]), j


def parse_port_range(s, i):
    """``FIRST[-LAST]``, both below 65536, FIRST <= LAST: ``((first,
    last), pos)`` or None."""
    r = _parse_unsigned(s, i)
    if r is None:
        return None
    first, j = r
    last = first
    k = _lit(s, j, "-")
    if k is not None:
        r = _parse_unsigned(s, k)
        if r is None:
            return None
        last, j = r
    if last < first or last >= NUM_PORTS:
        return None
    return (first, last), j


def _parse_ip(s, i, family, chars):
    j = _lit(s, i, "[")
    bracket = j is not None
    if bracket:
        end = s.find("]", j)
        if end < 0:
            return None
    else:
        j = i
        end = _span(s, i, chars)
    try:
        packed = socket.inet_pton(family, s[j:end])
    except (OSError, ValueError):
        return None
    if bracket:
        end += 1
    return packed, end


def parse_inany(s, i):
    """An IPv6 or IPv4 address, optionally in brackets: ``(inany, pos)``
    or None."""
    r = _parse_ip(s, i, socket.AF_INET6, _V6CHARS)
    if r is not None:
        return r
    r = _parse_ip(s, i, socket.AF_INET, _V4CHARS)
    if r is not None:
        return inany_from_v4(r[0]), r[1]
    return None


def parse_ifspec(s, i):
    """An optional ``%IFNAME``: ``(name, pos)``, name "" when absent, or
    None for an empty or too long name."""
    j = _lit(s, i, "%")
    if j is None:
        return "", i
    end = j
    while end < len(s) and s[end] not in _IFSTOP:
        end += 1
    name = s[j:end]
    if not name or len(os.fsencode(name)) >= IFNAMSIZ:
        return None
    return name, end


CHUNK_ALL = 0
CHUNK_AUTO = 1
CHUNK_EXCLUDE = 2
CHUNK_INCLUDE = 3


def parse_port_chunk(s, i):
    """One comma-separated piece of a port specifier.

    Returns ``((kind, lrange, taddr, trange), pos)`` or None; ``lrange``
    and ``trange`` are ``(first, last)`` (None where the kind has none),
    ``taddr`` the target address (inany, unspecified if not given).
    """
    taddr = inany_any6

    j = _lit(s, i, "all")
    if j is not None:
        k = _lit(s, j, ":")
        r = parse_inany(s, k) if k is not None else None
        if r is not None:
            taddr, j = r
        return (CHUNK_ALL, None, taddr, None), j

    j = _lit(s, i, "auto")
    if j is not None:
        return (CHUNK_AUTO, None, taddr, None), j

    j = _lit(s, i, "~")
    if j is not None:
        r = parse_port_range(s, j)
        if r is None:
            return None
        return (CHUNK_EXCLUDE, r[0], taddr, None), r[1]

    r = parse_port_range(s, i)
    if r is None:
        return None
    lrange, j = r

    k = _lit(s, j, ":")
    if k is not None:
        a = parse_inany(s, k)
        if a is not None:
            m = _lit(s, a[1], "/")
            t = parse_port_range(s, m) if m is not None else None
            if t is not None:
                return (CHUNK_INCLUDE, lrange, a[0], t[0]), t[1]
            return (CHUNK_INCLUDE, lrange, a[0], lrange), a[1]
        t = parse_port_range(s, k)
        if t is not None:
            return (CHUNK_INCLUDE, lrange, taddr, t[0]), t[1]

    return (CHUNK_INCLUDE, lrange, taddr, lrange), j


def parse_addrifname(s, i):
    """``ADDR[%IFNAME]/``, ``[*][%IFNAME]/``: ``((addr, ifname), pos)``,
    addr None for any address, or None if the text does not start so."""
    a = parse_inany(s, i)
    if a is not None:
        f = parse_ifspec(s, a[1])
        if f is not None:
            j = _lit(s, f[1], "/")
            if j is not None:
                return (a[0], f[0]), j

    j = _lit(s, i, "*")
    if j is None:
        j = i
    f = parse_ifspec(s, j)
    if f is not None:
        k = _lit(s, f[1], "/")
        if k is not None:
            return (None, f[0]), k
    return None


def _bad_spec(spec):
    log.die("Invalid port specifier '%s'", spec)


def _fwd_rule_parse_ports(fwd, delete, proto, addr, ifname, spec):
    """Turn the PORTS part of a specification into rules (see the module
    documentation for the two passes)."""
    exclude = bytearray(NUM_PORTS)
    all_taddr = inany_any6
    exclude_only = True
    flags = 0

    chunks = []
    pos = 0
    while True:
        r = parse_port_chunk(spec, pos)
        if r is None:
            _bad_spec(spec)
        chunk, pos = r
        chunks.append(chunk)
        nxt = _lit(spec, pos, ",")
        if nxt is None:
            break
        pos = nxt
    if pos != len(spec):
        _bad_spec(spec)     # trailing garbage

    for kind, lrange, _taddr, _trange in chunks:
        if kind == CHUNK_AUTO:
            if not fwd.caps & FWD_CAP_SCAN:
                log.die("'auto' port forwarding is only allowed for pasta")
            flags |= FWD_SCAN
        elif kind == CHUNK_EXCLUDE:
            exclude[lrange[0]:lrange[1] + 1] = b"\1" * (
                lrange[1] - lrange[0] + 1)

    for kind, lrange, taddr, trange in chunks:
        if kind == CHUNK_ALL:
            all_taddr = taddr
        elif kind == CHUNK_INCLUDE:
            exclude_only = False
            if trange[1] - trange[0] != lrange[1] - lrange[0]:
                _bad_spec(spec)
            _fwd_rule_range_except(fwd, delete, proto, addr, ifname,
                                   lrange[0], lrange[1], exclude, taddr,
                                   trange[0], flags, spec)

    if exclude_only:
        if not _ephemeral_probed:
            fwd_probe_ephemeral()
        _port_map_ephemeral(exclude)
        _fwd_rule_range_except(fwd, delete, proto, addr, ifname,
                               1, NUM_PORTS - 1, exclude, all_taddr, 1,
                               flags | FWD_WEAK, spec)


def fwd_rule_parse(optname, delete, optarg, fwd):
    """Parse the argument of -t, -u (``fwd`` is ``c.fwd[PIF_HOST]``), -T or
    -U (``c.fwd[PIF_SPLICE]``) and add its rules to ``fwd``, or delete
    them if ``delete``.  Exits through ``log.die()`` on a bad
    specification, with a message quoting it."""
    if optname in ("t", "T"):
        proto = socket.IPPROTO_TCP
    elif optname in ("u", "U"):
        proto = socket.IPPROTO_UDP
    else:
        raise ValueError("bad forwarding option -%s" % optname)

    if optarg == "none":
        for rule in fwd.rules:
            if rule.proto == proto:
                log.die("-%s none conflicts with previous options", optname)
        return

    r = parse_addrifname(optarg, 0)
    if r is not None:
        (addr, ifname), pos = r
        if optname in ("T", "U"):
            log.die("Listening address not allowed for -%s %s", optname,
                    optarg)
        if ifname in (".", ".."):
            log.die("Invalid interface name: %s", ifname)
    else:
        addr, ifname, pos = None, "", 0
    ports = optarg[pos:]

    if optname in ("T", "U"):
        if not fwd.caps & FWD_CAP_IFNAME:
            log.warn("SO_BINDTODEVICE unavailable, forwarding only "
                     "127.0.0.1 and ::1 for '-%s %s'", optname, optarg)
            if fwd.caps & FWD_CAP_IPV4:
                _fwd_rule_parse_ports(fwd, delete, proto, inany_loopback4,
                                      "", ports)
            if fwd.caps & FWD_CAP_IPV6:
                _fwd_rule_parse_ports(fwd, delete, proto, inany_loopback6,
                                      "", ports)
            return
        ifname = "lo"

    # A single address family needs no dual stack socket
    if addr is None and not fwd.caps & FWD_CAP_IPV4:
        addr = inany_any6
    elif addr is None and not fwd.caps & FWD_CAP_IPV6:
        addr = inany_any4

    if ifname and not fwd.caps & FWD_CAP_IFNAME:
        log.die("Device binding for '-%s %s' unsupported (requires kernel "
                "5.7+)", optname, optarg)

    _fwd_rule_parse_ports(fwd, delete, proto, addr, ifname, ports)


def fwd_rule_init(c):
    """Create the forwarding tables of ``c``: ``c.fwd[PIF_HOST]`` (-t, -u)
    and, for pasta, ``c.fwd[PIF_SPLICE]`` (-T, -U), with their pending
    counterparts in ``c.fwd_pending``, and capabilities from the
    configuration parsed so far (IP versions, protocols, mode)."""
    from pasta.pif import PIF_HOST, PIF_SPLICE
    from pasta.passt import MODE_PASTA

    caps = 0
    if c.ifi4:
        caps |= FWD_CAP_IPV4
    if c.ifi6:
        caps |= FWD_CAP_IPV6
    if not c.no_tcp:
        caps |= FWD_CAP_TCP
    if not c.no_udp:
        caps |= FWD_CAP_UDP
    if c.mode == MODE_PASTA:
        caps |= FWD_CAP_SCAN
    if not c.no_bindtodevice:
        caps |= FWD_CAP_IFNAME

    c.fwd = {PIF_HOST: FwdTable(caps)}
    c.fwd_pending = {PIF_HOST: FwdTable(caps)}
    if c.mode == MODE_PASTA:
        c.fwd[PIF_SPLICE] = FwdTable(caps)
        c.fwd_pending[PIF_SPLICE] = FwdTable(caps)
