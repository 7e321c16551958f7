# SPDX-License-Identifier: GPL-2.0-or-later
"""Tests of the command line (pasta/conf.py).

Most tests call the parse phase, ``conf.conf_parse()``, directly: it turns
an argument vector into ``Ctx`` fields, or exits with a message, without
touching the network.  A second group runs ``python3 -m pasta`` as a user
would, inside a test bed's namespace, for exit statuses and messages of
bad command lines.  A third group runs the host look-up phase
(``conf_host()`` and what follows, short of creating a namespace) inside
the bed's "host" namespace, where the template interface is known.
"""

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

from pasta import conf, log
from pasta.passt import MODE_PASST, MODE_PASTA, Ctx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IP4 = ipaddress.IPv4Address
IP6 = ipaddress.IPv6Address


@pytest.fixture(autouse=True)
def _log_to_stderr():
    """Messages go to stderr as before the configuration is parsed, as
    they do for a real command line, whatever other tests did to log."""
    saved = (log.log_conf_parsed, log.log_stderr, log.log_level)
    log.log_conf_parsed, log.log_stderr = False, True
    try:
        yield
    finally:
        log.log_conf_parsed, log.log_stderr, log.log_level = saved


def parse(*args, mode=MODE_PASTA):
    """Parse ``args`` as pasta's (or passt's) command line."""
    c = Ctx()
    c.mode = mode
    name = "pasta" if mode == MODE_PASTA else "passt"
    st = conf.conf_parse(c, [name] + list(args))
    return c, st


def parse_fails(capsys, *args, mode=MODE_PASTA):
    """Parse ``args``, expecting an exit; return (status, stderr)."""
    with pytest.raises(SystemExit) as e:
        parse(*args, mode=mode)
    return e.value.code, capsys.readouterr().err


def first_line(text):
    """The first line of ``text``, without its newline."""
    return text.splitlines()[0] if text else ""


# getopt_long() behaviour

def test_help_prints_usage_to_stdout_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--help")
    out = capsys.readouterr()
    assert e.value.code == 0
    assert out.out.startswith("Usage: pasta [OPTION]...")
    assert "--splice-only" in out.out and "--tcp-ns" in out.out
    assert out.err == ""


def test_passt_help_lists_passt_options_only(capsys):
    with pytest.raises(SystemExit) as e:
        parse("-h", mode=MODE_PASST)
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.startswith("Usage: passt [OPTION]...\n")
    assert "--one-off" in out and "--socket" in out
    assert "--tcp-ns" not in out and "--netns" not in out


def test_version_prints_version_and_exits_0(capsys):
    from pasta import VERSION

    with pytest.raises(SystemExit) as e:
        parse("--version")
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert first_line(out).startswith("pasta %s" % VERSION)


def test_unknown_option_prints_message_then_usage(capsys):
    code, err = parse_fails(capsys, "--bogus")
    assert code == 1
    assert first_line(err) == "pasta: unrecognized option '--bogus'"
    assert "Usage: pasta" in err


def test_unknown_short_option(capsys):
    code, err = parse_fails(capsys, "-z")
    assert code == 1
    assert first_line(err) == "pasta: invalid option -- 'z'"


def test_missing_argument(capsys):
    code, err = parse_fails(capsys, "--mtu")
    assert (code, first_line(err)) == \
        (1, "pasta: option '--mtu' requires an argument")
    code, err = parse_fails(capsys, "-m")
    assert (code, first_line(err)) == \
        (1, "pasta: option requires an argument -- 'm'")


def test_flag_refuses_argument(capsys):
    code, err = parse_fails(capsys, "--no-tcp=yes")
    assert first_line(err) == \
        "pasta: option '--no-tcp' doesn't allow an argument"


def test_unambiguous_prefix_is_accepted():
    c, _ = parse("--mt", "1500", "--foreg", "--no-ic")
    assert (c.mtu, c.foreground, c.no_icmp) == (1500, True, True)


def test_ambiguous_prefix_is_refused(capsys):
    code, err = parse_fails(capsys, "--no-dh")
    assert code == 1
    assert first_line(err).startswith(
        "pasta: option '--no-dh' is ambiguous; possibilities:")
    assert "'--no-dhcpv6'" in first_line(err)


