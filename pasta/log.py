# SPDX-License-Identifier: GPL-2.0-or-later
"""Logging: standard error, syslog, or a log file of bounded size.

Until the configuration is parsed every message goes to standard error.
After that, what is printed depends on the options: ``-q`` keeps only
errors, ``-d`` adds debug messages with a timestamp relative to start-up,
``--trace`` adds per-packet messages too.  In the foreground messages go to
standard error, once in the background to syslog (through the
``/dev/log`` datagram socket, so that nothing is allocated by a library
behind our back), or to the file given with ``-l``.  A log file never grows
past ``--log-size``: when it would, its oldest part is cut away.

Functions take a ``%``-style format and its arguments, and format only
when the message is printed, so a disabled ``debug()`` or ``trace()`` costs
a call and a comparison.  Hot paths test ``log.log_trace`` before even
calling.  Messages that a guest or a peer can trigger at will go through
``ratelimit()`` first.
"""

import os
import socket
import sys
import time

LOG_ERR = 3
LOG_WARNING = 4
LOG_NOTICE = 5
LOG_INFO = 6
LOG_DEBUG = 7
LOG_DAEMON = 3 << 3

LOGFILE_SIZE_DEFAULT = 1024 * 1024
LOGFILE_CUT_RATIO = 30
LOGFILE_SIZE_MIN = 5 * 8192

_PREFIX = {LOG_ERR: "ERROR:   ", LOG_WARNING: "WARNING: ",
           LOG_NOTICE: "         ", LOG_INFO: "info:    ",
           LOG_DEBUG: "         "}

log_level = LOG_DEBUG       # highest priority number that is printed
log_conf_parsed = False     # before that, everything goes to stderr
log_stderr = True           # in the foreground: print to stderr
log_trace = False           # --trace: per-packet messages
log_debug = False           # -d: debug messages and timestamps
log_ident = "passt"

_log_sock = None
_log_file = None            # file descriptor of -l FILE, or None
_log_size = LOGFILE_SIZE_DEFAULT
_log_written = 0
_log_start = time.monotonic()


def _timestamp():
    return "%.4f" % (time.monotonic() - _log_start)


def logmsg(pri, fmt, *args):
    """Print or send one message of priority ``pri``."""
    printed = pri <= log_level or not log_conf_parsed
    if not printed and not (log_debug and _log_file is None):
        return

    msg = fmt % args if args else fmt

    if printed and _log_file is not None:
        _logfile_write(pri, msg)
    elif printed and not log_stderr and not log_debug:
        _syslog_send(pri, msg)

    if not log_conf_parsed or (log_stderr and printed) or \
       (log_debug and _log_file is None and printed):
        if log_debug and _log_file is None:
            msg = _timestamp() + ": " + msg
        try:
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def err(fmt, *args):
    logmsg(LOG_ERR, fmt, *args)


def warn(fmt, *args):
    logmsg(LOG_WARNING, fmt, *args)


def info(fmt, *args):
    logmsg(LOG_INFO, fmt, *args)


def debug(fmt, *args):
    if log_level >= LOG_DEBUG or not log_conf_parsed:
        logmsg(LOG_DEBUG, fmt, *args)


def trace(fmt, *args):
    if log_trace:
        logmsg(LOG_DEBUG, fmt, *args)


def _with_errno(fmt, args, e):
    msg = fmt % args if args else fmt
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return "%s: %s" % (msg, reason)


def err_perror(e, fmt, *args):
    """Like ``err()``, followed by the reason carried by exception ``e``."""
    err("%s", _with_errno(fmt, args, e))


def warn_perror(e, fmt, *args):
    warn("%s", _with_errno(fmt, args, e))


def info_perror(e, fmt, *args):
    info("%s", _with_errno(fmt, args, e))


def debug_perror(e, fmt, *args):
    debug("%s", _with_errno(fmt, args, e))


class PasstExit(SystemExit):
    """Raised to end the process with a status; the entry point turns it
    into the exit status, after clean-up, without a traceback."""


def passt_exit(status):
    """End the process with ``status`` (see ``PasstExit``)."""
    raise PasstExit(status)


# Signal handlers must not raise: Python may run them inside code that
# swallows exceptions (a fork callback, a finaliser).  They only record
# the status here; the main loop, woken up by the signal, then exits
# through passt_exit_check().
exit_pending = None


