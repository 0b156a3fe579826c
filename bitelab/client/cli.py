"""``bitelab``: the command-line client of a bitelab server.

Configuration comes from the environment: ``BITELAB_URL`` (the server's base
URL) and ``BITELAB_AUTH`` (an API token). Exit statuses: 0 done, 1 the server
refused, 2 usage or local configuration error, 3 the server is unreachable or
failing.

Twisted and treq are imported only once a command needs HTTP, so that
``bitelab contssh``, which OpenSSH starts for every connection, stays quick.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from bitelab.client import contssh

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

#: How to get a token: OpenSSH, through this very client, to the ``lab`` user.
TOKEN_COMMAND = "ssh -o 'ProxyCommand bitelab contssh' -l lab bitelab"

DEFAULT_TIMEOUT = 30.0
DEFAULT_KEYS = ("id_ed25519.pub", "id_rsa.pub")
POWER_VALUES = ("on", "off", "cycle")


class ConfigProblem(Exception):
    """A usage or local configuration problem: exit status 2, one-line message."""


class Settings(NamedTuple):
    """Where the server is and the token to show it."""

    url: str
    token: str | None


def load_settings(environ, need_token=True):
    """Read ``BITELAB_URL`` and ``BITELAB_AUTH``; ``ConfigProblem`` if unusable."""
    url = environ.get("BITELAB_URL", "").strip()
    if not url:
        raise ConfigProblem(
            "BITELAB_URL is not set; set it to the lab server's address, "
            "e.g. export BITELAB_URL=http://lab.example.org:8080"
        )
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ConfigProblem(
            f"BITELAB_URL={url!r} is not an http:// or https:// URL; "
            "set it to the lab server's address, e.g. http://lab.example.org:8080"
        )
    token = environ.get("BITELAB_AUTH", "").strip() or None
    if need_token and token is None:
        raise ConfigProblem(
            f"BITELAB_AUTH is not set; get a token with: {TOKEN_COMMAND} "
            "and then: export BITELAB_AUTH=TOKEN"
        )
    return Settings(url=url, token=token)


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _whole_seconds(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _assignment(text):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key == "power":
        if value not in POWER_VALUES:
            raise argparse.ArgumentTypeError(
                f"power must be one of {', '.join(POWER_VALUES)}, not {value!r}"
            )
        return key, value
    if key == "timeout":
        return key, _whole_seconds(value)
    raise argparse.ArgumentTypeError(
        f"unknown setting {key!r}; use power=on|off|cycle or timeout=SECONDS"
    )


def _common_options(default):
    """Options accepted before and after the command name.

    The sub-command copies default to SUPPRESS so that a value given before
    the command name is not overwritten by the sub-command's default.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if default else argparse.SUPPRESS,
        help="print the API's JSON document instead of text",
    )
    parser.add_argument(
        "--http-timeout",
        dest="http_timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT if default else argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"give up on the server after this long (default: {DEFAULT_TIMEOUT:g})",
    )
    return parser


def build_parser():
    """The argument parser of the ``bitelab`` command."""
    parser = argparse.ArgumentParser(
        prog="bitelab",
        parents=[_common_options(True)],
        description=(
            "Reserve and use the boards of a bitelab lab. Needs BITELAB_URL "
            f"(the server's address) and BITELAB_AUTH (a token: {TOKEN_COMMAND})."
        ),
        epilog="Exit status: 0 done, 1 refused by the server, 2 usage or "
        "configuration error, 3 server unreachable or failing.",
    )
    common = [_common_options(False)]
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, text, description=None):
        return commands.add_parser(
            name, parents=common, help=text, description=description or text
        )

    add("list", "list the boards: class, state, holder, expiry and power")
    add("classes", "list the board classes with free and total boards")
    add("info", "show one board").add_argument("board", metavar="BOARD")
    reserve = add("reserve", "reserve a board, or any free board of a class")
    reserve.add_argument(
        "-i",
        dest="key",
        metavar="KEY.pub",
        help="SSH public key for the board's jail (default: ~/.ssh/id_ed25519.pub "
        "or ~/.ssh/id_rsa.pub if present)",
    )
    reserve.add_argument(
        "-t",
        "--timeout",
        dest="seconds",
        type=_whole_seconds,
        metavar="SECONDS",
        help="how long the reservation lasts (default: the board's)",
    )
    reserve.add_argument("board", metavar="BOARD|CLASS")
    release = add("release", "release a board you hold")
    release.add_argument(
        "-f",
        dest="force",
        action="store_true",
        help="release a board someone else holds (admins only)",
    )
    release.add_argument("board", metavar="BOARD")
    setter = add("set", "switch power or extend the reservation of a board")
    setter.add_argument(
        "settings",
        nargs="+",
        type=_assignment,
        metavar="KEY=VALUE",
        help="power=on|off|cycle, timeout=SECONDS (extends from now)",
    )
    setter.add_argument("board", metavar="BOARD")
    console = add("console", "attach to a board's serial console over SSH")
    console.add_argument(
        "-i",
        dest="identity",
        metavar="KEY",
        help="private key for ssh (default: ssh's own choice)",
    )
    console.add_argument("board", metavar="BOARD")
    add("contssh", "ProxyCommand for ssh to the lab", contssh.DESCRIPTION)
    add("whoami", "show the user the token belongs to")
    add("logout", "revoke the token in BITELAB_AUTH")
    maintenance = add(
        "maintenance",
        "take a board out of service, or put it back (admins)",
    )
    maintenance.add_argument(
        "--end",
        action="store_true",
        help="end the maintenance: power off and free the board",
    )
    maintenance.add_argument("board", metavar="BOARD")
    maintenance.add_argument("reason", nargs="*", metavar="REASON")
    return parser


