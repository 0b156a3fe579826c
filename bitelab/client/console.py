"""Serial consoles and tokens over SSH: OpenSSH through ``bitelab contssh``.

The lab's SSH host key is pinned from ``GET /api/v1/info``: the first time a
lab is met its key is written to bitelab's own ``known_hosts`` under the
lab's name (``HostKeyAlias``), and ssh then checks it strictly, so two labs
never share an entry and no key is taken on trust from the SSH connection.

A console runs in one of three ways:

* typed at a terminal: bitelab relays the keyboard to ssh itself, so that
  ``~.`` at the start of a line detaches with exit status 0 (``~~`` sends a
  ``~``);
* from a file or pipe: ssh reads it directly, and its end ends the session;
* scripted: ``--send`` and ``--expect`` steps run in order, each expect
  waiting for a regular expression in the output, for at most a time-out.

Standard library only.
"""

import codecs
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time

from bitelab.client.settings import ConfigProblem, config_dir

EXIT_OK = 0
EXIT_UNREACHABLE = 3
#: ``--expect`` did not see its pattern in time, or the console closed first
EXIT_NO_MATCH = 6

#: ssh's own failures (connection, authentication, host key)
_SSH_FAILED = 255
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_CHUNK = 65536


def proxy_command():
    """The ProxyCommand that runs this installation's ``contssh``.

    Spelled with this interpreter so that it works from a virtualenv that is
    not on ``PATH``; ``%`` is doubled because OpenSSH expands it.
    """
    command = shlex.join([sys.executable, "-m", "bitelab.client.contssh"])
    # %r: the login, a board's console being served by the board's host
    return command.replace("%", "%%") + " --login %r"


def known_hosts_file(environ):
    """bitelab's own ``known_hosts``, beside the labs file."""
    return config_dir(environ) / "known_hosts"


def _quote(value):
    return f'"{value}"' if " " in str(value) else str(value)


class SSHTarget:
    """How to reach one lab's SSH service: the alias and ssh's options.

    ``info`` is the lab's ``/api/v1/info`` document, ``url`` its address.
    In a lab of several hosts each host has its own SSH host key, recorded
    under the alias ``LAB.HOST``.
    """

    def __init__(self, info, url, environ, err):
        self.url = url
        self.name = str(info.get("name") or "")
        if not _NAME.match(self.name):
            raise ConfigProblem(
                f"{url} gives no usable lab name in /api/v1/info; is it a bitelab server?"
            )
        host = str(info.get("host") or "")
        self.alias = f"{self.name}.{host}" if _NAME.match(host) else self.name
        self.what = f"lab {self.name}" + (f" (host {host})" if host else "")
        self.known_hosts = known_hosts_file(environ)
        self.strict = self._pin(info, err)

    def _pin(self, info, err):
        """Record the published host key on first contact; True if one is pinned."""
        key = info.get("ssh_host_key")
        if not isinstance(key, str) or len(key.split()) < 2:
            return False
        key_type, blob = key.split()[:2]
        recorded = self._recorded()
        if recorded is None:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.known_hosts, "a", encoding="ascii") as f:
                f.write(f"{self.alias} {key_type} {blob}\n")
            fingerprint = info.get("ssh_host_key_fingerprint") or key_type
            err.write(
                f"bitelab: recorded the SSH host key of {self.what} "
                f"({fingerprint}) in {self.known_hosts}\n"
            )
        elif recorded != (key_type, blob):
            raise ConfigProblem(
                f"{self.what} at {self.url} has another SSH host key than the one "
                f"recorded for {self.alias} in {self.known_hosts}: two labs share the "
                "name (give one another lab_name) or the key was replaced (if so, "
                f"forget the old one: ssh-keygen -R {self.alias} -f {self.known_hosts})"
            )
        return True

    def _recorded(self):
        try:
            with open(self.known_hosts, encoding="ascii", errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) >= 3 and self.alias in fields[0].split(","):
                return fields[1], fields[2]
        return None

    def argv(self, login, identity=None, options=()):
        """The ``ssh`` command line that logs in as ``login``."""
        checking = "yes" if self.strict else "accept-new"
        argv = [
            "ssh",
            "-o",
            f"ProxyCommand={proxy_command()}",
            "-o",
            f"HostKeyAlias={self.alias}",
            "-o",
            f"UserKnownHostsFile={_quote(self.known_hosts)}",
            "-o",
            f"StrictHostKeyChecking={checking}",
        ]
        if identity:
            argv += ["-i", identity]
        return [*argv, *options, "-l", login, self.alias]


def ssh_environment(settings, environ):
    """The environment of ``ssh``: contssh must find the same lab."""
    env = dict(environ)
    env["BITELAB_URL"] = settings.url
    env.pop("BITELAB_CACERT", None)
    if settings.cacert:
        env["BITELAB_CACERT"] = settings.cacert
    return env


def check_ssh():
    """``ConfigProblem`` unless an ``ssh`` program is on ``PATH``."""
    from shutil import which

    if which("ssh") is None:
        raise ConfigProblem("ssh not found on PATH; install the OpenSSH client")


def ssh_status(status):
    """bitelab's exit status for ssh's: its own failures are 'unreachable'."""
    return EXIT_UNREACHABLE if status == _SSH_FAILED else status


def fetch_token(target, identity, env):
    """A new API token from the lab's ``lab`` login; ``(status, token)``."""
    check_ssh()
    result = subprocess.run(
        target.argv("lab", identity, ["-T"]),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        check=False,
    )
    token = result.stdout.decode("ascii", "replace").strip()
    if result.returncode != 0 or not token or len(token.split()) != 1:
        return ssh_status(result.returncode) or EXIT_UNREACHABLE, None
    return EXIT_OK, token


