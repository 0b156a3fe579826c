"""Power options: SNMP against a real snmpsim agent, commands, and GPIO.

SNMP tests check the agent's state with net-snmp's ``snmpget``; command
tests run real scripts written into ``tmp_path``; GPIO tests use a fake
``gpiod`` module because no GPIO simulator can run here.
"""

import errno
import subprocess
import sys
import time
from pathlib import Path

import attrs
import gpiod
import pytest
import pytest_twisted

from bitelab.errors import PowerFailed
from bitelab.options import Runtime
from bitelab.power import POWER_OPTIONS, CmdPower, GPIOPower, SNMPPower
from bitelab.snmp import SNMPClient
from support.snmpagent import NOTWRITABLE_PORT, WRONGTYPE_PORT


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def runtime(reactor):
    """A Runtime with a real SNMP client on loopback."""
    client = SNMPClient(reactor, interface="127.0.0.1")
    client.start()
    yield Runtime(reactor=reactor, snmp=client)
    pytest_twisted.blockon(client.stop())


def snmp_power(agent, port, **kwargs):
    kwargs.setdefault("timeout", 0.5)
    kwargs.setdefault("retries", 1)
    return SNMPPower(
        host=agent.host,
        port=port,
        community=agent.community,
        snmp_port=agent.port,
        **kwargs,
    )


def test_power_options_registry():
    """POWER_OPTIONS maps each board-file ``cls`` name to its class."""
    assert POWER_OPTIONS == {
        "snmppower": SNMPPower,
        "gpiopower": GPIOPower,
        "cmdpower": CmdPower,
    }


def test_snmppower_defaults_and_oid():
    """Defaults follow the design and the OID is pethPsePortAdminEnable.GROUP.PORT."""
    option = SNMPPower(host="poe", port=2)
    assert (option.community, option.group, option.snmp_port) == ("private", 1, 161)
    assert option.oid == "1.3.6.1.2.1.105.1.1.1.3.1.2"
    assert SNMPPower(host="poe", port=7, group=3).oid.endswith(".3.7")
    assert attrs.fields(SNMPPower).host.kw_only


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host": "", "port": 1},
        {"host": "poe", "port": 0},
        {"host": "poe", "port": "2"},
        {"host": "poe", "port": 1, "snmp_port": 70000},
        {"host": "poe", "port": 1, "timeout": 0},
        {"host": "poe", "port": 1, "retries": -1},
    ],
)
def test_snmppower_refuses_bad_values(kwargs):
    """Bad option values are refused when the board file is loaded."""
    with pytest.raises(ValueError):
        SNMPPower(**kwargs)


@pytest_twisted.ensureDeferred
async def test_snmp_on_off_verified(runtime, snmp_agent):
    """set_power switches the PoE port on and off; snmpget sees each state."""
    option = snmp_power(snmp_agent, 3)
    assert snmp_agent.get(1, 3) == 2
    assert await option.set_power(runtime, True) is True
    assert snmp_agent.get(1, 3) == 1
    assert await option.get_power(runtime) is True
    assert await option.set_power(runtime, False) is False
    assert snmp_agent.get(1, 3) == 2
    assert await option.get_power(runtime) is False
    assert snmp_agent.get(1, 4) == 2


@pytest_twisted.ensureDeferred
async def test_snmp_get_power_reads_agent(runtime, snmp_agent):
    """get_power reports a state set behind bitelab's back with net-snmp's snmpset."""
    snmp_agent.set(1, 5, 1)
    assert await snmp_power(snmp_agent, 5).get_power(runtime) is True
    assert await snmp_power(snmp_agent, 6).get_power(runtime) is False


@pytest_twisted.ensureDeferred
async def test_snmp_many_ports_at_once(runtime, snmp_agent):
    """Eight ports switched concurrently on one switch all end up on."""
    from twisted.internet import defer

    options = [snmp_power(snmp_agent, port) for port in range(1, 9)]
    results = await defer.gatherResults([o.set_power(runtime, True) for o in options])
    assert results == [True] * 8
    assert [snmp_agent.get(1, port) for port in range(1, 9)] == [1] * 8


@pytest_twisted.ensureDeferred
async def test_snmp_dead_agent(runtime, snmp_agent):
    """A stopped agent gives PowerFailed within the configured time-outs."""
    snmp_agent.stop()
    option = snmp_power(snmp_agent, 1, timeout=0.2, retries=1)
    started = time.monotonic()
    with pytest.raises(PowerFailed, match="no response after 2 attempt"):
        await option.set_power(runtime, True)
    assert time.monotonic() - started < 2


