"""conf/jail-linux.sh, run as the server runs it, with real namespaces and sshd.

Each test builds its own site (names, pool, directories) and a veth pair that
plays the board's VLAN interface; traffic only goes to namespaces made here.
"""

import os
import secrets
import subprocess
import sys
import time

import pytest

from support import jail as support
from support.jail import (
    BOARD_JAIL_ADDR,
    BOARD_PEER_ADDR,
    SCRIPT,
    SSH_OPTIONS,
    link_is_up,
    link_names,
    make_key,
    netns_names,
    parse_attrs,
    processes_mentioning,
    ssh,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="jails need root (namespaces, accounts, sshd)"
)

BOARD_SERVICE = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777))
s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello from the board\\n")
    c.close()
"""


def reserve(site, board, link=None, key=None, **extra):
    """Reserve ``board`` successfully and return the attributes printed."""
    if link is not None:
        extra.setdefault("BITELAB_ETHERIFACE", link.name)
    if key is not None:
        extra.setdefault(
            "BITELAB_SSHPUBKEY", key.with_suffix(".pub").read_text().strip()
        )
    result = site.run("reserve", board, **extra)
    assert result.returncode == 0, result.stderr
    return parse_attrs(result.stdout)


def assert_released(site, board, link=None):
    """Nothing of ``board``'s jail is left, and the board interface is home."""
    assert site.leftovers(board) == []
    if link is not None:
        assert link.name in link_names()
        assert link_is_up(link.name)


@pytest.fixture
def jail_site():
    """A site of the jail script private to the test."""
    with support.jail_site() as site:
        yield site


@pytest.fixture
def board_link():
    """A stand-in for the board's VLAN interface."""
    with support.board_link() as link:
        yield link