def test_exact_name_wins_over_longer_names():
    c, _ = parse("--no-dhcp")
    assert c.no_dhcp and not c.no_dhcpv6


def test_aliases_sharing_a_prefix_are_not_ambiguous():
    c, _ = parse("--sock", "/tmp/x.sock", mode=MODE_PASST)
    assert c.sock_path == "/tmp/x.sock"


def test_grouped_short_options_and_attached_argument():
    c, _ = parse("-dfm1500")
    assert (c.debug, c.foreground, c.mtu) == (True, True, 1500)


def test_long_option_with_equals():
    c, _ = parse("--mtu=9000", "--address=192.0.2.7")
    assert c.mtu == 9000 and c.ip4.addr == IP4("192.0.2.7")


def test_argument_may_look_like_an_option():
    c, _ = parse("-H", "-x")
    assert c.hostname == "-x"


def test_options_stop_at_first_command_word():
    c, st = parse("-f", "sh", "-c", "exit 3")
    assert st.argv[st.optind:] == ["sh", "-c", "exit 3"]
    assert c.foreground


def test_double_dash_ends_options():
    _, st = parse("-f", "--", "-d")
    assert st.argv[st.optind:] == ["-d"]


# Values and checks

def test_defaults():
    c, st = parse()
    assert c.mtu == 65520
    assert c.our_tap_mac == bytes.fromhex("9a559a559a55")
    assert c.no_dhcp_dns and c.no_dhcp_dns_search
    assert not c.foreground and st.fwd_opts == []


def test_passt_defaults_pass_dns_via_dhcp():
    c, _ = parse(mode=MODE_PASST)
    assert not c.no_dhcp_dns and not c.no_dhcp_dns_search


@pytest.mark.parametrize("arg,mtu", [("1500", 1500), ("0", 0),
                                     ("0x5dc", 1500), ("65521", 65521)])
def test_mtu_accepted(arg, mtu):
    c, _ = parse("-m", arg)
    assert c.mtu == mtu


@pytest.mark.parametrize("arg,msg", [
    ("70000", "MTU 70000 too large (max 65521)"),
    ("10", "MTU 10 too small (min 68)"),
    ("abc", "Invalid MTU: abc"),
    ("1500x", "Invalid MTU: 1500x"),
])
def test_mtu_refused(capsys, arg, msg):
    code, err = parse_fails(capsys, "-m", arg)
    assert (code, err) == (1, msg + "\n")


def test_address_with_prefix():
    c, _ = parse("-a", "192.0.2.10/24", "-a", "2001:db8::10")
    assert (c.ip4.addr, c.ip4.prefix_len) == (IP4("192.0.2.10"), 24)
    assert c.ip4.addr_fixed and c.ip4.no_copy_addrs
    assert c.ip6.addr == IP6("2001:db8::10") and c.ip6.addr_fixed


def test_address_takes_class_prefix_or_netmask():
    c, _ = parse("-a", "10.1.2.3")
    assert c.ip4.prefix_len == 8
    c, _ = parse("-n", "255.255.255.0", "-a", "10.1.2.3")
    assert c.ip4.prefix_len == 24
    c, _ = parse("-a", "10.1.2.3", "-n", "20")
    assert c.ip4.prefix_len == 20


@pytest.mark.parametrize("args,msg", [
    (("-a", "999.1.1.1"), "Invalid guest address: 999.1.1.1"),
    (("-a", "127.0.0.1"), "Invalid guest address: 127.0.0.1"),
    (("-a", "::1"), "Invalid guest address: ::1"),
    (("-a", "224.0.0.1"), "Invalid guest address: 224.0.0.1"),
    (("-a", "0.0.0.0"), "Invalid guest address: 0.0.0.0"),
    (("-a", "192.0.2.1/33"), "Invalid prefix length: 192.0.2.1/33"),
    (("-a", "2001:db8::1/129"), "Invalid prefix length: 2001:db8::1/129"),
    (("-a", "192.0.2.1/24x"), "Invalid guest address: 192.0.2.1/24x"),
    (("-a", "192.0.2.1/24", "-n", "24"),
     "Redundant prefix length specification"),
    (("-n", "24", "-a", "192.0.2.1/24"),
     "Redundant prefix length specification"),
    (("-n", "255.0.255.0"), "Invalid prefix length: 255.0.255.0"),
    (("-n", "33"), "Invalid prefix length: 33"),
])
def test_address_refused(capsys, args, msg):
    code, err = parse_fails(capsys, *args)
    assert (code, err) == (1, msg + "\n")


