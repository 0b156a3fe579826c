"""Option classes: what each entry of a board's ``options`` list becomes.

A board file entry ``{ cls = NAME, key = value, ... }`` is turned into an
instance of the class registered under ``NAME`` (see
``bitelab.tap.option_map``) with the other keys as keyword
arguments.  Every option class is a frozen attrs class, so an unknown keyword
is refused when the board file is loaded.

Each class says which board attributes it reports (``reads``) and which ones
a holder may set through ``POST /boards/NAME/attrs`` (``accepts``).
"""

from typing import Any, ClassVar

import attrs


@attrs.define
class Runtime:
    """What option drivers need from the running server.

    ``snmp`` is the shared ``bitelab.snmp.SNMPClient``; ``gpio`` is the
    module providing libgpiod's API (``gpiod``), replaced in tests only.
    """

    reactor: Any
    snmp: Any = None
    gpio: Any = None


def _positive_int(inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


def _whole(value):
    """UCL time suffixes give floats (``2h`` is 7200.0); keep whole ones as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _non_empty_str(inst, attribute, value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, not {value!r}")


class Option:
    """Base of every option class."""

    #: the ``cls`` value naming this class in board files
    cls_name: ClassVar[str] = ""
    #: board attributes this option reports
    reads: ClassVar[tuple] = ()
    #: board attributes a holder may set
    accepts: ClassVar[tuple] = ()

    def static_attrs(self):
        """Attributes known from the configuration alone."""
        return {}

    def conflict_key(self):
        """What this option controls that no other board may share, or None."""


class PowerOption(Option):
    """An option switching the board's power; drivers return Deferreds.

    ``set_power`` only fires once the device has been read back and shows
    the requested state; it fires with that read-back state (a bool).  Any
    failure is a ``bitelab.errors.PowerFailed`` with a one-line message.
    """

    reads = ("power",)
    accepts = ("power",)

    def set_power(self, runtime, on):
        """Switch the power on (``True``) or off, verified; Deferred[bool]."""
        raise NotImplementedError

    def get_power(self, runtime):
        """Read the power state from the device; Deferred[bool]."""
        raise NotImplementedError

    def close(self):
        """Let go of the device: the board left the board file or changed.

        Drivers that hold nothing between operations have nothing to do.
        """


@attrs.frozen(kw_only=True)
class EtherIface(Option):
    """The network interface handed to the reservation's jail."""

    cls_name: ClassVar[str] = "etheriface"
    reads: ClassVar[tuple] = ("etheriface",)

    val: str = attrs.field(validator=_non_empty_str)

    def static_attrs(self):
        return {"etheriface": self.val}

    def conflict_key(self):
        return ("network interface", self.val)


@attrs.frozen(kw_only=True)
class SerialConsole(Option):
    """The board's serial console, owned and logged by the server."""

    cls_name: ClassVar[str] = "serialconsole"
    reads: ClassVar[tuple] = ("serialconsole",)

    val: str = attrs.field(validator=_non_empty_str)
    baud: int = attrs.field(default=115200, validator=_positive_int)

    def static_attrs(self):
        return {"serialconsole": self.val}

    def conflict_key(self):
        return ("serial console", self.val)


@attrs.frozen(kw_only=True)
class Timeout(Option):
    """How long a reservation of this board lasts unless extended (seconds)."""

    cls_name: ClassVar[str] = "timeout"
    reads: ClassVar[tuple] = ("timeout",)
    accepts: ClassVar[tuple] = ("timeout",)

    val: int = attrs.field(converter=_whole, validator=_positive_int)
