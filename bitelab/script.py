"""Running the site setup script: argv without a shell, bounded time and output.

The protocol (see README.rst): ``SCRIPT reserve|release BOARD`` with the
``BITELAB_*`` environment; exit status 0 is success; ``KEY=VALUE`` lines on
standard output become attributes shown to the holder; on failure the last
lines of standard error are the message.
"""

import os
import re
import signal
import sys

import attrs
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python import failure

from bitelab.errors import SetupFailed

KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]{0,63})=(.*)$")
MAX_OUTPUT = 64 * 1024
KILL_GRACE = 5.0

# The script runs in a session of its own, so that a time-out kills it and
# everything it started (a grandchild holding its output open would keep it
# "running" otherwise).  Twisted's spawnProcess cannot call setsid itself.
_SETSID = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"


def parse_attrs(stdout):
    """``KEY=VALUE`` lines of a script's output as a dict; other lines ignored."""
    result = {}
    for line in stdout.decode("utf-8", "replace").splitlines():
        match = KEY_RE.match(line.strip())
        if match:
            result[match.group(1)] = match.group(2)
    return result


def error_text(stderr, stdout, status):
    """A one-line message from a failed script's output."""
    for stream in (stderr, stdout):
        lines = [ln.strip() for ln in stream.decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln and not KEY_RE.match(ln)]
        if lines:
            return lines[-1][:500]
    return status


class _Collector(protocol.ProcessProtocol):
    def __init__(self, done):
        self.done = done
        self.out = bytearray()
        self.err = bytearray()
        self.out_overflow = 0
        self.err_dropped = 0
        self.exited = None

    def outReceived(self, data):
        room = MAX_OUTPUT - len(self.out)
        self.out += data[:room]
        self.out_overflow += max(0, len(data) - room)

    def errReceived(self, data):
        self.err += data
        extra = max(0, len(self.err) - MAX_OUTPUT)
        self.err_dropped += extra
        del self.err[:extra]

    def processExited(self, reason):
        self.exited = reason.value

    def processEnded(self, reason):
        if not self.done.called:
            self.done.callback(reason.value)


def session_members(sid):
    """Pids of the processes in session ``sid`` (Linux ``/proc``), sorted."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after the command name, which may hold spaces and parens
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            members.append(int(entry))
    return sorted(members)


def kill_session(sid, sig):
    """Send ``sig`` to every process of session ``sid``; how many were found.

    The script leads its own session (and process group), so this reaches
    every process it started, also those that left its process group or
    outlived it.
    """
    try:
        os.killpg(sid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    found = 0
    for pid in session_members(sid):
        found += 1
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return found


@attrs.frozen
class ScriptResult:
    """What a successful script run printed."""

    attrs: dict
    stdout: bytes
    stderr: bytes


@attrs.define
class ScriptRunner:
    """Runs ``path ACTION BOARD`` with the given environment, killing it on time-out.

    At the time-out the script's whole session is killed and its pipes are
    closed, so a child that keeps them open (``sleep 60 &``) cannot hold
    the reservation up.
    """

    reactor: object
    path: str | None
    timeout: float = 60.0
    #: a ``bitelab.metrics.Metrics`` told of every run, or None
    metrics: object = None
    log = Logger()

    def run(self, action, board, env):
        """Fire with a ``ScriptResult``; fail with ``SetupFailed``."""
        if not self.path:
            return defer.succeed(ScriptResult({}, b"", b""))
        started = self.reactor.seconds()
        d = self._run(action, board, env)
        if self.metrics is not None:

            def measured(result):
                self.metrics.script_run(
                    action,
                    env.get("BITELAB_CLASS", ""),
                    self.reactor.seconds() - started,
                    not isinstance(result, failure.Failure),
                )
                return result

            d.addBoth(measured)
        return d

    @defer.inlineCallbacks
    def _run(self, action, board, env):
        full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        full_env.update(env)
        done = defer.Deferred()
        collector = _Collector(done)
        try:
            process = self.reactor.spawnProcess(
                collector,
                sys.executable,
                [sys.executable, "-c", _SETSID, self.path, action, board],
                env=full_env,
                path="/",
            )
        except OSError as e:
            raise SetupFailed(f"setup script {self.path}: {e.strerror}") from None
        # the wrapper calls setsid() before anything else runs: its pid is
        # the session and process group of everything the script starts
        sid = process.pid
        killed = []
        calls = []

        def kill(sig):
            killed.append(sig)
            kill_session(sid, sig)
            if sig == signal.SIGTERM:
                calls.append(self.reactor.callLater(KILL_GRACE, kill, signal.SIGKILL))
            else:
                # whatever still holds the pipes is dead or out of reach:
                # stop waiting for them
                process.loseConnection()
                calls.append(self.reactor.callLater(KILL_GRACE, give_up))

        def give_up():
            if not done.called:
                done.callback(collector.exited or error.ProcessTerminated(signal=9))

        calls.append(self.reactor.callLater(self.timeout, kill, signal.SIGTERM))
        try:
            reason = yield done
        finally:
            for call in calls:
                if call.active():
                    call.cancel()
        if killed:
            held = (
                " (it had exited, but a process it started kept its output open)"
                if collector.exited is not None
                else ""
            )
            raise SetupFailed(
                f"setup script {action} {board} timed out after {self.timeout:g}s"
                f"{held}"
            )
        stdout, stderr = bytes(collector.out), bytes(collector.err)
        if collector.err_dropped:
            self.log.warn(
                "setup script {action} {board}: {n} bytes of standard error "
                "beyond the last {limit} not kept",
                action=action,
                board=board,
                n=collector.err_dropped,
                limit=MAX_OUTPUT,
            )
        if collector.out_overflow:
            raise SetupFailed(
                f"setup script {action} printed more than {MAX_OUTPUT} bytes on "
                "standard output; attributes must fit in that"
            )
        if isinstance(reason, error.ProcessDone):
            return ScriptResult(parse_attrs(stdout), stdout, stderr)
        if isinstance(reason, error.ProcessTerminated) and reason.signal:
            status = f"killed by signal {reason.signal}"
        else:
            status = f"exit status {getattr(reason, 'exitCode', '?')}"
        message = error_text(stderr, stdout, status)
        self.log.warn(
            "setup script {action} {board} failed ({status}): {message}",
            action=action,
            board=board,
            status=status,
            message=message,
        )
        raise SetupFailed(f"setup script {action} failed: {message}")
