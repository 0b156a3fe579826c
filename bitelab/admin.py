"""bitelab-admin: server-side commands for the lab's admins.

    bitelab-admin [--config .env] token USER     print a new API token
    bitelab-admin [--config .env] revoke USER    revoke every token of USER
    bitelab-admin [--config .env] check          validate the configuration
    bitelab-admin [--config .env] events [-n N] [--board B] [--user U] [--json]
                                                 show the audit log

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

    conn = db.connect(settings.db_file)
    try:
        conn.execute("BEGIN IMMEDIATE")
        now = time.time()
        count = conn.execute(
            "UPDATE tokens SET revoked_at = ? WHERE user = ? AND revoked_at IS NULL",
            (now, args.user),
        ).rowcount
        db.add_event(
            conn,
            now,
            args.user,
            None,
            "token_revoke",
            f"{count} tokens, by bitelab-admin",
        )
        conn.commit()
    finally:
        conn.close()
    print(f"revoked {count} tokens of {args.user}")


def _check(settings, args):
    from bitelab.boards import BoardManager
    from bitelab.tap import check_host_key

    lab = load_boards(settings.board_conf, BoardManager._option_map)
    check_lab(settings, lab)
    if os.path.exists(settings.ssh_host_key):
        check_host_key(settings.ssh_host_key)
    print(f"{settings.path}: ok ({len(lab.classes)} classes, {len(lab.boards)} boards)")


def _events(settings, args):
    from datetime import UTC, datetime

    from bitelab import db
    from bitelab.boards import iso
    from bitelab.client.render import show_time

    clauses, values = [], []
    for column in ("board", "user"):
        if getattr(args, column) is not None:
            clauses.append(f"{column} = ?")
            values.append(getattr(args, column))
    where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
    conn = db.connect(settings.db_file)
    try:
        rows = conn.execute(
            "SELECT id, at, user, board, action, detail FROM events "
            f"{where}ORDER BY id DESC LIMIT ?",
            (*values, args.n),
        ).fetchall()
    finally:
        conn.close()
    if args.json:
        keys = ("id", "time", "user", "board", "action", "detail")
        events = [dict(zip(keys, (r[0], iso(r[1]), *r[2:]), strict=True)) for r in rows]
        print(json.dumps({"events": events}, indent=2))
        return
    tz = UTC if args.utc else None
    for _, at, user, board, action, detail in reversed(rows):
        when = show_time(datetime.fromtimestamp(at, UTC), tz)
        print(f"{when}  {user or '-':<12} {board or '-':<16} {action:<16} {detail}")


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
