"""The reservation lifecycle in-process, step by step: races, crashes, consoles.

Each test drives the real API (``StubTreq``) and manager on a real SQLite
file, with the setup script and power switches held pending until the test
answers them (``support.inlab``), so the slow paths and their interleavings
are exercised deterministically.
"""

import os

import pytest

from support.inlab import InLab

BOARDS = """
setup_script = /bin/true;
classes { a { arch = x; } b { arch = y; } }
boards [
    { name = a1; brdclass = a; options = [
        { cls = recpower, port = 1 }, { cls = serialconsole, val = /dev/ttyX1 } ] },
    { name = a2; brdclass = a; options = [ { cls = recpower, port = 2 } ] },
    { name = a3; brdclass = a; options = [ { cls = recpower, port = 3 } ] },
    { name = b1; brdclass = b; options = [ { cls = serialconsole, val = /dev/ttyX2 } ] },
]
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request):
    """None (a SQLite file) or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_server").database()


@pytest.fixture
def lab(tmp_path, database):
    """An in-process lab whose start-up power reads have been answered."""
    made = InLab(tmp_path, BOARDS, database=database)
    answer_all(made)
    yield made
    made.close()


def answer_all(lab, ok=True):
    """Answer every pending call (and those they lead to) with success."""
    while lab.calls.pending:
        lab.complete(0, ok)


def pending(lab, kind):
    return [(c.kind, c.board) for c in lab.calls.pending if c.kind == kind]


def reserve(lab, user, target, **body):
    """Reserve and answer the setup script; the response."""
    response = lab.request("POST", f"/boards/{target}/reserve", user, body)
    answer_all(lab)
    assert response.done
    return response


def test_two_releases_at_once_run_one_release_script(lab):
    """Two release calls sent together: one ends the reservation, the other
    gets 409 at once; the release script runs once."""
    assert reserve(lab, "alice", "a2").status == 200
    first = lab.request("POST", "/boards/a2/release", "alice")
    second = lab.request("POST", "/boards/a2/release", "alice")
    assert second.status == 409
    assert "already being released" in second.body["error"]["message"]
    assert not first.done
    answer_all(lab)
    assert first.status == 200 and first.body["state"] == "free"
    runs = [r for r in lab.script_runs if r[1] == "release"]
    assert len(runs) == 1


def test_stale_release_cannot_touch_the_next_reservation(lab):
    """A release of alice's reservation that arrives after bob reserved the
    board is refused: it names a reservation that is over."""
    reserve(lab, "alice", "a2")
    lab.request("POST", "/boards/a2/release", "alice")
    answer_all(lab)
    assert reserve(lab, "bob", "a2").status == 200
    late = lab.request("POST", "/boards/a2/release", "alice")
    assert late.status == 403
    assert lab.board("a2")["holder"] == "bob"
    assert lab.jails["a2"] == lab.board("a2")["reservation_id"]


def test_expiry_racing_a_release_ends_it_once(lab):
    """A release under way when the time runs out is not expired again; an
    expiry under way when the holder releases answers 409.  Either way the
    release script runs once."""
    reserve(lab, "alice", "a2", timeout=5)
    release = lab.request("POST", "/boards/a2/release", "alice")
    lab.tick(10)
    answer_all(lab)
    assert release.status == 200
    reserve(lab, "alice", "a3", timeout=5)
    lab.tick(10)
    late = lab.request("POST", "/boards/a3/release", "alice")
    assert late.status == 409
    answer_all(lab)
    runs = [r[1:3] for r in lab.script_runs if r[1] == "release"]
    assert runs == [("release", "a2"), ("release", "a3")]
    assert lab.board("a2")["state"] == lab.board("a3")["state"] == "free"


