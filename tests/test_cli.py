"""Tests of the ``bitelab`` command-line client.

The first part runs the client's dispatch in-process against a small Klein app
that follows the API contract, through ``treq.testing.StubTreq`` and a
``task.Clock``. The second part runs the installed ``bitelab`` console script
as a subprocess: against a real server, against sockets that misbehave in the
ways networks do, and (for ``contssh``) against a local TCP server.
"""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path

import attrs
import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet import defer, error, task

from bitelab.client import cli, render
from bitelab.client import settings as settings_module
from bitelab.client.http import LabAPI
from bitelab.client.render import Moment
from bitelab.client.settings import ConfigProblem, Settings, load_settings
from support.server import REPO, LabServer

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
LATER = "2027-01-15T08:12:00+00:00"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBitelabTestKeyOnlyForTestsXXXXXXXXXXXXXXXX t@h"


# --- a contract-following fake of the HTTP API --------------------------------


@attrs.define
class FakeLab:
    """A Klein app that answers like the bitelab API and records each request."""

    tokens: dict = attrs.Factory(lambda: {"tok-alice": "alice", "tok-root": "root"})
    boards: dict = attrs.Factory(dict)
    events: list = attrs.Factory(list)
    #: action -> error code the server fails that action with (status 502)
    failures: dict = attrs.Factory(dict)
    app = Klein()

    def __attrs_post_init__(self):
        for name, cls in [("cora-1", "cora-z7s"), ("cora-2", "cora-z7s")]:
            self.boards[name] = {
                "name": name,
                "class": cls,
                "arch": "arm-armv7",
                "state": "free",
                "holder": None,
                "reserved_at": None,
                "expires_at": None,
                "attrs": {"power": "off"},
            }

    def _error(self, request, status, code, message):
        request.setResponseCode(status)
        request.setHeader("Content-Type", "application/json")
        return json.dumps({"error": {"code": code, "message": message}})

    def _json(self, request, document):
        request.setHeader("Content-Type", "application/json")
        return json.dumps(document)

    def _user(self, request):
        header = request.getHeader("Authorization") or ""
        return self.tokens.get(header.removeprefix("Bearer "))

    def _body(self, request):
        raw = request.content.read()
        return json.loads(raw) if raw else {}

    @app.route("/api/v1/info", methods=["GET"])
    def info(self, request):
        """Server facts, without a token."""
        return self._json(request, {"name": "fake", "version": "0", "ssh_port": 1})

    @app.route("/api/v1/<path:rest>", branch=False)
    def api(self, request, rest):
        """Every call that needs a token."""
        user = self._user(request)
        method = request.method.decode()
        body = self._body(request) if method == "POST" else None
        self.events.append((method, rest, user, body))
        if user is None:
            return self._error(request, 401, "unauthorized", "bad or revoked token")
        parts = rest.split("/")
        if rest == "whoami":
            return self._json(request, {"user": user, "admin": user == "root"})
        if rest == "classes":
            free = sum(b["state"] == "free" for b in self.boards.values())
            classes = [{"name": "cora-z7s", "arch": "arm-armv7", "boards": 2}]
            classes[0]["free"] = free
            return self._json(request, {"classes": classes})
        if rest == "boards":
            return self._json(request, {"boards": list(self.boards.values())})
        if parts[0] != "boards" or len(parts) not in (2, 3):
            return self._error(request, 404, "not_found", f"no such call: {rest}")
        name = parts[1]
        if name == "cora-z7s" and parts[2:] == ["reserve"]:
            free = [n for n, b in self.boards.items() if b["state"] == "free"]
            if not free:
                return self._error(request, 409, "unavailable", "no cora-z7s is free")
            name = free[0]
        board = self.boards.get(name)
        if board is None:
            return self._error(request, 404, "not_found", f"no board named {name}")
        if len(parts) == 2:
            return self._json(request, board)
        action = parts[2]
        if action in self.failures:
            code = self.failures[action]
            return self._error(request, 502, code, f"{action} of {name} failed")
        if action == "reserve":
            if board["state"] != "free":
                text = f"{name} is reserved by {board['holder']}"
                return self._error(request, 409, "unavailable", text)
            board.update(state="reserved", holder=user, expires_at=LATER)
            board["attrs"] = {"power": "on", "ip": "10.0.0.5", "ssh_port": "22"}
            return self._json(request, board)
        if action == "release":
            if board["holder"] != user and not body.get("force"):
                return self._error(request, 403, "forbidden", f"you do not hold {name}")
            board.update(state="free", holder=None, expires_at=None)
            board["attrs"] = {"power": "off"}
            return self._json(request, board)
        if action == "attrs":
            if "power" in body:
                board["attrs"]["power"] = body["power"]
            return self._json(request, board)
        return self._error(request, 404, "not_found", f"no such call: {rest}")


@attrs.define
class Run:
    """The outcome of one in-process command."""

    status: int
    out: str
    err: str


