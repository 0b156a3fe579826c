"""The Linux jail script driven by a real server: reserve, ssh into the jail, release.

Besides the ordinary walk through, a hostile holder tries everything to
outlive its reservation and reach the next holder, and a fork bomb tries
to take the lab host down.
"""

import os
import secrets
import shlex
import subprocess
import threading
from pathlib import Path

import pytest

from support import jail
from support.server import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="jails need root"),
]

# Run by the jailed user: a daemon that detaches (double fork, new session),
# plants files in every directory given and SysV IPC objects, starts a child
# that enters a new user and mount namespace and chroots into /tmp, and then
# both fork-chain (the live process keeps changing PID) while planting the
# files again and a .bashrc for whoever gets the same home next.  Reports in
# ~/attack-ready once all of it runs.
ATTACK = r"""
import ctypes, os, subprocess, sys, time

tag, dirs = sys.argv[1], sys.argv[2:]
home = os.path.expanduser("~")
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000


def plant():
    planted = []
    for d in dirs + [home]:
        try:
            with open(os.path.join(d, f"bitelab-attack-{tag}"), "w") as f:
                f.write("left behind\n")
            planted.append(d)
        except OSError:
            pass
    try:
        with open(os.path.join(home, ".bashrc"), "a") as f:
            f.write(f"echo bitelab-attack-{tag}\n")
    except OSError:
        pass
    return planted


def chain():
    while True:
        time.sleep(0.02)
        plant()
        if os.fork():
            os._exit(0)


if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    os._exit(0)
fd = os.open(os.devnull, os.O_RDWR)
for n in (0, 1, 2):
    os.dup2(fd, n)

planted = plant()
for kind in (["-M", "4096"], ["-Q"], ["-S", "1"]):
    subprocess.run(["ipcmk", *kind], check=True)

r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")
        os.chroot("/tmp")
        os.chdir("/")
        with open(f"/bitelab-attack-{tag}-nested", "w") as f:
            f.write("in a user namespace, chrooted\n")
        status = "nested"
    else:
        status = "no-userns"
    os.write(w, status.encode())
    os.close(w)
    chain()
os.close(w)
nested = os.read(r, 100).decode()
with open(os.path.join(home, "attack-ready"), "w") as f:
    f.write("\n".join([nested] + planted) + "\n")
chain()
"""


@pytest.fixture
def site():
    """A jail-script site private to the test, cleaned by force afterwards."""
    with jail.jail_site() as s:
        yield s


@pytest.fixture
def link():
    """A veth pair standing in for the board's VLAN interface."""
    with jail.board_link() as s:
        yield s


def wrapper(site, directory, **extra):
    """A site wrapper, as docs/jails.rst suggests: settings, then the shipped script."""
    settings = site.env("unused", **extra)
    lines = ["#!/bin/sh"]
    for key, value in settings.items():
        if key.startswith("BITELAB_JAIL_"):
            lines.append(f"export {key}={shlex.quote(value)}")
    lines.append(f'exec {shlex.quote(str(jail.SCRIPT))} "$@"')
    path = directory / "site-jail.sh"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def one_board_lab(lab_server, script, options=""):
    """A server with one board, j1, set up by ``script``."""
    return lab_server(
        boards=f"setup_script = {script};\nclasses {{ a64 {{ arch = arm64-aarch64; }} }}\n"
        f"boards [ {{ name = j1; brdclass = a64; options = [ {options} ] }} ]",
        users=("alice", "bob"),
    )


def reserve(server, user, key):
    """Reserve j1 as ``user`` with ``key``; the board's attributes."""
    pub = key.with_suffix(".pub").read_text().strip()
    status, board = server.request(
        "POST", "/api/v1/boards/j1/reserve", {"sshpubkey": pub}, server.token(user)
    )
    assert status == 200, board
    return board["attrs"]


def release(server, user):
    """Release j1 as ``user``; it must come back free."""
    status, board = server.request(
        "POST", "/api/v1/boards/j1/release", {}, server.token(user)
    )
    assert status == 200 and board["state"] == "free", board
    return board