def test_gateway_sets_no_copy_routes_in_pasta_mode():
    c, _ = parse("-g", "192.0.2.1", "-g", "fe80::1")
    assert c.ip4.guest_gw == IP4("192.0.2.1") and c.ip4.no_copy_routes
    assert c.ip6.guest_gw == IP6("fe80::1") and c.ip6.no_copy_routes
    c, _ = parse("-g", "192.0.2.1", mode=MODE_PASST)
    assert not c.ip4.no_copy_routes


@pytest.mark.parametrize("arg", ["127.0.0.1", "::1", "0.0.0.0",
                                 "255.255.255.255", "gw"])
def test_gateway_refused(capsys, arg):
    assert parse_fails(capsys, "-g", arg) == \
        (1, "Invalid gateway address: %s\n" % arg)


def test_ipv4_and_ipv6_only_last_one_wins():
    _, st = parse("-4", "-6")
    assert (st.v4_only, st.v6_only) == (False, True)
    _, st = parse("-6", "-4")
    assert (st.v4_only, st.v6_only) == (True, False)


def test_ipv6_only_refused_without_ipv6(capsys):
    c = Ctx()
    c.no_ipv6 = True
    with pytest.raises(SystemExit):
        conf.conf_parse(c, ["pasta", "-6"])
    assert capsys.readouterr().err == \
        "IPv6 not available but --ipv6-only given\n"


def test_quiet_and_debug_last_one_wins():
    c, _ = parse("-q", "-d")
    assert c.debug and not c.quiet
    c, _ = parse("--trace", "-q")
    assert c.quiet and not c.debug and not c.trace


def test_mac_addresses():
    c, _ = parse("-M", "02:00:00:00:00:01", "--ns-mac-addr",
                 "02:00:00:00:00:02")
    assert c.our_tap_mac == bytes.fromhex("020000000001")
    assert c.guest_mac == bytes.fromhex("020000000002")


@pytest.mark.parametrize("arg", ["02:00:00:00:00", "02:00:00:00:00:0g",
                                 "020000000001", "02-00-00-00-00-01"])
def test_mac_refused(capsys, arg):
    assert parse_fails(capsys, "-M", arg) == \
        (1, "Invalid MAC address: %s\n" % arg)


def test_dns_options():
    c, _ = parse("-D", "192.0.2.53", "-D", "2001:db8::53", "-S",
                 "example.org", "--dns-forward", "192.0.2.1",
                 "--dns-host", "2001:db8::35")
    assert c.ip4.dns == [IP4("192.0.2.53")]
    assert c.ip6.dns == [IP6("2001:db8::53")]
    assert c.dns_search == ["example.org"]
    assert c.ip4.dns_match == IP4("192.0.2.1")
    assert c.ip6.dns_host == IP6("2001:db8::35")


def test_dns_none_clears_earlier_ones():
    c, _ = parse("-D", "192.0.2.53", "--dns-host", "192.0.2.35",
                 "-D", "none")
    assert c.no_dns and c.ip4.dns == [] and c.ip4.dns_host == IP4(0)
    c, _ = parse("-D", "none", "-D", "192.0.2.53")
    assert not c.no_dns and c.ip4.dns == [IP4("192.0.2.53")]


def test_dns_keeps_three_resolvers_per_version():
    args = []
    for i in range(5):
        args += ["-D", "192.0.2.%d" % (i + 1)]
    c, _ = parse(*args)
    assert c.ip4.dns == [IP4("192.0.2.1"), IP4("192.0.2.2"),
                         IP4("192.0.2.3")]


def test_search_list_limit(capsys):
    args = []
    for i in range(6):
        args += ["-S", "d%d.example" % i]
    c, _ = parse(*args)
    assert len(c.dns_search) == 6
    code, err = parse_fails(capsys, *(args + ["-S", "seven.example"]))
    assert (code, err) == (1, "Cannot use DNS search domain seven.example\n")


def test_search_none():
    c, _ = parse("-S", "a.example", "-S", "none")
    assert c.no_dns_search and c.dns_search == []


