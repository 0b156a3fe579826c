"""The schema: created on first use, versioned, upgraded in place, atomically
(SQLite; and PostgreSQL's upgrade)."""

import sqlite3
from pathlib import Path

import psycopg
import pytest

from bitelab import db, postgres
from bitelab.errors import ConfigError


def tables(conn):
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
    return {r[0] for r in rows if not r[0].startswith("sqlite_")}


def test_fresh_database_gets_current_schema_in_wal_mode(tmp_path):
    """A new file gets every table, the version row and WAL journaling."""
    path = tmp_path / "sub" / "lab.sqlite"
    conn = db.connect(str(path))
    assert tables(conn) == {
        "boards",
        "reservations",
        "waiters",
        "tokens",
        "events",
        "hosts",
        "classes",
        "version",
    }
    assert db.get_version(conn) == db.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("INSERT INTO events (at, action) VALUES (0, 'x')")
    for name in ("lab.sqlite", "lab.sqlite-wal", "lab.sqlite-shm"):
        assert (path.parent / name).stat().st_mode & 0o777 == 0o600, name
    conn.close()
    again = db.connect(str(path))
    assert again.execute("SELECT COUNT(*) FROM version").fetchone()[0] == 1
    again.close()


def test_newer_schema_is_refused(tmp_path):
    """A database from a newer bitelab is refused with a clear message, untouched."""
    path = str(tmp_path / "lab.sqlite")
    db.connect(path).execute("UPDATE version SET version = 99")
    with pytest.raises(ConfigError, match="version 99 is newer"):
        db.connect(path)


def fake_schema(files):
    def read(name):
        if name not in files:
            raise FileNotFoundError(name)
        return files[name]

    return read


def test_upgrade_in_place_keeps_data(tmp_path, monkeypatch):
    """Upgrade scripts run in order on an old database and keep its rows."""
    path = str(tmp_path / "lab.sqlite")
    conn = db.connect(path)
    conn.execute("INSERT INTO boards (name, class, arch) VALUES ('b1', 'c', 'x')")
    now = db.SCHEMA_VERSION
    files = {
        f"upgrade-to-v{now + 1}.sql": "ALTER TABLE boards ADD COLUMN notes TEXT;\n"
        "UPDATE boards SET notes = 'v2';",
        f"upgrade-to-v{now + 2}.sql": "-- a comment line\nCREATE TABLE extra (k TEXT);",
    }
    monkeypatch.setattr(db, "_read_schema", fake_schema(files))
    assert db.ensure_schema(conn, target=now + 2) == now + 2
    assert db.get_version(conn) == now + 2
    assert conn.execute("SELECT name, notes FROM boards").fetchall() == [("b1", "v2")]
    assert "extra" in tables(conn)


def test_failed_upgrade_changes_nothing(tmp_path, monkeypatch):
    """An upgrade that fails half-way is rolled back: same version, same tables."""
    path = str(tmp_path / "lab.sqlite")
    conn = db.connect(path)
    before = tables(conn)
    now = db.SCHEMA_VERSION
    files = {
        f"upgrade-to-v{now + 1}.sql": "CREATE TABLE half (k TEXT);\nTHIS IS NOT SQL;",
    }
    monkeypatch.setattr(db, "_read_schema", fake_schema(files))
    with pytest.raises(sqlite3.OperationalError):
        db.ensure_schema(conn, target=now + 1)
    assert db.get_version(conn) == now
    assert tables(conn) == before


