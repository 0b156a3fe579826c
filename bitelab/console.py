"""Serial consoles: one service per board owning the port, its log and viewers.

A board's console is split in three parts so that most of it can be tested
without a serial device:

* ``ConsoleLog`` appends what the board prints to ``LOG_DIR/BOARD.log``,
  rotates it by size and finds the output of the current reservation,
  which a ``LogReader`` reads back from disk a chunk at a time.
* ``ConsoleHub`` fans the output out to any number of viewers (SSH sessions,
  HTTP streams) and keeps a slow viewer from holding up the others.
* ``ConsoleService`` opens the device with Twisted's ``SerialPort``, feeds
  both, and reopens the device with a capped exponential back-off whenever
  it is missing or goes away (a USB adapter unplugged).

A *viewer* is any object with these methods:

``write(data: bytes)``
    Called with console output, from the moment the viewer is attached.
``close(reason: str)``
    Called once when the hub drops the viewer (reservation over, service
    stopped, viewer too slow); ``reason`` is one line to show the user.

and optionally one of two ways to report back-pressure:

``registerProducer(producer, streaming)`` / ``unregisterProducer()``
    An ``IConsumer`` (a TCP transport, a ``twisted.web`` request).  The hub
    registers a streaming producer; while the viewer has it paused, output
    is queued in the hub instead of being written.
``pending() -> int``
    Bytes the viewer has accepted but not yet sent (an SSH channel adapter
    returns ``len(channel.buf)``).

Whichever is used, a viewer whose backlog grows beyond the hub's bound is
closed with ``TOO_SLOW``.  The serial port itself is never paused.  A
consumer viewer attached with a replay reads the log from disk only as fast
as it sends it on, so however long the log, it never sits in memory.
"""

import errno
import os
from collections import deque

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from bitelab.errors import Unavailable

#: start of the line written when a reservation begins
RESERVED_MARKER = b"=== bitelab: reserved by "
#: start of the line written when a reservation ends
RELEASED_MARKER = b"=== bitelab: released by "
#: the reason given to a viewer that could not keep up
TOO_SLOW = "console viewer too slow, disconnected"
#: the reason given to a viewer whose own code raised an exception
FAILED = "console viewer failed, disconnected"
#: the reason given to viewers of a board a new reservation starts on
NEW_RESERVATION = "a new reservation of this board starts"
#: seconds a BREAK holds the line
BREAK_SECONDS = 0.25