@pytest.mark.parametrize("args,msg", [
    (("-D", "dns.example"), "Cannot use DNS address dns.example"),
    (("--dns-forward", "127.0.0.1"),
     "Invalid DNS forwarding address: 127.0.0.1"),
    (("--dns-forward", "::"), "Invalid DNS forwarding address: ::"),
    (("--dns-host", "255.255.255.255"),
     "Invalid host nameserver address: 255.255.255.255"),
])
def test_dns_refused(capsys, args, msg):
    assert parse_fails(capsys, *args) == (1, msg + "\n")


def test_map_host_loopback_and_guest_addr():
    c, st = parse("--map-host-loopback", "192.0.2.2",
                  "--map-guest-addr", "2001:db8::2")
    assert c.ip4.map_host_loopback == IP4("192.0.2.2")
    assert c.ip6.map_guest_addr == IP6("2001:db8::2")
    assert not st.no_map_gw
    _, st = parse("--map-host-loopback", "none")
    assert st.no_map_gw
    _, st = parse("--no-map-gw")
    assert st.no_map_gw


@pytest.mark.parametrize("arg", ["127.0.0.1", "::1", "224.0.0.1", "x"])
def test_map_host_loopback_refused(capsys, arg):
    assert parse_fails(capsys, "--map-host-loopback", arg) == \
        (1, "Invalid address to remap to host: %s\n" % arg)


def test_outbound_addresses():
    c, _ = parse("-o", "192.0.2.3", "-o", "2001:db8::3")
    assert c.ip4.addr_out == IP4("192.0.2.3")
    assert c.ip6.addr_out == IP6("2001:db8::3")


@pytest.mark.parametrize("arg", ["::ffff:192.0.2.3", "::192.0.2.3",
                                 "ff02::1", "224.0.0.1", "0.0.0.0"])
def test_outbound_refused(capsys, arg):
    assert parse_fails(capsys, "-o", arg) == \
        (1, "Invalid or redundant outbound address: %s\n" % arg)


def test_interface_name_must_exist(capsys):
    _, st = parse("-i", "lo")
    assert st.ifi4 == st.ifi6 == 1
    code, err = parse_fails(capsys, "-i", "nosuchif0")
    assert code == 1
    assert err.startswith("Invalid interface name nosuchif0: ")


@pytest.mark.parametrize("args,msg", [
    (("-I", "a" * 16), "Invalid interface name: " + "a" * 16),
    (("--outbound-if4", ""), "Invalid interface name: "),
    (("-H", "h" * 254), "Invalid hostname: " + "h" * 254),
    (("--fqdn", "f" * 254), "Invalid FQDN: " + "f" * 254),
    (("--log-size", "4096"), "Invalid --log-size: 4096"),
    (("-F", "x"), "Invalid --fd: x"),
])
def test_length_and_value_limits(capsys, args, msg):
    assert parse_fails(capsys, *args) == (1, msg + "\n")


def test_stats_needs_foreground_first(capsys):
    c, _ = parse("-f", "--stats", "5")
    assert c.stats == 5
    assert parse_fails(capsys, "--stats", "5", "-f") == \
        (1, "Can't display statistics if not running in foreground\n")


def test_forwarding_options_kept_in_order():
    _, st = parse("-t", "22", "-u", "53", "-T", "auto", "-U", "none",
                  "-t", "80")
    assert st.fwd_opts == [("t", "22"), ("u", "53"), ("T", "auto"),
                           ("U", "none"), ("t", "80")]


def test_passt_accepts_tcp_and_udp_ports():
    _, st = parse("-t", "22", "-u", "53", mode=MODE_PASST)
    assert st.fwd_opts == [("t", "22"), ("u", "53")]


# Mode-specific options

