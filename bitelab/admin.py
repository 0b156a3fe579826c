"""bitelab-admin: server-side commands for the lab's admins.

    bitelab-admin [--config .env] token USER     print a new API token
    bitelab-admin [--config .env] revoke USER    revoke every token of USER
    bitelab-admin [--config .env] lock USER      revoke USER's tokens, disable the key
    bitelab-admin [--config .env] unlock USER    let USER in again
    bitelab-admin [--config .env] check          validate the configuration
    bitelab-admin [--config .env] events [-n N] [--board B] [--user U] [--json]
                                                 show the audit log
    bitelab-admin [--config .env] backup FILE    copy the database, online
    bitelab-admin [--config .env] restore FILE   put a backup in place (the
                                                 server must be stopped)

It works on the database directly (WAL mode lets it run beside the
server), so an admin can mint the first token before any SSH key exists.
Exit status: 0 done; 1 refused, or ``check`` found what would stop the
server (warnings alone do not count); 2 usage or configuration error; 3 the
database could not be used (locked by another process, disk full,
damaged), and nothing was changed.
"""

import argparse
import errno
import json
import os
import socket
import sqlite3
import sys
import time

import bitelab
from bitelab.config import (
    RESERVED_LOGIN,
    USER_RE,
    check_lab,
    endpoint_address,
    load_boards,
    load_config,
)
from bitelab.errors import BitelabError, ConfigError

#: what a disabled key file is renamed to, in the keys directory
LOCKED_SUFFIX = ".pub.locked"


class _Unusable(Exception):
    """The database could not be opened; the message is one line."""


def _connect(settings):
    """A connection to the database, or ``_Unusable``."""
    from bitelab import db

    try:
        return db.open_database(settings)
    except ConfigError as e:
        raise _Unusable(str(e)) from None


def _user(name):
    if not USER_RE.fullmatch(name):
        raise ConfigError(f"{name!r} is not a valid user name")
    return name


def _token(settings, args):
    from bitelab.tokens import insert_token

    user = _user(args.user)
    if user == RESERVED_LOGIN:
        raise ConfigError(
            f"{RESERVED_LOGIN!r} is the SSH login that hands out tokens, not a user"
        )
    conn = _connect(settings)
    try:
        conn.execute("BEGIN IMMEDIATE")
        token = insert_token(conn.cursor(), user, time.time())
        conn.commit()
    finally:
        conn.close()
    print(token)


def _revoke_txn(conn, user, action, detail):
    """Revoke every token of ``user`` and audit ``action``; the count."""
    from bitelab.store import revoke_user_tokens

    return revoke_user_tokens(conn.cursor(), user, time.time(), detail, action)


def _revoke(settings, args):

    user = _user(args.user)
    conn = _connect(settings)
    try:
        conn.execute("BEGIN IMMEDIATE")
        count = _revoke_txn(conn, user, "token_revoke", "by bitelab-admin")
        conn.commit()
    finally:
        conn.close()
    print(f"revoked {count} tokens of {user}")


def _lock(settings, args):
    """Lock a user out: no token of theirs works or can be issued, and their
    key file is set aside so that their key no longer logs in."""

    user = _user(args.user)
    conn = _connect(settings)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # from this commit on, the running server issues them no token
        count = _revoke_txn(conn, user, "user_lock", "revoked, by bitelab-admin")
        conn.commit()
    finally:
        conn.close()
    key = os.path.join(settings.ssh_keys_dir, f"{user}.pub")
    locked = os.path.join(settings.ssh_keys_dir, f"{user}{LOCKED_SUFFIX}")
    try:
        with open(key, "rb") as f:
            keys = f.read()
        # after keys set aside by an earlier lock, if any
        with open(locked, "ab") as f:
            f.write(keys)
        os.unlink(key)
    except FileNotFoundError:
        what = "no key file"
    except OSError as e:
        raise ConfigError(
            f"revoked {count} tokens of {user}, but cannot set {key} aside: "
            f"{e.strerror}; move it away by hand"
        ) from None
    else:
        what = f"key file set aside as {locked}"
    print(f"locked out {user}: revoked {count} tokens, {what}")


