"""Power control of the lab's boards: one switch at a time per board, verified.

The drivers (``bitelab.power``) switch a device and read it back; this
module serialises the operations on each board, stores what was read back,
and remembers the last failure for the board views.  A switch can carry a
``guard``: a check, run once the board's turn has come, that the caller may
still switch it (the reservation it acts for has not started to end).
"""

from twisted.internet import defer, task
from twisted.logger import Logger

from bitelab.errors import Invalid, PowerFailed, PowerMismatch
from bitelab.options import PowerOption


def public_message(message):
    """What a non-admin is told of a power failure: the driver, no details.

    Driver messages may name hosts, communities or command lines; users
    learn that power failed and whom to ask.
    """
    driver = message.split(":", 1)[0].split()[0] if message else "power"
    return f"{driver} failed; an admin can see the details"


class BoardPower:
    """Switches and reads the power of the boards in ``lab``."""

    log = Logger()

    def __init__(self, clock, lab, runtime, store, cycle_pause, metrics=None):
        self.clock = clock
        #: a ``bitelab.metrics.Metrics`` told of every operation, or None
        self.metrics = metrics
        self.lab = lab
        self.runtime = runtime
        self.store = store
        self.cycle_pause = cycle_pause
        #: board -> the last failed read or switch (full text), until one works
        self.errors = {}
        self._locks = {}

    def option(self, name):
        """The board's power option, or None."""
        board = self.lab.boards.get(name)
        return board.option(PowerOption) if board else None

    def has_power(self, name):
        """Whether ``name`` has power control."""
        return self.option(name) is not None

    def _lock(self, name):
        return self._locks.setdefault(name, defer.DeferredLock())

    def switch(self, name, action, guard=None, admin=False):
        """Deferred[bool]: ``on``, ``off`` or ``cycle`` the board, verified.

        Operations on one board run one after the other; ``guard()`` (a
        Deferred) runs when this one's turn comes and may refuse it.  A
        failure is ``PowerFailed``, with details only for ``admin``.
        """
        if self.option(name) is None:
            raise Invalid(f"board {name} has no power control")
        return self._lock(name).run(self._switch, name, action, guard, admin)

    @defer.inlineCallbacks
    def _switch(self, name, action, guard, admin):
        if guard is not None:
            yield guard()
        try:
            if action == "cycle":
                yield self._set(name, False)
                yield task.deferLater(self.clock, self.cycle_pause)
                state = yield self._set(name, True)
            else:
                state = yield self._set(name, action == "on")
        except PowerFailed as e:
            if admin:
                raise
            raise PowerFailed(public_message(e.message)) from None
        return state

    def off(self, name):
        """Deferred[str or None]: switch off; a one-line problem, None when done."""
        if self.option(name) is None:
            return defer.succeed(None)

        def failed(failure):
            failure.trap(PowerFailed)
            return f"power off failed: {failure.value.message}"

        d = self._lock(name).run(self._set, name, False)
        d.addCallbacks(lambda _: None, failed)
        return d

    @defer.inlineCallbacks
    def _set(self, name, on):
        state = yield self._noting_errors(name, self.option(name).set_power, on)
        yield self.store.record_power(name, state)
        return state

    @defer.inlineCallbacks
    def _noting_errors(self, name, method, *args):
        started = self.clock.seconds()
        try:
            result = yield method(self.runtime, *args)
        except PowerFailed as e:
            self.errors[name] = e.message
            outcome = "mismatch" if isinstance(e, PowerMismatch) else "failed"
            self._measure(name, method, started, outcome)
            raise
        self.errors.pop(name, None)
        self._measure(name, method, started, "ok")
        return result

    def _measure(self, name, method, started, outcome):
        if self.metrics is not None:
            operation = "set" if method.__name__ == "set_power" else "get"
            self.metrics.power_operation(
                self.option(name).cls_name,
                operation,
                self.clock.seconds() - started,
                outcome,
            )

    def read(self, name):
        """Deferred[bool]: read the state from the device and store it."""
        option = self.option(name)
        if option is None:
            raise Invalid(f"board {name} has no power control")

        @defer.inlineCallbacks
        def read():
            state = yield self._noting_errors(name, option.get_power)
            yield self.store.record_power(name, state)
            return state

        return self._lock(name).run(read)

    def refresh(self):
        """Read every board's power state, in the background; failures logged."""
        for name in self.lab.boards:
            if self.option(name) is None:
                continue
            self.read(name).addErrback(
                lambda f, name=name: self.log.warn(
                    "cannot read power of {name}: {err}",
                    name=name,
                    err=f.getErrorMessage(),
                )
            )