def _one_line(text):
    """``text`` with control characters replaced, for use inside a marker."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


class ConsoleLog:
    """Append-only, size-rotated, binary-safe log of one board's console.

    ``path`` is the current file; backups are ``path.1`` (newest) to
    ``path.BACKUPS``.  No file grows beyond ``max_bytes`` (unless
    ``max_bytes`` is smaller than a single marker line).  Every ``write`` goes
    straight to the file (no user-space buffering), so the log is always as
    complete as what the board has printed.
    """

    log = Logger()

    def __init__(self, path, max_bytes=4 * 1024 * 1024, backups=4):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes!r}")
        if backups < 0:
            raise ValueError(f"backups must not be negative, not {backups!r}")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file = None
        self._size = 0
        self._ends_with_newline = True
        self._failing = False
        # how many times the log was rotated: the file that was current
        # after N rotations is ``path.K`` after N + K
        self.rotations = 0
        # line written by ``mark`` -> (file number, offset) of its start
        self._marks = {}

    def open(self):
        """Open (or create) the current file for appending."""
        if self._file is not None:
            return
        # console output is the holder's and the admins' only: jail accounts
        # are local users of this host
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        self._file = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(self._file, 0o600)
        self._size = os.lseek(self._file, 0, os.SEEK_END)
        self._ends_with_newline = self._size == 0 or self._last_byte() == b"\n"

    def close(self):
        """Close the current file; ``open`` may be called again later."""
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def _last_byte(self):
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1)

    def write(self, data):
        """Append ``data`` (bytes), rotating whenever the file would overflow.

        A disk error is logged once per run of failures and the data lost:
        the console keeps running for its viewers.
        """
        if not data:
            return
        try:
            self._append(data)
        except OSError as e:
            if not self._failing:
                self.log.error(
                    "cannot write console log {path}: {error}",
                    path=self.path,
                    error=e.strerror or e,
                )
            self._failing = True
            return
        if self._failing:
            self.log.info("console log {path} writable again", path=self.path)
            self._failing = False

    def _append(self, data):
        if self._file is None:
            self.open()
        view = memoryview(data)
        while view:
            room = self.max_bytes - self._size
            if room <= 0:
                self.rotate()
                room = self.max_bytes
            chunk = view[:room]
            done = 0
            while done < len(chunk):
                done += os.write(self._file, chunk[done:])
            self._size += done
            view = view[done:]
        self._ends_with_newline = data[-1:] == b"\n"

    def mark(self, line):
        """Write ``line`` (bytes, ending in a newline) on a line of its own.

        The line is never split by a rotation, so it can always be found;
        where it went is remembered, so ``since_last`` need not search.
        """
        text = line
        if not self._ends_with_newline:
            line = b"\n" + line
        if self._file is None:
            self.open()
        if self._size + len(line) > self.max_bytes and self._size:
            self.rotate()
        where = (self.rotations, self._size + len(line) - len(text))
        self.write(line)
        # forget marks rotated away, and any whose place is now uncertain
        self._marks = {
            known: at
            for known, at in self._marks.items()
            if self.name_of(at[0]) is not None
        }
        if self._failing or self.rotations != where[0]:
            self._marks.clear()
        else:
            self._marks[text] = where

    def rotate(self):
        """Shift ``path`` to ``path.1``, ``path.1`` to ``path.2`` and so on.

        The oldest backup beyond ``backups`` is deleted.
        """
        self.close()
        names = self._names()
        try:
            os.unlink(names[-1])
        except FileNotFoundError:
            pass
        for older, newer in zip(reversed(names[1:]), reversed(names[:-1])):
            try:
                os.replace(newer, older)
            except FileNotFoundError:
                pass
        self.rotations += 1
        self.open()

    def _names(self):
        return [self.path] + [f"{self.path}.{i}" for i in range(1, self.backups + 1)]

    def files(self):
        """The existing log files, newest first."""
        return [name for name in self._names() if os.path.exists(name)]

    def _end_of(self, number):
        """The size of the file that was current after ``number`` rotations."""
        if number == self.rotations and self._file is not None:
            return self._size
        try:
            return os.stat(self.name_of(number)).st_size
        except (OSError, TypeError):
            return 0

    def name_of(self, number):
        """The name now of the file that was current after ``number``
        rotations, or None if it has been rotated away."""
        age = self.rotations - number
        return self._names()[age] if 0 <= age <= self.backups else None

    def since_last(self, marker):
        """A ``LogReader`` of the logged bytes from the last line starting
        with ``marker`` up to now.

        A line this object marked is found from memory; otherwise the files
        are searched backwards a chunk at a time.  If the marker is in none
        of the kept files, everything kept is read.
        """
        marks = [at for line, at in self._marks.items() if line.startswith(marker)]
        if marks:
            number, offset = max(marks)
            parts = [(number, offset, self._end_of(number))]
            parts += [
                (n, 0, self._end_of(n)) for n in range(number + 1, self.rotations + 1)
            ]
            return LogReader(self, parts)
        parts = []
        for age, name in enumerate(self._names()):
            try:
                fd = os.open(name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                found = _last_line_at(fd, size, marker)
            finally:
                os.close(fd)
            parts.insert(0, (self.rotations - age, max(found, 0), size))
            if found >= 0:
                break
        return LogReader(self, parts)


#: bytes read from a log file at a time
READ_CHUNK = 64 * 1024


def _last_line_at(fd, size, marker, chunk=READ_CHUNK):
    """Offset of the last line of the file ``fd`` (``size`` bytes long)
    starting with ``marker``, or -1; the start of the file counts as a line
    start.  Reads backwards a chunk at a time."""
    end = size
    while end > 0:
        low = max(0, end - chunk)
        # one byte before, to see the newline; the marker may cross ``end``
        base = max(0, low - 1)
        data = os.pread(fd, min(size, end + len(marker) - 1) - base, base)
        stop = len(data)
        while True:
            found = data.rfind(marker, low - base, stop)
            if found < 0:
                break
            if found + base == 0 or data[found - 1 : found] == b"\n":
                return found + base
            stop = found + len(marker) - 1
        end = low
    return -1


class LogReader:
    """Part of a console log, read like a file, from disk a chunk at a time.

    ``parts`` are ``(file number, start, end)``, oldest first, fixed when
    the reader is made: later output is not included.  A file is opened
    when its turn comes, under the name ``ConsoleLog.name_of`` gives its
    number then, so rotations meanwhile change nothing; a part whose file
    was rotated away before its turn is skipped.  One file is open at a
    time, and an open file is read to its part's end whatever happens to
    its name.
    """

    log = Logger()

    def __init__(self, console_log, parts):
        self._log = console_log
        self._parts = list(parts)
        self._fd = None
        self._offset = 0

    def read(self, size=-1):
        """Up to ``size`` bytes (all that is left if negative); b"" at the end."""
        out = []
        wanted = (
            size if size >= 0 else sum(end - start for _, start, end in self._parts)
        )
        while wanted > 0 and self._parts:
            number, start, end = self._parts[0]
            if self._fd is None:
                self._fd = self._open(number)
                self._offset = start
                if self._fd is None:
                    self._parts.pop(0)
                    continue
            try:
                data = os.pread(self._fd, min(wanted, end - self._offset), self._offset)
            except OSError as e:
                self.log.error(
                    "cannot read console log {path}: {error}",
                    path=self._log.path,
                    error=e.strerror or e,
                )
                data = b""
            self._offset += len(data)
            wanted -= len(data)
            out.append(data)
            if not data or self._offset >= end:
                self._next()
        return b"".join(out)

    def close(self):
        """Let go of the open file; later reads return b""."""
        self._next()
        self._parts = []

    def _next(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._parts:
            self._parts.pop(0)

    def _open(self, number):
        name = self._log.name_of(number)
        if name is None:
            return None
        try:
            return os.open(name, os.O_RDONLY)
        except OSError as e:
            if e.errno != errno.ENOENT:
                self.log.error(
                    "cannot read console log {path}: {error}",
                    path=name,
                    error=e.strerror,
                )
            return None


@implementer(IPushProducer)
class _ViewerLink:
    """The hub's side of one viewer: its replay, queue and back-pressure state."""

    def __init__(self, hub, viewer, history):
        self.hub = hub
        self.viewer = viewer
        # A reader of earlier output to send first, or None.
        self.replay = history
        # Replayed bytes tolerated in ``pending()`` until they have drained
        # (a consumer viewer takes the replay only as fast as it sends it).
        self.allowance = 0
        self.paused = False
        self.queue = deque()
        self.queued = 0
        self.behind = False
        self.lag = 0
        self.pending = getattr(viewer, "pending", None)
        self.consumer = callable(getattr(viewer, "registerProducer", None))
        self._pumping = False

    def start(self):
        """Register as the viewer's producer if it takes one; start the replay."""
        if self.consumer:
            self.viewer.registerProducer(self, True)
        self.pump()

    def unregister(self):
        """Undo ``start``'s producer registration, if any; end the replay."""
        self.end_replay()
        if self.consumer:
            self.consumer = False
            self.viewer.unregisterProducer()

    def end_replay(self):
        """Close the replay's reader, if any."""
        replay, self.replay = self.replay, None
        if replay is not None:
            replay.close()

    def backlog(self):
        """Bytes this viewer is behind: queued here plus its own ``pending()``."""
        extra = self.pending() if self.pending is not None else 0
        return self.queued + extra

    def deliver(self, data):
        """Pass ``data`` on, or queue it while paused or replaying; update ``behind``."""
        if self.paused or self.queue or self.replay is not None:
            self.queue.append(data)
            self.queued += len(data)
        else:
            self.viewer.write(data)
        backlog = self.lag = self.backlog()
        if backlog <= self.hub.max_backlog:
            self.allowance = 0
        self.behind = backlog > self.hub.max_backlog + self.allowance

    def pump(self):
        """Hand the viewer the replay, then the queue, until done or paused.

        The replay is read a chunk at a time only while the viewer takes it,
        so a viewer that stops reading holds one chunk, not the whole log.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.replay is not None and not self.paused:
                data = self.replay.read(READ_CHUNK)
                if not data:
                    self.end_replay()
                    break
                if self.pending is not None:
                    self.allowance += len(data)
                self.viewer.write(data)
            while self.replay is None and self.queue and not self.paused:
                data = self.queue.popleft()
                self.queued -= len(data)
                self.viewer.write(data)
        finally:
            self._pumping = False

    def pauseProducing(self):
        """The viewer cannot take more for now: queue from here on."""
        self.paused = True

    def resumeProducing(self):
        """The viewer can take more: hand it the rest until it pauses again."""
        self.paused = False
        if not self.hub._safely(self, "write to", self.pump):
            self.hub._drop(self, FAILED)

    def stopProducing(self):
        """The viewer's connection is gone: forget it without closing it."""
        self.consumer = False
        self.end_replay()
        self.hub._forget(self)


