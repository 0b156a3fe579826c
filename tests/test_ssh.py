"""The SSH service, driven by the system OpenSSH client.

The service runs in the test process on a loopback port; ``ssh`` runs as a
child process so the reactor keeps turning. The lab is a fake that records
its calls (``FakeLab``) and hands out the real ``ConsoleHub`` with the
serial side replaced by a recorder (``FakeHub``); both follow the interfaces
``bitelab.ssh`` codes against, so a test can swap in the real lab by
overriding the ``lab`` fixture.
"""

import errno
import gc
import os
import resource
import shutil
import stat
import subprocess
import types

import attrs
import pytest
import pytest_twisted
from twisted.conch.interfaces import ISession
from twisted.conch.ssh import connection, keys
from twisted.cred import portal
from twisted.internet import defer, protocol, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from bitelab.config import Config, load_config
from bitelab.console import TOO_SLOW, ConsoleHub
from bitelab.errors import Forbidden, NotFound
from bitelab.ssh import (
    BitelabAvatar,
    BitelabRealm,
    BitelabSSHFactory,
    Identity,
    KeyOwnerChecker,
    KeysDirectory,
    SSHLimits,
    SSHService,
    load_or_create_host_key,
)
from bitelab.tap import ssh_limits

TOKEN = "bl_test_token_0123456789"
SSH = shutil.which("ssh")
SSH_KEYGEN = shutil.which("ssh-keygen")
TIMEOUT = 15

pytestmark = pytest.mark.skipif(
    SSH is None or SSH_KEYGEN is None, reason="needs the OpenSSH client"
)


@pytest.fixture
def reactor():
    """The running reactor."""
    from twisted.internet import reactor

    return reactor


@pytest.fixture(autouse=True)
def no_logged_failures():
    """Fail the test if a failure (such as an unhandled Deferred error) is logged."""
    failures = []

    def observe(event):
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield failures
    gc.collect()
    globalLogPublisher.removeObserver(observe)
    assert [
        (e.get("log_format"), e["log_failure"].getTraceback()) for e in failures
    ] == []


class FakeHub(ConsoleHub):
    """The real console hub, plus the serial side a console service adds:
    ``send`` records input, ``events`` records attach and detach.
    """

    def __init__(self, name):
        super().__init__(name=name)
        self.sent = b""
        self.events = []

    def attach(self, viewer, history=None):
        """Add a viewer."""
        self.events.append("attach")
        super().attach(viewer, history)

    def detach(self, viewer):
        """Remove a viewer."""
        self.events.append("detach")
        super().detach(viewer)

    def send(self, data):
        """Record input meant for the serial port."""
        self.sent += data


class FakeLab:
    """The lab as the SSH service sees it; records every call in ``calls``."""

    def __init__(self, holders):
        self.holders = holders
        self.hubs = {board: FakeHub(board) for board in holders}
        self.calls = []

    def is_board(self, name):
        """Whether ``name`` is a configured board."""
        return name in self.holders

    def issue_token(self, user):
        """A fixed token."""
        self.calls.append(("issue_token", user))
        return defer.succeed(TOKEN)

    def open_console(self, user, board):
        """The hub of ``board`` if ``user`` holds it."""
        self.calls.append(("open_console", user, board))
        if board not in self.holders:
            return defer.fail(NotFound(f"no board named {board}"))
        if self.holders[board] != user:
            return defer.fail(Forbidden(f"you do not hold board {board}"))
        return defer.succeed(self.hubs[board])