def test_crash_during_reserve_script_is_rolled_back(lab):
    """kill -9 while the reserve script runs: at restart the reservation is
    rolled back (release script, power off), the board is free, and the
    holder can see that and why."""
    response = lab.request("POST", "/boards/a2/reserve", "alice")
    assert pending(lab, "reserve") == [("reserve", "a2")]
    rid = lab.board("a2")["reservation_id"]
    lab.crash()
    assert response.status is None
    assert lab.board("a2")["state"] == "releasing"
    answer_all(lab)
    assert lab.board("a2")["state"] == "free"
    assert "a2" not in lab.jails
    assert [r[1:] for r in lab.script_runs] == [
        ("reserve", "a2", rid),
        ("release", "a2", rid),
    ]
    mine = lab.request("GET", "/reservations", "alice")
    assert mine.body["reservations"][0]["id"] == rid
    assert mine.body["reservations"][0]["cause"] == "interrupted"
    assert mine.body["reservations"][0]["state"] == "ended"


def test_crash_during_release_is_resumed_once(lab):
    """kill -9 while the release script runs: at restart the release runs
    again (setup scripts are idempotent) and the board ends free."""
    reserve(lab, "alice", "b1")
    lab.request("POST", "/boards/b1/release", "alice")
    assert pending(lab, "release") == [("release", "b1")]
    lab.crash()
    assert lab.board("b1")["state"] == "releasing"
    answer_all(lab)
    assert lab.board("b1")["state"] == "free"
    assert [r[:2] for r in lab.script_runs if r[1] == "release"] == [
        (1, "release"),
        (2, "release"),
    ]


def test_console_sessions_are_cut_before_the_release_runs(lab):
    """Sessions of a reservation are closed as soon as its end is committed,
    before power off; no new one attaches while it ends; the next holder's
    output never reaches them."""
    reserve(lab, "alice", "a1")
    viewer = lab.attach("alice", "a1")
    assert viewer is not None
    console = lab.consoles["a1"]
    console.received(b"alice's output\n")
    lab.request("POST", "/boards/a1/release", "alice")
    assert viewer.closed and "ended" in viewer.closed
    assert pending(lab, "power") == [("power", "a1")]
    assert lab.attach("alice", "a1") is None
    assert lab.attach("root", "a1") is None
    answer_all(lab)
    reserve(lab, "bob", "a1")
    console.received(b"bob's secret\n")
    assert bytes(viewer.data) == b"alice's output\n"


def test_access_from_an_ended_reservation_cannot_attach_or_type(lab):
    """An access checked before a release but used after it is refused, and
    its input never reaches the next holder's board."""
    reserve(lab, "alice", "b1")
    d = lab.manager.open_console("alice", "b1")
    access = []
    d.addCallback(access.append)
    lab.request("POST", "/boards/b1/release", "alice")
    answer_all(lab)
    reserve(lab, "bob", "b1")
    port = lab.consoles["b1"]._port
    with pytest.raises(Exception, match="has ended"):
        access[0].attach(object())
    access[0].send(b"rm -rf /\n")
    assert port.written == []


def test_class_reserve_skips_a_board_whose_setup_fails(lab):
    """When the picked board's reserve script fails, the next free board of
    the class is tried; every attempt is audited."""
    response = lab.request("POST", "/boards/a/reserve", "alice")
    first = lab.calls.pending[0]
    lab.complete(0, ok=False)
    answer_all(lab)
    assert response.status == 200
    assert response.body["name"] != first.board
    assert lab.board(first.board)["state"] == "free"
    events = lab.request("GET", f"/events?board={first.board}", "root").body["events"]
    assert [e["action"] for e in events][:3] == ["freed", "releasing", "setup_failed"]


def test_a_board_failing_setup_repeatedly_goes_to_maintenance(tmp_path, database):
    """After max_setup_failures reserve-script failures in a row, the board
    is taken out of service with the last error."""
    lab = InLab(tmp_path, BOARDS, "max_setup_failures=2\n", database=database)
    answer_all(lab)
    for attempt in range(2):
        response = lab.request("POST", "/boards/a2/reserve", "alice")
        lab.complete(0, ok=False)
        answer_all(lab)
        assert response.status == 502
    board = lab.board("a2")
    assert board["state"] == "maintenance"
    assert "failed 2 times in a row" in board["reason"]
    assert "no" in board["reason"]
    lab.close()


