"""An in-process lab: the real manager, store, API and consoles, driven step by step.

Everything runs synchronously in the test's thread, so a test decides the
order of every step:

* the store works on a real SQLite file through ``InlinePool``, which runs
  each transaction at once instead of in adbapi's thread pool (same
  connection settings, same commit and rollback);
* time is a ``task.Clock``;
* the setup script and the power switches are recording fakes whose calls
  stay pending until the test completes them (``Calls``): they stand for
  slow scripts and devices, and for a crash in the middle of one;
* consoles are real ``ConsoleService`` objects whose serial port is a
  recording stand-in (output is injected with ``received``);
* the HTTP API is the real Klein resource behind ``treq.testing.StubTreq``;
* with ``listen``, a host of a lab on PostgreSQL hears the other hosts'
  wake-ups through a real ``bitelab.wakeup.Listener`` on the real reactor:
  only that part needs the reactor to run.

``InLab.crash()`` throws the running server away mid-step (pending calls
are never answered, sessions are gone) and starts a new one on the same
database, as ``kill -9`` and a restart would.
"""

import json
import os
import sqlite3

import attrs
from treq.testing import StubTreq
from twisted.internet import defer, task

from bitelab import db, postgres, wakeup
from bitelab.api import API
from bitelab.boardpower import BoardPower
from bitelab.config import load_boards, load_config
from bitelab.console import ConsoleService
from bitelab.errors import PowerFailed, SetupFailed
from bitelab.events import EventBus
from bitelab.lifecycle import BoardManager
from bitelab.options import PowerOption, SerialConsole
from bitelab.script import ScriptResult
from bitelab.store import Store
from bitelab.stream import EventStreams
from bitelab.tap import forwarding, option_map, sync_database
from bitelab.tokens import TokenStore
from bitelab.wakeup import Listener


class InlinePool:
    """``runInteraction`` on one database connection, run at once.

    It commits after the interaction returns and rolls back if it raises,
    as ``adbapi.ConnectionPool`` does, but in the caller's thread, so the
    test decides when each transaction happens.  ``database`` is a SQLite
    file or a PostgreSQL URL.
    """

    def __init__(self, database):
        if database.startswith("postgresql://"):
            import psycopg

            self.conn = psycopg.connect(database)
            self.wrap = postgres.wrap
        else:
            self.conn = sqlite3.connect(database, isolation_level=None)
            db.configure_connection(self.conn)
            self.wrap = None

    def runInteraction(self, interaction, *args, **kwargs):
        cursor = self.conn.cursor()
        try:
            result = interaction(cursor, *args, **kwargs)
            self.conn.commit()
        except Exception:  # noqa: BLE001 - as in adbapi, any failure rolls back
            self.conn.rollback()
            return defer.fail()
        return defer.succeed(result)

    def sql(self, query, args=()):
        """Rows of one query in the store's SQL (for the tests' checks)."""
        cursor = self.conn.cursor()
        rows = (self.wrap(cursor) if self.wrap else cursor).execute(query, args)
        result = rows.fetchall()
        self.conn.commit()
        return result

    def close(self):
        self.conn.close()


@attrs.define
class Call:
    """One pending call to a fake: ``kind`` (e.g. ``reserve``), its arguments."""

    kind: str
    board: str
    args: dict
    deferred: defer.Deferred
    epoch: int
    done: bool = False


class Calls:
    """The pending calls of the fakes of one server run, in order."""

    def __init__(self):
        self.pending = []
        self.log = []

    def add(self, kind, board, args, epoch):
        call = Call(kind, board, args, defer.Deferred(), epoch)
        self.pending.append(call)
        self.log.append(call)
        return call.deferred

    def complete(self, index, result=None, error=None):
        """Answer pending call number ``index`` (modulo), with a result or an error."""
        call = self.pending.pop(index % len(self.pending))
        call.done = True
        if error is not None:
            call.deferred.errback(error)
        else:
            call.deferred.callback(result)
        return call


class RecordingScripts:
    """The setup script: records each run and keeps it pending.

    It also keeps the lab's "world": which board has a jail, and for which
    reservation.  A reserve that completes builds one; a release that
    completes removes it.  A reserve cut short by a crash may have built
    it, so the world assumes the worst.
    """

    path = "/usr/local/libexec/bitelab/recording-setup"

    def __init__(self, lab):
        self.lab = lab

    def run(self, action, board, env):
        rid = int(env["BITELAB_RESERVATION"])
        d = self.lab.calls.add(action, board, {"rid": rid, "env": env}, self.lab.epoch)
        self.lab.script_runs.append((self.lab.epoch, action, board, rid))

        def done(result):
            if action == "reserve":
                self.lab.jails[board] = rid
            else:
                self.lab.jails.pop(board, None)
                self.lab.released.setdefault(rid, 0)
                self.lab.released[rid] += 1
            return ScriptResult(
                {"ip": f"10.0.0.{rid % 250}"} if action == "reserve" else {}, b"", b""
            )

        return d.addCallback(done)