def make_key(path):
    """Create an ed25519 key pair at ``path``; return the public key line."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", path],
        check=True,
    )
    with open(f"{path}.pub") as f:
        return f.read()


@pytest.fixture
def keys_dir(tmp_path):
    """A keys directory with alice and bob; client keys for them and others."""
    d = tmp_path / "keys"
    d.mkdir()
    client = tmp_path / "client"
    client.mkdir()
    for user in ("alice", "bob", "carol", "mallory"):
        make_key(str(client / user))
    (d / "alice.pub").write_text(
        "# alice's keys\n\n" + (client / "alice.pub").read_text()
    )
    (d / "bob.pub").write_text((client / "bob.pub").read_text())
    return d


@pytest.fixture
def lab():
    """The fake lab: alice holds cora-1, bob holds pine-1."""
    return FakeLab({"cora-1": "alice", "pine-1": "bob"})


class Server:
    """Starts and stops an SSHService on a loopback port."""

    def __init__(self, reactor, tmp_path, keys_dir, lab, **options):
        self.reactor = reactor
        self.options = options
        self.host_key = tmp_path / "state" / "ssh_host_key"
        self.keys_dir = keys_dir
        self.lab = lab
        self.service = None

    def start(self):
        """Start a new service; return it."""
        self.service = SSHService(
            self.reactor,
            "tcp:0:interface=127.0.0.1",
            str(self.host_key),
            str(self.keys_dir),
            self.lab,
            **self.options,
        )
        self.service.startService()
        return self.service

    def stop(self):
        """Stop the service; return a Deferred."""
        service, self.service = self.service, None
        if service is None or not service.running:
            return defer.succeed(None)
        return service.stopService()

    @property
    def port(self):
        """The listening TCP port number."""
        return self.service.port.getHost().port


@pytest.fixture
def server(request, reactor, tmp_path, keys_dir, lab):
    """A running SSH service, stopped after the test; with the ``SSHLimits``
    a test gives as the fixture's parameter, if any.

    It looks at the keys directory only on ``reload()``, so that a test sees
    what ``reload()`` does and not a timely poll.
    """
    limits = getattr(request, "param", SSHLimits())
    s = Server(reactor, tmp_path, keys_dir, lab, keys_poll_interval=3600, limits=limits)
    s.start()
    yield s
    pytest_twisted.blockon(s.stop())


class SSHClient(protocol.ProcessProtocol):
    """One ``ssh`` process: collects output, can be written to."""

    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()
        self.running = True

    def outReceived(self, data):
        """Collect stdout."""
        self.out += data

    def errReceived(self, data):
        """Collect stderr."""
        self.err += data

    def processEnded(self, reason):
        """Fire ``ended`` with the exit status."""
        self.running = False
        self.ended.callback(reason.value.exitCode)

    def type(self, data):
        """Write ``data`` to the client's stdin."""
        self.transport.write(data)


@pytest.fixture
def ssh(reactor, tmp_path, server):
    """Run ``ssh`` against the server: ``ssh(user, login, *options, command=)``.

    Returns an L{SSHClient}; every client still running at the end is
    killed.
    """
    known_hosts = tmp_path / "known_hosts"
    clients = []
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}

    def run(user, login, *args, command=None, strict="accept-new"):
        client = SSHClient()
        argv = [
            SSH,
            "-F",
            "/dev/null",
            "-p",
            str(server.port),
            "-i",
            str(tmp_path / "client" / user),
            "-o",
            f"StrictHostKeyChecking={strict}",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "HostKeyAlias=bitelab-test",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-l",
            login,
            *args,
            "127.0.0.1",
            *([] if command is None else [command]),
        ]
        reactor.spawnProcess(client, SSH, argv, env=env)
        clients.append(client)
        return client

    yield run
    for client in clients:
        if client.running:
            client.transport.signalProcess("KILL")
            pytest_twisted.blockon(client.ended)


async def finished(client):
    """Wait for ``client`` to exit; return its exit status."""
    from twisted.internet import reactor

    return await client.ended.addTimeout(TIMEOUT, reactor)


