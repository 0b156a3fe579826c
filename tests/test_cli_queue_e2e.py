"""``bitelab reserve --wait``, ``queue`` and ``watch`` against a real ``twistd``:
a board handed over on release, a wait that runs out, Ctrl-C, a server
restart in the middle of a wait, and what ``queue`` and ``watch`` print."""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from support.server import REPO, wait_for

pytestmark = pytest.mark.e2e

BOARDS = """
classes { zynq { arch = arm-armv7; } pine { arch = arm64; } }
boards [ { name = zynq-1; brdclass = zynq; options = [] },
         { name = zynq-2; brdclass = zynq; options = [] },
         { name = pine-1; brdclass = pine; options = [] } ]
"""
BITELAB = os.path.join(os.path.dirname(sys.executable), "bitelab")


class Running:
    """A ``bitelab`` process whose output lines are collected as they come."""

    def __init__(self, server, token, *argv):
        env = {
            "PATH": os.environ["PATH"],
            "HOME": "/nonexistent",
            "LANG": "C.UTF-8",
            "TZ": "UTC",
            "PYTHONPATH": REPO,
            "BITELAB_URL": server.url,
            "BITELAB_AUTH": token,
        }
        self.process = subprocess.Popen(
            [BITELAB, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out, self.err = [], []
        self.readers = [
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
            for pipe, lines in (
                (self.process.stdout, self.out),
                (self.process.stderr, self.err),
            )
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe, lines):
        for line in pipe:
            lines.append(line.rstrip("\n"))

    def saw(self, text, what=None):
        """Wait until a line of standard error contains ``text``."""
        wait_for(
            lambda: any(text in line for line in self.err),
            timeout=30,
            what=what or f"{text!r} on stderr",
        )

    def finish(self, timeout=60):
        """The exit status, once the process has ended."""
        status = self.process.wait(timeout)
        for reader in self.readers:
            reader.join(10)
        return status

    def stop(self):
        """Kill it if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
        self.finish()


@pytest.fixture
def lab(lab_server):
    """A server with two zynq boards, both held by alice, and a free pine
    board; ``(server, tokens by user, run(user, *argv))``."""
    server = lab_server(boards=BOARDS, settings={"queue_lease": "20"})
    tokens = {user: server.token(user) for user in ("alice", "bob", "carol", "root")}
    for name in ("zynq-1", "zynq-2"):
        path = f"/api/v1/boards/{name}/reserve"
        assert server.request("POST", path, {}, tokens["alice"])[0] == 200
    running = []

    def run(user, *argv):
        process = Running(server, tokens[user], *argv)
        running.append(process)
        return process

    yield server, tokens, run
    for process in running:
        process.stop()


def queue(server, token):
    """``GET /queue`` as the owner of ``token``."""
    return server.get("/api/v1/queue", token)


def release(server, token, name):
    """Release ``name``; its BOARD."""
    status, board = server.request("POST", f"/api/v1/boards/{name}/release", {}, token)
    assert status == 200, board
    return board


def test_wait_gets_the_board_another_user_releases(lab):
    """bob waits for the class, sees his place, and gets the board alice
    releases: exit 0 and the board on standard output."""
    server, tokens, run = lab
    bob = run("bob", "reserve", "--wait=2m", "zynq")
    bob.saw("waiting for zynq: position 1 (0 ahead)")
    assert queue(server, tokens["bob"])["queue"][0]["user"] == "bob"
    release(server, tokens["alice"], "zynq-2")
    assert bob.finish() == 0, bob.err
    assert bob.out[0].startswith("reserved zynq-2 (class zynq) until ")
    board = server.get("/api/v1/boards/zynq-2", tokens["bob"])
    assert (board["state"], board["holder"]) == ("reserved", "bob")


def test_wait_runs_out_with_409_and_exit_1(lab):
    """A wait that runs out says how long it waited, and exits 1."""
    server, tokens, run = lab
    bob = run("bob", "reserve", "--wait=2", "zynq")
    assert bob.finish() == 1
    assert re.fullmatch(
        r"bitelab: no board for zynq became free: waited \d+ s \(unavailable\)",
        bob.err[-1],
    )
    assert queue(server, tokens["root"])["total"] == 0


def test_ctrl_c_cancels_the_place(lab):
    """SIGINT while waiting: the CLI cancels its place (the audit log says
    cancelled, not gone), then ends as Ctrl-C ends a command."""
    server, tokens, run = lab
    bob = run("bob", "reserve", "--wait=2m", "zynq")
    bob.saw("position 1")
    waiter = queue(server, tokens["bob"])["queue"][0]["id"]
    bob.process.send_signal(signal.SIGINT)
    assert bob.finish() == -signal.SIGINT
    assert bob.err[-1] == (
        f"bitelab: stopped waiting for zynq; waiter {waiter} left the queue"
    )
    assert bob.out == []
    assert queue(server, tokens["root"])["total"] == 0
    events = server.get("/api/v1/events?user=bob", tokens["root"])["events"]
    assert [e["detail"] for e in events if e["action"] == "left"] == ["cancelled"]
    release(server, tokens["alice"], "zynq-1")
    assert server.get("/api/v1/boards/zynq-1", tokens["root"])["state"] == "free"


def test_wait_survives_a_server_restart_and_keeps_its_place(lab):
    """The server is killed and started again mid-wait: both waiting CLIs
    come back with their places, and the boards go to them in their order."""
    server, tokens, run = lab
    bob = run("bob", "reserve", "--wait=5m", "zynq")
    bob.saw("position 1 (0 ahead)")
    carol = run("carol", "reserve", "--wait=5m", "zynq")
    carol.saw("position 2 (1 ahead)")
    server.kill()
    bob.saw("trying again", "bob's client to notice")
    server.start()
    bob.saw("reached the lab again", "bob's client to come back")
    carol.saw("reached the lab again", "carol's client to come back")
    wait_for(
        lambda: all(e["connected"] for e in queue(server, tokens["root"])["queue"]),
        what="both places taken up again",
    )
    entries = queue(server, tokens["root"])["queue"]
    assert [e["user"] for e in entries] == ["bob", "carol"]
    release(server, tokens["alice"], "zynq-1")
    assert bob.finish() == 0, bob.err
    assert bob.out[0].startswith("reserved zynq-1")
    carol.saw("position 1 (0 ahead)")
    release(server, tokens["alice"], "zynq-2")
    assert carol.finish() == 0, carol.err
    assert carol.out[0].startswith("reserved zynq-2")


def test_queue_shows_and_cancels(lab):
    """``queue`` shows the user's own places in full and counts the others';
    an admin sees all; ``queue --cancel`` ends the owner's wait with 409."""
    server, tokens, run = lab
    bob = run("bob", "reserve", "--wait=2m", "zynq")
    bob.saw("position 1")
    waiter = queue(server, tokens["bob"])["queue"][0]["id"]
    mine = run("bob", "queue")
    assert mine.finish() == 0
    assert mine.out[0].split() == [
        "POSITION", "ID", "USER", "TARGET", "PRIORITY", "SINCE", "DEADLINE",
    ]  # fmt: skip
    assert mine.out[1].split()[:5] == ["1", str(waiter), "bob", "zynq", "0"]
    assert mine.out[1].split()[-2] == "in"
    others = run("carol", "queue")
    assert others.finish() == 0
    assert others.out == ["none of yours; 1 waiting in all"]
    admin = run("root", "--json", "queue")
    assert admin.finish() == 0
    document = json.loads("\n".join(admin.out))
    assert [e["id"] for e in document["queue"]] == [waiter]
    assert document["total"] == 1
    theirs = run("carol", "queue", "--cancel", str(waiter))
    assert theirs.finish() == 1
    cancel = run("bob", "queue", "--cancel", str(waiter))
    assert cancel.finish() == 0
    assert cancel.out == [f"waiter {waiter} cancelled"]
    assert bob.finish() == 1
    assert bob.err[-1] == "bitelab: the wait was cancelled by bob (unavailable)"


def test_watch_prints_the_users_events(lab):
    """``watch`` prints a line for each change of the user's reservations and
    places; ``watch --json`` one object a line; others' boards do not show."""
    server, tokens, run = lab
    text = run("bob", "watch", "--utc")
    lines = run("bob", "watch", "--json")

    def both_follow():
        # bob's own changes of pine-1 show once both streams are open
        server.request("POST", "/api/v1/boards/pine-1/reserve", {}, tokens["bob"])
        release(server, tokens["bob"], "pine-1")
        return any("pine-1" in line for line in text.out) and any(
            "pine-1" in line for line in lines.out
        )

    wait_for(both_follow, interval=0.2, what="both watches to follow the stream")
    text_start, json_start = len(text.out), len(lines.out)
    bob = run("bob", "reserve", "--wait=1m", "zynq")
    bob.saw("position 1")
    release(server, tokens["alice"], "zynq-1")
    assert bob.finish() == 0
    release(server, tokens["alice"], "zynq-2")
    release(server, tokens["bob"], "zynq-1")
    wait_for(
        lambda: any(" freed " in x and "zynq-1" in x for x in text.out[text_start:]),
        what="zynq-1 freed",
    )
    wait_for(
        lambda: any('"freed"' in x and "zynq-1" in x for x in lines.out[json_start:]),
        what="zynq-1 freed (json)",
    )
    shown = [line for line in text.out[text_start:] if "pine-1" not in line]
    kinds = [line.split()[3] for line in shown]
    assert kinds[:3] == ["queued", "position", "granted"], shown
    assert kinds[-3:] == ["reserved", "releasing", "freed"], shown
    assert shown[0].split()[2] == "UTC"
    assert "waits for zynq" in shown[0]
    assert "waiter" in shown[1] and "position 1 (0 ahead, 1 waiting)" in shown[1]
    assert "gets zynq-1" in shown[2]
    assert not any("zynq-2" in line for line in shown)
    documents = [
        json.loads(line)
        for line in lines.out[json_start:]
        if json.loads(line).get("board") != "pine-1"
    ]
    assert [d["kind"] for d in documents] == kinds
    assert all(d.get("holder") in ("bob", None) for d in documents)
    text.process.send_signal(signal.SIGINT)
    assert text.finish() == -signal.SIGINT
    assert text.err == []


def test_queue_loads_no_twisted(lab):
    """``bitelab queue`` only reads: it runs on the standard library's HTTP
    client and loads neither twisted nor treq."""
    server, tokens, _ = lab
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": REPO,
        "BITELAB_URL": server.url,
        "BITELAB_AUTH": tokens["bob"],
    }
    code = "import sys; from bitelab.client.cli import main; sys.exit(main(['queue']))"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "nobody is waiting\n"
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "bitelab.client.quick" in imported
    assert not {name for name in imported if name.split(".")[0] in ("twisted", "treq")}