class ConsoleHub:
    """Fans console output out to viewers, each with a bounded backlog.

    ``max_backlog`` is how many bytes a viewer may fall behind (queued in the
    hub while it has us paused, plus what its ``pending()`` reports) before
    it is closed with ``TOO_SLOW``.  A viewer raising an exception is closed
    with ``FAILED``; either way the other viewers carry on.
    """

    log = Logger()

    def __init__(self, max_backlog=1024 * 1024, name=""):
        self.max_backlog = max_backlog
        self.name = name
        self._links = {}

    def __len__(self):
        return len(self._links)

    @property
    def viewers(self):
        """The attached viewers, in the order they were attached."""
        return list(self._links)

    def attach(self, viewer, history=None):
        """Send ``viewer`` all output from now on, after ``history`` if any.

        ``history`` is a reader of earlier output (an object with
        ``read(size)`` and ``close()``, such as a ``LogReader``), closed
        once read.  A consumer viewer gets it as fast as it takes it; live
        output meanwhile waits in its queue.  Replayed bytes a viewer holds
        in ``pending()`` do not count against the backlog bound, so a long
        replay does not get a viewer disconnected on the spot.
        """
        if viewer in self._links:
            if history is not None:
                history.close()
            return
        link = _ViewerLink(self, viewer, history)
        self._links[viewer] = link
        if not self._safely(link, "attach", link.start):
            self._drop(link, FAILED)

    def detach(self, viewer):
        """Stop sending to ``viewer`` (not closed: the caller is done with it)."""
        link = self._links.pop(viewer, None)
        if link is not None:
            self._safely(link, "unregister", link.unregister)

    def deliver(self, data):
        """Hand ``data`` to every viewer; drop the ones that fall too far behind."""
        for link in list(self._links.values()):
            if not self._safely(link, "write to", link.deliver, data):
                self._drop(link, FAILED)
            elif link.behind:
                self.log.emit(
                    LogLevel.warn,
                    "{board}: console viewer {viewer!r} is {backlog} bytes"
                    " behind; disconnecting it",
                    board=self.name,
                    viewer=link.viewer,
                    backlog=link.lag,
                )
                self._drop(link, TOO_SLOW)

    def close_viewers(self, reason):
        """Close every viewer with the one-line ``reason``."""
        for link in list(self._links.values()):
            self._drop(link, reason)

    def _drop(self, link, reason):
        if self._links.get(link.viewer) is not link:
            return
        del self._links[link.viewer]
        self._safely(link, "unregister", link.unregister)
        self._safely(link, "close", link.viewer.close, reason)

    def _forget(self, link):
        if self._links.get(link.viewer) is link:
            del self._links[link.viewer]

    def _safely(self, link, what, function, *args):
        """Call a viewer's code; True unless it raised (which is logged)."""
        try:
            function(*args)
        except Exception:  # noqa: BLE001 -- a broken viewer must not stop the rest
            self.log.failure(
                "{board}: could not {what} console viewer {viewer!r}",
                board=self.name,
                what=what,
                viewer=link.viewer,
            )
            return False
        return True


