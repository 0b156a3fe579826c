"""A real ``twistd -n bitelab`` process on a temporary lab, for end-to-end tests.

``LabServer`` writes a ``.env``, a board file and users' SSH keys into a
directory, starts the server on free loopback ports, waits until its HTTP
API answers, and mints tokens with ``bitelab-admin``.  ``stop``, ``kill``
(SIGKILL) and ``start`` again allow restart tests on the same state.
"""

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from support.tls import self_signed

#: the source tree; subprocesses import bitelab (and the twistd plugin) from it
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_BOARDS = """
classes {
    zynq = { arch = arm-armv7; }
    pine = { arch = arm64-aarch64; }
}
boards [
    { name = zynq-1; brdclass = zynq; options = [] },
    { name = zynq-2; brdclass = zynq; options = [] },
    { name = zynq-3; brdclass = zynq; options = [] },
    { name = pine-1; brdclass = pine; options = [ { cls = timeout, val = 600 } ] },
]
"""


def twistd_command(*args):
    """argv running this Python's ``twistd`` with ``args``."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    return [sys.executable, script, *args]


def repo_env(extra=None):
    """The environment for a subprocess running this tree's bitelab."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def free_port(kind=socket.SOCK_STREAM):
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    """Poll ``predicate`` until it returns a true value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class LabServer:
    """A bitelab server in a subprocess; see the module docstring."""

    def __init__(
        self,
        directory,
        boards=DEFAULT_BOARDS,
        settings=None,
        users=(),
        admins=("root",),
        cacert=None,
        max_files=None,
        tls=False,
    ):
        self.dir = str(directory)
        # the server's open-file limit (soft and hard), if not inherited
        self.max_files = max_files
        os.makedirs(self.dir, exist_ok=True)
        self.http_port = free_port()
        self.ssh_port = free_port()
        #: with a CA file, the settings serve HTTPS and requests check it so;
        #: with ``tls`` alone the test trusts its own server's certificate
        self.cacert = cacert
        scheme = "https" if tls or cacert else "http"
        self.url = f"{scheme}://127.0.0.1:{self.http_port}"
        self._tls_context = ssl._create_unverified_context() if tls else None
        self.env_path = os.path.join(self.dir, ".env")
        self.keys_dir = os.path.join(self.dir, "keys")
        os.makedirs(self.keys_dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "twistd.log")
        self.process = None
        self.write_boards(boards)
        if tls:
            key, cert = self_signed(Path(self.dir), "server-tls")
        values = {
            "db_file": "bitelab.sqlite",
            "board_conf": "boards.ucl",
            "http_endpoint": (
                f"ssl:{self.http_port}:interface=127.0.0.1:privateKey={key}"
                f":certKey={cert}"
                if tls
                else f"tcp:{self.http_port}:interface=127.0.0.1"
            ),
            "ssh_endpoint": f"tcp:{self.ssh_port}:interface=127.0.0.1",
            "ssh_host_key": "ssh_host_ed25519_key",
            "ssh_keys_dir": "keys",
            "console_log_dir": "console",
            "http_access_log": "access.log",
            "admins": ",".join(admins),
            "expiry_interval": "0.2",
            "power_cycle_pause": "0.1",
        }
        values.update(settings or {})
        if "db_url" in values:
            del values["db_file"]
        with open(self.env_path, "w") as f:
            f.writelines(f"{key}={value}\n" for key, value in values.items())
        for user in users:
            self.add_user(user)

    def write_boards(self, text):
        """Replace the board file (takes effect at the next start)."""
        with open(os.path.join(self.dir, "boards.ucl"), "w") as f:
            f.write(text)

    def add_user(self, user):
        """Make an ed25519 key pair for ``user`` and install its public key."""
        key = os.path.join(self.dir, f"id_{user}")
        if not os.path.exists(key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", user, "-f", key],
                check=True,
            )
        with (
            open(key + ".pub") as src,
            open(os.path.join(self.keys_dir, f"{user}.pub"), "w") as dst,
        ):
            dst.write(src.read())
        return key

    def key(self, user):
        """Path of ``user``'s private key."""
        return os.path.join(self.dir, f"id_{user}")

    def start(self, timeout=30.0):
        """Start twistd and wait until ``/api/v1/info`` answers."""
        assert self.process is None or self.process.poll() is not None
        # prlimit (util-linux) sets the limit and execs the server in its place
        limit = (
            ["prlimit", f"--nofile={self.max_files}", "--"] if self.max_files else []
        )
        self.process = subprocess.Popen(
            limit
            + twistd_command(
                "--nodaemon",
                "--pidfile=",
                f"--logfile={self.log_path}",
                "bitelab",
                "--config",
                self.env_path,
            ),
            cwd=self.dir,
            env=repo_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        def ready():
            if self.process.poll() is not None:
                out = self.process.stdout.read().decode(errors="replace")
                raise AssertionError(f"server exited: {out}\n{self.log()}")
            try:
                self.get("/api/v1/info", token=None)
                return True
            except OSError:
                return False

        try:
            wait_for(ready, timeout, what="bitelab server to answer")
        except BaseException:
            # a server that never answered must not outlive the test
            self.kill()
            raise
        return self

    def log(self):
        """The server's log so far."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        """SIGTERM and wait; returns the exit status."""
        return self._end(signal.SIGTERM)

    def kill(self):
        """SIGKILL, as a crash would; returns the exit status."""
        return self._end(signal.SIGKILL)

    def _end(self, sig):
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            status = self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait(10)
        self.process.stdout.close()
        return status

    def admin(self, *args):
        """Run ``bitelab-admin --config .env ARGS``; CompletedProcess."""
        return subprocess.run(
            [sys.executable, "-m", "bitelab.admin", "--config", self.env_path, *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env=repo_env(),
        )

    def token(self, user):
        """A fresh API token for ``user``."""
        result = self.admin("token", user)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def request(self, method, path, body=None, token=None, raw=None, headers=None):
        """(status, parsed JSON or text) of one HTTP request."""
        data = (
            raw
            if raw is not None
            else (None if body is None else json.dumps(body).encode())
        )
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            context = self._tls_context
            if self.cacert:
                context = ssl.create_default_context(cafile=self.cacert)
            with urllib.request.urlopen(req, timeout=30, context=context) as response:
                status, payload, kind = (
                    response.status,
                    response.read(),
                    response.headers.get("Content-Type", ""),
                )
        except urllib.error.HTTPError as e:
            status, payload, kind = e.code, e.read(), e.headers.get("Content-Type", "")
        if kind.startswith("application/json"):
            return status, json.loads(payload)
        return status, payload

    def get(self, path, token=None):
        """GET that must succeed; the parsed JSON."""
        status, payload = self.request("GET", path, token=token)
        if status != 200:
            raise AssertionError(f"GET {path}: {status} {payload}")
        return payload

    def ssh_console(self, user, board, stdin=subprocess.DEVNULL):
        """The OpenSSH client attached to ``board``'s console as ``user``
        (straight to the SSH port, host key not checked); a Popen with its
        output piped."""
        return subprocess.Popen(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                self.key(user),
                "-p",
                str(self.ssh_port),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-l",
                board,
                "127.0.0.1",
            ],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def follow_console(self, board, token):
        """A ``curl`` process following ``board``'s console (``?follow=1``)."""
        return subprocess.Popen(
            [
                "curl",
                "-sN",
                "-H",
                f"Authorization: Bearer {token}",
                f"{self.url}/api/v1/boards/{board}/console?follow=1",
            ],
            stdout=subprocess.PIPE,
        )

    def client_env(self, token):
        """Environment for running the ``bitelab`` CLI against this server."""
        return repo_env({"BITELAB_URL": self.url, "BITELAB_AUTH": token or ""})