def _unlock(settings, args):
    from bitelab.store import audit

    user = _user(args.user)
    conn = _connect(settings)
    try:
        conn.execute("BEGIN IMMEDIATE")
        audit(conn.cursor(), time.time(), user, None, "user_unlock", "by bitelab-admin")
        conn.commit()
    finally:
        conn.close()
    key = os.path.join(settings.ssh_keys_dir, f"{user}.pub")
    locked = os.path.join(settings.ssh_keys_dir, f"{user}{LOCKED_SUFFIX}")
    if os.path.exists(key):
        what = f"key file {key} in place"
        if os.path.exists(locked):
            what += f"; {locked} left as it is"
    elif os.path.exists(locked):
        try:
            os.rename(locked, key)
        except OSError as e:
            raise ConfigError(
                f"unlocked {user}, but cannot restore {key}: {e.strerror}"
            ) from None
        what = f"key file {key} restored"
    else:
        what = f"no key file; add {key} to let them log in over SSH"
    print(f"unlocked {user}: {what}")


def _check(settings, args):
    from bitelab.tap import check_host_key, option_map

    lab = load_boards(settings.board_conf, option_map())
    check_lab(settings, lab)
    if os.path.exists(settings.ssh_host_key):
        check_host_key(settings.ssh_host_key)
    # what stops the server from starting, then what it would meet later
    # this lab's own server holds its ports: they are not a problem then
    running = _server_running(settings)
    errors = [
        *_limit_problems(settings),
        *([] if running else _listen_problems(settings)),
        *_database_problems(settings),
    ]
    warnings = [
        *_privacy_problems(settings),
        *_device_problems(lab),
        *_key_problems(settings),
    ]
    for problem in errors:
        sys.stderr.write(f"bitelab-admin: {problem}\n")
    for problem in warnings:
        sys.stderr.write(f"bitelab-admin: warning: {problem}\n")
    if errors:
        return 1
    counts = f"{len(lab.classes)} classes, {len(lab.boards)} boards"
    if running:
        counts += ", server running"
    if warnings:
        counts += f", {len(warnings)} warning{'s' if len(warnings) > 1 else ''}"
    print(f"{settings.path}: ok ({counts})")
    return 0


def _privacy_problems(settings):
    """The board file readable by others."""
    if os.stat(settings.board_conf).st_mode & 0o004:
        yield (
            f"{settings.board_conf} is readable by every user of this host and "
            f"may hold SNMP communities; chmod o-r {settings.board_conf}"
        )


def _limit_problems(settings):
    """The open-file limit too low for the connection caps."""
    import resource

    from bitelab.limits import files_needed

    needed = files_needed(settings)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < needed:
        yield (
            f"the open-file limit here ({hard}) is below the {needed} the server "
            "needs (http_max_connections + ssh_max_unauthenticated + 256); lower "
            "them or raise the limit (ulimit -n, LimitNOFILE=)"
        )


def _server_running(settings):
    """Whether this lab's server answers on its HTTP endpoint (plain TCP)."""
    import urllib.request

    address = endpoint_address(settings.http_endpoint)
    if address is None or address[0] not in ("tcp", "tcp6") or int(address[2]) == 0:
        return False
    host = address[1] or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    try:
        with urllib.request.urlopen(
            f"http://{host}:{address[2]}/api/v1/info", timeout=2
        ) as response:
            return json.load(response).get("name") == settings.lab_name
    except (OSError, ValueError):
        return False


def _listen_problems(settings):
    """Endpoints whose port is taken or cannot be had."""
    for key in ("http_endpoint", "ssh_endpoint"):
        description = getattr(settings, key)
        address = endpoint_address(description)
        if address is None or int(address[2]) == 0:
            continue
        kind, interface, port = address
        family = (
            socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
        )
        with socket.socket(family) as probe:
            # as Twisted listens: a port in TIME_WAIT is not taken
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((interface, int(port)))
            except OSError as e:
                hint = (
                    " (is the server running?)" if e.errno == errno.EADDRINUSE else ""
                )
                yield (
                    f"{key} {description}: cannot listen on "
                    f"{interface or '*'}:{port}: {e.strerror}{hint}"
                )


