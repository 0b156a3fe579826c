"""The ``bitelab`` command end to end: real servers, OpenSSH, and the example
lab's pretend board (``conf/fakeboard.py``) on a pseudo-terminal.

Consoles scripted and typed, console logs, tokens over SSH, several labs
from the labs file, and a lab served over TLS with its own CA.
"""

import json
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest

from support.cli import BIN, Client, boards
from support.server import LabServer, wait_for
from support.tls import self_signed

pytestmark = pytest.mark.e2e


@pytest.fixture
def console_lab(lab_server, fake_conf, tmp_path):
    """A server with con-1 on the fake board, reserved by alice and switched on;
    ``(server, alice's Client, alice's key)``."""
    server = lab_server(boards=boards(fake_conf), users=("alice", "bob"))
    token = server.token("alice")
    alice = Client(
        tmp_path / "alice", {"BITELAB_URL": server.url, "BITELAB_AUTH": token}
    )
    assert alice.run("reserve", "con-1").returncode == 0
    on = alice.run("set", "power=on", "con-1")
    assert on.returncode == 0, on.stderr
    wait_for(
        lambda: b"type help"
        in server.request("GET", "/api/v1/boards/con-1/console", token=token)[1],
        what="the board to boot",
    )
    return server, alice, server.key("alice")