@pytest.mark.parametrize("args,msg", [
    (("-T", "22"), "-T is for pasta mode only"),
    (("-U", "22"), "-U is for pasta mode only"),
    (("-I", "eth0"), "-I is for pasta mode only"),
    (("--userns", "/proc/1/ns/user"), "--userns is for pasta mode only"),
    (("--netns", "x"), "--netns is for pasta mode only"),
    (("--netns-only",), "--netns-only is for pasta mode only"),
    (("--ns-mac-addr", "02:00:00:00:00:01"),
     "--ns-mac-addr is for pasta mode only"),
    (("--dhcp-dns",), "--dhcp-dns is for pasta mode only"),
    (("--dhcp-search",), "--dhcp-search is for pasta mode only"),
    (("--no-netns-quit",), "--no-netns-quit is for pasta mode only"),
    (("--config-net",), "--config-net is for pasta mode only"),
    (("--host-lo-to-ns-lo",), "--host-lo-to-ns-lo is for pasta mode only"),
    (("--splice-only",), "--splice-only is for pasta mode only"),
    (("--no-tap",), "--no-tap is for pasta mode only"),
])
def test_pasta_only_options_refused_by_passt(capsys, args, msg):
    assert parse_fails(capsys, *args, mode=MODE_PASST) == (1, msg + "\n")


def test_no_copy_options_refused_by_passt(capsys):
    code, err = parse_fails(capsys, "--no-copy-routes", mode=MODE_PASST)
    assert (code, err) == (1, "--no-copy-routes is for pasta mode only\n")


@pytest.mark.parametrize("args,msg", [
    (("-1",), "--one-off is for passt mode only"),
    (("--no-dhcp-dns",), "--no-dhcp-dns is for passt mode only"),
    (("--no-dhcp-search",), "--no-dhcp-search is for passt mode only"),
    (("-s", "/tmp/x"), "-s is for passt / vhost-user mode only"),
])
def test_passt_only_options_refused_by_pasta(capsys, args, msg):
    assert parse_fails(capsys, *args) == (1, msg + "\n")


@pytest.mark.parametrize("args,spelled", [
    (("--vhost-user",), "--vhost-user"),
    (("--print-capabilities",), "--print-capabilities"),
    (("--repair-path", "/tmp/r"), "--repair-path"),
    (("--migrate-exit",), "--migrate-exit"),
    (("--migrate-no-linger",), "--migrate-no-linger"),
    (("-c", "/tmp/conf"), "-c"),
    (("--conf-path", "/tmp/conf"), "--conf-path"),
])
@pytest.mark.parametrize("mode", [MODE_PASTA, MODE_PASST])
def test_unsupported_options_say_so(capsys, args, spelled, mode):
    code, err = parse_fails(capsys, *args, mode=mode)
    assert code == 1
    assert err.startswith("%s is not supported by this port" % spelled)
    assert len(err.splitlines()) == 1


def test_repair_path_none_is_accepted():
    c, _ = parse("--repair-path", "none", mode=MODE_PASST)
    assert c.repair_path == "none"


def test_config_net_conditions(capsys):
    c, _ = parse("--config-net", "--no-copy-routes", "--no-copy-addrs")
    assert c.pasta_conf_ns and c.ip4.no_copy_routes and c.ip6.no_copy_addrs
    code, err = parse_fails(capsys, "--no-copy-routes")
    assert code == 1
    assert err.splitlines()[-1] == "--no-copy-routes needs --config-net"
    code, err = parse_fails(capsys, "--no-copy-addrs")
    assert err.splitlines()[-1] == "--no-copy-addrs needs --config-net"


def test_host_lo_to_ns_lo_refuses_no_splice(capsys):
    assert parse_fails(capsys, "--host-lo-to-ns-lo", "--no-splice") == \
        (1, "--host-lo-to-ns-lo is incompatible with --no-splice\n")


def test_passt_never_splices():
    c, _ = parse(mode=MODE_PASST)
    assert c.no_splice


# Loopback-only mode

@pytest.mark.parametrize("opt", ["--splice-only", "--no-tap"])
def test_splice_only_implies_loopback_settings(opt):
    c, _ = parse(opt)
    assert c.splice_only and c.host_lo_to_ns_lo and c.no_icmp
    assert c.no_dns and c.no_dns_search
    assert c.no_dhcp and c.no_dhcpv6 and c.no_ndp and c.no_ra


@pytest.mark.parametrize("args,other", [
    (("--no-splice",), "--no-splice"),
    (("-I", "eth0"), "-I/--ns-ifname"),
    (("--ns-ifname", "eth0"), "-I/--ns-ifname"),
    (("--ns-mac-addr", "02:00:00:00:00:01"), "--ns-mac-addr"),
    (("-i", "lo"), "-i/--interface"),
    (("--outbound-if4", "lo"), "--outbound-if4"),
    (("--outbound-if6", "lo"), "--outbound-if6"),
])
@pytest.mark.parametrize("opt", ["--splice-only", "--no-tap"])
def test_splice_only_conflicts(capsys, opt, args, other):
    for argv in ((opt,) + args, args + (opt,)):
        code, err = parse_fails(capsys, *argv)
        assert (code, err) == (1, "%s is incompatible with %s\n" %
                               (opt, other))