def _device_problems(lab):
    """Serial consoles and GPIO chips that are not there."""
    from bitelab.options import SerialConsole
    from bitelab.power import GPIOPower

    for name, board in sorted(lab.boards.items()):
        console = board.option(SerialConsole)
        if console is not None and not os.path.exists(console.val):
            yield (
                f"board {name}: serial console {console.val} does not exist "
                "(the server waits for it)"
            )
        gpio = board.option(GPIOPower)
        if gpio is not None and not os.path.exists(gpio.chip_path):
            yield (
                f"board {name}: GPIO chip {gpio.chip_path} does not exist "
                "(power switching will fail)"
            )


def _key_problems(settings):
    """Key files the server could not use."""
    from twisted.conch.ssh import keys

    try:
        names = sorted(os.listdir(settings.ssh_keys_dir))
    except FileNotFoundError:
        return
    except OSError as e:
        yield f"ssh_keys_dir {settings.ssh_keys_dir}: cannot read: {e.strerror}"
        return
    for name in names:
        if not name.endswith(".pub") or name.startswith("."):
            continue
        path = os.path.join(settings.ssh_keys_dir, name)
        try:
            with open(path, "rb") as f:
                lines = f.read().splitlines()
        except OSError as e:
            yield f"SSH key file {path}: cannot read: {e.strerror}"
            continue
        usable = 0
        for line in lines:
            if line.strip() and not line.strip().startswith(b"#"):
                try:
                    usable += keys.Key.fromString(line.strip()).isPublic()
                except (keys.BadKeyError, ValueError, IndexError):
                    pass
        if not usable:
            yield f"SSH key file {path}: no usable public key in it"


def _database_problems(settings):
    """A database that exists but is damaged."""
    from bitelab.tap import database_damage

    if settings.db_url:
        from bitelab import postgres

        try:
            postgres.connect(settings.db_url).close()
        except ConfigError as e:
            yield str(e)
        return
    if not os.path.exists(settings.db_file):
        return
    try:
        conn = sqlite3.connect(settings.db_file)
        try:
            damage = database_damage(conn)
        finally:
            conn.close()
    except sqlite3.Error as e:
        yield f"{settings.db_file}: cannot check the database: {e}"
        return
    if damage is not None:
        yield f"{settings.db_file}: the database is damaged ({damage})"


def _events(settings, args):
    from datetime import UTC, datetime

    from bitelab.client.render import show_time
    from bitelab.store import read_events
    from bitelab.views import event_view

    conn = _connect(settings)
    try:
        rows = read_events(
            conn.cursor(), limit=args.n, board=args.board, user=args.user
        )
    finally:
        conn.close()
    if args.json:
        events = [event_view(row) for row in rows]
        print(json.dumps({"events": events}, indent=2))
        return
    tz = UTC if args.utc else None
    for e in reversed(rows):
        when = show_time(datetime.fromtimestamp(e["at"], UTC), tz)
        print(
            f"{when}  {e['user'] or '-':<12} {e['board'] or '-':<16} "
            f"{e['action']:<16} {e['detail']}"
        )


def _migrate(settings, args):
    """Copy a SQLite lab's state into an empty PostgreSQL database."""
    import psycopg

    from bitelab import db, postgres
    from bitelab.store import copy_lab

    if settings.db_url:
        raise ConfigError("this lab is on PostgreSQL already (db_url is set)")
    if not args.to.startswith(("postgresql://", "postgres://")):
        raise ConfigError("--to must be a PostgreSQL URL (postgresql://...)")
    if _server_running(settings):
        raise ConfigError(
            "the server of this lab is running; stop it before migrating, so "
            "that nothing changes during the copy"
        )
    source = _connect(settings)
    try:
        source.execute("BEGIN IMMEDIATE")
        target = db.Connection(postgres.connect(args.to), postgres.wrap)
        try:
            copied = copy_lab(source.cursor(), target.cursor())
            postgres.reset_identities(target.raw.cursor())
            target.commit()
        except psycopg.Error as e:
            target.rollback()
            raise _Unusable(
                f"{postgres.redact(args.to)}: {postgres.one_line(e)}"
            ) from None
        except BaseException:
            target.rollback()
            raise
        finally:
            target.close()
    finally:
        source.rollback()
        source.close()
    counts = ", ".join(f"{n} {table}" for table, n in copied.items())
    print(f"copied {counts} to {postgres.redact(args.to)}")
    print(f"now set db_url={postgres.redact(args.to)} in place of db_file in .env")


