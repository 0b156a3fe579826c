"""``bitelab contssh``: an OpenSSH ProxyCommand that finds the lab's SSH server.

Use it as ``ssh -o 'ProxyCommand bitelab contssh' -l lab bitelab``. It asks
``$BITELAB_URL/api/v1/info`` for the SSH port, connects to that port on the
host of ``BITELAB_URL`` and copies bytes between its stdin/stdout and the
socket. OpenSSH starts it for every connection, so it imports only the
standard library.
"""

import argparse
import json
import os
import select
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

#: Exit statuses shared with the rest of the ``bitelab`` command.
EXIT_REFUSED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3

_CHUNK = 65536


class ContsshError(Exception):
    """A problem that ends ``contssh`` with a one-line message and ``status``."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


DESCRIPTION = (
    "Connect stdin/stdout to the lab's SSH server, for use as an OpenSSH "
    "ProxyCommand: ssh -o 'ProxyCommand bitelab contssh' -l lab bitelab. "
    "The server is found from BITELAB_URL; no token is needed."
)


def build_parser():
    """The argument parser of ``python -m bitelab.client.contssh``."""
    parser = argparse.ArgumentParser(prog="bitelab contssh", description=DESCRIPTION)
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up connecting after this long (default: %(default)s)",
    )
    return parser


def server_address(base_url, timeout):
    """``(host, ssh_port)`` of the lab behind ``base_url``, from ``/api/v1/info``."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ContsshError(
            f"BITELAB_URL={base_url!r} is not an http:// or https:// URL",
            EXIT_CONFIG,
        )
    url = base_url.rstrip("/") + "/api/v1/info"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        status = EXIT_REFUSED if 400 <= exc.code < 500 else EXIT_UNREACHABLE
        raise ContsshError(f"{url}: HTTP {exc.code}", status) from exc
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        raise ContsshError(f"{url}: {reason}", EXIT_UNREACHABLE) from exc
    except (OSError, ValueError) as exc:
        raise ContsshError(f"{url}: {exc}", EXIT_UNREACHABLE) from exc
    try:
        port = int(json.loads(raw.decode("utf-8"))["ssh_port"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ContsshError(
            f"{url}: the answer has no ssh_port; is BITELAB_URL a bitelab server?",
            EXIT_UNREACHABLE,
        ) from exc
    return parts.hostname, port


def connect(host, port, timeout):
    """A connected TCP socket to ``host:port`` in blocking mode."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ContsshError(
            f"cannot connect to SSH at {host}:{port}: {reason}", EXIT_UNREACHABLE
        ) from exc
    sock.settimeout(None)
    return sock


def pipe(sock, stdin_fd, stdout_fd):
    """Copy ``stdin_fd`` to ``sock`` and ``sock`` to ``stdout_fd``.

    At end of stdin, the socket's sending side is shut down and reading goes
    on; the copy ends when the server closes the socket.
    """
    readers = [sock, stdin_fd]
    while True:
        ready, _, _ = select.select(readers, [], [])
        if stdin_fd in ready:
            data = os.read(stdin_fd, _CHUNK)
            if data:
                sock.sendall(data)
            else:
                readers.remove(stdin_fd)
                sock.shutdown(socket.SHUT_WR)
        if sock in ready:
            data = sock.recv(_CHUNK)
            if not data:
                return
            _write_all(stdout_fd, data)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def run(timeout, environ):
    """Find the server, connect, and pipe until it closes; the exit status."""
    base_url = environ.get("BITELAB_URL", "").strip()
    if not base_url:
        raise ContsshError(
            "BITELAB_URL is not set; set it to the lab's address, "
            "e.g. export BITELAB_URL=https://lab.example.org",
            EXIT_CONFIG,
        )
    host, port = server_address(base_url, timeout)
    sock = connect(host, port, timeout)
    with sock:
        try:
            pipe(sock, sys.stdin.fileno(), sys.stdout.fileno())
        except BrokenPipeError:
            # ssh went away first: nothing is left to deliver.
            pass
        except OSError as exc:
            raise ContsshError(
                f"connection to SSH at {host}:{port} broke: {exc.strerror or exc}",
                EXIT_UNREACHABLE,
            ) from exc
    return 0


def execute(timeout, environ=None):
    """Run ``contssh`` and turn its errors into a message; the exit status."""
    try:
        return run(timeout, os.environ if environ is None else environ)
    except ContsshError as exc:
        print(f"bitelab contssh: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


def main(argv=None):
    """Entry point of ``python -m bitelab.client.contssh``."""
    return execute(build_parser().parse_args(argv).timeout)


if __name__ == "__main__":
    sys.exit(main())
