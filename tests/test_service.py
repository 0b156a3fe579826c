"""Running bitelab as a service: the shipped unit files and rc.d script.

``systemd-analyze verify`` checks the systemd units (with ``ExecStart``
pointing at this environment's ``twistd``, since the unit names the
installed one), ``sh -n`` the FreeBSD script.  The unit's own command line
then runs a real server on the shipped service configuration (its paths
moved into a temporary directory), reloads it with the unit's
``ExecReload`` signal and stops it as systemd would; and the socket unit's
way of passing sockets is run for real with ``systemd-socket-activate``.
"""

import configparser
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

from support.server import REPO, free_port, repo_env, wait_for

UNITS = os.path.join(REPO, "conf", "systemd")
RC_SCRIPT = os.path.join(REPO, "conf", "freebsd", "bitelab")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
INSTALLED_TWISTD = "/opt/bitelab/bin/twistd"


def unit(name):
    """A unit file's sections (repeated keys keep their last value)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    with open(os.path.join(UNITS, name)) as f:
        parser.read_file(f)
    return parser


def test_systemd_units_verify(tmp_path):
    """``systemd-analyze verify`` finds nothing to say about the service and
    socket units."""
    for name in ("bitelab.service", "bitelab.socket"):
        with open(os.path.join(UNITS, name)) as f:
            text = f.read().replace(INSTALLED_TWISTD, TWISTD)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "bitelab.service", "bitelab.socket"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_service_hardening_keeps_what_jails_need():
    """The unit drops privileges the lab never uses but gives the service no
    mount namespace of its own (the jail script's namespaces, mounts and
    cgroups must be the host's) and does not kill jails when it stops."""
    service = unit("bitelab.service")["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["RestrictSUIDSGID"] == "yes"
    assert service["KillMode"] == "process"
    dropped = service["CapabilityBoundingSet"]
    assert dropped.startswith("~") and "CAP_SYS_MODULE" in dropped
    for needed in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_KILL"):
        assert needed not in dropped
    for namespace_maker in (
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "ReadOnlyPaths",
        "DynamicUser",
    ):
        assert namespace_maker not in service
    assert service.get("User", "root") == "root"


def test_freebsd_rc_script_parses():
    """The rc.d script is valid sh, executable, and reloads with SIGHUP."""
    result = subprocess.run(
        ["sh", "-n", RC_SCRIPT], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert os.access(RC_SCRIPT, os.X_OK)
    with open(RC_SCRIPT) as f:
        text = f.read()
    assert "# PROVIDE: bitelab" in text and "sig_reload=HUP" in text


def service_layout(tmp_path, **settings):
    """conf/systemd/bitelab.env with its directories moved under ``tmp_path``
    and free ports; the path of the .env."""
    moved = {
        "/etc/bitelab": tmp_path / "etc",
        "/var/lib/bitelab": tmp_path / "lib",
        "/var/log/bitelab": tmp_path / "log",
    }
    for directory in moved.values():
        directory.mkdir(mode=0o700)
    with open(os.path.join(UNITS, "bitelab.env")) as f:
        text = f.read()
    for old, new in moved.items():
        text = text.replace(old, str(new))
    ports = {key: free_port() for key in ("http", "ssh", "metrics")}
    text = text.replace("http_endpoint=tcp:8080", f"http_endpoint=tcp:{ports['http']}")
    text = text.replace("ssh_endpoint=tcp:2222", f"ssh_endpoint=tcp:{ports['ssh']}")
    text = text.replace("tcp:9464:", f"tcp:{ports['metrics']}:")
    for key, value in settings.items():
        text += f"{key}={value}\n"
    shutil.copy(os.path.join(REPO, "conf", "boards.ucl"), moved["/etc/bitelab"])
    env = moved["/etc/bitelab"] / "bitelab.env"
    env.write_text(text)
    return str(env), moved, ports


@pytest.mark.e2e
def test_the_units_command_line_serves_reloads_and_stops(tmp_path):
    """ExecStart as the unit has it (logging to standard output, for the
    journal) serves the API and the metrics on the shipped configuration;
    ExecReload's SIGHUP reloads; SIGTERM (systemd's stop) ends it."""
    env_path, moved, ports = service_layout(tmp_path)
    service = unit("bitelab.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == INSTALLED_TWISTD
    argv = [sys.executable, TWISTD] + [
        env_path if arg == "/etc/bitelab/bitelab.env" else arg for arg in argv[1:]
    ]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    output = open(tmp_path / "journal", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        argv,
        cwd=moved["/var/lib/bitelab"],
        env=repo_env(),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers(url):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.read()
            except OSError:
                assert process.poll() is None, (tmp_path / "journal").read_text()
                return None

        info = wait_for(
            lambda: answers(f"http://127.0.0.1:{ports['http']}/api/v1/info"),
            what="the API",
        )
        assert b'"name": "lab"' in info
        assert b"bitelab_boards" in answers(
            f"http://127.0.0.1:{ports['metrics']}/metrics"
        )
        process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: b"reloaded: no board changed"
            in (tmp_path / "journal").read_bytes(),
            what="the reload",
        )
        process.send_signal(signal.SIGTERM)
        # twistd ends by the signal it was stopped with, which systemd
        # counts as a clean stop
        assert process.wait(30) == -signal.SIGTERM
        assert b"Server Shut Down." in (tmp_path / "journal").read_bytes()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.close()
    for name in ("bitelab.sqlite", "ssh_host_ed25519_key"):
        path = moved["/var/lib/bitelab"] / name
        assert oct(path.stat().st_mode & 0o777) == "0o600", name
    access = moved["/var/log/bitelab"] / "access.log"
    assert oct(access.stat().st_mode & 0o777) == "0o600"


@pytest.mark.e2e
def test_socket_activation(tmp_path):
    """With sockets passed the way the socket unit passes them (here by
    ``systemd-socket-activate``), the server serves HTTP and SSH on them;
    started without them, it stops with one line saying so."""
    env_path, moved, ports = service_layout(tmp_path)
    with open(env_path) as f:
        text = f.read()
    text = text.replace(
        f"http_endpoint=tcp:{ports['http']}",
        "http_endpoint=systemd:domain=INET:index=0",
    ).replace(
        f"ssh_endpoint=tcp:{ports['ssh']}", "ssh_endpoint=systemd:domain=INET:index=1"
    )
    with open(env_path, "w") as f:
        f.write(text)
    command = [
        sys.executable,
        TWISTD,
        "--nodaemon",
        "--pidfile=",
        "--logfile=-",
        "bitelab",
        "--config",
        env_path,
    ]
    alone = subprocess.run(
        command,
        cwd=moved["/var/lib/bitelab"],
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert alone.returncode == 1
    assert alone.stderr == (
        "bitelab: http_endpoint: systemd:domain=INET:index=0: systemd passed no "
        "such socket; start the server through its .socket unit, or listen on "
        "tcp:PORT\n"
    )
    # the configuration itself is fine outside systemd
    check = subprocess.run(
        [sys.executable, "-m", "bitelab.admin", "--config", env_path, "check"],
        env=repo_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    output = open(tmp_path / "journal", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            "systemd-socket-activate",
            # it passes on only the environment it is told to
            "--setenv=PYTHONPATH",
            # as systemd names them: after the socket unit
            "--fdname=bitelab.socket:bitelab.socket",
            "-l",
            f"127.0.0.1:{ports['http']}",
            "-l",
            f"127.0.0.1:{ports['ssh']}",
            *command,
        ],
        cwd=moved["/var/lib/bitelab"],
        env=repo_env(),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:

        def info():
            try:
                url = f"http://127.0.0.1:{ports['http']}/api/v1/info"
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.read()
            except OSError:
                assert process.poll() is None, (tmp_path / "journal").read_text()
                return None

        answer = wait_for(info, what="the API on the passed socket")
        assert f'"ssh_port": {ports["ssh"]}'.encode() in answer
        keyscan = subprocess.run(
            ["ssh-keyscan", "-p", str(ports["ssh"]), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "ssh-ed25519" in keyscan.stdout, keyscan.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output.close()
