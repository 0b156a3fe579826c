"""``bitelab``: the command-line client of a bitelab server.

The lab is named by ``--lab NAME`` (or ``BITELAB_LAB``) from the labs file,
or given by ``BITELAB_URL``, ``BITELAB_AUTH`` and ``BITELAB_CACERT`` (see
``settings``).  Exit statuses: 0 done, 1 the server refused, 2 usage or local
configuration error, 3 the server is unreachable or failing, 4 the setup
script failed, 5 a power operation failed, 6 a scripted console did not see
what it expected.

Commands that only read (``list``, ``info``, ``console``...) use the
standard library's HTTP client (``quick``); the others import Twisted and
treq, which take longer to load than such a command takes to run.
"""

import argparse
import json
import os
import re
import signal
import sys
import time
from datetime import UTC
from pathlib import Path

from bitelab import __version__
from bitelab.client import contssh
from bitelab.client.errors import (
    ClientError,
    Failed,
    Refused,
    Unreachable,
    WaitCancelled,
)
from bitelab.client.render import (
    Moment,
    parse_time,
    render_board,
    render_boards,
    render_cancelled,
    render_classes,
    render_event,
    render_labs,
    render_logout,
    render_queue,
    render_released,
    render_reserved,
    render_web_link,
    render_whoami,
    show_time,
)
from bitelab.client.settings import (
    ConfigProblem,
    add_lab,
    labs_file,
    load_settings,
    read_labs,
    remove_lab,
    save_token,
    token_command,
)

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_SETUP_FAILED = 4
EXIT_POWER_FAILED = 5
#: the shell's status of a command ended by Ctrl-C (SIGINT)
EXIT_INTERRUPTED = 128 + signal.SIGINT

#: what a board's name is made of (the server's rule)
_BOARD_NAME = re.compile(r"[A-Za-z0-9._-]+")

#: exit statuses of server failures that have one of their own
FAILURE_STATUS = {"setup_failed": EXIT_SETUP_FAILED, "power_failed": EXIT_POWER_FAILED}

DEFAULT_TIMEOUT = 30.0
DEFAULT_EXPECT_TIMEOUT = 30.0
DEFAULT_KEYS = ("id_ed25519.pub", "id_rsa.pub")
POWER_VALUES = ("on", "off", "cycle")
#: commands served by the quick (standard library) client or none at all
QUICK_COMMANDS = {"list", "classes", "info", "whoami", "console", "log", "token"}
QUICK_COMMANDS |= {"queue", "watch"}
#: ``--wait`` without a value: as long as the lab allows
WAIT_LONGEST = "max"
#: pauses of ``watch`` before following a lost stream again
WATCH_BACKOFF_FIRST = 0.5
WATCH_BACKOFF_MAX = 10.0

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+)(min|[smhdw])")


