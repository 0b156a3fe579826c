"""A flood of idle connections against a real server, on loopback only.

The server runs with the common open-file limit of 1024.  A thousand
connections to each of its ports, opened from other loopback addresses
and never used, must not keep a new client from getting ``/api/v1/info``
and a token over SSH (the system OpenSSH client through ``bitelab
contssh``).
"""

import errno
import os
import resource
import socket
import urllib.request

import pytest

from support.server import LabServer, wait_for
from support.ssh import run_ssh

pytestmark = pytest.mark.e2e

FLOOD = 1000
SERVER_FILES = 1024


@pytest.fixture
def many_files():
    """Let this process hold the flood's sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * FLOOD + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs an open-file limit of {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def flood(port, network):
    """``FLOOD`` idle connections to ``port``, from 100 addresses of
    127.0.``network``.0/24 (ten each)."""
    socks = []
    for n in range(FLOOD):
        sock = socket.socket()
        sock.settimeout(10)
        sock.bind((f"127.0.{network}.{n % 100 + 1}", 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def closed_by_server(sock):
    """Whether the server has closed ``sock`` (what it sent is discarded)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        return e.errno == errno.ECONNRESET


def test_new_clients_get_in_after_a_flood_of_idle_connections(tmp_path, many_files):
    """After 1,000 idle connections to the SSH port and 1,000 to the HTTP
    port, a new client gets /api/v1/info and a token over SSH; the server
    closed all but the few it keeps and stays within its file limit."""
    server = LabServer(tmp_path, users=("alice",), max_files=SERVER_FILES).start()
    socks = []
    try:
        socks += flood(server.ssh_port, 1)
        socks += flood(server.http_port, 2)
        with urllib.request.urlopen(server.url + "/api/v1/info", timeout=30) as r:
            assert r.status == 200
        result = run_ssh(server, "alice", "lab", tmp_path / "known_hosts")
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().startswith("bl_")
        ssh_flood, http_flood = socks[:FLOOD], socks[FLOOD:]
        # the SSH caps keep 64 not logged in, the HTTP cap 512 connections
        wait_for(
            lambda: sum(map(closed_by_server, ssh_flood)) >= FLOOD - 64,
            what="the server to close the SSH flood",
        )
        wait_for(
            lambda: sum(map(closed_by_server, http_flood)) >= FLOOD - 512,
            what="the server to close the HTTP flood",
        )
        assert len(os.listdir(f"/proc/{server.process.pid}/fd")) < SERVER_FILES
        assert server.process.poll() is None
    finally:
        for sock in socks:
            sock.close()
        server.stop()