@pytest.fixture
def board_service(board_link):
    """A TCP service on the board's side of the link, answering one line."""
    process = subprocess.Popen(
        ["ip", "netns", "exec", board_link.board_netns, sys.executable, "-c"]
        + [BOARD_SERVICE, BOARD_PEER_ADDR],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        yield board_link
    finally:
        process.kill()
        process.wait()


def test_reserve_login_release(jail_site, board_service, tmp_path):
    """A reserved jail prints where to log in; the holder's key gets a shell
    there as an unprivileged account that sees the board's interface and
    reaches the board; release removes it all and gives the interface back."""
    link = board_service
    key = make_key(tmp_path, "holder")
    attrs = reserve(
        jail_site, "cora-1", link, key, BITELAB_JAIL_IFACE_ADDR=BOARD_JAIL_ADDR
    )

    account = jail_site.name("cora-1")
    assert attrs["ssh_user"] == account
    assert attrs["ssh_port"] == "22"
    assert attrs["ip"].startswith(jail_site.pool.rsplit(".", 1)[0] + ".")
    assert attrs["ssh_hostkey"].startswith("SHA256:")
    assert attrs["iface"] == link.name
    assert account in netns_names()
    assert link.name not in link_names()

    result = ssh(
        attrs,
        key,
        "id -un; id -u; ip -o link; "
        f"exec 3<>/dev/tcp/{BOARD_PEER_ADDR}/7777 && head -n 1 <&3",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == account
    assert int(lines[1]) != 0
    board_lines = [ln for ln in lines if f" {link.name}@" in ln]
    assert len(board_lines) == 1 and ",UP," in board_lines[0]
    assert lines[-1] == "hello from the board"

    release = jail_site.run("release", "cora-1")
    assert release.returncode == 0, release.stderr
    assert release.stdout == ""
    assert_released(jail_site, "cora-1", link)


def test_jail_user_cannot_take_the_host(jail_site, board_link, tmp_path):
    """Inside the jail the account cannot reconfigure the network, read the
    jails' host key or see host processes and files in /tmp, but may serve
    on low ports in its own namespace."""
    key = make_key(tmp_path, "holder")
    attrs = reserve(jail_site, "a64lts-1", board_link, key)
    host_key = jail_site.state_dir / "ssh_host_ed25519_key"
    marker = f"/tmp/bitelab-host-only-{jail_site.tag}"
    open(marker, "w").close()
    try:
        script = (
            f"ip link set dev {board_link.name} down && echo LINK-CHANGED; "
            f"cat {host_key} && echo KEY-READ; "
            f"test -e /proc/1 && echo SEES-PID-1; "
            f"test -e {marker} && echo SEES-HOST-TMP; "
            "python3 -c 'import socket; socket.socket().bind((\"0.0.0.0\", 80))'"
            " && echo BOUND-80"
        )
        result = ssh(attrs, key, script)
    finally:
        os.unlink(marker)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["BOUND-80"]
    assert "Operation not permitted" in result.stderr
    assert "Permission denied" in result.stderr
    assert link_is_up(board_link.name, netns=jail_site.name("a64lts-1"))


def test_other_keys_and_accounts_are_refused(jail_site, board_link, tmp_path):
    """Only the key given at reserve logs in, and only as the jail account."""
    key = make_key(tmp_path, "holder")
    other = make_key(tmp_path, "someone-else")
    attrs = reserve(jail_site, "cora-2", board_link, key)

    refused = ssh(attrs, other, "true")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    as_root = ssh(attrs, key, "true", user="root")
    assert as_root.returncode == 255
    assert "Permission denied" in as_root.stderr
    assert ssh(attrs, key, "true").returncode == 0


def test_jails_get_distinct_addresses(jail_site, tmp_path):
    """Boards reserved at the same time get different addresses, each with a
    working sshd, and releasing one leaves the other alone."""
    key = make_key(tmp_path, "holder")
    boards = ["b-1", "b-2", "b-3"]
    procs = {
        b: subprocess.Popen(
            [str(SCRIPT), "reserve", b],
            env=jail_site.env(
                b, BITELAB_SSHPUBKEY=key.with_suffix(".pub").read_text().strip()
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in boards
    }
    attrs = {}
    for board, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        attrs[board] = parse_attrs(out)
    assert len({a["ip"] for a in attrs.values()}) == len(boards)
    for board in boards:
        result = ssh(attrs[board], key, "id -un")
        assert result.stdout.strip() == jail_site.name(board), result.stderr

    assert jail_site.run("release", "b-2").returncode == 0
    assert_released(jail_site, "b-2")
    assert ssh(attrs["b-1"], key, "true").returncode == 0
    assert jail_site.name("b-3") in netns_names()


def test_failed_reserve_leaves_host_clean(jail_site, board_link, tmp_path):
    """A reserve failing late (sshd will not run) undoes everything, says why
    in one line, and a release afterwards still succeeds."""
    key = make_key(tmp_path, "holder")
    result = jail_site.run(
        "reserve",
        "cora-3",
        BITELAB_ETHERIFACE=board_link.name,
        BITELAB_SSHPUBKEY=key.with_suffix(".pub").read_text().strip(),
        BITELAB_JAIL_SSHD="/bin/false",
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        (
            "bitelab-jail: cannot check the jail's sshd configuration: "
            "/bin/false exited with status 1"
        )
    ]
    assert_released(jail_site, "cora-3", board_link)

    release = jail_site.run("release", "cora-3")
    assert release.returncode == 0, release.stderr
    assert_released(jail_site, "cora-3", board_link)


def test_release_after_killed_reserve(jail_site, board_link, tmp_path):
    """A reserve killed half-way (as on a time-out) leaves a half-built jail;
    release removes it and hands the interface back, and a second release
    finds nothing to do."""
    hang = tmp_path / "sshd-that-hangs"
    started = tmp_path / "sshd-started"
    hang.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    hang.chmod(0o755)
    proc = jail_site.start(
        "reserve",
        "cora-4",
        BITELAB_ETHERIFACE=board_link.name,
        BITELAB_JAIL_SSHD=str(hang),
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "reserve never reached sshd"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    name = jail_site.name("cora-4")
    assert name in netns_names()
    assert board_link.name in link_names(netns=name)

    for _ in range(2):
        release = jail_site.run("release", "cora-4")
        assert release.returncode == 0, release.stderr
        assert_released(jail_site, "cora-4", board_link)


def test_reserve_interrupted_by_timeout(jail_site, board_link, tmp_path):
    """The server's SIGTERM on time-out stops a reserve stuck in a command:
    it cleans up at once and says it was interrupted."""
    hang = tmp_path / "sshd-that-hangs"
    started = tmp_path / "sshd-started"
    hang.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    hang.chmod(0o755)
    proc = subprocess.Popen(
        [str(SCRIPT), "reserve", "cora-7"],
        env=jail_site.env(
            "cora-7", BITELAB_ETHERIFACE=board_link.name, BITELAB_JAIL_SSHD=str(hang)
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "reserve never reached sshd"
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode != 0
    assert out == ""
    assert err.splitlines()[-1] == (
        "bitelab-jail: reserve of cora-7 interrupted (timed out?)"
    )
    assert_released(jail_site, "cora-7", board_link)


def test_reserve_cleans_stale_jail(jail_site, board_link, tmp_path):
    """Reserving a board whose last jail was never released replaces it."""
    key = make_key(tmp_path, "holder")
    first = reserve(jail_site, "cora-5", board_link, key)
    second = reserve(jail_site, "cora-5", board_link, key)
    assert ssh(second, key, "true").returncode == 0
    assert len(processes_mentioning(str(jail_site.state_dir))) == 1
    assert first["ssh_user"] == second["ssh_user"]


@pytest.mark.parametrize("board", ["", "../etc", "a b", "x;id", "ünï", "a" * 40])
def test_bad_board_name(jail_site, board):
    """A board name unfit for names and paths fails in one line, touching
    nothing."""
    result = jail_site.run("reserve", board)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("bitelab-jail: ")
    assert "board name" in result.stderr
    assert jail_site.leftovers() == []
    assert not jail_site.state_dir.exists()


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"BITELAB_ETHERIFACE": "tbnone.103"}, "interface tbnone.103"),
        ({"BITELAB_SSHPUBKEY": "not a key"}, "not an OpenSSH public key"),
        ({"BITELAB_JAIL_POOL": "10.0.0.0"}, "BITELAB_JAIL_POOL"),
    ],
)
def test_bad_reserve_input(jail_site, extra, reason):
    """Bad input from the board file, the user or the site fails in one line
    that names the problem, and leaves nothing behind."""
    result = jail_site.run("reserve", "cora-6", **extra)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert reason in result.stderr
    assert jail_site.leftovers() == []


def test_pool_exhausted(jail_site, tmp_path):
    """With every address of the pool in use, reserve says so and cleans up."""
    small = jail_site.pool.rsplit(".", 1)[0] + ".0/30"
    assert jail_site.run("reserve", "one", BITELAB_JAIL_POOL=small).returncode == 0
    result = jail_site.run("reserve", "two", BITELAB_JAIL_POOL=small)
    assert result.returncode != 0
    assert "no free address" in result.stderr.splitlines()[-1]
    assert jail_site.leftovers("two") == []
    assert jail_site.run("release", "one", BITELAB_JAIL_POOL=small).returncode == 0
    assert jail_site.leftovers() == []


def test_reserve_without_key(jail_site, board_link, tmp_path):
    """With no key given the jail is still built (the board's interface is
    the user's to use later), but nobody can log in to it."""
    attrs = reserve(jail_site, "cora-8", board_link)
    assert attrs["ssh_user"] == jail_site.name("cora-8")
    refused = ssh(attrs, make_key(tmp_path, "anyone"), "true")
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    assert jail_site.run("release", "cora-8").returncode == 0
    assert_released(jail_site, "cora-8", board_link)


def test_release_ends_sessions_and_jobs(jail_site, board_link, tmp_path):
    """Release succeeds while the holder is logged in with jobs left running,
    and ends both."""
    key = make_key(tmp_path, "holder")
    attrs = reserve(jail_site, "cora-9", board_link, key)
    job = f"sleep {3000 + secrets.randbelow(1000)}"
    left = ssh(attrs, key, f"nohup {job} >/dev/null 2>&1 &")
    assert left.returncode == 0, left.stderr
    session = subprocess.Popen(
        ["ssh", *SSH_OPTIONS, "-i", str(key), "-p", attrs["ssh_port"]]
        + [f"{attrs['ssh_user']}@{attrs['ip']}", "echo in; exec sleep 600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert session.stdout.readline() == "in\n"
        assert processes_mentioning(job)
        release = jail_site.run("release", "cora-9")
        assert release.returncode == 0, release.stderr
        assert session.wait(timeout=10) != 0
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert processes_mentioning(job) == []
    assert_released(jail_site, "cora-9", board_link)
