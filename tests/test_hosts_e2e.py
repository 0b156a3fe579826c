"""Three real ``twistd`` hosts on loopback sharing one PostgreSQL database."""

import concurrent.futures
import json
import os
import random
import select
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time

import psycopg
import pytest
import websocket

from support.allocation import check_clients, check_database, history
from support.cli import Client
from support.cli import boards as fake_board
from support.server import LabServer, wait_for
from support.web import sign_in

pytestmark = pytest.mark.e2e


def host_boards(host, script, count=4):
    return (
        f"setup_script = {script};\nclasses {{ c {{ arch = x; }} }}\nboards [ "
        + ", ".join(f"{{ name = {host}-{i}; brdclass = c; }}" for i in range(count))
        + " ]"
    )


@pytest.fixture
def three_hosts(tmp_path, postgres_server):
    """Hosts h1, h2 and h3 with four boards each and a setup script that logs
    which host ran it; ``(servers, the script's log, the database's URL)``."""
    url = postgres_server.database()
    log = tmp_path / "calls.log"
    script = tmp_path / "setup.sh"
    script.write_text(f'#!/bin/sh\necho "$BITELAB_HOST $1 $2" >> {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    servers = []
    for name in ("h1", "h2", "h3"):
        server = LabServer(
            tmp_path / name,
            boards=host_boards(name, script),
            settings={"db_url": url, "host_name": name, "host_timeout": "3"},
        )
        servers.append(server.start())
    yield servers, log, url
    for server in servers:
        server.stop()


#: clients racing for the 12 boards, and reserve+release cycles each
CLIENTS, CYCLES = 16, 128


def test_clients_on_every_host_never_share_a_board(three_hosts):
    """Clients hitting different hosts race for one class, waiting in the
    lab's one queue, over two thousand reserves: each gets its board, none is
    ever held twice (by the database's reservations and audit log, and by
    the clients' own clocks), and each board's setup and release run on its
    own host."""
    servers, log, url = three_hosts
    tokens = [servers[0].token(f"u{i}") for i in range(CLIENTS)]

    def client(i):
        rng, held = random.Random(i), []
        for _ in range(CYCLES):
            asked = time.monotonic()
            status, board = servers[rng.randrange(3)].request(
                "POST", "/api/v1/boards/c/reserve", {"wait": 120}, tokens[i]
            )
            assert status == 200, board
            answered = time.monotonic()
            name = board["name"]
            status, _ = servers[rng.randrange(3)].request(
                "POST", f"/api/v1/boards/{name}/release", {}, tokens[i]
            )
            assert status == 200
            held.append((name, board["reservation_id"], asked, answered, answered))
        return held

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        records = [r for held in pool.map(client, range(CLIENTS)) for r in held]
    assert len(records) == CLIENTS * CYCLES
    with psycopg.connect(url) as conn:
        reservations, events = history(conn)
    assert check_database(reservations, events) == []
    assert check_clients(records) == []
    assert len(reservations) == len(records)
    for line in log.read_text().splitlines():
        host, _action, board = line.split()
        assert board.startswith(host + "-"), line


def test_a_host_reloading_its_board_file_changes_only_its_boards(three_hosts):
    """SIGHUP on h2 with a board added: every host lists it as h2's, and the
    other hosts' boards are untouched."""
    servers, _log, _url = three_hosts
    h1, h2, _h3 = servers
    root = h1.token("root")
    before = {b["name"]: b["host"] for b in h1.get("/api/v1/boards", root)["boards"]}
    h2.write_boards(
        host_boards("h2", "/bin/true").replace(
            " ]", ", { name = h2-new; brdclass = c; } ]"
        )
    )
    h2.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: "h2-new"
        in {b["name"] for b in h1.get("/api/v1/boards", root)["boards"]},
        what="h1 listing h2's new board",
    )
    after = {b["name"]: b["host"] for b in h3_boards(servers, root)}
    assert after == {**before, "h2-new": "h2"}


def h3_boards(servers, token):
    """The boards the third host lists."""
    return servers[2].get("/api/v1/boards", token)["boards"]


def test_a_host_killed_mid_release_finishes_it_when_back(three_hosts, tmp_path):
    """A host killed while releasing one of its boards leaves the board
    releasing and marked down; back, it finishes the release."""
    servers, _log, _url = three_hosts
    h1, h2, _h3 = servers
    alice, root = h1.token("alice"), h1.token("root")
    status, board = h1.request("POST", "/api/v1/boards/h2-0/reserve", {}, alice)
    assert status == 200 and board["host"] == "h2"
    h2.kill()
    status, body = h1.request("POST", "/api/v1/boards/h2-0/release", {}, alice)
    assert status == 200 and body["state"] == "releasing"
    wait_for(
        lambda: h1.get("/api/v1/boards/h2-0", root).get("host_down"),
        what="h2 marked down",
    )
    assert h1.get("/api/v1/boards/h2-0", root)["state"] == "releasing"
    h2.start()
    wait_for(
        lambda: h1.get("/api/v1/boards/h2-0", root)["state"] == "free",
        what="h2 finishing the release",
    )
    assert "host_down" not in h1.get("/api/v1/boards/h2-0", root)