async def until(predicate, what):
    """Wait until ``predicate()`` holds."""
    from twisted.internet import reactor

    for _ in range(int(TIMEOUT / 0.05)):
        if predicate():
            return
        await task.deferLater(reactor, 0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def run_ssh(ssh, user, login, *args, **kw):
    """Run ssh with stdin closed, to the end; return (status, stdout, stderr)."""
    client = ssh(user, login, *args, **kw)
    client.transport.closeStdin()
    status = await finished(client)
    return status, client.out, client.err


# Tokens


@pytest.mark.parametrize(
    "args, command",
    [((), None), (("-tt",), None), (("-T",), None), ((), "token")],
    ids=["plain", "pty", "no-pty", "command"],
)
@pytest_twisted.ensureDeferred
async def test_lab_login_prints_token(ssh, lab, args, command):
    """``-l lab`` prints a new token on one line and exits 0, pty or not."""
    status, out, err = await run_ssh(ssh, "alice", "lab", *args, command=command)
    assert (status, out.strip()) == (0, TOKEN.encode()), err
    assert out.endswith(b"\n")
    assert lab.calls == [("issue_token", "alice")]


@pytest_twisted.ensureDeferred
async def test_lab_login_with_environment(ssh, lab):
    """Environment variables sent by the client are accepted and ignored."""
    status, out, err = await run_ssh(
        ssh, "bob", "lab", "-o", "SetEnv=LANG=C FOO=bar", command="token"
    )
    assert (status, out) == (0, TOKEN.encode() + b"\n"), err
    assert lab.calls == [("issue_token", "bob")]


# Authentication


@pytest_twisted.ensureDeferred
async def test_host_key_stable_across_restart(ssh, server):
    """The host key is created once and reused: strict checking passes later.

    Replacing the key file makes strict checking fail, which shows the check
    would notice a new key.
    """
    status, out, err = await run_ssh(ssh, "alice", "lab")
    assert status == 0, err
    key_text = server.host_key.read_bytes()
    assert stat.S_IMODE(server.host_key.stat().st_mode) == 0o600

    await server.stop()
    server.start()
    status, out, err = await run_ssh(ssh, "alice", "lab", strict="yes")
    assert (status, out.strip()) == (0, TOKEN.encode()), err
    assert server.host_key.read_bytes() == key_text

    await server.stop()
    server.host_key.unlink()
    server.start()
    status, out, err = await run_ssh(ssh, "alice", "lab", strict="yes")
    assert status == 255
    assert b"REMOTE HOST IDENTIFICATION HAS CHANGED" in err
    assert out == b""


@pytest_twisted.ensureDeferred
async def test_unknown_key_is_refused(ssh, lab):
    """A key found in no user's file gets "Permission denied" and exit 255."""
    status, out, err = await run_ssh(ssh, "mallory", "lab")
    assert status == 255
    assert b"Permission denied" in err
    assert out == b""
    assert lab.calls == []


@pytest_twisted.ensureDeferred
async def test_unknown_login_name_is_refused(ssh, lab):
    """A login name that is neither ``lab`` nor a board is refused at auth."""
    status, out, err = await run_ssh(ssh, "alice", "alice")
    assert status == 255
    assert b"Permission denied" in err
    assert out == b""
    status, out, err = await run_ssh(ssh, "alice", "no-such-board")
    assert status == 255
    assert b"Permission denied" in err
    assert out == b""
    assert lab.calls == []


# Consoles


@pytest_twisted.ensureDeferred
async def test_someone_elses_board_is_refused(ssh, lab):
    """A board the user does not hold: one line, exit 1, no console output."""
    hub = lab.hubs["pine-1"]
    status, out, err = await run_ssh(ssh, "alice", "pine-1")
    assert status == 1
    assert err == b"bitelab: you do not hold board pine-1\n"
    assert out == b""
    assert hub.viewers == [] and hub.events == []
    assert lab.calls == [("open_console", "alice", "pine-1")]


@pytest_twisted.ensureDeferred
async def test_refusal_with_pty(ssh, lab):
    """With a pty the refusal is the same single line, ended for a terminal."""
    status, out, err = await run_ssh(ssh, "alice", "pine-1", "-tt")
    assert status == 1
    assert b"bitelab: you do not hold board pine-1\r\n" in out + err
    assert lab.hubs["pine-1"].events == []


CONSOLE_OUTPUT = b"U-Boot 2024.01\r\n\x00\x01\x7f\xff\x1b[0m\x03 => "


@pytest.mark.parametrize("args", [(), ("-tt",)], ids=["plain", "pty"])
@pytest_twisted.ensureDeferred
async def test_console_both_ways_until_reservation_ends(ssh, lab, args):
    """Console output reaches the client and typed input reaches the hub,
    byte for byte; the hub's close ends the session with its reason, exit 0.
    """
    hub = lab.hubs["cora-1"]
    client = ssh("alice", "cora-1", *args)
    await until(lambda: len(hub.viewers) == 1, "the viewer to attach")
    assert lab.calls == [("open_console", "alice", "cora-1")]

    hub.deliver(CONSOLE_OUTPUT)
    await until(lambda: CONSOLE_OUTPUT in client.out, "console output")

    client.type(b"printenv\r\x03\x1b[A")
    await until(lambda: hub.sent == b"printenv\r\x03\x1b[A", "input at the hub")

    hub.close_viewers("bitelab: reservation of cora-1 ended")
    assert await finished(client) == 0
    assert (
        client.out == CONSOLE_OUTPUT + b"\r\nbitelab: reservation of cora-1 ended\r\n"
    )
    assert hub.viewers == []


@pytest_twisted.ensureDeferred
async def test_two_viewers(ssh, lab):
    """Two sessions on one board both see the output and both can type."""
    hub = lab.hubs["cora-1"]
    first = ssh("alice", "cora-1", "-tt")
    second = ssh("alice", "cora-1")
    await until(lambda: len(hub.viewers) == 2, "two viewers")

    hub.deliver(b"login: ")
    await until(lambda: b"login: " in first.out, "output at the first viewer")
    await until(lambda: b"login: " in second.out, "output at the second viewer")

    first.type(b"root\r")
    await until(lambda: hub.sent == b"root\r", "input from the first viewer")
    second.type(b"ls\r")
    await until(lambda: hub.sent == b"root\rls\r", "input from the second viewer")

    hub.close_viewers("bitelab: reservation of cora-1 ended")
    assert await finished(first) == 0
    assert await finished(second) == 0
    for client in (first, second):
        assert client.out.endswith(b"\r\nbitelab: reservation of cora-1 ended\r\n")


@pytest_twisted.ensureDeferred
async def test_client_leaving_detaches_viewer(ssh, lab):
    """When the ssh client goes away its viewer leaves the hub."""
    hub = lab.hubs["cora-1"]
    client = ssh("alice", "cora-1")
    await until(lambda: len(hub.viewers) == 1, "the viewer to attach")
    client.transport.signalProcess("TERM")
    await finished(client)
    await until(lambda: hub.viewers == [], "the viewer to detach")
    assert hub.events == ["attach", "detach"]


@pytest_twisted.ensureDeferred
async def test_end_of_input_ends_the_console_session(ssh, lab):
    """An ssh client whose input ends (``</dev/null``, the end of a pipe) leaves
    the console with exit 0 once its last input reached the board."""
    hub = lab.hubs["cora-1"]
    client = ssh("alice", "cora-1")
    await until(lambda: len(hub.viewers) == 1, "the viewer to attach")
    client.type(b"reset\r")
    client.transport.closeStdin()
    assert await finished(client) == 0
    assert hub.sent == b"reset\r"
    assert hub.viewers == [] and hub.events == ["attach", "detach"]


def test_end_of_input_before_console_opens(lab):
    """Input and end of input that arrive before the console opens: the input
    reaches the board, then the session ends with exit 0 and no viewer stays."""
    hub = lab.hubs["cora-1"]
    pending = defer.Deferred()
    lab.open_console = lambda user, board: pending
    session, proto = open_session(lab, "alice", "cora-1")
    proto.transport.write(b"boot\r")
    session.eofReceived()
    assert proto.exit_code is None
    pending.callback(hub)
    assert hub.sent == b"boot\r"
    assert proto.exit_code == 0
    assert hub.viewers == []


# Keys directory


@pytest_twisted.ensureDeferred
async def test_reload_picks_up_new_key_and_keeps_sessions(
    ssh, lab, server, keys_dir, tmp_path
):
    """A key file added later works after ``reload()``, without a restart,
    and a console session opened before stays up.
    """
    hub = lab.hubs["cora-1"]
    viewer = ssh("alice", "cora-1")
    await until(lambda: len(hub.viewers) == 1, "the viewer to attach")

    status, out, err = await run_ssh(ssh, "carol", "lab")
    assert status == 255 and b"Permission denied" in err

    (keys_dir / "carol.pub").write_bytes(
        (tmp_path / "client" / "carol.pub").read_bytes()
    )
    server.service.reload()
    status, out, err = await run_ssh(ssh, "carol", "lab")
    assert (status, out) == (0, TOKEN.encode() + b"\n"), err
    assert lab.calls[-1] == ("issue_token", "carol")

    hub.deliver(b"still here\r\n")
    await until(lambda: b"still here\r\n" in viewer.out, "output after reload")
    assert viewer.running
    hub.close_viewers("bitelab: reservation of cora-1 ended")
    assert await finished(viewer) == 0


@pytest_twisted.ensureDeferred
async def test_new_key_file_works_at_once(ssh, lab, keys_dir, tmp_path):
    """A key file the admin just added lets its user in on the first try,
    before the next poll: an unknown key makes the server look again."""
    (keys_dir / "carol.pub").write_bytes(
        (tmp_path / "client" / "carol.pub").read_bytes()
    )
    status, out, err = await run_ssh(ssh, "carol", "lab")
    assert (status, out) == (0, TOKEN.encode() + b"\n"), err
    status, out, err = await run_ssh(ssh, "mallory", "lab")
    assert status == 255 and b"Permission denied" in err


def write_keys(path, text):
    """Write ``text`` to ``path`` and make its mtime differ from before."""
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_keys_directory_snapshot(tmp_path):
    """Keys are read per user (file stem); comments, blank lines, bad lines,
    option lines and badly named files are skipped without stopping the load.
    """
    client = tmp_path / "client"
    client.mkdir()
    a1, a2, b1 = (make_key(str(client / n)) for n in ("a1", "a2", "b1"))
    d = tmp_path / "keys"
    d.mkdir()
    (d / "alice.pub").write_text(
        f"# two keys\n\n{a1}\nnot a key at all\n" f'from="10.0.0.1" {b1}\n   {a2}'
    )
    (d / "bad name.pub").write_text(b1)
    (d / "notes.txt").write_text(b1)
    keys_db = KeysDirectory(d, task.Clock())
    keys_db.reload()

    expected = [keys.Key.fromString(k) for k in (a1, a2)]
    assert list(keys_db.getAuthorizedKeys(b"alice")) == expected
    assert keys_db.getAuthorizedKeys("bob") == ()
    assert keys_db.users() == ["alice"]
    assert keys_db.user_for_key(expected[1]) == "alice"
    assert keys_db.user_for_key(keys.Key.fromString(b1)) is None


def test_keys_directory_polls_for_changes(tmp_path):
    """While running, the snapshot follows added, changed and removed files."""
    client = tmp_path / "client"
    client.mkdir()
    a1, b1 = (make_key(str(client / n)) for n in ("a1", "b1"))
    d = tmp_path / "keys"
    d.mkdir()
    clock = task.Clock()
    keys_db = KeysDirectory(d, clock)
    keys_db.startService()
    assert keys_db.users() == []

    write_keys(d / "alice.pub", a1)
    clock.advance(3)
    assert keys_db.user_for_key(keys.Key.fromString(a1)) == "alice"

    write_keys(d / "alice.pub", b1)
    clock.advance(3)
    assert keys_db.user_for_key(keys.Key.fromString(a1)) is None
    assert keys_db.user_for_key(keys.Key.fromString(b1)) == "alice"

    (d / "alice.pub").unlink()
    clock.advance(3)
    assert keys_db.users() == []

    keys_db.stopService()
    assert clock.getDelayedCalls() == []


def test_key_of_two_users_is_refused(tmp_path):
    """A key listed for two users belongs to neither; their other keys work."""
    client = tmp_path / "client"
    client.mkdir()
    shared, own = (make_key(str(client / n)) for n in ("shared", "own"))
    d = tmp_path / "keys"
    d.mkdir()
    (d / "alice.pub").write_text(shared + own)
    (d / "bob.pub").write_text(shared)
    keys_db = KeysDirectory(d, task.Clock())
    keys_db.reload()
    assert keys_db.user_for_key(keys.Key.fromString(shared)) is None
    assert keys_db.user_for_key(keys.Key.fromString(own)) == "alice"
    assert keys_db.users() == ["alice"]


def test_missing_keys_directory_is_not_fatal(tmp_path):
    """A missing keys directory means no users, and is picked up once created."""
    client = tmp_path / "client"
    client.mkdir()
    a1 = make_key(str(client / "a1"))
    d = tmp_path / "keys"
    clock = task.Clock()
    keys_db = KeysDirectory(d, clock)
    keys_db.startService()
    assert keys_db.users() == []
    d.mkdir()
    (d / "alice.pub").write_text(a1)
    clock.advance(3)
    assert keys_db.users() == ["alice"]
    keys_db.stopService()


def test_keys_snapshot_kept_when_a_reload_runs_out_of_files(tmp_path):
    """A reload that meets EMFILE keeps the keys loaded before (instead of
    locking everyone out) and is tried again at the next poll."""
    client = tmp_path / "client"
    client.mkdir()
    a1, b1 = (make_key(str(client / n)) for n in ("a1", "b1"))
    d = tmp_path / "keys"
    d.mkdir()
    (d / "alice.pub").write_text(a1)
    clock = task.Clock()
    keys_db = KeysDirectory(d, clock)
    keys_db.startService()
    (d / "bob.pub").write_text(b1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spent = []
    # use up every file descriptor this process may have, for real
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard)
    )
    try:
        while True:
            spent.append(os.dup(0))
    except OSError as e:
        assert e.errno == errno.EMFILE
        keys_db.reload()
    finally:
        for fd in spent:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert keys_db.user_for_key(keys.Key.fromString(a1)) == "alice"
    clock.advance(3)
    assert keys_db.users() == ["alice", "bob"]
    keys_db.stopService()