@attrs.frozen(kw_only=True)
class RecordingPower(PowerOption):
    """A power switch that records each call and answers when the test says.

    The board file names it ``cls = recpower``; ``runtime.lab`` is the
    ``InLab`` that holds the calls and the switches' states.
    """

    cls_name = "recpower"
    port: int = 0

    def conflict_key(self):
        return ("recpower", self.port)

    def _call(self, runtime, kind, on=None):
        lab = runtime.lab
        d = lab.calls.add(kind, lab.power_boards[self.port], {"on": on}, lab.epoch)

        def done(_):
            if on is not None:
                lab.power_state[self.port] = on
            return lab.power_state.get(self.port, False)

        return d.addCallback(done)

    def set_power(self, runtime, on):
        return self._call(runtime, "power", on)

    def get_power(self, runtime):
        return self._call(runtime, "power_read")


@attrs.define
class Runtime:
    """What the fakes need: the lab they record into."""

    lab: object
    reactor: object = None


class RecordingPort:
    """The serial port of a console: records what viewers type."""

    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)

    def connectionLost(self, reason):
        pass


class Viewer:
    """A console session: what it received, and whether it was closed."""

    def __init__(self, user, board, reservation):
        self.user = user
        self.board = board
        self.reservation = reservation
        self.data = bytearray()
        self.closed = None

    def write(self, data):
        assert self.closed is None, "output after close"
        self.data += data

    def close(self, reason):
        self.closed = reason


class PeerHTTP:
    """The client a host of an in-process several-host lab forwards with:
    each request goes to the ``StubTreq`` of the host whose ``host_url``
    starts its URL (``peers``: URL -> ``InLab``)."""

    def __init__(self, peers):
        self.peers = peers

    def request(self, method, url, **kwargs):
        for base, lab in self.peers.items():
            if url.startswith(base + "/"):
                d = lab.http.request(method, url, **kwargs)
                lab.http.flush()
                return d
        return defer.fail(ConnectionRefusedError(url))


