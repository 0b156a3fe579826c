"""Serial consoles: the log, the viewer hub and the service on real ptys."""

import io
import os

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from bitelab.console import (
    FAILED,
    RELEASED_MARKER,
    RESERVED_MARKER,
    TOO_SLOW,
    ConsoleHub,
    ConsoleLog,
    ConsoleService,
    _last_line_at,
)
from support.pty import PtyBoard

ALL_BYTES = bytes(range(256))


@pytest.fixture
def reactor():
    """The reactor pytest-twisted runs."""
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def log_events():
    """Every log event emitted during the test; fails it on unexpected errors.

    A test that expects error or critical events removes them from the list.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
    bad = [
        e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]
    assert not bad, bad


def messages(events):
    """The formatted text of the log events from bitelab.console."""
    return [
        formatEvent(e)
        for e in events
        if str(e.get("log_namespace", "")).startswith("bitelab.console")
    ]


class Viewer:
    """A viewer that takes everything at once and records it."""

    def __init__(self):
        self.data = bytearray()
        self.closed = None

    def write(self, data):
        self.data += data

    def close(self, reason):
        self.closed = reason


class PendingViewer(Viewer):
    """A viewer that reports a backlog it never sends (a stuck SSH channel)."""

    def pending(self):
        return len(self.data)


class ConsumerViewer(Viewer):
    """A viewer that is an IConsumer, like a transport or an HTTP request."""

    def __init__(self):
        super().__init__()
        self.producer = None
        self.unregistered = False

    def registerProducer(self, producer, streaming):
        assert IPushProducer.providedBy(producer) and streaming
        self.producer = producer

    def unregisterProducer(self):
        self.unregistered = True
        self.producer = None


class BrokenViewer(Viewer):
    """A viewer whose write raises."""

    def write(self, data):
        raise RuntimeError("viewer bug")


@pytest_twisted.inlineCallbacks
def wait_for(reactor, condition, timeout=10.0, interval=0.01):
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {condition!r}")
        yield task.deferLater(reactor, interval, lambda: None)


def read_files(console_log):
    """All kept log files concatenated oldest first."""
    data = b""
    for name in console_log.files():
        with open(name, "rb") as f:
            data = f.read() + data
    return data


# The log


def test_log_is_binary_safe_and_appends(tmp_path):
    """Every byte value is stored unchanged and reopening appends."""
    path = str(tmp_path / "logs" / "b1.log")
    log = ConsoleLog(path)
    log.open()
    log.write(ALL_BYTES)
    log.close()
    log = ConsoleLog(path)
    log.open()
    log.write(b"more\r\n\x00")
    log.close()
    with open(path, "rb") as f:
        assert f.read() == ALL_BYTES + b"more\r\n\x00"


def test_log_rotates_by_size_and_keeps_n_backups(tmp_path):
    """Files never exceed the size bound, only N backups are kept, none lost."""
    path = str(tmp_path / "b1.log")
    log = ConsoleLog(path, max_bytes=100, backups=2)
    log.open()
    written = b"".join(b"%04d" % i for i in range(200))
    for i in range(0, len(written), 37):
        log.write(written[i : i + 37])
    log.close()
    assert sorted(os.listdir(tmp_path)) == ["b1.log", "b1.log.1", "b1.log.2"]
    assert all(os.path.getsize(name) <= 100 for name in log.files())
    kept = read_files(log)
    assert len(kept) > 200
    assert written.endswith(kept)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=90), max_size=30),
    max_bytes=st.integers(1, 64),
    backups=st.integers(0, 3),
)
def test_log_rotation_keeps_an_exact_suffix(
    tmp_path_factory, chunks, max_bytes, backups
):
    """Whatever is written, the kept files are exactly its most recent bytes."""
    path = str(tmp_path_factory.mktemp("rot") / "b.log")
    log = ConsoleLog(path, max_bytes=max_bytes, backups=backups)
    log.open()
    for chunk in chunks:
        log.write(chunk)
    log.close()
    written = b"".join(chunks)
    kept = read_files(log)
    assert written.endswith(kept)
    assert len(kept) >= min(len(written), backups * max_bytes)
    assert all(os.path.getsize(name) <= max_bytes for name in log.files())


def service_for_markers(tmp_path, **kwargs):
    """A service that is never started: only its log is used."""
    return ConsoleService(
        task.Clock(), "b1", "/nonexistent", 115200, str(tmp_path), **kwargs
    )


def test_markers_and_reservation_log(tmp_path):
    """Markers sit on their own lines; reservation_log starts at the last one."""
    console = service_for_markers(tmp_path)
    console.console_log.open()
    console.received(b"boot of the previous user\npartial")
    console.mark_reserved("alice", "2026-01-02T03:04:05Z")
    console.received(b"alice's output\n")
    console.mark_released("alice", "2026-01-02T04:00:00Z", "released")
    console.received(b"between\n")
    console.mark_reserved("bob", "2026-01-02T05:00:00Z")
    console.received(b"bob's \x00\xff output")
    with open(tmp_path / "b1.log", "rb") as f:
        full = f.read()
    assert (
        b"partial\n=== bitelab: reserved by alice at 2026-01-02T03:04:05Z ===\n"
        b"alice's output\n"
        + RELEASED_MARKER
        + b"alice at 2026-01-02T04:00:00Z (released) ===\nbetween\n"
    ) in full
    assert console.reservation_log().read() == (
        b"=== bitelab: reserved by bob at 2026-01-02T05:00:00Z ===\nbob's \x00\xff output"
    )


def test_marker_text_cannot_be_faked_mid_line_or_break_lines(tmp_path):
    """Marker text printed mid-line is not a marker; names cannot add lines."""
    console = service_for_markers(tmp_path)
    console.console_log.open()
    console.mark_reserved("eve\nmallory", "now")
    console.received(b"x " + RESERVED_MARKER + b"nobody ===\nmine\n")
    log = console.reservation_log().read()
    assert log.startswith(RESERVED_MARKER + b"eve?mallory at now ===\n")
    assert log.endswith(b"mine\n")


def test_reservation_log_across_rotation(tmp_path):
    """The marker is found in a backup and the output after it is complete."""
    console = service_for_markers(tmp_path, max_log_bytes=64, backups=3)
    console.console_log.open()
    console.received(b"old " * 30)
    console.mark_reserved("alice", "T1")
    after = bytes(range(100))
    console.received(after)
    assert len(console.console_log.files()) >= 3
    expected = RESERVED_MARKER + b"alice at T1 ===\n" + after
    assert console.reservation_log().read() == expected
    # after a restart the marker is searched for, with the same result
    console.console_log.close()
    again = service_for_markers(tmp_path, max_log_bytes=64, backups=3)
    assert again.reservation_log().read() == expected


def test_marker_printed_by_the_board_does_not_move_the_start(tmp_path):
    """A line the board prints that looks like a marker is output of the
    reservation, not its start, while the server remembers the real one."""
    console = service_for_markers(tmp_path)
    console.console_log.open()
    console.mark_reserved("alice", "T1")
    console.received(b"boot\n" + RESERVED_MARKER + b"mallory at T2 ===\nmore\n")
    log = console.reservation_log().read()
    assert log.startswith(RESERVED_MARKER + b"alice at T1 ===\nboot\n")
    assert log.endswith(b"mallory at T2 ===\nmore\n")


def test_reservation_log_when_marker_rotated_out(tmp_path):
    """With the marker gone from all kept files, everything kept is returned."""
    console = service_for_markers(tmp_path, max_log_bytes=50, backups=1)
    console.console_log.open()
    console.mark_reserved("alice", "T1")
    out = b"".join(b"line %03d\n" % i for i in range(40))
    console.received(out)
    log = console.reservation_log().read()
    assert RESERVED_MARKER not in log
    assert 50 < len(log) <= 100
    assert out.endswith(log)


def naive_last_line(data, marker):
    """The last line start in ``data`` holding ``marker``, or -1, the slow way."""
    starts = [
        i
        for i in range(len(data))
        if data.startswith(marker, i) and (i == 0 or data[i - 1 : i] == b"\n")
    ]
    return starts[-1] if starts else -1


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from([b"\n", b"=m=", b"=m", b"x", b"\n=m=", b"ab\n"]), max_size=40
    ),
    chunk=st.integers(1, 12),
)
def test_marker_search_reads_backwards_in_chunks(tmp_path_factory, pieces, chunk):
    """Searching the file backwards a chunk at a time finds the same line as
    a search of the whole file, wherever the chunk boundaries fall."""
    data = b"".join(pieces)
    path = tmp_path_factory.mktemp("search") / "log"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _last_line_at(fd, len(data), b"=m=", chunk) == naive_last_line(
            data, b"=m="
        )
    finally:
        os.close(fd)


def test_reservation_log_is_read_from_disk_through_rotation(tmp_path):
    """A reader made before rotations still returns exactly what was logged
    when it was made, one file open at a time; a part whose file was
    rotated away before its turn is skipped."""
    console = service_for_markers(tmp_path, max_log_bytes=64, backups=3)
    console.console_log.open()
    console.received(b"old " * 10)
    console.mark_reserved("alice", "T1")
    logged = bytes(range(100))
    console.received(logged)
    expected = RESERVED_MARKER + b"alice at T1 ===\n" + logged
    reader = console.reservation_log()
    assert len(reader._parts) >= 3
    head = reader.read(10)
    for _ in range(2):
        console.console_log.rotate()
    console.received(b"later output, not read")
    assert head + reader.read() == expected
    assert reader._fd is None
    other = service_for_markers(tmp_path / "other", max_log_bytes=64, backups=3)
    other.console_log.open()
    other.received(b"old " * 10)
    other.mark_reserved("alice", "T1")
    other.received(logged)
    late = other.reservation_log()
    assert [end - start for _, start, end in late._parts] == [63, 64, 14]
    first = late.read(5)
    for _ in range(3):
        other.console_log.rotate()
    # the middle file went before its turn came
    assert first + late.read() == expected[:63] + expected[-14:]
    assert late.read() == b""


class PausingViewer(ConsumerViewer):
    """A consumer that pauses its producer once ``limit`` bytes wait to be
    sent, as a transport does; ``drain()`` sends them and resumes it."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.sent = 0

    def write(self, data):
        super().write(data)
        if len(self.data) - self.sent >= self.limit:
            self.producer.pauseProducing()

    def drain(self):
        self.sent = len(self.data)
        self.producer.resumeProducing()


