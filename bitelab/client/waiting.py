"""``bitelab reserve --wait``: wait in the lab's queue until a board is handed over.

The event stream is opened first, so that the server's ``queued`` event for
the request cannot be missed; then the reserve request goes out with
``wait`` and stays open until the server answers with the board, or refuses
(the wait ran out, or someone cancelled it).  Meanwhile the position in the
queue is shown from the stream's ``position`` events: nothing polls.

The stream names the place (the waiter) that the request took: the first
``queued`` event of the caller for the same target after the request went
out, before that waiter's first ``position`` event.  If another wait of the
same user for the same target joins in that very window, the two cannot be
told apart, and this wait does without its place's identity: it shows no
position, Ctrl-C just closes the request (which also takes the waiter out),
and after a lost connection it queues again instead of risking another
wait's place.

If the connection is lost (the server restarting), the stream is opened
again with back-off and the request sent again with ``waiter`` (the place
in the queue, which the server keeps for a lease time) and the time left;
a place the server no longer keeps is taken again at the end of the queue.
Ctrl-C cancels the place (``DELETE /queue/ID``) before the command ends; a
board handed over at that very moment is released again.
"""

import re

import attrs
from twisted.internet import defer, task
from twisted.python.failure import Failure

from bitelab.client.errors import ClientError, Refused, Unreachable, WaitCancelled

#: first and longest pause before reaching for a lost lab again; the longest
#: stays well under the server's lease on a place in the queue (30 s)
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 4.0
#: the longest wait a lab allows by default; a lab that allows less says so
LONGEST_WAIT = 7 * 24 * 3600
_LONGEST = re.compile(r"wait must be between 0 and (\d+) seconds")
#: how the server says that a place was taken out while its client was away
_PLACE_GONE = re.compile(r"no waiter \d+ of yours|no longer waiting \(gone\)")
_QUEUED_FOR = re.compile(r"waits for ([^:]+):")


class Progress:
    """The status line on standard error while waiting.

    At a terminal the line is rewritten in place; otherwise (a CI log) each
    new status is a line of its own.
    """

    def __init__(self, err, tty):
        self.err = err
        self.tty = tty
        self.shown = None

    def show(self, text):
        """Show ``text`` as the current status."""
        if text == self.shown:
            return
        if self.tty:
            self.err.write(f"\r\x1b[K{text}")
        else:
            self.err.write(text + "\n")
        self.err.flush()
        self.shown = text

    def note(self, text):
        """A message of its own, e.g. that the lab was lost."""
        self.clear()
        self.err.write(f"bitelab: {text}\n")
        self.err.flush()

    def clear(self):
        """Take the status line away (at a terminal) before other output."""
        if self.tty and self.shown is not None:
            self.err.write("\r\x1b[K")
            self.err.flush()
        self.shown = None


def queued_target(data):
    """The board or class a ``queued`` event's waiter waits for, if it says."""
    if data.get("target"):
        return data["target"]
    match = _QUEUED_FOR.match(data.get("detail") or "")
    return match.group(1) if match else None