def test_endings_run_with_bounded_concurrency(lab):
    """Many reservations expiring together wind down release_concurrency at
    a time (2 here), and all of them end."""
    for name in ("a1", "a2", "a3", "b1"):
        reserve(lab, "alice", name, timeout=10)
    lab.tick(10)
    assert {lab.board(n)["state"] for n in ("a1", "a2", "a3", "b1")} == {"releasing"}
    assert len(lab.calls.pending) == 2
    answer_all(lab)
    assert {lab.board(n)["state"] for n in ("a1", "a2", "a3", "b1")} == {"free"}


def test_power_switch_queued_behind_a_release_is_refused(lab):
    """A holder's power-on that waits for the board's turn while the release
    powers it off is refused once its turn comes: the board stays off."""
    reserve(lab, "alice", "a2")
    release = lab.request("POST", "/boards/a2/release", "alice")
    assert pending(lab, "power") == [("power", "a2")]
    on = lab.request("POST", "/boards/a2/attrs", "alice", {"power": "on"})
    answer_all(lab)
    assert release.status == 200
    assert on.status in (403, 409)
    assert lab.power_state[2] is False


def test_holders_read_their_past_reservations_console_logs(lab):
    """Each reservation's console output is kept apart: its holder (or an
    admin) reads it after the release, others cannot, and it is deleted
    after console_log_retention days."""
    first = reserve(lab, "alice", "a1").body["reservation_id"]
    console = lab.consoles["a1"]
    console.received(b"alice's boot log\n")
    lab.request("POST", "/boards/a1/release", "alice")
    answer_all(lab)
    reserve(lab, "bob", "a1")
    console.received(b"bob's boot log\n")

    def past(user):
        results = []
        lab.manager.past_console_log(user, "a1", first).addBoth(results.append)
        return results[0]

    for user in ("alice", "root"):
        log = past(user)
        assert log.read() == b"alice's boot log\n"
        log.close()
    assert "of yours" in past("bob").getErrorMessage()
    # the lab's clock is not the file system's: date the file by the lab's
    path = console.reservation_logs.path(first)
    os.utime(path, (lab.clock.seconds(), lab.clock.seconds()))
    lab.tick(29 * 86400)
    assert os.path.exists(path)
    lab.tick(2 * 86400)
    answer_all(lab)
    assert "no longer kept" in past("alice").getErrorMessage()


def test_power_failure_details_are_for_admins_only(lab):
    """A failed power switch tells the holder that it failed and which
    driver, not the driver's details (which may hold communities or command
    lines); admins see everything, in the board and in the error."""
    reserve(lab, "alice", "a2")
    switch = lab.request("POST", "/boards/a2/attrs", "alice", {"power": "on"})
    lab.complete(0, ok=False)
    assert switch.status == 502
    assert "s3cret" not in switch.raw.decode()
    assert "recpower failed" in switch.body["error"]["message"]
    mine = lab.request("GET", "/boards/a2", "alice").body["attrs"]["power_error"]
    assert "s3cret" not in mine and "recpower" in mine
    admin = lab.request("GET", "/boards/a2", "root").body["attrs"]["power_error"]
    assert "community=s3cret" in admin


class Recorder:
    """The store's cursors, recording the statements of each write
    transaction (a list that starts with ``BEGIN IMMEDIATE``)."""

    def __init__(self, wrap):
        self.wrap = wrap or (lambda cursor: cursor)
        self.interactions = []

    def __call__(self, cursor):
        inner, statements = self.wrap(cursor), []
        self.interactions.append(statements)

        class Recording:
            def __getattr__(self, name):
                return getattr(inner, name)

            def execute(self, sql, args=()):
                statements.append(sql)
                inner.execute(sql, args)
                return self

        return Recording()

    def writes(self):
        return [s for s in self.interactions if s and s[0] == "BEGIN IMMEDIATE"]