# Limits before login


def minimal_settings(tmp_path, extra=""):
    """Settings from a .env holding only the required keys and ``extra``."""
    (tmp_path / ".env").write_text(f"db_file=db\nboard_conf=b.ucl\n{extra}")
    return load_config(str(tmp_path / ".env"))


def limited_factory(tmp_path, clock, limits):
    """An SSH factory on ``clock`` with ``limits``, no network."""
    checker = KeyOwnerChecker(KeysDirectory(tmp_path, clock), FakeLab({}))
    factory = BitelabSSHFactory(
        load_or_create_host_key(tmp_path / "host_key"),
        portal.Portal(BitelabRealm(FakeLab({})), [checker]),
        clock,
        limits,
    )
    factory.doStart()  # as a listening port does
    return factory


def ssh_connect(factory, host):
    """A connection from ``host``: (transport protocol, string transport)."""
    address = IPv4Address("TCP", host, 50000)
    proto = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    proto.makeConnection(transport)
    return proto, transport


def log_in(proto):
    """What Conch does once a client has authenticated."""
    proto.avatar = BitelabAvatar(Identity("alice", "lab"), FakeLab({}))
    proto.setService(connection.SSHConnection())


@pytest.mark.parametrize(
    "extra, grace", [("", 30), ("ssh_login_grace_time=5\n", 5)], ids=["default", "5"]
)
def test_login_grace_time(tmp_path, extra, grace):
    """A client that has not logged in when the grace time is over is
    disconnected; one that has logged in stays."""
    limits = ssh_limits(minimal_settings(tmp_path, extra))
    assert limits.login_grace_time == grace
    clock = task.Clock()
    factory = limited_factory(tmp_path, clock, limits)
    _, idle = ssh_connect(factory, "10.0.0.1")
    user, logged_in = ssh_connect(factory, "10.0.0.2")
    assert idle.value().startswith(b"SSH-2.0-")
    clock.advance(grace - 1)
    log_in(user)
    assert not idle.disconnecting
    clock.advance(1)
    assert idle.disconnecting and b"login grace time over" in idle.value()
    clock.advance(3600)
    assert not logged_in.disconnecting


