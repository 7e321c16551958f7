# SPDX-License-Identifier: GPL-2.0-or-later
"""The -t/-u/-T/-U specification language, parsed into forwarding rules.

Pure tests: no sockets, no namespaces.  Each test parses what a user
would type and checks the resulting rules (listening address, interface,
ports, target) or the error message and exit status.
"""

import socket

import pytest

from pasta import fwd_rule
from pasta.fwd_rule import (FWD_CAP_ALL, FWD_CAP_IFNAME, FWD_CAP_IPV4,
                            FWD_CAP_IPV6, FWD_CAP_SCAN, FWD_DUAL_STACK_ANY,
                            FWD_SCAN, FWD_WEAK, FwdTable, fwd_rule_fmt,
                            fwd_rule_parse)
from pasta.inany import (inany_any4, inany_any6, inany_from_ip,
                         inany_loopback4, inany_loopback6)

TCP = socket.IPPROTO_TCP
UDP = socket.IPPROTO_UDP


@pytest.fixture(autouse=True)
def fixed_ephemeral(monkeypatch):
    """Pretend the host's ephemeral range is 60000-65535."""
    monkeypatch.setattr(fwd_rule, "fwd_ephemeral_min", 60000)
    monkeypatch.setattr(fwd_rule, "fwd_ephemeral_max", 65535)
    monkeypatch.setattr(fwd_rule, "_ephemeral_probed", True)


def parse(*specs, opt="t", caps=FWD_CAP_ALL, fwd=None):
    fwd = fwd or FwdTable(caps)
    for s in specs:
        fwd_rule_parse(opt, False, s, fwd)
    return fwd


def ranges(fwd):
    """(first, last, to) of each rule."""
    return [(r.first, r.last, r.to) for r in fwd.rules]


def die_message(capsys, *specs, opt="t", caps=FWD_CAP_ALL):
    with pytest.raises(SystemExit) as e:
        parse(*specs, opt=opt, caps=caps)
    assert e.value.code == 1
    return capsys.readouterr().err


def test_single_port():
    fwd = parse("22")
    assert ranges(fwd) == [(22, 22, 22)]
    r = fwd.rules[0]
    assert r.proto == TCP
    assert r.flags == FWD_DUAL_STACK_ANY
    assert r.addr == inany_any6
    assert r.ifname == ""


def test_udp_option_gives_udp_rule():
    assert parse("53", opt="u").rules[0].proto == UDP


def test_list_and_range():
    assert ranges(parse("22,25,80-82")) == [(22, 22, 22), (25, 25, 25),
                                            (80, 82, 80)]


def test_translated_port():
    assert ranges(parse("22:23")) == [(22, 22, 23)]


def test_translated_range():
    fwd = parse("22-80:32-90")
    assert ranges(fwd) == [(22, 80, 32)]
    assert fwd.rules[0].tport(80) == 90


def test_exclusion_inside_range():
    assert ranges(parse("5-25,~10-20")) == [(5, 9, 5), (21, 25, 21)]


def test_exclusion_applies_whatever_its_position():
    assert ranges(parse("~10-20,5-25")) == [(5, 9, 5), (21, 25, 21)]


def test_exclusion_keeps_translation_offset():
    assert ranges(parse("100-110:200-210,~105")) == [(100, 104, 200),
                                                     (106, 110, 206)]


def test_only_exclusions_forward_everything_else():
    fwd = parse("~25")
    assert ranges(fwd) == [(1, 24, 1), (26, 59999, 26)]
    assert all(r.flags & FWD_WEAK for r in fwd.rules)


def test_all_skips_ephemeral_ports_and_is_weak():
    fwd = parse("all")
    assert ranges(fwd) == [(1, 59999, 1)]
    assert fwd.rules[0].flags == FWD_DUAL_STACK_ANY | FWD_WEAK


def test_all_with_exclusion():
    assert ranges(parse("all,~22")) == [(1, 21, 1), (23, 59999, 23)]


def test_auto_is_scan_over_all_ports():
    fwd = parse("auto")
    assert ranges(fwd) == [(1, 59999, 1)]
    assert fwd.rules[0].flags == FWD_DUAL_STACK_ANY | FWD_WEAK | FWD_SCAN


def test_auto_restricted_to_ports():
    fwd = parse("80-82,auto")
    assert ranges(fwd) == [(80, 82, 80)]
    assert fwd.rules[0].flags & FWD_SCAN
    assert not fwd.rules[0].flags & FWD_WEAK


def test_auto_needs_pasta(capsys):
    msg = die_message(capsys, "auto", caps=FWD_CAP_ALL & ~FWD_CAP_SCAN)
    assert "'auto' port forwarding is only allowed for pasta" in msg