class CountingReader(io.BytesIO):
    """A history reader that counts what was read from it and its closing."""

    def __init__(self, data):
        super().__init__(data)
        self.taken = 0
        self.was_closed = False

    def read(self, size=-1):
        data = super().read(size)
        self.taken += len(data)
        return data

    def close(self):
        self.was_closed = True
        super().close()


def test_hub_replays_history_only_as_fast_as_the_viewer_takes_it():
    """A consumer gets the history chunk by chunk as it drains, then the
    output delivered meanwhile, nothing lost or repeated; history is read
    no further ahead than what the viewer took."""
    hub = ConsoleHub(max_backlog=1000)
    history = bytes(range(256)) * 4096  # 1 MiB
    reader = CountingReader(history)
    viewer = PausingViewer(limit=100_000)
    hub.attach(viewer, history=reader)
    assert reader.taken == len(viewer.data) < 200_000
    hub.deliver(b"live 1 ")
    hub.deliver(b"live 2")
    rounds = 0
    while reader.taken < len(history):
        viewer.drain()
        assert reader.taken == len(viewer.data)
        rounds += 1
    viewer.drain()
    assert rounds >= 5
    assert bytes(viewer.data) == history + b"live 1 live 2"
    assert reader.was_closed
    hub.deliver(b"!")
    assert viewer.data.endswith(b"live 2!")