def proxy_command():
    """The ProxyCommand that runs this installation's ``contssh``.

    Spelled with this interpreter so that it works from a virtualenv that is
    not on ``PATH``; ``%`` is doubled because OpenSSH expands it.
    """
    command = shlex.join([sys.executable, "-m", "bitelab.client.contssh"])
    return command.replace("%", "%%")


def host_alias(url):
    """The name this lab's host key is kept under in ``known_hosts``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"bitelab-{parts.hostname}-{port}"


def console_argv(board, url):
    """The ``ssh`` command line that attaches to ``board``'s console."""
    return [
        "ssh",
        "-o",
        f"ProxyCommand={proxy_command()}",
        "-o",
        f"HostKeyAlias={host_alias(url)}",
        "-l",
        board,
        "bitelab",
    ]


def exec_console(board, identity=None):
    """Replace this process with ``ssh`` attached to ``board``'s console."""
    argv = console_argv(board, os.environ.get("BITELAB_URL", ""))
    if identity:
        argv[1:1] = ["-i", identity]
    if shutil.which(argv[0]) is None:
        raise ConfigProblem("ssh not found on PATH; install the OpenSSH client")
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise ConfigProblem(f"cannot run ssh: {exc.strerror or exc}") from exc


def read_public_key(path, home):
    """The text of the SSH public key at ``path`` (or a default one), or ``None``."""
    if path is None:
        for name in DEFAULT_KEYS:
            candidate = Path(home) / ".ssh" / name
            if candidate.is_file():
                path = candidate
                break
        else:
            return None
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigProblem(f"cannot read public key {path}: {reason}") from exc
    if "PRIVATE KEY" in text:
        raise ConfigProblem(f"{path} is a private key; give the .pub file with -i")
    if not text:
        raise ConfigProblem(f"public key file {path} is empty")
    return text