def parse_duration(text):
    """Seconds in ``text``: ``90``, ``30m``, ``2h``, ``1d``, ``1h30m`` (also
    ``s``, ``min``, ``w``); ``ValueError`` if it is not a positive duration."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    else:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"not a duration: {text!r} (e.g. 90, 30m, 2h, 1d)")
        seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"must be more than 0: {text!r}")
    return seconds


def _duration(text):
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    if not value > 0:
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
        return key, _duration(value)
    raise argparse.ArgumentTypeError(
        f"unknown setting {key!r}; use power=on|off|cycle or timeout=DURATION"
    )


def _waiter_id(text):
    if not text.isdigit() or len(text) > 18:
        raise argparse.ArgumentTypeError(
            f"not a waiter id: {text!r} (bitelab queue shows the ids)"
        )
    return int(text)


def _pattern(text):
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"bad regular expression {text!r}: {exc}")


class _Step(argparse.Action):
    """Appends ``(kind, value)`` to ``steps``, keeping the order given."""

    def __call__(self, parser, namespace, values, option_string=None):
        steps = list(getattr(namespace, self.dest, None) or [])
        steps.append((self.const, values))
        setattr(namespace, self.dest, steps)


def _send(text):
    from bitelab.client.console import send_bytes

    return send_bytes(text)


def _common_options(default):
    """Options accepted before and after the command name.

    The sub-command copies default to SUPPRESS so that a value given before
    the command name is not overwritten by the sub-command's default.
    """

    def value(given):
        return given if default else argparse.SUPPRESS

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--json",
        action="store_true",
        default=value(False),
        help="print the API's JSON document instead of text",
    )
    parser.add_argument(
        "--http-timeout",
        dest="http_timeout",
        type=_positive_seconds,
        default=value(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"give up on the server after this long (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--lab",
        default=value(None),
        metavar="NAME",
        help="the lab NAME of the labs file (default: BITELAB_LAB, else "
        "BITELAB_URL and BITELAB_AUTH)",
    )
    parser.add_argument(
        "--utc",
        action="store_true",
        default=value(False),
        help="show times in UTC instead of the local time zone",
    )
    return parser


def _complete_boards(prefix, parsed_args, **kwargs):
    """Shell completion of board names (and class names for ``reserve``)."""
    from bitelab.client.quick import QuickAPI, run_sync

    try:
        settings = load_settings(os.environ, getattr(parsed_args, "lab", None))
        api = QuickAPI(settings.url, settings.token, 5.0, settings.cacert)
        names = [b["name"] for b in run_sync(api.boards())["boards"]]
        if getattr(parsed_args, "command", None) == "reserve":
            names += [c["name"] for c in run_sync(api.classes())["classes"]]
    except (ClientError, ConfigProblem, KeyError, TypeError):
        return []
    return [name for name in names if name.startswith(prefix)]


def _board_argument(parser, metavar="BOARD"):
    parser.add_argument("board", metavar=metavar).completer = _complete_boards


def build_parser():
    """The argument parser of the ``bitelab`` command."""
    parser = argparse.ArgumentParser(
        prog="bitelab",
        parents=[_common_options(True)],
        description=(
            "Reserve and use the boards of a bitelab lab. Needs BITELAB_URL "
            "(the server's address) and BITELAB_AUTH (a token: export "
            "BITELAB_AUTH=$(bitelab token)), or a lab of the labs file "
            "(--lab NAME or BITELAB_LAB; see bitelab labs)."
        ),
        epilog="Exit status: 0 done, 1 refused by the server, 2 usage or "
        "configuration error, 3 server unreachable or failing, 4 the setup "
        "script failed, 5 a power operation failed, 6 a scripted console did "
        "not see what it expected.",
    )
    parser.add_argument("--version", action="version", version=f"bitelab {__version__}")
    common = [_common_options(False)]
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, text, description=None):
        return commands.add_parser(
            name, parents=common, help=text, description=description or text
        )

    add(
        "list",
        "list the boards: class, state, holder, expiry and power (and, in a lab "
        "of several hosts, each board's host)",
    )
    add("classes", "list the board classes with free and total boards")
    _board_argument(add("info", "show one board"))
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
        type=_duration,
        metavar="DURATION",
        help="how long the reservation lasts: seconds, or 30m, 2h, 1d "
        "(default: the board's)",
    )
    reserve.add_argument(
        "--wait",
        nargs="?",
        const=WAIT_LONGEST,
        metavar="DURATION",
        help="if none is free, wait in the lab's queue this long (30m, 2h...; "
        "without a value, as long as the lab allows); Ctrl-C leaves the queue",
    )
    reserve.add_argument(
        "--priority",
        type=int,
        metavar="N",
        help="with --wait: the place in the queue, higher first (admins only; "
        "default 0)",
    )
    reserve.add_argument("board", nargs="?", metavar="BOARD|CLASS").completer = (
        _complete_boards
    )
    release = add("release", "release a board you hold")
    release.add_argument(
        "-f",
        dest="force",
        action="store_true",
        help="release a board someone else holds (admins only)",
    )
    release.add_argument(
        "--reason",
        metavar="TEXT",
        help="with -f: why, for the holder to see",
    )
    _board_argument(release)
    setter = add("set", "switch power or extend the reservation of a board")
    setter.add_argument(
        "settings",
        nargs="+",
        type=_assignment,
        metavar="KEY=VALUE",
        help="power=on|off|cycle, timeout=DURATION (extends from now)",
    )
    _board_argument(setter)
    console = add(
        "console",
        "attach to a board's serial console over SSH",
        "Attach to a board's serial console over SSH. At a terminal, ~. at the "
        "start of a line detaches. With --send and --expect (in the order "
        "given) it runs without a terminal: it sends TEXT, waits for "
        "REGEX in the output, and exits 0 when every step is done, 6 when an "
        "expected pattern did not show within --timeout.",
    )
    console.add_argument(
        "-i",
        dest="identity",
        metavar="KEY",
        help="private key for ssh (default: ssh's own choice)",
    )
    console.add_argument(
        "--send",
        dest="steps",
        action=_Step,
        const="send",
        type=_send,
        metavar="TEXT",
        help="send TEXT; \\r, \\n, \\t, \\e, \\xHH and \\\\ are escapes",
    )
    console.add_argument(
        "--expect",
        dest="steps",
        action=_Step,
        const="expect",
        type=_pattern,
        metavar="REGEX",
        help="wait until the output shows REGEX (a Python regular expression)",
    )
    console.add_argument(
        "--timeout",
        dest="expect_timeout",
        type=_duration,
        default=DEFAULT_EXPECT_TIMEOUT,
        metavar="DURATION",
        help=f"longest wait of each --expect (default: {DEFAULT_EXPECT_TIMEOUT:g}s)",
    )
    _board_argument(console)
    log = add(
        "log",
        "print a board's console log",
        "Print the console log of your reservation of a board (admins: of "
        "anyone's).",
    )
    log.add_argument(
        "-f",
        dest="follow",
        action="store_true",
        help="keep printing what the board prints until the reservation ends",
    )
    log.add_argument(
        "--reservation",
        metavar="ID",
        help="the log of an earlier reservation of yours, by its id",
    )
    _board_argument(log)
    token = add(
        "token",
        "get an API token over SSH",
        "Get a new API token from the lab over SSH (your public key must be "
        "in the lab's keys directory) and print it, or keep it in the labs "
        "file with --save.",
    )
    token.add_argument("-i", dest="identity", metavar="KEY", help="private key for ssh")
    token.add_argument(
        "--save",
        action="store_true",
        help="keep the token as the token of --lab NAME in the labs file",
    )
    labs = add(
        "labs",
        "list, add or remove the labs of the labs file",
        "The labs file keeps the address, token and CA file of each lab you use, "
        "under a name for --lab or BITELAB_LAB.",
    )
    labs_actions = labs.add_subparsers(dest="labs_action", metavar="ACTION")
    labs_add = labs_actions.add_parser(
        "add", help="add a lab (or change its address)", parents=common
    )
    labs_add.add_argument("name", metavar="NAME")
    labs_add.add_argument("url", metavar="URL")
    labs_add.add_argument(
        "--cacert", metavar="FILE", help="CA certificates to check the lab's TLS with"
    )
    labs_remove = labs_actions.add_parser("remove", help="forget a lab", parents=common)
    labs_remove.add_argument("name", metavar="NAME")
    queue = add(
        "queue",
        "show who waits for boards, or leave the queue",
        "Show the lab's queue: your waiters in full, and how many wait in all "
        "(admins: everyone's). --cancel ID takes a waiter out of it (yours; "
        "admins: anyone's).",
    )
    queue.add_argument(
        "--cancel",
        type=_waiter_id,
        metavar="ID",
        help="take waiter ID out of the queue",
    )
    add(
        "watch",
        "follow what happens to your boards and waiters",
        "Print a line for each event of the lab's event stream as it happens: "
        "your boards' state changes, your waiters' places in the queue, notices "
        "before your reservations end (admins: everything). With --json, one "
        "JSON object a line. Follows the stream again if it is lost; Ctrl-C "
        "ends it.",
    )
    contssh.add_login_argument(
        add("contssh", "ProxyCommand for ssh to the lab", contssh.DESCRIPTION)
    )
    add(
        "web",
        "print a one-time link that signs you in to the web UI",
        "Print a link that signs you in to the lab's web UI in a browser, as "
        "the user of your token. It works once, within two minutes; the web "
        "session it starts ends when you sign out or when the token is revoked.",
    )
    add("whoami", "show the user the token belongs to")
    add("logout", "revoke the token in use")
    maintenance = add(
        "maintenance",
        "take a board out of service, or put it back (admins)",
    )
    maintenance.add_argument(
        "--end",
        action="store_true",
        help="end the maintenance: power off and free the board",
    )
    _board_argument(maintenance)
    maintenance.add_argument("reason", nargs="*", metavar="REASON")
    return parser


def parse_arguments(argv=None):
    """The parsed command line; usage errors exit with status 2."""
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    if args.command == "reserve":
        _settle_reserve(parser, args)
    return args


def _settle_reserve(parser, args):
    """``reserve --wait CLASS`` means to wait as long as the lab allows.

    ``--wait`` takes an optional value, so argparse hands it the board's
    name when the name follows it; a value that is no duration is the board.
    """
    wait = args.wait
    if wait not in (None, WAIT_LONGEST) and args.board is None:
        try:
            parse_duration(wait)
        except ValueError:
            args.board, wait = wait, WAIT_LONGEST
    if args.board is None:
        parser.error("reserve needs the BOARD or CLASS to reserve")
    if wait in (None, WAIT_LONGEST):
        args.wait = wait
    else:
        try:
            args.wait = parse_duration(wait)
        except ValueError as exc:
            parser.error(f"argument --wait: {exc}")
    if args.priority is not None and args.wait is None:
        parser.error("--priority orders the queue: it goes with --wait")


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


def _binary(out):
    return getattr(out, "buffer", out)


async def _console(api, args, settings, environ, out, err):
    from bitelab.client import console

    if not _BOARD_NAME.fullmatch(args.board):
        # the login reaches a shell: OpenSSH runs the ProxyCommand with it
        raise ConfigProblem(
            f"{args.board!r} is no board's name (letters, digits, '.', '_', '-')"
        )
    console.check_ssh()
    # the SSH service of the board's own host, in a lab of several hosts
    info = await api.info(args.board)
    if settings.token:
        board = await api.board(args.board)
        if not (board.get("attrs") or {}).get("console"):
            raise Refused(
                409, "unavailable", f"board {args.board} has no serial console"
            )
    target = console.SSHTarget(info, settings.url, environ, err)
    return console.attach(
        target,
        args.board,
        args.identity,
        console.ssh_environment(settings, environ),
        args.steps,
        args.expect_timeout,
        _binary(out),
        err,
    )


async def _token(api, args, settings, environ, out, err):
    from bitelab.client import console

    if args.save and settings.lab is None:
        raise ConfigProblem(
            "--save keeps the token of a lab: bitelab --lab NAME token --save"
        )
    target = console.SSHTarget(await api.info(), settings.url, environ, err)
    env = console.ssh_environment(settings, environ)
    status, token = console.fetch_token(target, args.identity, env)
    if token is None:
        return status
    if args.save:
        path = save_token(environ, settings.lab, token)
        err.write(f"bitelab: token of lab {settings.lab} saved in {path}\n")
        document = {"lab": settings.lab, "saved": True}
    else:
        document = {"token": token}
    if args.json:
        write_json(document, out)
    elif not args.save:
        out.write(token + "\n")
    return EXIT_OK


async def _reserve_waiting(api, args, key, err, interrupted):
    from bitelab.client.waiting import BoardWait, Progress

    wait = None if args.wait == WAIT_LONGEST else args.wait
    request = {"sshpubkey": key, "timeout": args.seconds, "priority": args.priority}
    waiting = BoardWait(api, args.board, request, wait, Progress(err, _is_tty(err)))
    if interrupted is not None:
        interrupted.addCallback(lambda _: waiting.cancel())
    return await waiting.run()


def _is_tty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


async def _watch(api, args, out, err, pause=time.sleep):
    """Follow the event stream; after a loss, follow it again with back-off.

    It runs on the quick client, whose calls block: ``pause`` blocks too.
    """
    tz = UTC if args.utc else None
    state = {"opened": False, "delay": WATCH_BACKOFF_FIRST}

    def show(event):
        data = event.document()
        if args.json:
            line = {"kind": event.kind}
            line.update(data if isinstance(data, dict) else {"data": event.data})
            out.write(json.dumps(line) + "\n")
        else:
            shown = data if data is not None else event.data
            out.write(render_event(event.kind, shown, Moment(time.time(), tz)))
        out.flush()

    def opened():
        if state["opened"]:
            err.write("bitelab: following the event stream again\n")
        state["opened"], state["delay"] = True, WATCH_BACKOFF_FIRST

    while True:
        try:
            await api.follow_events(show, on_open=opened)
            problem = "the server ended the event stream"
        except (Unreachable, Failed) as exc:
            if not state["opened"]:
                raise
            problem = str(exc)
        delay = state["delay"]
        err.write(f"bitelab: {problem}; following it again in {delay:g}s\n")
        pause(delay)
        state["delay"] = min(delay * 2, WATCH_BACKOFF_MAX)


async def run_command(api, args, settings, environ, out, err, interrupted=None):
    """Call the API for ``args.command``: ``(document, renderer)``, or the exit
    status of a command that wrote its own output.

    ``interrupted`` fires when the user presses Ctrl-C, for the commands
    that clean up first (``reserve --wait`` leaves the queue).
    """
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
        if args.wait is not None:
            board = await _reserve_waiting(api, args, key, err, interrupted)
        else:
            board = await api.reserve(args.board, sshpubkey=key, timeout=args.seconds)
        return board, render_reserved
    if command == "queue":
        if args.cancel is not None:
            return await api.cancel_waiter(args.cancel), render_cancelled
        return await api.queue(), render_queue
    if command == "watch":
        return await _watch(api, args, out, err)
    if command == "release":
        if args.reason is not None and not args.force:
            raise ConfigProblem("--reason goes with -f (a forced release)")
        board = await api.release(args.board, force=args.force, reason=args.reason)
        return board, render_released
    if command == "set":
        return await api.set_attrs(args.board, dict(args.settings)), render_board
    if command == "console":
        return await _console(api, args, settings, environ, out, err)
    if command == "log":
        await api.console_log(args.board, _binary(out), args.follow, args.reservation)
        return EXIT_OK
    if command == "token":
        return await _token(api, args, settings, environ, out, err)
    if command == "maintenance":
        if args.end:
            return await api.end_maintenance(args.board), render_board
        if not args.reason:
            raise ConfigProblem("say why: bitelab maintenance BOARD REASON...")
        return await api.maintenance(args.board, " ".join(args.reason)), render_board
    if command == "logout":
        return await api.revoke_token(), render_logout
    if command == "web":
        document = await api.login_link()
        document["url"] = settings.url.rstrip("/") + document["path"]
        if not args.json:
            zone = UTC if args.utc else None
            until = show_time(parse_time(document["expires_at"]), zone)
            err.write(f"bitelab: valid once, until {until}\n")
        return document, render_web_link
    raise ConfigProblem(f"unknown command {command!r}")


def error_document(code, message):
    """An error in the API's shape, for failures that have no API document."""
    return {"error": {"code": code, "message": message}}