def sysv_ipc_of(uid):
    """The host's SysV IPC objects created by or owned by ``uid``."""
    found = []
    for kind in ("shm", "msg", "sem"):
        lines = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        header = lines[0].split()
        for line in lines[1:]:
            row = dict(zip(header, line.split()))
            if uid in (int(row["uid"]), int(row["cuid"])):
                found.append(f"{kind} {row['key']}")
    return found


def files_of(uid, directories):
    """Files owned by ``uid`` below ``directories`` (each on its own file system)."""
    out = subprocess.run(
        ["find", *directories, "-xdev", "-uid", str(uid)],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def test_reserve_ssh_into_jail_release(lab_server, site, link, tmp_path):
    """A user reserves, logs into the printed address with their key and finds the
    board's interface; another user's key is refused; release leaves the host clean."""
    script = wrapper(site, tmp_path)
    server = one_board_lab(
        lab_server, script, f'{{ cls = etheriface, val = "{link.name}" }}'
    )
    alice_key = jail.make_key(tmp_path, "alice")
    bob_key = jail.make_key(tmp_path, "bob")
    attributes = reserve(server, "alice", alice_key)
    assert {"ip", "ssh_port", "ssh_user"} <= set(attributes)
    assert link.name not in jail.link_names()

    result = jail.ssh(attributes, alice_key, "ip -o link; id -u")
    assert result.returncode == 0, result.stderr
    assert link.name in result.stdout
    assert result.stdout.split()[-1] != "0"

    refused = jail.ssh(attributes, bob_key, "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr

    board = release(server, "alice")
    assert "ip" not in board["attrs"]
    assert site.leftovers() == []
    assert link.name in jail.link_names()
    assert jail.link_is_up(link.name)


def test_hostile_holder_leaves_nothing_for_the_next(lab_server, site, tmp_path):
    """A holder's daemon that detaches, fork-chains, hides in a user namespace
    and a chroot, and plants files in every world-writable host directory and
    SysV IPC objects is gone when release returns, with everything it made;
    the next holder gets another UID and finds nothing of it."""
    server = one_board_lab(lab_server, wrapper(site, tmp_path))
    tag = secrets.token_hex(4)
    targets = jail.world_writable_dirs()
    assert "/tmp" in targets
    alice_key = jail.make_key(tmp_path, "alice")
    first = reserve(server, "alice", alice_key)
    account = first["ssh_user"]
    home = site.home_dir / account
    old_uid = home.stat().st_uid

    attack = subprocess.run(
        ["ssh", *jail.SSH_OPTIONS, "-i", str(alice_key), "-p", first["ssh_port"]]
        + [f"{account}@{first['ip']}", "python3 - " + shlex.join([tag, *targets])],
        input=ATTACK,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert attack.returncode == 0, attack.stderr
    ready = wait_for(
        lambda: (home / "attack-ready").exists()
        and (home / "attack-ready").read_text(),
        what="the attack to be in place",
    )
    status, *planted = ready.split()
    assert status in ("nested", "no-userns")
    assert "/tmp" in planted
    inside = jail.ssh(first, alice_key, "ipcs -m -q -s | grep -c '^0x'")
    assert int(inside.stdout) == 3, inside.stderr
    # the chains fork and exit every 20 ms: a scan of /proc can miss them all
    wait_for(
        lambda: jail.processes_of_uids(old_uid, old_uid),
        what="the holder's processes to be seen",
    )

    release(server, "alice")
    assert jail.processes_of_uids(old_uid, old_uid) == []
    assert sysv_ipc_of(old_uid) == []
    assert files_of(old_uid, [*targets, str(site.home_dir)]) == []
    for directory in targets:
        assert not list(Path(directory).glob(f"bitelab-attack-{tag}*"))
    assert site.leftovers() == []

    bob_key = jail.make_key(tmp_path, "bob")
    second = reserve(server, "bob", bob_key)
    assert second["ssh_user"] == account
    looks = jail.ssh(
        second,
        bob_key,
        "id -u; ls -A ~ /tmp /var/tmp /dev/shm /run/lock; cat ~/.bashrc;"
        " ipcs -m -q -s; ps -e -o user=,args=",
    )
    assert looks.returncode == 0, looks.stderr
    assert int(looks.stdout.split()[0]) != old_uid
    assert "bitelab-attack" not in looks.stdout
    assert "attack-ready" not in looks.stdout
    assert "0x" not in looks.stdout
    assert "python3" not in looks.stdout
    release(server, "bob")
    assert site.leftovers() == []


def test_fork_bomb_leaves_server_answering(lab_server, site, tmp_path):
    """A fork bomb in a jail runs into the jail's process limit: the server
    keeps answering, the host keeps starting processes, and release ends
    the bomb."""
    server = one_board_lab(
        lab_server, wrapper(site, tmp_path, BITELAB_JAIL_PIDS_MAX="100")
    )
    key = jail.make_key(tmp_path, "alice")
    attributes = reserve(server, "alice", key)
    if "pids" not in jail.jail_controllers():
        pytest.skip("the host's cgroups give jails no process limit")
    bomb = jail.ssh(
        attributes,
        key,
        "setsid bash -c 'bomb() { bomb | bomb & }; bomb' </dev/null >/dev/null 2>&1 &",
    )
    assert bomb.returncode == 0, bomb.stderr

    def limit_hit():
        for path in site.cgroups("j1"):
            if (path / "pids.events").exists():
                words = (path / "pids.events").read_text().split()
                return int(words[words.index("max") + 1]) > 0
        return False

    wait_for(limit_hit, what="the fork bomb to reach the process limit")
    token = server.token("alice")
    for _ in range(10):
        status, boards = server.request("GET", "/api/v1/boards", token=token)
        assert status == 200 and boards["boards"][0]["state"] == "reserved"
    assert subprocess.run(["true"], check=False).returncode == 0

    release(server, "alice")
    assert site.leftovers() == []


def test_server_killed_in_a_reserve_recovers_the_board(
    lab_server, site, link, tmp_path
):
    """The server dies (SIGKILL) while the jail script is half-way through a
    reserve; after a restart the board is free again with nothing of the
    jail left, although the killed server's reserve was still running, and
    the next reserve builds a working jail."""
    # sshd that hangs the first time it is checked, as a stuck reserve would;
    # all of it outside /tmp, which the jail has its own of.
    started = site.base / "sshd-started"
    once = site.base / "sshd-once"
    sshd = site.base / "sshd"
    sshd.write_text(
        f"#!/bin/sh\nif [ ! -e {once} ]; then touch {once} {started}; exec sleep 60; fi\n"
        'exec /usr/sbin/sshd "$@"\n'
    )
    sshd.chmod(0o755)
    script = wrapper(site, tmp_path, BITELAB_JAIL_SSHD=str(sshd))
    server = one_board_lab(
        lab_server, script, f'{{ cls = etheriface, val = "{link.name}" }}'
    )
    key = jail.make_key(tmp_path, "alice")
    token = server.token("alice")
    pub = key.with_suffix(".pub").read_text().strip()
    outcome = []

    def attempt():
        try:
            outcome.append(
                server.request(
                    "POST", "/api/v1/boards/j1/reserve", {"sshpubkey": pub}, token
                )
            )
        except OSError as e:
            outcome.append(e)

    caller = threading.Thread(target=attempt, daemon=True)
    caller.start()
    wait_for(started.exists, what="the reserve to get stuck")
    stuck = f"{jail.SCRIPT} reserve j1"
    assert jail.processes_mentioning(stuck)
    server.kill()
    caller.join(30)
    assert isinstance(outcome[0], OSError)
    server.start()

    def free():
        status, board = server.request("GET", "/api/v1/boards/j1", token=token)
        return status == 200 and board["state"] == "free"

    wait_for(free, 60, what="the board to be recovered")
    assert jail.processes_mentioning(stuck) == []
    assert site.leftovers() == []
    assert jail.link_is_up(link.name)

    attributes = reserve(server, "alice", key)
    result = jail.ssh(attributes, key, "ip -o link")
    assert result.returncode == 0, result.stderr
    assert link.name in result.stdout
    release(server, "alice")
    assert site.leftovers() == []