def test_hub_viewer_stuck_in_replay_is_dropped_and_its_reader_closed():
    """A consumer that stops reading during the replay holds one chunk of
    it; live output piling up past the bound drops it and closes the reader."""
    hub = ConsoleHub(max_backlog=100)
    reader = CountingReader(b"h" * 1_000_000)
    viewer = PausingViewer(limit=10)
    hub.attach(viewer, history=reader)
    assert reader.taken <= 64 * 1024
    for _ in range(11):
        hub.deliver(b"x" * 10)
    assert viewer.closed == TOO_SLOW
    assert reader.was_closed and viewer.unregistered


@pytest.mark.parametrize("how", ["detach", "connection lost"])
def test_hub_replay_reader_closed_when_the_viewer_goes(how):
    """Detaching, or losing the connection, mid-replay closes the reader."""
    hub = ConsoleHub()
    reader = CountingReader(b"h" * 1_000_000)
    viewer = PausingViewer(limit=10)
    hub.attach(viewer, history=reader)
    if how == "detach":
        hub.detach(viewer)
    else:
        viewer.producer.stopProducing()
    assert reader.was_closed and len(hub) == 0


# The hub


def test_hub_viewers_see_everything_from_attach_time():
    """Each viewer gets all output after it attached, nothing before."""
    hub = ConsoleHub()
    first, second = Viewer(), Viewer()
    hub.attach(first)
    hub.deliver(b"one ")
    hub.attach(second)
    hub.deliver(b"two ")
    hub.detach(first)
    hub.deliver(b"three")
    assert first.data == b"one two "
    assert second.data == b"two three"
    assert first.closed is None
    hub.close_viewers("reservation of b1 ended")
    assert second.closed == "reservation of b1 ended"
    assert first.closed is None
    assert len(hub) == 0