def write_json(document, out):
    """``document`` as one indented JSON document and a newline."""
    out.write(json.dumps(document, indent=2) + "\n")


async def dispatch(api, args, settings, out, err, environ, moment, interrupted=None):
    """Run one command against ``api``; the exit status.

    Every failure a user can meet becomes one line on ``err``; with ``--json``
    an error document also goes to ``out`` (the API's own when there is one),
    so that ``out`` is always one JSON document.  ``interrupted``: see
    ``run_command``.
    """
    try:
        result = await run_command(api, args, settings, environ, out, err, interrupted)
    except WaitCancelled as exc:
        if args.json:
            write_json(error_document("cancelled", str(exc)), out)
        err.write(f"bitelab: {exc}\n")
        return EXIT_INTERRUPTED
    except ConfigProblem as exc:
        if args.json:
            write_json(error_document("usage", str(exc)), out)
        err.write(f"bitelab: {exc}\n")
        return EXIT_USAGE
    except Refused as exc:
        if args.json:
            write_json(exc.body or error_document(exc.code, exc.message), out)
        hint = ""
        command = token_command(settings.lab)
        if exc.status == 401 and command not in exc.message:
            hint = f"; get a new token with: {command}"
        err.write(f"bitelab: {exc.message} ({exc.code}){hint}\n")
        return EXIT_REFUSED
    except Failed as exc:
        if args.json:
            write_json(exc.body or error_document("failed", str(exc)), out)
        err.write(f"bitelab: {exc}\n")
        return FAILURE_STATUS.get(exc.code, EXIT_UNREACHABLE)
    except ClientError as exc:
        if args.json:
            write_json(error_document("unreachable", str(exc)), out)
        err.write(f"bitelab: {exc}\n")
        return EXIT_UNREACHABLE
    if isinstance(result, int):
        return result
    document, render = result
    if args.json:
        write_json(document, out)
    else:
        out.write(render(document, moment))
    return EXIT_OK