def parse_time(text):
    """An ISO 8601 time from the API as an aware ``datetime``, or ``None``."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def relative(text, now):
    """``text`` (ISO time) relative to ``now`` (epoch seconds): ``in 1h05m``."""
    value = parse_time(text)
    if value is None:
        return text or "-"
    seconds = int(value.timestamp() - now)
    if seconds <= 0:
        return "expired"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"in {hours // 24}d"
    if hours:
        return f"in {hours}h{minutes:02d}m"
    if minutes:
        return f"in {minutes}m"
    return f"in {secs}s"


def absolute(text, now):
    """``text`` (ISO time) as short UTC with the relative time: for details."""
    value = parse_time(text)
    if value is None:
        return text or "-"
    short = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if text and value.timestamp() > now:
        return f"{short} ({relative(text, now)})"
    return short


def table(headers, rows):
    """Rows of text as aligned columns, with a header line."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [
        max(len(cell) for cell in column)
        for column in zip(headers, *rows, strict=False)
    ]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [list(headers), *rows]
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _or_dash(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value in (None, "") else value


def _count(value):
    return len(value) if isinstance(value, list | tuple) else value


def _state(board):
    """The state column: maintenance with its reason, removed boards marked."""
    state = _or_dash(board.get("state"))
    reason = board.get("reason")
    if reason:
        # the table stays narrow; `info` shows the whole reason
        state += f" ({reason[:37] + '...' if len(reason) > 40 else reason})"
    if board.get("removed"):
        state += " [removed from the board file]"
    return state


def render_boards(document, now):
    """The ``list`` table."""
    rows = [
        [
            board.get("name"),
            _or_dash(board.get("class")),
            _state(board),
            _or_dash(board.get("holder")),
            relative(board.get("expires_at"), now) if board.get("expires_at") else "-",
            _or_dash((board.get("attrs") or {}).get("power")),
        ]
        for board in document.get("boards", [])
    ]
    if not rows:
        return "no boards\n"
    return table(["BOARD", "CLASS", "STATE", "HOLDER", "EXPIRES", "POWER"], rows)


def render_classes(document, now):
    """The ``classes`` table."""
    known = {"name", "arch", "free", "boards"}
    rows = [
        [
            cls.get("name"),
            _or_dash(cls.get("arch")),
            f"{_count(cls.get('free', 0))}/{_count(cls.get('boards', 0))}",
            " ".join(
                f"{key}={value}"
                for key, value in sorted(cls.items())
                if key not in known
            )
            or "-",
        ]
        for cls in document.get("classes", [])
    ]
    if not rows:
        return "no classes\n"
    return table(["CLASS", "ARCH", "FREE/TOTAL", "ATTRIBUTES"], rows)


def render_board(board, now):
    """One board's details, then its attributes."""
    fields = [
        ("board", board.get("name")),
        ("class", _or_dash(board.get("class"))),
        ("arch", _or_dash(board.get("arch"))),
        ("state", _or_dash(board.get("state"))),
        ("holder", _or_dash(board.get("holder"))),
        ("reserved", absolute(board.get("reserved_at"), now)),
        ("expires", absolute(board.get("expires_at"), now)),
    ]
    extra = [
        (key, value)
        for key, value in board.items()
        if key not in {"name", "class", "arch", "state", "holder", "attrs"}
        and key not in {"reserved_at", "expires_at", "removed"}
        and value not in (None, "")
    ]
    if board.get("removed"):
        extra.append(("removed", "yes: no longer in the board file; release it"))
    attributes = sorted((board.get("attrs") or {}).items())
    width = max(len(key) for key, _ in fields + extra + attributes) + 1
    lines = [f"{key + ':':<{width}} {value}" for key, value in fields + extra]
    if attributes:
        lines.append("attributes:")
        lines.extend(f"  {key}={_or_dash(value)}" for key, value in attributes)
    return "\n".join(lines) + "\n"


def render_reserved(board, now):
    """What ``reserve`` got: the board, its expiry and the setup attributes."""
    name = board.get("name")
    head = f"reserved {name} (class {_or_dash(board.get('class'))})"
    if board.get("expires_at"):
        head += f" until {absolute(board['expires_at'], now)}"
    lines = [head]
    lines.extend(
        f"  {key}={_or_dash(value)}"
        for key, value in sorted((board.get("attrs") or {}).items())
    )
    if (board.get("attrs") or {}).get("console"):
        lines.append(f"console: bitelab console {name}")
    return "\n".join(lines) + "\n"


def render_logout(document, now):
    """What ``logout`` did."""
    return f"token of {document.get('user')} revoked\n"


def render_released(board, now):
    """What ``release`` did; a board left in maintenance says why."""
    text = f"released {board.get('name')}: now {_or_dash(board.get('state'))}"
    if board.get("reason"):
        text += f" ({board['reason']}; an admin ends it with: "
        text += f"bitelab maintenance --end {board.get('name')})"
    return text + "\n"


def render_whoami(document, now):
    """The token's user."""
    suffix = " (admin)" if document.get("admin") else ""
    return f"{document.get('user')}{suffix}\n"


async def run_command(api, args, environ):
    """Call the API for ``args.command``; ``(document, renderer)``."""
    from bitelab.client.http import Refused

    command = args.command
    if command == "list":
        return await api.boards(), render_boards
    if command == "classes":
        return await api.classes(), render_classes
    if command == "info":
        return await api.board(args.board), render_board
    if command == "whoami":
        return await api.whoami(), render_whoami
    if command == "reserve":
        key = read_public_key(args.key, environ.get("HOME") or Path.home())
        board = await api.reserve(args.board, sshpubkey=key, timeout=args.seconds)
        return board, render_reserved
    if command == "release":
        return await api.release(args.board, force=args.force), render_released
    if command == "set":
        return await api.set_attrs(args.board, dict(args.settings)), render_board
    if command == "console":
        board = await api.board(args.board)
        if not (board.get("attrs") or {}).get("console"):
            raise Refused(
                409, "unavailable", f"board {args.board} has no serial console"
            )
        exec_console(args.board, args.identity)  # does not return
    if command == "maintenance":
        if args.end:
            return await api.end_maintenance(args.board), render_board
        if not args.reason:
            raise ConfigProblem("say why: bitelab maintenance BOARD REASON...")
        return await api.maintenance(args.board, " ".join(args.reason)), render_board
    if command == "logout":
        return await api.revoke_token(), render_logout
    raise ConfigProblem(f"unknown command {command!r}")


def error_document(code, message):
    """An error in the API's shape, for failures that have no API document."""
    return {"error": {"code": code, "message": message}}


def write_json(document, out):
    """``document`` as one indented JSON document and a newline."""
    out.write(json.dumps(document, indent=2) + "\n")


async def dispatch(reactor, args, settings, client, out, err, environ):
    """Run one command against the API; the exit status.

    Every failure a user can meet becomes one line on ``err``; with ``--json``
    an error document also goes to ``out`` (the API's own when there is one),
    so that ``out`` is always one JSON document.
    """
    from bitelab.client.http import ClientError, Failed, LabAPI, Refused

    api = LabAPI(client, settings.url, settings.token, reactor, args.http_timeout)
    try:
        document, render = await run_command(api, args, environ)
    except ConfigProblem as exc:
        if args.json:
            write_json(error_document("usage", str(exc)), out)
        err.write(f"bitelab: {exc}\n")
        return EXIT_USAGE
    except Refused as exc:
        if args.json:
            write_json(exc.body or error_document(exc.code, exc.message), out)
        hint = ""
        if exc.status == 401 and TOKEN_COMMAND not in exc.message:
            hint = f"; get a new token with: {TOKEN_COMMAND}"
        err.write(f"bitelab: {exc.message} ({exc.code}){hint}\n")
        return EXIT_REFUSED
    except Failed as exc:
        if args.json:
            write_json(exc.body or error_document("failed", str(exc)), out)
        err.write(f"bitelab: {exc}\n")
        return EXIT_UNREACHABLE
    except ClientError as exc:
        if args.json:
            write_json(error_document("unreachable", str(exc)), out)
        err.write(f"bitelab: {exc}\n")
        return EXIT_UNREACHABLE
    if args.json:
        write_json(document, out)
    else:
        out.write(render(document, reactor.seconds()))
    return EXIT_OK


def make_client(reactor, timeout):
    """A treq ``HTTPClient`` without persistent connections."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, pool=pool, connectTimeout=timeout))


def _react_main(reactor, args, settings):
    from twisted.internet import defer

    # Ctrl-C should end a command at once, like any other Unix tool, not be
    # reported as a broken connection while the reactor shuts down.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    client = make_client(reactor, args.http_timeout)
    coroutine = dispatch(
        reactor, args, settings, client, sys.stdout, sys.stderr, os.environ
    )
    d = defer.Deferred.fromCoroutine(coroutine)

    def finish(status):
        if status:
            raise SystemExit(status)

    def unexpected(failure):
        if failure.check(SystemExit):
            return failure
        sys.stderr.write(
            f"bitelab: unexpected {failure.type.__name__}: {failure.getErrorMessage()}\n"
        )
        raise SystemExit(EXIT_UNREACHABLE)

    return d.addCallback(finish).addErrback(unexpected)


def main(argv=None):
    """Entry point of the ``bitelab`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        sys.stderr.write("bitelab: error: a command is required; see bitelab --help\n")
        sys.exit(EXIT_USAGE)
    if args.command == "contssh":
        sys.exit(contssh.execute(args.http_timeout))
    try:
        settings = load_settings(os.environ, need_token=args.command != "console")
        if args.command == "console" and not settings.token:
            # without a token the SSH server alone says whether it may be used
            exec_console(args.board, args.identity)
    except ConfigProblem as exc:
        if args.json:
            write_json(error_document("usage", str(exc)), sys.stdout)
        sys.stderr.write(f"bitelab: {exc}\n")
        sys.exit(EXIT_USAGE)

    from twisted.internet import task

    task.react(_react_main, (args, settings))