def check_waiting_caps(factory, total, per_source):
    """``per_source`` connections per address get in, the next is closed;
    at ``total``, a newcomer from a new address pushes out the oldest
    connection of the busiest one; logged-in connections do not count."""
    conns = [ssh_connect(factory, "10.0.0.1") for _ in range(per_source)]
    _, refused = ssh_connect(factory, "10.0.0.1")
    assert refused.disconnecting and refused.value() == b""
    assert not any(t.disconnecting for _, t in conns)
    log_in(conns[0][0])
    _, again = ssh_connect(factory, "10.0.0.1")
    assert not again.disconnecting
    others = []
    host = 0
    while len(factory.waiting) < total:
        host += 1
        others.append(ssh_connect(factory, f"10.0.1.{host}"))
    _, newcomer = ssh_connect(factory, "10.0.2.1")
    assert not newcomer.disconnecting
    assert conns[1][1].disconnected
    assert len(factory.waiting) == total


@pytest.mark.parametrize(
    "extra, total, per_source",
    [
        ("", 64, 10),
        ("ssh_max_unauthenticated=5\nssh_max_unauthenticated_per_source=2\n", 5, 2),
    ],
    ids=["default", "5-2"],
)
def test_connections_before_login_are_capped(tmp_path, extra, total, per_source):
    """The caps on connections not logged in yet, overall and per address."""
    limits = ssh_limits(minimal_settings(tmp_path, extra))
    assert (limits.max_unauthenticated, limits.max_unauthenticated_per_source) == (
        total,
        per_source,
    )
    check_waiting_caps(
        limited_factory(tmp_path, task.Clock(), limits), total, per_source
    )