def test_hub_history_then_live_output():
    """A long history is sent first and only live output counts as slowness."""
    hub = ConsoleHub(max_backlog=10)
    viewer = PendingViewer()
    hub.attach(viewer, history=io.BytesIO(b"h" * 100))
    assert viewer.closed is None
    assert viewer.data == b"h" * 100
    hub.deliver(b"0123456789")
    assert viewer.closed is None
    assert viewer.data == b"h" * 100 + b"0123456789"
    hub.deliver(b"!")
    assert viewer.closed == TOO_SLOW


def test_hub_history_allowance_ends_once_caught_up():
    """After draining the history a viewer gets the normal bound again."""
    hub = ConsoleHub(max_backlog=10)
    viewer = PendingViewer()
    hub.attach(viewer, history=io.BytesIO(b"h" * 100))
    viewer.data.clear()
    hub.deliver(b"0123456789")
    assert viewer.closed is None
    hub.deliver(b"!")
    assert viewer.closed == TOO_SLOW


def test_hub_consumer_backpressure_queues_then_resumes():
    """A paused consumer gets the queued data in order when it resumes."""
    hub = ConsoleHub(max_backlog=100)
    viewer = ConsumerViewer()
    hub.attach(viewer)
    producer = viewer.producer
    hub.deliver(b"a")
    producer.pauseProducing()
    hub.deliver(b"b")
    hub.deliver(b"c")
    assert viewer.data == b"a"
    producer.resumeProducing()
    hub.deliver(b"d")
    assert viewer.data == b"abcd"
    hub.detach(viewer)
    assert viewer.unregistered and viewer.closed is None


