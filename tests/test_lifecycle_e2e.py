"""The reservation lifecycle against a real ``twistd``: races, kill -9, consoles,
stray script children, a locked database and a full file system."""

import concurrent.futures
import os
import random
import sqlite3
import stat
import subprocess
import threading
import time
import uuid

import pytest

from support.pty import PtyBoard
from support.server import wait_for

pytestmark = pytest.mark.e2e

#: a setup script that logs each call's start and end with the reservation
#: id, and takes a while, so that kills land inside it
SLOW_SCRIPT = """#!/bin/sh
echo "start $1 $2 $BITELAB_RESERVATION $$" >> {log}
sleep {pause}
echo "end $1 $2 $BITELAB_RESERVATION $$" >> {log}
[ "$1" = reserve ] && echo "ip=10.0.0.$BITELAB_RESERVATION"
exit 0
"""


def write_script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def boards_with_script(script, count=4, extra=""):
    boards = ", ".join(
        f"{{ name = s{i}; brdclass = c; {extra} }}" for i in range(1, count + 1)
    )
    return f"setup_script = {script};\nclasses {{ c {{ arch = x; }} }}\nboards [ {boards} ]"


def test_two_simultaneous_releases_run_the_release_script_once(lab_server, tmp_path):
    """Two releases of one board sent at the same instant: one 200, one 409,
    and the release script ran exactly once."""
    log = tmp_path / "calls.log"
    script = write_script(tmp_path / "setup.sh", SLOW_SCRIPT.format(log=log, pause=0.5))
    server = lab_server(boards=boards_with_script(script, 1))
    token = server.token("alice")
    assert server.request("POST", "/api/v1/boards/s1/reserve", {}, token)[0] == 200
    barrier = threading.Barrier(2)

    def release():
        barrier.wait()
        return server.request("POST", "/api/v1/boards/s1/release", {}, token)[0]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(lambda _: release(), range(2)))
    assert statuses == [200, 409]
    lines = log.read_text().splitlines()
    assert sum(1 for ln in lines if ln.startswith("start release")) == 1


def check_storm_log(lines):
    """No two scripts overlap on a board; every reservation whose reserve
    started had a release end after it (possibly re-run after a kill)."""
    running = {}
    reserved, released = set(), set()
    for line in lines:
        word, action, board, rid, _pid = line.split()
        if word == "start":
            other = running.get(board)
            # a kill -9 leaves the killed script's "start" without an "end";
            # recovery's release of the same reservation may follow it
            if other is not None:
                assert other[1] == rid and action == "release", (board, other, line)
            running[board] = (action, rid)
            if action == "reserve":
                reserved.add(rid)
        else:
            running.pop(board, None)
            if action == "release":
                released.add(rid)
    return reserved, released


def test_kill_storm_leaves_no_half_done_board(lab_server, tmp_path):
    """Concurrent clients reserve and release while the server is killed with
    SIGKILL at random moments, inside setup scripts.  After the last restart
    the lab settles: no board between states, every started setup released,
    no overlap of scripts on a board, and no board ever given to two holders
    (client-side records)."""
    log = tmp_path / "calls.log"
    script = write_script(tmp_path / "setup.sh", SLOW_SCRIPT.format(log=log, pause=0.3))
    server = lab_server(boards=boards_with_script(script, 4))
    tokens = {u: server.token(u) for u in ("u1", "u2", "u3", "u4", "root")}
    rng = random.Random(7)
    held_by = {}
    overlap = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(user):
        while not stop.is_set():
            try:
                status, board = server.request(
                    "POST", "/api/v1/boards/c/reserve", {}, tokens[user]
                )
            except OSError:
                time.sleep(0.05)
                continue
            if status != 200:
                time.sleep(0.05)
                continue
            name, rid = board["name"], board["reservation_id"]
            with lock:
                if held_by.get(name) not in (None, rid):
                    other = held_by[name]
                    overlap.append((name, other, rid))
                held_by[name] = rid
            time.sleep(rng.random() * 0.2)
            try:
                server.request(
                    "POST", f"/api/v1/boards/{name}/release", {}, tokens[user]
                )
            except OSError:
                pass
            with lock:
                if held_by.get(name) == rid:
                    del held_by[name]

    threads = [
        threading.Thread(target=client, args=(u,)) for u in ("u1", "u2", "u3", "u4")
    ]
    for t in threads:
        t.start()
    try:
        for _ in range(6):
            time.sleep(0.4 + rng.random() * 0.8)
            server.kill()
            with lock:
                # a held board may be released by recovery after a crash
                held_by.clear()
            server.start()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    root = tokens["root"]

    def settled():
        boards = server.get("/api/v1/boards", root)["boards"]
        return all(b["state"] in ("free", "reserved") for b in boards) and boards

    wait_for(settled, 60, what="every board settled")
    for board in server.get("/api/v1/boards", root)["boards"]:
        if board["state"] == "reserved":
            server.request(
                "POST", f"/api/v1/boards/{board['name']}/release", {"force": True}, root
            )
    boards = server.get("/api/v1/boards", root)["boards"]
    assert {b["state"] for b in boards} == {"free"}
    assert overlap == []
    reserved, released = check_storm_log(log.read_text().splitlines())
    assert reserved and reserved <= released


