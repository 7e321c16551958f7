# SPDX-License-Identifier: GPL-2.0-or-later
"""Command line, configuration checks and defaults of pasta and passt.

How it works
------------

``conf(c, argv)`` turns the command line into the fields of the execution
context ``c`` (a ``passt.Ctx``) in two phases:

1. ``conf_parse(c, argv)`` reads the options and nothing else.  It walks
   ``argv`` with a small re-implementation of glibc's ``getopt_long()``, as
   upstream uses it: short options may be grouped (``-df``) and take their
   argument attached or as the next word (``-m1500``, ``-m 1500``); long
   options take ``--name=value`` or ``--name value`` and may be shortened
   to any prefix that names one option only; parsing stops at ``--`` or at
   the first word that is not an option, which for pasta starts the
   command to run (or is the PID of a process whose namespace to join).
   Every option is checked as it is read, later options overriding earlier
   ones, and the checks that need all of them (conflicts such as
   ``--splice-only`` with ``--no-splice``) run at the end.  A mistake ends
   the process with one line naming the option, and status 1; a word that
   is not an option at all also prints the usage text, as upstream does.
   This phase touches neither the network nor any namespace (it only looks
   up interface names given with ``-i`` and ``--outbound-if4/6``), so it
   can be tested on its own; what it learnt and ``Ctx`` has no field for
   is returned in a ``ConfState``.

2. The rest of ``conf()`` looks at the host: it chooses the user to run as
   (``conf_ugid()``), sets up logging, finds the template interface and
   its addresses and default gateway through netlink (``conf_ip4()``,
   ``conf_ip6()``), falls back to link-local "local mode" for an IP version
   the host has no usable interface for, reads the forwarding options
   (``-t``, ``-u``, ``-T``, ``-U``) now that the enabled IP versions are
   known, opens the files asked for, joins or creates the target namespace
   (``pasta.pasta_open_ns()`` / ``pasta.pasta_start_ns()``), reads
   ``/etc/resolv.conf`` for what was not given (``get_dns()``), applies the
   defaults (``auto`` forwarding for pasta) and prints a summary
   (``conf_print()``).

Options of upstream's whose machinery this port does not have (vhost-user,
migration, passt-repair, the pesto configuration socket) are recognised
and refused with a message saying so, rather than ignored.
"""

import grp
import ipaddress
import os
import pwd
import socket
import string
import sys

from pasta import VERSION, log, util
from pasta.passt import MAC_OUR_LAA, MODE_PASTA
from pasta.pif import PIF_HOST, PIF_NUM_TYPES, PIF_SPLICE, pif_name

NETNS_RUN_DIR = "/run/netns"

IP4_LL_GUEST_ADDR = ipaddress.IPv4Address("169.254.2.1")
IP4_LL_GUEST_GW = ipaddress.IPv4Address("169.254.2.2")
IP4_LL_PREFIX_LEN = 16
IP6_LL_GUEST_GW = ipaddress.IPv6Address("fe80::1")

IN4_ANY = ipaddress.IPv4Address(0)
IN6_ANY = ipaddress.IPv6Address(0)
IN4_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

pasta_default_ifn = "tap0"

MAXNS = 3                   # resolvers kept per IP version
MAXDNSRCH = 6               # search domains kept
NS_MAXDNAME = 1025          # room for one search domain, with terminator
PASST_MAXDNAME = 254        # room for a host name or FQDN, with terminator
IFNAMSIZ = 16
PATH_MAX = 4096
UNIX_PATH_MAX = 108
INT_MAX = 2 ** 31 - 1
ULONG_MAX = 2 ** 64 - 1

ETH_HLEN = 14
L2_MAX_LEN = 65535          # largest frame on the tap device or socket
IP_MAX_MTU = 65535
IPV4_MIN_MTU = 68
IPV6_MIN_MTU = 1280

LOG_UPTO_DEBUG = log.LOG_DEBUG
LOG_UPTO_WARNING = log.LOG_WARNING
LOG_UPTO_INFO = log.LOG_INFO


# Parsing helpers: the same acceptance rules as the C library calls
# upstream relies on (strtoul(), strtol(), inet_pton()).

def _strtoul(s, base):
    """Read an unsigned number at the start of ``s`` as C's strtoul().

    Leading blanks and a sign are accepted (a minus wraps around, as in C),
    base 0 picks hexadecimal for ``0x`` and octal for a leading ``0``.
    Return ``(value, rest)``, or None if there are no digits or the value
    does not fit in 64 bits.
    """
    i, n = 0, len(s)
    while i < n and s[i] in " \t\n\v\f\r":
        i += 1
    neg = False
    if i < n and s[i] in "+-":
        neg = s[i] == "-"
        i += 1

    if base in (0, 16) and s[i:i + 2].lower() == "0x" and \
       s[i + 2:i + 3] and s[i + 2] in string.hexdigits:
        i += 2
        base = 16
    elif base == 0:
        base = 8 if s[i:i + 1] == "0" else 10

    digits = string.digits[:base] if base <= 10 else \
        string.digits + string.ascii_lowercase[:base - 10]
    j = i
    while i < n and s[i].lower() in digits:
        i += 1
    if i == j:
        return None

    digits = s[j:i].lstrip("0")
    if len(digits) > 64:                # past 64 bits in any base
        return None
    val = int(digits or "0", base)
    if val > ULONG_MAX:
        return None
    if neg:
        val = (-val) & ULONG_MAX
    return val, s[i:]


def _parse_unsigned_all(s, base):
    """The whole of ``s`` as an unsigned number, or None."""
    r = _strtoul(s, base)
    if r is None or r[1]:
        return None
    return r[0]


def _strtol(s):
    """C's strtol(s, &end, 0): ``(value, rest)``, or ``(0, s)`` without
    digits; out-of-range values saturate as in C."""
    t = s.lstrip(" \t\n\v\f\r")
    neg = t[:1] == "-"
    body = t[1:] if t[:1] in ("+", "-") else t
    r = None if body[:1] in ("+", "-") else _strtoul(body, 0)
    if r is None:
        return 0, s
    val, rest = r
    if neg:
        return max(-val, -2 ** 63), rest
    return min(val, 2 ** 63 - 1), rest


def _pton4(s):
    """IPv4 address in dotted-quad form only, as inet_pton(), or None."""
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, s))
    except (OSError, ValueError):
        return None


def _pton6(s):
    """IPv6 address as inet_pton() reads it (no scope), or None."""
    try:
        return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, s))
    except (OSError, ValueError):
        return None


def _in6_is_v4mapped(a6):
    """Is ``a6`` of the form ::ffff:a.b.c.d?"""
    return a6.packed[:12] == bytes(10) + b"\xff\xff"


def _in6_is_v4compat(a6):
    """Is ``a6`` an IPv4-compatible address (::a.b.c.d, not :: or ::1)?"""
    return a6.packed[:12] == bytes(12) and int(a6) > 1


def _ip4_class_prefix_len(a4):
    """Prefix length of the class an IPv4 address belongs to (A, B or C),
    32 for anything else."""
    first = a4.packed[0]
    if first < 128:
        return 8
    if first < 192:
        return 16
    if first < 224:
        return 24
    return 32


def _parse_ip_prefix(s):
    """An address at the start of ``s``, optionally in brackets, as upstream
    parses the argument of ``-a``: ``(ip, parse_af, rest)`` or None.
    ``parse_af`` is the form the address was written in."""
    for af, chars, maxlen in ((socket.AF_INET6, string.hexdigits + ":.", 46),
                              (socket.AF_INET, string.digits + ".", 16)):
        p = s
        bracket = p.startswith("[")
        if bracket:
            p = p[1:]
            end = p.find("]")
            length = end if end >= 0 else len(p)
        else:
            length = 0
            while length < len(p) and p[length] in chars:
                length += 1
        if length >= maxlen:
            continue
        text, p = p[:length], p[length:]
        ip = _pton6(text) if af == socket.AF_INET6 else _pton4(text)
        if ip is None:
            continue
        if bracket:
            if not p.startswith("]"):
                continue
            p = p[1:]
        return ip, af, p
    return None


def eth_ntop(mac):
    """A MAC address as text, ``9a:55:9a:55:9a:55``."""
    return ":".join("%02x" % b for b in bytes(mac))


def parse_mac(s):
    """Six colon-separated pairs of hex digits as 6 bytes; dies if not."""
    parts = s.split(":")
    if len(s) != 17 or len(parts) != 6 or \
       not all(len(x) == 2 and all(ch in string.hexdigits for ch in x)
               for x in parts):
        log.die("Invalid MAC address: %s", s)
    return bytes(int(x, 16) for x in parts)