def test_scripted_console_sends_and_expects(console_lab):
    """--send and --expect run in order against the board: exit 0, the console's
    output on stdout; the host key is recorded on first contact."""
    _server, alice, key = console_lab
    result = alice.run(
        "console", "-i", key, "con-1",
        "--send", r"version\r", "--expect", r"fakeboard \d+\.\d+",
        "--send", r"echo done-$((6*7))\r", "--expect", "done-",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "fakeboard 1.0 (con-1)" in result.stdout
    assert "recorded the SSH host key of lab bitelab" in result.stderr
    known = alice.home / ".config" / "bitelab" / "known_hosts"
    assert known.read_text().startswith("bitelab ssh-ed25519 ")


def test_scripted_console_times_out_with_6(console_lab):
    """An --expect the board never prints ends with exit 6 and one line."""
    _server, alice, key = console_lab
    started = time.monotonic()
    result = alice.run(
        "console", "-i", key, "con-1", "--send", r"help\r",
        "--expect", "no such output", "--timeout", "1",
    )  # fmt: skip
    assert result.returncode == 6
    assert result.stderr.splitlines()[-1] == (
        "bitelab: the console of con-1 did not show 'no such output' within 1s"
    )
    assert "commands: help" in result.stdout
    assert time.monotonic() - started < 30


def test_console_ends_at_end_of_input(console_lab):
    """``bitelab console BOARD </dev/null`` ends with exit 0; piped input
    reaches the board before the session ends."""
    server, alice, key = console_lab
    result = alice.run("console", "-i", key, "con-1", timeout=30)
    assert result.returncode == 0, result.stderr
    piped = alice.run("console", "-i", key, "con-1", stdin=None, timeout=30)
    assert piped.returncode == 0, piped.stderr
    result = subprocess.run(
        [os.path.join(BIN, "bitelab"), "console", "-i", key, "con-1"],
        input=b"echo from-a-pipe\r",
        env=alice.env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    token = alice.env["BITELAB_AUTH"]
    wait_for(
        lambda: b"from-a-pipe\r\nfrom-a-pipe"
        in server.request("GET", "/api/v1/boards/con-1/console", token=token)[1],
        what="the piped command's answer in the log",
    )


def read_until(fd, needle, timeout=20.0):
    """Read the pty ``fd`` until ``needle`` shows; what was read."""
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        assert time.monotonic() < deadline, f"{needle!r} not in {data!r}"
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data += os.read(fd, 65536)
            except OSError:
                break
    return data


def test_typed_console_detaches_with_tilde_dot(console_lab):
    """At a terminal, keys reach the board, ``~~`` sends one ``~`` and ``~.``
    at the start of a line detaches with exit 0."""
    _server, alice, key = console_lab
    pid, term = pty.fork()
    if pid == 0:
        os.execve(
            os.path.join(BIN, "bitelab"),
            ["bitelab", "console", "-i", key, "con-1"],
            alice.env,
        )
    try:
        os.write(term, b"\r")  # kept by the server until the console is attached
        read_until(term, b"con-1# ")
        os.write(term, b"echo a~b\r~~tilde\r")
        echoed = read_until(term, b"tilde: not found")
        assert b"a~b\r\na~b" in echoed and b"~~" not in echoed
        os.write(term, b"\r~.")
        tail = read_until(term, b"detached")
        assert b"detached from the console of con-1" in tail
        _, status = os.waitpid(pid, 0)
        pid = None
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid is not None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(term)


def test_log_and_follow(console_lab):
    """``log`` prints this reservation's console log; ``log -f`` follows until
    the release; ``--reservation`` asks for a given reservation's log."""
    server, alice, key = console_lab
    result = alice.run("log", "con-1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("=== bitelab: reserved by alice")
    assert "fakeboard 1.0 (con-1): type help" in result.stdout
    follow = subprocess.Popen(
        [os.path.join(BIN, "bitelab"), "log", "-f", "con-1"],
        env=alice.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        read_until(follow.stdout.fileno(), b"type help")
        assert alice.run("console", "-i", key, "con-1", "--send", r"uptime\r",
                         "--expect", "seconds").returncode == 0  # fmt: skip
        read_until(follow.stdout.fileno(), b"seconds")
        assert alice.run("release", "con-1").returncode == 0
        assert follow.wait(30) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        follow.stdout.close()
        follow.stderr.close()
    alice.run("log", "--reservation", "r-17", "con-1")
    with open(os.path.join(server.dir, "access.log")) as f:
        assert "/api/v1/boards/con-1/console?reservation=r-17" in f.read()
    refused = alice.run("log", "plain-1")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1


def test_two_labs_from_the_labs_file(lab_server, tmp_path):
    """Two labs under names of their own: tokens over SSH kept per lab, each
    lab's host key pinned under its own name, --lab and BITELAB_LAB choose,
    and the environment still works without them."""
    first = lab_server(users=("alice",), settings={"lab_name": "north"})
    second = lab_server(users=("alice",), settings={"lab_name": "south"})
    alice = Client(tmp_path / "home", {})
    assert alice.run("labs", "add", "n", first.url).returncode == 0
    assert alice.run("labs", "add", "s", second.url).returncode == 0
    for lab, server in (("n", first), ("s", second)):
        saved = alice.run("--lab", lab, "token", "-i", server.key("alice"), "--save")
        assert saved.returncode == 0, saved.stderr
        assert f"token of lab {lab} saved" in saved.stderr
    assert alice.run("--lab", "n", "reserve", "zynq-1").returncode == 0
    plain_ssh = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", f"ProxyCommand={BIN}/bitelab --lab s contssh"]
        + [
            "-o",
            "UserKnownHostsFile=" + str(alice.home / ".config/bitelab/known_hosts"),
        ]
        + ["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
        + ["-i", second.key("alice"), "-l", "lab", "south"],
        env=alice.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert plain_ssh.returncode == 0, plain_ssh.stderr
    assert plain_ssh.stdout.startswith("bl_")
    listing = alice.run("list", BITELAB_LAB="s")
    assert listing.returncode == 0 and "zynq-1" in listing.stdout
    assert "alice" not in listing.stdout  # south's zynq-1 is free
    labs = json.loads(alice.run("labs", "--json").stdout)["labs"]
    assert [(lab["name"], lab["token"]) for lab in labs] == [("n", True), ("s", True)]
    known = (alice.home / ".config" / "bitelab" / "known_hosts").read_text()
    assert sorted(line.split()[0] for line in known.splitlines()) == ["north", "south"]
    labs_file = alice.home / ".config" / "bitelab" / "labs.ini"
    assert labs_file.stat().st_mode & 0o777 == 0o600
    plain = alice.run(
        "whoami", BITELAB_URL=second.url, BITELAB_AUTH=second.token("alice")
    )
    assert plain.stdout == "alice\n"
    missing = alice.run("--lab", "west", "list")
    assert missing.returncode == 2 and "no lab named 'west'" in missing.stderr


def test_lab_over_tls_with_its_own_ca(lab_server, tmp_path):
    """A server on an ``ssl:`` endpoint with a self-signed certificate (files
    named relative to .env): reads, changes and SSH through contssh work with
    BITELAB_CACERT; without it the certificate is refused, exit 3."""
    directory = tmp_path / "tlslab"
    directory.mkdir()
    _key, cert = self_signed(directory)
    server = LabServer(directory, users=("alice",), cacert=str(cert))
    port = server.http_port
    text = (
        Path(server.env_path)
        .read_text()
        .replace(
            f"http_endpoint=tcp:{port}:interface=127.0.0.1",
            f"http_endpoint=ssl:{port}:interface=127.0.0.1:privateKey=tls.key"
            ":certKey=tls.pem",
        )
    )
    Path(server.env_path).write_text(text)
    server.start()
    try:
        alice = Client(
            tmp_path / "home",
            {"BITELAB_URL": server.url, "BITELAB_CACERT": str(cert)},
        )
        got = alice.run("token", "-i", server.key("alice"))
        assert got.returncode == 0, got.stderr
        alice.env["BITELAB_AUTH"] = got.stdout.strip()
        assert alice.run("whoami").stdout == "alice\n"
        reserved = alice.run("reserve", "zynq-1")
        assert reserved.returncode == 0, reserved.stderr
        untrusted = alice.run("list", BITELAB_CACERT="")
        assert untrusted.returncode == 3
        assert "TLS certificate is not trusted" in untrusted.stderr
        assert alice.run("release", "zynq-1", BITELAB_CACERT="").returncode == 3
    finally:
        server.stop()