def test_console_session_opened_during_a_release_sees_nothing_of_the_next_holder(
    lab_server, tmp_path
):
    """Followers and SSH sessions that try to attach while a release runs
    are refused or cut; the next holder's output never reaches them."""
    pty = PtyBoard()
    log = tmp_path / "calls.log"
    script = write_script(tmp_path / "setup.sh", SLOW_SCRIPT.format(log=log, pause=1))
    server = lab_server(
        boards=f"setup_script = {script};\nclasses {{ c {{ arch = x; }} }}\n"
        f"boards [ {{ name = con-1; brdclass = c; options = [ "
        f"{{ cls = serialconsole, val = {pty.path} }} ] }} ]",
        users=("alice",),
    )
    alice, bob = server.token("alice"), server.token("bob")
    assert server.request("POST", "/api/v1/boards/con-1/reserve", {}, alice)[0] == 200
    wait_for(
        lambda: server.get("/api/v1/boards/con-1", alice)["attrs"]["console_connected"],
        what="console open",
    )
    before = server.follow_console("con-1", alice)
    release = threading.Thread(
        target=server.request,
        args=("POST", "/api/v1/boards/con-1/release", {}, alice),
    )
    release.start()
    wait_for(
        lambda: server.get("/api/v1/boards/con-1", alice)["state"] == "releasing",
        what="release under way",
    )
    during = server.follow_console("con-1", alice)
    ssh = server.ssh_console("alice", "con-1", stdin=subprocess.DEVNULL)
    release.join(30)
    assert server.request("POST", "/api/v1/boards/con-1/reserve", {}, bob)[0] == 200
    secret = f"bob-secret-{uuid.uuid4().hex}".encode()
    for _ in range(20):
        pty.print(secret + b"\n")
        pty.flush()
        time.sleep(0.05)
    for proc in (before, during, ssh):
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert secret not in out
    assert during.returncode == 0 and ssh.returncode != 0
    os.close(pty.master)


def test_script_with_a_background_child_is_cut_at_the_time_out(lab_server, tmp_path):
    """A reserve script that leaves a child holding its output open is cut at
    setup_script_timeout: the reserve answers, the child is killed, and the
    board can be reserved again."""
    pidfile = tmp_path / "child.pid"
    script = write_script(
        tmp_path / "setup.sh",
        f'#!/bin/sh\n[ "$1" = release ] && exit 0\n'
        f"sleep 300 &\necho $! > {pidfile}\nexit 0\n",
    )
    server = lab_server(
        boards=boards_with_script(script, 1), settings={"setup_script_timeout": "2"}
    )
    token = server.token("alice")
    started = time.monotonic()
    status, body = server.request("POST", "/api/v1/boards/s1/reserve", {}, token)
    assert status == 502 and "kept its output open" in body["error"]["message"]
    assert time.monotonic() - started < 20
    child = int(pidfile.read_text())
    wait_for(lambda: not os.path.exists(f"/proc/{child}"), what="child killed")
    assert server.get("/api/v1/boards/s1", token)["state"] == "free"


