"""PostgreSQL as the lab's database (``db_url=postgresql://...``).

The driver is psycopg 3 through Twisted's ``adbapi``, like SQLite: the
store's transactions are blocking DB-API code run in a thread pool, so one
store serves both.  The schema lives in ``bitelab/schema/postgresql-vN.sql``
with the same version numbers as SQLite's.  Every write transaction first
takes one transaction-scoped advisory lock, so writes are serialised lab
wide, whichever host makes them, exactly as SQLite's ``BEGIN IMMEDIATE``
serialises them on one host; reads never wait for it.

The server's connections run in autocommit mode, so that a round trip to
the database is spent only where it must be: a write's ``BEGIN`` and its
lock go in one, and a read is its statement alone (in READ COMMITTED each
statement reads its own snapshot, in a transaction or not).
"""

import functools
import re

from twisted.enterprise import adbapi

from bitelab.errors import ConfigError

#: the advisory lock every write transaction holds (any fixed number)
WRITE_LOCK = 0x6269_7465  # "bite"
#: the schema version this bitelab writes (same numbering as SQLite's)
SCHEMA_VERSION = 5

_USER = re.compile(r"(?<![\w\"'])user(?![\w\"'])")


#: what ``BEGIN IMMEDIATE`` becomes: the write lock, after a ``BEGIN`` of
#: our own on a connection in autocommit mode, sent as one simple query
_LOCK = f"SELECT pg_advisory_xact_lock({WRITE_LOCK})"
_BEGIN_AND_LOCK = f"BEGIN; {_LOCK}"


@functools.lru_cache(maxsize=512)
def translate(sql):
    """SQLite-flavoured store SQL in PostgreSQL's words.

    ``?`` parameters become ``%s``; ``user`` (a reserved word) is quoted;
    ``IS ?`` becomes ``IS NOT DISTINCT FROM %s``; ``BEGIN IMMEDIATE`` takes
    the write lock instead.
    """
    if sql.strip() == "BEGIN IMMEDIATE":
        return _LOCK
    sql = sql.replace("IS ?", "IS NOT DISTINCT FROM ?")
    sql = _USER.sub('"user"', sql)
    return sql.replace("?", "%s")


_INSERT_WITH_ID = re.compile(
    r"^\s*INSERT INTO (reservations|waiters|events)\b", re.IGNORECASE
)


@functools.lru_cache(maxsize=512)
def _statement(sql):
    """``(translated SQL, whether it gives back the new row's id as
    ``lastrowid``)``: an insert that asks for ``RETURNING`` itself fetches
    what it returns."""
    sql = translate(sql)
    returning = _INSERT_WITH_ID.match(sql) is not None and "RETURNING" not in sql
    return (sql + " RETURNING id" if returning else sql), returning


class Cursor:
    """A psycopg cursor that takes the store's SQL and gives ``lastrowid``."""

    def __init__(self, cursor):
        self._cursor = cursor
        self.lastrowid = None

    def execute(self, sql, args=()):
        sql, returning = _statement(sql)
        if sql == _LOCK and self._cursor.connection.autocommit:
            self._cursor.execute(_BEGIN_AND_LOCK)
            return self
        self._cursor.execute(sql, tuple(args))
        if returning:
            self.lastrowid = self._cursor.fetchone()[0]
        return self

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()

    def __iter__(self):
        return iter(self._cursor.fetchall())

    @property
    def rowcount(self):
        return self._cursor.rowcount


def wrap(cursor):
    """The store's view of a psycopg cursor."""
    return Cursor(cursor)


def reset_identities(cursor):
    """After rows were copied in with their ids, let new ids follow them."""
    for table in ("reservations", "events", "waiters"):
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
        )


def _read_schema(name):
    from importlib import resources

    return resources.files("bitelab").joinpath("schema", name).read_text("utf-8")


def _statements(script):
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def ensure_schema(conn, target=SCHEMA_VERSION):
    """Create the schema (or check its version) in one transaction."""
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        cursor.execute("SELECT to_regclass('version') IS NOT NULL")
        if cursor.fetchone()[0]:
            cursor.execute("SELECT version FROM version")
            row = cursor.fetchone()
            version = row[0] if row else 0
        else:
            version = 0
        if version > target:
            conn.rollback()
            raise ConfigError(
                f"database schema version {version} is newer than this bitelab "
                f"understands ({target}); upgrade bitelab"
            )
        if version == 0:
            for statement in _statements(_read_schema(f"postgresql-v{target}.sql")):
                cursor.execute(statement)
            cursor.execute("CREATE TABLE version (version INTEGER NOT NULL)")
            cursor.execute("INSERT INTO version VALUES (%s)", (target,))
        else:
            for step in range(version + 1, target + 1):
                for statement in _statements(
                    _read_schema(f"postgresql-upgrade-to-v{step}.sql")
                ):
                    cursor.execute(statement)
            if version != target:
                cursor.execute("UPDATE version SET version = %s", (target,))
    conn.commit()
    return target


def connect(url):
    """A plain connection with the schema ensured (start-up, admin commands)."""
    import psycopg

    try:
        conn = psycopg.connect(url, connect_timeout=10)
        ensure_schema(conn)
    except psycopg.Error as e:
        raise ConfigError(
            f"{redact(url)}: cannot use the database: {one_line(e)}"
        ) from None
    return conn


def make_pool(url, readers=False):
    """An adbapi pool on ``url``: one connection for writes (their order is
    the order they were asked in), two for reads; all in autocommit mode
    (a write begins its transaction with ``BEGIN IMMEDIATE``)."""
    return adbapi.ConnectionPool(
        "psycopg",
        url,
        cp_min=1,
        cp_max=2 if readers else 1,
        cp_reconnect=True,
        cp_openfun=_configure,
    )


def _configure(conn):
    conn.autocommit = True


def storage_problem(error):
    """A one-line reason for a psycopg error a client may meet, or None."""
    try:
        import psycopg
    except ImportError:
        return None
    if not isinstance(error, psycopg.Error):
        return None
    if isinstance(error, psycopg.IntegrityError | psycopg.ProgrammingError):
        return None
    if isinstance(error, psycopg.errors.DiskFull):
        return "the database's storage is full; nothing was changed"
    if isinstance(
        error, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled
    ):
        return "the database is busy; try again later"
    return f"the database is unavailable ({one_line(error)}); nothing was changed"


def one_line(error):
    """The first line of a driver error."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def redact(url):
    """``url`` without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)