def test_hub_slow_consumer_dropped_fast_one_continues():
    """A paused consumer past the bound is closed; a fast viewer keeps up."""
    hub = ConsoleHub(max_backlog=1000)
    slow, fast = ConsumerViewer(), Viewer()
    hub.attach(slow)
    hub.attach(fast)
    slow.producer.pauseProducing()
    for _ in range(20):
        hub.deliver(b"x" * 100)
    assert slow.closed == TOO_SLOW
    assert slow.unregistered
    assert fast.data == b"x" * 2000
    assert hub.viewers == [fast]


def test_hub_pending_viewer_dropped_when_behind():
    """A viewer reporting a large pending() backlog is closed as too slow."""
    hub = ConsoleHub(max_backlog=10)
    slow, fast = PendingViewer(), Viewer()
    hub.attach(slow)
    hub.attach(fast)
    hub.deliver(b"0123456789")
    assert slow.closed is None
    hub.deliver(b"!")
    assert slow.closed == TOO_SLOW
    hub.deliver(b"more")
    assert fast.data == b"0123456789!more"


def test_hub_consumer_that_went_away_is_forgotten():
    """stopProducing (connection lost) removes the viewer without closing it."""
    hub = ConsoleHub()
    viewer = ConsumerViewer()
    hub.attach(viewer)
    viewer.producer.stopProducing()
    hub.deliver(b"x")
    assert viewer.data == b"" and viewer.closed is None and len(hub) == 0


def test_hub_broken_viewer_does_not_stop_others(log_events):
    """A viewer raising is logged and closed; the others still get output."""
    hub = ConsoleHub()
    broken, good = BrokenViewer(), Viewer()
    hub.attach(broken)
    hub.attach(good)
    hub.deliver(b"data")
    failures = [e for e in log_events if "log_failure" in e]
    assert len(failures) == 1
    log_events[:] = [e for e in log_events if "log_failure" not in e]
    assert broken.closed == FAILED
    assert good.data == b"data"
    assert hub.viewers == [good]


# The service with a fake port and a fake clock


class FakePort:
    """Stands in for SerialPort: records writes, can be lost."""

    def __init__(self, proto):
        self.proto = proto
        self.written = []
        self.closed = False

    def write(self, data):
        self.written.append(data)

    def connectionLost(self, reason):
        self.closed = True
        self.proto.connectionLost(reason)


class FakeDevice:
    """A device that is present or not, opened through ``open``."""

    def __init__(self):
        self.present = False
        self.ports = []

    def open(self, proto, device, reactor, baudrate):
        if not self.present:
            raise FileNotFoundError(2, "No such file or directory", device)
        port = FakePort(proto)
        proto.makeConnection(port)
        self.ports.append(port)
        return port


def test_service_backoff_and_reconnect(tmp_path, log_events):
    """A missing device is retried with capped doubling delays until it shows."""
    clock, device = task.Clock(), FakeDevice()
    console = ConsoleService(
        clock,
        "b1",
        "/dev/ttyUSB9",
        115200,
        str(tmp_path),
        retry_initial=1.0,
        retry_max=8.0,
        port_factory=device.open,
    )
    console.startService()
    delays = []
    for _ in range(6):
        (call,) = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert not console.connected
    console.send(b"typed")
    console.send(b"typed again")
    device.present = True
    clock.advance(8.0)
    assert console.connected and clock.getDelayedCalls() == []
    console.send(b"ls\n")
    assert device.ports[0].written == [b"ls\n"]
    text = messages(log_events)
    assert sum("cannot open console device /dev/ttyUSB9" in t for t in text) == 1
    assert sum("dropping input" in t for t in text) == 1
    assert any("console device /dev/ttyUSB9 is back" in t for t in text)
    console.stopService()
    assert device.ports[0].closed


