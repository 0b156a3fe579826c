"""Three real ``twistd`` hosts on loopback sharing one PostgreSQL database."""

import concurrent.futures
import random
import stat

import pytest

from support.server import LabServer, wait_for

pytestmark = pytest.mark.e2e


def host_boards(host, script):
    return (
        f"setup_script = {script};\nclasses {{ c {{ arch = x; }} }}\nboards [ "
        + ", ".join(f"{{ name = {host}-{i}; brdclass = c; }}" for i in range(2))
        + " ]"
    )


@pytest.fixture
def three_hosts(tmp_path, postgres_server):
    """Hosts h1, h2 and h3 with two boards each and a setup script that logs
    which host ran it."""
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
    yield servers, log
    for server in servers:
        server.stop()


def test_clients_on_every_host_never_share_a_board(three_hosts):
    """Clients hitting different hosts race for one class: no board is ever
    held twice, and each board's setup and release run on its own host."""
    servers, log = three_hosts
    tokens = [servers[0].token(f"u{i}") for i in range(9)]
    rng = random.Random(3)

    def client(i):
        held = []
        for _ in range(6):
            server = servers[rng.randrange(3)]
            status, board = server.request(
                "POST", "/api/v1/boards/c/reserve", {}, tokens[i]
            )
            if status != 200:
                continue
            held.append((board["name"], board["reservation_id"]))
            other = servers[rng.randrange(3)]
            status, _ = other.request(
                "POST", f"/api/v1/boards/{board['name']}/release", {}, tokens[i]
            )
            assert status == 200
        return held

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        grants = [g for held in pool.map(client, range(9)) for g in held]
    assert grants
    root = servers[1].token("root")
    events = servers[1].get("/api/v1/events?limit=1000", root)["events"]
    open_by_board = {}
    for event in reversed(events):
        board, rid = event["board"], event["reservation"]
        if event["action"] == "reserving":
            assert open_by_board.get(board) is None, (board, open_by_board[board], rid)
            open_by_board[board] = rid
        elif event["action"] in ("freed", "maintenance") and rid is not None:
            assert open_by_board.get(board) == rid
            open_by_board[board] = None
    assert len(set(grants)) == len(grants)
    for line in log.read_text().splitlines():
        host, _action, board = line.split()
        assert board.startswith(host + "-"), line


def test_a_host_killed_mid_release_finishes_it_when_back(three_hosts, tmp_path):
    """A host killed while releasing one of its boards leaves the board
    releasing and marked down; back, it finishes the release."""
    servers, _ = three_hosts
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
