"""Console streaming over HTTP from a real server with a pty-backed board."""

import os
import socket
import threading

import pytest

from support.server import wait_for

pytestmark = pytest.mark.e2e

BOARDS = (
    "classes {{ z {{ arch = arm; }} }}\nboards [ {{ name = con-1; brdclass = z; "
    'options = [ {{ cls = serialconsole, val = "{device}" }} ] }} ]\n'
)


def test_console_log_is_for_holder_and_admins_only(lab_server, serial):
    """GET console: 403 for another user, the reservation's log for holder and admin."""
    master, device = serial
    server = lab_server(boards=BOARDS.format(device=device))
    alice, bob, root = (server.token(u) for u in ("alice", "bob", "root"))
    os.write(master, b"before the reservation\r\n")
    server.request("POST", "/api/v1/boards/con-1/reserve", {}, alice)
    wait_for(
        lambda: os.write(master, b"kernel: booting\r\n")
        and b"booting"
        in server.request("GET", "/api/v1/boards/con-1/console", token=alice)[1],
        what="console output in the log",
    )
    status, body = server.request("GET", "/api/v1/boards/con-1/console", token=bob)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, text = server.request("GET", "/api/v1/boards/con-1/console", token=root)
    assert status == 200 and b"booting" in text
    assert b"before the reservation" not in text
    assert text.startswith(b"=== bitelab: reserved by alice")
    log = os.path.join(server.dir, "console", "con-1.log")
    assert os.stat(log).st_mode & 0o777 == 0o600  # jail accounts are local users
    access = os.path.join(server.dir, "access.log")
    assert os.stat(access).st_mode & 0o777 == 0o600
    with open(access) as f:
        assert "/api/v1/boards/con-1/console" in f.read()


def test_slow_follower_is_dropped_and_fast_one_gets_everything(lab_server, serial):
    """A follower that never reads is disconnected once far behind; a reading one
    gets every byte the board printed, and the serial port is never held up."""
    master, device = serial
    server = lab_server(boards=BOARDS.format(device=device))
    token = server.token("alice")
    server.request("POST", "/api/v1/boards/con-1/reserve", {}, token)
    request = (
        f"GET /api/v1/boards/con-1/console?follow=1 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    slow = socket.create_connection(("127.0.0.1", server.http_port))
    # a small window, so the server's buffers fill as they would for a slow link
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(request)
    fast = server.follow_console("con-1", token)
    received = bytearray()

    def pump():
        while part := os.read(fast.stdout.fileno(), 65536):
            received.extend(part)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: os.write(master, b"sync\r\n") and b"sync" in bytes(received),
            what="fast follower attached",
        )
        chunk = bytes(range(256)) * 256  # 64 KiB, every byte value
        for _ in range(128):  # 8 MiB
            os.write(master, chunk)
        os.write(master, b"=done=")
        wait_for(lambda: b"=done=" in bytes(received), what="fast follower caught up")
        assert bytes(received).count(chunk) == 128
        wait_for(
            lambda: "behind; disconnecting it" in server.log(),
            what="the slow follower to be dropped",
        )
        assert fast.poll() is None  # the fast one is still following
        server.request("POST", "/api/v1/boards/con-1/release", {}, token)
        fast.wait(30)
    finally:
        slow.close()
        if fast.poll() is None:
            fast.kill()
            fast.wait()
    log = b""
    base = os.path.join(server.dir, "console", "con-1.log")
    for path in [f"{base}.{n}" for n in range(9, 0, -1)] + [base]:
        if os.path.exists(path):
            with open(path, "rb") as f:
                log += f.read()
    assert log.count(chunk) == 128  # rotated, and nothing lost