# getopt_long()

NO_ARG = 0
REQ_ARG = 1


class GetoptError(Exception):
    """A word of the command line getopt_long() would complain about; the
    message is glibc's, without the program name."""


class Getopt:
    """Iterate over the options of ``argv`` as glibc's getopt_long() with
    an option string starting with ``+``: no permutation, so the first
    non-option word (or ``--``) ends the options and ``optind`` is left at
    the first word that is not an option.

    ``longopts`` is a list of ``(name, has_arg, key)``; the value handed
    back for a long option is its ``key``, for a short one the letter.  Two
    long options that share a prefix are ambiguous only when they differ
    in ``key`` or ``has_arg``, as in glibc, so aliases do not clash.

    ``next()`` returns ``(key, optarg, spelled)``, where ``spelled`` names
    the option as ``-x`` or ``--full-name``, or None at the end.
    """

    def __init__(self, argv, shortopts, longopts):
        self.argv = list(argv)
        self.optind = 1
        self.longopts = longopts
        self.short = {}
        spec = shortopts.lstrip("+-:")
        i = 0
        while i < len(spec):
            ch = spec[i]
            has_arg = spec[i + 1:i + 2] == ":"
            self.short[ch] = has_arg
            i += 2 if has_arg else 1
        self._cluster = ""

    def __iter__(self):
        """Every option left, as ``next()`` returns them."""
        while True:
            r = self.next()
            if r is None:
                return
            yield r

    def next(self):
        """The next option, or None once the options end."""
        if self._cluster:
            return self._short()

        if self.optind >= len(self.argv):
            return None
        arg = self.argv[self.optind]
        if arg == "--":
            self.optind += 1
            return None
        if not arg.startswith("-") or arg == "-":
            return None

        self.optind += 1
        if arg.startswith("--"):
            return self._long(arg[2:])
        self._cluster = arg[1:]
        return self._short()

    def _short(self):
        """The next letter of a group of short options."""
        ch, rest = self._cluster[0], self._cluster[1:]
        self._cluster = ""

        if ch not in self.short:
            raise GetoptError("invalid option -- '%s'" % ch)

        if not self.short[ch]:
            self._cluster = rest
            return ch, None, "-" + ch

        if rest:
            return ch, rest, "-" + ch
        if self.optind < len(self.argv):
            self.optind += 1
            return ch, self.argv[self.optind - 1], "-" + ch
        raise GetoptError("option requires an argument -- '%s'" % ch)

    def _long(self, body):
        """A long option, ``body`` being what follows ``--``."""
        name, eq, value = body.partition("=")

        found = None
        for opt in self.longopts:
            if opt[0] == name:
                found = opt
                break
        if found is None:
            cands = [o for o in self.longopts if o[0].startswith(name)]
            if not cands:
                raise GetoptError("unrecognized option '--%s'" % body)
            found = cands[0]
            if any((o[1], o[2]) != (found[1], found[2]) for o in cands):
                raise GetoptError(
                    "option '--%s' is ambiguous; possibilities:%s" %
                    (name, "".join(" '--%s'" % o[0] for o in cands)))

        long_name, has_arg, key = found
        if has_arg == NO_ARG:
            if eq:
                raise GetoptError("option '--%s' doesn't allow an argument"
                                  % long_name)
            return key, None, "--" + long_name

        if eq:
            return key, value, "--" + long_name
        if self.optind < len(self.argv):
            self.optind += 1
            return key, self.argv[self.optind - 1], "--" + long_name
        raise GetoptError("option '--%s' requires an argument" % long_name)


# The option table: long name, argument, and the key the parser switches
# on (the short letter where there is one).  Flags that only set a field
# of the context carry ("flag", field).

OPTSTRING = "+dqfel:hs:c:F:I:p:P:m:a:n:M:g:i:o:D:S:H:461t:u:T:U:"

OPTIONS = [
    ("debug", NO_ARG, "d"),
    ("quiet", NO_ARG, "q"),
    ("foreground", NO_ARG, "f"),
    ("stderr", NO_ARG, "e"),
    ("log-file", REQ_ARG, "l"),
    ("help", NO_ARG, "h"),
    ("socket", REQ_ARG, "s"),
    ("fd", REQ_ARG, "F"),
    ("ns-ifname", REQ_ARG, "I"),
    ("pcap", REQ_ARG, "p"),
    ("pid", REQ_ARG, "P"),
    ("mtu", REQ_ARG, "m"),
    ("address", REQ_ARG, "a"),
    ("netmask", REQ_ARG, "n"),
    ("mac-addr", REQ_ARG, "M"),
    ("gateway", REQ_ARG, "g"),
    ("interface", REQ_ARG, "i"),
    ("outbound", REQ_ARG, "o"),
    ("dns", REQ_ARG, "D"),
    ("search", REQ_ARG, "S"),
    ("hostname", REQ_ARG, "H"),
    ("no-tcp", NO_ARG, ("flag", "no_tcp")),
    ("no-udp", NO_ARG, ("flag", "no_udp")),
    ("no-icmp", NO_ARG, ("flag", "no_icmp")),
    ("no-dhcp", NO_ARG, ("flag", "no_dhcp")),
    ("no-dhcpv6", NO_ARG, ("flag", "no_dhcpv6")),
    ("no-ndp", NO_ARG, ("flag", "no_ndp")),
    ("no-ra", NO_ARG, ("flag", "no_ra")),
    ("no-splice", NO_ARG, ("flag", "no_splice")),
    ("splice-only", NO_ARG, "splice-only"),
    ("no-tap", NO_ARG, "no-tap"),
    ("freebind", NO_ARG, ("flag", "freebind")),
    ("no-map-gw", NO_ARG, "no-map-gw"),
    ("ipv4-only", NO_ARG, "4"),
    ("ipv6-only", NO_ARG, "6"),
    ("one-off", NO_ARG, "1"),
    ("tcp-ports", REQ_ARG, "t"),
    ("udp-ports", REQ_ARG, "u"),
    ("tcp-ns", REQ_ARG, "T"),
    ("udp-ns", REQ_ARG, "U"),
    ("userns", REQ_ARG, "userns"),
    ("netns", REQ_ARG, "netns"),
    ("ns-mac-addr", REQ_ARG, "ns-mac-addr"),
    ("dhcp-dns", NO_ARG, "dhcp-dns"),
    ("no-dhcp-dns", NO_ARG, "no-dhcp-dns"),
    ("dhcp-search", NO_ARG, "dhcp-search"),
    ("no-dhcp-search", NO_ARG, "no-dhcp-search"),
    ("dns-forward", REQ_ARG, "dns-forward"),
    ("no-netns-quit", NO_ARG, "no-netns-quit"),
    ("trace", NO_ARG, "trace"),
    ("runas", REQ_ARG, "runas"),
    ("log-size", REQ_ARG, "log-size"),
    ("version", NO_ARG, "version"),
    ("outbound-if4", REQ_ARG, "outbound-if4"),
    ("outbound-if6", REQ_ARG, "outbound-if6"),
    ("config-net", NO_ARG, "config-net"),
    ("no-copy-routes", NO_ARG, "no-copy-routes"),
    ("no-copy-addrs", NO_ARG, "no-copy-addrs"),
    ("netns-only", NO_ARG, "netns-only"),
    ("map-host-loopback", REQ_ARG, "map-host-loopback"),
    ("map-guest-addr", REQ_ARG, "map-guest-addr"),
    ("host-lo-to-ns-lo", NO_ARG, "host-lo-to-ns-lo"),
    ("dns-host", REQ_ARG, "dns-host"),
    ("vhost-user", NO_ARG, "vhost-user"),
    ("print-capabilities", NO_ARG, "print-capabilities"),
    ("socket-path", REQ_ARG, "s"),
    ("fqdn", REQ_ARG, "fqdn"),
    ("repair-path", REQ_ARG, "repair-path"),
    ("migrate-exit", NO_ARG, "migrate-exit"),
    ("migrate-no-linger", NO_ARG, "migrate-no-linger"),
    ("stats", REQ_ARG, "stats"),
    ("conf-path", REQ_ARG, "c"),
    ("chroot-fallback", NO_ARG, "chroot-fallback"),
    # Only in this port: see the man page
    ("no-tap-offload", NO_ARG, "no-tap-offload"),
]

# What this port lacks for each option it refuses.
UNSUPPORTED = {
    "vhost-user": "vhost-user mode",
    "print-capabilities": "vhost-user mode",
    "repair-path": "passt-repair support",
    "migrate-exit": "vhost-user migration",
    "migrate-no-linger": "vhost-user migration",
    "c": "pesto configuration socket",
}


