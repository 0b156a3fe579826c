"""The waiting room: reserve requests held open until the queue hands them a board.

The queue itself is in the database (``bitelab.store``): a request that
finds nothing it may take joins it in the same transaction, and a board
that becomes free is handed to the first eligible waiter in the
transaction that frees it, so no other client can slip in between.  This
module holds the other half, in memory: the open HTTP requests of waiters,
their deadlines, and what to do when the committed ``granted`` event
arrives: set the reservation up and answer the request, or, if the client
has gone meanwhile, give the board back.

Each waiter's owner also learns its place: ``position`` notices go to the
owner's event streams whenever the queue changes.
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from bitelab import events, rules
from bitelab.errors import BitelabError, Unavailable


@attrs.define(eq=False)
class Waiting:
    """One open request waiting in the queue."""

    wid: int
    user: str
    target: str
    started: float
    deadline: float
    deferred: defer.Deferred
    timer: object = None
    #: the client went away while its board was being set up
    gone: bool = False
    #: answered (or given up)
    done: bool = False
    #: the class whose boards can serve it (for the metrics)
    brdclass: str | None = None


class WaitingRoom:
    """The server's open waiting requests; see the module docstring."""

    log = Logger()

    def __init__(self, manager, notify=None, metrics=None):
        self.manager = manager
        #: ``bitelab.metrics.Metrics`` (queue depth and wait times), or None
        self.metrics = metrics
        self._classes = set()
        self.clock = manager.clock
        self.store = manager.store
        #: ``notify(kind, data, user)``: tell a user's event streams
        self.notify = notify or (lambda kind, data, user: None)
        self.waiting = {}
        self.serving = {}
        self._positions = {}
        self._recount = None
        self.store.bus.subscribe(self._on_event)

    def stop(self):
        """Stop listening to events and drop the timers."""
        self.store.bus.unsubscribe(self._on_event)
        for waiting in self.waiting.values():
            if waiting.timer is not None and waiting.timer.active():
                waiting.timer.cancel()
        if self._recount is not None and self._recount.active():
            self._recount.cancel()

    def wait(self, wid, user, target, deadline, gone, brdclass=None):
        """Deferred[dict]: the BOARD once waiter ``wid`` is handed one.

        ``gone`` fires (or fails) when the client's connection ends: then
        the waiter leaves the queue at once.
        """
        # the HTTP layer cancels the request's Deferred when its client
        # disconnects: that, too, means the client has gone
        d = defer.Deferred(canceller=lambda _: self._client_gone(waiting))
        waiting = Waiting(
            wid, user, target, self.clock.seconds(), deadline, d, brdclass=brdclass
        )
        self.waiting[wid] = waiting
        self._start_timer(waiting)
        # a client taking its place up again learns where it stands at once
        self._positions.pop(wid, None)
        if gone is not None:
            gone.addBoth(lambda _: self._client_gone(waiting))
        self._schedule_recount()
        return d

    def _start_timer(self, waiting):
        waiting.timer = self.clock.callLater(
            max(0, waiting.deadline - self.clock.seconds()), self._time_out, waiting
        )

    def _finish(self, waiting, result=None, error=None, outcome="gone"):
        """Answer ``waiting`` with the BOARD ``result`` or ``error``;
        ``outcome`` says for the metrics how a wait without a board ended
        (``timeout``, ``cancelled`` or ``gone``)."""
        if self.metrics is not None and not waiting.done and waiting.brdclass:
            outcome = "granted" if error is None else outcome
            self.metrics.queue_waited(
                waiting.brdclass, self.clock.seconds() - waiting.started, outcome
            )
        waiting.done = True
        self.waiting.pop(waiting.wid, None)
        self.serving.pop(waiting.wid, None)
        if waiting.timer is not None and waiting.timer.active():
            waiting.timer.cancel()
        if waiting.deferred.called:
            return
        if error is not None:
            waiting.deferred.errback(error)
        else:
            waiting.deferred.callback(result)

    @defer.inlineCallbacks
    def _time_out(self, waiting):
        waiting.timer = None
        try:
            outcome, _ = yield self.store.leave_queue(waiting.wid, "timed_out")
        except BitelabError as e:
            self.log.warn(
                "cannot time out waiter {wid}: {e}", wid=waiting.wid, e=e.message
            )
            return
        if outcome == "left":
            self._finish(waiting, error=self._timed_out(waiting), outcome="timeout")

    def _timed_out(self, waiting):
        waited = round(self.clock.seconds() - waiting.started)
        return Unavailable(
            f"no board for {waiting.target} became free: waited {waited} s"
        )

    @defer.inlineCallbacks
    def _client_gone(self, waiting):
        if waiting.done:
            return
        if waiting.wid in self.serving:
            waiting.gone = True
            return
        try:
            outcome, _ = yield self.store.leave_queue(waiting.wid, "gone")
        except BitelabError as e:
            self.log.warn("cannot drop waiter {wid}: {e}", wid=waiting.wid, e=e.message)
            return
        if outcome == "granted" and waiting.wid in self.serving:
            waiting.gone = True
        elif outcome == "left":
            self._finish(waiting, error=Unavailable("the client went away"))

    @defer.inlineCallbacks
    def cancel(self, user, wid):
        """Deferred[dict]: a waiter leaves at its owner's (or an admin's) request."""
        outcome, _ = yield self.store.leave_queue(
            wid, "cancelled", user, self.manager.is_admin(user)
        )
        if outcome == "granted":
            raise Unavailable(f"waiter {wid} was handed a board already")
        waiting = self.waiting.get(wid)
        if waiting is not None:
            self._finish(
                waiting,
                error=Unavailable(f"the wait was cancelled by {user}"),
                outcome="cancelled",
            )
        return {"id": wid, "state": "cancelled" if outcome == "left" else outcome}

    def time_out_swept(self, expired):
        """Answer the open requests of waiters the periodic sweep removed."""
        for wid, why in expired:
            waiting = self.waiting.get(wid)
            if waiting is not None:
                if why == "timed_out":
                    self._finish(
                        waiting, error=self._timed_out(waiting), outcome="timeout"
                    )
                else:
                    self._finish(waiting, error=Unavailable(f"the wait ended: {why}"))

    # -- events -------------------------------------------------------------

    def _on_event(self, event):
        if event.kind == events.GRANTED:
            # claim the board for this process before anything else can look
            self.manager.driving[event.board] = event.reservation
            waiting = self.waiting.pop(event.waiter, None)
            if waiting is not None:
                if waiting.timer is not None and waiting.timer.active():
                    waiting.timer.cancel()
                self.serving[event.waiter] = waiting
            self.manager._background(
                self._hand_over(event, waiting), f"handing {event.board} over"
            )
        if event.kind in (events.QUEUED, events.GRANTED, events.LEFT):
            self._schedule_recount()

    @defer.inlineCallbacks
    def _hand_over(self, event, waiting):
        manager = self.manager
        row = yield self.store.board(event.board)
        if row["reservation_id"] != event.reservation:
            manager.driving.pop(event.board, None)
            return
        if not manager.own(row):
            # its own host sets it up; the waiter here is answered once done
            manager.driving.pop(event.board, None)
            if waiting is not None:
                yield self._answer_when_set_up(waiting, row)
            return
        if row["state"] == rules.RESERVING:
            try:
                row = yield manager._set_up(row)
            except BitelabError:
                if waiting is None:
                    return
                self.serving.pop(waiting.wid, None)
                if waiting.gone:
                    self._finish(waiting, error=Unavailable("the client went away"))
                    return
                # back in its place: another board may come
                self.waiting[waiting.wid] = waiting
                self._start_timer(waiting)
                yield self.store.requeue(waiting.wid)
                return
        else:
            manager.driving.pop(event.board, None)
        if waiting is None:
            if not manager.config.host_name:
                # nobody waits for it any more: back to the queue, or free
                yield manager.abandon(row)
            # else its waiter's request is open on another host, which answers
            return
        if waiting.gone:
            self.serving.pop(waiting.wid, None)
            yield manager.abandon(row)
            return
        self._finish(waiting, manager.view(row, waiting.user))

    @defer.inlineCallbacks
    def _answer_when_set_up(self, waiting, row):
        """Answer a waiter here whose board another host sets up."""
        self.serving[waiting.wid] = waiting
        try:
            board = yield self.manager._await_setup(row)
        except BitelabError as e:
            self._finish(waiting, error=e)
            return
        self._finish(waiting, self.manager.view(board, waiting.user))

    @defer.inlineCallbacks
    def poll_grants(self):
        """Answer the waiters here that another host handed a board to (its
        event stays on that host)."""
        if not self.waiting:
            return
        granted = yield self.store.granted(list(self.waiting))
        for wid, rid in granted:
            waiting = self.waiting.pop(wid, None)
            if waiting is None:
                continue
            if waiting.timer is not None and waiting.timer.active():
                waiting.timer.cancel()
            reservation = yield self.store.reservation(rid)
            row = yield self.store.board(reservation["board"])
            self._schedule_recount()
            self.manager._background(
                self._answer_when_set_up(waiting, row), f"answering waiter {wid}"
            )

    # -- positions ------------------------------------------------------------

    def _count(self, entries):
        """Tell the metrics each class's queue depth and oldest waiter."""
        by_class = {}
        for entry in entries:
            depth, oldest = by_class.get(entry["class"], (0, None))
            since = entry["created_at"]
            by_class[entry["class"]] = (
                depth + 1,
                since if oldest is None else min(oldest, since),
            )
        for brdclass in self._classes - set(by_class):
            self.metrics.queue_changed(brdclass, 0, None)
        for brdclass, (depth, oldest) in by_class.items():
            self.metrics.queue_changed(brdclass, depth, oldest)
        self._classes = set(by_class)

    def _schedule_recount(self):
        if self._recount is None or not self._recount.active():
            self._recount = self.clock.callLater(0, self._send_positions)

    @defer.inlineCallbacks
    def _send_positions(self):
        try:
            entries = yield self.store.queue()
        except BitelabError:
            return
        places = rules.positions(entries)
        total = len(entries)
        if self.metrics is not None:
            self._count(entries)
        known = {}
        for entry in entries:
            position, ahead = places[entry["id"]]
            known[entry["id"]] = (position, ahead, total)
            if self._positions.get(entry["id"]) != known[entry["id"]]:
                self.notify(
                    "position",
                    {
                        "waiter": entry["id"],
                        "ticket": entry["ticket"],
                        "target": entry["target"],
                        "position": position,
                        "ahead": ahead,
                        "total": total,
                    },
                    entry["user"],
                )
        self._positions = known
