"""The server's PostgreSQL pools on a real PostgreSQL server: how many round
trips a write and a read cost, counted in libpq's own trace of the messages
it sends."""

import pytest
import pytest_twisted
from twisted.internet import task

from bitelab import postgres
from bitelab.events import EventBus
from bitelab.store import Store

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def url(postgres_server):
    """A fresh database with the lab's schema."""
    url = postgres_server.database()
    postgres.connect(url).close()
    return url


def traced(pool, work, path):
    """Deferred: ``work(cursor)`` on a connection of ``pool`` and its commit,
    as adbapi runs an interaction, with libpq tracing to ``path``; what
    ``work`` returns and the messages sent (``Query``, ``Sync``...)."""

    def run(conn):
        pgconn = conn.pgconn
        with open(path, "w") as trace:
            pgconn.trace(trace.fileno())
            pgconn.set_trace_flags(
                psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE
            )
            try:
                result = work(postgres.wrap(conn.cursor()))
                conn.commit()
            finally:
                pgconn.untrace()
        with open(path) as trace:
            sent = [
                line.rstrip("\n").split("\t")[2]
                for line in trace
                if line.startswith("F\t")
            ]
        return result, sent

    return pool.runWithConnection(run)


def round_trips(sent):
    """Each simple query (``Query``) and each extended one (ending in
    ``Sync``) waits for its answer."""
    return sum(1 for message in sent if message in ("Query", "Sync"))


@pytest_twisted.inlineCallbacks
def test_a_write_takes_the_lab_lock_with_its_begin(url, tmp_path):
    """On the write pool, ``BEGIN IMMEDIATE`` opens the transaction and takes
    the lab's write lock in one round trip: with one statement and the
    commit, a write costs three; the lock is held until the commit."""
    pool = postgres.make_pool(url)
    other = psycopg.connect(url, autocommit=True)
    try:

        def work(cursor):
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("SELECT COUNT(*) FROM boards")
            return other.execute(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND objid = %s AND granted",
                (postgres.WRITE_LOCK,),
            ).fetchone()[0]

        held, sent = yield traced(pool, work, tmp_path / "trace")
        assert held == 1
        assert round_trips(sent) == 3, sent
        after = other.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'"
        )
        assert after.fetchone()[0] == 0
    finally:
        other.close()
        pool.close()


@pytest_twisted.inlineCallbacks
def test_a_read_is_one_round_trip(url, tmp_path):
    """On the read pool, a read is its statement alone: no BEGIN or COMMIT
    around it (each statement reads its own snapshot in PostgreSQL's READ
    COMMITTED either way)."""
    pool = postgres.make_pool(url, readers=True)
    try:
        rows, sent = yield traced(
            pool,
            lambda c: c.execute("SELECT name FROM boards").fetchall(),
            tmp_path / "trace",
        )
        assert rows == []
        assert round_trips(sent) == 1, sent
    finally:
        pool.close()


@pytest_twisted.inlineCallbacks
def test_a_failed_write_releases_the_lock_and_keeps_nothing(url, tmp_path):
    """A write that fails after ``BEGIN IMMEDIATE`` is rolled back: its
    rows are gone and the next write takes the lock at once."""
    pool = postgres.make_pool(url)
    try:

        def failing(cursor):
            cursor = postgres.wrap(cursor)
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(
                "INSERT INTO hosts (name, url, started_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?)",
                ("h1", "", 1.0, 1.0),
            )
            raise ValueError("refused")

        with pytest.raises(ValueError):
            yield pool.runInteraction(failing)

        def count(cursor):
            wrapped = postgres.wrap(cursor)
            wrapped.execute("BEGIN IMMEDIATE")
            return wrapped.execute("SELECT COUNT(*) FROM hosts").fetchone()[0]

        assert (yield pool.runInteraction(count)) == 0
    finally:
        pool.close()


def start_trace(path):
    """A function of an adbapi connection that starts tracing it to ``path``."""

    def start(conn):
        trace = open(path, "w")  # noqa: SIM115 - closed by stop_trace
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(
            psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE
        )
        return trace

    return start


def stop_trace(conn, trace):
    """Stop tracing ``conn``; the messages it sent meanwhile."""
    conn.pgconn.untrace()
    trace.close()
    with open(trace.name) as f:
        return [
            line.rstrip("\n").split("\t")[2] for line in f if line.startswith("F\t")
        ]


@pytest_twisted.inlineCallbacks
def test_reserve_and_release_round_trips(url, tmp_path):
    """A reserve of a board with nothing to set up costs six round trips
    (the lock, its read, the new reservation, the board's change, its
    audit entry, the commit), and so does its release (the lock, its read,
    the board's change, the reservation's, its two audit entries, the
    commit); the rows and events are those of the steps one by one."""
    setup = psycopg.connect(url, autocommit=True)
    setup.execute("INSERT INTO boards (name, class, arch) VALUES ('b1', 'c', 'x')")
    pool = postgres.make_pool(url)
    bus = EventBus()
    published = []
    bus.subscribe(published.append)
    clock = task.Clock()
    clock.advance(1000)
    store = Store(pool, pool, bus, clock, wrap=postgres.wrap)
    try:
        trace = yield pool.runWithConnection(start_trace(tmp_path / "claim"))
        board = yield store.claim(
            "b1", False, "alice", None, lambda name: 60, lambda name: True
        )
        claimed = yield pool.runWithConnection(stop_trace, trace)
        assert board["state"] == "reserved" and board["holder"] == "alice"
        trace = yield pool.runWithConnection(start_trace(tmp_path / "release"))
        board = yield store.begin_release("b1", "alice", False, False, direct=True)
        released = yield pool.runWithConnection(stop_trace, trace)
        assert board["state"] == "free" and board["reservation_id"] is None
        assert round_trips(claimed) == 6, claimed
        assert round_trips(released) == 6, released
        rows = setup.execute(
            "SELECT r.state, r.outcome, b.state, b.reservation_id FROM reservations r "
            "JOIN boards b ON b.name = r.board"
        ).fetchall()
        assert rows == [("ended", "free", "free", None)]
        logged = setup.execute("SELECT id, action FROM events ORDER BY id").fetchall()
        assert [(e.id, e.kind) for e in published] == logged
        assert [e.kind for e in published] == ["reserved", "releasing", "freed"]
    finally:
        setup.close()
        pool.close()