def run_inprocess(lab, argv, token="tok-alice", environ=None, client=None, tz=UTC):
    """Parse ``argv`` like ``bitelab`` does and dispatch it to ``lab``."""
    args = cli.build_parser().parse_args(argv)
    settings = Settings(url="http://lab.test", token=token)
    clock = task.Clock()
    clock.advance(NOW)
    stub = StubTreq(lab.app.resource()) if client is None else None
    api = LabAPI(client or stub, settings.url, token, clock, args.http_timeout)
    out, err = io.StringIO(), io.StringIO()
    environ = {"HOME": "/nonexistent"} if environ is None else environ
    d = defer.Deferred.fromCoroutine(
        cli.dispatch(api, args, settings, out, err, environ, Moment(NOW, tz))
    )
    if stub is not None:
        stub.flush()
    else:
        clock.advance(args.http_timeout + 1)
    assert d.called, "the command did not finish"
    return Run(d.result, out.getvalue(), err.getvalue())


@pytest.fixture(name="lab")
def fake_lab():
    """A fresh fake API with two free boards of class cora-z7s."""
    return FakeLab()


# --- in-process: parsing, rendering and error mapping --------------------------


def test_list_table(lab):
    """``list`` prints one aligned row per board with state, holder and power."""
    lab.boards["cora-2"].update(state="reserved", holder="bob", expires_at=LATER)
    result = run_inprocess(lab, ["list"])
    assert result.status == 0
    lines = result.out.splitlines()
    assert lines[0].split() == ["BOARD", "CLASS", "STATE", "HOLDER", "EXPIRES", "POWER"]
    assert lines[1].split() == ["cora-1", "cora-z7s", "free", "-", "-", "off"]
    assert lines[2].split() == [
        "cora-2",
        "cora-z7s",
        "reserved",
        "bob",
        "in",
        "12m",
        "off",
    ]
    assert "\x1b" not in result.out


@pytest.mark.parametrize(
    "argv", [["--json", "list"], ["list", "--json"]], ids=["before", "after"]
)
def test_json_before_or_after_command(lab, argv):
    """``--json`` works on either side of the command and prints the API's JSON."""
    result = run_inprocess(lab, argv)
    assert result.status == 0
    assert json.loads(result.out) == {"boards": list(lab.boards.values())}


def test_timeout_option_before_command_survives():
    """A ``--http-timeout`` before the command name is not reset by the sub-command."""
    args = cli.build_parser().parse_args(["--http-timeout", "5", "--json", "list"])
    assert (args.http_timeout, args.json) == (5.0, True)
    args = cli.build_parser().parse_args(["list"])
    assert (args.http_timeout, args.json) == (cli.DEFAULT_TIMEOUT, False)


def test_classes_free_total(lab):
    """``classes`` shows free/total per class from the API's counts."""
    lab.boards["cora-1"]["state"] = "reserved"
    result = run_inprocess(lab, ["classes"])
    assert result.status == 0
    assert result.out.splitlines()[1].split() == ["cora-z7s", "arm-armv7", "1/2", "-"]


def test_reserve_sends_default_key_and_timeout(lab, tmp_path):
    """``reserve`` sends ~/.ssh/id_ed25519.pub and -t, and prints the attributes."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519.pub").write_text(PUBKEY + "\n")
    result = run_inprocess(
        lab, ["reserve", "-t", "600", "cora-z7s"], environ={"HOME": str(tmp_path)}
    )
    assert result.status == 0, result.err
    assert lab.events[-1] == (
        "POST",
        "boards/cora-z7s/reserve",
        "alice",
        {"sshpubkey": PUBKEY, "timeout": 600},
    )
    assert result.out.startswith("reserved cora-1 (class cora-z7s) until 2027-01-15")
    assert "  ip=10.0.0.5\n" in result.out
    assert "(in 12m)" in result.out


def test_reserve_refuses_private_key(lab, tmp_path):
    """``reserve -i`` of a private key stops locally (exit 2) and sends nothing."""
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    result = run_inprocess(lab, ["reserve", "-i", str(key), "cora-1"])
    assert result.status == 2
    assert "private key" in result.err
    assert lab.events == []


def test_reserve_without_any_key_sends_none(lab):
    """With no key file at all, ``reserve`` sends no ``sshpubkey``."""
    result = run_inprocess(lab, ["reserve", "cora-2"])
    assert result.status == 0
    assert lab.events[-1][3] == {}


def test_set_power_and_timeout(lab):
    """``set`` sends power as a word and timeout as an int in one request."""
    result = run_inprocess(lab, ["set", "power=cycle", "timeout=900", "cora-1"])
    assert result.status == 0
    assert lab.events[-1] == (
        "POST",
        "boards/cora-1/attrs",
        "alice",
        {"power": "cycle", "timeout": 900},
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["set", "power=maybe", "cora-1"],
        ["set", "timeout=soon", "cora-1"],
        ["set", "colour=red", "cora-1"],
        ["set", "cora-1"],
        ["reserve", "-t", "0", "cora-1"],
        ["--http-timeout", "-1", "list"],
    ],
)
def test_bad_usage_exits_2(argv, capsys):
    """Malformed arguments are a usage error: exit 2 with a one-line reason."""
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("bitelab")


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("45s", 45), ("30m", 1800), ("2h", 7200), ("1d", 86400)]
    + [("1h30m", 5400), ("2min", 120), ("1w", 604800)],
)
def test_durations(text, seconds):
    """Durations are seconds, or numbers with s, m/min, h, d or w, combined."""
    assert cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0m", "2x", "h", "1.5h", "-1h", "2h x"])
def test_bad_durations(text):
    """Anything else is refused with a message."""
    with pytest.raises(ValueError):
        cli.parse_duration(text)


def test_reserve_and_extend_with_durations(lab):
    """``reserve -t 2h`` and ``set timeout=30m`` send seconds."""
    assert run_inprocess(lab, ["reserve", "-t", "2h", "cora-1"]).status == 0
    assert lab.events[-1][3] == {"timeout": 7200}
    assert run_inprocess(lab, ["set", "timeout=30m", "cora-1"]).status == 0
    assert lab.events[-1][3] == {"timeout": 1800}


@pytest.mark.parametrize(
    "action, code, status",
    [("reserve", "setup_failed", 4), ("attrs", "power_failed", 5)]
    + [("release", "internal", 3)],
)
def test_setup_and_power_failures_have_their_own_status(lab, action, code, status):
    """A failed setup script exits 4, a failed power operation 5, other server
    failures 3, each with the server's message on one line."""
    lab.failures[action] = code
    argv = {"reserve": ["reserve", "cora-1"], "attrs": ["set", "power=on", "cora-1"]}
    result = run_inprocess(lab, argv.get(action, ["release", "cora-1"]))
    assert result.status == status
    assert result.err == f"bitelab: server error ({code}): {action} of cora-1 failed\n"


