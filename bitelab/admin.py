"""bitelab-admin: server-side commands for the lab's admins.

    bitelab-admin [--config .env] token USER     print a new API token
    bitelab-admin [--config .env] revoke USER    revoke every token of USER
    bitelab-admin [--config .env] check          validate the configuration
    bitelab-admin [--config .env] events [-n N] [--board B] [--user U] [--json]
                                                 show the audit log
    bitelab-admin [--config .env] backup FILE    copy the database, online
    bitelab-admin [--config .env] restore FILE   put a backup in place (the
                                                 server must be stopped)

It works on the database directly (WAL mode lets it run beside the
server), so an admin can mint the first token before any SSH key exists.
"""

import argparse
import json
import os
import sys
import time

import bitelab
from bitelab.config import (
    RESERVED_LOGIN,
    USER_RE,
    check_lab,
    load_boards,
    load_config,
)
from bitelab.errors import ConfigError


def _token(settings, args):
    from bitelab import db
    from bitelab.tokens import insert_token

    if not USER_RE.match(args.user):
        raise ConfigError(f"{args.user!r} is not a valid user name")
    if args.user == RESERVED_LOGIN:
        raise ConfigError(
            f"{RESERVED_LOGIN!r} is the SSH login that hands out tokens, not a user"
        )
    conn = db.connect(settings.db_file)
    try:
        conn.execute("BEGIN IMMEDIATE")
        token = insert_token(conn.cursor(), args.user, time.time())
        conn.commit()
    finally:
        conn.close()
    print(token)


def _revoke(settings, args):
    from bitelab import db
    from bitelab.store import revoke_user_tokens

    conn = db.connect(settings.db_file)
    try:
        conn.execute("BEGIN IMMEDIATE")
        count = revoke_user_tokens(
            conn.cursor(), args.user, time.time(), "by bitelab-admin"
        )
        conn.commit()
    finally:
        conn.close()
    print(f"revoked {count} tokens of {args.user}")


def _check(settings, args):
    from bitelab.tap import check_host_key, option_map

    lab = load_boards(settings.board_conf, option_map())
    check_lab(settings, lab)
    if os.path.exists(settings.ssh_host_key):
        check_host_key(settings.ssh_host_key)
    print(f"{settings.path}: ok ({len(lab.classes)} classes, {len(lab.boards)} boards)")


def _events(settings, args):
    from datetime import UTC, datetime

    from bitelab import db
    from bitelab.client.render import show_time
    from bitelab.store import read_events
    from bitelab.views import event_view

    conn = db.connect(settings.db_file)
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


def main(argv=None):
    """Entry point; exit status 0 done, 2 usage or configuration error."""
    parser = argparse.ArgumentParser(
        prog="bitelab-admin", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", "-c", default=".env", help="path of the .env file")
    parser.add_argument(
        "--version", action="version", version=f"bitelab-admin {bitelab.__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a new API token for USER")
    token.add_argument("user")
    token.set_defaults(func=_token)
    revoke = commands.add_parser("revoke", help="revoke every token of USER")
    revoke.add_argument("user")
    revoke.set_defaults(func=_revoke)
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
        args.func(settings, args)
    except ConfigError as e:
        sys.stderr.write(f"bitelab-admin: {e}\n")
        return 2
    except BrokenPipeError:
        # the reader went away (| head): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