@pytest.mark.parametrize(
    "server, tries",
    [(SSHLimits(), 6), (SSHLimits(max_auth_tries=2), 2)],
    ids=["default", "2"],
    indirect=["server"],
)
@pytest_twisted.ensureDeferred
async def test_authentication_attempts_are_capped(ssh, tmp_path, server, tries):
    """A client gets ``max_auth_tries`` failed attempts per connection: with
    one unknown key fewer it still logs in, with as many it is cut off."""
    assert SSHLimits().max_auth_tries == load_config_default("ssh_max_auth_tries")
    bad = [str(tmp_path / "client" / f"bad{n}") for n in range(tries)]
    for path in bad:
        make_key(path)
    good = str(tmp_path / "client" / "alice")

    def identities(paths):
        return [arg for path in paths for arg in ("-i", path)]

    status, out, err = await run_ssh(
        ssh, "mallory", "lab", *identities(bad[1:-1] + [good])
    )
    assert (status, out) == (0, TOKEN.encode() + b"\n"), err
    status, out, err = await run_ssh(
        ssh, "mallory", "lab", *identities(bad[1:] + [good])
    )
    assert status == 255 and out == b""
    assert b"too many" in err.lower() or b"Permission denied" in err


def load_config_default(key):
    """The default of a ``.env`` key."""
    return attrs.fields_dict(Config)[key].default