def test_times_in_local_zone_or_utc(lab):
    """``info`` shows times in the local zone with its name, or UTC."""
    from zoneinfo import ZoneInfo

    lab.boards["cora-1"].update(state="reserved", holder="alice", expires_at=LATER)
    paris = run_inprocess(lab, ["info", "cora-1"], tz=ZoneInfo("Europe/Paris"))
    assert "expires:  2027-01-15 09:12:00 CET (in 12m)" in paris.out
    utc = run_inprocess(lab, ["info", "cora-1"], tz=UTC)
    assert "expires:  2027-01-15 08:12:00 UTC (in 12m)" in utc.out


def test_list_names_each_boards_host_in_a_lab_of_several_hosts(lab):
    """In a lab of several hosts (boards with a ``host``), ``list`` has a HOST
    column naming the host each board hangs off, and a down host's boards say
    so."""
    lab.boards["cora-1"]["host"] = "host1"
    lab.boards["cora-2"].update(host="host2", host_down=True)
    result = run_inprocess(lab, ["list"])
    lines = result.out.splitlines()
    assert lines[0].split() == [
        "BOARD",
        "CLASS",
        "HOST",
        "STATE",
        "HOLDER",
        "EXPIRES",
        "POWER",
    ]
    assert lines[1].split() == ["cora-1", "cora-z7s", "host1", "free", "-", "-", "off"]
    assert lines[2].split()[:4] == ["cora-2", "cora-z7s", "host2", "(down)"]


def test_list_marks_a_failed_power_operation(lab):
    """A board whose last power operation failed is marked in ``list``."""
    lab.boards["cora-2"]["attrs"]["power_error"] = "switch did not answer"
    result = run_inprocess(lab, ["list"])
    rows = {line.split()[0]: line for line in result.out.splitlines()}
    assert rows["cora-2"].endswith("off (failed)")
    assert rows["cora-1"].endswith("off")
    assert "(failed): the last power operation failed" in result.out


def test_forced_release_with_a_reason(lab):
    """``release -f --reason TEXT`` sends the reason; without -f it is refused
    locally."""
    lab.boards["cora-1"].update(state="reserved", holder="bob")
    result = run_inprocess(lab, ["release", "-f", "--reason", "bench move", "cora-1"])
    assert result.status == 0
    assert lab.events[-1][3] == {"force": True, "reason": "bench move"}
    result = run_inprocess(lab, ["release", "--reason", "why", "cora-1"])
    assert result.status == 2 and "--reason goes with -f" in result.err


def test_refused_maps_to_1_with_api_message(lab):
    """A 409 becomes exit 1 and the API's message, and its JSON with --json."""
    lab.boards["cora-1"].update(state="reserved", holder="bob")
    result = run_inprocess(lab, ["reserve", "cora-1"])
    assert result.status == 1
    assert result.err == "bitelab: cora-1 is reserved by bob (unavailable)\n"
    result = run_inprocess(lab, ["--json", "reserve", "cora-1"])
    assert json.loads(result.out)["error"]["code"] == "unavailable"


def test_bad_token_hints_how_to_get_one(lab):
    """A 401 is exit 1 and tells how to get a new token."""
    result = run_inprocess(lab, ["whoami"], token="stale")
    assert result.status == 1
    assert "bitelab token" in result.err
    assert len(result.err.splitlines()) == 1


@attrs.define
class ScriptedClient:
    """An ``HTTPClient`` stand-in whose requests end as ``outcome`` says."""

    outcome: object

    def request(self, method, url, **kwargs):
        """Fail with the scripted exception, or never answer if it is ``None``."""
        if self.outcome is None:
            return defer.Deferred()
        return defer.fail(self.outcome)