def _unsupported(spelled, key):
    log.die("%s is not supported by this port (it has no %s)", spelled,
            UNSUPPORTED[key])


class ConfState:
    """What the parse phase learnt that has no field in ``Ctx``: the local
    variables of upstream's ``conf()``."""

    def __init__(self):
        self.prog = "pasta"
        self.argv = []
        self.optind = 1
        self.netns_only = False
        self.no_map_gw = False
        self.userns = ""
        self.netns = ""
        self.copy_addrs_opt = False
        self.copy_routes_opt = False
        self.v4_only = False
        self.v6_only = False
        self.ifi4 = 0
        self.ifi6 = 0
        self.opt_a_is_prefix = False
        self.opt_n = 0
        self.logfile = None
        self.logsize = 0
        self.runas = None
        self.max_mtu = IP_MAX_MTU
        self.fd_tap_preset = False  # c.fd_tap set before conf() was called
        self.fwd_opts = []          # (letter, spec) of -t -u -T -U, in order
        self.splice_only_opt = ""   # how --splice-only was spelled
        self.opt_ns_ifname = False
        self.opt_ns_mac = False
        self.opt_interface = False
        self.opt_outbound_if4 = False
        self.opt_outbound_if6 = False


def prog_name(c, argv0):
    """The name to show in messages: argv[0], unless we run as
    ``python -m pasta``, where it would be the path of ``__main__.py``."""
    base = os.path.basename(argv0 or "")
    if not base or base in ("__main__.py", "-m", "-c") or \
       base.startswith("python"):
        return "pasta" if c.mode == MODE_PASTA else "passt"
    return argv0


# DNS

def add_dns4(c, addr):
    """Add an IPv4 resolver to those announced, if there is room; return
    the number added (0 or 1)."""
    if len(c.ip4.dns) >= MAXNS:
        return 0
    c.ip4.dns.append(addr)
    return 1


def add_dns6(c, addr):
    """Add an IPv6 resolver to those announced, if there is room."""
    if len(c.ip6.dns) >= MAXNS:
        return 0
    c.ip6.dns.append(addr)
    return 1


def add_dns_resolv4(c, ns):
    """Take an IPv4 nameserver of the host's resolv.conf.

    The first one becomes the host-side resolver for DNS forwarding.  One
    the guest could not reach as it is (a loopback address, or the address
    mapped to the host) is announced as the mapped host address, which is
    then forwarded as DNS, or as the --dns-forward address if one was
    given; without a host mapping it is left out.
    """
    if c.ip4.dns_host == IN4_ANY:
        c.ip4.dns_host = ns

    if ns.is_loopback or ns == c.ip4.map_host_loopback:
        if c.ip4.dns_match == IN4_ANY:
            if c.ip4.map_host_loopback == IN4_ANY:
                return
            ns = c.ip4.map_host_loopback
            c.ip4.dns_match = c.ip4.map_host_loopback
        else:
            ns = c.ip4.dns_match

    add_dns4(c, ns)


def add_dns_resolv6(c, ns):
    """As ``add_dns_resolv4()``, for IPv6."""
    if c.ip6.dns_host == IN6_ANY:
        c.ip6.dns_host = ns

    if ns.is_loopback or ns == c.ip6.map_host_loopback:
        if c.ip6.dns_match == IN6_ANY:
            if c.ip6.map_host_loopback == IN6_ANY:
                return
            ns = c.ip6.map_host_loopback
            c.ip6.dns_match = c.ip6.map_host_loopback
        else:
            ns = c.ip6.dns_match

    add_dns6(c, ns)


def add_dns_resolv(c, nameserver, use4, use6):
    """Take one ``nameserver`` line's address, of the families asked."""
    if use4:
        a4 = _pton4(nameserver)
        if a4 is not None:
            add_dns_resolv4(c, a4)
    if use6:
        a6 = _pton6(nameserver)
        if a6 is not None:
            add_dns_resolv6(c, a6)


def get_dns(c, path="/etc/resolv.conf"):
    """Fill in resolvers and search domains from resolv.conf, for what the
    options did not set, and warn when the guest would get no resolver."""
    dns4_set = not c.ifi4 or bool(c.ip4.dns)
    dns6_set = not c.ifi6 or bool(c.ip6.dns)
    dnss_set = bool(c.dns_search) or c.no_dns_search
    dns_set = (dns4_set and dns6_set) or c.no_dns

    if dns_set and dnss_set:
        return

    found = 0
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = None

    if data is not None:
        took_search = False
        for raw in data.split(b"\n"):
            line = raw.decode("utf-8", "replace")
            if not dns_set and line.startswith("nameserver "):
                last = line.rfind(" ")
                cut = line.find("%")
                if cut >= 0:
                    line = line[:cut]
                before = len(c.ip4.dns) + len(c.ip6.dns)
                add_dns_resolv(c, line[last + 1:], not dns4_set,
                               not dns6_set)
                found += len(c.ip4.dns) + len(c.ip6.dns) - before
            elif not dnss_set and line.startswith("search ") and \
                    not took_search:
                took_search = True
                words = line.replace("\t", " ").split()
                for w in words[1:MAXDNSRCH]:
                    c.dns_search.append(w[:NS_MAXDNAME - 1])

    if not dns_set:
        if not found:
            log.warn("Couldn't get any nameserver address")

        if c.no_dhcp_dns:
            return

        if c.ifi4 and not c.no_dhcp and not c.ip4.dns:
            log.warn("No IPv4 nameserver available for DHCP")

        if c.ifi6 and ((not c.no_ndp and not c.no_ra) or
                       not c.no_dhcpv6) and not c.ip6.dns:
            log.warn("No IPv6 nameserver available for NDP/DHCPv6")


# Namespace options

def conf_netns_opt(arg):
    """The path for ``--netns``: a name without '/' is one under
    /run/netns, as ip-netns(8) keeps them, anything else is a path."""
    path = arg if "/" in arg else "%s/%s" % (NETNS_RUN_DIR, arg)
    if not path or len(os.fsencode(path)) >= PATH_MAX:
        log.die("Network namespace name/path %s too long", arg)
    return path


def conf_pasta_ns(st):
    """Work out the namespaces pasta attaches to from what follows the
    options: one all-digit word is a PID (its network namespace, and its
    user namespace unless --userns says otherwise); attaching without a
    user namespace means --netns-only."""
    argv, optind = st.argv, st.optind

    if st.netns and optind != len(argv):
        log.die("Both --netns and PID or command given")

    if optind + 1 == len(argv):
        word = argv[optind]
        pid = _parse_unsigned_all(word, 10)
        if pid is not None:
            if pid > INT_MAX:
                log.die("Invalid PID %s", word)
            st.netns = "/proc/%d/ns/net" % pid
            if not st.userns:
                st.userns = "/proc/%d/ns/user" % pid

    if st.netns and not st.userns:
        st.netns_only = True


# Addresses

def conf_ip4_prefix(arg):
    """The argument of ``-n``: a netmask in dotted-quad form or a prefix
    length; dies if it is neither."""
    mask = _pton4(arg)
    if mask is not None:
        m = int(mask)
        length = bin(m).count("1")
        if (m << length) & 0xffffffff == 0:
            return length
    else:
        length = _parse_unsigned_all(arg, 0)
        if length is not None and length <= 32:
            return length

    log.die("Invalid prefix length: %s", arg)


def conf_addr(c, arg, opt_n):
    """Apply ``-a ADDR[/PREFIX]`` to the guest's IPv4 or IPv6 address.

    ``opt_n`` is the IPv4 prefix from an earlier ``-n`` plus 96 (0 if
    none).  Return True if the argument carried a prefix length.
    """
    parsed = _parse_ip_prefix(arg)
    if parsed is None:
        log.die("Invalid guest address: %s", arg)
    ip, parse_af, p = parsed

    if ip.version == 6 and ip.ipv4_mapped is not None:
        a4 = ip.ipv4_mapped
    elif ip.version == 4:
        a4 = ip
    else:
        a4 = None

    is_prefix = p.startswith("/")
    if is_prefix:
        r = _strtoul(p[1:], 10)
        if r is None:
            log.die("Invalid guest address: %s", arg)
        prefix_len, p = r
        if opt_n:
            log.die("Redundant prefix length specification")
        if parse_af == socket.AF_INET:
            if prefix_len > 32:
                log.die("Invalid prefix length: %s", arg)
            prefix_len += 96
        elif prefix_len > 128:
            log.die("Invalid prefix length: %s", arg)
    elif opt_n and a4 is not None:
        prefix_len = opt_n
    elif a4 is not None:
        prefix_len = _ip4_class_prefix_len(a4) + 96
    else:
        prefix_len = 64

    if a4 is not None:
        bad = a4 == IN4_ANY or a4.is_multicast or a4.is_loopback
    else:
        bad = ip == IN6_ANY or ip.is_multicast or ip.is_loopback
    if p or bad:
        log.die("Invalid guest address: %s", arg)

    if a4 is not None:
        c.ip4.addr = a4
        c.ip4.prefix_len = prefix_len - 96
        c.ip4.addr_fixed = True
        c.ip4.no_copy_addrs = True
    else:
        c.ip6.addr = ip
        c.ip6.addr_fixed = True
        c.ip6.no_copy_addrs = True

    return is_prefix


