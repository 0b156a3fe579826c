"""``bitelab reserve --wait``: wait in the lab's queue until a board is handed over.

The event stream is opened first, so that the server's ``queued`` event for
the request cannot be missed; then the reserve request goes out with
``wait`` and stays open until the server answers with the board, or refuses
(the wait ran out, or someone cancelled it).  Meanwhile the position in the
queue is shown from the stream's ``queued`` and ``position`` events: nothing
polls.

If the connection is lost (the server restarting), the stream is opened
again with back-off and the request sent again with ``waiter`` (the place
in the queue, which the server keeps for a lease time) and the time left.
Ctrl-C cancels the place (``DELETE /queue/ID``) before the command ends; a
board handed over at that very moment is released again.
"""

import attrs
from twisted.internet import defer, task
from twisted.python.failure import Failure

from bitelab.client.errors import ClientError, Refused, Unreachable, WaitCancelled

#: first and longest pause before reaching for a lost lab again; the longest
#: stays well under the server's lease on a place in the queue (30 s)
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 4.0


@attrs.define
class Progress:
    """The status line on standard error while waiting.

    At a terminal the line is rewritten in place; otherwise (a CI log) each
    new status is a line of its own.
    """

    err: object
    tty: bool
    shown: str | None = None

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


@attrs.define
class BoardWait:
    """One ``reserve --wait`` of ``target`` (a board or class name).

    ``api`` is a ``http.LabAPI``; ``request`` holds the other fields of the
    reserve request (``sshpubkey``, ``timeout``, ``priority``); ``wait`` is
    the longest wait in seconds.  ``run()`` returns the board, or raises
    ``Refused`` (the lab's answer), ``Unreachable`` (the lab could not be
    reached at the start) or ``WaitCancelled`` (after ``cancel()``).
    """

    api: object
    target: str
    request: dict
    wait: float
    progress: Progress
    #: our place in the queue, once the stream has named it
    waiter: object = None
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
        deadline = self.clock.seconds() + self.wait
        delay = BACKOFF_FIRST
        reached = False
        try:
            while True:
                try:
                    await self._step(self._ensure_stream())
                    reached = True
                    left = deadline - self.clock.seconds()
                    if left <= 0:
                        raise Refused(
                            409,
                            "unavailable",
                            f"no {self.target} was handed over within "
                            f"{self.wait:g}s (the lab was unreachable at the end)",
                        )
                    board = await self._send(left)
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
                    if self.waiter is not None and exc.status == 404:
                        # the server no longer knows our place (its lease ran
                        # out while it was away): queue again, at the end
                        self.progress.note(f"{exc.message}; queueing again")
                        self.waiter = None
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

    async def _send(self, left):
        self._post = self.api.reserve(
            self.target, wait=left, waiter=self.waiter, **self.request
        )
        try:
            return await self._step(self._post)
        finally:
            self._post = None

    def _step(self, d):
        """Await ``d`` in a way ``cancel()`` can interrupt."""
        self._pending = d
        return d

    def _left_text(self):
        if self.waiter is None:
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
        if not isinstance(data, dict) or data.get("waiter") is None:
            return
        waiter = data["waiter"]
        if self._post is None:
            self._seen.add(waiter)
        elif (
            self.waiter is None
            and event.kind == "queued"
            and data.get("target") == self.target
            and waiter not in self._seen
        ):
            self.waiter = waiter
        if waiter != self.waiter or self._cancelling:
            return
        if event.kind in ("queued", "position"):
            self.progress.show(
                f"waiting for {self.target}: position {data.get('position')} "
                f"({data.get('ahead')} ahead)"
            )
        elif event.kind == "granted":
            self.progress.show(f"{data.get('board')} handed over; setting it up")

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
        if self.waiter is not None:
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
