"""bitelab-admin: server-side commands for the lab's admins.

    bitelab-admin [--config .env] token USER     print a new API token
    bitelab-admin [--config .env] revoke USER    revoke every token of USER
    bitelab-admin [--config .env] check          validate the configuration
    bitelab-admin [--config .env] events [-n N]  show the audit log

It works on the database directly (WAL mode lets it run beside the
server), so an admin can mint the first token before any SSH key exists.
"""

import argparse
import os
import sys
import time

from bitelab.config import USER_RE, check_lab, load_boards, load_config
from bitelab.errors import ConfigError


def _token(settings, args):
    from bitelab import db
    from bitelab.tokens import insert_token

    if not USER_RE.match(args.user):
        raise ConfigError(f"{args.user!r} is not a valid user name")
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
    from bitelab import db
    from bitelab.boards import iso

    conn = db.connect(settings.db_file)
    try:
        rows = conn.execute(
            "SELECT at, user, board, action, detail FROM events "
            "ORDER BY id DESC LIMIT ?",
            (args.n,),
        ).fetchall()
    finally:
        conn.close()
    for at, user, board, action, detail in reversed(rows):
        print(f"{iso(at)}  {user or '-':<12} {board or '-':<16} {action:<16} {detail}")


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
