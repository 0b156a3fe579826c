"""The waiting queue against a real ``twistd``: fair hand-over to many open
requests, clients that leave, a restart mid-queue, the event stream, and
expiry notices over SSH."""

import http.client
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from support.pty import PtyBoard
from support.server import wait_for

pytestmark = pytest.mark.e2e

BOARDS = """
classes { c { arch = x; } }
boards [ { name = c1; brdclass = c; }, { name = c2; brdclass = c; },
         { name = c3; brdclass = c; } ]
"""


def post(server, token, path, body, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=timeout)
    conn.request(
        "POST",
        path,
        json.dumps(body),
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def queue(server, token):
    return server.get("/api/v1/queue", token)


def test_twenty_jobs_three_boards_in_fair_order(lab_server):
    """20 clients wait for a class of 3 held boards; as boards are released
    one by one each goes to exactly one waiter, in arrival order."""
    server = lab_server(boards=BOARDS)
    root = server.token("root")
    for name in ("c1", "c2", "c3"):
        assert (
            server.request("POST", f"/api/v1/boards/{name}/reserve", {}, root)[0] == 200
        )
    tokens = [server.token(f"job{i}") for i in range(20)]
    results = [None] * 20
    threads = []
    for i, token in enumerate(tokens):

        def run(i=i, token=token):
            results[i] = post(server, token, "/api/v1/boards/c/reserve", {"wait": 120})

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
        wait_for(lambda i=i: queue(server, root)["total"] == i + 1, what="queued")
    order = []
    holders = {"c1": root, "c2": root, "c3": root}
    for _ in range(20):
        name = sorted(holders)[len(order) % 3]
        status, _ = server.request(
            "POST", f"/api/v1/boards/{name}/release", {"force": True}, root
        )
        assert status == 200
        done = wait_for(
            lambda: [i for i, r in enumerate(results) if r and i not in order],
            what="a waiter served",
        )
        assert len(done) == 1
        order.append(done[0])
        status, board = results[done[0]]
        assert status == 200 and board["name"] == name
        assert board["holder"] == f"job{done[0]}"
    assert order == list(range(20))
    for thread in threads:
        thread.join(10)


def test_client_that_disconnects_leaves_the_queue(lab_server):
    """A waiting client that closes its connection leaves at once."""
    server = lab_server(boards=BOARDS)
    root, bob = server.token("root"), server.token("bob")
    for name in ("c1", "c2", "c3"):
        server.request("POST", f"/api/v1/boards/{name}/reserve", {}, root)
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    body = b'{"wait": 100}'
    sock.sendall(
        b"POST /api/v1/boards/c/reserve HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + bob.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    wait_for(lambda: queue(server, root)["total"] == 1, what="queued")
    sock.close()
    wait_for(lambda: queue(server, root)["total"] == 0, what="waiter gone")
    server.request("POST", "/api/v1/boards/c1/release", {"force": True}, root)
    assert server.get("/api/v1/boards/c1", root)["state"] == "free"


def test_restart_mid_queue_keeps_places_for_returning_clients(lab_server):
    """The server restarts with waiters queued: a client that comes back with
    its waiter id within queue_lease keeps its place and gets the board; a
    client that does not leaves the queue."""
    server = lab_server(boards=BOARDS, settings={"queue_lease": "3"})
    root = server.token("root")
    alice, bob = server.token("alice"), server.token("bob")
    for name in ("c1", "c2", "c3"):
        server.request("POST", f"/api/v1/boards/{name}/reserve", {}, root)
    for token in (alice, bob):
        threading.Thread(
            target=lambda t=token: _quiet(
                post, server, t, "/api/v1/boards/c/reserve", {"wait": 300}
            ),
            daemon=True,
        ).start()
        wait_for(lambda t=token: queue(server, t)["queue"], what="queued")
    bob_place = queue(server, bob)["queue"][0]["id"]
    server.kill()
    server.start()
    entries = queue(server, root)["queue"]
    assert [e["user"] for e in entries] == ["alice", "bob"]
    assert not any(e["connected"] for e in entries)
    result = {}
    waiter = threading.Thread(
        target=lambda: result.update(
            r=post(
                server,
                bob,
                "/api/v1/boards/c/reserve",
                {"wait": 300, "waiter": bob_place},
            )
        )
    )
    waiter.start()
    wait_for(lambda: queue(server, root)["queue"][-1]["connected"], what="bob back")
    server.request("POST", "/api/v1/boards/c2/release", {"force": True}, root)
    waiter.join(30)
    assert result["r"][0] == 200 and result["r"][1]["holder"] == "bob"
    wait_for(
        lambda: queue(server, root)["total"] == 0, timeout=30, what="alice's lease"
    )


def _quiet(fn, *args):
    try:
        fn(*args)
    except OSError:
        pass


def test_event_stream_tells_a_waiter_its_place_and_its_board(lab_server):
    """A user's event stream carries their queue place and the hand-over,
    and nothing about other users' boards."""
    server = lab_server(boards=BOARDS)
    root, bob, carol = server.token("root"), server.token("bob"), server.token("carol")
    for name in ("c1", "c2"):
        server.request("POST", f"/api/v1/boards/{name}/reserve", {}, root)
    server.request("POST", "/api/v1/boards/c3/reserve", {}, carol)
    stream = subprocess.Popen(
        [
            "curl",
            "-sN",
            "-H",
            f"Authorization: Bearer {bob}",
            f"{server.url}/api/v1/events/stream",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        time.sleep(0.5)
        thread = threading.Thread(
            target=post, args=(server, bob, "/api/v1/boards/c/reserve", {"wait": 60})
        )
        thread.start()
        wait_for(lambda: queue(server, root)["total"] == 1, what="queued")
        server.request("POST", "/api/v1/boards/c3/release", {}, carol)
        thread.join(30)
        time.sleep(0.5)
    finally:
        stream.terminate()
        out = stream.communicate(timeout=10)[0].decode()
    events = [
        (block.split("\n")[0][len("event: ") :], json.loads(block.split("\n")[1][6:]))
        for block in out.split("\n\n")
        if block.startswith("event: ")
    ]
    kinds = [kind for kind, _ in events]
    assert "queued" in kinds and "position" in kinds and "granted" in kinds
    position = next(data for kind, data in events if kind == "position")
    assert position["position"] == 1 and position["ahead"] == 0
    granted = next(data for kind, data in events if kind == "granted")
    assert granted["board"] == "c3" and granted["holder"] == "bob"
    assert all(data.get("holder") in ("bob", None) for _, data in events)


def test_expiry_notice_reaches_the_console_over_ssh(lab_server):
    """An SSH console session of the holder is told before the end."""
    pty = PtyBoard()
    server = lab_server(
        boards="classes { c { arch = x; } }\nboards [ { name = con-1; brdclass = c; "
        f"options = [ {{ cls = serialconsole, val = {pty.path} }} ] }} ]",
        users=("alice",),
        settings={"expiry_notices": "3"},
    )
    alice = server.token("alice")
    status, _ = server.request(
        "POST", "/api/v1/boards/con-1/reserve", {"timeout": 6}, alice
    )
    assert status == 200
    ssh = server.ssh_console("alice", "con-1", stdin=subprocess.PIPE)
    # stdin stays open: end of input would end the session at once
    killer = threading.Timer(30, ssh.kill)
    killer.start()
    try:
        out = ssh.stdout.read()
    finally:
        killer.cancel()
        ssh.stdin.close()
        ssh.wait(10)
        os.close(pty.master)
    assert b"ends in about 1 min" in out
    assert b"reservation of con-1 ended" in out
