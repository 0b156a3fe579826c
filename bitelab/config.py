"""Loading the server's ``.env`` file and the UCL board file.

Both loaders return frozen attrs objects and raise ``ConfigError`` with one
line naming the file, the key (or board and option) and the problem.
"""

import os
import re

import attrs

from bitelab import ucl
from bitelab.errors import ConfigError

#: board, class and user names; use ``fullmatch``: ``$`` also matches
#: before a trailing newline
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
#: the SSH login name that asks for a token; no board may be called so
RESERVED_LOGIN = "lab"
USER_RE = NAME_RE


@attrs.frozen
class Config:
    """The server configuration from ``.env``; paths are absolute."""

    path: str
    db_file: str
    board_conf: str
    http_endpoint: str = "tcp:8080"
    ssh_endpoint: str = "tcp:2222"
    ssh_host_key: str = ""
    ssh_keys_dir: str = ""
    admins: frozenset = frozenset()
    console_log_dir: str = ""
    console_log_max_bytes: int = 4 * 1024 * 1024
    console_log_backups: int = 4
    default_timeout: int = 3600
    max_timeout: int = 7 * 24 * 3600
    setup_script_timeout: int = 60
    power_cycle_pause: float = 2.0
    expiry_interval: float = 1.0
    lab_name: str = "bitelab"
    #: PostgreSQL URL, instead of ``db_file``
    db_url: str = ""
    #: HTTP access log file; empty: access lines go to the server's log
    http_access_log: str = ""
    #: reservations wound down (power off, release script) at the same time
    release_concurrency: int = 8
    #: reserve-script failures in a row that send a board to maintenance
    max_setup_failures: int = 3
    #: seconds a write waits for a database another process holds
    db_busy_timeout: float = 5.0
    #: boards one user may hold in the whole lab (0: no limit)
    user_board_limit: int = 0
    #: seconds a waiter whose connection the server lost keeps its place
    queue_lease: float = 30.0
    #: longest wait a reserve request may ask for, in seconds
    max_wait: int = 7 * 24 * 3600
    #: seconds before the end of a reservation at which its holder is told
    expiry_notices: tuple = (600, 120)
    #: days each reservation's console log is kept for its holder
    console_log_retention: int = 30
    #: this host's name in a lab of several hosts ('': a one-host lab)
    host_name: str = ""
    #: the URL other hosts and clients reach this host's API at
    host_url: str = ""
    #: seconds without a heartbeat after which a host counts as down
    host_timeout: float = 15.0
    #: the CA file other hosts' https ``host_url`` is checked against
    #: (empty: the system's CAs)
    host_cacert: str = ""
    #: open HTTP connections at once; when full, a new one pushes out the
    #: oldest idle connection of the busiest source
    http_max_connections: int = 512
    #: seconds an SSH client has from connecting to logging in
    ssh_login_grace_time: int = 30
    #: SSH connections not logged in yet, in all and from one address
    ssh_max_unauthenticated: int = 64
    ssh_max_unauthenticated_per_source: int = 10
    #: failed SSH authentication attempts before the connection is closed
    ssh_max_auth_tries: int = 6
    #: ``console?follow=1`` streams one user may have open at once
    console_max_followers: int = 8
    #: Twisted endpoint serving Prometheus metrics at /metrics; empty: none
    metrics_endpoint: str = ""
    #: lowest level of the server's log lines: debug, info, warn, error
    log_level: str = "info"
    #: size at which the access log is rotated by the server; 0: never
    #: (rotated by logrotate or newsyslog, and reopened on SIGHUP)
    http_access_log_max_bytes: int = 0
    #: rotated access logs kept when the server rotates it
    http_access_log_backups: int = 7
    #: days audit entries and ended reservations are kept; 0: for ever
    audit_retention_days: int = 0


def _path(value):
    if not value:
        raise ValueError("must be a path")
    return value