def test_none_adds_nothing():
    assert parse("none").rules == []


def test_none_after_rules_is_refused(capsys):
    msg = die_message(capsys, "22", "none")
    assert "-t none conflicts with previous options" in msg


def test_none_for_other_protocol_is_fine():
    fwd = FwdTable(FWD_CAP_ALL)
    fwd_rule_parse("u", False, "53", fwd)
    fwd_rule_parse("t", False, "none", fwd)
    assert len(fwd.rules) == 1


def test_bound_ipv4_address():
    fwd = parse("192.0.2.1/22")
    r = fwd.rules[0]
    assert r.addr == inany_from_ip("192.0.2.1")
    assert r.flags == 0
    assert ranges(fwd) == [(22, 22, 22)]


def test_bound_address_and_interface():
    r = parse("192.0.2.1%eth0/22").rules[0]
    assert r.addr == inany_from_ip("192.0.2.1")
    assert r.ifname == "eth0"


def test_interface_only():
    r = parse("%eth0/22").rules[0]
    assert r.ifname == "eth0"
    assert r.flags & FWD_DUAL_STACK_ANY


def test_star_address():
    r = parse("*/22").rules[0]
    assert r.flags & FWD_DUAL_STACK_ANY


def test_ipv6_loopback_auto():
    fwd = parse("::1/auto")
    r = fwd.rules[0]
    assert r.addr == inany_loopback6
    assert r.flags & FWD_SCAN
    assert ranges(fwd) == [(1, 59999, 1)]


def test_bracketed_ipv6_address():
    assert parse("[2001:db8::1]/80").rules[0].addr == \
        inany_from_ip("2001:db8::1")


def test_target_address():
    r = parse("0.0.0.0/80:192.0.2.7").rules[0]
    assert r.taddr == inany_from_ip("192.0.2.7")
    assert (r.first, r.last, r.to) == (80, 80, 80)


def test_target_address_and_port():
    r = parse("0.0.0.0/80:192.0.2.7/8080").rules[0]
    assert r.taddr == inany_from_ip("192.0.2.7")
    assert (r.first, r.to) == (80, 8080)


def test_all_with_target_address():
    r = parse("0.0.0.0/all:192.0.2.7").rules[0]
    assert r.taddr == inany_from_ip("192.0.2.7")


def test_dual_stack_target_address_refused(capsys):
    msg = die_message(capsys, "80:192.0.2.7")
    assert "Dual stack forward to IPv4 address 192.0.2.7 unsupported" in msg


def test_family_mismatch_target_refused(capsys):
    msg = die_message(capsys, "::1/80:192.0.2.7")
    assert "unsupported" in msg


def test_options_add_up():
    fwd = parse("22", "80-81", "443")
    assert ranges(fwd) == [(22, 22, 22), (80, 81, 80), (443, 443, 443)]


def test_tcp_and_udp_same_port_coexist():
    fwd = FwdTable(FWD_CAP_ALL)
    fwd_rule_parse("t", False, "53", fwd)
    fwd_rule_parse("u", False, "53", fwd)
    assert [r.proto for r in fwd.rules] == [TCP, UDP]


def test_overlap_refused(capsys):
    msg = die_message(capsys, "20-30", "25")
    assert "Forwarding configuration conflict" in msg
    assert "'25'" in msg


def test_different_addresses_do_not_conflict():
    fwd = parse("192.0.2.1/80", "192.0.2.2/80")
    assert len(fwd.rules) == 2


@pytest.mark.parametrize("spec", ["70000", "abc", "30-20", "22-80:32-91",
                                  "22:", "22,", ",22", "22-", "~", "1-2-3",
                                  "22:abc", "all:", "22 ", "-5", "+5",
                                  "22:23:24", "80:70000", "65536"])
def test_bad_spec_refused_quoting_it(capsys, spec):
    msg = die_message(capsys, spec)
    assert "Invalid port specifier '%s'" % spec in msg


def test_port_zero_refused_quoting_spec(capsys):
    msg = die_message(capsys, "0")
    assert "attempts to map from port 0" in msg
    assert "'0'" in msg


def test_translation_to_port_zero_refused(capsys):
    msg = die_message(capsys, "80:0")
    assert "attempts to map to port 0" in msg


def test_translation_past_65535_refused(capsys):
    msg = die_message(capsys, "100-200:65500-65600")
    assert "Invalid port specifier" in msg


def test_bad_address_quoted(capsys):
    msg = die_message(capsys, "192.0.2.300/22")
    assert "Invalid port specifier '192.0.2.300/22'" in msg