def conf_nat(arg, ipc4, ipc6, field):
    """``--map-host-loopback`` and ``--map-guest-addr``: set ``field`` of
    the IPv4 or IPv6 context to the address given, or clear both for
    'none'.  Return True for 'none'."""
    if arg == "none":
        setattr(ipc4, field, IN4_ANY)
        setattr(ipc6, field, IN6_ANY)
        return True

    a6 = _pton6(arg)
    if a6 is not None and a6 != IN6_ANY and not a6.is_loopback and \
       not a6.is_multicast:
        setattr(ipc6, field, a6)
        return False

    a4 = _pton4(arg)
    if a4 is not None and a4 != IN4_ANY and not a4.is_loopback and \
       not a4.is_multicast:
        setattr(ipc4, field, a4)
        return False

    log.die("Invalid address to remap to host: %s", arg)


# User to run as

def conf_runas(opt):
    """Look up ``UID[:GID]`` (numbers, or user and group names) for
    --runas.  Return ``(uid, gid)`` or None if a name is unknown."""
    uopt, sep, gopt = opt.partition(":")

    uid, rest = _strtol(uopt)
    uid &= 0xffffffff
    gid = uid
    if rest:
        try:
            pw = pwd.getpwnam(uopt)
        except KeyError:
            return None
        if not pw.pw_uid:
            return None
        uid, gid = pw.pw_uid, pw.pw_gid

    if not sep:
        return uid, gid

    gid, rest = _strtol(gopt)
    gid &= 0xffffffff
    if rest:
        try:
            gid = grp.getgrnam(gopt).gr_gid
        except KeyError:
            return None

    return uid, gid


def conf_ugid(runas):
    """The user and group to run as: --runas if given, else the current
    ones.

    Unlike the C implementation, which turns root into nobody, root stays
    root: nobody can neither open /dev/net/tun nor, on many systems, read
    the Python installation it runs from.  Capabilities are still cut down
    and the sandbox applied (see isolation.py)."""
    if runas is not None:
        r = conf_runas(runas)
        if r is None:
            log.die("Invalid --runas option: %s", runas)
        return r

    return os.geteuid(), os.getegid()


# Host configuration

def _ip4(value):
    """Normalise an IPv4 address from netlink (object, text or bytes)."""
    if value is None:
        return IN4_ANY
    return ipaddress.IPv4Address(value)


def _ip6(value):
    """Normalise an IPv6 address from netlink, dropping any scope."""
    if value is None:
        return IN6_ANY
    if isinstance(value, str):
        value = value.split("%", 1)[0]
    return ipaddress.IPv6Address(value)


def conf_ip4(ifi, ip4):
    """Find the IPv4 template: interface ``ifi`` (0: the one with the
    default route), its default gateway and address, unless given.  Return
    the interface index, or 0 if IPv4 cannot be set up from the host."""
    from pasta import netlink

    s = netlink.nl_sock
    if not ifi:
        try:
            ifi = netlink.nl_get_ext_if(s, socket.AF_INET)
        except OSError:
            ifi = 0
    if not ifi:
        log.debug("Failed to detect external interface for IPv4")
        return 0

    if ip4.guest_gw == IN4_ANY:
        try:
            ip4.guest_gw = _ip4(netlink.nl_route_get_def(s, ifi,
                                                         socket.AF_INET))
        except OSError as e:
            log.debug("Couldn't discover IPv4 gateway address: %s",
                      e.strerror or e)
            return 0

    if ip4.addr == IN4_ANY:
        try:
            addr, prefix_len, _ll = netlink.nl_addr_get(s, ifi,
                                                        socket.AF_INET)
        except OSError as e:
            log.debug("Couldn't discover IPv4 address: %s", e.strerror or e)
            return 0
        ip4.addr = _ip4(addr)
        ip4.prefix_len = prefix_len or 0

    if not ip4.prefix_len:
        ip4.prefix_len = _ip4_class_prefix_len(ip4.addr)

    ip4.addr_seen = ip4.addr
    ip4.our_tap_addr = ip4.guest_gw

    if ip4.addr == IN4_ANY:
        return 0
    return ifi


def conf_ip4_local(ip4):
    """IPv4 without a template ("local mode"): link-local addresses."""
    ip4.addr_seen = ip4.addr = IP4_LL_GUEST_ADDR
    ip4.our_tap_addr = ip4.guest_gw = IP4_LL_GUEST_GW
    ip4.prefix_len = IP4_LL_PREFIX_LEN
    ip4.no_copy_addrs = ip4.no_copy_routes = True


def conf_ip6(ifi, ip6):
    """As ``conf_ip4()`` for IPv6; also needs a link-local address of the
    template, which becomes ours on the tap side (or the gateway's, if
    that is link-local)."""
    from pasta import netlink

    s = netlink.nl_sock
    if not ifi:
        try:
            ifi = netlink.nl_get_ext_if(s, socket.AF_INET6)
        except OSError:
            ifi = 0
    if not ifi:
        log.debug("Failed to detect external interface for IPv6")
        return 0

    if ip6.guest_gw == IN6_ANY:
        try:
            ip6.guest_gw = _ip6(netlink.nl_route_get_def(s, ifi,
                                                         socket.AF_INET6))
        except OSError as e:
            log.debug("Couldn't discover IPv6 gateway address: %s",
                      e.strerror or e)
            return 0

    try:
        addr, _prefix_len, addr_ll = netlink.nl_addr_get(s, ifi,
                                                         socket.AF_INET6)
    except OSError as e:
        log.debug("Couldn't discover IPv6 address: %s", e.strerror or e)
        return 0
    if ip6.addr == IN6_ANY:
        ip6.addr = _ip6(addr)
    ip6.our_tap_ll = _ip6(addr_ll)

    ip6.addr_seen = ip6.addr

    if ip6.guest_gw.is_link_local:
        ip6.our_tap_ll = ip6.guest_gw

    if ip6.addr == IN6_ANY or ip6.our_tap_ll == IN6_ANY:
        return 0
    return ifi


def conf_ip6_local(ip6):
    """IPv6 without a template: fe80::1 as gateway and our address."""
    ip6.our_tap_ll = ip6.guest_gw = IP6_LL_GUEST_GW
    ip6.no_copy_addrs = ip6.no_copy_routes = True


# Files

