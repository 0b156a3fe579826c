"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package,
``initdb`` and ``pg_ctl`` into a temporary directory on a free loopback port.

``PostgresServer.database()`` makes a fresh, empty database and returns its
URL.  As root, the cluster belongs to the ``postgres`` account (``initdb``
refuses to run as root).  Where no PostgreSQL is installed the tests that
need it are skipped, except under CI (``CI`` set), where that is an error:
``.ci/run`` installs it.
"""

import glob
import os
import secrets
import shutil
import subprocess
import tempfile

import pytest

from support.server import free_port, wait_for


def _bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bitelab-pg-")
        self.port = free_port()
        self.as_user = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = os.path.join(self.dir, "data")

    def _run(self, *argv):
        return subprocess.run(
            [*self.as_user, *argv], check=True, capture_output=True, text=True
        )

    def start(self):
        self._run(_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres")
        self._run(
            _bin("pg_ctl"),
            "-D",
            self.data,
            "-l",
            os.path.join(self.dir, "log"),
            "-w",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
            "-c fsync=off -c max_connections=200",
            "start",
        )
        wait_for(self._ready, what="PostgreSQL to accept connections")
        return self

    def _ready(self):
        import psycopg

        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def url(self, database):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self):
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self):
        subprocess.run(
            [*self.as_user, _bin("pg_ctl"), "-D", self.data, "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def available():
    """Whether a PostgreSQL server can be started here."""
    return _bin("initdb") is not None and _bin("pg_ctl") is not None


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster shared by the session's tests."""
    if not available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs it")
        pytest.skip("needs PostgreSQL (apt: postgresql)")
    server = PostgresServer().start()
    yield server
    server.stop()
