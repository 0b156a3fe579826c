"""Shared fixtures: real bitelab servers, and a check for unhandled Deferred errors."""

import gc
import os
import shutil
import subprocess
import sys
import tty

import pytest

from support.server import REPO, LabServer

# the snmp_agent fixture: a real snmpsim PoE switch
pytest_plugins = ["support.snmpagent", "support.pg"]
from twisted.logger import globalLogPublisher


@pytest.fixture
def lab_server(tmp_path):
    """A factory of started ``LabServer`` processes, all stopped after the test."""
    servers = []

    def make(**kwargs):
        directory = tmp_path / f"lab{len(servers)}"
        server = LabServer(directory, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def no_unhandled_deferred_errors():
    """Fail the test if a Deferred was garbage-collected with an unhandled error."""
    seen = []

    def observer(event):
        if event.get("log_format", "").startswith("Unhandled error in Deferred"):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert not seen, f"unhandled error in Deferred: {seen[0]}"


@pytest.fixture
def serial():
    """A pseudo-terminal standing in for a board's serial port: (master fd, device path)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.fixture
def fake_conf(tmp_path):
    """A copy of the example lab's board and power scripts; the board runs."""
    conf = tmp_path / "conf"
    conf.mkdir()
    for name in ("fakeboard.py", "statepower.sh"):
        shutil.copy(os.path.join(REPO, "conf", name), conf / name)
    script = [sys.executable, str(conf / "fakeboard.py")]
    started = subprocess.run(
        [*script, "start", "con-1"], capture_output=True, text=True, check=False
    )
    assert started.returncode == 0, started.stderr
    yield conf
    subprocess.run([*script, "stop", "con-1"], capture_output=True, check=False)