class InLab:
    """One lab directory and the server currently running on it."""

    def __init__(
        self, directory, boards, settings="", database=None, peers=None, listen=False
    ):
        """``database``: a PostgreSQL URL; a SQLite file in ``directory`` if None.

        ``peers`` maps the ``host_url`` of each host of a several-host lab to
        its ``InLab``, shared by them all: hosts forward to each other
        through it.  ``listen``: hear the other hosts' wake-ups on the real
        reactor.
        """
        self.peers = peers if peers is not None else {}
        self.listen = listen
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "boards.ucl"), "w") as f:
            f.write(boards)
        with open(os.path.join(self.dir, ".env"), "w") as f:
            f.write(
                (f"db_url={database}\n" if database else "db_file=lab.sqlite\n")
                + "board_conf=boards.ucl\nadmins=root\n"
                "default_timeout=100\nmax_timeout=1000\nexpiry_interval=1\n"
                "power_cycle_pause=1\nrelease_concurrency=2\n" + settings
            )
        self.config = load_config(os.path.join(self.dir, ".env"))
        self.lab = load_boards(
            self.config.board_conf, {**option_map(), "recpower": RecordingPower}
        )
        self.power_boards = {
            board.option(RecordingPower).port: name
            for name, board in self.lab.boards.items()
            if board.option(RecordingPower) is not None
        }
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.epoch = 0
        self.jails = {}
        self.released = {}
        self.script_runs = []
        self.power_state = {}
        self.viewers = []
        self.tokens = {}
        self.server = None
        self.start()
        for user in ("alice", "bob", "carol", "root"):
            self.tokens[user] = self._run(self.token_store.issue(user))

    def _run(self, d):
        results = []
        d.addBoth(results.append)
        assert results, "a step that should be immediate is pending"
        if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def start(self):
        """Start a server on the lab's database, as ``twistd`` would."""
        self.epoch += 1
        self.calls = Calls()
        held = sync_database(self.config, self.lab, self.clock.seconds())
        self.pool = InlinePool(self.config.db_url or self.config.db_file)
        self.store = Store(
            self.pool,
            self.pool,
            EventBus(),
            self.clock,
            self.config.db_file or None,
            self.pool.wrap,
        )
        self.consoles = {}
        for name, board in self.lab.boards.items():
            option = board.option(SerialConsole)
            if option is not None:
                console = ConsoleService(
                    self.clock,
                    name,
                    option.val,
                    option.baud,
                    os.path.join(self.dir, "console"),
                    port_factory=lambda *a: RecordingPort(),
                )
                console.startService()
                self.consoles[name] = console
        self.scripts = RecordingScripts(self)
        self.power = BoardPower(
            self.clock,
            self.lab,
            Runtime(self),
            self.store,
            self.config.power_cycle_pause,
        )
        self.manager = BoardManager(
            self.clock,
            self.config,
            self.lab,
            self.store,
            self.power,
            self.scripts,
            self.consoles,
        )
        self.manager.resume_consoles(held)
        self.listener = None
        if self.config.db_url and self.config.host_name:
            # as the server does: its commits wake the other hosts
            self.store.wakes_from = self.config.host_name
        self.token_store = TokenStore(self.store, self.clock)
        self.streams = EventStreams(self.clock)
        self.store.bus.subscribe(self.streams.publish)
        self.manager.room.notify = self.streams.notify
        self.api = API(self.manager, self.token_store, self.clock, streams=self.streams)
        self.http = StubTreq(self.api.resource())
        if self.config.host_name:
            self.peers[self.config.host_url] = self
            #: what the heartbeat says of this host's SSH service
            self.ssh_port, self.ssh_host_key = 2200 + len(self.peers), ""
            forwarding(
                self.config,
                self.store,
                self.manager,
                self.api,
                PeerHTTP(self.peers),
                lambda: self.ssh_port,
                self.ssh_host_key,
                self.clock,
            )
        self.manager.startService()
        if self.listen:
            from twisted.internet import reactor

            self.listener = Listener(
                reactor, self.config.db_url, self.config.host_name, self.manager.wake
            )
            self.listener.startService()

    def listening(self):
        """Whether the server hears the other hosts' wake-ups now."""
        return self.listener is not None and self.listener.listening

    def listening_backends(self):
        """Process ids of the database sessions listening for this host."""
        rows = self.pool.sql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ?",
            (wakeup.application_name(self.config.host_name),),
        )
        return sorted(pid for (pid,) in rows)

    def crash(self):
        """``kill -9`` and restart: nothing pending is ever answered."""
        self._stop_listening()
        self.manager.stopService()
        for console in self.consoles.values():
            # the sessions' connections die with the process
            for viewer in console.hub.viewers:
                console.hub.detach(viewer)
                viewer.closed = "server crashed"
            console.stopService()
        for call in self.calls.pending:
            call.done = "abandoned"
        self.pool.close()
        self.start()

    def _stop_listening(self):
        if self.listener is not None:
            self.listener.stopService()

    def close(self):
        self._stop_listening()
        self.manager.stopService()
        for console in self.consoles.values():
            console.stopService()
        self.pool.close()

    # -- driving the API ----------------------------------------------------

    def request(self, method, path, user, body=None):
        """Start an API call; a ``Response`` holder filled once it answers."""
        response = Response()
        if user not in self.tokens:
            self.tokens[user] = self._run(self.token_store.issue(user))
        headers = {"Authorization": [f"Bearer {self.tokens[user]}"]}
        data = json.dumps(body).encode() if body is not None else None
        d = self.http.request(
            method, "http://lab/api/v1" + path, headers=headers, data=data
        )

        def got(r):
            response.status = r.code
            return self.http.content(r).addCallback(response.set_body)

        d.addCallback(got)
        d.addErrback(response.failed)
        self.http.flush()
        return response

    def flush(self):
        """Let answered steps run on and answer their HTTP calls."""
        self.http.flush()

    def board(self, name):
        """The board's row in the database."""
        return self._run(self.store.board(name))

    def boards(self):
        """Every board row."""
        return self._run(self.store.boards())

    def tick(self, seconds=0):
        """Let ``seconds`` pass, then run the periodic check (expiry, recovery)."""
        self.clock.advance(seconds)
        self._run(self.manager.tick())
        self.flush()

    def attach(self, user, name):
        """Attach a console session for ``user``; the viewer, or None if refused."""
        results = []
        self.manager.open_console(user, name).addBoth(results.append)
        if not results or not hasattr(results[0], "attach"):
            return None
        access = results[0]
        viewer = Viewer(user, name, access.reservation)
        try:
            access.attach(viewer)
        except Exception:  # noqa: BLE001 - refused: the reservation is over
            return None
        viewer.access = access
        self.viewers.append(viewer)
        return viewer

    def complete(self, index, ok=True):
        """Answer one pending script or power call (``ok``: success)."""
        call = self.calls.pending[index % len(self.calls.pending)]
        if call.kind in ("reserve", "release"):
            error = None if ok else SetupFailed(f"setup script {call.kind} failed: no")
        else:
            error = None if ok else PowerFailed("recpower: community=s3cret: no answer")
        self.calls.complete(index, error=error)
        self.flush()
        return call


class Response:
    """An API call's answer, once it has come."""

    def __init__(self):
        self.status = None
        self.body = None
        self.raw = None
        self.error = None

    def set_body(self, raw):
        self.raw = raw
        try:
            self.body = json.loads(raw) if raw else None
        except ValueError:
            self.body = None

    def failed(self, failure):
        self.error = failure

    @property
    def done(self):
        return self.status is not None or self.error is not None