def conf_open_files(c):
    """Open what the options ask for before we may lose the right to: the
    qemu socket of passt and the PID file."""
    from pasta import tap

    if c.mode != MODE_PASTA and c.fd_tap == -1:
        c.tap_listen_sock, c.sock_path = tap.tap_sock_unix_open(c.sock_path)
        c.fd_tap_listen = c.tap_listen_sock.fileno()
        c.fd_repair_listen = -1
        c.fd_repair = -1

    if c.pidfile:
        try:
            c.pidfile_fd = os.open(c.pidfile, os.O_CREAT | os.O_TRUNC |
                                   os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as e:
            log.die_perror(e, "Couldn't open PID file %s", c.pidfile)

    c.fd_control = -1
    c.fd_control_listen = -1


def conf_tap_fd(argv):
    """The descriptor given with ``-F``/``--fd`` (the last one), or -1.
    Upstream reads it before anything else, to keep it open."""
    fdarg = None
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        val = None
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            if "fd".startswith(name) and name:
                val = value if eq else (argv[i + 1] if i + 1 < len(argv)
                                        else None)
        elif arg.startswith("-F"):
            val = arg[2:] or (argv[i + 1] if i + 1 < len(argv) else None)
        if val is not None:
            fdarg = val

    if fdarg is None:
        return -1
    fd = _parse_unsigned_all(fdarg, 0)
    if fd is None or fd > INT_MAX:
        log.die("Invalid --fd: %s", fdarg)
    return fd


# The parse phase

def _fits(s, size):
    """Would ``s`` fit, with its terminator, in a C buffer of ``size``?"""
    n = len(s.encode(errors="surrogateescape"))
    return 0 < n < size


def conf_parse(c, argv):
    """Parse ``argv`` into ``c`` with upstream's checks; see the module
    docstring.  Return the ``ConfState`` for the second phase.  Exits (via
    ``log.die()`` or ``usage()``) on any error, on --help and --version."""
    st = ConfState()
    st.argv = list(argv)
    st.prog = prog_name(c, argv[0] if argv else "")
    pasta_mode = c.mode == MODE_PASTA
    st.fd_tap_preset = c.fd_tap >= 0

    if c.no_ipv6:
        st.v4_only = True

    if pasta_mode:
        c.no_dhcp_dns = c.no_dhcp_dns_search = True

    if L2_MAX_LEN - ETH_HLEN < st.max_mtu:
        st.max_mtu = L2_MAX_LEN - ETH_HLEN
    c.mtu = st.max_mtu - st.max_mtu % 4
    c.our_tap_mac = MAC_OUR_LAA

    opts = Getopt(st.argv, OPTSTRING, OPTIONS)
    while True:
        try:
            r = opts.next()
        except GetoptError as e:
            log.err("%s: %s", st.prog, e)
            usage(st.prog, sys.stderr, 1, c.mode)
        if r is None:
            break
        name, optarg, spelled = r
        _conf_option(c, st, name, optarg, spelled)
    st.optind = opts.optind

    _conf_checks(c, st)

    if pasta_mode:
        conf_pasta_ns(st)
    elif st.optind != len(st.argv):
        log.die("Extra non-option argument: %s", st.argv[st.optind])

    return st


def _pasta_only(c, spelled):
    """Refuse option ``spelled`` unless we run as pasta."""
    if c.mode != MODE_PASTA:
        log.die("%s is for pasta mode only", spelled)


def _passt_only(c, spelled):
    """Refuse option ``spelled`` when we run as pasta."""
    if c.mode == MODE_PASTA:
        log.die("%s is for passt mode only", spelled)


def _conf_option(c, st, name, optarg, spelled):
    """Apply one option (``name`` is the key from ``OPTIONS``)."""
    if isinstance(name, tuple):
        setattr(c, name[1], True)
    elif name in UNSUPPORTED:
        if name == "repair-path" and optarg == "none":
            c.repair_path = optarg
        else:
            _unsupported(spelled, name)
    elif name == "no-map-gw":
        st.no_map_gw = True
    elif name in ("splice-only", "no-tap"):
        c.splice_only = True
        st.splice_only_opt = spelled
    elif name == "userns":
        _pasta_only(c, spelled)
        if not _fits(optarg, PATH_MAX):
            log.die("Invalid userns: %s", optarg)
        st.userns = optarg
        st.netns_only = False
    elif name == "netns":
        _pasta_only(c, spelled)
        st.netns = conf_netns_opt(optarg)
    elif name == "ns-mac-addr":
        _pasta_only(c, spelled)
        c.guest_mac = parse_mac(optarg)
        st.opt_ns_mac = True
    elif name == "dhcp-dns":
        _pasta_only(c, spelled)
        c.no_dhcp_dns = False
    elif name == "no-dhcp-dns":
        _passt_only(c, spelled)
        c.no_dhcp_dns = True
    elif name == "dhcp-search":
        _pasta_only(c, spelled)
        c.no_dhcp_dns_search = False
    elif name == "no-dhcp-search":
        _passt_only(c, spelled)
        c.no_dhcp_dns_search = True
    elif name == "dns-forward":
        a6 = _pton6(optarg)
        if a6 is not None and a6 != IN6_ANY and not a6.is_loopback:
            c.ip6.dns_match = a6
            return
        a4 = _pton4(optarg)
        if a4 is not None and a4 not in (IN4_ANY, IN4_BROADCAST) and \
           not a4.is_loopback:
            c.ip4.dns_match = a4
            return
        log.die("Invalid DNS forwarding address: %s", optarg)
    elif name == "no-netns-quit":
        _pasta_only(c, spelled)
        c.no_netns_quit = True
    elif name == "trace":
        c.trace = c.debug = True
        c.quiet = False
    elif name == "runas":
        st.runas = optarg
    elif name == "log-size":
        val = _parse_unsigned_all(optarg, 0)
        if val is None or val < log.LOGFILE_SIZE_MIN:
            log.die("Invalid --log-size: %s", optarg)
        st.logsize = val
    elif name == "version":
        sys.stdout.write("%s %s\n" % ("pasta" if c.mode == MODE_PASTA
                                      else "passt", VERSION_BLOB))
        sys.stdout.flush()
        log.passt_exit(0)
    elif name in ("outbound-if4", "outbound-if6"):
        if not _fits(optarg, IFNAMSIZ):
            log.die("Invalid interface name: %s", optarg)
        if name == "outbound-if4":
            c.ip4.ifname_out = optarg
            st.opt_outbound_if4 = True
        else:
            c.ip6.ifname_out = optarg
            st.opt_outbound_if6 = True
    elif name == "config-net":
        _pasta_only(c, spelled)
        c.pasta_conf_ns = True
    elif name == "no-copy-routes":
        _pasta_only(c, spelled)
        log.warn("--no-copy-routes will be dropped soon")
        c.ip4.no_copy_routes = c.ip6.no_copy_routes = True
        st.copy_routes_opt = True
    elif name == "no-copy-addrs":
        _pasta_only(c, spelled)
        log.warn("--no-copy-addrs will be dropped soon")
        c.ip4.no_copy_addrs = c.ip6.no_copy_addrs = True
        st.copy_addrs_opt = True
    elif name == "netns-only":
        _pasta_only(c, spelled)
        st.netns_only = True
        st.userns = ""
    elif name == "map-host-loopback":
        if conf_nat(optarg, c.ip4, c.ip6, "map_host_loopback"):
            st.no_map_gw = True
    elif name == "map-guest-addr":
        conf_nat(optarg, c.ip4, c.ip6, "map_guest_addr")
    elif name == "host-lo-to-ns-lo":
        _pasta_only(c, spelled)
        c.host_lo_to_ns_lo = True
    elif name == "dns-host":
        a6 = _pton6(optarg)
        if a6 is not None and a6 != IN6_ANY:
            c.ip6.dns_host = a6
            return
        a4 = _pton4(optarg)
        if a4 is not None and a4 not in (IN4_ANY, IN4_BROADCAST):
            c.ip4.dns_host = a4
            return
        log.die("Invalid host nameserver address: %s", optarg)
    elif name == "fqdn":
        if len(os.fsencode(optarg)) >= PASST_MAXDNAME:
            log.die("Invalid FQDN: %s", optarg)
        c.fqdn = optarg
    elif name == "stats":
        if not c.foreground:
            log.die("Can't display statistics if not running in foreground")
        c.stats = _strtol(optarg)[0]
    elif name == "chroot-fallback":
        c.chroot_fallback = True
    elif name == "no-tap-offload":
        _pasta_only(c, spelled)
        c.no_tap_offload = True
    else:
        _conf_short_option(c, st, name, optarg, spelled)


def _conf_short_option(c, st, name, optarg, spelled):
    """Apply one of the options that have a short form."""
    if name == "d":
        c.debug = True
        c.quiet = False
    elif name == "e":
        log.warn("--stderr will be dropped soon")
    elif name == "l":
        st.logfile = optarg
    elif name == "q":
        c.quiet = True
        c.debug = c.trace = False
    elif name == "f":
        c.foreground = True
    elif name == "s":
        if c.mode == MODE_PASTA:
            log.die("-s is for passt / vhost-user mode only")
        if not _fits(optarg, UNIX_PATH_MAX):
            log.die("Invalid socket path: %s", optarg)
        c.sock_path = optarg
        c.fd_tap = -1
    elif name == "F":
        fd = _parse_unsigned_all(optarg, 0)
        if fd is None or fd > INT_MAX:
            log.die("Invalid --fd: %s", optarg)
        # main() may have taken (and moved) the descriptor already
        if not st.fd_tap_preset:
            c.fd_tap = fd
        c.one_off = True
        c.sock_path = ""
    elif name == "I":
        if c.mode != MODE_PASTA:
            log.die("-I is for pasta mode only")
        if not _fits(optarg, IFNAMSIZ):
            log.die("Invalid interface name: %s", optarg)
        c.pasta_ifn = optarg
        st.opt_ns_ifname = True
    elif name == "p":
        if not _fits(optarg, PATH_MAX):
            log.die("Invalid pcap path: %s", optarg)
        c.pcap = optarg
    elif name == "P":
        if not _fits(optarg, PATH_MAX):
            log.die("Invalid PID file: %s", optarg)
        c.pidfile = optarg
    elif name == "m":
        mtu = _parse_unsigned_all(optarg, 0)
        if mtu is None:
            log.die("Invalid MTU: %s", optarg)
        if mtu > st.max_mtu:
            log.die("MTU %d too large (max %d)", mtu, st.max_mtu)
        if mtu and mtu < IPV4_MIN_MTU:
            # Deliberate difference: upstream only warns, and the kernel
            # then refuses such an MTU on the tap device anyway
            log.die("MTU %d too small (min %d)", mtu, IPV4_MIN_MTU)
        c.mtu = mtu
    elif name == "a":
        st.opt_a_is_prefix = conf_addr(c, optarg, st.opt_n)
    elif name == "n":
        if st.opt_a_is_prefix:
            log.die("Redundant prefix length specification")
        c.ip4.prefix_len = conf_ip4_prefix(optarg)
        st.opt_n = c.ip4.prefix_len + 96
    elif name == "M":
        c.our_tap_mac = parse_mac(optarg)
    elif name == "g":
        a6 = _pton6(optarg)
        if a6 is not None and a6 != IN6_ANY and not a6.is_loopback:
            c.ip6.guest_gw = a6
            if c.mode == MODE_PASTA:
                c.ip6.no_copy_routes = True
            return
        a4 = _pton4(optarg)
        if a4 is not None and a4 not in (IN4_ANY, IN4_BROADCAST) and \
           not a4.is_loopback:
            c.ip4.guest_gw = a4
            if c.mode == MODE_PASTA:
                c.ip4.no_copy_routes = True
            return
        log.die("Invalid gateway address: %s", optarg)
    elif name == "i":
        try:
            st.ifi4 = st.ifi6 = socket.if_nametoindex(optarg)
        except OSError as e:
            log.die_perror(e, "Invalid interface name %s", optarg)
        st.opt_interface = True
    elif name == "o":
        a6 = _pton6(optarg)
        if a6 is not None and a6 != IN6_ANY and not a6.is_loopback and \
           not _in6_is_v4mapped(a6) and not _in6_is_v4compat(a6) and \
           not a6.is_multicast:
            c.ip6.addr_out = a6
            return
        a4 = _pton4(optarg)
        if a4 is not None and a4 not in (IN4_ANY, IN4_BROADCAST) and \
           not a4.is_multicast:
            c.ip4.addr_out = a4
            return
        log.die("Invalid or redundant outbound address: %s", optarg)
    elif name == "S":
        if optarg == "none":
            c.no_dns_search = True
            c.dns_search = []
            return
        c.no_dns_search = False
        if len(c.dns_search) < MAXDNSRCH and \
           _fits(optarg, NS_MAXDNAME):
            c.dns_search.append(optarg)
            return
        log.die("Cannot use DNS search domain %s", optarg)
    elif name == "H":
        if len(os.fsencode(optarg)) >= PASST_MAXDNAME:
            log.die("Invalid hostname: %s", optarg)
        c.hostname = optarg
    elif name == "4":
        st.v4_only = True
        st.v6_only = False
    elif name == "6":
        if c.no_ipv6:
            log.die("IPv6 not available but --ipv6-only given")
        st.v6_only = True
        st.v4_only = False
    elif name == "1":
        if c.mode == MODE_PASTA:
            log.die("--one-off is for passt mode only")
        c.one_off = True
    elif name in ("T", "U"):
        if c.mode != MODE_PASTA:
            log.die("-%s is for pasta mode only", name)
        st.fwd_opts.append((name, optarg))
    elif name in ("t", "u"):
        st.fwd_opts.append((name, optarg))
    elif name == "D":
        if optarg == "none":
            c.no_dns = True
            c.ip4.dns = []
            c.ip4.dns_match = IN4_ANY
            c.ip4.dns_host = IN4_ANY
            c.ip6.dns = []
            c.ip6.dns_match = IN6_ANY
            c.ip6.dns_host = IN6_ANY
            return
        c.no_dns = False
        a4 = _pton4(optarg)
        if a4 is not None:
            add_dns4(c, a4)
            return
        a6 = _pton6(optarg)
        if a6 is not None:
            add_dns6(c, a6)
            return
        log.die("Cannot use DNS address %s", optarg)
    elif name == "h":
        usage(st.prog, sys.stdout, 0, c.mode)
    else:
        usage(st.prog, sys.stderr, 1, c.mode)


def _conf_checks(c, st):
    """Checks and implications that need the whole command line."""
    if c.mode != MODE_PASTA:
        c.no_splice = True
        if c.splice_only:
            log.die("%s is for pasta mode only", st.splice_only_opt)

    if c.no_splice and c.host_lo_to_ns_lo:
        log.die("--host-lo-to-ns-lo is incompatible with --no-splice")

    if c.mode == MODE_PASTA and not c.pasta_conf_ns:
        if st.copy_routes_opt:
            log.die("--no-copy-routes needs --config-net")
        if st.copy_addrs_opt:
            log.die("--no-copy-addrs needs --config-net")

    if c.mode == MODE_PASTA and c.splice_only:
        so = st.splice_only_opt
        if c.no_splice:
            log.die("%s is incompatible with --no-splice", so)
        # Options that only mean something for a tap interface
        if st.opt_ns_ifname:
            log.die("%s is incompatible with -I/--ns-ifname", so)
        if st.opt_ns_mac:
            log.die("%s is incompatible with --ns-mac-addr", so)
        if st.opt_interface:
            log.die("%s is incompatible with -i/--interface", so)
        if st.opt_outbound_if4:
            log.die("%s is incompatible with --outbound-if4", so)
        if st.opt_outbound_if6:
            log.die("%s is incompatible with --outbound-if6", so)

        c.host_lo_to_ns_lo = True
        c.no_icmp = True
        c.no_dns = True
        c.no_dns_search = True
        c.no_dhcp = True
        c.no_dhcpv6 = True
        c.no_ndp = True
        c.no_ra = True

    if not st.ifi4 and c.ip4.ifname_out:
        st.ifi4 = _nametoindex(c.ip4.ifname_out)
    if not st.ifi6 and c.ip6.ifname_out:
        st.ifi6 = _nametoindex(c.ip6.ifname_out)


def _nametoindex(name):
    """Index of interface ``name``, 0 if there is none."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def _indextoname(ifi):
    """Name of interface ``ifi``, empty if there is none."""
    try:
        return socket.if_indextoname(ifi)
    except OSError:
        return ""


# The whole of it

def conf(c, argv):
    """Parse the command line and set up the configuration in ``c``: see
    the module docstring for the steps.  Return the ``ConfState``."""
    from pasta import isolation, netlink, pasta

    st = conf_parse(c, argv)
    uid, gid = conf_ugid(st.runas)
    conf_log(c, st)
    conf_host(c, st)
    conf_fwd(c, st)

    conf_open_files(c)

    # Root in the initial user namespace needs no user namespace of its own
    # to create or enter network namespaces, and keeps the right to bind
    # low ports on the host that way; a command it spawns then runs as
    # that same root, as with unshare(1).
    use_userns = not st.netns_only and not (uid == 0 and util.ns_is_init())
    isolation.isolate_user(c, uid, gid, use_userns, st.userns)

    if c.no_icmp:
        c.no_ndp = True
    if c.pasta_conf_ns:
        c.no_ra = True

    if c.mode == MODE_PASTA:
        if st.netns:
            pasta.pasta_open_ns(c, st.netns)
        else:
            pasta.pasta_start_ns(c, uid, gid, use_userns,
                                 st.argv[st.optind:])
        netlink.nl_sock_init(c, True)

    conf_finish(c, st)

    if not c.quiet:
        conf_print(c)

    return st


def conf_log(c, st):
    """Set up logging as the options say; from now on the log mask
    applies."""
    logname = "pasta" if c.mode == MODE_PASTA else "passt"

    if st.logfile:
        try:
            log.logfile_init(logname, st.logfile, st.logsize)
        except OSError as e:
            log.die_perror(e, "Couldn't open log file %s", st.logfile)
    else:
        getattr(log, "__openlog")(logname)

    setlogmask = getattr(log, "__setlogmask")
    if c.debug:
        setlogmask(LOG_UPTO_DEBUG)
    elif c.quiet:
        setlogmask(LOG_UPTO_WARNING)
    else:
        setlogmask(LOG_UPTO_INFO)
    log.log_conf_done(True)


def conf_host(c, st):
    """Take addresses and gateways from the host's template interfaces
    for what the options left open, or fall back to local mode; reads the
    host's netlink, changes nothing there."""
    from pasta import netlink

    netlink.nl_sock_init(c, False)
    if not st.v6_only and not c.splice_only:
        c.ifi4 = conf_ip4(st.ifi4, c.ip4)
    if not st.v4_only and not c.splice_only:
        c.ifi6 = conf_ip6(st.ifi6, c.ip6)

    if c.ifi4 and c.mtu and c.mtu < IPV4_MIN_MTU:
        log.warn("MTU %d is too small for IPv4 (minimum %d)",
                 c.mtu, IPV4_MIN_MTU)
    if c.ifi6 and c.mtu and c.mtu < IPV6_MIN_MTU:
        log.warn("MTU %d is too small for IPv6 (minimum %d)",
                 c.mtu, IPV6_MIN_MTU)

    if (c.ip4.ifname_out and not c.ifi4) or \
       (c.ip6.ifname_out and not c.ifi6):
        log.die("External interface not usable")

    if not c.ifi4 and not c.ifi6 and not c.pasta_ifn:
        c.pasta_ifn = pasta_default_ifn

    if not c.ifi4 and not st.v6_only:
        if not c.splice_only:
            log.info("IPv4: no external interface as template, "
                     "use local mode")
            conf_ip4_local(c.ip4)
        c.ifi4 = -1

    if not c.ifi6 and not st.v4_only:
        if not c.splice_only:
            log.info("IPv6: no external interface as template, "
                     "use local mode")
            conf_ip6_local(c.ip6)
        c.ifi6 = -1

    if c.ifi4 and not st.no_map_gw and c.ip4.map_host_loopback == IN4_ANY:
        c.ip4.map_host_loopback = c.ip4.guest_gw
    if c.ifi6 and not st.no_map_gw and c.ip6.map_host_loopback == IN6_ANY:
        c.ip6.map_host_loopback = c.ip6.guest_gw

    if c.ifi4 and c.ip4.guest_gw == IN4_ANY:
        c.no_dhcp = True


def conf_fwd(c, st):
    """Create the forwarding tables and read -t, -u, -T and -U into them,
    in command-line order; this needs the IP versions in use."""
    from pasta import fwd, fwd_rule

    fwd_rule.fwd_probe_ephemeral()
    fwd.fwd_rule_init(c)
    for letter, spec in st.fwd_opts:
        pif = PIF_SPLICE if letter in "TU" else PIF_HOST
        fwd_rule.fwd_rule_parse(letter, False, spec, c.fwd[pif])


def conf_finish(c, st):
    """What follows once the namespace is there: switch off the services
    that have nothing to work with, read resolv.conf, name the tap
    interface after the template, and for pasta forward 'auto' in every
    direction the options did not mention."""
    from pasta import fwd_rule

    if not c.ifi4:
        c.no_dhcp = True
    if not c.ifi6:
        c.no_ndp = True
        c.no_dhcpv6 = True
    elif c.ip6.addr == IN6_ANY:
        c.no_dhcpv6 = True

    get_dns(c)

    if not c.pasta_ifn:
        if c.ifi4 > 0:
            c.pasta_ifn = _indextoname(c.ifi4)
        elif c.ifi6 > 0:
            c.pasta_ifn = _indextoname(c.ifi6)

    if c.mode == MODE_PASTA:
        seen = {letter for letter, _spec in st.fwd_opts}
        for letter in "tTuU":
            # No default rules for a protocol that is off: they could
            # only be refused (the C implementation stops there)
            if (c.no_tcp and letter in "tT") or \
               (c.no_udp and letter in "uU"):
                continue
            if letter not in seen:
                pif = PIF_SPLICE if letter in "TU" else PIF_HOST
                fwd_rule.fwd_rule_parse(letter, False, "auto", c.fwd[pif])


def _rules_dump(table, prefix):
    """Log the rules of a forwarding table, one a line."""
    from pasta import fwd_rule

    fwd_rule.fwd_rules_dump(log.info, table.rules, prefix, "")


def conf_print(c):
    """Log the essentials of the configuration, at start-up."""
    if c.ifi4 > 0 or c.ifi6 > 0:
        log.info("Template interface: %s%s%s%s%s",
                 _indextoname(c.ifi4) if c.ifi4 > 0 else "",
                 " (IPv4)" if c.ifi4 > 0 else "",
                 ", " if c.ifi4 > 0 and c.ifi6 > 0 else "",
                 _indextoname(c.ifi6) if c.ifi6 > 0 else "",
                 " (IPv6)" if c.ifi6 > 0 else "")

    o4, o6 = c.ip4.ifname_out, c.ip6.ifname_out
    if o4 or o6:
        log.info("Outbound interface: %s%s%s%s%s",
                 o4, " (IPv4)" if o4 else "", ", " if o4 and o6 else "",
                 o6, " (IPv6)" if o6 else "")

    if c.ip4.addr_out != IN4_ANY:
        log.info("Outbound IPv4 address: %s", c.ip4.addr_out)
    if c.ip6.addr_out != IN6_ANY:
        log.info("Outbound IPv6 address: %s", c.ip6.addr_out)

    if c.mode == MODE_PASTA and not c.splice_only:
        log.info("Namespace interface: %s", c.pasta_ifn)

    log.info("MAC:")
    log.info("    host: %s", eth_ntop(c.our_tap_mac))

    if c.ifi4:
        if c.ip4.map_host_loopback != IN4_ANY:
            log.info("    NAT to host 127.0.0.1: %s", c.ip4.map_host_loopback)

        if not c.no_dhcp:
            mask = (0xffffffff << (32 - c.ip4.prefix_len)) & 0xffffffff
            log.info("DHCP:")
            log.info("    assign: %s", c.ip4.addr)
            log.info("    mask: %s", ipaddress.IPv4Address(mask))
            log.info("    router: %s", c.ip4.guest_gw)

        for i, a in enumerate(c.ip4.dns):
            if not i:
                log.info("DNS:")
            log.info("    %s", a)

        _print_search(c)

    if c.ifi6:
        if c.ip6.map_host_loopback != IN6_ANY:
            log.info("    NAT to host ::1: %s", c.ip6.map_host_loopback)

        head = None
        if not c.no_ndp and not c.no_dhcpv6:
            head = "NDP/DHCPv6:"
        elif not c.no_dhcpv6:
            head = "DHCPv6:"
        elif not c.no_ndp:
            head = "NDP:"
        if head:
            log.info(head)
            log.info("    assign: %s", c.ip6.addr)
            log.info("    router: %s", c.ip6.guest_gw)
            log.info("    our link-local: %s", c.ip6.our_tap_ll)

        for i, a in enumerate(c.ip6.dns):
            if not i:
                log.info("DNS:")
            log.info("    %s", a)

        _print_search(c)

    for pif in range(PIF_NUM_TYPES):
        table = c.fwd.get(pif) if isinstance(c.fwd, dict) else None
        if not table:
            continue
        log.info("%s forwarding rules (%s):",
                 "Inbound" if pif == PIF_HOST else "Outbound", pif_name(pif))
        _rules_dump(table, "    ")


def _print_search(c):
    """Log the DNS search list, if any."""
    for i, d in enumerate(c.dns_search):
        if not i:
            log.info("DNS search list:")
        log.info("    %s", d)


# Usage and version

VERSION_BLOB = VERSION + """ (Python port of passt)
Copyright Red Hat, and the authors of this port
GNU General Public License, version 2 or later
  <https://www.gnu.org/licenses/old-licenses/gpl-2.0.html>
This is free software: you are free to change and redistribute it.
There is NO WARRANTY, to the extent permitted by law.
"""

_USAGE_COMMON = """
  -d, --debug              print debugging messages
      --trace              print a message for every packet too; implies -d
      --stats DELAY        show event statistics, at most every DELAY
                           seconds (needs -f given before it)
  -q, --quiet              print warnings and errors only
  -f, --foreground         stay in the foreground
                           default: go to the background once ready
  -e, --stderr             deprecated, has no effect
  -l, --log-file PATH      send messages to the file PATH only
      --log-size BYTES     largest size of the log file
                           default: 1 MiB
      --runas UID|UID:GID  switch to this user and group, numbers or names
                           default: the current user, root included
  -c, --conf-path PATH     socket for pesto(1) (not supported by this port)
  -h, --help               print this text and exit
      --version            print the version and exit
"""

_USAGE_PASTA_IFN = """\
  -I, --ns-ifname NAME     name of the tap interface in the namespace
                           default: the name of the template interface
"""

_USAGE_PASST_SOCK = """\
  -s, --socket, --socket-path PATH
                           UNIX domain socket to wait for qemu on
                           default: the first free /tmp/passt_N.socket
      --vhost-user         vhost-user mode (not supported by this port)
      --print-capabilities print vhost-user capabilities in JSON (not
                           supported by this port)
      --repair-path PATH   socket for passt-repair(1); only 'none' is
                           accepted by this port
      --migrate-exit       deprecated, vhost-user migration (not supported)
      --migrate-no-linger  deprecated, vhost-user migration (not supported)
"""

_USAGE_ADDRS = """\
  -F, --fd FD              use the connected socket FD, already open
  -p, --pcap FILE          record the frames on the %(guest)s side to FILE
  -P, --pid FILE           write our PID to FILE once ready
  -m, --mtu MTU            MTU to give the %(guest)s (DHCP, NDP, or the tap
                           interface); 0 gives none
                           default: 65520, the largest 802.3 payload less
                           the 802.3 header, rounded down to 4 bytes
  -a, --address ADDR       IPv4 or IPv6 address for the %(guest)s, as
                           ADDR[/PREFIXLEN]; once per IP version
                           default: taken from the template interface
  -n, --netmask MASK       IPv4 netmask, as dotted quad or prefix length
                           default: that of the host's address
  -M, --mac-addr ADDR      our MAC address towards the %(guest)s
                           default: 9a:55:9a:55:9a:55
  -g, --gateway ADDR       IPv4 or IPv6 default gateway for the %(guest)s
                           default: the template interface's gateway
  -i, --interface NAME     template interface for addresses and routes
                           default: --outbound-if4 and --outbound-if6 if
                           given, else the one with the first default route
  -o, --outbound ADDR      bind sockets towards the outside to ADDR; once
                           per IP version
                           default: let the routing tables choose
      --outbound-if4 NAME  bind IPv4 sockets towards the outside to NAME
                           default: the interface of the default route
      --outbound-if6 NAME  bind IPv6 sockets towards the outside to NAME
                           default: the interface of the default route
  -D, --dns ADDR           announce ADDR as resolver; may be repeated;
                           'none' announces no resolver
                           default: %(dns_default)s
  -S, --search DOMAIN      add DOMAIN to the search list; may be repeated;
                           'none' sends no search list
                           default: %(search_default)s
  -H, --hostname NAME      host name to give the %(guest)s
      --fqdn NAME          fully qualified name to give the %(guest)s
%(dhcp_opts)s\
      --map-host-loopback ADDR  make ADDR reach the host's loopback
                           (once per IP version; 'none': no address)
                           default: the gateway address
      --map-guest-addr ADDR     make ADDR reach the host's address the
                           %(guest)s shadows (once per IP version)
                           default: none
      --dns-forward ADDR   send DNS queries for ADDR to the host's resolver
                           (once per IP version)
                           default: no forwarding
      --dns-host ADDR      the host's resolver for --dns-forward (once per
                           IP version)
                           default: the first nameserver of resolv.conf
      --no-tcp             no TCP handling at all
      --no-udp             no UDP handling at all
      --no-icmp            no ICMP/ICMPv6 handling at all; implies --no-ndp
      --no-dhcp            no DHCP server
      --no-ndp             no NDP answers
      --no-dhcpv6          no DHCPv6 server
      --no-ra              no router advertisements
      --freebind           allow any address in -t and -u bindings
      --no-map-gw          do not make the gateway address reach the host
      --chroot-fallback    fall back to chroot() if pivot_root() fails
  -4, --ipv4-only          IPv4 only
  -6, --ipv6-only          IPv6 only
  -t, --tcp-ports SPEC     forward TCP ports of the host to the %(guest)s;
                           may be repeated.  SPEC is one of:
                             none    forward nothing
                             [ADDR[%%IFACE]/]PORTS   the listed ports, where
                                     PORTS is a comma-separated list of
                                     ports and ranges, 'all' for every
                                     unbound port below the ephemeral ones,
                                     and ~PORT or ~FIRST-LAST to leave
                                     some out
%(auto_text)s\
                           Examples:
                             -t all          every free port
                             -t ::1/all      every free port of ::1
                             -t 22           host port 22 to port 22
                             -t 22:23        host port 22 to port 23
                             -t 22,25        ports 22 and 25
                             -t 22-80        ports 22 to 80
                             -t 22-80:32-90  ports 22 to 80 to 32 to 90
                             -t 192.0.2.1/5  port 5 of 192.0.2.1
                             -t 5-25,~10-20  ports 5 to 9 and 21 to 25
                             -t ~25          every port but 25
%(auto_examples)s\
                           default: %(fwd_default)s
  -u, --udp-ports SPEC     forward UDP ports of the host to the %(guest)s,
                           SPEC as for -t
                           default: %(fwd_default)s
"""

_USAGE_PASST_TAIL = """\
  -1, --one-off            exit after the first client disconnects
"""

_USAGE_PASTA_TAIL = """\
  -T, --tcp-ns SPEC        forward TCP ports of the namespace to the host,
                           SPEC as for -t
                           default: auto
  -U, --udp-ns SPEC        forward UDP ports of the namespace to the host,
                           SPEC as for -t
                           default: auto
      --host-lo-to-ns-lo   deliver forwards to the host's loopback to the
                           namespace's loopback
      --userns NSPATH      user namespace to join
      --netns PATH|NAME    network namespace to join
      --netns-only         join no user namespace; implied by --netns or a
                           PID without --userns
      --no-netns-quit      keep running when the namespace's file goes away
      --config-net         configure the tap interface in the namespace
      --no-copy-routes     deprecated: copy only the default route
      --no-copy-addrs      deprecated: copy only one address
      --ns-mac-addr ADDR   MAC address of the tap interface
      --no-splice          no socket splicing for local connections
      --splice-only, --no-tap
                           no tap interface: forward loopback traffic only
      --no-tap-offload     open the tap device without a virtio-net
                           header (no checksum offload); this port only
"""


def usage(name, f, status, mode=None):
    """Print the usage text for program ``name`` to ``f`` and exit with
    ``status``.  The text is pasta's or passt's as ``mode`` says, or, if
    ``mode`` is None, as the name says (as upstream decides)."""
    if mode is None:
        pasta_mode = "pasta" in os.path.basename(name)
    else:
        pasta_mode = mode == MODE_PASTA
    out = []

    if pasta_mode:
        out.append("Usage: %s [OPTION]... [COMMAND] [ARGS]...\n" % name)
        out.append("       %s [OPTION]... PID\n" % name)
        out.append("       %s [OPTION]... --netns [PATH|NAME]\n" % name)
        out.append("\nWith neither PID nor --netns, start COMMAND (or a "
                   "shell) in new user and\nnetwork namespaces, and "
                   "connect them to the host's network.\n")
        guest = "namespace"
        fwd_default = "auto"
    else:
        out.append("Usage: %s [OPTION]...\n" % name)
        guest = "guest"
        fwd_default = "none"

    out.append(_USAGE_COMMON)
    out.append(_USAGE_PASTA_IFN if pasta_mode else _USAGE_PASST_SOCK)

    if pasta_mode:
        dhcp_opts = (
            "      --dhcp-dns           announce resolvers via DHCP, "
            "DHCPv6 and NDP\n"
            "      --dhcp-search        send the search list via DHCP, "
            "DHCPv6 and NDP\n")
        auto_text = (
            "                             auto    only the ports bound in "
            "the namespace\n"
            "                                     (checked every second)\n")
        auto_examples = (
            "                             -t auto         ports bound in "
            "the namespace\n"
            "                             -t ::1/auto     the same, on "
            "::1 only\n"
            "                             -t 80-82,auto   of 80 to 82, "
            "those bound\n")
    else:
        dhcp_opts = (
            "      --no-dhcp-dns        announce no resolver via DHCP, "
            "DHCPv6 and NDP\n"
            "      --no-dhcp-search     send no search list via DHCP, "
            "DHCPv6 and NDP\n")
        auto_text = auto_examples = ""

    out.append(_USAGE_ADDRS % {
        "guest": guest, "fwd_default": fwd_default,
        "dns_default": "none announced (see --dhcp-dns)" if pasta_mode
        else "the nameservers of /etc/resolv.conf",
        "search_default": "none sent (see --dhcp-search)" if pasta_mode
        else "the search list of /etc/resolv.conf",
        "dhcp_opts": dhcp_opts, "auto_text": auto_text,
        "auto_examples": auto_examples})

    out.append(_USAGE_PASTA_TAIL if pasta_mode else _USAGE_PASST_TAIL)

    try:
        f.write("".join(out))
        f.flush()
    except (OSError, ValueError):
        pass
    log.passt_exit(status)
