"""SIGHUP and the server's logs, against a real ``twistd``.

On SIGHUP the server reopens its log and the access log at their paths
(after logrotate or newsyslog moved them) and reloads the board file:
boards added, changed and removed follow the rules of a restart, console
sessions of unchanged boards go on, the reload is audited, and a broken
board file changes nothing.  ``log_level`` drops the lines below it, and
clients going away is not an error.
"""

import os
import signal
import stat
import subprocess
import tty

import pytest

from support.server import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def ptys():
    """Three pseudo-terminals standing in for serial ports: [(master, path)]."""
    made = []
    for _ in range(3):
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        made.append((master, slave))
    yield [(master, os.ttyname(slave)) for master, slave in made]
    for master, slave in made:
        os.close(master)
        os.close(slave)


def board_file(con1, con2, extra=""):
    return f"""
classes {{ zynq {{ arch = arm; }} con {{ arch = arm; }} }}
boards [
  {{ name = con-1; brdclass = con; options = [ {{ cls = serialconsole, val = {con1} }} ] }},
  {{ name = con-2; brdclass = con; options = [ {{ cls = serialconsole, val = {con2} }} ] }},
  {{ name = zynq-1; brdclass = zynq; options = [] }},
  {{ name = zynq-2; brdclass = zynq; options = [] }},
  {extra}
]
"""


def read_some(process, want):
    """Read a viewer's output until ``want`` has been seen; all of it."""
    seen = b""
    while want not in seen:
        chunk = os.read(process.stdout.fileno(), 4096)
        assert chunk, f"viewer ended before {want!r}: {seen!r}"
        seen += chunk
    return seen


def test_sighup_reopens_logs_and_reloads_boards_keeping_sessions(lab_server, ptys):
    """After the logs were moved away and the board file changed, SIGHUP:
    new log files (0600) get the new lines; con-1 (unchanged) keeps its
    viewer, con-2 (device changed) drops its own with the reason and gets a
    new console; zynq-2 (free) goes, zynq-1 (held) stays marked removed,
    new-1 comes; the reload is in the audit log."""
    (m1, con1), (m2, con2), (m3, con3) = ptys
    server = lab_server(boards=board_file(con1, con2), users=("alice",))
    alice, root = server.token("alice"), server.token("root")
    for board in ("con-1", "con-2", "zynq-1"):
        status, _ = server.request(
            "POST", f"/api/v1/boards/{board}/reserve", body={}, token=alice
        )
        assert status == 200
    viewers = {b: server.follow_console(b, alice) for b in ("con-1", "con-2")}
    try:
        os.write(m1, b"one before\r\n")
        os.write(m2, b"two before\r\n")
        read_some(viewers["con-1"], b"one before")
        read_some(viewers["con-2"], b"two before")

        access = os.path.join(server.dir, "access.log")
        os.rename(access, access + ".1")
        os.rename(server.log_path, server.log_path + ".1")
        server.write_boards(
            board_file(con1, con3, "{ name = new-1; brdclass = zynq; options = [] },")
            .replace("  { name = zynq-1; brdclass = zynq; options = [] },\n", "")
            .replace("  { name = zynq-2; brdclass = zynq; options = [] },\n", "")
        )
        server.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "board file" in server.log() and "reloaded" in server.log(),
            what="the reload in the new log",
        )
        assert stat.S_IMODE(os.stat(server.log_path).st_mode) == 0o600

        # the session of the unchanged board goes on
        os.write(m1, b"one after\r\n")
        read_some(viewers["con-1"], b"one after")
        assert viewers["con-1"].poll() is None
        # the changed one's ends with why
        rest = viewers["con-2"].stdout.read()
        assert b"board con-2 was changed in the board file" in rest
        assert viewers["con-2"].wait(30) == 0
    finally:
        for viewer in viewers.values():
            if viewer.poll() is None:
                viewer.kill()
                viewer.wait()
            viewer.stdout.close()

    boards = {b["name"]: b for b in server.get("/api/v1/boards", token=root)["boards"]}
    assert sorted(boards) == ["con-1", "con-2", "new-1", "zynq-1"]
    assert boards["zynq-1"]["removed"] is True
    assert boards["zynq-1"]["state"] == "reserved"
    assert boards["new-1"]["state"] == "free"
    assert boards["con-2"]["state"] == "reserved"
    assert boards["con-2"]["attrs"]["serialconsole"] == con3
    # the holder of con-2 reattaches to its new console
    viewer = server.follow_console("con-2", alice)
    try:
        wait_for(
            lambda: server.get("/api/v1/boards/con-2", token=root)["attrs"].get(
                "console_connected"
            ),
            what="con-2's new console",
        )
        os.write(m3, b"three\r\n")
        read_some(viewer, b"three")
    finally:
        viewer.kill()
        viewer.wait()
        viewer.stdout.close()

    reloads = server.get("/api/v1/events?limit=50", token=root)["events"]
    [entry] = [e for e in reloads if e["action"] == "reload"]
    assert entry["detail"] == "added new-1; changed con-2; removed zynq-1, zynq-2"
    # the access log was reopened: new requests are in the new file
    with open(access) as f:
        assert "/api/v1/events" in f.read()
    with open(access + ".1") as f:
        assert "/api/v1/events" not in f.read()
    assert stat.S_IMODE(os.stat(access).st_mode) == 0o600

    # releasing the removed board: it goes
    status, body = server.request(
        "POST", "/api/v1/boards/zynq-1/release", body={}, token=alice
    )
    assert status == 200 and body["state"] == "maintenance", body


