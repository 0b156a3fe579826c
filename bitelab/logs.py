"""The server's log: where twistd was told to write it, above a level.

twistd writes its log where its options say (``--logfile``, ``--syslog``,
standard output with ``--nodaemon``), but through a file that rotates
itself at one megabyte and that nothing reopens.  ``ServerLog`` takes the
same place with a file that never rotates itself and is reopened on
SIGHUP, so that logrotate and newsyslog can move it away, and it drops the
lines below the ``log_level`` setting.  A ``--logger`` given to twistd is
left alone.
"""

import os
import sys

from twisted.logger import (
    FilteringLogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


class ServerLog:
    """The log observer of the server, and what reopens its file.

    ``path`` is the log file (None: ``stream``, standard output by default);
    with ``syslog_prefix`` the lines go to syslog instead.
    """

    def __init__(self, level, path=None, syslog_prefix=None, stream=None):
        self.level = level
        self.path = os.path.abspath(path) if path else None
        self.syslog_prefix = syslog_prefix
        self.stream = stream if stream is not None else sys.stdout
        self.file = None

    def observer(self):
        """The ``ILogObserver`` to log through (opens the file)."""
        if self.syslog_prefix is not None:
            from twisted.python import syslog

            inner = LegacyLogObserverWrapper(
                syslog.SyslogObserver(self.syslog_prefix).emit
            )
        else:
            if self.path is not None:
                # never rotated here: logrotate or newsyslog move it, SIGHUP
                # reopens it; readable by the server's user only
                self.file = LogFile.fromFullPath(
                    self.path, rotateLength=None, defaultMode=0o600
                )
            inner = textFileLogObserver(self.file or self.stream)
        predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[self.level])
        return FilteringLogObserver(inner, [predicate])

    def reopen(self):
        """Reopen the log file at its path (after it was moved or removed)."""
        if self.file is not None:
            self.file.reopen()

    def rotate(self):
        """Move the log file to ``PATH.1`` (and so on) and start a new one,
        readable by the server's user only, as twistd does on SIGUSR1."""
        if self.file is not None:
            self.file.rotate()


def for_twistd(twistd_options, level):
    """A ``ServerLog`` writing where ``twistd_options`` say, or None.

    None when twistd was given a ``--logger`` of its own, or an option
    combination it refuses itself (``--logfile=-`` without ``--nodaemon``).
    """
    if twistd_options is None or twistd_options.get("logger"):
        return None
    if twistd_options.get("syslog"):
        return ServerLog(level, syslog_prefix=twistd_options.get("prefix", "twisted"))
    logfile = twistd_options.get("logfile")
    nodaemon = twistd_options.get("nodaemon")
    if logfile == "-":
        return ServerLog(level) if nodaemon else None
    if nodaemon and not logfile:
        return ServerLog(level)
    return ServerLog(level, path=logfile or "twistd.log")