def test_unopenable_database_is_one_line(tmp_path):
    """A database path that cannot be created is a one-line ConfigError."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot open database") as info:
        db.connect(str(blocker / "lab.sqlite"))
    assert "\n" not in str(info.value)


def test_version_1_database_upgrades_with_its_reservations(tmp_path):
    """A schema-1 database (reserved boards, tokens, events) upgrades to the
    current schema: each reserved board gets a reservation with an identity,
    free and maintenance boards keep their state, tokens and events stay."""
    path = str(tmp_path / "lab.sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    db.configure_connection(conn)
    for statement in db._statements(db._read_schema("v1.sql")):
        conn.execute(statement)
    conn.execute("CREATE TABLE version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO version VALUES (1)")
    conn.execute(
        "INSERT INTO boards (name, class, arch, state, holder, reserved_at, "
        "expires_at, sshpubkey, script_attrs) VALUES "
        "('b1', 'c', 'x', 'reserved', 'alice', 10, 70, 'ssh-ed25519 AAAA', "
        '\'{"ip": "10.0.0.2"}\')'
    )
    conn.execute(
        "INSERT INTO boards (name, class, arch, state, reason) VALUES "
        "('b2', 'c', 'x', 'maintenance', 'flaky'), ('b3', 'c', 'x', 'free', NULL)"
    )
    conn.execute("INSERT INTO tokens VALUES ('h', 'alice', 1, NULL)")
    conn.execute("INSERT INTO events (at, action) VALUES (1, 'reserve')")
    conn.close()
    conn = db.connect(path)
    assert db.get_version(conn) == db.SCHEMA_VERSION
    boards = conn.execute(
        "SELECT name, state, reservation_id, reason FROM boards ORDER BY name"
    ).fetchall()
    rid = boards[0][2]
    assert boards == [
        ("b1", "reserved", rid, None),
        ("b2", "maintenance", None, "flaky"),
        ("b3", "free", None, None),
    ]
    assert conn.execute(
        "SELECT board, user, state, created_at, expires_at, sshpubkey, script_attrs "
        "FROM reservations WHERE id = ?",
        (rid,),
    ).fetchone() == (
        "b1",
        "alice",
        "reserved",
        10,
        70,
        "ssh-ed25519 AAAA",
        '{"ip": "10.0.0.2"}',
    )
    assert conn.execute("SELECT user FROM tokens").fetchall() == [("alice",)]
    assert conn.execute("SELECT action, reservation FROM events").fetchall() == [
        ("reserve", None)
    ]


def sqlite_columns(conn):
    """Every table's columns with their types, defaults and keys."""
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        )
    ]
    return {
        table: sorted(
            (name, kind, default, key)
            for _, name, kind, _, default, key in conn.execute(
                f"PRAGMA table_info({table})"
            )
        )
        for table in tables
    }


def test_an_upgraded_database_has_the_schema_of_a_fresh_one(tmp_path):
    """A schema-1 database upgraded step by step ends with the same tables
    and columns as a database made at the current version."""
    old = sqlite3.connect(str(tmp_path / "old.sqlite"), isolation_level=None)
    for statement in db._statements(db._read_schema("v1.sql")):
        old.execute(statement)
    old.execute("CREATE TABLE version (version INTEGER NOT NULL)")
    old.execute("INSERT INTO version VALUES (1)")
    old.close()
    upgraded = db.connect(str(tmp_path / "old.sqlite"))
    fresh = db.connect(str(tmp_path / "fresh.sqlite"))
    assert sqlite_columns(upgraded) == sqlite_columns(fresh)


def test_a_postgresql_schema_4_database_upgrades_to_a_fresh_ones_schema(
    postgres_server,
):
    """A PostgreSQL database of schema 4 (with a host and a board) upgrades
    in place to the tables and columns of a fresh one, keeping its rows."""
    columns = (
        "SELECT table_name, column_name, data_type, column_default "
        "FROM information_schema.columns WHERE table_schema = 'public' "
        "ORDER BY table_name, column_name"
    )
    old_url, fresh_url = postgres_server.database(), postgres_server.database()
    with psycopg.connect(old_url) as conn:
        for statement in postgres._statements(
            (Path(__file__).parent / "data" / "postgresql-v4.sql").read_text()
        ):
            conn.execute(statement)
        conn.execute("CREATE TABLE version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO version VALUES (4)")
        conn.execute(
            "INSERT INTO hosts (name, url, started_at, heartbeat_at) "
            "VALUES ('h1', 'http://h1', 1, 2)"
        )
        conn.execute(
            "INSERT INTO boards (name, class, arch, host) VALUES ('b1', 'c', 'x', 'h1')"
        )
    upgraded, fresh = postgres.connect(old_url), postgres.connect(fresh_url)
    try:
        assert upgraded.execute(columns).fetchall() == fresh.execute(columns).fetchall()
        assert upgraded.execute("SELECT version FROM version").fetchone() == (5,)
        assert upgraded.execute("SELECT name, host, facts FROM boards").fetchall() == [
            ("b1", "h1", "{}")
        ]
        assert upgraded.execute("SELECT name, url, key_hash FROM hosts").fetchall() == [
            ("h1", "http://h1", "")
        ]
    finally:
        upgraded.close()
        fresh.close()