def _number(parse, what, low, high=None):
    """A parser of numbers of type ``parse`` between ``low`` and ``high``."""

    def check(value):
        try:
            number = parse(value)
        except ValueError:
            raise ValueError(f"must be {what}, not {value!r}") from None
        if number < low or (high is not None and number > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ValueError(f"must be {bounds}, not {value!r}")
        return number

    return check


_seconds = _number(int, "a whole number of seconds", 1)
_bytes = _number(int, "a whole number of bytes", 4096)
_count = _number(int, "a whole number", 0)
_limit = _number(int, "a whole number", 1)
_pause = _number(float, "a number of seconds", 0, 600)
_interval = _number(float, "a number of seconds", 0.01, 600)
_positive = _number(int, "a whole number", 1, 10000)
_wait = _number(float, "a number of seconds", 0, 600)
_size = _number(int, "a whole number of bytes", 0)
_days = _number(int, "a whole number of days", 0, 100000)

#: the levels ``log_level`` accepts, lowest first
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def _log_level(value):
    if value not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
    return value


def _optional_endpoint(value):
    return _endpoint(value) if value else ""


def _notices(value):
    seconds = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) == 0:
            raise ValueError(
                f"must be whole numbers of seconds separated by commas, not {value!r}"
            )
        seconds.append(int(part))
    return tuple(sorted(set(seconds), reverse=True))