def run_labs(args, environ, out):
    """``bitelab labs [add|remove]``: the labs file; the exit status."""
    if args.labs_action == "add":
        path = add_lab(environ, args.name, args.url, args.cacert)
        if not args.json:
            out.write(f"lab {args.name} at {args.url} in {path}\n")
    elif args.labs_action == "remove":
        path = remove_lab(environ, args.name)
        if not args.json:
            out.write(f"lab {args.name} removed from {path}\n")
    labs = read_labs(environ)
    document = {
        "file": str(labs_file(environ)),
        "labs": [
            {"name": name, "url": lab["url"], "token": bool(lab["token"])}
            | ({"cacert": lab["cacert"]} if lab["cacert"] else {})
            for name, lab in sorted(labs.items())
        ],
    }
    if args.json:
        write_json(document, out)
    elif args.labs_action is None:
        out.write(render_labs(document, None))
    return EXIT_OK


def _react_main(reactor, args, settings):
    from twisted.internet import defer

    from bitelab.client.http import LabAPI, make_client

    # Ctrl-C should end a command at once, like any other Unix tool, not be
    # reported as a broken connection while the reactor shuts down.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    interrupted = None
    if getattr(args, "wait", None) is not None:
        # a waiting reserve leaves the queue before it ends; a second
        # Ctrl-C ends it at once
        interrupted = defer.Deferred()

        def on_interrupt(signum, frame):
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            reactor.callFromThread(interrupted.callback, None)

        signal.signal(signal.SIGINT, on_interrupt)
    client = make_client(reactor, args.http_timeout, settings.cacert)
    api = LabAPI(client, settings.url, settings.token, reactor, args.http_timeout)
    moment = Moment(reactor.seconds(), UTC if args.utc else None)
    coroutine = dispatch(
        api, args, settings, sys.stdout, sys.stderr, os.environ, moment, interrupted
    )
    d = defer.Deferred.fromCoroutine(coroutine)

    def finish(status):
        if status == EXIT_INTERRUPTED and interrupted is not None:
            # end as Ctrl-C ends any command, so that a calling shell stops too
            sys.stdout.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
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