def _backup(settings, args):
    from bitelab.backup import backup

    backup(settings.db_file, args.file)
    print(f"backed up {settings.db_file} to {args.file}")


def _restore(settings, args):
    from bitelab.backup import REPLACED_SUFFIX, restore

    had = os.path.exists(settings.db_file)
    restore(settings.db_file, args.file)
    kept = f"; the replaced one is {settings.db_file}{REPLACED_SUFFIX}" if had else ""
    print(f"restored {settings.db_file} from {args.file}{kept}")


def _positive(text):
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number: {text!r}")
    return int(text)


def _database_error(settings, error):
    """One line for an SQLite error met while the database was in use."""
    text = str(error)
    if "locked" in text or "busy" in text:
        problem = "the database is locked by another process; try again"
    elif "full" in text:
        problem = "the disk holding the database is full; free some space"
    else:
        problem = f"the database could not be used: {text}"
    return f"{settings.db_file}: {problem}"


def main(argv=None):
    """Entry point; exit status as the module docstring says."""
    parser = argparse.ArgumentParser(
        prog="bitelab-admin", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", "-c", default=".env", help="path of the .env file")
    parser.add_argument(
        "--version", action="version", version=f"bitelab-admin {bitelab.__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("token", _token, "print a new API token for USER"),
        ("revoke", _revoke, "revoke every token of USER"),
        ("lock", _lock, "revoke USER's tokens and disable their SSH key"),
        ("unlock", _unlock, "let a locked-out USER in again"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("user")
        command.set_defaults(func=func)
    check = commands.add_parser("check", help="validate the configuration")
    check.set_defaults(func=_check)
    events = commands.add_parser("events", help="show the newest audit events")
    events.add_argument("-n", type=_positive, default=50, help="how many (default 50)")
    events.add_argument("--board", help="only the events of this board")
    events.add_argument("--user", help="only the events of this user")
    events.add_argument(
        "--json",
        action="store_true",
        help="print the API's JSON document, newest first",
    )
    events.add_argument(
        "--utc", action="store_true", help="times in UTC instead of the local zone"
    )
    events.set_defaults(func=_events)
    migrate = commands.add_parser(
        "migrate", help="copy this SQLite lab into an empty PostgreSQL database"
    )
    migrate.add_argument("--to", required=True, metavar="URL")
    migrate.set_defaults(func=_migrate)
    backup = commands.add_parser(
        "backup", help="copy the database to FILE while the server runs"
    )
    backup.add_argument("file", metavar="FILE")
    backup.set_defaults(func=_backup)
    restore = commands.add_parser(
        "restore", help="replace the database by the backup FILE (server stopped)"
    )
    restore.add_argument("file", metavar="FILE")
    restore.set_defaults(func=_restore)
    args = parser.parse_args(argv)
    try:
        settings = load_config(args.config)
        return args.func(settings, args) or 0
    except ConfigError as e:
        sys.stderr.write(f"bitelab-admin: {e}\n")
        return 2
    except BitelabError as e:
        sys.stderr.write(f"bitelab-admin: {e.message}\n")
        return 1
    except (sqlite3.Error, _Unusable) as e:
        problem = e if isinstance(e, _Unusable) else _database_error(settings, e)
        sys.stderr.write(f"bitelab-admin: {problem}; nothing was changed\n")
        return 3
    except BrokenPipeError:
        # the reader went away (| head): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
