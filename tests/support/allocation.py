"""Checks that no board was ever held twice: from a lab's database and from
its clients' own records (used by tests and benchmarks)."""

import collections
import itertools


def check_clients(records):
    """Problems in the clients' own records (an empty list: none)."""
    problems = []
    ids = collections.Counter(r[1] for r in records)
    problems += [
        f"reservation {rid} handed out {n} times" for rid, n in ids.items() if n > 1
    ]
    by_board = collections.defaultdict(list)
    for board, rid, _t0, t1, t2, *_ in records:
        by_board[board].append((t1, t2, rid))
    for board, holds in by_board.items():
        holds.sort()
        for (_, asked, rid), (got, _, next_rid) in itertools.pairwise(holds):
            if got <= asked:
                problems.append(
                    f"{board}: reservation {next_rid} answered before "
                    f"reservation {rid}'s release was sent"
                )
    return problems


def check_database(reservations, events):
    """Problems in the database's reservations ``(board, id, created, ended)``
    and audit events ``(board, action, reservation)`` in order."""
    problems = []
    by_board = collections.defaultdict(list)
    for board, rid, created, ended in reservations:
        if ended is None:
            problems.append(f"{board}: reservation {rid} never ended")
        by_board[board].append((created, ended, rid))
    for board, spans in by_board.items():
        spans.sort(key=lambda span: (span[0], span[2]))
        for (_, ended, rid), (created, _, next_rid) in itertools.pairwise(spans):
            if ended is None or ended > created:
                problems.append(f"{board}: reservations {rid} and {next_rid} overlap")
    open_by_board = {}
    for board, action, rid in events:
        if action in ("reserving", "reserved"):
            # a board of the asked host starts reserved; others go through
            # reserving (their own host sets them up) to reserved
            if open_by_board.get(board) == rid and action == "reserved":
                continue
            if open_by_board.get(board) is not None:
                problems.append(
                    f"{board}: reserving {rid} while {open_by_board[board]} held it"
                )
            open_by_board[board] = rid
        elif action == "freed" and rid is not None:
            if open_by_board.get(board) != rid:
                problems.append(f"{board}: freed {rid} that it did not hold")
            open_by_board[board] = None
    return problems


def history(conn):
    """``(reservations, events)`` of a lab's database connection (SQLite or
    psycopg), as ``check_database`` takes them."""
    reservations = conn.execute(
        "SELECT board, id, created_at, ended_at FROM reservations"
    ).fetchall()
    events = conn.execute(
        "SELECT board, action, reservation FROM events ORDER BY id"
    ).fetchall()
    return reservations, events