@pytest.mark.parametrize(
    "outcome, text",
    [
        (error.DNSLookupError("lab.test"), "cannot resolve"),
        (error.ConnectionRefusedError(), "connection refused"),
        (None, "timed out"),
    ],
    ids=["dns", "refused", "timeout"],
)
def test_network_failures_map_to_3(lab, outcome, text):
    """DNS failure, refusal and a silent server each give exit 3 and one line."""
    result = run_inprocess(lab, ["list"], client=ScriptedClient(outcome))
    assert result.status == 3
    assert text in result.err
    assert len(result.err.splitlines()) == 1


def test_settings_from_environment():
    """Missing or malformed BITELAB_URL/BITELAB_AUTH say how to fix them."""
    with pytest.raises(ConfigProblem, match="export BITELAB_URL="):
        load_settings({})
    with pytest.raises(ConfigProblem, match="http:// or https://"):
        load_settings({"BITELAB_URL": "lab.example.org:8080"})
    with pytest.raises(ConfigProblem, match=r"BITELAB_AUTH=\$\(bitelab token\)"):
        load_settings({"BITELAB_URL": "http://lab"})
    settings = load_settings({"BITELAB_URL": "http://lab", "BITELAB_AUTH": " t\n"})
    assert settings == Settings(url="http://lab", token="t")


def test_labs_file_settings(tmp_path):
    """A named lab takes URL, token and CA file from the labs file and nothing
    from BITELAB_*; BITELAB_LAB names it too; a lab without a token or an
    unknown lab says what to run."""
    environ = {"HOME": str(tmp_path), "BITELAB_AUTH": "env-token"}
    cert = tmp_path / "ca.pem"
    cert.write_text("x")
    settings_module.add_lab(environ, "north", "https://north:8443", str(cert))
    settings_module.add_lab(environ, "south", "http://south:8080")
    settings_module.save_token(environ, "north", "north-token")
    assert load_settings(environ, "north") == Settings(
        "https://north:8443", "north-token", str(cert), "north"
    )
    with pytest.raises(ConfigProblem, match=r"bitelab --lab south token --save"):
        load_settings(environ, "south")
    assert load_settings({**environ, "BITELAB_LAB": "south"}, need_token=False) == (
        Settings("http://south:8080", None, None, "south")
    )
    with pytest.raises(ConfigProblem, match="no lab named 'west'.*north, south"):
        load_settings(environ, "west")
    settings_module.add_lab(environ, "north", "https://elsewhere:8443")
    assert settings_module.read_labs(environ)["north"]["token"] is None
    path = settings_module.labs_file(environ)
    assert path == tmp_path / ".config" / "bitelab" / "labs.ini"
    assert path.stat().st_mode & 0o777 == 0o600


def test_api_urls_quote_names():
    """Board names are quoted into one path segment under /api/v1."""
    api = LabAPI(client=None, base_url="http://lab:8080/", token="t", clock=None)
    assert api.url("/boards/a%2Fb") == "http://lab:8080/api/v1/boards/a%2Fb"


def test_relative_times():
    """Expiry is shown relative to now, and past times as expired."""
    assert render.relative("2027-01-15T09:05:00Z", NOW) == "in 1h05m"
    assert render.relative("2027-01-15T08:00:30Z", NOW) == "in 30s"
    assert render.relative("2027-01-15T07:00:00Z", NOW) == "expired"
    moment = Moment(NOW, UTC)
    assert render.absolute(LATER, moment) == "2027-01-15 08:12:00 UTC (in 12m)"


# --- subprocess: the installed console script --------------------------------

BITELAB = shutil.which("bitelab", path=str(Path(sys.executable).parent)) or "bitelab"