def test_reserve_and_release_read_each_row_once(lab):
    """With nobody in the queue, each write transaction of a reserve and a
    release reads the board's row at most once and never asks the queue
    for a hand-over; the rows they return are the database's rows."""
    recorder = Recorder(lab.store.wrap)
    lab.store.wrap = recorder
    reserved = reserve(lab, "alice", "b1", timeout=50)
    assert reserved.status == 200
    assert reserved.body == lab.request("GET", "/boards/b1", "alice").body
    released = lab.request("POST", "/boards/b1/release", "alice")
    answer_all(lab)
    assert released.status == 200 and released.body["state"] == "free"
    assert released.body == lab.request("GET", "/boards/b1", "alice").body
    writes = recorder.writes()
    assert len(writes) >= 4
    for statements in writes:
        reads = [s for s in statements if "FROM boards b LEFT JOIN" in s]
        assert len(reads) <= 1, statements
        assert not [s for s in statements if "FROM waiters w" in s], statements


def test_a_transactions_audit_entries_are_written_at_once(lab):
    """A write transaction writes its audit entries in one statement (a
    release with nothing to wind down makes two); the events it publishes
    carry the entries' ids, in the order they were made."""
    published = []
    lab.store.bus.subscribe(published.append)
    assert reserve(lab, "alice", "b1").body["state"] == "reserved"
    recorder = Recorder(lab.store.wrap)
    lab.store.wrap = recorder
    freed = lab._run(lab.store.begin_release("b1", "alice", False, False, direct=True))
    assert freed["state"] == "free"
    (statements,) = recorder.writes()
    inserts = [s for s in statements if s.startswith("INSERT INTO events")]
    assert len(inserts) == 1, statements
    logged = lab.pool.sql(
        "SELECT id, action FROM events WHERE board = ? ORDER BY id", ("b1",)
    )
    mine = [(e.id, e.kind) for e in published if e.board == "b1"]
    assert mine == [tuple(row) for row in logged]
    assert [kind for _, kind in mine] == ["reserving", "reserved", "releasing", "freed"]


def test_a_release_with_nothing_to_wind_down_writes_each_row_once(lab):
    """Freed in the transaction that began its release, a board's row and
    its reservation's are each changed by one statement, which still
    compares the board's state and reservation before it changes them."""
    assert reserve(lab, "alice", "b1").body["state"] == "reserved"
    rid = lab.board("b1")["reservation_id"]
    recorder = Recorder(lab.store.wrap)
    lab.store.wrap = recorder
    freed = lab._run(lab.store.begin_release("b1", "alice", False, False, direct=True))
    assert freed["state"] == "free" and freed["reservation_id"] is None
    (statements,) = recorder.writes()
    boards = [s for s in statements if s.startswith("UPDATE boards")]
    assert len(boards) == 1, statements
    assert "WHERE name = ? AND state = ? AND reservation_id IS ?" in boards[0]
    assert len([s for s in statements if s.startswith("UPDATE reservations")]) == 1
    ended = lab.pool.sql(
        "SELECT state, cause, actor, outcome FROM reservations WHERE id = ?", (rid,)
    )
    assert [tuple(row) for row in ended] == [("ended", "release", "alice", "free")]


def test_a_held_back_compare_and_set_still_compares(lab):
    """A board change a transaction holds back (its row read in the same
    transaction) is still a compare-and-set: had the row changed meanwhile,
    the transaction fails with nothing written."""
    from bitelab.errors import Unavailable
    from bitelab.store import Txn

    def interaction(cursor):
        txn = Txn(lab.store.wrap(cursor), lab.clock.seconds())
        txn.execute("BEGIN IMMEDIATE")
        assert txn.board("a2")["state"] == "free"
        assert txn.set_board("a2", "free", None, state="maintenance", reason="x")
        # a change the transaction does not know of
        cursor.execute("UPDATE boards SET state = 'reserving' WHERE name = 'a2'")
        txn.flush()

    with pytest.raises(Unavailable):
        lab._run(lab.pool.runInteraction(interaction))
    assert lab.board("a2")["state"] == "free"


def test_a_class_reserve_picks_a_board_never_used_before_one_just_freed(lab):
    """Boards of a class go round: one never reserved (a new board, or one
    of a host just added) comes before the one freed last, on either
    database."""
    reserve(lab, "alice", "a1")
    lab.request("POST", "/boards/a1/release", "alice")
    answer_all(lab)
    picked = reserve(lab, "bob", "a")
    assert picked.body["name"] == "a2"