class _SerialProtocol(protocol.Protocol):
    """Passes what the port reads to the service and reports its loss."""

    def __init__(self, service):
        self.service = service

    def dataReceived(self, data):
        self.service.received(data)

    def connectionLost(self, reason):
        self.service._port_lost(self, reason)


def _serial_port(proto, device, reactor, baudrate):
    # Imported here: it needs pyserial, which only a real device needs.
    from twisted.internet.serialport import SerialPort

    return SerialPort(proto, device, reactor, baudrate=baudrate)


class ReservationLogs:
    """Each reservation's console output, kept in a file of its own.

    ``DIR/BOARD/RESERVATION.log`` holds what the board printed during that
    reservation, up to ``max_bytes`` (beyond that a line says the rest was
    cut).  The holder can read it after the reservation, when the board's
    own log has long rotated; ``prune`` deletes the files older than the
    retention period.
    """

    log = Logger()

    def __init__(self, directory, board, max_bytes):
        self.directory = os.path.join(directory, board)
        self.max_bytes = max_bytes
        self._file = None
        self._size = 0
        self._failing = False

    def path(self, reservation):
        """The file of ``reservation``."""
        return os.path.join(self.directory, f"{int(reservation)}.log")

    def start(self, reservation):
        """Write to ``reservation``'s file from now on (appending)."""
        self.stop()
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd = os.open(
                self.path(reservation), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
        except OSError as e:
            self.log.error(
                "cannot keep the console log of reservation {rid}: {error}",
                rid=reservation,
                error=e.strerror,
            )
            return
        self._file = fd
        self._size = os.lseek(fd, 0, os.SEEK_END)

    def stop(self):
        """Close the current reservation's file."""
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def write(self, data):
        """Append ``data`` to the current reservation's file, if any."""
        if self._file is None or self._size >= self.max_bytes:
            return
        room = self.max_bytes - self._size
        chunk = data[:room]
        if len(data) > room:
            chunk += b"\n=== bitelab: the rest of this reservation's output is in "
            chunk += b"the board's log only ===\n"
        try:
            os.write(self._file, chunk)
        except OSError as e:
            if not self._failing:
                self.log.error(
                    "cannot write a reservation log: {error}", error=e.strerror
                )
            self._failing = True
            return
        self._failing = False
        self._size += len(chunk)

    def open(self, reservation):
        """The file of ``reservation`` opened for reading; OSError if none."""
        return open(self.path(reservation), "rb")

    def prune(self, older_than):
        """Delete the files last written before ``older_than`` (POSIX time)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                if os.stat(path).st_mtime < older_than:
                    os.unlink(path)
            except OSError:
                continue


class ConsoleService(Service):
    """The serial console of one board: port, log, viewers and reconnection.

    ``device`` is opened at ``baud`` with Twisted's ``SerialPort``; all output
    goes to ``log_dir/BOARD.log`` (see ``ConsoleLog`` for ``max_log_bytes``
    and ``backups``) and to the attached viewers (see ``ConsoleHub`` for
    ``max_backlog``).  While the device is missing it is retried after
    ``retry_initial`` seconds, doubling up to ``retry_max``.
    ``port_factory(protocol, device, reactor, baudrate)`` opens the device;
    it is ``SerialPort`` unless a test says otherwise.
    """

    log = Logger()

    #: a connection that lasted this long resets the back-off
    STABLE_SECONDS = 10.0

    def __init__(
        self,
        reactor,
        board,
        device,
        baud,
        log_dir,
        max_log_bytes=4 * 1024 * 1024,
        backups=4,
        retry_max=30.0,
        retry_initial=0.5,
        max_backlog=1024 * 1024,
        port_factory=_serial_port,
    ):
        self.reactor = reactor
        self.reservation_logs = ReservationLogs(
            os.path.join(log_dir, "reservations"), board, max_log_bytes * (backups + 1)
        )
        self.board = board
        self.name = f"console-{board}"
        self.device = device
        self.baud = baud
        self.console_log = ConsoleLog(
            os.path.join(log_dir, f"{board}.log"), max_log_bytes, backups
        )
        self.hub = ConsoleHub(max_backlog, name=board)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._port_factory = port_factory
        self._delay = retry_initial
        self._retry = None
        self._port = None
        self._proto = None
        self._opened_at = None
        self._missing = False
        self._dropping_input = False
        #: the reservation whose sessions may attach (None: the board is free)
        self.reservation = None
        #: bytes the board printed, and bytes viewers sent it (for metrics)
        self.bytes_received = 0
        self.bytes_sent = 0

    @property
    def connected(self):
        """Whether the device is open right now."""
        return self._port is not None

    def startService(self):
        """Open the log and the device (or start retrying it)."""
        super().startService()
        self.console_log.open()
        self._delay = self.retry_initial
        self._open()

    def stopService(self):
        """Close the device, the viewers and the log; stop retrying."""
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        port, self._port, self._proto = self._port, None, None
        if port is not None:
            port.connectionLost(Failure(ConnectionDone("console service stopped")))
        self.hub.close_viewers(f"console of {self.board} closed: server stopping")
        self.console_log.close()
        self.reservation_logs.stop()

    def _open(self):
        self._retry = None
        proto = _SerialProtocol(self)
        self._proto = proto
        try:
            port = self._port_factory(proto, self.device, self.reactor, self.baud)
        # pyserial's SerialException is an OSError; ValueError: bad settings.
        except (OSError, ValueError) as e:
            self._proto = None
            self._open_failed(e)
            return
        self._port = port
        self._opened_at = self.reactor.seconds()
        self._dropping_input = False
        if self._missing:
            self.log.info(
                "{board}: console device {device} is back",
                board=self.board,
                device=self.device,
            )
        else:
            self.log.info(
                "{board}: console device {device} open at {baud} baud",
                board=self.board,
                device=self.device,
                baud=self.baud,
            )
        self._missing = False

    def _open_failed(self, error):
        reason = _describe(error)
        if self._missing:
            self.log.debug(
                "{board}: console device {device} still unavailable: {reason}",
                board=self.board,
                device=self.device,
                reason=reason,
            )
        else:
            self.log.emit(
                LogLevel.warn,
                "{board}: cannot open console device {device}: {reason};"
                " retrying every {delay}s up to {retry_max}s",
                board=self.board,
                device=self.device,
                reason=reason,
                delay=self._delay,
                retry_max=self.retry_max,
            )
            self._missing = True
        self._schedule_retry()

    def _schedule_retry(self):
        if not self.running:
            return
        self._retry = self.reactor.callLater(self._delay, self._open)
        self._delay = min(self._delay * 2, self.retry_max)

    def _port_lost(self, proto, reason):
        if proto is not self._proto:
            return
        self._port = self._proto = None
        if not self.running:
            return
        up_for = self.reactor.seconds() - (self._opened_at or 0)
        if up_for >= self.STABLE_SECONDS:
            self._delay = self.retry_initial
        self.log.emit(
            LogLevel.warn,
            "{board}: console device {device} lost: {reason}; reconnecting",
            board=self.board,
            device=self.device,
            reason=reason.getErrorMessage(),
        )
        self._missing = True
        self._schedule_retry()

    def received(self, data):
        """Record ``data`` printed by the board: logs first, then viewers."""
        self.bytes_received += len(data)
        self.console_log.write(data)
        self.reservation_logs.write(data)
        self.hub.deliver(data)

    def send(self, data):
        """Write ``data`` from a viewer to the board; dropped if the port is down."""
        if self._port is not None:
            self._port.write(data)
            self.bytes_sent += len(data)
            return
        if not self._dropping_input:
            self.log.info(
                "{board}: console device is not connected; dropping input",
                board=self.board,
            )
            self._dropping_input = True

    def send_break(self):
        """Hold the line in BREAK for ``BREAK_SECONDS``; False if the device
        is not open or cannot (not a serial port pyserial drives).

        The line is set and cleared without waiting (``tcsendbreak`` would
        hold up the whole server while the BREAK lasts).
        """
        serial = getattr(self._port, "_serial", None)
        if serial is None or not hasattr(serial, "break_condition"):
            return False
        try:
            serial.break_condition = True
        except (OSError, ValueError) as e:
            self.log.info(
                "{board}: cannot send BREAK: {reason}",
                board=self.board,
                reason=_describe(e),
            )
            return False
        self.reactor.callLater(BREAK_SECONDS, self._end_break, serial)
        return True

    def _end_break(self, serial):
        try:
            serial.break_condition = False
        except (OSError, ValueError):
            pass  # the device went away; its next opening starts clean

    def attach(self, viewer, replay=False):
        """Send ``viewer`` the output from now on (see ``ConsoleHub.attach``).

        With ``replay``, the current reservation's log comes first, with
        nothing lost or repeated between the two.
        """
        self.hub.attach(viewer, self.reservation_log() if replay else None)

    def detach(self, viewer):
        """Stop sending output to ``viewer``."""
        self.hub.detach(viewer)

    def close_viewers(self, reason):
        """Close every viewer with the one-line ``reason``."""
        self.hub.close_viewers(reason)

    def begin(self, reservation, user, when_iso):
        """A reservation starts: cut every session, then belong to it.

        Sessions attached before (an admin watching a free board) belong to
        no reservation and must not see this one's output.
        """
        if self.reservation == reservation:
            return
        self.hub.close_viewers(NEW_RESERVATION)
        self.reservation = reservation
        self.mark_reserved(user, when_iso, reservation)
        self.reservation_logs.start(reservation)

    def end(self, reservation, user, when_iso, why):
        """A reservation starts to end: cut every one of its sessions first.

        From here on no session of it can attach, and nothing it types
        reaches the board.
        """
        if self.reservation == reservation:
            self.reservation = None
            self.hub.close_viewers(f"reservation of {self.board} ended: {why}")
            self.reservation_logs.stop()
            self.mark_released(user, when_iso, why)

    def notice(self, reservation, text):
        """Show the sessions of ``reservation`` one line (not logged)."""
        if self.reservation == reservation:
            self.hub.deliver(f"\r\nbitelab: {_one_line(text)}\r\n".encode())

    def resume(self, reservation):
        """At start: belong to ``reservation``, which was already under way."""
        self.reservation = reservation
        self.reservation_logs.start(reservation)

    def mark_reserved(self, user, when_iso, reservation=None):
        """Write the reservation-start marker for ``user`` at ``when_iso``."""
        which = f" (reservation {reservation})" if reservation is not None else ""
        line = f"{_one_line(user)} at {_one_line(when_iso)}{which} ===\n"
        self.console_log.mark(RESERVED_MARKER + line.encode())

    def mark_released(self, user, when_iso, reason):
        """Write the reservation-end marker, with why it ended."""
        line = f"{_one_line(user)} at {_one_line(when_iso)} ({_one_line(reason)}) ===\n"
        self.console_log.mark(RELEASED_MARKER + line.encode())

    def reservation_log(self):
        """A ``LogReader`` of the log since the last reservation-start marker."""
        return self.console_log.since_last(RESERVED_MARKER)


class ConsoleAccess:
    """One caller's access to a console, bound to one reservation.

    It attaches viewers and passes input only while ``reservation`` is the
    console's current one; once that reservation starts to end, every
    viewer is cut (``ConsoleService.end``) and this access is dead.  The
    check and the registration happen in one step, so no session of an
    earlier reservation can ever see a later one's output.
    """

    def __init__(self, console, reservation):
        self.console = console
        self.reservation = reservation

    @property
    def current(self):
        """Whether the reservation is still the console's."""
        return self.console.reservation == self.reservation

    def attach(self, viewer, replay=False):
        """Attach ``viewer`` (see ``ConsoleService.attach``); ``Unavailable``
        once the reservation is over."""
        if not self.current:
            raise Unavailable(
                f"the reservation of {self.console.board} has ended; console closed"
            )
        self.console.attach(viewer, replay=replay)

    def detach(self, viewer):
        """Stop sending output to ``viewer``."""
        self.console.detach(viewer)

    def send(self, data):
        """Write input to the board, unless the reservation is over."""
        if self.current:
            self.console.send(data)

    def send_break(self):
        """Send a BREAK, unless the reservation is over; whether it was sent."""
        return self.current and self.console.send_break()

    def reservation_log(self):
        """The current reservation's log; ``Unavailable`` once it is over."""
        if not self.current:
            raise Unavailable(f"the reservation of {self.console.board} has ended")
        return self.console.reservation_log()


def _describe(error):
    if isinstance(error, OSError) and error.errno is not None:
        return os.strerror(error.errno)
    cause = error.__cause__ or error.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        return os.strerror(cause.errno)
    text = str(error)
    if text.startswith("[Errno"):
        return text.split("] ", 1)[-1]
    return text or type(error).__name__


__all__ = [
    "FAILED",
    "NEW_RESERVATION",
    "RELEASED_MARKER",
    "RESERVED_MARKER",
    "TOO_SLOW",
    "ConsoleAccess",
    "ConsoleHub",
    "ConsoleLog",
    "ConsoleService",
]
