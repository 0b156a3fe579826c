"""The SQLite schema: created on first use, versioned, upgraded in place, atomically."""

import sqlite3

import pytest

from bitelab import db
from bitelab.errors import ConfigError


def tables(conn):
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
    return {r[0] for r in rows if not r[0].startswith("sqlite_")}


def test_fresh_database_gets_current_schema_in_wal_mode(tmp_path):
    """A new file gets every table, the version row and WAL journaling."""
    path = tmp_path / "sub" / "lab.sqlite"
    conn = db.connect(str(path))
    assert tables(conn) == {"boards", "tokens", "events", "version"}
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
    files = {
        "upgrade-to-v2.sql": "ALTER TABLE boards ADD COLUMN notes TEXT;\n"
        "UPDATE boards SET notes = 'v2';",
        "upgrade-to-v3.sql": "-- a comment line\nCREATE TABLE extra (k TEXT);",
    }
    monkeypatch.setattr(db, "_read_schema", fake_schema(files))
    assert db.ensure_schema(conn, target=3) == 3
    assert db.get_version(conn) == 3
    assert conn.execute("SELECT name, notes FROM boards").fetchall() == [("b1", "v2")]
    assert "extra" in tables(conn)


def test_failed_upgrade_changes_nothing(tmp_path, monkeypatch):
    """An upgrade that fails half-way is rolled back: same version, same tables."""
    path = str(tmp_path / "lab.sqlite")
    conn = db.connect(path)
    before = tables(conn)
    files = {
        "upgrade-to-v2.sql": "CREATE TABLE half (k TEXT);\nTHIS IS NOT SQL;",
    }
    monkeypatch.setattr(db, "_read_schema", fake_schema(files))
    with pytest.raises(sqlite3.OperationalError):
        db.ensure_schema(conn, target=2)
    assert db.get_version(conn) == 1
    assert tables(conn) == before


def test_unopenable_database_is_one_line(tmp_path):
    """A database path that cannot be created is a one-line ConfigError."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot open database") as info:
        db.connect(str(blocker / "lab.sqlite"))
    assert "\n" not in str(info.value)