def bitelab(*argv, url=None, token=None, home=None, path=None, timeout=60, env=None):
    """Run the ``bitelab`` console script of this tree; the ``CompletedProcess``."""
    env = {
        "PATH": path or os.environ["PATH"],
        "HOME": str(home or "/nonexistent"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": REPO,
        **(env or {}),
    }
    if url is not None:
        env["BITELAB_URL"] = url
    if token is not None:
        env["BITELAB_AUTH"] = token
    return subprocess.run(
        [BITELAB, *argv],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_line(result):
    """The single stderr line of a failed command (fails if there are more)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@attrs.define
class ThreadServer:
    """A listening loopback socket whose connections ``handle`` in threads."""

    handle: object
    sock: socket.socket = attrs.field(init=False)
    stopping: threading.Event = attrs.Factory(threading.Event)
    threads: list = attrs.Factory(list)
    conns: list = attrs.Factory(list)

    def __attrs_post_init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self._start(self._accept)

    @property
    def port(self):
        """The port it listens on."""
        return self.sock.getsockname()[1]

    def _start(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            self.conns.append(conn)
            self._start(self._serve, conn)

    def _serve(self, conn):
        try:
            self.handle(conn, self.stopping)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        """Close the listener and every connection and join the threads."""
        self.stopping.set()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def serve():
    """Start ``ThreadServer``s for a test and stop them all afterwards."""
    servers = []

    def start(handle):
        server = ThreadServer(handle)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def read_request(conn):
    """Read one HTTP request head (and body, if any) from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def http_answer(status, body, content_type="application/json"):
    """A handler that answers every request with ``status`` and ``body``."""

    def handle(conn, stopping):
        read_request(conn)
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        conn.sendall(head.encode() + body)

    return handle


def test_closed_port_exits_3(tmp_path):
    """A server that is down (a closed port) is exit 3 with one line."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result = bitelab("list", url=f"http://127.0.0.1:{port}", token="t")
    assert result.returncode == 3
    assert "connection refused" in one_line(result)


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/", "127.0.0.1:8080", "http://"], ids=str
)
def test_bad_url_exits_2(url):
    """A BITELAB_URL that is not http(s) is a local configuration error (exit 2)."""
    result = bitelab("list", url=url, token="t")
    assert result.returncode == 2
    assert "BITELAB_URL" in one_line(result)


def test_missing_environment_exits_2():
    """Without BITELAB_URL or BITELAB_AUTH the message says how to set them."""
    result = bitelab("whoami")
    assert result.returncode == 2
    assert "export BITELAB_URL=" in one_line(result)
    result = bitelab("whoami", url="http://127.0.0.1:9")
    assert result.returncode == 2
    assert "bitelab token" in one_line(result)


def test_silent_server_times_out_with_3(serve):
    """A server that accepts but never answers ends in exit 3 after --http-timeout."""

    def hold(conn, stopping):
        read_request(conn)
        stopping.wait(30)

    server = serve(hold)
    started = time.monotonic()
    result = bitelab(
        "--http-timeout", "1", "list", url=f"http://127.0.0.1:{server.port}", token="t"
    )
    assert result.returncode == 3
    assert "timed out" in one_line(result)
    assert time.monotonic() - started < 15


def test_interrupt_ends_quietly(serve):
    """Ctrl-C while waiting for the server ends the command without any output."""

    def hold(conn, stopping):
        read_request(conn)
        stopping.wait(30)

    server = serve(hold)
    env = {"PATH": os.environ["PATH"], "BITELAB_AUTH": "t", "PYTHONPATH": REPO}
    env["BITELAB_URL"] = f"http://127.0.0.1:{server.port}"
    proc = subprocess.Popen(
        [BITELAB, "list"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: server.conns, "the client to connect")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGINT
    assert (out, err) == (b"", b"")


def wait_until(predicate, what, timeout=20):
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_connection_cut_mid_answer_exits_3(serve):
    """A connection cut in the middle of the answer's body is exit 3."""

    def cut(conn, stopping):
        read_request(conn)
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"boards": [')

    server = serve(cut)
    result = bitelab("list", url=f"http://127.0.0.1:{server.port}", token="t")
    assert result.returncode == 3
    assert "broke" in one_line(result)


def test_connection_closed_before_answer_exits_3(serve):
    """A server that closes the connection without answering is exit 3."""
    server = serve(lambda conn, stopping: read_request(conn))
    result = bitelab("whoami", url=f"http://127.0.0.1:{server.port}", token="t")
    assert result.returncode == 3
    assert "closed before an answer" in one_line(result)


@pytest.mark.parametrize(
    "status, body, code, text",
    [
        (200, b"<html>hello</html>", 3, "not JSON"),
        (502, b"<html>bad gateway</html>", 3, "HTTP 502"),
        (500, b'{"error": {"code": "internal", "message": "db gone"}}', 3, "db gone"),
        (404, b"<html>not here</html>", 1, "HTTP 404"),
    ],
    ids=["html-200", "html-502", "json-500", "html-404"],
)
def test_answers_that_are_not_the_api(serve, status, body, code, text):
    """Non-JSON and 5xx answers are exit 3, other servers' 4xx exit 1: one line."""
    server = serve(http_answer(status, body, "text/html"))
    result = bitelab("list", url=f"http://127.0.0.1:{server.port}", token="t")
    assert result.returncode == code
    assert text in one_line(result)


# --- contssh ---------------------------------------------------------------


HOST_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHEVAjh15rLVH2azY03UX4diyl8NLfI/Xe8zN2VHBcMU"
)


def info_server(serve, ssh_port, **extra):
    """An HTTP server whose /api/v1/info names ``ssh_port`` (and ``extra``)."""
    info = {"name": "t", "version": "0", "ssh_port": ssh_port, **extra}
    return serve(http_answer(200, json.dumps(info).encode()))


def reply_after_eof(conn, stopping):
    """Read to EOF, then send back the byte count and the data reversed."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    conn.sendall(b"%d:" % len(data) + data[::-1])


def test_contssh_pipes_both_ways_with_half_close(serve):
    """contssh sends stdin, half-closes at EOF and still delivers the reply."""
    ssh = serve(reply_after_eof)
    info = info_server(serve, ssh.port)
    payload = bytes(range(256)) * 4096
    result = subprocess.run(
        [BITELAB, "contssh"],
        check=False,
        input=payload,
        capture_output=True,
        env={
            "PATH": os.environ["PATH"],
            "PYTHONPATH": REPO,
            "BITELAB_URL": f"http://127.0.0.1:{info.port}",
        },
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"%d:" % len(payload) + payload[::-1]


def test_contssh_exits_when_server_closes(serve):
    """contssh ends when the server closes, even with stdin still open."""

    def greet_and_close(conn, stopping):
        conn.sendall(b"SSH-2.0-test\r\n")

    ssh = serve(greet_and_close)
    info = info_server(serve, ssh.port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitelab.client.contssh"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={
            "PATH": os.environ["PATH"],
            "PYTHONPATH": REPO,
            "BITELAB_URL": f"http://127.0.0.1:{info.port}",
        },
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out == b"SSH-2.0-test\r\n"


def test_contssh_server_down_exits_3():
    """contssh with nothing at BITELAB_URL prints one line and exits 3."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result = bitelab("contssh", url=f"http://127.0.0.1:{port}")
    assert result.returncode == 3
    assert one_line(result).startswith("bitelab contssh: ")


@pytest.mark.parametrize(
    "code",
    [
        "import bitelab.client.contssh",
        (
            "import sys; sys.argv = ['bitelab', 'contssh', '--help']\n"
            "from bitelab.client.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass"
        ),
    ],
    ids=["module", "cli"],
)
def test_contssh_path_does_not_import_twisted(code):
    """``bitelab contssh`` loads neither twisted nor treq, so it starts fast."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "bitelab.client.contssh" in imported
    assert not {name for name in imported if name.split(".")[0] in ("twisted", "treq")}


def test_reading_commands_do_not_import_twisted(real):
    """``bitelab list`` (like every command that only reads) loads neither
    twisted nor treq: their import is most of a command's time."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": REPO,
        "BITELAB_URL": real.server.url,
        "BITELAB_AUTH": real.tokens["alice"],
    }
    code = "import sys; from bitelab.client.cli import main; sys.exit(main(['list']))"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "zynq-1" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    assert "bitelab.client.quick" in imported
    assert not {name for name in imported if name.split(".")[0] in ("twisted", "treq")}


FAKE_SSH = """#!{python}
import json, subprocess, sys
args = sys.argv[1:]
proxy = args[args.index("-o") + 1].removeprefix("ProxyCommand=")
reply = subprocess.run(["/bin/sh", "-c", proxy.replace("%%", "%")],
                       input=b"hello console", capture_output=True)
print(json.dumps({{"argv": args, "reply": reply.stdout.decode()}}))
"""


def test_console_runs_ssh_through_contssh_with_the_pinned_key(serve, tmp_path):
    """``console`` runs ssh with -l BOARD, a ProxyCommand that reaches the lab,
    and the host key from /info pinned under the lab's name in bitelab's own
    known_hosts; a second lab of the same name with another key is refused."""
    ssh = serve(reply_after_eof)
    info = info_server(serve, ssh.port, name="lab-one", ssh_host_key=HOST_KEY)
    fake = tmp_path / "bin" / "ssh"
    fake.parent.mkdir()
    fake.write_text(FAKE_SSH.format(python=sys.executable))
    fake.chmod(0o755)
    path = f"{fake.parent}:{os.environ['PATH']}"
    home = tmp_path / "home"
    url = f"http://127.0.0.1:{info.port}"
    result = bitelab("console", "cora-1", url=url, path=path, home=home)
    assert result.returncode == 0, result.stderr
    known = home / ".config" / "bitelab" / "known_hosts"
    assert known.read_text() == f"lab-one {HOST_KEY}\n"
    assert "recorded the SSH host key of lab lab-one" in one_line(result)
    seen = json.loads(result.stdout)
    assert seen["argv"][0] == "-o"
    assert seen["argv"][2:] == [
        "-o",
        "HostKeyAlias=lab-one",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-T",
        "-l",
        "cora-1",
        "lab-one",
    ]
    assert seen["reply"] == "13:" + "hello console"[::-1]

    other_key = HOST_KEY[:-6] + "AAAAAA"
    other = info_server(serve, ssh.port, name="lab-one", ssh_host_key=other_key)
    url = f"http://127.0.0.1:{other.port}"
    result = bitelab("console", "cora-1", url=url, path=path, home=home)
    assert result.returncode == 2
    assert "has another SSH host key" in one_line(result)
    assert known.read_text() == f"lab-one {HOST_KEY}\n"


def test_console_of_a_board_name_with_shell_syntax_is_refused(serve, tmp_path):
    """``console`` of a name that is no board's (here with shell syntax) is
    refused in one line before ssh runs, so that its ProxyCommand, which
    OpenSSH gives to a shell with the login in it, never runs it."""
    info = info_server(serve, 9, name="lab-one")
    mark = tmp_path / "ran"
    for name in (f"x;touch {mark}", f"$(touch {mark})", "a b", "x\n"):
        result = bitelab(
            "console", "--", name, url=f"http://127.0.0.1:{info.port}", home=tmp_path
        )
        assert result.returncode == 2, result.stderr
        assert "is no board's name" in one_line(result)
    assert not mark.exists()


@pytest.mark.parametrize(
    "command, module", [("bitelab", None), ("bitelab-admin", "bitelab.admin")]
)
def test_version(command, module):
    """``--version`` prints the program's name and version."""
    import bitelab as package

    argv = [BITELAB, "--version"]
    if module:
        argv = [sys.executable, "-m", module, "--version"]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": REPO}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0
    assert result.stdout == f"{command} {package.__version__}\n"


def complete(line, env=None):
    """What argcomplete offers for the command line ``line``."""
    output = Path(tempfile.mkdtemp()) / "completions"
    environment = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": REPO,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(output),
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "COMP_TYPE": "9",
        **(env or {}),
    }
    subprocess.run([BITELAB], env=environment, capture_output=True, check=False)
    return [word.strip() for word in output.read_text().split("\n")]