def test_splice_only_allows_config_net_and_ports():
    c, st = parse("--splice-only", "--config-net", "-t", "8080",
                  "-T", "9090")
    assert c.splice_only and c.pasta_conf_ns
    assert st.fwd_opts == [("t", "8080"), ("T", "9090")]


def test_no_tap_offload_is_pasta_only(capsys):
    c, _ = parse("--no-tap-offload")
    assert c.no_tap_offload and not c.splice_only
    c, _ = parse("--no-tap")
    assert c.splice_only and not c.no_tap_offload
    assert parse_fails(capsys, "--no-tap-offload", mode=MODE_PASST) == \
        (1, "--no-tap-offload is for pasta mode only\n")


# Namespace arguments

def test_pid_argument_names_both_namespaces():
    _, st = parse("4242")
    assert st.netns == "/proc/4242/ns/net"
    assert st.userns == "/proc/4242/ns/user"
    assert not st.netns_only


def test_pid_with_netns_only_joins_no_user_namespace():
    _, st = parse("--netns-only", "4242")
    assert st.netns == "/proc/4242/ns/net" and st.netns_only


def test_netns_name_and_path():
    _, st = parse("--netns", "blue")
    assert st.netns == "/run/netns/blue" and st.netns_only
    _, st = parse("--netns", "/proc/1/ns/net", "--userns",
                  "/proc/1/ns/user")
    assert st.netns == "/proc/1/ns/net" and not st.netns_only


def test_command_is_not_a_pid():
    _, st = parse("ip", "link")
    assert st.netns == "" and st.argv[st.optind:] == ["ip", "link"]
    _, st = parse("123abc")
    assert st.netns == ""


@pytest.mark.parametrize("args,msg", [
    (("--netns", "blue", "sh"), "Both --netns and PID or command given"),
    (("--netns", "blue", "4242"), "Both --netns and PID or command given"),
    (("99999999999",), "Invalid PID 99999999999"),
])
def test_namespace_arguments_refused(capsys, args, msg):
    assert parse_fails(capsys, *args) == (1, msg + "\n")


def test_passt_refuses_extra_arguments(capsys):
    assert parse_fails(capsys, "foo", mode=MODE_PASST) == \
        (1, "Extra non-option argument: foo\n")


# --runas

def test_runas_numbers_and_names():
    import pwd

    assert conf.conf_runas("1000") == (1000, 1000)
    assert conf.conf_runas("1000:2000") == (1000, 2000)
    nobody = pwd.getpwnam("nobody")
    assert conf.conf_runas("nobody") == (nobody.pw_uid, nobody.pw_gid)
    assert conf.conf_runas("no-such-user-here") is None
    assert conf.conf_runas("root") is None       # by name: refused


# resolv.conf

def _resolv(tmp_path, text):
    """Write a resolv.conf with ``text``; return its path."""
    path = tmp_path / "resolv.conf"
    path.write_text(text)
    return str(path)


def test_get_dns_reads_resolv_conf(tmp_path):
    c = Ctx()
    c.ifi4 = c.ifi6 = 2
    path = _resolv(tmp_path, "search a.example b.example\n"
                   "nameserver 192.0.2.53\n"
                   "nameserver fe80::53%eth0\n"
                   "nameserver 2001:db8::53\n")
    conf.get_dns(c, path)
    assert c.ip4.dns == [IP4("192.0.2.53")]
    assert c.ip4.dns_host == IP4("192.0.2.53")
    assert c.ip6.dns == [IP6("fe80::53"), IP6("2001:db8::53")]
    assert c.dns_search == ["a.example", "b.example"]


def test_get_dns_maps_loopback_resolver_to_host(tmp_path):
    c = Ctx()
    c.ifi4 = 2
    c.ip4.map_host_loopback = IP4("198.51.100.1")
    conf.get_dns(c, _resolv(tmp_path, "nameserver 127.0.0.53\n"))
    assert c.ip4.dns == [IP4("198.51.100.1")]
    assert c.ip4.dns_match == IP4("198.51.100.1")
    assert c.ip4.dns_host == IP4("127.0.0.53")


