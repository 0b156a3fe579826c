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

    def outReceived(self, data):
        if len(self.out) < MAX_OUTPUT:
            self.out += data[: MAX_OUTPUT - len(self.out)]

    def errReceived(self, data):
        self.err += data
        del self.err[: max(0, len(self.err) - MAX_OUTPUT)]

    def processEnded(self, reason):
        self.done.callback(reason.value)


@attrs.frozen
class ScriptResult:
    """What a successful script run printed."""

    attrs: dict
    stdout: bytes
    stderr: bytes


@attrs.define
class ScriptRunner:
    """Runs ``path ACTION BOARD`` with the given environment, killing it on time-out."""

    reactor: object
    path: str | None
    timeout: float = 60.0
    log = Logger()

    @defer.inlineCallbacks
    def run(self, action, board, env):
        """Fire with a ``ScriptResult``; fail with ``SetupFailed``."""
        if not self.path:
            return ScriptResult({}, b"", b"")
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
        killed = []
        calls = []

        def kill(sig):
            killed.append(sig)
            try:
                os.killpg(process.pid, sig)
            except (ProcessLookupError, TypeError):
                return
            if sig == signal.SIGTERM:
                calls.append(self.reactor.callLater(KILL_GRACE, kill, signal.SIGKILL))

        calls.append(self.reactor.callLater(self.timeout, kill, signal.SIGTERM))
        try:
            reason = yield done
        finally:
            for call in calls:
                if call.active():
                    call.cancel()
        if killed:
            raise SetupFailed(
                f"setup script {action} {board} timed out after {self.timeout:g}s"
            )
        stdout, stderr = bytes(collector.out), bytes(collector.err)
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