@pytest_twisted.ensureDeferred
async def test_snmp_agent_back_after_restart(runtime, snmp_agent):
    """After a dead period the same client works again once the agent is back."""
    option = snmp_power(snmp_agent, 2, timeout=0.2, retries=0)
    snmp_agent.stop()
    with pytest.raises(PowerFailed):
        await option.get_power(runtime)
    snmp_agent.start()
    assert await option.set_power(runtime, True) is True
    assert snmp_agent.get(1, 2) == 1


@pytest_twisted.ensureDeferred
async def test_snmp_wrong_community(runtime, snmp_agent):
    """A community the agent does not know gives PowerFailed and changes nothing."""
    option = attrs.evolve(snmp_power(snmp_agent, 1, timeout=0.2), community="public")
    with pytest.raises(PowerFailed, match="community"):
        await option.set_power(runtime, True)
    assert snmp_agent.get(1, 1) == 2


@pytest_twisted.ensureDeferred
async def test_snmp_missing_port(runtime, snmp_agent):
    """A port the switch does not have gives PowerFailed naming noSuch*."""
    option = snmp_power(snmp_agent, 77)
    with pytest.raises(PowerFailed, match="noSuch(Instance|Object)") as info:
        await option.set_power(runtime, True)
    assert option.oid in info.value.message
    with pytest.raises(PowerFailed, match="noSuch(Instance|Object)"):
        await option.get_power(runtime)


@pytest_twisted.ensureDeferred
async def test_snmp_wrong_type(runtime, snmp_agent):
    """A switch refusing the SET with wrongType gives PowerFailed saying so."""
    option = snmp_power(snmp_agent, WRONGTYPE_PORT)
    with pytest.raises(PowerFailed, match="wrongType") as info:
        await option.set_power(runtime, True)
    assert f"{snmp_agent.host}:{snmp_agent.port}" in info.value.message
    assert "\n" not in info.value.message


@pytest_twisted.ensureDeferred
async def test_snmp_not_writable(runtime, snmp_agent):
    """A read-only port gives PowerFailed naming notWritable and the OID."""
    option = snmp_power(snmp_agent, NOTWRITABLE_PORT)
    with pytest.raises(PowerFailed, match="notWritable") as info:
        await option.set_power(runtime, True)
    assert option.oid in info.value.message


class FakeSNMP:
    """An SNMP client whose switch ignores SETs: reads back ``value``."""

    def __init__(self, value):
        self.value = value

    def set_verified(self, host, port, community, oid, int_value, **kwargs):
        from twisted.internet import defer

        return defer.succeed(self.value)

    def get(self, host, port, community, oid, **kwargs):
        from twisted.internet import defer

        return defer.succeed(self.value)


def test_snmp_read_back_mismatch(reactor):
    """A read-back differing from the request is PowerFailed, not success."""
    option = SNMPPower(host="poe", port=2)
    d = option.set_power(Runtime(reactor=reactor, snmp=FakeSNMP(2)), True)
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(PowerFailed)
    assert "after setting 1" in failures[0].getErrorMessage()


def test_snmp_odd_state_value(reactor):
    """A state other than 1 or 2 is PowerFailed, not a guess."""
    d = SNMPPower(host="poe", port=2).get_power(
        Runtime(reactor=reactor, snmp=FakeSNMP(3))
    )
    failures = []
    d.addErrback(failures.append)
    assert failures and "expected 1 (on) or 2 (off)" in failures[0].getErrorMessage()


# Commands

POWER_SCRIPT = """#!/bin/sh
# power.sh on|off|status STATEFILE: a board whose power is a file.
case "$1" in
    on|off) echo "$1" > "$2" ;;
    status) cat "$2" ;;
esac
"""


