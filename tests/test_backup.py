"""Backups, restores and the retention of the history.

The backup tests run ``bitelab-admin`` against a real ``twistd`` that is
busy with reservations from several clients at once; the retention test
runs the real store on SQLite in-process with a ``task.Clock``.
"""

import os
import sqlite3
import stat
import threading

import pytest

from bitelab.retention import RetentionService
from support.inlab import InLab
from support.server import LabServer


def dump(path):
    """Every row of every table of a database, as lines of SQL."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def rows(path, sql):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def busy(server, users, rounds):
    """Threads reserving and releasing over HTTP, ``rounds`` times each."""
    tokens = {user: server.token(user) for user in users}

    def work(user):
        for _ in range(rounds):
            status, board = server.request(
                "POST", "/api/v1/boards/zynq/reserve", body={}, token=tokens[user]
            )
            if status == 200:
                server.request(
                    "POST",
                    f"/api/v1/boards/{board['name']}/release",
                    body={},
                    token=tokens[user],
                )

    threads = [threading.Thread(target=work, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.e2e
def test_backup_under_load_restores_to_an_identical_state(lab_server, tmp_path):
    """Backups taken while clients reserve and release are whole: each is a
    sound database whose audit log is the live one's up to a point, with
    boards and reservations that agree.  Restore refuses while the server
    runs; once it is stopped, it puts the backup in place (the database
    file then holds exactly the backup's rows), keeps the replaced one, and
    the server starts on it."""
    server = lab_server()
    db_file = os.path.join(server.dir, "bitelab.sqlite")
    threads = busy(server, ("alice", "bob", "carol"), 40)
    backups = []
    for number in range(3):
        path = str(tmp_path / f"backup-{number}.sqlite")
        result = server.admin("backup", path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"backed up {db_file} to {path}\n"
        backups.append(path)
    for thread in threads:
        thread.join()

    live_events = rows(db_file, "SELECT * FROM events ORDER BY id")
    for path in backups:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert not os.path.exists(path + "-wal")
        assert rows(path, "PRAGMA integrity_check") == [("ok",)]
        assert rows(path, "PRAGMA journal_mode") == [("delete",)]
        events = rows(path, "SELECT * FROM events ORDER BY id")
        assert events == live_events[: len(events)]
        # every board's reservation is there, in the board's state
        for name, state, rid in rows(
            path, "SELECT name, state, reservation_id FROM boards"
        ):
            if rid is None:
                assert state in ("free", "maintenance"), name
                continue
            assert rows(path, f"SELECT state FROM reservations WHERE id = {rid}") == [
                (state,)
            ]
    assert len(rows(backups[-1], "SELECT * FROM events")) > len(
        rows(backups[0], "SELECT * FROM events")
    ), "the backups were not taken under load"

    chosen = backups[1]
    before = dump(db_file)
    refused = server.admin("restore", chosen)
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "bitelab-admin: the database is in use by a running bitelab server (pid "
    )
    assert "stop it first" in refused.stderr
    assert dump(db_file) == before

    server.stop()
    result = server.admin("restore", chosen)
    assert result.returncode == 0, result.stderr
    assert dump(db_file) == dump(chosen)
    assert dump(db_file + ".replaced") == before
    assert stat.S_IMODE(os.stat(db_file).st_mode) == 0o600
    server.start()
    root = server.token("root")
    events = server.get("/api/v1/events?limit=1000", token=root)["events"]
    restored_ids = [row[0] for row in rows(chosen, "SELECT id FROM events ORDER BY id")]
    assert [e["id"] for e in reversed(events)][: len(restored_ids)] == restored_ids


@pytest.mark.e2e
def test_one_server_per_database(lab_server, tmp_path):
    """A second server on the same database stops with one line naming the
    running one."""
    first = lab_server()
    second_dir = tmp_path / "second"
    second = LabServer(
        second_dir,
        settings={"db_file": os.path.join(first.dir, "bitelab.sqlite")},
    )
    with pytest.raises(AssertionError) as failed:
        second.start()
    assert "bitelab: the database is in use by a running bitelab server (pid " in str(
        failed.value
    )
    assert first.get("/api/v1/info")["name"] == "bitelab"


@pytest.mark.e2e
def test_bad_backup_and_restore_arguments_are_one_line(lab_server, tmp_path):
    """A restore of a file that is not a bitelab database, or of one from a
    newer bitelab, and a backup into a directory that does not exist: one
    line each, exit status 2, the database untouched."""
    server = lab_server()
    server.stop()
    db_file = os.path.join(server.dir, "bitelab.sqlite")
    before = dump(db_file)
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all, just text " * 100)
    result = server.admin("restore", str(junk))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "not a usable SQLite database" in result.stderr
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    result = server.admin("restore", str(other))
    assert result.stderr == f"bitelab-admin: {other}: not a bitelab database\n"
    newer = tmp_path / "newer.sqlite"
    assert server.admin("backup", str(newer)).returncode == 0
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE version SET version = 99")
    conn.commit()
    conn.close()
    result = server.admin("restore", str(newer))
    assert "schema version 99 is newer" in result.stderr
    result = server.admin("backup", str(tmp_path / "no" / "such" / "dir.sqlite"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert dump(db_file) == before
    assert not os.path.exists(db_file + ".replaced")


BOARDS = """
setup_script = /bin/true;
classes { a { arch = x; } }
boards [ { name = a1; brdclass = a; options = [ { cls = recpower, port = 1 } ] },
         { name = a2; brdclass = a; options = [ { cls = recpower, port = 2 } ] } ]
"""


def test_retention_deletes_old_history_only(tmp_path):
    """With a retention of 30 days, audit entries and ended reservations
    older than that go; newer ones, and an older reservation that still
    holds its board (its ending under way), stay."""
    lab = InLab(tmp_path, BOARDS)

    def call(path, user, body, done=True):
        answer = lab.request("POST", path, user, body)
        board = path.split("/")[2]
        while done and any(c.board == board for c in lab.calls.pending):
            lab.complete([c.board for c in lab.calls.pending].index(board))
        return answer

    try:
        assert call("/boards/a1/reserve", "alice", {}).status == 200
        call("/boards/a1/release", "alice", {}, done=False)
        assert lab.board("a1")["state"] == "releasing"
        assert call("/boards/a2/reserve", "bob", {}).status == 200
        assert call("/boards/a2/release", "bob", {}).status == 200
        old_events = lab._run(lab.store.events(limit=1000))
        lab.clock.advance(31 * 86400)
        assert call("/boards/a2/reserve", "carol", {}).status == 200
        assert call("/boards/a2/release", "carol", {}).status == 200
        service = RetentionService(lab.store, lab.clock, 30)
        deleted = lab._run(service.prune())
        assert deleted == (len(old_events), 1)
        left = lab._run(lab.store.events(limit=1000))
        assert {e["id"] for e in left}.isdisjoint(e["id"] for e in old_events)
        assert {e["user"] for e in left if e["action"] == "reserved"} == {"carol"}
        reservations = lab._run(lab.store.reservations())
        assert sorted((r["user"], r["state"]) for r in reservations) == [
            ("alice", "releasing"),
            ("carol", "ended"),
        ]
        assert lab.board("a1")["holder"] == "alice"
    finally:
        lab.close()
