"""Power option classes: a PoE port over SNMP, a GPIO line, or commands.

Each class is a ``bitelab.options.PowerOption``: ``set_power(runtime, on)``
switches, reads the device back and fires with the read-back state only if
it is the one requested; ``get_power(runtime)`` reads the device.  Every
failure is a ``PowerFailed`` with a one-line message.
"""

import os
import shlex
from typing import ClassVar

import attrs
from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from bitelab.errors import PowerFailed, PowerMismatch
from bitelab.options import PowerOption
from bitelab.snmp import SNMPError

#: POWER-ETHERNET-MIB pethPsePortAdminEnable, indexed by group and port
PETH_PSE_PORT_ADMIN_ENABLE = "1.3.6.1.2.1.105.1.1.1.3"
_TRUTH = {1: True, 2: False}

_log = Logger()


def _non_empty_str(inst, attribute, value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, not {value!r}")


def _int_in(low, high):
    def check(inst, attribute, value):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not low <= value <= high
        ):
            raise ValueError(
                f"{attribute.name} must be an integer from {low} to {high}, "
                f"not {value!r}"
            )

    return check


def _positive_number(inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive number, not {value!r}")


def _is_bool(inst, attribute, value):
    if value is not True and value is not False:
        raise ValueError(f"{attribute.name} must be true or false, not {value!r}")


@attrs.frozen(kw_only=True)
class SNMPPower(PowerOption):
    """A PoE switch port, through POWER-ETHERNET-MIB ``pethPsePortAdminEnable``.

    Needs ``runtime.snmp``, a ``bitelab.snmp.SNMPClient``.
    """

    cls_name: ClassVar[str] = "snmppower"

    host: str = attrs.field(validator=_non_empty_str)
    port: int = attrs.field(validator=_int_in(1, 2**31 - 1))
    community: str = attrs.field(default="private", validator=_non_empty_str)
    group: int = attrs.field(default=1, validator=_int_in(1, 2**31 - 1))
    snmp_port: int = attrs.field(default=161, validator=_int_in(1, 65535))
    timeout: float = attrs.field(default=1.0, validator=_positive_number)
    retries: int = attrs.field(default=2, validator=_int_in(0, 10))

    @property
    def oid(self):
        """The OID of this port's ``pethPsePortAdminEnable``."""
        return f"{PETH_PSE_PORT_ADMIN_ENABLE}.{self.group}.{self.port}"

    def conflict_key(self):
        return ("PoE port", self.host, self.snmp_port, self.group, self.port)

    def _call(self, method, *args):
        d = method(
            self.host,
            self.snmp_port,
            self.community,
            self.oid,
            *args,
            timeout=self.timeout,
            retries=self.retries,
        )

        def failed(failure):
            failure.trap(SNMPError)
            raise PowerFailed(f"snmppower: {failure.getErrorMessage()}")

        return d.addErrback(failed)

    def _state(self, value):
        if value not in _TRUTH:
            raise PowerFailed(
                f"snmppower: {self.host}:{self.snmp_port} reports {value!r} for "
                f"{self.oid}; expected 1 (on) or 2 (off)"
            )
        return _TRUTH[value]

    def set_power(self, runtime, on):
        """SET the port, GET it back in the same switch turn; Deferred[bool]."""
        wanted = 1 if on else 2

        def check(value):
            if value != wanted:
                raise PowerMismatch(
                    f"snmppower: {self.host}:{self.snmp_port} reads back "
                    f"{value!r} for {self.oid} after setting {wanted}"
                )
            return on

        return self._call(runtime.snmp.set_verified, wanted).addCallback(check)

    def get_power(self, runtime):
        """GET the port's admin state; Deferred[bool]."""
        return self._call(runtime.snmp.get).addCallback(self._state)


def _line_id(value):
    """Line offsets from the board file may come as digit strings."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _valid_line(inst, attribute, value):
    if isinstance(value, bool) or not (
        (isinstance(value, int) and value >= 0) or (isinstance(value, str) and value)
    ):
        raise ValueError(
            f"line must be a line offset (0, 1, ...) or a line name, not {value!r}"
        )


@attrs.frozen(kw_only=True)
class GPIOPower(PowerOption):
    """A GPIO output line driving the board's power, through libgpiod v2.

    ``runtime.gpio`` is the ``gpiod`` module.  The line is requested as an
    output on the first switch and held from then on: libgpiod leaves a
    released line's state undefined, and power must stay as set.

    The gpiod calls run in the reactor thread: they are single ioctls on the
    chip's character device that return in microseconds, and a
    ``LineRequest`` needs external locking if shared across threads.
    """

    cls_name: ClassVar[str] = "gpiopower"

    chip: str = attrs.field(validator=_non_empty_str)
    line: int | str = attrs.field(converter=_line_id, validator=_valid_line)
    active_low: bool = attrs.field(default=False, validator=_is_bool)
    consumer: str = attrs.field(default="bitelab", validator=_non_empty_str)
    # The held LineRequest; a dict so the frozen instance can own it.
    _held: dict = attrs.field(factory=dict, init=False, eq=False, repr=False)

    @property
    def chip_path(self):
        """The chip's device path: ``gpiochip0`` means ``/dev/gpiochip0``."""
        return self.chip if "/" in self.chip else f"/dev/{self.chip}"

    def conflict_key(self):
        return ("GPIO line", self.chip_path, self.line)

    def _failed(self, problem, kind=PowerFailed):
        return kind(f"gpiopower {self.chip_path} line {self.line}: {problem}")

    def _settings(self, gpio, **kwargs):
        return gpio.LineSettings(active_low=self.active_low, **kwargs)

    def _switch(self, gpio, on):
        value = gpio.line.Value.ACTIVE if on else gpio.line.Value.INACTIVE
        # Anything the bindings raise (OSError from the kernel, ValueError for
        # an unknown line name, their own request errors) is the device's
        # answer, reported as a power failure.
        try:
            request = self._held.get("request")
            if request is None:
                request = gpio.request_lines(
                    self.chip_path,
                    config={
                        self.line: self._settings(
                            gpio,
                            direction=gpio.line.Direction.OUTPUT,
                            output_value=value,
                        )
                    },
                    consumer=self.consumer,
                )
                self._held["request"] = request
            else:
                request.set_value(self.line, value)
            got = request.get_value(self.line)
        except Exception as e:
            self._drop_request()
            raise self._failed(f"{type(e).__name__}: {e}") from e
        if got != value:
            raise self._failed(
                f"reads back {'on' if got == gpio.line.Value.ACTIVE else 'off'} "
                f"after switching {'on' if on else 'off'}",
                PowerMismatch,
            )
        return on

    def close(self):
        """Release the held line (the board left the board file or changed)."""
        self._drop_request()

    def _drop_request(self):
        """Forget a held request after a failure, releasing its file descriptor."""
        stale = self._held.pop("request", None)
        if stale is not None:
            try:
                stale.release()
            except Exception:  # noqa: BLE001 - already failing; best effort
                _log.failure("gpiopower: releasing a failed line request")

    def _read(self, gpio):
        try:
            request = self._held.get("request")
            if request is not None:
                value = request.get_value(self.line)
            else:
                # AS_IS keeps the line's direction and driven value.
                with gpio.request_lines(
                    self.chip_path,
                    config={self.line: self._settings(gpio)},
                    consumer=self.consumer,
                ) as request:
                    value = request.get_value(self.line)
        except Exception as e:
            raise self._failed(f"{type(e).__name__}: {e}") from e
        return value == gpio.line.Value.ACTIVE

    def set_power(self, runtime, on):
        """Drive the line active (on) or inactive and read it back; Deferred[bool]."""
        return defer.maybeDeferred(self._switch, runtime.gpio, on)

    def get_power(self, runtime):
        """Read the line; active means on; Deferred[bool]."""
        return defer.maybeDeferred(self._read, runtime.gpio)


def _argv(value):
    """A command is an argv list; a string is split like a shell would, never run by one."""
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


def _valid_argv(inst, attribute, value):
    if (
        not isinstance(value, tuple)
        or not value
        or not all(isinstance(arg, str) for arg in value)
        or not value[0]
    ):
        raise ValueError(
            f"{attribute.name} must be a command: a non-empty list of strings"
        )


_STATUS_WORDS = {"on": True, "1": True, "off": False, "0": False}
_TAIL = 200


class _CommandProtocol(ProcessProtocol):
    """Collects a command's output; fires with (exit code, signal, stdout, stderr)."""

    def __init__(self, deferred):
        self.deferred = deferred
        self.out = bytearray()
        self.err = bytearray()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        # Only the tail is ever reported.
        self.err += data
        del self.err[: -4 * _TAIL]

    def processEnded(self, reason):
        if not self.deferred.called:
            self.deferred.callback(
                (
                    reason.value.exitCode,
                    getattr(reason.value, "signal", None),
                    bytes(self.out),
                    bytes(self.err),
                )
            )


def _tail(err):
    lines = [line.strip() for line in err.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][-_TAIL:] if lines else "no error output"


@attrs.frozen(kw_only=True)
class CmdPower(PowerOption):
    """Commands that switch power on and off and print its status.

    ``on``, ``off`` and ``status`` are argv lists, run without a shell (a
    string is split with ``shlex``).  ``status`` must print ``on`` or ``off``
    (or ``1``/``0``).  A command running longer than ``timeout`` seconds is
    killed.
    """

    cls_name: ClassVar[str] = "cmdpower"

    on: tuple = attrs.field(converter=_argv, validator=_valid_argv)
    off: tuple = attrs.field(converter=_argv, validator=_valid_argv)
    status: tuple = attrs.field(converter=_argv, validator=_valid_argv)
    timeout: float = attrs.field(default=10, validator=_positive_number)

    def _run(self, reactor, argv):
        """Run ``argv``; Deferred[stdout bytes], PowerFailed unless it exits 0."""
        command = shlex.join(argv)
        d = defer.Deferred()
        protocol = _CommandProtocol(d)
        try:
            transport = reactor.spawnProcess(
                protocol, argv[0], list(argv), env=dict(os.environ)
            )
        except OSError as e:
            return defer.fail(PowerFailed(f"cmdpower: cannot run {command}: {e}"))

        def timed_out():
            try:
                transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
            # A child of the command may still hold the pipes open.
            transport.loseConnection()
            d.errback(
                PowerFailed(
                    f"cmdpower: {command} timed out after {self.timeout:g} s "
                    f"and was killed: {_tail(protocol.err)}"
                )
            )

        timer = reactor.callLater(self.timeout, timed_out)

        def ended(result):
            timer.cancel()
            code, signal, out, err = result
            if signal is not None:
                raise PowerFailed(
                    f"cmdpower: {command} was killed by signal {signal}: {_tail(err)}"
                )
            if code != 0:
                raise PowerFailed(
                    f"cmdpower: {command} exited with status {code}: {_tail(err)}"
                )
            return out

        return d.addCallback(ended)

    def _status(self, reactor):
        command = shlex.join(self.status)

        def parse(out):
            text = out.decode(errors="replace").strip()
            state = _STATUS_WORDS.get(text.lower())
            if state is None:
                shown = text.splitlines()[0][:60] if text else ""
                raise PowerFailed(
                    f"cmdpower: {command} printed {shown!r}; it must print "
                    f"'on' or 'off'"
                )
            return state

        return self._run(reactor, self.status).addCallback(parse)

    def set_power(self, runtime, on):
        """Run ``on`` or ``off``, then ``status`` to verify; Deferred[bool]."""

        def verify(state):
            if state != on:
                raise PowerMismatch(
                    f"cmdpower: {shlex.join(self.status)} reports "
                    f"{'on' if state else 'off'} after {shlex.join(argv)}"
                )
            return state

        argv = self.on if on else self.off
        d = self._run(runtime.reactor, argv)
        d.addCallback(lambda _: self._status(runtime.reactor))
        return d.addCallback(verify)

    def get_power(self, runtime):
        """Run ``status``; Deferred[bool]."""
        return self._status(runtime.reactor)


POWER_OPTIONS = {cls.cls_name: cls for cls in (SNMPPower, GPIOPower, CmdPower)}