def test_locked_database_gives_storage_error_and_recovers(lab_server):
    """While another process holds the database's write lock, writes answer
    503 ``storage`` after db_busy_timeout and change nothing; reads keep
    working; once the lock goes, service resumes."""
    server = lab_server(settings={"db_busy_timeout": "0.5"})
    token = server.token("alice")
    holder = sqlite3.connect(
        os.path.join(server.dir, "bitelab.sqlite"), isolation_level=None
    )
    holder.execute("BEGIN IMMEDIATE")
    try:
        status, body = server.request(
            "POST", "/api/v1/boards/zynq-1/reserve", {}, token
        )
        assert status == 503 and body["error"]["code"] == "storage"
        assert "busy" in body["error"]["message"]
        board = server.get("/api/v1/boards/zynq-1", token)
        assert board["state"] == "free"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    status, board = server.request("POST", "/api/v1/boards/zynq-1/reserve", {}, token)
    assert status == 200 and board["holder"] == "alice"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_file_system_gives_storage_error_and_recovers(lab_server, tmp_path):
    """On a full file system writes answer 503 ``storage`` with nothing
    changed, reads keep working, and service resumes when space returns."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True
    )
    try:
        server = lab_server(settings={"db_file": str(mount / "lab.sqlite")})
        token = server.token("alice")
        filler = mount / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        statuses = []
        for _ in range(40):
            status, body = server.request(
                "POST", "/api/v1/boards/zynq-1/reserve", {}, token
            )
            statuses.append(status)
            if status == 503:
                break
            server.request("POST", "/api/v1/boards/zynq-1/release", {}, token)
        assert statuses[-1] == 503 and body["error"]["code"] == "storage"
        assert server.get("/api/v1/boards/zynq-1", token)["state"] == "free"
        filler.unlink()
        status, board = server.request(
            "POST", "/api/v1/boards/zynq-1/reserve", {}, token
        )
        assert status == 200 and board["holder"] == "alice"
        server.stop()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_database_replaced_under_the_server_refuses_writes(lab_server):
    """A database file deleted or replaced while the server runs is noticed:
    writes answer 503 ``storage`` saying so, instead of being lost."""
    server = lab_server()
    token = server.token("alice")
    path = os.path.join(server.dir, "bitelab.sqlite")
    os.rename(path, path + ".old")
    sqlite3.connect(path).close()
    status, body = server.request("POST", "/api/v1/boards/zynq-1/reserve", {}, token)
    assert status == 503 and "removed or replaced" in body["error"]["message"]


def test_past_reservation_console_log_over_http(lab_server):
    """GET console?reservation=ID gives a holder the output of an earlier
    reservation of theirs, and nothing of the next holder's; others get 404."""
    pty = PtyBoard()
    server = lab_server(
        boards="classes { c { arch = x; } }\nboards [ { name = con-1; brdclass = c; "
        f"options = [ {{ cls = serialconsole, val = {pty.path} }} ] }} ]",
    )
    alice, bob = server.token("alice"), server.token("bob")
    status, board = server.request("POST", "/api/v1/boards/con-1/reserve", {}, alice)
    rid = board["reservation_id"]
    wait_for(
        lambda: server.get("/api/v1/boards/con-1", alice)["attrs"]["console_connected"],
        what="console open",
    )
    pty.print(b"alice-output\n")
    wait_for(
        lambda: b"alice-output"
        in server.request("GET", "/api/v1/boards/con-1/console", token=alice)[1],
        what="output logged",
    )
    server.request("POST", "/api/v1/boards/con-1/release", {}, alice)
    server.request("POST", "/api/v1/boards/con-1/reserve", {}, bob)
    pty.print(b"bob-output\n")
    wait_for(
        lambda: b"bob-output"
        in server.request("GET", "/api/v1/boards/con-1/console", token=bob)[1],
        what="bob's output logged",
    )
    status, body = server.request(
        "GET", f"/api/v1/boards/con-1/console?reservation={rid}", token=alice
    )
    assert status == 200 and b"alice-output" in body and b"bob-output" not in body
    status, body = server.request(
        "GET", f"/api/v1/boards/con-1/console?reservation={rid}", token=bob
    )
    assert status == 404
    os.close(pty.master)
