"""The SQLite database: versioned schema, pragmas and the adbapi pool.

The schema lives in ``bitelab/schema/vN.sql`` (a fresh database) and
``bitelab/schema/upgrade-to-vN.sql`` (an upgrade from N-1); the ``version``
table records where a database stands.  Every connection runs in WAL mode
with ``synchronous=NORMAL``: a committed transaction survives the server
being killed at any moment.
"""

import os
import sqlite3
from importlib import resources

from twisted.enterprise import adbapi

from bitelab.errors import ConfigError

SCHEMA_VERSION = 5
#: seconds a write waits for a database another process holds (busy_timeout)
BUSY_TIMEOUT = 5.0


def _read_schema(name):
    return resources.files("bitelab").joinpath("schema", name).read_text("utf-8")


def configure_connection(conn, busy_timeout=BUSY_TIMEOUT):
    """Pragmas every connection needs."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")


def get_version(conn):
    """The schema version of an open database, 0 for an empty one."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='version'"
    ).fetchone()
    if not has_table:
        return 0
    row = conn.execute("SELECT version FROM version").fetchone()
    return row[0] if row else 0


def ensure_schema(conn, target=SCHEMA_VERSION):
    """Create the schema, or upgrade it in place, inside one transaction."""
    version = get_version(conn)
    if version > target:
        raise ConfigError(
            f"database schema version {version} is newer than this bitelab "
            f"understands ({target}); upgrade bitelab"
        )
    if version == target:
        return version
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 0:
            for statement in _statements(_read_schema(f"v{target}.sql")):
                conn.execute(statement)
            conn.execute("CREATE TABLE version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO version VALUES (?)", (target,))
        else:
            for step in range(version + 1, target + 1):
                for statement in _statements(_read_schema(f"upgrade-to-v{step}.sql")):
                    conn.execute(statement)
            conn.execute("UPDATE version SET version = ?", (target,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return target


def _statements(script):
    """Split a schema file into statements (they hold no ';' in literals)."""
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def connect(path):
    """A plain connection with the schema ensured (admin commands, start-up)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # token hashes and the audit log are for the server only; SQLite
        # gives the -wal and -shm files the database file's mode
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        configure_connection(conn)
        ensure_schema(conn)
    except sqlite3.Error as e:
        raise ConfigError(f"{path}: cannot open database: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot open database: {e.strerror}") from None
    return conn


def make_pool(path, busy_timeout=BUSY_TIMEOUT):
    """An adbapi pool of one connection, so its transactions never interleave.

    The server opens two: writes go through one, reads through the other, so
    that reads keep answering (WAL: readers never wait for a writer) while a
    write waits for a database another process holds.
    """
    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        isolation_level=None,
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_openfun=lambda conn: configure_connection(conn, busy_timeout),
        cp_reconnect=True,
    )


def file_identity(path):
    """``(device, inode)`` of the database file, or None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def storage_problem(error):
    """A one-line reason for a database error a client may meet, or None.

    Locked (busy past the wait), full, read-only or failing storage is the
    client's ``storage`` error; anything else (a broken statement) is a bug.
    """
    if isinstance(error, sqlite3.IntegrityError | sqlite3.ProgrammingError):
        return None
    if not isinstance(error, sqlite3.DatabaseError):
        return None
    text = str(error).lower()
    if "locked" in text or "busy" in text:
        return "the database is busy; try again later"
    if "full" in text:
        return "the database's storage is full; nothing was changed"
    return f"the database is unavailable ({error}); nothing was changed"


class Connection:
    """A plain connection to the lab's database, SQLite or PostgreSQL, whose
    cursors take the store's SQL (``bitelab-admin``, start-up)."""

    def __init__(self, raw, wrap=None):
        self.raw = raw
        self.wrap = wrap or (lambda cursor: cursor)

    def cursor(self):
        """A cursor speaking the store's SQL."""
        return self.wrap(self.raw.cursor())

    def execute(self, sql, args=()):
        """Run one statement on a fresh cursor; the cursor."""
        return self.cursor().execute(sql, args)

    def commit(self):
        self.raw.commit()

    def rollback(self):
        self.raw.rollback()

    def close(self):
        self.raw.close()


def open_database(settings):
    """A ``Connection`` to the database of ``settings``, schema ensured."""
    if settings.db_url:
        from bitelab import postgres

        return Connection(postgres.connect(settings.db_url), postgres.wrap)
    return Connection(connect(settings.db_file))


def make_pools(settings):
    """``(writer, reader, wrap, path)`` for the store of ``settings``."""
    if settings.db_url:
        from bitelab import postgres

        writer = postgres.make_pool(settings.db_url)
        reader = postgres.make_pool(settings.db_url, readers=True)
        return writer, reader, postgres.wrap, None
    writer = make_pool(settings.db_file, settings.db_busy_timeout)
    reader = make_pool(settings.db_file, settings.db_busy_timeout)
    return writer, reader, None, settings.db_file