def test_get_dns_drops_unreachable_loopback_resolver(tmp_path, capsys):
    c = Ctx()
    c.ifi4 = 2
    c.no_dhcp_dns = True
    conf.get_dns(c, _resolv(tmp_path, "nameserver 127.0.0.53\n"))
    assert c.ip4.dns == [] and c.ip4.dns_host == IP4("127.0.0.53")
    assert "Couldn't get any nameserver address" in capsys.readouterr().err


def test_get_dns_leaves_given_values_alone(tmp_path):
    c = Ctx()
    c.ifi4 = 2
    c.ifi6 = 0
    c.ip4.dns = [IP4("192.0.2.1")]
    c.no_dns_search = True
    conf.get_dns(c, _resolv(tmp_path, "nameserver 192.0.2.53\n"
                            "search x.example\n"))
    assert c.ip4.dns == [IP4("192.0.2.1")] and c.dns_search == []


# Through the command, as a user runs it

@pytest.fixture(scope="module")
def ns_bed():
    """One test bed for the command-line runs of this module."""
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root (ip netns add)")
    from bed import Bed

    b = Bed()
    try:
        yield b
    finally:
        b.close()


def _run_pasta(ns_bed, args, mode="pasta", timeout=15):
    """Run our pasta (or passt, via a one-line driver) in the bed's host
    namespace; return (CompletedProcess, seconds taken)."""
    if mode == "pasta":
        argv = [sys.executable, "-m", "pasta"] + list(args)
    else:
        argv = [sys.executable, "-c",
                "import sys; from pasta.passt import main; "
                "sys.exit(main(['passt'] + sys.argv[1:]))"] + list(args)
    start = time.monotonic()
    r = ns_bed.run(ns_bed.host, argv, timeout=timeout)
    return r, time.monotonic() - start


def _leftovers(ns_bed):
    """PIDs still running in the bed's host namespace."""
    out = subprocess.run(["ip", "netns", "pids", ns_bed.host],
                         capture_output=True, text=True, timeout=10).stdout
    return out.split()


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "unrecognized option '--bogus'"),
    (["-m", "10"], "MTU 10 too small (min 68)"),
    (["-m", "70000"], "MTU 70000 too large (max 65521)"),
    (["-a", "999.1.1.1"], "Invalid guest address: 999.1.1.1"),
    (["--splice-only", "--no-splice"],
     "--splice-only is incompatible with --no-splice"),
    (["--no-tap", "-I", "eth0"],
     "--no-tap is incompatible with -I/--ns-ifname"),
    (["--no-copy-routes"], "--no-copy-routes needs --config-net"),
    (["--vhost-user"], "--vhost-user is not supported by this port"),
    (["-1"], "--one-off is for passt mode only"),
])
def test_command_line_errors_exit_quickly(ns_bed, args, message):
    r, took = _run_pasta(ns_bed, args + ["--", "true"])
    assert r.returncode == 1
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert took < 10
    assert _leftovers(ns_bed) == []


def test_command_help_and_version(ns_bed):
    r, _ = _run_pasta(ns_bed, ["--help"])
    assert r.returncode == 0 and r.stdout.startswith("Usage: pasta ")
    assert r.stderr == ""
    r, _ = _run_pasta(ns_bed, ["--version"])
    assert r.returncode == 0 and r.stdout.startswith("pasta ")


def test_passt_command_errors(ns_bed):
    r, _ = _run_pasta(ns_bed, ["-T", "22"], mode="passt")
    assert (r.returncode, r.stderr) == (1, "-T is for pasta mode only\n")
    r, _ = _run_pasta(ns_bed, ["--splice-only"], mode="passt")
    assert (r.returncode, r.stderr) == \
        (1, "--splice-only is for pasta mode only\n")


# Host look-ups, in the bed's host namespace

