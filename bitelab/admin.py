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
    from bitelab import db
    from bitelab.store import read_events
    from bitelab.views import iso

    conn = db.connect(settings.db_file)
    try:
        rows = read_events(conn.cursor(), limit=args.n)
    finally:
        conn.close()
    for e in reversed(rows):
        print(
            f"{iso(e['at'])}  {e['user'] or '-':<12} {e['board'] or '-':<16} "
            f"{e['action']:<16} {e['detail']}"
        )


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
