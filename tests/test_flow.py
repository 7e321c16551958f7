# SPDX-License-Identifier: GPL-2.0-or-later
"""The flow table: allocation, states, lookup by hash, limits.

Pure unit tests: no sockets, no namespaces.
"""

import socket

import pytest

from pasta import flow
from pasta.inany import inany_from_v4, inany_from_ip
from pasta.passt import Ctx
from pasta.pif import PIF_HOST, PIF_TAP

A = socket.inet_aton("192.0.2.2")
B = socket.inet_aton("203.0.113.10")


class DemoConn(flow.Flow):
    __slots__ = ("extra",)

    def __init__(self):
        flow.Flow.__init__(self)
        self.extra = 42


@pytest.fixture
def c(monkeypatch):
    c = Ctx()
    c.hash_secret = bytes(range(16))
    flow.flow_init(c)
    yield c
    flow.flow_init(c)


def _new(c, sport=40000, typed=True):
    f = flow.flow_alloc()
    flow.flow_initiate_af(f, PIF_TAP, socket.AF_INET, A, sport, B, 80)
    flow.flow_target_af(f, PIF_HOST, socket.AF_INET, None, 0, B, 80)
    if typed:
        f = flow.flow_set_type(f, flow.FLOW_TCP, DemoConn)
        flow.flow_activate(f)
    return f


def test_allocation_takes_lowest_free_index(c):
    f0 = _new(c, 1)
    f1 = _new(c, 2)
    f2 = _new(c, 3)
    assert (f0.idx, f1.idx, f2.idx) == (0, 1, 2)
    assert flow.flow_count() == 3


def test_set_type_replaces_entry_keeping_common_fields(c):
    f = _new(c)
    assert isinstance(f, DemoConn) and f.extra == 42
    assert flow.FLOW(f.idx) is f
    assert f.side[flow.INISIDE].eport == 40000
    assert f.pif == [PIF_TAP, PIF_HOST]
    assert f.state == flow.FLOW_STATE_ACTIVE


def test_cancel_frees_the_entry_for_reuse(c):
    f = flow.flow_alloc()
    flow.flow_initiate_af(f, PIF_TAP, socket.AF_INET, A, 1, B, 2)
    flow.flow_alloc_cancel(f)
    assert flow.flow_count() == 0
    assert flow.flow_new_entry is None
    assert _new(c).idx == 0


def test_only_one_entry_may_be_under_construction(c):
    flow.flow_alloc()
    with pytest.raises(AssertionError):
        flow.flow_alloc()


def test_lookup_by_addresses_finds_the_side(c):
    f = _new(c)
    sidx = flow.flow_sidx(f, flow.INISIDE)
    h = flow.flow_hash_insert(c, sidx)
    assert 0 <= h < 1 << 64
    got = flow.flow_lookup_af(c, socket.IPPROTO_TCP, PIF_TAP,
                              socket.AF_INET, A, B, 40000, 80)
    assert got == sidx
    assert flow.flow_at_sidx(got) is f
    assert flow.pif_at_sidx(got) == PIF_TAP
    # Another port, protocol or pif: not found
    assert flow.flow_lookup_af(c, socket.IPPROTO_TCP, PIF_TAP,
                               socket.AF_INET, A, B, 40001, 80) == \
        flow.FLOW_SIDX_NONE
    assert flow.flow_lookup_af(c, socket.IPPROTO_UDP, PIF_TAP,
                               socket.AF_INET, A, B, 40000, 80) == \
        flow.FLOW_SIDX_NONE
    flow.flow_hash_remove(c, sidx)
    assert flow.flow_lookup_af(c, socket.IPPROTO_TCP, PIF_TAP,
                               socket.AF_INET, A, B, 40000, 80) == \
        flow.FLOW_SIDX_NONE


def test_lookup_by_socket_address(c):
    f = _new(c)
    tgt = f.side[flow.TGTSIDE]
    tgt.oaddr = inany_from_ip("198.51.100.2")
    tgt.oport = 33333
    sidx = flow.flow_sidx(f, flow.TGTSIDE)
    flow.flow_hash_insert(c, sidx)
    got = flow.flow_lookup_sa(c, socket.IPPROTO_TCP, PIF_HOST,
                              socket.AF_INET, ("203.0.113.10", 80),
                              inany_from_ip("198.51.100.2"), 33333)
    assert got == sidx
    assert flow.flow_sidx_opposite(sidx) == flow.flow_sidx(f, flow.INISIDE)


def test_keyed_hash_depends_on_the_secret(c):
    f = _new(c)
    side = f.side[flow.INISIDE]
    h1 = flow.flow_hash(c, socket.IPPROTO_TCP, PIF_TAP, side)
    c.hash_secret = bytes(16)
    h2 = flow.flow_hash(c, socket.IPPROTO_TCP, PIF_TAP, side)
    assert h1 != h2


def test_table_full_returns_none_not_a_crash(c, monkeypatch):
    monkeypatch.setattr(flow, "FLOW_MAX", 4)
    flows = [_new(c, i + 1) for i in range(4)]
    assert flow.flow_alloc() is None
    assert len(flows) == 4


def test_deferred_handler_frees_closed_flows_and_reuses_slots(
        c, monkeypatch):
    closed = set()

    def defer(c_, f, now):
        return f.idx in closed
    monkeypatch.setattr(flow, "_defer_handlers",
                        {flow.FLOW_TCP: (defer, None)})
    monkeypatch.setattr(flow, "FLOW_DEFER_MARKED_TYPES", frozenset())
    fs = [_new(c, i + 1) for i in range(3)]
    sidx = flow.flow_sidx(fs[1], flow.INISIDE)
    flow.flow_hash_insert(c, sidx)
    closed.add(1)
    flow.flow_defer_handler(c, 0.0)
    assert flow.flow_count() == 2
    assert flow.FLOW(1) is None
    # Its hash entry went with it
    assert flow.flow_lookup_af(c, socket.IPPROTO_TCP, PIF_TAP,
                               socket.AF_INET, A, B, 2, 80) == \
        flow.FLOW_SIDX_NONE
    closed.clear()
    assert _new(c, 9).idx == 1


def test_marked_types_are_scanned_only_when_marked_or_on_timer(
        c, monkeypatch):
    seen = []

    def defer(c_, f, now):
        seen.append(f.idx)
        return False
    monkeypatch.setattr(flow, "_defer_handlers",
                        {flow.FLOW_TCP: (defer, None)})
    f = _new(c)
    flow.flow_defer_handler(c, 100.0)      # timer run: scanned
    flow.flow_defer_handler(c, 100.1)      # not marked: skipped
    flow.flow_defer_mark(f)
    flow.flow_defer_handler(c, 100.2)      # marked: scanned
    assert seen == [0, 0]


def test_flowside_equality():
    a = flow.FlowSide(inany_from_v4(A), inany_from_v4(B), 1, 2)
    b = flow.FlowSide(inany_from_v4(A), inany_from_v4(B), 1, 2)
    assert a == b
    b.eport = 3
    assert a != b
