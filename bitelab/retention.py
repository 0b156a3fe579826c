"""Retention of the history: audit entries and ended reservations.

With ``audit_retention_days`` set, ``RetentionService`` deletes, once an
hour, audit entries and ended reservations older than that, in batches of
``BATCH`` rows per transaction so that the lab's own writes never wait
long behind it.  Reservations still holding a board are never deleted.
"""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from bitelab.errors import BitelabError

#: seconds between two rounds
INTERVAL = 3600.0
#: rows deleted per transaction
BATCH = 1000
DAY = 86400


class RetentionService(service.Service):
    """Deletes the history older than ``days`` (see the module docstring)."""

    log = Logger()

    def __init__(self, store, clock, days, interval=INTERVAL):
        self.store = store
        self.clock = clock
        self.days = days
        self.interval = interval
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.prune)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    @defer.inlineCallbacks
    def prune(self):
        """One round; ``(events, reservations)`` deleted.  Errors are logged."""
        cutoff = self.clock.seconds() - self.days * DAY
        total = [0, 0]
        try:
            while True:
                events, reservations = yield self.store.prune_history(cutoff, BATCH)
                total[0] += events
                total[1] += reservations
                if events < BATCH and reservations < BATCH:
                    break
        except BitelabError as e:
            self.log.warn("cannot prune the history: {error}", error=e.message)
        if any(total):
            self.log.info(
                "deleted {events} audit entries and {reservations} reservations "
                "older than {days} days",
                events=total[0],
                reservations=total[1],
                days=self.days,
            )
        return tuple(total)
