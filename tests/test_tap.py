"""``twistd bitelab`` start-up: broken configuration is one line and a non-zero exit."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from support.server import LabServer, repo_env, twistd_command, wait_for


def read(path):
    with open(path) as f:
        return f.read()


def twistd(config, cwd):
    return subprocess.run(
        twistd_command("--nodaemon", "--pidfile=", "bitelab", "--config", config),
        cwd=cwd,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "env, boards, needle",
    [
        (
            "db_file=db\nboard_conf=b.ucl\nhttp_endpoint=tcp:0\nssh_endpoint=tcp:0\nbogus=1\n",
            "classes { c { arch = x; } }",
            "unknown key 'bogus'",
        ),
        (
            "board_conf=b.ucl\n",
            "classes { c { arch = x; } }",
            "set exactly one of db_file (SQLite) and db_url",
        ),
        ("db_file=db\nboard_conf=b.ucl\n", "classes { c { arch = x; }", "b.ucl:1:"),
        (
            "db_file=db\nboard_conf=b.ucl\n",
            "classes { c { arch = x; } } boards [ {name = a; brdclass = c;}, {name = a; brdclass = c;} ]",
            "board 'a': defined more than once",
        ),
        (
            "db_file=db\nboard_conf=b.ucl\n",
            "classes { c { arch = x; } } boards [ {name = a; brdclass = d;} ]",
            "unknown brdclass 'd'",
        ),
        (
            "db_file=db\nboard_conf=b.ucl\n",
            "classes { c { arch = x; } } boards [ {name = a; brdclass = c; options = [ {cls = snmpower} ]} ]",
            "unknown cls 'snmpower'",
        ),
        ("db_file=db\nboard_conf=missing.ucl\n", "", "missing.ucl:1:1: cannot read"),
        (
            "db_file=/proc/nope/db\nboard_conf=b.ucl\n",
            "classes { c { arch = x; } } boards [ { name = a; brdclass = c; } ]",
            "cannot open database",
        ),
    ],
)
def test_broken_configuration_is_one_line(tmp_path, env, boards, needle):
    """Each broken .env or board file stops twistd with one clear line and exit status 1."""
    (tmp_path / ".env").write_text(env)
    (tmp_path / "b.ucl").write_text(boards)
    result = twistd(str(tmp_path / ".env"), tmp_path)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bitelab: ") and needle in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "db").exists() or "db_file" in needle


def test_default_config_is_dot_env_and_host_key_is_kept(tmp_path):
    """Without --config the server reads ./.env; the SSH host key is made once and kept."""
    server = LabServer(tmp_path)
    key = os.path.join(server.dir, "ssh_host_ed25519_key")
    server.start()
    try:
        first = read(key)
        assert "OPENSSH PRIVATE KEY" in first
        assert os.stat(key).st_mode & 0o777 == 0o600
    finally:
        server.stop()
    server.start()
    try:
        assert read(key) == first
    finally:
        server.stop()
    process = subprocess.Popen(
        twistd_command("--nodaemon", "--pidfile=", "bitelab"),
        cwd=server.dir,
        env=repo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server.process = process
    try:

        def up():
            try:
                return server.get("/api/v1/info")["name"] == "bitelab"
            except OSError:
                return False

        wait_for(up, what="server started with ./.env")
    finally:
        server.stop()


def test_plugin_is_found_and_imports_nothing_heavy():
    """twistd finds the plugin; loading it imports neither bitelab nor the reactor."""
    code = (
        "import sys\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "names = [p.tapname for p in getPlugins(IServiceMaker)]\n"
        "print('bitelab' in names)\n"
        "print('twisted.internet.reactor' in sys.modules)\n"
        "print(sorted(m for m in sys.modules if m.startswith('bitelab')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split("\n")[:3] == ["True", "False", "[]"]


def test_port_in_use_is_one_line(tmp_path):
    """A port already taken stops the server with one line naming it, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "b.ucl").write_text(
            "classes { c { arch = x; } } boards [ { name = a; brdclass = c; } ]"
        )
        (tmp_path / ".env").write_text(
            f"db_file=db\nboard_conf=b.ucl\nhttp_endpoint=tcp:{port}:interface=127.0.0.1\n"
            "ssh_endpoint=tcp:0:interface=127.0.0.1\n"
        )
        result = twistd(str(tmp_path / ".env"), tmp_path)
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"bitelab: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert "Traceback" not in result.stdout + result.stderr


def test_broken_host_key_is_one_line(tmp_path):
    """A host key file that is not a key stops the server with one line."""
    (tmp_path / "b.ucl").write_text(
        "classes { c { arch = x; } } boards [ { name = a; brdclass = c; } ]"
    )
    (tmp_path / "hk").write_text("garbage\n")
    (tmp_path / ".env").write_text(
        "db_file=db\nboard_conf=b.ucl\nssh_host_key=hk\n"
        "http_endpoint=tcp:0:interface=127.0.0.1\nssh_endpoint=tcp:0:interface=127.0.0.1\n"
    )
    result = twistd(str(tmp_path / ".env"), tmp_path)
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"bitelab: ssh_host_key {tmp_path}/hk"
    )
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "bitelab.admin",
            "--config",
            str(tmp_path / ".env"),
            "check",
        ],
        env=repo_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 2 and "ssh_host_key" in check.stderr


def test_server_log_is_private_even_with_logfile(tmp_path):
    """`twistd --logfile` writes a log readable by the server's user only:
    a new one, one left world-readable by an earlier run, and the new file
    after a rotation (SIGUSR1)."""
    server = LabServer(tmp_path)
    with open(server.log_path, "w") as f:
        f.write("an earlier run\n")
    os.chmod(server.log_path, 0o644)
    server.start()
    try:
        assert os.stat(server.log_path).st_mode & 0o777 == 0o600
        assert "an earlier run" in server.log()
        server.process.send_signal(signal.SIGUSR1)
        wait_for(
            lambda: os.path.exists(server.log_path + ".1"),
            what="the log to rotate",
        )
        server.get("/api/v1/info")
        wait_for(lambda: os.path.exists(server.log_path), what="a new log file")
        assert os.stat(server.log_path).st_mode & 0o777 == 0o600
        assert os.stat(server.log_path + ".1").st_mode & 0o777 == 0o600
    finally:
        server.stop()


def test_file_limit_too_low_is_one_line(tmp_path):
    """Under an open-file limit the connection caps do not fit in, the
    server stops at start with one line saying what to change."""
    (tmp_path / "b.ucl").write_text(
        "classes { c { arch = x; } } boards [ { name = a; brdclass = c; } ]"
    )
    (tmp_path / ".env").write_text(
        "db_file=db\nboard_conf=b.ucl\nhttp_endpoint=tcp:0:interface=127.0.0.1\n"
        "ssh_endpoint=tcp:0:interface=127.0.0.1\nhttp_max_connections=2000\n"
    )
    result = subprocess.run(
        ["prlimit", "--nofile=1024", "--"]
        + twistd_command(
            "--nodaemon", "--pidfile=", "bitelab", "--config", str(tmp_path / ".env")
        ),
        cwd=tmp_path,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines == [
        (
            "bitelab: the open-file limit (1024) is below the 2320 descriptors "
            "http_max_connections + ssh_max_unauthenticated + 256 need; lower "
            "them or raise the limit (ulimit -n, LimitNOFILE=)"
        )
    ]
