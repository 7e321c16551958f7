# SPDX-License-Identifier: GPL-2.0-or-later
"""Shared pytest set-up: tests/ on sys.path, the ``bed`` fixture, markers.

``from bed import Bed`` works in every test module because this directory
is put on ``sys.path`` here. The function-scoped ``bed`` fixture builds a
fresh two-namespace bed (see bed.py) and closes it after the test, pass
or fail. Tests that need root or Debian's reference pasta are skipped
with a reason when these are missing: use the markers ``needs_root`` and
``needs_ref_pasta`` from bed.py (``from bed import needs_ref_pasta``).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bed as _bed  # noqa: E402  (needs the path above)


@pytest.fixture
def bed():
    """A fresh two-namespace test bed, closed after the test."""
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root (ip netns add)")
    b = _bed.Bed()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def dns_bed(bed):
    """A test bed whose world runs dnsmasq (see Bed.dns_world)."""
    bed.dns_world()
    return bed
