"""``bitelab contssh``: an OpenSSH ProxyCommand that finds the lab's SSH server.

Use it as ``ssh -o 'ProxyCommand bitelab contssh' -l lab bitelab``. It asks
``$BITELAB_URL/api/v1/info`` for the SSH port (checking an https server
against ``BITELAB_CACERT`` when set), connects to that port on the host of
``BITELAB_URL`` and copies bytes between its stdin/stdout and the socket.
With ``--login %r`` (as ``bitelab console`` runs it), a board's console
login goes to the SSH service of the host the board hangs off, wherever
``BITELAB_URL`` points in a lab of several hosts.
OpenSSH starts it for every connection, so it imports only the standard
library.
"""

import argparse
import os
import select
import socket
import sys
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
    "The server is found from BITELAB_URL (or --lab); no token is needed."
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
    add_login_argument(parser)
    return parser


def add_login_argument(parser):
    """``--login``: the login ssh makes (its ``%r``)."""
    parser.add_argument(
        "--login",
        metavar="LOGIN",
        help="the login ssh makes (%%r): a board's console is served by the "
        "host the board hangs off",
    )


def server_address(base_url, timeout, cacert=None, login=None):
    """``(host, ssh_port)`` of the lab behind ``base_url``, from ``/api/v1/info``.

    ``cacert`` is a CA file to check an https server's certificate against;
    ``login`` the login ssh makes, whose host may be another of the lab's.
    """
    from bitelab.client.errors import ClientError, Refused
    from bitelab.client.quick import QuickAPI, run_sync

    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ContsshError(
            f"BITELAB_URL={base_url!r} is not an http:// or https:// URL",
            EXIT_CONFIG,
        )
    api = QuickAPI(base_url, None, timeout, cacert)
    try:
        info = run_sync(api.info(login))
    except Refused as exc:
        raise ContsshError(f"{api.url('/info')}: {exc}", EXIT_REFUSED) from exc
    except ClientError as exc:
        raise ContsshError(str(exc), EXIT_UNREACHABLE) from exc
    try:
        port = int(info["ssh_port"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ContsshError(
            f"{api.url('/info')}: the answer has no ssh_port; "
            "is BITELAB_URL a bitelab server?",
            EXIT_UNREACHABLE,
        ) from exc
    return info.get("ssh_host") or parts.hostname, port


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


def run(timeout, environ, url=None, cacert=None, login=None):
    """Find the server, connect, and pipe until it closes; the exit status.

    The lab is at ``url`` (default ``BITELAB_URL``), its CA file ``cacert``
    (default ``BITELAB_CACERT``); ``login`` is the login ssh makes.
    """
    base_url = (url or environ.get("BITELAB_URL", "")).strip()
    if not base_url:
        raise ContsshError(
            "BITELAB_URL is not set; set it to the lab's address, "
            "e.g. export BITELAB_URL=https://lab.example.org",
            EXIT_CONFIG,
        )
    cacert = cacert or environ.get("BITELAB_CACERT", "").strip() or None
    host, port = server_address(base_url, timeout, cacert, login)
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


def execute(timeout, environ=None, url=None, cacert=None, login=None):
    """Run ``contssh`` and turn its errors into a message; the exit status."""
    try:
        environ = os.environ if environ is None else environ
        return run(timeout, environ, url, cacert, login)
    except ContsshError as exc:
        print(f"bitelab contssh: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


def main(argv=None):
    """Entry point of ``python -m bitelab.client.contssh``."""
    args = build_parser().parse_args(argv)
    return execute(args.timeout, login=args.login)


if __name__ == "__main__":
    sys.exit(main())