def test_completion_of_commands_and_boards(real):
    """Shell completion offers commands, options and the lab's board names."""
    assert {"reserve", "release"} <= set(complete("bitelab re"))
    assert "--send" in complete("bitelab console --s")
    env = {"BITELAB_URL": real.server.url, "BITELAB_AUTH": real.tokens["alice"]}
    assert sorted(complete("bitelab info zy", env)) == ["zynq-1", "zynq-2"]
    assert sorted(complete("bitelab reserve p", env)) == ["pine", "pine-1"]


def test_console_without_ssh_exits_2(tmp_path):
    """``console`` without an ssh program says so in one line (exit 2)."""
    result = bitelab("console", "cora-1", url="http://127.0.0.1:9", path=str(tmp_path))
    assert result.returncode == 2
    assert "ssh not found" in one_line(result)


@pytest.mark.parametrize(
    "command",
    ["list", "classes", "info", "reserve", "release", "set", "console", "contssh"]
    + ["whoami", "log", "token", "labs", "logout", "maintenance", "queue", "watch"],
)
def test_every_command_has_help(command):
    """``bitelab COMMAND --help`` prints usage and exits 0."""
    result = bitelab(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: bitelab {command}")


# --- subprocess against a real server ----------------------------------------

POWER_SCRIPT = """#!/bin/sh
# on|off|status BOARD, with the state in a file beside this script.
set -eu
state="$(dirname "$0")/power-$2"
case "$1" in
on | off) echo "$1" >"$state" ;;
status) cat "$state" 2>/dev/null || echo off ;;
esac
"""

SETUP_SCRIPT = """#!/bin/sh
# reserve|release BOARD: announce where the (pretend) jail is.
if [ "$1" = reserve ]; then
    echo "ip=127.0.0.1"
    echo "ssh_user=jail-$BITELAB_USER"
fi
"""


def real_boards(directory):
    """A board file: two zynq boards with script-switched power, one pine."""
    script = f'"{directory}/power.sh"'

    def power(name):
        return (
            f'{{ cls = cmdpower, on = [{script}, "on", "{name}"], '
            f'off = [{script}, "off", "{name}"], '
            f'status = [{script}, "status", "{name}"] }}'
        )

    return f"""
setup_script = "{directory}/setup.sh";
classes {{
    zynq = {{ arch = arm-armv7; }}
    pine = {{ arch = arm64-aarch64; }}
}}
boards [
    {{ name = zynq-1; brdclass = zynq; options = [ {power("zynq-1")} ] }},
    {{ name = zynq-2; brdclass = zynq; options = [ {power("zynq-2")} ] }},
    {{ name = pine-1; brdclass = pine; options = [ {{ cls = timeout, val = 600 }} ] }},
]
"""


@attrs.define
class RealLab:
    """A running server, a token per user, and a HOME with alice's key."""

    server: LabServer
    tokens: dict
    home: Path

    def run(self, user, *argv, **kwargs):
        """Run ``bitelab ARGV`` as ``user`` against the server."""
        kwargs.setdefault("home", self.home)
        return bitelab(*argv, url=self.server.url, token=self.tokens[user], **kwargs)

    def release_all(self):
        """Force-release every reserved board, as the admin."""
        boards = self.server.get("/api/v1/boards", token=self.tokens["root"])["boards"]
        for board in boards:
            if board["state"] == "reserved":
                path = f"/api/v1/boards/{board['name']}/release"
                self.server.request("POST", path, {"force": True}, self.tokens["root"])


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """A real ``twistd -n bitelab`` with three boards, stopped after the module."""
    directory = tmp_path_factory.mktemp("lab")
    for name, text in [("power.sh", POWER_SCRIPT), ("setup.sh", SETUP_SCRIPT)]:
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)
    server = LabServer(directory, boards=real_boards(directory), users=("alice", "bob"))
    server.start()
    try:
        home = directory / "home"
        (home / ".ssh").mkdir(parents=True)
        shutil.copy(server.key("alice") + ".pub", home / ".ssh" / "id_ed25519.pub")
        tokens = {user: server.token(user) for user in ("alice", "bob", "root")}
        yield RealLab(server, tokens, home)
    finally:
        server.stop()


