"""An operator's mistakes, each met for real: one line, a documented exit
status, and nothing lost.

``bitelab-admin`` exits 0 when done, 1 when refused or when ``check`` finds
what would stop the server, 2 for a usage or configuration error, 3 when
the database cannot be used (nothing was changed).
"""

import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys

import pytest

from support.server import LabServer, repo_env, twistd_command, wait_for
from support.ssh import run_ssh

pytestmark = pytest.mark.e2e

BOARDS = "classes { c { arch = x; } } boards [ { name = a; brdclass = c; } ]\n"


def admin(env_path, *args, **kwargs):
    """``bitelab-admin --config ENV ARGS``: CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "bitelab.admin", "--config", str(env_path), *args],
        capture_output=True,
        text=True,
        env=repo_env(),
        timeout=60,
        check=False,
        **kwargs,
    )


def one_line(result):
    """The single line ``result`` wrote on standard error."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def lab_dir(tmp_path, extra=""):
    """A .env and board file in ``tmp_path``; the .env path."""
    (tmp_path / "b.ucl").write_text(BOARDS)
    (tmp_path / "b.ucl").chmod(0o640)
    env = tmp_path / ".env"
    env.write_text(
        "db_file=db\nboard_conf=b.ucl\nhttp_endpoint=tcp:0:interface=127.0.0.1\n"
        f"ssh_endpoint=tcp:0:interface=127.0.0.1\n{extra}"
    )
    return env


def damage(path, table):
    """Overwrite the root page of ``table`` in the SQLite file ``path``."""
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
    ).fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\x0d\xff garbage " * (page_size // 10))


@pytest.mark.parametrize("table", ["boards", "tokens"])
def test_damaged_database_at_start_is_one_line(tmp_path, table):
    """A database damaged anywhere stops the server at start with one line
    and exit status 1, and `check` says so too."""
    env = lab_dir(tmp_path)
    assert admin(env, "token", "alice").returncode == 0
    damage(tmp_path / "db", table)
    result = subprocess.run(
        twistd_command("--nodaemon", "--pidfile=", "bitelab", "--config", str(env)),
        cwd=tmp_path,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"bitelab: {tmp_path}/db: ") and "damaged" in line
    check = admin(env, "check")
    assert check.returncode == 1 and "the database is damaged" in one_line(check)


def test_admin_on_a_locked_database(tmp_path):
    """While another process holds the database's write lock, each command
    that writes gives one line and exit status 3, and changes nothing."""
    env = lab_dir(tmp_path)
    first = admin(env, "token", "alice").stdout.strip()
    holder = sqlite3.connect(tmp_path / "db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        for command in (("token", "bob"), ("revoke", "alice"), ("lock", "alice")):
            result = admin(env, *command)
            assert result.returncode == 3, result.stderr
            assert one_line(result) == (
                f"bitelab-admin: {tmp_path}/db: the database is locked by "
                "another process; try again; nothing was changed"
            )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    events = admin(env, "events").stdout
    assert events.count("token_issue") == 1 and "token_revoke" not in events
    assert "user_lock" not in events
    assert first.startswith("bl_")


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs root to mount a small file system in a mount namespace",
)
def test_admin_on_a_full_disk(tmp_path):
    """On a file system with no room for the database to grow, a command
    gives one line and exit status 3, and the audit log is as before."""
    state = tmp_path / "state"
    state.mkdir()
    env = lab_dir(tmp_path)
    env.write_text(env.read_text().replace("db_file=db", "db_file=state/db"))
    command = " ".join(
        shlex.quote(part)
        for part in [sys.executable, "-m", "bitelab.admin", "--config", str(env)]
    )
    fill = shlex.quote(str(state / "fill"))
    script = (
        f"mount -t tmpfs -o size=256k tmpfs {shlex.quote(str(state))} && "
        f"{command} token alice >/dev/null && "
        # fill the file system, then leave less room than a write needs
        f"{{ dd if=/dev/zero of={fill} bs=4k 2>/dev/null; true; }} && "
        f"truncate -s -40k {fill} && "
        f"{{ {command} token bob; echo status=$?; {command} events; }}"
    )
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=repo_env(),
        timeout=120,
        check=False,
    )
    assert "status=3" in result.stdout, result.stdout + result.stderr
    assert one_line(result) == (
        f"bitelab-admin: {state}/db: the disk holding the database is full; "
        "free some space; nothing was changed"
    )
    assert result.stdout.count("token_issue") == 1


