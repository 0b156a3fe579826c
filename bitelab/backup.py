"""Backups and restores of the SQLite database, and the server's lock.

A running server holds an exclusive ``flock`` on ``DB_FILE.lock`` for as
long as it runs (the kernel drops it when the process ends, however it
ends, so a crash leaves nothing stale).  ``restore`` takes the same lock
first, so it refuses while a server runs, and a server cannot start in the
middle of a restore; two servers cannot share a database either.

``backup`` copies the database with SQLite's online backup API in one
step: a consistent snapshot taken while the server goes on writing (a
write waits at most for the copy; reads never wait).  The copy is one
self-contained file (no ``-wal``), checked, and put in place atomically.
"""

import fcntl
import os
import sqlite3

from bitelab.db import SCHEMA_VERSION
from bitelab.errors import ConfigError

LOCK_SUFFIX = ".lock"
#: where ``restore`` keeps the database it replaced
REPLACED_SUFFIX = ".replaced"


class ServerLock:
    """The lock on a database file; ``what`` says who holds it, in messages."""

    def __init__(self, db_file, what):
        self.db_file = db_file
        self.path = db_file + LOCK_SUFFIX
        self.what = what
        self.fd = None

    def acquire(self):
        """Take the lock; ``ConfigError`` naming the holder if it is taken."""
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise ConfigError(
                f"{self.db_file}: cannot open database: its lock file "
                f"{self.path}: {e.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise ConfigError(
                f"the database is in use by {holder or 'another process'} "
                f"(it holds {self.path}); stop it first"
            ) from None
        self.fd = fd
        self.mark()

    def mark(self):
        """Write who holds the lock (again after twistd forked into a daemon)."""
        text = f"{self.what} (pid {os.getpid()})\n".encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text, 0)

    def release(self):
        """Let go of the lock."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


def _fsync_directory(path):
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(source, target):
    """Copy the open database ``source`` into the new file ``target``; checked."""
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    copy = sqlite3.connect(target, isolation_level=None)
    try:
        # one step: the whole database as of one moment
        source.backup(copy, pages=-1)
        copy.execute("PRAGMA journal_mode=DELETE")
        problem = copy.execute("PRAGMA integrity_check").fetchone()[0]
        if problem != "ok":
            raise ConfigError(f"the copy is damaged: {problem}")
    finally:
        copy.close()
    with open(target, "rb") as f:
        os.fsync(f.fileno())


def backup(db_file, destination):
    """Copy the database ``db_file`` to ``destination`` (replaced atomically)."""
    if not os.path.isfile(db_file):
        raise ConfigError(f"{db_file}: no such database")
    temporary = f"{destination}.tmp{os.getpid()}"
    source = sqlite3.connect(db_file, isolation_level=None)
    try:
        source.execute(f"PRAGMA busy_timeout={30 * 1000}")
        _copy(source, temporary)
        os.replace(temporary, destination)
        _fsync_directory(destination)
    except sqlite3.Error as e:
        raise ConfigError(f"{db_file}: cannot back up: {e}") from None
    except OSError as e:
        raise ConfigError(f"{destination}: cannot write: {e.strerror}") from None
    finally:
        source.close()
        if os.path.exists(temporary):
            os.unlink(temporary)


def check_backup(path):
    """Refuse a file that is not a bitelab database this version can use."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if not {"version", "boards", "events"} <= tables:
                raise ConfigError(f"{path}: not a bitelab database")
            version = conn.execute("SELECT version FROM version").fetchone()[0]
            problem = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ConfigError(f"{path}: not a usable SQLite database ({e})") from None
    if problem != "ok":
        raise ConfigError(f"{path}: the backup is damaged: {problem}")
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: schema version {version} is newer than this bitelab "
            f"understands ({SCHEMA_VERSION}); restore it with a newer bitelab"
        )
    return version


def restore(db_file, source):
    """Replace the database ``db_file`` by the backup ``source``.

    Refused while a server runs.  The database it replaces is kept as
    ``DB_FILE.replaced``.  Returns the backup's schema version (an older
    one is upgraded when the server starts).
    """
    version = check_backup(source)
    lock = ServerLock(db_file, "bitelab-admin restore")
    lock.acquire()
    temporary = f"{db_file}.restore{os.getpid()}"
    try:
        backup_conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            _copy(backup_conn, temporary)
        finally:
            backup_conn.close()
        if os.path.exists(db_file):
            # fold the write-ahead log in, so that the kept copy is whole
            # and no log of the old database is left beside the new one
            old = sqlite3.connect(db_file, isolation_level=None)
            try:
                old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                old.execute("PRAGMA journal_mode=DELETE")
            finally:
                old.close()
            os.replace(db_file, db_file + REPLACED_SUFFIX)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(db_file + suffix):
                os.unlink(db_file + suffix)
        os.replace(temporary, db_file)
        _fsync_directory(db_file)
    except sqlite3.Error as e:
        raise ConfigError(f"{db_file}: cannot restore: {e}") from None
    except OSError as e:
        raise ConfigError(f"{db_file}: cannot restore: {e.strerror}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
        lock.release()
    return version