# Host key


def test_host_key_created_then_reused(tmp_path):
    """The first call creates an ed25519 key (mode 0600, parent made); later
    calls load the same key.
    """
    path = tmp_path / "new" / "dir" / "host_key"
    key = load_or_create_host_key(path)
    assert key.type() == "Ed25519" and not key.isPublic()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert load_or_create_host_key(path) == key
    assert load_or_create_host_key(str(path)).fingerprint() == key.fingerprint()


# Sessions, without a network


class FakeSessionProtocol:
    """Stands in for Conch's session process protocol; records what it gets."""

    def __init__(self):
        self.transport = None
        self.out = b""
        self.err = b""
        self.exit_code = None
        self.session = types.SimpleNamespace(buf=b"")

    def makeConnection(self, transport):
        """Remember the session's input side."""
        self.transport = transport

    def outReceived(self, data):
        """Collect stdout."""
        self.out += data

    def errReceived(self, data):
        """Collect stderr."""
        self.err += data

    def processEnded(self, reason):
        """Record the exit status."""
        self.exit_code = reason.value.exitCode


def open_session(lab, user, service, pty=False):
    """Open a shell session for ``user`` on ``service``; return its parts."""
    session = ISession(BitelabAvatar(Identity(user, service), lab))
    if pty:
        session.getPty(b"xterm", (24, 80, 0, 0), [])
    proto = FakeSessionProtocol()
    session.openShell(proto)
    return session, proto