@pytest.fixture
def real(real_server):
    """The real lab, with every board free again after the test."""
    yield real_server
    real_server.release_all()


def test_real_list_and_classes(real):
    """``list`` and ``classes`` show the server's boards and free/total counts."""
    result = real.run("alice", "list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"zynq-1", "zynq-2", "pine-1"}
    assert rows["zynq-1"][1:3] == ["zynq", "free"]
    result = real.run("alice", "classes")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["zynq"] == ["zynq", "arm-armv7", "2/2", "-"]
    assert rows["pine"] == ["pine", "arm64-aarch64", "1/1", "-"]


def test_real_whoami(real):
    """``whoami`` names the token's user and marks admins."""
    assert real.run("alice", "whoami").stdout == "alice\n"
    assert real.run("root", "whoami").stdout == "root (admin)\n"
    assert json.loads(real.run("bob", "whoami", "--json").stdout) == {
        "user": "bob",
        "admin": False,
    }


def test_real_reserve_info_set_release(real):
    """A reservation's life: reserve a class, see it, power it, extend, release."""
    result = real.run("alice", "reserve", "-t", "300", "zynq")
    assert result.returncode == 0, result.stderr
    board = result.stdout.split()[1]
    assert board in ("zynq-1", "zynq-2")
    assert "  ip=127.0.0.1\n" in result.stdout
    assert "  ssh_user=jail-alice\n" in result.stdout
    state = real.server.get(f"/api/v1/boards/{board}", token=real.tokens["root"])
    assert (state["state"], state["holder"]) == ("reserved", "alice")

    result = real.run("alice", "info", board)
    assert result.returncode == 0, result.stderr
    assert "holder:" in result.stdout and "alice" in result.stdout
    assert "(in 4m" in result.stdout or "(in 5m" in result.stdout

    result = real.run("alice", "set", "power=on", board)
    assert result.returncode == 0, result.stderr
    assert "power=on" in result.stdout
    result = real.run("alice", "--json", "set", "timeout=1200", board)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["expires_at"] > state["expires_at"]

    result = real.run("alice", "release", board)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"released {board}: now free\n"


def test_real_reserve_sends_public_key(real, tmp_path):
    """``reserve -i`` hands the key file's text to the server (and so the script)."""
    key = Path(real.server.key("bob") + ".pub")
    result = real.run("bob", "--json", "reserve", "-i", str(key), "pine-1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["holder"] == "bob"


def test_real_taken_board_is_refused(real):
    """A board or class someone else holds is exit 1 with the server's reason."""
    assert real.run("alice", "reserve", "pine-1").returncode == 0
    result = real.run("bob", "reserve", "pine-1")
    assert result.returncode == 1
    assert "(unavailable)" in one_line(result)
    result = real.run("bob", "reserve", "pine")
    assert result.returncode == 1
    assert "(unavailable)" in one_line(result)
    result = real.run("bob", "release", "pine-1")
    assert result.returncode == 1
    assert one_line(result).endswith("(forbidden)")
    result = real.run("root", "release", "-f", "pine-1")
    assert result.returncode == 0, result.stderr


def test_real_unknown_board(real):
    """An unknown board is exit 1 with the API's not_found message."""
    for argv in (["info", "nosuch-1"], ["reserve", "nosuch-1"], ["release", "nosuch"]):
        result = real.run("alice", *argv)
        assert result.returncode == 1, argv
        assert one_line(result).endswith("(not_found)")


def test_real_bad_token(real):
    """A token the server does not know is exit 1 and says how to get one."""
    result = bitelab("list", url=real.server.url, token="bl_not_a_real_token")
    assert result.returncode == 1
    line = one_line(result)
    assert "(unauthorized)" in line and "bitelab token" in line


def test_real_bad_usage_reaches_no_server(real):
    """Bad ``set`` values are refused locally with exit 2."""
    result = real.run("alice", "set", "power=sideways", "zynq-1")
    assert result.returncode == 2
    assert "power must be one of" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["classes"],
        ["whoami"],
        ["info", "zynq-1"],
        ["reserve", "zynq-2"],
        ["set", "power=off", "zynq-2"],
        ["release", "zynq-2"],
        ["info", "nosuch"],
    ],
    ids=lambda argv: "-".join(argv),
)
def test_real_json_is_one_document(real, argv):
    """With --json every command prints one document ``json.tool`` accepts."""
    if argv[0] in ("set", "release"):
        assert real.run("alice", "reserve", "zynq-2").returncode == 0
    result = real.run("alice", *argv, "--json")
    assert result.returncode in (0, 1), result.stderr
    check = subprocess.run(
        [sys.executable, "-m", "json.tool"],
        input=result.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, result.stdout
    assert isinstance(json.loads(result.stdout), dict)


def test_real_contssh_reaches_ssh_server(real):
    """contssh learns ssh_port from the real server and relays its SSH banner."""
    proc = subprocess.Popen(
        [BITELAB, "contssh"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={
            "PATH": os.environ["PATH"],
            "PYTHONPATH": REPO,
            "BITELAB_URL": real.server.url,
        },
    )
    try:
        banner = proc.stdout.readline()
        proc.stdin.close()
        proc.wait(30)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert banner.startswith(b"SSH-2.0-")
    assert proc.returncode == 0


def test_real_server_stopped_is_exit_3(tmp_path):
    """After the server stops, the client says it is unreachable (exit 3)."""
    server = LabServer(tmp_path / "lab", users=("alice",))
    server.start()
    try:
        token = server.token("alice")
        assert bitelab("whoami", url=server.url, token=token).returncode == 0
    finally:
        server.stop()
    result = bitelab("whoami", url=server.url, token=token)
    assert result.returncode == 3
    assert "connection refused" in one_line(result)