def test_service_lost_device_retries_and_stop_cancels(tmp_path, log_events):
    """Losing the port schedules a reconnect; stopService cancels it and closes."""
    clock, device = task.Clock(), FakeDevice()
    device.present = True
    console = ConsoleService(
        clock, "b1", "/dev/ttyUSB9", 115200, str(tmp_path), port_factory=device.open
    )
    viewer = Viewer()
    console.startService()
    console.attach(viewer)
    device.ports[0].proto.dataReceived(b"hello")
    device.present = False
    device.ports[0].connectionLost(Failure(OSError("device reports EIO")))
    assert not console.connected
    assert len(clock.getDelayedCalls()) == 1
    assert any("lost: device reports EIO" in t for t in messages(log_events))
    console.stopService()
    assert clock.getDelayedCalls() == []
    assert viewer.data == b"hello"
    assert viewer.closed == "console of b1 closed: server stopping"


def test_service_attach_with_replay(tmp_path):
    """A replaying viewer gets the reservation's log, then live output, once."""
    clock, device = task.Clock(), FakeDevice()
    device.present = True
    console = ConsoleService(
        clock, "b1", "/dev/ttyUSB9", 115200, str(tmp_path), port_factory=device.open
    )
    console.startService()
    proto = device.ports[0].proto
    proto.dataReceived(b"previous user\n")
    console.mark_reserved("alice", "T1")
    proto.dataReceived(b"booting")
    viewer = Viewer()
    console.attach(viewer, replay=True)
    proto.dataReceived(b" done\n")
    assert viewer.data == RESERVED_MARKER + b"alice at T1 ===\nbooting done\n"
    console.close_viewers("reservation of b1 ended")
    assert viewer.closed == "reservation of b1 ended"
    console.stopService()


# The service on real pseudo-terminals


@pytest.fixture
def boards():
    """Pseudo-terminal boards, closed at the end of the test."""
    made = []

    def make():
        board = PtyBoard()
        made.append(board)
        return board

    yield make
    for board in made:
        board.close()


@pytest.fixture
def services():
    """Console services, stopped at the end of the test."""
    started = []

    def start(*args, **kwargs):
        console = ConsoleService(*args, **kwargs)
        console.startService()
        started.append(console)
        return console

    yield start
    for console in started:
        if console.running:
            console.stopService()


@pytest_twisted.inlineCallbacks
def test_pty_bytes_both_ways_and_log(reactor, tmp_path, boards, services, log_events):
    """All 256 byte values go board→log→viewers and viewer→board unchanged."""
    board = boards()
    console = services(reactor, "b1", board.path, 115200, str(tmp_path))
    assert console.connected
    first, second = Viewer(), Viewer()
    console.attach(first)
    board.print(b"before second\n")
    yield wait_for(reactor, lambda: first.data == b"before second\n")
    console.attach(second)
    console.mark_reserved("alice", "2026-01-01T00:00:00Z")
    board.print(ALL_BYTES * 4)
    yield wait_for(reactor, board.flush)
    yield wait_for(reactor, lambda: len(second.data) >= 1024)
    assert first.data == b"before second\n" + ALL_BYTES * 4
    assert second.data == ALL_BYTES * 4
    console.send(ALL_BYTES)
    yield wait_for(reactor, lambda: len(board.read()) >= 256)
    assert board.read() == ALL_BYTES
    with open(tmp_path / "b1.log", "rb") as f:
        assert f.read() == (
            b"before second\n=== bitelab: reserved by alice at 2026-01-01T00:00:00Z"
            b" ===\n" + ALL_BYTES * 4
        )
    assert console.reservation_log().read().endswith(b" ===\n" + ALL_BYTES * 4)
    console.stopService()
    assert first.closed == "console of b1 closed: server stopping"
    with pytest.raises(OSError):
        # The server no longer holds the slave open: the master reads EIO.
        os.read(board.master, 1)