_HOST_DRIVER = r"""
import json, sys
from pasta import conf, log
from pasta.passt import Ctx, MODE_PASTA
c = Ctx()
c.mode = MODE_PASTA
st = conf.conf_parse(c, ["pasta"] + sys.argv[1:])
conf.conf_log(c, st)
conf.conf_host(c, st)
conf.conf_fwd(c, st)
conf.conf_finish(c, st)
if not c.quiet:
    conf.conf_print(c)
print(json.dumps({
    "ifi4": c.ifi4, "ifi6": c.ifi6, "pasta_ifn": c.pasta_ifn,
    "addr4": str(c.ip4.addr), "prefix4": c.ip4.prefix_len,
    "gw4": str(c.ip4.guest_gw), "map4": str(c.ip4.map_host_loopback),
    "addr6": str(c.ip6.addr), "gw6": str(c.ip6.guest_gw),
    "ll6": str(c.ip6.our_tap_ll), "map6": str(c.ip6.map_host_loopback),
    "dns4": [str(a) for a in c.ip4.dns], "dns6": [str(a) for a in c.ip6.dns],
    "no_dhcp": c.no_dhcp, "no_ndp": c.no_ndp, "no_dhcpv6": c.no_dhcpv6,
    "mtu": c.mtu, "rules": {str(int(k)): len(v.rules)
                            for k, v in c.fwd.items()},
}))
"""


def _host_conf(bed, *args):
    """Run the configuration short of the namespace in the bed's host
    namespace; return (summary dict, stderr)."""
    r = bed.run(bed.host, [sys.executable, "-c", _HOST_DRIVER] + list(args),
                timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1]), r.stderr


def test_host_template_interface(bed):
    got, err = _host_conf(bed, "-f")
    assert got["pasta_ifn"] == "h0" and got["ifi4"] > 0 and got["ifi6"] > 0
    assert (got["addr4"], got["prefix4"], got["gw4"]) == \
        (bed.HOST4, 24, bed.GW4)
    assert (got["addr6"], got["gw6"]) == (bed.HOST6, bed.GW6)
    assert got["map4"] == bed.GW4 and got["map6"] == bed.GW6
    assert ipaddress.IPv6Address(got["ll6"]).is_link_local
    assert not got["no_dhcp"] and not got["no_ndp"]
    assert got["rules"] != {}
    assert "Template interface: h0 (IPv4), h0 (IPv6)" in err
    assert "    router: %s" % bed.GW4 in err


def test_host_options_override_template(bed):
    got, _ = _host_conf(bed, "-a", "192.0.2.2/28", "-g", "192.0.2.1",
                        "-4", "-m", "1280", "--no-map-gw")
    assert (got["addr4"], got["prefix4"], got["gw4"]) == \
        ("192.0.2.2", 28, "192.0.2.1")
    assert got["ifi6"] == 0 and got["no_ndp"] and got["no_dhcpv6"]
    assert got["map4"] == "0.0.0.0" and got["mtu"] == 1280


def test_host_local_mode_without_template(bed):
    bed.run(bed.host, ["ip", "link", "set", "h0", "down"], check=True)
    got, err = _host_conf(bed)
    assert got["ifi4"] == -1 and got["ifi6"] == -1
    assert (got["addr4"], got["prefix4"], got["gw4"]) == \
        ("169.254.2.1", 16, "169.254.2.2")
    assert got["gw6"] == "fe80::1" and got["map4"] == "169.254.2.2"
    assert got["pasta_ifn"] == "tap0"
    assert not got["no_dhcp"] and not got["no_ndp"]
    assert "IPv4: no external interface as template, use local mode" in err


def test_host_splice_only_skips_template(bed):
    got, err = _host_conf(bed, "--splice-only")
    assert got["addr4"] == "0.0.0.0" and got["map4"] == "0.0.0.0"
    assert got["no_dhcp"] and got["no_ndp"] and got["no_dhcpv6"]
    assert "Namespace interface" not in err
    assert "local mode" not in err


def test_host_outbound_interface_must_be_usable(bed):
    bed.run(bed.host, ["ip", "link", "add", "d0", "type", "veth", "peer",
                       "name", "d1"], check=True)
    r = bed.run(bed.host, [sys.executable, "-c", _HOST_DRIVER,
                           "--outbound-if4", "d0"], timeout=30)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == "External interface not usable"


def test_log_file_receives_messages(bed):
    logfile = os.path.join(bed.tmp, "pasta.log")
    _host_conf(bed, "-l", logfile)
    with open(logfile) as f:
        text = f.read()
    assert "Template interface: h0" in text