def _run_quick(args, settings):
    from bitelab.client.quick import QuickAPI, run_sync

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    api = QuickAPI(settings.url, settings.token, args.http_timeout, settings.cacert)
    moment = Moment(time.time(), UTC if args.utc else None)
    coroutine = dispatch(
        api, args, settings, sys.stdout, sys.stderr, os.environ, moment
    )
    try:
        return run_sync(coroutine)
    except BrokenPipeError:
        # the reader went away (| head): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _usage_error(args, message):
    if args.json:
        write_json(error_document("usage", message), sys.stdout)
    sys.stderr.write(f"bitelab: {message}\n")
    sys.exit(EXIT_USAGE)


def main(argv=None):
    """Entry point of the ``bitelab`` console script."""
    args = parse_arguments(argv)
    if args.command is None:
        build_parser().print_usage(sys.stderr)
        sys.stderr.write("bitelab: error: a command is required; see bitelab --help\n")
        sys.exit(EXIT_USAGE)
    try:
        if args.command == "labs":
            sys.exit(run_labs(args, os.environ, sys.stdout))
        if args.command == "contssh":
            url = cacert = None
            if args.lab or os.environ.get("BITELAB_LAB"):
                settings = load_settings(os.environ, args.lab, need_token=False)
                url, cacert = settings.url, settings.cacert
            sys.exit(
                contssh.execute(
                    args.http_timeout, url=url, cacert=cacert, login=args.login
                )
            )
        settings = load_settings(
            os.environ, args.lab, need_token=args.command not in ("console", "token")
        )
    except ConfigProblem as exc:
        _usage_error(args, str(exc))
    if args.command in QUICK_COMMANDS and getattr(args, "cancel", None) is None:
        sys.exit(_run_quick(args, settings))

    from twisted.internet import task

    task.react(_react_main, (args, settings))