def test_input_before_console_opens_is_kept(lab):
    """Input typed while the console is being opened reaches the hub first."""
    hub = lab.hubs["cora-1"]
    pending = defer.Deferred()
    lab.open_console = lambda user, board: pending
    _session, proto = open_session(lab, "alice", "cora-1")
    proto.transport.write(b"ab")
    proto.transport.write(b"c")
    assert hub.sent == b""
    pending.callback(hub)
    assert hub.sent == b"abc"
    proto.transport.write(b"d")
    assert hub.sent == b"abcd"
    assert proto.exit_code is None


def test_session_closed_before_console_opens(lab):
    """A client gone before the console opened never attaches a viewer."""
    hub = lab.hubs["cora-1"]
    pending = defer.Deferred()
    lab.open_console = lambda user, board: pending
    session, _proto = open_session(lab, "alice", "cora-1")
    session.closed()
    pending.callback(hub)
    assert hub.events == [] and hub.viewers == []


def test_viewer_that_does_not_keep_up_is_dropped(lab):
    """The viewer reports the channel's unsent output to the hub, so a client
    that stops reading is dropped: the hub's reason, then exit 0.
    """
    hub = lab.hubs["cora-1"]
    _session, proto = open_session(lab, "alice", "cora-1")
    hub.deliver(b"fine")
    assert proto.out == b"fine"
    proto.session.buf = b"x" * (hub.max_backlog + 1)
    hub.deliver(b"too much")
    assert hub.viewers == []
    assert proto.out == f"finetoo much\r\nbitelab: {TOO_SLOW}\r\n".encode()
    assert proto.exit_code == 0


def test_refusal_line_ends_for_a_terminal_with_pty(lab):
    """Without a pty the refusal ends in LF, with one in CR LF."""
    _session, proto = open_session(lab, "alice", "no-such", pty=True)
    assert proto.err == b"bitelab: no board named no-such\r\n"
    assert proto.exit_code == 1
    _session, proto = open_session(lab, "alice", "no-such")
    assert proto.err == b"bitelab: no board named no-such\n"


def test_token_failure_is_one_line_and_exit_1(lab, no_logged_failures):
    """If the lab cannot issue a token the client gets one line and exit 1;
    the cause is logged for the admin.
    """
    lab.issue_token = lambda user: defer.fail(RuntimeError("database is locked"))
    _session, proto = open_session(lab, "alice", "lab")
    assert proto.out == b""
    assert proto.err == (
        b"bitelab: could not issue a token; try again or ask the lab admin\n"
    )
    assert proto.exit_code == 1
    assert [e["log_failure"].type for e in no_logged_failures] == [RuntimeError]
    no_logged_failures.clear()
