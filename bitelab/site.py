"""The HTTP API's site: its access log and its request metrics.

``LabSite`` is the ``bitelab.httpserver.GuardedSite`` (bodies judged by
their headers before they are read) that also

* writes the access log readable by the server's user only, rotates it at
  ``max_bytes`` keeping ``backups`` old files (``max_bytes`` 0: never, for
  logrotate or newsyslog to do it), and reopens it on ``reopen_log`` (the
  server calls it on SIGHUP, after the log was moved away);
* tells ``metrics`` of every answered request: method, route (the API's
  path pattern, such as ``/api/v1/boards/<name>``, so that board names do
  not multiply the series), status and time taken.
"""

import os
import weakref

from klein.interfaces import IKleinRequest
from twisted.python.logfile import LogFile
from werkzeug.exceptions import HTTPException

from bitelab.httpserver import GuardedSite

#: the route label of requests no API route matched
UNMATCHED = "unmatched"
#: methods counted under their own name; any other is "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_of(request):
    """The path pattern of the API route ``request`` went to, or ``UNMATCHED``."""
    mapper = getattr(IKleinRequest(request), "mapper", None)
    if mapper is None:
        return UNMATCHED
    try:
        rule, _ = mapper.match(return_rule=True)
    except HTTPException:
        return UNMATCHED
    return rule.rule


class LabSite(GuardedSite):
    """See the module docstring; ``clock`` times the requests and
    ``authenticate(token)`` checks the tokens of requests with bodies."""

    def __init__(
        self,
        resource,
        authenticate,
        clock,
        log_path=None,
        max_bytes=0,
        backups=7,
        metrics=None,
    ):
        super().__init__(
            resource, authenticate, logPath=log_path or None, reactor=clock
        )
        self.clock = clock
        self.max_bytes = max_bytes
        self.backups = backups
        self.metrics = metrics
        self._started = weakref.WeakKeyDictionary()

    def _openLogFile(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return LogFile.fromFullPath(
            path,
            rotateLength=self.max_bytes or None,
            defaultMode=0o600,
            maxRotatedFiles=self.backups,
        )

    def reopen_log(self):
        """Reopen the access log at its path (after it was moved or removed)."""
        if self.logPath and self._logFile is not None:
            self._logFile.reopen()

    def getResourceFor(self, request):
        # called once per request, as it starts being processed
        self._started[request] = self.clock.seconds()
        return super().getResourceFor(request)

    def log(self, request):
        super().log(request)
        if self.metrics is None:
            return
        started = self._started.pop(request, None)
        seconds = self.clock.seconds() - started if started is not None else 0.0
        method = request.method.decode("ascii", "replace")
        self.metrics.http_request(
            method if method in METHODS else "other",
            route_of(request),
            request.code,
            seconds,
        )