@pytest.fixture
def board_on_h2(tmp_path, postgres_server, fake_conf):
    """Host h1 with a plain board and host h2 with con-1, the fake board (a
    pty console and command power), both knowing alice's and bob's keys."""
    url = postgres_server.database()
    servers = []
    for name, boards in (
        ("h1", host_boards("h1", "/bin/true")),
        ("h2", fake_board(fake_conf)),
    ):
        server = LabServer(
            tmp_path / name,
            boards=boards,
            settings={"db_url": url, "host_name": name, "host_timeout": "3"},
        )
        with open(server.env_path, "a") as f:
            f.write(f"host_url={server.url}\n")
        servers.append(server)
    h1, h2 = servers
    for user in ("alice", "bob"):
        # the hosts of a lab share their users' keys
        key = h1.add_user(user)
        shutil.copy(key + ".pub", os.path.join(h2.keys_dir, f"{user}.pub"))
    for server in servers:
        server.start()
    yield h1, h2
    for server in servers:
        server.stop()


def test_power_and_console_through_a_host_that_does_not_own_the_board(
    board_on_h2, tmp_path
):
    """A user pointed at h1 only uses con-1 of h2 as if it were h1's: power
    and console logs are forwarded to h2, and ``bitelab console`` reaches
    h2's SSH service; another user is refused by h2 through h1."""
    h1, _h2 = board_on_h2
    token = h1.token("alice")
    alice = Client(tmp_path / "alice", {"BITELAB_URL": h1.url, "BITELAB_AUTH": token})
    reserved = alice.run("--json", "reserve", "con-1")
    assert reserved.returncode == 0, reserved.stderr
    rid = json.loads(reserved.stdout)["reservation_id"]
    on = alice.run("set", "power=on", "con-1")
    assert on.returncode == 0, on.stderr
    wait_for(
        lambda: b"type help"
        in h1.request("GET", "/api/v1/boards/con-1/console", token=token)[1],
        what="the board's boot seen through h1",
    )
    follow = socket.create_connection(("127.0.0.1", h1.http_port), timeout=30)
    follow.sendall(
        b"GET /api/v1/boards/con-1/console?follow=1 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    result = alice.run(
        "console", "-i", h1.key("alice"), "con-1",
        "--send", r"echo relayed-42\r", "--expect", "relayed-42",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "relayed-42" in result.stdout
    assert "recorded the SSH host key of lab bitelab (host h2)" in result.stderr
    known = (alice.home / ".config" / "bitelab" / "known_hosts").read_text()
    assert known.startswith("bitelab.h2 ssh-ed25519 ")
    streamed = b""
    while b"relayed-42" not in streamed:
        chunk = follow.recv(65536)
        assert chunk, streamed
        streamed += chunk
    follow.close()
    bob = h1.token("bob")
    status, body = h1.request(
        "POST", "/api/v1/boards/con-1/attrs", {"power": "off"}, bob
    )
    assert status == 403 and body["error"]["code"] == "forbidden"
    released = alice.run("release", "con-1")
    assert released.returncode == 0, released.stderr
    status, past = h1.request(
        "GET", f"/api/v1/boards/con-1/console?reservation={rid}", token=token
    )
    assert status == 200 and b"relayed-42" in past
    root = h1.token("root")
    audit = h1.get("/api/v1/events?board=con-1", root)["events"]
    assert ("power", "alice", "on") in [
        (e["action"], e["user"], e["detail"]) for e in audit
    ]


def received(socket, until, seconds=30):
    """The messages of ``socket`` up to the first for which ``until`` holds."""
    deadline, got = time.monotonic() + seconds, []
    while not got or not until(got[-1]):
        assert time.monotonic() < deadline, got
        try:
            got.append(socket.recv())
        except websocket.WebSocketTimeoutException:
            continue
    return got


def test_browser_console_through_a_host_that_does_not_own_the_board(board_on_h2):
    """A browser signed in to h1 opens the console of h2's con-1 at h1: h1
    relays it from h2 both ways, and h2's cut at the release made through h1
    reaches the browser; another user is refused by h2 through h1."""
    h1, _h2 = board_on_h2
    token = h1.token("alice")
    status, _ = h1.request("POST", "/api/v1/boards/con-1/reserve", {}, token)
    assert status == 200
    status, _ = h1.request("POST", "/api/v1/boards/con-1/attrs", {"power": "on"}, token)
    assert status == 200
    url = h1.url.replace("http:", "ws:") + "/ws/console/con-1"
    socket = websocket.create_connection(
        url, header=[f"Cookie: {sign_in(h1, token, None)}"], origin=h1.url, timeout=2
    )
    try:
        assert json.loads(socket.recv())["type"] == "attached"
        first = received(socket, lambda m: isinstance(m, bytes))
        assert first[-1].startswith(b"=== bitelab: reserved by alice")
        for key in b"version\r":
            socket.send_binary(bytes([key]))
        seen = []
        received(
            socket,
            lambda m: seen.append(m) or b"fakeboard 1.0 (con-1)" in b"".join(seen),
        )
        status, _ = h1.request("POST", "/api/v1/boards/con-1/release", {}, token)
        assert status == 200
        closing = received(socket, lambda m: isinstance(m, str))
        assert json.loads(closing[-1])["type"] == "closed"
    finally:
        socket.close()
    h1.request("POST", "/api/v1/boards/con-1/reserve", {}, token)
    bob = h1.token("bob")
    refused = websocket.create_connection(
        url, header=[f"Cookie: {sign_in(h1, bob, None)}"], origin=h1.url, timeout=30
    )
    try:
        error = json.loads(refused.recv())
        assert error["type"] == "error" and error["code"] == "forbidden"
    finally:
        refused.close()


def read_until(stream, wanted, seconds=30):
    """What ``stream`` gives up to and including ``wanted``."""
    deadline, seen = time.monotonic() + seconds, b""
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, seen
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, seen
            seen += chunk
    return seen


def test_ssh_console_login_at_a_host_that_does_not_own_the_board(board_on_h2):
    """``ssh -l con-1`` straight to h1's SSH port reaches h2's board: h1
    relays the console both ways, and the release made through h1 ends the
    session with its reason."""
    h1, _h2 = board_on_h2
    token = h1.token("alice")
    assert h1.request("POST", "/api/v1/boards/con-1/reserve", {}, token)[0] == 200
    assert (
        h1.request("POST", "/api/v1/boards/con-1/attrs", {"power": "on"}, token)[0]
        == 200
    )
    ssh = h1.ssh_console("alice", "con-1", stdin=subprocess.PIPE)
    try:
        ssh.stdin.write(b"version\r")
        ssh.stdin.flush()
        read_until(ssh.stdout, b"fakeboard 1.0 (con-1)")
        assert h1.request("POST", "/api/v1/boards/con-1/release", {}, token)[0] == 200
        assert b"reservation of con-1 ended" in read_until(ssh.stdout, b"ended")
        assert ssh.wait(timeout=30) == 0
    finally:
        ssh.kill()
        ssh.wait()
    bob = h1.ssh_console("bob", "con-1")
    _, err = bob.communicate(timeout=30)
    assert bob.returncode != 0 and b"you do not hold board con-1" in err, err


def test_a_host_added_to_a_running_lab_serves_at_once(tmp_path, postgres_server):
    """Clients race through h1 and h2 while h3 joins the lab: h3's boards
    are handed out through the other hosts and set up by h3, h3 answers the
    whole lab, and no board is ever held twice."""
    url = postgres_server.database()
    log = tmp_path / "calls.log"
    script = tmp_path / "setup.sh"
    script.write_text(f'#!/bin/sh\necho "$BITELAB_HOST $1 $2" >> {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    servers = [
        LabServer(
            tmp_path / name,
            boards=host_boards(name, script, 2),
            settings={"db_url": url, "host_name": name, "host_timeout": "3"},
        )
        for name in ("h1", "h2", "h3")
    ]
    h1, h2, h3 = servers
    try:
        h1.start()
        h2.start()
        tokens = [h1.token(f"u{i}") for i in range(6)]
        joined = threading.Event()

        def client(i):
            rng, held = random.Random(i), []
            for cycle in range(40):
                if cycle == 10 and i == 0:
                    h3.start()
                    joined.set()
                entry = [h1, h2, h3] if joined.is_set() else [h1, h2]
                asked = time.monotonic()
                status, board = rng.choice(entry).request(
                    "POST", "/api/v1/boards/c/reserve", {"wait": 120}, tokens[i]
                )
                assert status == 200, board
                answered = time.monotonic()
                status, _ = rng.choice(entry).request(
                    "POST", f"/api/v1/boards/{board['name']}/release", {}, tokens[i]
                )
                assert status == 200
                held.append(
                    (board["name"], board["reservation_id"], asked, answered, answered)
                )
            return held

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            records = [r for held in pool.map(client, range(6)) for r in held]
        assert {name for name, *_ in records} >= {"h3-0", "h3-1"}
        with psycopg.connect(url) as conn:
            assert check_database(*history(conn)) == []
        assert check_clients(records) == []
        for line in log.read_text().splitlines():
            host, _action, board = line.split()
            assert board.startswith(host + "-"), line
        root = h3.token("root")
        listed = {
            b["name"]: b["host"] for b in h3.get("/api/v1/boards", root)["boards"]
        }
        assert listed == {f"{h}-{i}": h for h in ("h1", "h2", "h3") for i in range(2)}
    finally:
        for server in servers:
            server.stop()