class Escape:
    """Finds ``~.`` at the start of a line in typed input; ``~~`` sends ``~``."""

    def __init__(self):
        self.line_start = True
        self.tilde = False

    def feed(self, data):
        """``(bytes to send, detach?)`` for the typed ``data``."""
        out = bytearray()
        for byte in data:
            char = bytes([byte])
            if self.tilde:
                self.tilde = False
                if char == b".":
                    return bytes(out), True
                if char != b"~":
                    out += b"~"
                out += char
            elif self.line_start and char == b"~":
                self.tilde = True
                continue
            else:
                out += char
            self.line_start = char in (b"\r", b"\n")
        return bytes(out), False


def _ended_by_signal(signum, frame):
    raise SystemExit(128 + signum)


def relay(argv, env, board, err, stdin_fd=0):
    """Run ssh with the terminal on ``stdin_fd`` in raw mode, relaying typed
    input and watching it for ``~.``; bitelab's exit status."""
    import termios
    import tty

    saved = termios.tcgetattr(stdin_fd)
    process = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE)
    previous = {
        sig: signal.signal(sig, _ended_by_signal)
        for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    escape = Escape()
    try:
        tty.setraw(stdin_fd, termios.TCSANOW)
        while process.poll() is None:
            ready, _, _ = select.select([stdin_fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(stdin_fd, 4096)
            if not data:
                process.stdin.close()
                break
            typed, detach = escape.feed(data)
            if detach:
                process.terminate()
                process.wait()
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
                err.write(f"\r\nbitelab: detached from the console of {board}\n")
                return EXIT_OK
            try:
                process.stdin.write(typed)
                process.stdin.flush()
            except BrokenPipeError:
                break
        return ssh_status(process.wait())
    finally:
        termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if process.poll() is None:
            process.kill()
            process.wait()


def run_plain(argv, env):
    """Run ssh on bitelab's own input and output; bitelab's exit status."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # ssh takes Ctrl-C
    try:
        return ssh_status(subprocess.call(argv, env=env))
    finally:
        signal.signal(signal.SIGINT, previous)


_ESCAPES = {"r": b"\r", "n": b"\n", "t": b"\t", "e": b"\x1b", "a": b"\a", "b": b"\b"}
_ESCAPES.update({"0": b"\0", "\\": b"\\"})
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)", re.DOTALL)


def send_bytes(text):
    """The bytes ``--send TEXT`` sends: ``\\r``, ``\\n``, ``\\t``, ``\\e``,
    ``\\xHH`` and ``\\\\`` stand for what they do in C; the rest is UTF-8."""
    out = bytearray()
    end = 0
    for match in _ESCAPE.finditer(text):
        out += text[end : match.start()].encode()
        code = match.group(1)
        if code.startswith("x"):
            out.append(int(code[1:], 16))
        else:
            out += _ESCAPES.get(code, match.group(0).encode())
        end = match.end()
    return bytes(out + text[end:].encode())


class ScriptFailed(Exception):
    """A scripted console step failed; ``status`` is bitelab's exit status."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


class Script:
    """Runs ``--send``/``--expect`` steps against one ssh console session.

    ``out`` (a binary file) gets everything the console prints; ``clock`` is a
    monotonic clock for the time-outs.
    """

    def __init__(self, process, board, out, timeout, clock=time.monotonic):
        self.process = process
        self.board = board
        self.out = out
        self.timeout = timeout
        self.clock = clock
        self.text = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def send(self, data):
        """Write ``data`` to the console."""
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except BrokenPipeError:
            self._closed(f"before {data!r} could be sent")

    def expect(self, pattern):
        """Wait until ``pattern`` matches output not matched before."""
        deadline = self.clock() + self.timeout
        while (match := pattern.search(self.text)) is None:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise ScriptFailed(
                    f"the console of {self.board} did not show "
                    f"{pattern.pattern!r} within {self.timeout:g}s",
                    EXIT_NO_MATCH,
                )
            if not self._read(remaining):
                self._closed(f"before {pattern.pattern!r} was seen")
        self.text = self.text[match.end() :]

    def _read(self, timeout):
        """Read what is there within ``timeout``; False at the end of output."""
        fd = self.process.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return True
        data = os.read(fd, _CHUNK)
        if not data:
            return False
        self.out.write(data)
        self.out.flush()
        self.text += self.decoder.decode(data)
        return True

    def finish(self):
        """End the input and copy the rest of the output; ssh's exit status."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        deadline = self.clock() + self.timeout
        while self.clock() < deadline and self._read(deadline - self.clock()):
            pass
        return ssh_status(self.process.wait())

    def _closed(self, when):
        status = ssh_status(self.process.wait())
        raise ScriptFailed(
            f"the console of {self.board} closed {when}", status or EXIT_NO_MATCH
        )


def run_script(argv, env, board, steps, timeout, out, err):
    """Run the ``(kind, value)`` steps on a new session; bitelab's exit status."""
    process = subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    script = Script(process, board, out, timeout)
    try:
        for kind, value in steps:
            if kind == "send":
                script.send(value)
            else:
                script.expect(value)
        return script.finish()
    except ScriptFailed as failed:
        err.write(f"bitelab: {failed}\n")
        return failed.status
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def attach(target, board, identity, env, steps, timeout, out, err, stdin_fd=0):
    """Attach to ``board``'s console in the way the input asks for (see the
    module docstring); bitelab's exit status."""
    check_ssh()
    if steps:
        argv = target.argv(board, identity, ["-T", "-e", "none"])
        return run_script(argv, env, board, steps, timeout, out, err)
    if os.isatty(stdin_fd):
        argv = target.argv(board, identity, ["-tt", "-e", "none"])
        return relay(argv, env, board, err, stdin_fd)
    return run_plain(target.argv(board, identity, ["-T"]), env)