def endpoint_address(description):
    """``(kind, interface, port)`` of a ``tcp:``, ``tcp6:`` or ``ssl:`` server
    description (``port`` as written), or None for other kinds."""
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    kind = parts[0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    port = named.get("port", positional[0] if positional else "")
    return kind, named.get("interface", ""), port


def _endpoint(value):
    from twisted.internet.endpoints import serverFromString

    if not value:
        raise ValueError("must be a Twisted endpoint description such as tcp:8080")
    address = endpoint_address(value)
    port = address[2] if address is not None else "0"
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(
            f"{value!r} is not a usable endpoint description (the port must "
            f"be a number from 0 to 65535, not {port!r}); "
            "e.g. tcp:8080:interface=127.0.0.1"
        )
    try:
        # parsing needs no reactor; ssl: descriptions load their files here
        serverFromString(None, value)
    except (IndexError, KeyError):
        if value.startswith("systemd:"):
            # the sockets are systemd's to pass: checked when the server starts
            return value
        raise ValueError(f"{value!r} is not a usable endpoint description") from None
    except (ValueError, TypeError, OSError, ImportError) as e:
        problem = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise ValueError(
            f"{value!r} is not a usable endpoint description ({problem}); "
            "e.g. tcp:8080:interface=127.0.0.1"
        ) from None
    return value


#: arguments of an ``ssl:`` endpoint that name files
_SSL_FILE_ARGS = ("privateKey", "certKey", "extraCertChain", "dhParameters")


def _split_unescaped(text, separator):
    """``text`` split at each ``separator`` that no backslash escapes."""
    parts, current, chars = [], "", iter(text)
    for char in chars:
        if char == "\\":
            current += char + next(chars, "")
        elif char == separator:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _unescape(text):
    out, chars = "", iter(text)
    for char in chars:
        out += next(chars, "") if char == "\\" else char
    return out


def _escape(text):
    return "".join("\\" + c if c in ":=\\" else c for c in text)


def resolve_endpoint_files(value, base):
    """``value`` with the files of an ``ssl:`` endpoint made absolute.

    Relative certificate and key paths are taken relative to ``base`` (the
    ``.env`` directory), as every other path of the file is; so is the
    ``server.pem`` Twisted reads when ``privateKey`` is not given.
    """
    parts = _split_unescaped(value, ":")
    if parts[0] != "ssl":
        return value
    named = {}
    for index, part in enumerate(parts[1:], 1):
        key, sep, raw = part.partition("=")
        if sep and key in _SSL_FILE_ARGS:
            named[key] = index
            path = os.path.join(base, _unescape(raw))
            parts[index] = f"{key}={_escape(os.path.normpath(path))}"
    if "privateKey" not in named:
        parts.append("privateKey=" + _escape(os.path.join(base, "server.pem")))
    return ":".join(parts)


def _host_url(value):
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("must be an http:// or https:// URL such as http://lab2:8080")
    return value.rstrip("/")


def _db_url(value):
    if not re.match(r"^postgres(ql)?://", value):
        raise ValueError(
            "must be a PostgreSQL URL such as postgresql://bitelab@db.example/bitelab"
        )
    return value


def _admins(value):
    names = frozenset(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        if not USER_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid user name")
    return names


def _name(value):
    if not NAME_RE.fullmatch(value):
        raise ValueError("must be letters, digits, '.', '_' or '-'")
    return value


#: kinds of values that name files relative to the .env directory
_PATH, _ENDPOINT = "path", "endpoint"

# key -> (parser, _PATH, _ENDPOINT or None)
_KEYS = {
    "db_file": (_path, _PATH),
    "db_url": (_db_url, None),
    "board_conf": (_path, _PATH),
    "http_endpoint": (_endpoint, _ENDPOINT),
    "ssh_endpoint": (_endpoint, _ENDPOINT),
    "ssh_host_key": (_path, _PATH),
    "ssh_keys_dir": (_path, _PATH),
    "admins": (_admins, None),
    "console_log_dir": (_path, _PATH),
    "console_log_max_bytes": (_bytes, None),
    "console_log_backups": (_count, None),
    "default_timeout": (_seconds, None),
    "max_timeout": (_seconds, None),
    "setup_script_timeout": (_seconds, None),
    "power_cycle_pause": (_pause, None),
    "expiry_interval": (_interval, None),
    "lab_name": (_name, None),
    "http_access_log": (_path, _PATH),
    "release_concurrency": (_positive, None),
    "max_setup_failures": (_count, None),
    "db_busy_timeout": (_wait, None),
    "user_board_limit": (_count, None),
    "queue_lease": (_wait, None),
    "max_wait": (_seconds, None),
    "expiry_notices": (_notices, None),
    "console_log_retention": (_seconds, None),
    "host_name": (_name, None),
    "host_url": (_host_url, None),
    "host_timeout": (_interval, None),
    "host_cacert": (_path, _PATH),
    "http_max_connections": (_limit, None),
    "ssh_login_grace_time": (_seconds, None),
    "ssh_max_unauthenticated": (_limit, None),
    "ssh_max_unauthenticated_per_source": (_limit, None),
    "ssh_max_auth_tries": (_limit, None),
    "console_max_followers": (_limit, None),
    "metrics_endpoint": (_optional_endpoint, _ENDPOINT),
    "log_level": (_log_level, None),
    "http_access_log_max_bytes": (_size, None),
    "http_access_log_backups": (_count, None),
    "audit_retention_days": (_days, None),
}
_REQUIRED = ("board_conf",)


def load_config(path):
    """Read a ``.env`` file into a ``Config``; ``ConfigError`` on any problem."""
    path = os.path.abspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', e) or e}")
    base = os.path.dirname(path)
    values = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if "=" not in line:
            raise ConfigError(f"{where}: expected key=value, got {line!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key not in _KEYS:
            known = ", ".join(sorted(_KEYS))
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
        if key in values:
            raise ConfigError(f"{where}: key {key!r} is set twice")
        parse, kind = _KEYS[key]
        if kind == _ENDPOINT:
            value = resolve_endpoint_files(value, base)
        try:
            parsed = parse(value)
        except ValueError as e:
            raise ConfigError(f"{where}: {key}: {e}") from None
        if kind == _PATH:
            parsed = os.path.normpath(os.path.join(base, parsed))
        values[key] = parsed
    for key in _REQUIRED:
        if key not in values:
            raise ConfigError(f"{path}: required key {key!r} is missing")
    if ("db_file" in values) == ("db_url" in values):
        raise ConfigError(
            f"{path}: set exactly one of db_file (SQLite) and db_url (PostgreSQL)"
        )
    values.setdefault("db_file", "")
    if "host_name" in values and "db_url" not in values:
        raise ConfigError(
            f"{path}: host_name needs a database the hosts share (db_url)"
        )
    if "host_cacert" in values and not os.path.isfile(values["host_cacert"]):
        raise ConfigError(f"{path}: host_cacert {values['host_cacert']} is not a file")
    values.setdefault("ssh_host_key", os.path.join(base, "ssh_host_ed25519_key"))
    values.setdefault("ssh_keys_dir", os.path.join(base, "keys"))
    values.setdefault("console_log_dir", os.path.join(base, "console"))
    config = Config(path=path, **values)
    if config.max_timeout < config.default_timeout:
        raise ConfigError(
            f"{path}: max_timeout ({config.max_timeout}) is less than "
            f"default_timeout ({config.default_timeout})"
        )
    return config


@attrs.frozen
class BoardClass:
    """A class of interchangeable boards."""

    name: str
    arch: str
    attrs: dict = attrs.field(factory=dict, eq=False)


@attrs.frozen
class BoardConfig:
    """One board from the board file, its options already constructed."""

    name: str
    brdclass: str
    options: tuple = ()

    def option(self, kind):
        """The first option that is an instance of ``kind``, or None."""
        for option in self.options:
            if isinstance(option, kind):
                return option
        return None


@attrs.frozen
class LabConfig:
    """The whole board file."""

    path: str
    setup_script: str | None
    classes: dict = attrs.field(eq=False)
    boards: dict = attrs.field(eq=False)


def _option_error(where, cls_name, option_cls, e):
    accepted = ", ".join(
        f.name for f in attrs.fields(option_cls) if not f.name.startswith("_")
    )
    text = str(e)
    match = re.search(r"unexpected keyword argument '([^']+)'", text)
    if match:
        text = f"unknown keyword {match.group(1)!r}"
    match = re.search(r"missing \d+ required keyword-only argument[s]?: (.*)", text)
    if match:
        text = f"missing {match.group(1)}"
    return ConfigError(f"{where}: option {cls_name}: {text} (accepted: {accepted})")


def load_boards(path, option_map):
    """Read and validate the UCL board file; ``option_map`` maps ``cls`` to classes."""
    path = os.path.abspath(path)
    try:
        data = ucl.load(path)
    except ucl.UCLError as e:
        raise ConfigError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', e) or e}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object")
    known_top = {"setup_script", "classes", "boards"}
    for key in data:
        if key not in known_top:
            raise ConfigError(
                f"{path}: unknown key {key!r} (known: {', '.join(sorted(known_top))})"
            )
    script = data.get("setup_script")
    if script is not None:
        if not isinstance(script, str) or not script:
            raise ConfigError(f"{path}: setup_script must be a path")
        script = os.path.normpath(os.path.join(os.path.dirname(path), script))
        if not os.path.isfile(script) or not os.access(script, os.X_OK):
            raise ConfigError(
                f"{path}: setup_script {script} is not an executable file"
            )

    raw_classes = data.get("classes", {})
    if not isinstance(raw_classes, dict):
        raise ConfigError(f"{path}: classes must be an object of class objects")
    classes = {}
    for name, body in raw_classes.items():
        where = f"{path}: class {name!r}"
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"{where}: names are letters, digits, '.', '_' or '-'")
        if isinstance(body, list):
            raise ConfigError(f"{where}: defined more than once")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: must be an object such as {{ arch = ...; }}")
        arch = body.get("arch")
        if not isinstance(arch, str) or not arch:
            raise ConfigError(f"{where}: arch is missing or not a string")
        extra = {k: v for k, v in body.items() if k != "arch"}
        classes[name] = BoardClass(name=name, arch=arch, attrs=extra)

    raw_boards = data.get("boards", [])
    if isinstance(raw_boards, dict):
        raw_boards = [raw_boards]
    if not isinstance(raw_boards, list):
        raise ConfigError(f"{path}: boards must be a list of board objects")
    boards = {}
    owners = {}  # conflict key -> board name
    for index, body in enumerate(raw_boards, 1):
        where = f"{path}: board #{index}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: must be an object")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: name is missing or not a string")
        where = f"{path}: board {name!r}"
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"{where}: names are letters, digits, '.', '_' or '-'")
        if name in boards:
            raise ConfigError(f"{where}: defined more than once")
        if name in classes:
            raise ConfigError(f"{where}: a class has the same name")
        if name == RESERVED_LOGIN:
            raise ConfigError(
                f"{where}: {RESERVED_LOGIN!r} is the SSH login for tokens; "
                "choose another name"
            )
        for key in body:
            if key not in ("name", "brdclass", "options"):
                raise ConfigError(
                    f"{where}: unknown key {key!r} (known: brdclass, name, options)"
                )
        brdclass = body.get("brdclass")
        if not isinstance(brdclass, str) or not brdclass:
            raise ConfigError(f"{where}: brdclass is missing or not a string")
        if brdclass not in classes:
            known = ", ".join(sorted(classes)) or "none defined"
            raise ConfigError(
                f"{where}: unknown brdclass {brdclass!r} (classes: {known})"
            )
        raw_options = body.get("options", [])
        if isinstance(raw_options, dict):
            raw_options = [raw_options]
        if not isinstance(raw_options, list):
            raise ConfigError(f"{where}: options must be a list of objects")
        options = []
        seen = set()
        for number, spec in enumerate(raw_options, 1):
            if not isinstance(spec, dict):
                raise ConfigError(f"{where}: option #{number} must be an object")
            spec = dict(spec)
            if "cls" not in spec:
                raise ConfigError(
                    f"{where}: option #{number}: cls is missing "
                    f"(known: {', '.join(sorted(option_map))})"
                )
            cls_name = spec.pop("cls")
            if cls_name not in option_map:
                known = ", ".join(sorted(option_map))
                raise ConfigError(
                    f"{where}: option #{number}: unknown cls {cls_name!r} "
                    f"(known: {known})"
                )
            option_cls = option_map[cls_name]
            try:
                option = option_cls(**spec)
            except (TypeError, ValueError) as e:
                raise _option_error(where, cls_name, option_cls, e) from None
            key = option.conflict_key()
            if key is not None:
                if key in owners:
                    what = " ".join(str(part) for part in key[1:])
                    raise ConfigError(
                        f"{where}: option {cls_name}: {key[0]} {what} is also "
                        f"used by board {owners[key]!r}"
                    )
                owners[key] = name
            for attr in option_cls.reads:
                if attr in seen:
                    raise ConfigError(
                        f"{where}: option {cls_name}: another option already "
                        f"provides {attr!r}"
                    )
                seen.add(attr)
            options.append(option)
        boards[name] = BoardConfig(name=name, brdclass=brdclass, options=tuple(options))
    if not boards:
        raise ConfigError(
            f"{path}: no boards are defined (boards [ {{ name = ...; }} ])"
        )
    return LabConfig(path=path, setup_script=script, classes=classes, boards=boards)


def check_lab(settings, lab):
    """Rules that need both files: a board's timeout within max_timeout."""
    from bitelab.options import Timeout

    for board in lab.boards.values():
        option = board.option(Timeout)
        if option is not None and option.val > settings.max_timeout:
            raise ConfigError(
                f"{lab.path}: board {board.name!r}: option timeout: {option.val} "
                f"seconds is more than max_timeout ({settings.max_timeout}) "
                f"of {settings.path}"
            )