def test_endpoint_out_of_range_fails_check_and_start(tmp_path):
    """http_endpoint=tcp:99999 fails `check` (2) and the server's start (1),
    each with one line."""
    env = lab_dir(tmp_path)
    env.write_text(env.read_text().replace("tcp:0:", "tcp:99999:", 1))
    check = admin(env, "check")
    assert check.returncode == 2
    assert "http_endpoint" in one_line(check) and "'99999'" in one_line(check)
    start = subprocess.run(
        twistd_command("--nodaemon", "--pidfile=", "bitelab", "--config", str(env)),
        cwd=tmp_path,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert start.returncode == 1 and "'99999'" in one_line(start)


def test_check_flags_what_will_fail(tmp_path):
    """`check` names a busy port (exit 1), and warns about a missing serial
    device or GPIO chip, unusable key files and a board file others can
    read (warnings alone exit 0)."""
    env = lab_dir(tmp_path)
    (tmp_path / "b.ucl").write_text(
        "classes { c { arch = x; } } boards [\n"
        "{ name = s; brdclass = c; options = [ { cls = serialconsole, "
        f'val = "{tmp_path}/ttyNONE" }} ] }},\n'
        "{ name = g; brdclass = c; options = [ { cls = gpiopower, "
        f'chip = "{tmp_path}/gpiochip9", line = 3 }} ] }},\n]\n'
    )
    (tmp_path / "b.ucl").chmod(0o644)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "carol.pub").symlink_to(tmp_path / "nowhere")
    (keys / "dave.pub").write_text("not a key\n")
    result = admin(env, "check")
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert all(w.startswith("bitelab-admin: warning: ") for w in warnings)
    text = "\n".join(warnings)
    assert f"{tmp_path}/b.ucl is readable by every user" in text
    assert f"board s: serial console {tmp_path}/ttyNONE does not exist" in text
    assert f"board g: GPIO chip {tmp_path}/gpiochip9 does not exist" in text
    assert f"SSH key file {keys}/carol.pub: cannot read" in text
    assert f"SSH key file {keys}/dave.pub: no usable public key" in text
    assert len(warnings) == 5
    assert "5 warnings" in result.stdout
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.write_text(env.read_text().replace("tcp:0:", f"tcp:{port}:", 1))
        busy = admin(env, "check")
    assert busy.returncode == 1
    assert (
        f"bitelab-admin: http_endpoint tcp:{port}:interface=127.0.0.1: cannot "
        f"listen on 127.0.0.1:{port}: Address already in use" in busy.stderr
    )
    (tmp_path / "b.ucl").write_text(BOARDS)
    (tmp_path / "b.ucl").chmod(0o640)
    os.unlink(keys / "carol.pub")
    os.unlink(keys / "dave.pub")
    env.write_text(env.read_text().replace(f"tcp:{port}:", "tcp:0:", 1))
    clean = admin(env, "check")
    assert (clean.returncode, clean.stderr) == (0, "")
    assert clean.stdout == f"{env}: ok (1 classes, 1 boards)\n"


def test_check_flags_a_file_limit_too_low(tmp_path):
    """Under an open-file limit below what the connection caps need, `check`
    says so (exit 1); lowering the caps fixes it."""
    env = lab_dir(tmp_path)
    limited = ["prlimit", "--nofile=300", "--"]
    result = subprocess.run(
        limited
        + [sys.executable, "-m", "bitelab.admin", "--config", str(env), "check"],
        capture_output=True,
        text=True,
        env=repo_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "the open-file limit here (300) is below the 832" in one_line(result)
    env.write_text(
        env.read_text() + "http_max_connections=20\nssh_max_unauthenticated=20\n"
    )
    result = subprocess.run(
        limited
        + [sys.executable, "-m", "bitelab.admin", "--config", str(env), "check"],
        capture_output=True,
        text=True,
        env=repo_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_lock_shuts_a_user_out_and_unlock_lets_them_in(tmp_path):
    """`bitelab-admin lock USER` revokes every token and sets the key aside:
    API calls fail, and SSH gives neither a token nor a login; `unlock`
    restores the key and SSH gives a token again."""
    server = LabServer(tmp_path / "lab", users=("alice", "bob")).start()
    known = tmp_path / "known_hosts"
    try:
        token = server.token("alice")
        assert run_ssh(server, "alice", "lab", known).returncode == 0
        locked = server.admin("lock", "alice")
        assert locked.returncode == 0, locked.stderr
        assert locked.stdout.startswith("locked out alice: revoked 2 tokens, key file")
        assert not os.path.exists(os.path.join(server.keys_dir, "alice.pub"))
        wait_for(
            lambda: server.request("GET", "/api/v1/whoami", token=token)[0] == 401,
            what="alice's token to stop working",
        )
        # at once, before the server has seen the key go
        refused = run_ssh(server, "alice", "lab", known)
        assert refused.returncode in (1, 255) and not refused.stdout
        if refused.returncode == 1:
            assert refused.stderr.decode().strip() == (
                "bitelab: alice is locked out of this lab; ask the lab admin"
            )
        wait_for(
            lambda: b"Permission denied"
            in run_ssh(server, "alice", "lab", known).stderr,
            what="alice's key to be refused",
        )
        assert server.admin("token", "alice").returncode == 1
        assert run_ssh(server, "bob", "lab", known).returncode == 0
        unlocked = server.admin("unlock", "alice")
        assert unlocked.returncode == 0
        assert "restored" in unlocked.stdout
        again = wait_for(
            lambda: (r := run_ssh(server, "alice", "lab", known)).returncode == 0 and r,
            what="alice's key to be accepted again",
        )
        assert again.stdout.decode().startswith("bl_")
        events = server.admin("events").stdout
        assert "user_lock" in events and "user_unlock" in events
    finally:
        server.stop()