def script(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def power_script(tmp_path):
    state = tmp_path / "state"
    state.write_text("off\n")
    return script(tmp_path, "power.sh", POWER_SCRIPT), str(state)


def cmd_power(power_script, **kwargs):
    path, state = power_script
    commands = {
        name: [path, name, state]
        for name in ("on", "off", "status")
        if name not in kwargs
    }
    return CmdPower(**commands, **kwargs)


@pytest_twisted.ensureDeferred
async def test_cmd_on_off(reactor, power_script):
    """on/off commands change the state file; status verifies and reports it."""
    option = cmd_power(power_script)
    runtime = Runtime(reactor=reactor)
    _, state = power_script
    assert await option.set_power(runtime, True) is True
    assert Path(state).read_text() == "on\n"
    assert await option.get_power(runtime) is True
    assert await option.set_power(runtime, False) is False
    assert Path(state).read_text() == "off\n"
    assert await option.get_power(runtime) is False


@pytest_twisted.ensureDeferred
async def test_cmd_string_split_without_shell(reactor, power_script, tmp_path):
    """A command given as a string is split like argv, not run by a shell."""
    path, state = power_script
    option = CmdPower(
        on=f"{path} on {state}",
        off=f"{path} off {state}",
        status=f"{path} status {state}",
    )
    assert option.on == (path, "on", state)
    assert await option.set_power(Runtime(reactor=reactor), True) is True
    assert Path(state).read_text() == "on\n"


@pytest_twisted.ensureDeferred
async def test_cmd_metacharacters_literal(reactor, tmp_path, monkeypatch):
    """Shell metacharacters in argv reach the program literally and run nothing."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "argv"
    nasty = ["a; touch pwned", "$(touch pwned2)", "`touch pwned3`", "*", "x > y", "'"]
    dump = "import sys; open(sys.argv[1], 'w').write('\\n'.join(sys.argv[2:]))"
    option = CmdPower(
        on=[sys.executable, "-c", dump, str(out), *nasty],
        off=["true"],
        status=["echo", "on"],
    )
    assert await option.set_power(Runtime(reactor=reactor), True) is True
    assert out.read_text().split("\n") == nasty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["argv"]


@pytest_twisted.ensureDeferred
async def test_cmd_nonzero_exit(reactor, power_script, tmp_path):
    """A failing command gives PowerFailed with its exit status and stderr tail."""
    failing = script(
        tmp_path,
        "fail.sh",
        "#!/bin/sh\necho starting >&2\necho relay 3 jammed >&2\nexit 3\n",
    )
    option = cmd_power(power_script, on=[failing])
    with pytest.raises(PowerFailed) as info:
        await option.set_power(Runtime(reactor=reactor), True)
    message = info.value.message
    assert "status 3" in message and "relay 3 jammed" in message
    assert "starting" not in message and "\n" not in message


@pytest_twisted.ensureDeferred
async def test_cmd_garbage_status(reactor, power_script):
    """A status that prints neither on nor off gives PowerFailed quoting it."""
    option = cmd_power(power_script, status=["echo", "maybe"])
    with pytest.raises(PowerFailed, match="printed 'maybe'"):
        await option.get_power(Runtime(reactor=reactor))


@pytest_twisted.ensureDeferred
async def test_cmd_status_digits(reactor, power_script):
    """status may print 1 or 0 instead of on or off."""
    runtime = Runtime(reactor=reactor)
    assert await cmd_power(power_script, status=["echo", "1"]).get_power(runtime)
    assert not await cmd_power(power_script, status=["echo", "0"]).get_power(runtime)


@pytest_twisted.ensureDeferred
async def test_cmd_verification_fails(reactor, power_script):
    """An on command that leaves the board off gives PowerFailed."""
    option = cmd_power(power_script, on=["true"])
    with pytest.raises(PowerFailed, match="reports off after true"):
        await option.set_power(Runtime(reactor=reactor), True)


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid, wait=5.0):
    deadline = time.monotonic() + wait
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _gone(pid)


@pytest_twisted.ensureDeferred
async def test_cmd_timeout_kills(reactor, power_script, tmp_path):
    """A command outliving its timeout is killed and gives PowerFailed promptly."""
    pid_file = tmp_path / "pid"
    hanging = script(
        tmp_path, "hang.sh", f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n"
    )
    option = cmd_power(power_script, on=[hanging], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(PowerFailed, match="timed out after 0.5 s"):
        await option.set_power(Runtime(reactor=reactor), True)
    assert time.monotonic() - started < 5
    assert _wait_gone(int(pid_file.read_text()))


@pytest_twisted.ensureDeferred
async def test_cmd_missing_program(reactor, power_script, tmp_path):
    """A program that does not exist gives PowerFailed, not a hang or a crash."""
    option = cmd_power(power_script, on=[str(tmp_path / "no-such-program")])
    with pytest.raises(PowerFailed, match="no-such-program"):
        await option.set_power(Runtime(reactor=reactor), True)


@pytest.mark.parametrize("bad", [[], "", [""], ["ok", 3], None])
def test_cmd_refuses_bad_commands(bad):
    """Empty commands and non-string arguments are refused at load time."""
    with pytest.raises((ValueError, TypeError)):
        CmdPower(on=bad, off=["true"], status=["echo", "on"])


# GPIO


class FakeLine:
    """One simulated GPIO line."""

    def __init__(self, name):
        self.name = name
        self.direction = "input"
        self.physical = 0
        self.held_by = None
        self.stuck = False


class FakeRequest:
    """A held line request, like ``gpiod.LineRequest`` for one line."""

    def __init__(self, chip, offset, key, settings, consumer):
        self.chip = chip
        self.offset = offset
        self.key = key
        self.active_low = settings.active_low
        self.consumer = consumer
        self.released = False
        line = chip.lines[offset]
        line.held_by = consumer
        if settings.direction == gpiod.line.Direction.OUTPUT:
            line.direction = "output"
            self._drive(settings.output_value)
        elif settings.direction == gpiod.line.Direction.INPUT:
            line.direction = "input"

    def _line(self, key):
        if self.released:
            raise gpiod.RequestReleasedError()
        if key != self.key:
            raise ValueError(f"line {key!r} was not requested")
        return self.chip.lines[self.offset]

    def _drive(self, value):
        line = self.chip.lines[self.offset]
        if not line.stuck:
            line.physical = int((value == gpiod.line.Value.ACTIVE) != self.active_low)

    def set_value(self, key, value):
        if self._line(key).direction != "output":
            raise PermissionError(errno.EPERM, "Operation not permitted")
        self._drive(value)

    def get_value(self, key):
        active = bool(self._line(key).physical) != self.active_low
        return gpiod.line.Value.ACTIVE if active else gpiod.line.Value.INACTIVE

    def release(self):
        if not self.released:
            self.released = True
            self.chip.lines[self.offset].held_by = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class FakeChip:
    """A simulated chip: lines by offset, with names."""

    def __init__(self, names):
        self.lines = [FakeLine(name) for name in names]


class FakeGpiod:
    """Stand-in for the ``gpiod`` module, at exactly the API GPIOPower calls.

    No GPIO simulator (gpio-sim) can run here, so this fake replaces
    ``gpiod.request_lines`` and the ``LineRequest`` it returns, modelling
    chips, line names, requests (a held line is busy, EBUSY), output
    direction, the physical level and active-low inversion on set and get,
    and a line stuck at its level.  ``LineSettings`` and the ``gpiod.line``
    enums are the real ones.
    """

    LineSettings = gpiod.LineSettings
    line = gpiod.line

    def __init__(self):
        self.chips = {"/dev/gpiochip0": FakeChip(["PWR_A", "PWR_B", "LED", "RELAY"])}
        self.requests = []

    def request_lines(self, path, config, consumer=None):
        chip = self.chips.get(path)
        if chip is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        [(key, settings)] = config.items()
        if isinstance(key, str):
            names = [line.name for line in chip.lines]
            if key not in names:
                raise ValueError(f"line '{key}' not found")
            offset = names.index(key)
        else:
            offset = key
            if offset >= len(chip.lines):
                raise ValueError(f"invalid offset {offset}")
        if chip.lines[offset].held_by is not None:
            raise OSError(errno.EBUSY, "Device or resource busy")
        request = FakeRequest(
            chip, offset, key, settings or gpiod.LineSettings(), consumer
        )
        self.requests.append(request)
        return request


@pytest.fixture
def fake_gpiod():
    return FakeGpiod()


def gpio_run(option, method, fake, *args):
    """Call a GPIOPower method and return its result, raising its failure."""
    results = []
    getattr(option, method)(Runtime(reactor=None, gpio=fake), *args).addBoth(
        results.append
    )
    [result] = results
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def test_gpio_on_off(fake_gpiod):
    """set_power drives the line high for on and low for off, read back."""
    option = GPIOPower(chip="gpiochip0", line=1)
    line = fake_gpiod.chips["/dev/gpiochip0"].lines[1]
    assert gpio_run(option, "set_power", fake_gpiod, True) is True
    assert (line.direction, line.physical, line.held_by) == ("output", 1, "bitelab")
    assert gpio_run(option, "get_power", fake_gpiod) is True
    assert gpio_run(option, "set_power", fake_gpiod, False) is False
    assert line.physical == 0
    assert gpio_run(option, "get_power", fake_gpiod) is False


def test_gpio_active_low(fake_gpiod):
    """With active_low, on drives the line low and reads back as on."""
    option = GPIOPower(chip="/dev/gpiochip0", line=2, active_low=True)
    line = fake_gpiod.chips["/dev/gpiochip0"].lines[2]
    assert gpio_run(option, "set_power", fake_gpiod, True) is True
    assert line.physical == 0
    assert gpio_run(option, "get_power", fake_gpiod) is True
    assert gpio_run(option, "set_power", fake_gpiod, False) is False
    assert line.physical == 1


def test_gpio_line_by_name_and_held(fake_gpiod):
    """A line named in the board file is used, and its request is kept between switches."""
    option = GPIOPower(chip="gpiochip0", line="RELAY", consumer="cora-1")
    gpio_run(option, "set_power", fake_gpiod, True)
    gpio_run(option, "set_power", fake_gpiod, False)
    gpio_run(option, "set_power", fake_gpiod, True)
    line = fake_gpiod.chips["/dev/gpiochip0"].lines[3]
    assert (line.physical, line.held_by) == (1, "cora-1")
    assert len(fake_gpiod.requests) == 1


def test_gpio_get_before_set_keeps_line(fake_gpiod):
    """Reading before any switch does not turn the line into an output, and frees it."""
    line = fake_gpiod.chips["/dev/gpiochip0"].lines[0]
    line.physical = 1
    assert gpio_run(GPIOPower(chip="gpiochip0", line=0), "get_power", fake_gpiod)
    assert (line.direction, line.held_by) == ("input", None)


def test_gpio_stuck_line(fake_gpiod):
    """A line that does not follow the request gives PowerFailed."""
    fake_gpiod.chips["/dev/gpiochip0"].lines[0].stuck = True
    with pytest.raises(PowerFailed, match="reads back off after switching on"):
        gpio_run(GPIOPower(chip="gpiochip0", line=0), "set_power", fake_gpiod, True)


def test_gpio_busy_line(fake_gpiod):
    """A line held by another consumer gives PowerFailed saying it is busy."""
    fake_gpiod.chips["/dev/gpiochip0"].lines[1].held_by = "someone"
    with pytest.raises(PowerFailed, match="busy") as info:
        gpio_run(GPIOPower(chip="gpiochip0", line=1), "set_power", fake_gpiod, True)
    assert "/dev/gpiochip0 line 1" in info.value.message


@pytest.mark.parametrize(
    "chip, line, problem",
    [("gpiochip9", 0, "No such file"), ("gpiochip0", "NOPE", "not found")],
)
def test_gpio_missing_chip_or_line(fake_gpiod, chip, line, problem):
    """A missing chip or line name gives PowerFailed naming the problem."""
    with pytest.raises(PowerFailed, match=problem):
        gpio_run(GPIOPower(chip=chip, line=line), "set_power", fake_gpiod, True)


def test_gpio_recovers_after_release(fake_gpiod):
    """If the held request goes away, the next switch requests the line again."""
    option = GPIOPower(chip="gpiochip0", line=0)
    gpio_run(option, "set_power", fake_gpiod, True)
    fake_gpiod.requests[0].release()
    with pytest.raises(PowerFailed):
        gpio_run(option, "set_power", fake_gpiod, False)
    assert gpio_run(option, "set_power", fake_gpiod, False) is False
    assert fake_gpiod.chips["/dev/gpiochip0"].lines[0].physical == 0


def test_gpio_line_validation():
    """A digit string is a line offset; negative offsets and empty names are refused."""
    assert GPIOPower(chip="gpiochip0", line="17").line == 17
    for bad in (-1, "", True):
        with pytest.raises(ValueError):
            GPIOPower(chip="gpiochip0", line=bad)


def test_gone_helper_tells_live_from_finished():
    """The process check used by the timeout test is not vacuously true."""
    process = subprocess.Popen(["sleep", "30"])
    try:
        assert not _gone(process.pid)
    finally:
        process.kill()
        process.wait()
    assert _gone(process.pid)