@pytest_twisted.inlineCallbacks
def test_pty_rotation(reactor, tmp_path, boards, services, log_events):
    """Output from a real port is rotated into backups as it arrives."""
    board = boards()
    console = services(
        reactor, "b1", board.path, 115200, str(tmp_path), max_log_bytes=1000, backups=2
    )
    out = b"".join(b"%05d\n" % i for i in range(1000))
    board.print(out)
    yield wait_for(reactor, board.flush)
    yield wait_for(
        reactor, lambda: read_files(console.console_log).endswith(b"00999\n")
    )
    assert sorted(os.listdir(tmp_path)) == ["b1.log", "b1.log.1", "b1.log.2"]
    assert out.endswith(read_files(console.console_log))
    assert len(read_files(console.console_log)) > 2000


@pytest_twisted.inlineCallbacks
def test_pty_slow_viewer_disconnected(reactor, tmp_path, boards, services, log_events):
    """A stalled viewer is cut off while a fast one and the log get everything."""
    board = boards()
    console = services(
        reactor, "b1", board.path, 115200, str(tmp_path), max_backlog=4096
    )
    slow, fast = ConsumerViewer(), Viewer()
    console.attach(slow)
    console.attach(fast)
    slow.producer.pauseProducing()
    out = bytes(range(256)) * 64
    board.print(out)
    yield wait_for(reactor, board.flush)
    yield wait_for(reactor, lambda: len(fast.data) >= len(out))
    assert fast.data == out
    assert slow.closed == TOO_SLOW
    assert len(slow.data) == 0
    with open(tmp_path / "b1.log", "rb") as f:
        assert f.read() == out
    assert any("behind; disconnecting it" in t for t in messages(log_events))


@pytest_twisted.inlineCallbacks
def test_pty_device_vanishes_and_returns(
    reactor, tmp_path, boards, services, log_events
):
    """A device that goes away is logged and reopened when its path is back."""
    link = str(tmp_path / "ttyUSB0")
    board = boards()
    os.symlink(board.path, link)
    other_board = boards()
    other = services(reactor, "b2", other_board.path, 115200, str(tmp_path))
    console = services(
        reactor, "b1", link, 115200, str(tmp_path), retry_initial=0.02, retry_max=0.1
    )
    viewer, other_viewer = Viewer(), Viewer()
    console.attach(viewer)
    other.attach(other_viewer)
    board.print(b"first life\n")
    yield wait_for(reactor, lambda: viewer.data == b"first life\n")

    os.unlink(link)
    board.unplug()
    yield wait_for(reactor, lambda: not console.connected)
    console.send(b"lost keystroke")
    other_board.print(b"b2 unaffected\n")
    yield wait_for(reactor, lambda: other_viewer.data == b"b2 unaffected\n")
    assert other.connected

    new_board = boards()
    os.symlink(new_board.path, link)
    yield wait_for(reactor, lambda: console.connected)
    new_board.print(b"second life\n")
    console.send(b"hello")
    yield wait_for(reactor, lambda: viewer.data == b"first life\nsecond life\n")
    yield wait_for(reactor, lambda: new_board.read() == b"hello")
    assert viewer.closed is None
    with open(tmp_path / "b1.log", "rb") as f:
        assert f.read() == b"first life\nsecond life\n"
    text = messages(log_events)
    assert any(f"console device {link} lost" in t for t in text)
    assert any(f"console device {link} is back" in t for t in text)


@pytest_twisted.inlineCallbacks
def test_pty_missing_at_start(reactor, tmp_path, boards, services, log_events):
    """A device missing at start-up is picked up once it appears."""
    link = str(tmp_path / "ttyUSB1")
    console = services(reactor, "b1", link, 115200, str(tmp_path), retry_initial=0.02)
    assert not console.connected
    board = boards()
    os.symlink(board.path, link)
    yield wait_for(reactor, lambda: console.connected)
    viewer = Viewer()
    console.attach(viewer, replay=True)
    board.print(b"late\n")
    yield wait_for(reactor, lambda: viewer.data == b"late\n")
    assert any(f"cannot open console device {link}" in t for t in messages(log_events))