def test_interface_name_too_long(capsys):
    msg = die_message(capsys, "%abcdefghijklmnopq/22")
    assert "Invalid port specifier" in msg


def test_dot_interface_refused(capsys):
    msg = die_message(capsys, "%../22")
    assert "Invalid interface name: .." in msg


def test_ns_options_bind_to_lo():
    fwd = parse("8080", opt="T")
    r = fwd.rules[0]
    assert r.ifname == "lo"
    assert r.flags & FWD_DUAL_STACK_ANY


def test_ns_options_refuse_address(capsys):
    msg = die_message(capsys, "127.0.0.1/8080", opt="T")
    assert "Listening address not allowed for -T 127.0.0.1/8080" in msg


def test_ns_options_without_bindtodevice_use_loopbacks(capsys):
    fwd = parse("8080", opt="U", caps=FWD_CAP_ALL & ~FWD_CAP_IFNAME)
    assert [r.addr for r in fwd.rules] == [inany_loopback4, inany_loopback6]
    assert all(r.proto == UDP for r in fwd.rules)
    assert "SO_BINDTODEVICE unavailable" in capsys.readouterr().err


def test_interface_without_bindtodevice_refused(capsys):
    msg = die_message(capsys, "%eth0/22", caps=FWD_CAP_ALL & ~FWD_CAP_IFNAME)
    assert "Device binding for '-t %eth0/22' unsupported" in msg


def test_single_family_uses_its_any_address():
    fwd = parse("22", caps=FWD_CAP_ALL & ~FWD_CAP_IPV6)
    assert fwd.rules[0].addr == inany_any4
    assert not fwd.rules[0].flags & FWD_DUAL_STACK_ANY
    fwd = parse("22", caps=FWD_CAP_ALL & ~FWD_CAP_IPV4)
    assert fwd.rules[0].addr == inany_any6
    assert not fwd.rules[0].flags & FWD_DUAL_STACK_ANY


def test_disabled_family_address_refused(capsys):
    msg = die_message(capsys, "192.0.2.1/22",
                      caps=FWD_CAP_ALL & ~FWD_CAP_IPV4)
    assert "IPv4 forward, but IPv4 not enabled" in msg


def test_tcp_disabled_refused(capsys):
    from pasta.fwd_rule import FWD_CAP_TCP
    msg = die_message(capsys, "22", caps=FWD_CAP_ALL & ~FWD_CAP_TCP)
    assert "TCP not enabled" in msg


def test_delete_rule():
    fwd = parse("22", "80")
    fwd_rule_parse("t", True, "22", fwd)
    assert ranges(fwd) == [(80, 80, 80)]


def test_rule_format():
    assert fwd_rule_fmt(parse("22-80:32-90").rules[0]) == \
        "TCP [*]:22-80  =>  32-90 "
    assert fwd_rule_fmt(parse("::1/auto").rules[0]) == \
        "TCP [::1]:1-59999  =>  1-59999  (best effort) (auto-scan)"
    assert fwd_rule_fmt(parse("192.0.2.1%eth0/22").rules[0]) == \
        "TCP [192.0.2.1]%eth0:22  =>  22 "


def test_probe_ephemeral_reads_sysctl(monkeypatch, tmp_path):
    p = tmp_path / "range"
    p.write_text("32768\t60999\n")
    monkeypatch.setattr(fwd_rule, "PORT_RANGE_SYSCTL", str(p))
    fwd_rule.fwd_probe_ephemeral()
    assert (fwd_rule.fwd_ephemeral_min, fwd_rule.fwd_ephemeral_max) == \
        (32768, 60999)
    assert ranges(parse("all")) == [(1, 32767, 1), (61000, 65535, 61000)]


def test_rule_init_tables():
    from pasta.passt import Ctx, MODE_PASST, MODE_PASTA
    from pasta.pif import PIF_HOST, PIF_SPLICE
    c = Ctx()
    c.mode = MODE_PASTA
    c.ifi4, c.ifi6 = 2, 0
    fwd_rule.fwd_rule_init(c)
    assert set(c.fwd) == {PIF_HOST, PIF_SPLICE}
    assert c.fwd[PIF_HOST].caps & FWD_CAP_IPV4
    assert not c.fwd[PIF_HOST].caps & FWD_CAP_IPV6
    c.mode = MODE_PASST
    fwd_rule.fwd_rule_init(c)
    assert set(c.fwd) == {PIF_HOST}
    assert not c.fwd[PIF_HOST].caps & FWD_CAP_SCAN
    assert FWD_CAP_IPV6  # silence unused import checkers