def passt_exit_request(status):
    """Ask for the process to end with ``status`` at the next check; the
    first request wins."""
    global exit_pending
    if exit_pending is None:
        exit_pending = status


def passt_exit_check():
    """End the process now if that was requested."""
    if exit_pending is not None:
        passt_exit(exit_pending)


def die(fmt, *args):
    """Log an error and exit with status 1."""
    err(fmt, *args)
    passt_exit(1)


def die_perror(e, fmt, *args):
    """Log an error with the reason from ``e`` and exit with status 1."""
    err_perror(e, fmt, *args)
    passt_exit(1)


# Rate limiting: a message kind may be printed LOG_RATELIMIT_BURST times
# per LOG_RATELIMIT_INTERVAL seconds; what is suppressed is counted and
# reported with the next message of the same kind that gets through.
LOG_RATELIMIT_INTERVAL = 1.0
LOG_RATELIMIT_BURST = 5
_rl = {}


def ratelimit(key):
    """Return True if a message of kind ``key`` may be printed now."""
    now = time.monotonic()
    start, count, dropped = _rl.get(key, (now, 0, 0))
    if now - start >= LOG_RATELIMIT_INTERVAL:
        if dropped:
            logmsg(LOG_INFO, "%s: %d messages suppressed", key, dropped)
        start, count, dropped = now, 0, 0
    if count < LOG_RATELIMIT_BURST:
        _rl[key] = (start, count + 1, dropped)
        return True
    _rl[key] = (start, count, dropped + 1)
    return False


def __openlog(ident, facility=LOG_DAEMON):
    """Connect to the system logger and set the identity of messages."""
    global _log_sock, log_ident
    log_ident = ident
    if _log_sock is not None:
        return
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect("/dev/log")
        _log_sock = s
    except OSError:
        _log_sock = None


def _syslog_send(pri, msg):
    if _log_sock is None:
        return
    try:
        _log_sock.send(("<%d> %s: %s" % (LOG_DAEMON | pri, log_ident,
                                          msg)).encode(errors="replace"))
    except OSError:
        pass


def __setlogmask(level):
    """Print messages up to priority ``level`` (LOG_ERR ... LOG_DEBUG)."""
    global log_level, log_debug
    log_level = level
    log_debug = level >= LOG_DEBUG


def trace_init(enable):
    global log_trace
    log_trace = bool(enable)


def logfile_init(name, path, size):
    """Open the log file ``path`` (created, or appended to) and write a
    header naming the program and its PID."""
    global _log_file, _log_size, _log_written
    fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_RDWR | os.O_CLOEXEC,
                 0o600)
    _log_file = fd
    _log_size = size or LOGFILE_SIZE_DEFAULT
    from pasta import VERSION
    header = "%s %s: %s (%d)\n" % (name, VERSION, sys.argv[0], os.getpid())
    _log_written = os.fstat(fd).st_size
    _write_all(fd, header.encode(errors="replace"))


def _write_all(fd, data):
    global _log_written
    try:
        os.write(fd, data)
        _log_written += len(data)
    except OSError:
        pass


def _logfile_rotate():
    """Cut the oldest part of the log file, at a line boundary, so that new
    messages fit within the configured size."""
    global _log_written
    fd = _log_file
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            data += chunk
        cut = len(data) * LOGFILE_CUT_RATIO // 100
        nl = data.find(b"\n", cut)
        keep = data[nl + 1:] if nl >= 0 else b""
        os.ftruncate(fd, 0)
        os.write(fd, keep)
        _log_written = len(keep)
    except OSError:
        pass


def _logfile_write(pri, msg):
    line = "%s: %s%s\n" % (_timestamp(), _PREFIX.get(pri, ""), msg)
    data = line.encode(errors="replace")
    if _log_written + len(data) >= _log_size:
        _logfile_rotate()
    _write_all(_log_file, data)


def log_conf_done(foreground_stderr):
    """Called once options are parsed: from now on the mask applies."""
    global log_conf_parsed, log_stderr
    log_conf_parsed = True
    log_stderr = foreground_stderr


def log_to_background():
    """Stop printing to standard error (after daemonising)."""
    global log_stderr
    log_stderr = False