@attrs.define
class BoardWait:
    """One ``reserve --wait`` of ``target`` (a board or class name).

    ``api`` is a ``http.LabAPI``; ``request`` holds the other fields of the
    reserve request (``sshpubkey``, ``timeout``, ``priority``); ``wait`` is
    the longest wait in seconds, None for as long as the lab allows.
    ``run()`` returns the board, or raises ``Refused`` (the lab's answer),
    ``Unreachable`` (the lab could not be reached at the start) or
    ``WaitCancelled`` (after ``cancel()``).
    """

    api: object
    target: str
    request: dict
    wait: int | None
    progress: Progress
    #: our place in the queue, once the stream has named it
    waiter: int | None = None
    #: False when another wait of ours may have been taken for this one
    sure: bool = True
    _user: str | None = None
    #: the stream has shown our waiter's position: later ``queued`` events
    #: are other waits'
    _named: bool = False
    _started: float = 0.0
    _deadline: float = 0.0
    #: the lab said how long it lets a request wait
    _capped: bool = False
    _stream: object = None
    _opening: object = None
    #: Deferreds of callers waiting for the stream to open
    _waiting: list = attrs.Factory(list)
    _post: object = None
    _pending: object = None
    _reopen: object = None
    _grace: object = None
    #: waiters the stream named while no request of ours was out: not ours
    _seen: set = attrs.Factory(set)
    _cancelling: bool = False
    _finished: bool = False

    @property
    def clock(self):
        """The clock of the API's time-outs."""
        return self.api.clock

    async def run(self):
        """Wait for the board; see the class docstring."""
        self._started = self.clock.seconds()
        self._deadline = self._started + (self.wait or LONGEST_WAIT)
        delay = BACKOFF_FIRST
        reached = False
        try:
            while True:
                try:
                    if self._user is None:
                        self._user = (await self._step(self.api.whoami()))["user"]
                    await self._step(self._ensure_stream())
                    if reached and delay > BACKOFF_FIRST:
                        self.progress.note("reached the lab again")
                    reached, delay = True, BACKOFF_FIRST
                    board = await self._send(self._time_left())
                except Unreachable as exc:
                    if self._cancelling:
                        raise WaitCancelled(self._left_text()) from exc
                    if not reached:
                        raise
                    self.progress.note(f"{exc}; trying again in {delay:g}s")
                    self._close_stream()
                    await self._step(task.deferLater(self.clock, delay, lambda: None))
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                except Refused as exc:
                    if self._cancelling:
                        raise WaitCancelled(self._left_text()) from exc
                    if self._retry(exc):
                        continue
                    raise
                if self._cancelling:
                    await self._give_back(board)
                return board
        except defer.CancelledError:
            raise WaitCancelled(self._left_text()) from None
        finally:
            self._finished = True
            if self._grace is not None and self._grace.active():
                self._grace.cancel()
            self.progress.clear()
            self._close_stream()

    def _time_left(self):
        now = self.clock.seconds()
        left = int(self._deadline - now)
        if left <= 0:
            raise Refused(
                409,
                "unavailable",
                f"no board for {self.target} was handed over: waited "
                f"{int(now - self._started)} s (the lab was unreachable at the end)",
            )
        return left

    def _retry(self, refusal):
        """Whether to send the request again after ``refusal``."""
        longest = _LONGEST.search(refusal.message)
        if self.wait is None and not self._capped and refusal.status == 400 and longest:
            # as long as the lab allows, and it allows less than the default
            self._capped = True
            self._deadline = self._started + int(longest.group(1))
            return True
        if self.waiter is not None and _PLACE_GONE.search(refusal.message):
            self.progress.note(f"{refusal.message}; queueing again")
            self._forget_place()
            return True
        return False

    def _forget_place(self):
        if self.waiter is not None:
            self._seen.add(self.waiter)
        self.waiter, self.sure, self._named = None, True, False

    async def _send(self, left):
        if self.waiter is not None and not self.sure:
            self.progress.note(
                f"queueing again for {self.target}: this wait's place cannot be "
                "told apart from another wait of yours"
            )
            self._forget_place()
        self._post = self.api.reserve(
            self.target, wait=left, waiter=self.waiter, **self.request
        )
        if self.waiter is not None:
            # the lab sends positions as they change, and they may have
            # changed while we were away: ask once
            self.api.queue().addCallbacks(self._show_place, lambda _: None)
        try:
            return await self._step(self._post)
        finally:
            self._post = None

    def _show_place(self, document):
        for entry in document.get("queue", []):
            if entry.get("id") == self.waiter and not self._finished:
                self._show_position(entry)

    def _show_position(self, place):
        self.progress.show(
            f"waiting for {self.target}: position {place.get('position')} "
            f"({place.get('ahead')} ahead)"
        )

    def _step(self, d):
        """Await ``d`` in a way ``cancel()`` can interrupt."""
        self._pending = d
        return d

    def _left_text(self):
        if self.waiter is None or not self.sure:
            return f"stopped waiting for {self.target}"
        return f"stopped waiting for {self.target}; waiter {self.waiter} left the queue"

    async def _give_back(self, board):
        """A board handed over as the wait was cancelled goes back."""
        name = board.get("name")
        try:
            await self.api.release(name)
        except ClientError as exc:
            raise WaitCancelled(
                f"stopped waiting for {self.target}, but {name} was handed over "
                f"and could not be released ({exc}); release it with: "
                f"bitelab release {name}"
            ) from exc
        raise WaitCancelled(
            f"stopped waiting for {self.target}; {name}, handed over at that "
            "moment, was released"
        )

    # -- the event stream ------------------------------------------------

    def _ensure_stream(self):
        """A Deferred firing with the open stream, opening it if need be.

        Each caller gets a Deferred of its own, so that cancelling one wait
        for the stream leaves the opening (and other callers) alone.
        """
        if self._stream is not None:
            return defer.succeed(self._stream)
        d = defer.Deferred()
        self._waiting.append(d)
        if self._opening is None:
            self._opening = self.api.open_events(self._on_event)
            self._opening.addBoth(self._opened)
        return d

    def _opened(self, result):
        self._opening = None
        waiting, self._waiting = self._waiting, []
        if not isinstance(result, Failure):
            if self._finished:
                result.close()
                return
            self._stream = result
            result.ended.addCallback(self._stream_ended, result)
        for d in waiting:
            if d.called:
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def _stream_ended(self, _, stream):
        if stream is not self._stream:
            return
        self._stream = None
        # the request still waits (the stream alone was cut): follow it again
        if self._post is not None and not self._cancelling:
            self._reopen = self.clock.callLater(BACKOFF_FIRST, self._open_again)

    def _open_again(self):
        self._reopen = None
        if self._post is None or self._cancelling:
            return
        d = self._ensure_stream()
        d.addErrback(lambda failure: failure.trap(ClientError))

    def _close_stream(self):
        if self._reopen is not None and self._reopen.active():
            self._reopen.cancel()
        self._reopen = None
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _on_event(self, event):
        data = event.document()
        if self._finished or not isinstance(data, dict) or data.get("waiter") is None:
            return
        waiter = data["waiter"]
        if event.kind == "queued" and waiter not in self._seen:
            self._queued(waiter, data)
        if waiter != self.waiter or not self.sure or self._cancelling:
            return
        if event.kind == "position":
            self._named = True
            self._show_position(data)
        elif event.kind == "granted":
            self.progress.show(f"{data.get('board')} handed over; setting it up")

    def _queued(self, waiter, data):
        mine = (
            self._post is not None
            and not self._named
            and (data.get("holder") or data.get("user")) == self._user
            and queued_target(data) == self.target
        )
        if not mine:
            self._seen.add(waiter)
        elif self.waiter is None:
            self.waiter = waiter
            self.progress.show(f"waiting for {self.target}: queued")
        elif waiter != self.waiter and self.sure:
            self.sure = False
            self.progress.show(f"waiting for {self.target}")

    # -- Ctrl-C ----------------------------------------------------------

    def cancel(self):
        """Stop waiting: leave the queue; ``run()`` then raises ``WaitCancelled``.

        Returns a Deferred that fires once the server has been told.
        """
        return defer.Deferred.fromCoroutine(self._cancel())

    async def _cancel(self):
        if self._cancelling:
            return
        self._cancelling = True
        self.progress.clear()
        if self.waiter is not None and self.sure:
            try:
                await self.api.cancel_waiter(self.waiter)
            except ClientError:
                post = self._post
                if post is not None:
                    # most likely a board was just handed over and the answer
                    # is on its way: give it the usual time (it goes back)
                    self._grace = self.clock.callLater(self.api.timeout, post.cancel)
                    return
        pending = self._pending
        if pending is not None and not pending.called:
            pending.cancel()