def test_a_broken_board_file_changes_nothing(lab_server):
    """SIGHUP with a board file that does not load: the server keeps its
    boards, says why in its log and the audit log, and goes on serving."""
    server = lab_server()
    root = server.token("root")
    before = server.get("/api/v1/boards", token=root)
    server.write_boards("boards [ { name = zynq-9; brdclass = nope; } ]")
    server.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: any(
            e["action"] == "reload_failed"
            for e in server.get("/api/v1/events", token=root)["events"]
        ),
        what="reload_failed audited",
    )
    [entry] = [
        e
        for e in server.get("/api/v1/events", token=root)["events"]
        if e["action"] == "reload_failed"
    ]
    assert "unknown brdclass 'nope'" in entry["detail"]
    assert "board file not reloaded" in server.log()
    assert server.get("/api/v1/boards", token=root) == before


def test_log_level_drops_lower_lines(lab_server, tmp_path):
    """``log_level=warn`` keeps warnings (a console device that is missing)
    but drops info lines; the default (info) drops debug lines, which
    ``log_level=debug`` shows (the console retrying)."""
    boards = """
classes { con { arch = arm; } }
boards [ { name = con-1; brdclass = con; options = [
    { cls = serialconsole, val = /dev/bitelab-no-such-tty } ] } ]
"""
    quiet = lab_server(boards=boards, settings={"log_level": "warn"})
    normal = lab_server(boards=boards)
    chatty = lab_server(boards=boards, settings={"log_level": "debug"})
    wait_for(lambda: "still unavailable" in chatty.log(), what="a debug line")
    # the others started earlier: they have retried as often by now
    assert "#debug]" not in normal.log()
    assert "#info]" in normal.log()
    assert "cannot open console device" in quiet.log()
    assert "[bitelab.ssh#info]" not in quiet.log()


def test_clients_going_away_are_not_errors(lab_server, ptys):
    """Console viewers over HTTP and over SSH killed mid-session leave no
    error in the server's log."""
    (master, con1), _, _ = ptys
    server = lab_server(boards=board_file(con1, "/dev/bitelab-none"), users=("alice",))
    alice = server.token("alice")
    assert (
        server.request("POST", "/api/v1/boards/con-1/reserve", body={}, token=alice)[0]
        == 200
    )
    viewer = server.follow_console("con-1", alice)
    os.write(master, b"hello\r\n")
    read_some(viewer, b"hello")
    viewer.kill()
    viewer.wait()
    viewer.stdout.close()
    ssh = subprocess.Popen(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(server.ssh_port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-i",
            server.key("alice"),
            "-tt",
            "con-1@127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: "attached to the console" in server.log(), what="SSH attach")
    os.write(master, b"again\r\n")
    read_some(ssh, b"again")
    ssh.kill()
    ssh.wait()
    ssh.stdin.close()
    ssh.stdout.close()
    wait_for(lambda: "connection lost" in server.log(), what="the SSH client gone")
    server.stop()
    log = server.log()
    for bad in ("#error]", "#critical]", "Traceback", "Unhandled"):
        assert bad not in log, log
