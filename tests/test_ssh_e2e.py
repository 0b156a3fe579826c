"""The SSH face through the whole chain: OpenSSH, ``bitelab contssh``, a real server."""

import os
import pty
import select
import signal
import subprocess
import time

import pytest

from support.server import wait_for
from support.ssh import BITELAB, run_ssh, ssh_argv

pytestmark = pytest.mark.e2e


def boards(device):
    return (
        "classes { z { arch = arm; } }\nboards [\n"
        f'{{ name = con-1; brdclass = z; options = [ {{ cls = serialconsole, val = "{device}" }} ] }},\n'
        "{ name = plain-1; brdclass = z; },\n]\n"
    )


def test_token_over_ssh_works_with_cli_and_host_key_is_stable(
    lab_server, tmp_path, serial
):
    """`ssh -l lab` through contssh prints a token the CLI accepts; after a restart
    the same host key passes strict checking."""
    server = lab_server(boards=boards(serial[1]), users=("alice",))
    known = tmp_path / "known_hosts"
    result = run_ssh(server, "alice", "lab", known)
    assert result.returncode == 0, result.stderr
    token = result.stdout.decode().strip()
    assert token.startswith("bl_") and "\n" not in token
    whoami = subprocess.run(
        [BITELAB, "--json", "whoami"],
        capture_output=True,
        env=server.client_env(token),
        timeout=60,
        check=False,
    )
    assert whoami.returncode == 0 and b'"alice"' in whoami.stdout
    server.stop()
    server.start()
    again = run_ssh(server, "alice", "lab", known, "strict")
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().strip() != token
    _, events = server.request(
        "GET", "/api/v1/events?user=alice", token=server.token("root")
    )
    assert [e["action"] for e in events["events"]].count("token_issue") == 2


def test_wrong_key_and_unknown_login_are_refused(lab_server, tmp_path, serial):
    """A key not in ssh_keys_dir, or a login name that is neither lab nor a board: Permission denied."""
    server = lab_server(boards=boards(serial[1]), users=("alice",))
    server.add_user("mallory")
    os.unlink(os.path.join(server.keys_dir, "mallory.pub"))
    known = tmp_path / "known_hosts"
    bad_key = run_ssh(server, "mallory", "lab", known)
    assert bad_key.returncode == 255 and b"Permission denied" in bad_key.stderr
    assert bad_key.stdout == b""
    bad_login = run_ssh(server, "alice", "root", known)
    assert bad_login.returncode == 255 and b"Permission denied" in bad_login.stderr


def test_console_needs_the_reservation(lab_server, tmp_path, serial):
    """Someone else's board, or a board not held: one line, exit 1, no console output."""
    master, device = serial
    server = lab_server(boards=boards(device), users=("alice", "bob"))
    token = server.token("alice")
    server.request("POST", "/api/v1/boards/con-1/reserve", {}, token)
    os.write(master, b"secret boot output\r\n")
    known = tmp_path / "known_hosts"
    result = run_ssh(server, "bob", "con-1", known)
    assert result.returncode == 1
    assert b"secret" not in result.stdout + result.stderr
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert b"con-1" in result.stderr


def read_some(fd, timeout=0.5):
    """What ``fd`` has within ``timeout`` seconds (b"" if nothing)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


def read_until(fd, needle, timeout=20.0):
    """Read ``fd`` until ``needle`` shows up; fail after ``timeout`` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in {data!r}")
        data += read_some(fd)
    return data


def test_console_both_ways_and_closed_on_release(lab_server, tmp_path, serial):
    """Output of the board reaches the ssh console (pty and plain) and the HTTP
    follow stream; typed input reaches the board; release closes every viewer."""
    master, device = serial
    server = lab_server(boards=boards(device), users=("alice",))
    token = server.token("alice")
    server.request("POST", "/api/v1/boards/con-1/reserve", {}, token)
    wait_for(
        lambda: os.write(master, b"boot: U-Boot 2024.01\r\n")
        and b"U-Boot"
        in server.request("GET", "/api/v1/boards/con-1/console", token=token)[1],
        what="console log",
    )
    known = tmp_path / "known_hosts"
    env = server.client_env(token)
    assert run_ssh(server, "alice", "lab", known).returncode == 0  # learn the host key

    # a viewer with a pty, driven through a pseudo-terminal of its own
    pid, term = pty.fork()
    if pid == 0:
        os.execvpe("ssh", ssh_argv(server, "alice", "con-1", known, "-tt"), env)
    plain = subprocess.Popen(
        ssh_argv(server, "alice", "con-1", known),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    follow = server.follow_console("con-1", token)
    try:
        # history first: everything since the reservation started
        assert b"U-Boot" in read_until(follow.stdout.fileno(), b"U-Boot")
        wait_for(
            lambda: os.write(master, b"\r\nping\r\n") and b"ping" in read_some(term),
            what="pty viewer",
        )
        os.write(master, bytes(range(1, 256)) + b"=end=")
        assert plain.poll() is None, plain.stderr.read()
        read_until(plain.stdout.fileno(), b"=end=")
        assert b"=end=" in read_until(follow.stdout.fileno(), b"=end=")

        plain.stdin.write(b"printenv\n")
        plain.stdin.flush()
        os.write(term, b"boot\r")
        got = read_until(master, b"printenv\n")
        if b"boot\r" not in got:
            got += read_until(master, b"boot\r")
        assert b"printenv\n" in got and b"boot\r" in got

        status, _ = server.request("POST", "/api/v1/boards/con-1/release", {}, token)
        assert status == 200
        tail = plain.stdout.read()
        assert b"reservation of con-1 ended" in tail
        assert plain.wait(30) == 0
        assert b"reservation of con-1 ended" in read_until(term, b"ended")
        assert b"ended" in follow.stdout.read()
        assert follow.wait(30) == 0
    finally:
        for process in (plain, follow):
            if process.poll() is None:
                process.kill()
                process.wait()
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(term)
    with open(os.path.join(server.dir, "console", "con-1.log"), "rb") as f:
        log = f.read()
    assert (
        b"U-Boot" in log and b"reserved by alice" in log and b"released" in log.lower()
    )


def test_new_key_after_sighup(lab_server, tmp_path, serial):
    """A user whose key is added while the server runs can log in after SIGHUP,
    and SIGHUP does not stop the server."""
    server = lab_server(boards=boards(serial[1]), users=("alice",))
    known = tmp_path / "known_hosts"
    server.add_user("carol")
    server.process.send_signal(signal.SIGHUP)
    result = wait_for(
        lambda: (r := run_ssh(server, "carol", "lab", known)).returncode == 0 and r,
        what="carol's key to be loaded",
    )
    assert result.stdout.decode().startswith("bl_")
    assert server.process.poll() is None
    assert server.get("/api/v1/info")["name"] == "bitelab"
