"""Console streaming over HTTP from a real server with a pty-backed board."""

import fcntl
import os
import socket
import struct
import termios
import threading
import time

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


def open_stream(server, token, follow=True, rcvbuf=4096):
    """A raw client socket that asked for con-1's console, read nothing yet."""
    sock = socket.socket()
    # a small window, as a slow or stalled client over a real network has
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", server.http_port))
    query = "?follow=1" if follow else ""
    sock.sendall(
        f"GET /api/v1/boards/con-1/console{query} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def status_of(sock):
    """The status code of the answer on ``sock``."""
    sock.settimeout(30)
    head = b""
    while b"\r\n" not in head:
        part = sock.recv(1)
        assert part, head
        head += part
    return int(head.split()[1])


def waiting(sock):
    """Bytes the server sent that ``sock`` has not read (Linux SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]


def rss_mib(pid):
    """Resident memory of process ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as f:
        line = next(ln for ln in f if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_stalled_readers_of_a_long_log_keep_memory_bounded(lab_server, serial):
    """30 followers and 10 plain readers that never read, on a 16 MiB console
    log, keep the server under 150 MB, and its memory comes back after they
    close: the log is sent from disk as each client takes it."""
    master, device = serial
    admins = ("root", "r1", "r2", "r3")
    server = lab_server(boards=BOARDS.format(device=device), admins=admins)
    tokens = [server.token(user) for user in admins]
    server.request("POST", "/api/v1/boards/con-1/reserve", {}, tokens[0])
    chunk = bytes(range(256)) * 256
    for _ in range(256):  # 16 MiB
        os.write(master, chunk)
    log = os.path.join(server.dir, "console", "con-1.log")

    def logged():
        names = [log] + [f"{log}.{n}" for n in range(1, 5)]
        return sum(os.path.getsize(n) for n in names if os.path.exists(n))

    wait_for(lambda: logged() >= 16 * 2**20, what="16 MiB in the console log")
    pid = server.process.pid
    before, files = rss_mib(pid), len(os.listdir(f"/proc/{pid}/fd"))
    # 8 followers per user is the default limit; each of 4 admins uses up to 8
    streams = [open_stream(server, tokens[n % 4]) for n in range(30)]
    streams += [open_stream(server, tokens[0], follow=False) for _ in range(10)]
    try:
        wait_for(
            lambda: all(waiting(s) > 0 for s in streams),
            timeout=60,
            what="every stream to be sent some of the log",
        )
        during = max(rss_mib(pid) for _ in range(20) if not time.sleep(0.1))
        assert during < 150, (before, during)
    finally:
        for sock in streams:
            sock.close()

    wait_for(
        lambda: len(os.listdir(f"/proc/{pid}/fd")) <= files,
        timeout=60,
        what="the server to close the connections and log files",
    )
    assert rss_mib(pid) < before + 20, before
    assert server.process.poll() is None


@pytest.mark.parametrize(
    "settings, limit", [({}, 8), ({"console_max_followers": "2"}, 2)]
)
def test_followers_per_user_are_limited(lab_server, serial, settings, limit):
    """A user may follow consoles ``console_max_followers`` times at once
    (8 unless set): one more is refused with 409 until one of them ends;
    other users are not affected."""
    _, device = serial
    server = lab_server(boards=BOARDS.format(device=device), settings=settings)
    alice, root = server.token("alice"), server.token("root")
    server.request("POST", "/api/v1/boards/con-1/reserve", {}, alice)
    streams = [open_stream(server, alice) for _ in range(limit)]
    try:
        assert [status_of(s) for s in streams] == [200] * limit
        status, body = server.request(
            "GET", "/api/v1/boards/con-1/console?follow=1", token=alice
        )
        assert status == 409 and body["error"]["code"] == "unavailable"
        assert f"already follow {limit} consoles" in body["error"]["message"]
        other = open_stream(server, root)
        streams.append(other)
        assert status_of(other) == 200
        status, _ = server.request("GET", "/api/v1/boards/con-1/console", token=alice)
        assert status == 200
        streams.pop(0).close()

        def follow_again():
            sock = open_stream(server, alice)
            if status_of(sock) == 200:
                streams.append(sock)
                return True
            sock.close()
            return False

        wait_for(follow_again, what="a follower slot to come free")
    finally:
        for sock in streams:
            sock.close()
