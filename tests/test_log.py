# SPDX-License-Identifier: GPL-2.0-or-later
"""The log file of -l/--log-size: it never grows past its size, keeps the
newest messages, and cuts at line boundaries."""

import os

import pytest

from pasta import log


@pytest.fixture
def logfile(tmp_path, monkeypatch):
    for name in ("_log_file", "_log_size", "_log_written", "log_level",
                 "log_debug", "log_conf_parsed", "log_stderr"):
        monkeypatch.setattr(log, name, getattr(log, name))
    path = str(tmp_path / "pasta.log")
    yield path
    if log._log_file is not None:
        os.close(log._log_file)


def test_log_file_stays_below_its_size_and_keeps_the_newest(logfile):
    log.logfile_init("pasta", logfile, 40960)
    log.__setlogmask(log.LOG_INFO)
    log.log_conf_done(False)

    for i in range(5000):
        log.info("message number %05d with some padding to fill it", i)

    data = open(logfile).read()
    assert os.path.getsize(logfile) < 40960
    assert data.endswith("message number 04999 with some padding to "
                         "fill it\n")
    lines = data.splitlines()
    assert all("message number" in line for line in lines)
    numbers = [int(line.split("number ")[1][:5]) for line in lines]
    assert numbers == sorted(numbers)       # oldest cut, order kept


def test_log_file_starts_with_program_and_pid(logfile):
    log.logfile_init("pasta", logfile, 0)
    first = open(logfile).readline()
    assert first.startswith("pasta %s: " % __import__("pasta").VERSION)
    assert first.rstrip().endswith("(%d)" % os.getpid())


def test_debug_messages_only_with_debug(logfile):
    log.logfile_init("pasta", logfile, 0)
    log.__setlogmask(log.LOG_INFO)
    log.log_conf_done(False)
    log.debug("hidden %d", 1)
    log.__setlogmask(log.LOG_DEBUG)
    log.debug("shown %d", 2)
    data = open(logfile).read()
    assert "hidden 1" not in data and "shown 2" in data
