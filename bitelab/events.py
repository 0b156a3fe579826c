"""State changes, published after they are committed.

Every transition the store commits is written to the audit log in the same
transaction and, once the commit has returned, published here as an
immutable ``Event``.  Subscribers (console cut-off, and whatever watches the
lab) react to what is already durable; they never reach into the manager,
and one that fails is logged without stopping the others.
"""

import attrs
from twisted.logger import Logger

#: the board's reservation was recorded; its setup runs
RESERVING = "reserving"
#: the reservation is usable
RESERVED = "reserved"
#: the reservation is ending; its consoles are cut first
RELEASING = "releasing"
#: the board is free again
FREED = "freed"
#: the board went to maintenance (an admin, or an ending that went wrong)
MAINTENANCE = "maintenance"
#: the board left maintenance
MAINTENANCE_END = "maintenance_end"
#: the reservation's end moved
EXTENDED = "extended"
#: the board's power was switched
POWER = "power"
#: a reserve script failed (the board is tried no more for that request)
SETUP_FAILED = "setup_failed"
#: a request joined the queue
QUEUED = "queued"
#: a waiter was handed a board (its reservation starts in the same step)
GRANTED = "granted"
#: a waiter left the queue: timed out, cancelled, or its client gone
LEFT = "left"
#: a reservation ends soon (``detail``: seconds left)
EXPIRING = "expiring"
#: a host of the lab started (no board: ``detail`` names it)
HOST_STARTED = "host_started"
#: a host of the lab stopped beating; its boards are not handed out
HOST_DOWN = "host_down"
#: a host noted down beats again
HOST_UP = "host_up"


@attrs.frozen
class Event:
    """One committed change.

    ``id`` is the audit log entry's id; ``reservation`` the reservation it
    belongs to (None for board-only changes); ``user`` who acted (None for
    the server itself); ``holder`` who holds or held the reservation (or,
    for queue events, whose place in the queue it is); ``waiter`` the queue
    entry, for queue events.
    """

    kind: str
    board: str | None
    at: float
    reservation: int | None = None
    user: str | None = None
    holder: str | None = None
    detail: str = ""
    id: int | None = None
    waiter: int | None = None
    #: the client's own name for a queue entry, on queue events
    ticket: str | None = None


class EventBus:
    """Hands each published event to every subscriber, in subscription order."""

    log = Logger()

    def __init__(self):
        self._subscribers = []

    def subscribe(self, subscriber):
        """Call ``subscriber(event)`` for every event from now on."""
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber):
        """Stop calling ``subscriber``."""
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def publish(self, events):
        """Deliver ``events`` (committed already) to every subscriber."""
        for event in events:
            for subscriber in list(self._subscribers):
                try:
                    subscriber(event)
                except Exception:  # noqa: BLE001 - one subscriber must not stop others
                    self.log.failure(
                        "event subscriber {subscriber!r} failed on {kind}",
                        subscriber=subscriber,
                        kind=event.kind,
                    )
