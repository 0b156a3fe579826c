"""The store: every SQL statement bitelab runs, and nothing else.

Each write is one transaction that re-reads the rows it decides on, asks
``bitelab.rules`` whether the step is allowed, and changes them with a
compare-and-set on the board's state *and* reservation id: a step that
belongs to an earlier reservation matches no row and changes nothing.  The
transaction writes its audit-log entries too; once it has committed, its
events are published on the ``EventBus``.

Writes go through one connection, reads through another (see
``bitelab.db.make_pool``).  A database that is busy past its wait, full or
gone raises ``StorageError`` (503 ``storage``) with nothing changed.
"""

import json
import re

import attrs

from bitelab import events, postgres, rules, wakeup
from bitelab.db import file_identity, storage_problem
from bitelab.errors import (
    ConfigError,
    Forbidden,
    NotFound,
    StorageError,
    Unauthorized,
    Unavailable,
)
from bitelab.events import Event

_BOARD_COLUMNS = (
    ("name", "b.name"),
    ("class", "b.class"),
    ("arch", "b.arch"),
    ("configured", "b.configured"),
    ("state", "b.state"),
    ("reservation_id", "b.reservation_id"),
    ("reason", "b.reason"),
    ("released_at", "b.released_at"),
    ("setup_failures", "b.setup_failures"),
    ("power", "b.power"),
    ("power_at", "b.power_at"),
    ("holder", "r.user"),
    ("reserved_at", "r.created_at"),
    ("expires_at", "r.expires_at"),
    ("sshpubkey", "r.sshpubkey"),
    ("script_attrs", "r.script_attrs"),
    ("detail", "r.detail"),
    ("host", "b.host"),
    ("driver", "r.driver"),
    ("facts", "b.facts"),
)
_BOARD_KEYS = tuple(key for key, _ in _BOARD_COLUMNS)
_BOARD_FROM = " FROM boards b LEFT JOIN reservations r ON r.id = b.reservation_id"
_BOARD_SELECT = "SELECT " + ", ".join(column for _, column in _BOARD_COLUMNS)
#: a board row and whether a connected client waits in the queue
_BOARD_WAITS_SELECT = (
    _BOARD_SELECT
    + ", EXISTS (SELECT 1 FROM waiters WHERE state = 'waiting' "
    + "AND lease_until IS NULL)"
    + _BOARD_FROM
)
_BOARD_SELECT += _BOARD_FROM
_RESERVATION_KEYS = (
    "id",
    "board",
    "user",
    "state",
    "created_at",
    "expires_at",
    "ended_at",
    "cause",
    "actor",
    "detail",
    "outcome",
)
#: reservation states that hold a board
_HOLDING = (rules.RESERVING, rules.RESERVED, rules.RELEASING)


def _board(row):
    if row is None:
        return None
    board = dict(zip(_BOARD_KEYS, row))
    board["script_attrs"] = json.loads(board["script_attrs"] or "{}")
    return board


#: the board row's keys that come from its reservation, by reservation column
_FROM_RESERVATION = {
    "user": "holder",
    "created_at": "reserved_at",
    "expires_at": "expires_at",
    "sshpubkey": "sshpubkey",
    "script_attrs": "script_attrs",
    "detail": "detail",
    "driver": "driver",
}
#: board row keys whose columns are REAL: a value written is read back a float
_REAL_KEYS = frozenset({"released_at", "power_at", "reserved_at", "expires_at"})
#: a write to these tables may change a board row a transaction has read
_BOARD_TABLES = re.compile(r"\b(boards|reservations)\b")
#: a statement on the audit log: it must see the transaction's entries
_EVENTS_TABLE = re.compile(r"\bevents\b")
#: audit entries written by one statement at most
_EVENT_BATCH = 100


class Txn:
    """One write transaction: its cursor, and the events it will publish.

    Writes are serialised lab wide, so a row this transaction has read stays
    as it read it unless the transaction itself changes it: ``board`` reads a
    board once and afterwards follows the transaction's own ``set_board`` and
    ``set_reservation``; any other write to boards or reservations
    (``execute``) forgets what was read.

    What needs no answer yet is held back until the next statement (or
    ``flush``) and written with what follows it: the audit entries, the
    reservation changes, and a board's compare-and-set whose outcome the
    row read tells (successive steps of one board then make one statement,
    which still compares the state and reservation the first expected, and
    fails the transaction if they changed after all).
    """

    def __init__(self, cursor, now):
        self.cursor = cursor
        self.now = now
        self.events = []
        #: audit entries (their events) not written yet
        self._unwritten = []
        #: board name -> its row as this transaction last read or wrote it
        self._boards = {}
        #: reservation id -> the columns this transaction inserted it with
        self._reservations = {}
        #: whether a connected client waits (None: not known)
        self._anyone_waits = None
        #: a board change held back: ``[name, expected state, expected
        #: reservation, values]``
        self._board_change = None
        #: reservation id -> the columns to change, held back
        self._reservation_changes = {}

    def execute(self, sql, args=()):
        """Run one statement; the cursor, for ``fetchone``/``rowcount``."""
        self._write_changes()
        if _EVENTS_TABLE.search(sql):
            self.flush()
        if not sql.lstrip().upper().startswith("SELECT"):
            if _BOARD_TABLES.search(sql):
                self._boards.clear()
            if "waiters" in sql:
                self._anyone_waits = None
        self.cursor.execute(sql, args)
        return self.cursor

    def board(self, name):
        """One board's row (joined with its reservation) as a dict, or None."""
        if name not in self._boards:
            self._write_changes()
            row = self.cursor.execute(
                _BOARD_WAITS_SELECT + " WHERE b.name = ?", (name,)
            ).fetchone()
            if row is not None:
                self._anyone_waits = bool(row[-1])
                row = _board(row[:-1])
            self._boards[name] = row
        row = self._boards[name]
        if row is None:
            return None
        return {**row, "script_attrs": dict(row["script_attrs"])}

    def anyone_waits(self):
        """Whether a connected client may be waiting in the queue (True
        unless this transaction has seen that none is)."""
        return self._anyone_waits is not False

    def add_reservation(self, **values):
        """Insert a reservation with ``values``; its id."""
        self._write_changes()
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        rid = self.cursor.execute(
            f"INSERT INTO reservations ({names}) VALUES ({marks})",
            tuple(values.values()),
        ).lastrowid
        self._reservations[rid] = values
        return rid

    def event(
        self,
        kind,
        board,
        user=None,
        detail="",
        reservation=None,
        holder=None,
        waiter=None,
        ticket=None,
    ):
        """Append to the audit log; the ``Event`` is published after commit.

        The entry is written by ``flush``, with the transaction's others.
        """
        self._unwritten.append(
            Event(
                kind=kind,
                board=board,
                at=self.now,
                reservation=reservation,
                user=user,
                holder=holder,
                detail=detail,
                waiter=waiter,
                ticket=ticket,
            )
        )

    def flush(self):
        """Write what is held back: the changes, then the audit entries (one
        statement per ``_EVENT_BATCH``), whose events, with the entries'
        ids, join ``events``."""
        self._write_changes()
        while self._unwritten:
            batch = self._unwritten[:_EVENT_BATCH]
            del self._unwritten[:_EVENT_BATCH]
            values = ", ".join("(?, ?, ?, ?, ?, ?)" for _ in batch)
            args = [
                value
                for e in batch
                for value in (e.at, e.user, e.board, e.kind, e.detail, e.reservation)
            ]
            rows = self.cursor.execute(
                "INSERT INTO events (at, user, board, action, detail, reservation) "
                f"VALUES {values} RETURNING id",
                args,
            ).fetchall()
            # ids rise in the order of the rows, whatever order RETURNING
            # gives them back in
            ids = sorted(row[0] for row in rows)
            self.events.extend(
                attrs.evolve(event, id=rid) for event, rid in zip(batch, ids)
            )

    def set_board(self, name, expect_state, expect_reservation, **values):
        """Compare-and-set: change ``name`` only if it is still in
        ``expect_state`` with ``expect_reservation``; False if it is not."""
        row = self._boards.get(name)
        if row is None or (row["state"], row["reservation_id"]) != (
            expect_state,
            expect_reservation,
        ):
            self._write_changes()
            self._boards.pop(name, None)
            return self._compare_and_set(name, expect_state, expect_reservation, values)
        # the row read tells the outcome: the change can wait
        if self._board_change is not None and self._board_change[0] == name:
            self._board_change[3].update(values)
        else:
            self._write_changes()
            self._board_change = [name, expect_state, expect_reservation, values]
        self._follow(name, values)
        return True

    def _compare_and_set(self, name, expect_state, expect_reservation, values):
        assignments = ", ".join(f"{key} = ?" for key in values)
        cursor = self.cursor.execute(
            f"UPDATE boards SET {assignments} WHERE name = ? AND state = ? "
            "AND reservation_id IS ?",
            (*values.values(), name, expect_state, expect_reservation),
        )
        return cursor.rowcount == 1

    def _follow(self, name, values):
        """Make the row read of ``name`` what ``values`` make it."""
        row = self._boards[name]
        row.update((key, _real(key, value)) for key, value in values.items())
        if "reservation_id" in values:
            rid = values["reservation_id"]
            if rid is not None and rid not in self._reservations:
                del self._boards[name]
                return
            inserted = self._reservations.get(rid, {})
            for column, key in _FROM_RESERVATION.items():
                row[key] = _real(key, inserted.get(column))
            row["script_attrs"] = json.loads(inserted.get("script_attrs") or "{}")

    def set_reservation(self, rid, **values):
        """Update reservation ``rid``'s columns."""
        self._reservation_changes.setdefault(rid, {}).update(values)
        for row in self._boards.values():
            if row is None or row["reservation_id"] != rid:
                continue
            for column, value in values.items():
                if column == "script_attrs":
                    row["script_attrs"] = json.loads(value or "{}")
                elif column in _FROM_RESERVATION:
                    key = _FROM_RESERVATION[column]
                    row[key] = _real(key, value)

    def _write_changes(self):
        """Write the changes held back."""
        change, self._board_change = self._board_change, None
        if change is not None and not self._compare_and_set(*change):
            raise Unavailable(f"board {change[0]} changed meanwhile; try again")
        changes, self._reservation_changes = self._reservation_changes, {}
        for rid, values in changes.items():
            assignments = ", ".join(f"{key} = ?" for key in values)
            self.cursor.execute(
                f"UPDATE reservations SET {assignments} WHERE id = ?",
                (*values.values(), rid),
            )


def _real(key, value):
    """``value`` as the database gives back the board row's ``key``."""
    if key in _REAL_KEYS and value is not None:
        return float(value)
    return value


def sync_boards(cursor, lab, now, host="", url="", facts=None):
    """Bring the boards table in line with this host's board file (one
    transaction).

    A board of this ``host`` that left the file is deleted unless a
    reservation holds it: then it is kept, marked removed, until that
    reservation has ended.  Boards of other hosts are left alone; a board
    another host already serves, or a class another host defined otherwise,
    is a ``ConfigError``.  ``facts`` maps boards to what every host shows
    of them (``bitelab.views.board_facts``).  Returns the reservation id of
    each of this host's boards being set up or reserved.
    """
    facts = facts or {}
    txn = Txn(cursor, now)
    txn.execute("BEGIN IMMEDIATE")
    for name, brdclass in sorted(lab.classes.items()):
        attrs = json.dumps(brdclass.attrs, sort_keys=True)
        row = txn.execute(
            "SELECT arch, attrs, host FROM classes WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            txn.execute(
                "INSERT INTO classes (name, arch, attrs, host) VALUES (?, ?, ?, ?)",
                (name, brdclass.arch, attrs, host),
            )
        elif (row[0], row[1]) != (brdclass.arch, attrs):
            if row[2] == host:
                txn.execute(
                    "UPDATE classes SET arch = ?, attrs = ? WHERE name = ?",
                    (brdclass.arch, attrs, name),
                )
            else:
                raise ConfigError(
                    f"class {name}: defined otherwise by host {row[2] or '(none)'} "
                    f"(arch {row[0]}, {row[1]}); make the board files agree"
                )
    for board in lab.boards.values():
        row = txn.execute(
            "SELECT host FROM boards WHERE name = ?", (board.name,)
        ).fetchone()
        if row is not None and row[0] not in ("", host):
            raise ConfigError(
                f"board {board.name}: host {row[0]} serves it already; a board "
                "hangs off one host"
            )
        arch = lab.classes[board.brdclass].arch
        txn.execute(
            "INSERT INTO boards (name, class, arch, host, facts) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET class = excluded.class, "
            "arch = excluded.arch, configured = 1, host = excluded.host, "
            "facts = excluded.facts",
            (
                board.name,
                board.brdclass,
                arch,
                host,
                json.dumps(facts.get(board.name, {}), sort_keys=True),
            ),
        )
    held = {}
    rows = txn.execute(
        "SELECT name, state, reservation_id FROM boards WHERE host = ?", (host,)
    ).fetchall()
    for name, state, rid in rows:
        if state in (rules.RESERVING, rules.RESERVED):
            held[name] = rid
        if name in lab.boards:
            continue
        if state in _HOLDING:
            txn.execute("UPDATE boards SET configured = 0 WHERE name = ?", (name,))
        else:
            txn.execute("DELETE FROM boards WHERE name = ?", (name,))
            txn.event("removed", name, detail="left the board file")
    if host:
        _beat(txn, host, url, started=True)
    txn.flush()
    return held


def _beat(txn, host, url, started=False, facts=None):
    """Record that ``host`` is alive (and, at its start, where it answers).

    ``facts`` is how the other hosts reach it: ``(key_hash, ssh_port,
    ssh_host_key)``, the hash of the key it proves itself with and its SSH
    service.
    """
    before = txn.execute(
        "SELECT heartbeat_at, down_since FROM hosts WHERE name = ?", (host,)
    ).fetchone()
    if started:
        gone = ""
        if before is not None and before[1] is not None:
            gone = f" after {txn.now - before[0]:.0f} s down"
        txn.event(events.HOST_STARTED, None, None, f"host {host} started{gone}")
    elif before is not None and before[1] is not None:
        txn.event(
            events.HOST_UP,
            None,
            None,
            f"host {host} beats again after {txn.now - before[0]:.0f} s",
        )
    update = ["heartbeat_at = excluded.heartbeat_at", "down_since = NULL"]
    if started:
        update += ["url = excluded.url", "started_at = excluded.started_at"]
    columns, values = ["name", "url", "started_at", "heartbeat_at"], [host, url]
    values += [txn.now, txn.now]
    if facts is not None:
        for column, value in zip(("key_hash", "ssh_port", "ssh_host_key"), facts):
            columns.append(column)
            values.append(value)
            update.append(f"{column} = excluded.{column}")
    txn.execute(
        f"INSERT INTO hosts ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)}) "
        f"ON CONFLICT (name) DO UPDATE SET {', '.join(update)}",
        values,
    )


def user_locked(cursor, user):
    """Whether ``user`` is locked out: the last ``user_lock`` or
    ``user_unlock`` of theirs in the audit log is a lock."""
    cursor.execute(
        "SELECT action FROM events WHERE user = ? "
        "AND action IN ('user_lock', 'user_unlock') ORDER BY id DESC LIMIT 1",
        (user,),
    )
    row = cursor.fetchone()
    return row is not None and row[0] == "user_lock"


def audit(cursor, now, user, board, action, detail=""):
    """One audit entry, inside the caller's transaction (``bitelab-admin``)."""
    txn = Txn(cursor, now)
    txn.event(action, board, user, detail)
    txn.flush()


def insert_token(cursor, user, token_hash, now):
    """Store a new token's hash and audit it (inside the caller's transaction).

    ``Forbidden`` for a user who is locked out.
    """
    if user_locked(cursor, user):
        raise Forbidden(f"{user} is locked out of this lab; ask the lab admin")
    txn = Txn(cursor, now)
    txn.execute(
        "INSERT INTO tokens (hash, user, created_at) VALUES (?, ?, ?)",
        (token_hash, user, now),
    )
    txn.event("token_issue", None, user)
    txn.flush()


def revoke_user_tokens(cursor, user, now, detail, action="token_revoke"):
    """Revoke every token of ``user`` and audit ``action``; how many (inside
    a transaction)."""
    txn = Txn(cursor, now)
    count = txn.execute(
        "UPDATE tokens SET revoked_at = ? WHERE user = ? AND revoked_at IS NULL",
        (now, user),
    ).rowcount
    txn.event(action, None, user, f"{count} tokens, {detail}")
    txn.flush()
    return count


def read_events(cursor, limit=100, board=None, user=None, before=None):
    """Audit entries, newest first, as dicts."""
    clauses, args = [], []
    for column, value in (("board", board), ("user", user)):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if before is not None:
        clauses.append("id < ?")
        args.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    cursor.execute(
        "SELECT id, at, user, board, action, detail, reservation FROM events "
        f"{where} ORDER BY id DESC LIMIT ?",
        (*args, limit),
    )
    keys = ("id", "at", "user", "board", "action", "detail", "reservation")
    return [dict(zip(keys, row)) for row in cursor.fetchall()]


class Store:
    """The lab's state: boards, reservations, tokens and the audit log.

    ``writer`` and ``reader`` are adbapi-style pools (``runInteraction``);
    ``bus`` gets each write's events after it commits; ``path`` is the
    database file, watched so that a file deleted or replaced under the
    server refuses writes instead of losing them.
    """

    def __init__(self, writer, reader, bus, clock, path=None, wrap=None):
        #: what the lab decides for the store: ``timeout_for(name)``,
        #: ``direct(name)``, ``user_limit``, ``class_limit(cls)``; set by the
        #: board manager
        self.policy = None
        #: the database's view of a cursor: identity for SQLite,
        #: ``bitelab.postgres.wrap`` for PostgreSQL
        self.wrap = wrap or (lambda cursor: cursor)
        self.writer = writer
        self.reader = reader
        self.bus = bus
        self.clock = clock
        self.path = path
        self._identity = file_identity(path) if path else None
        #: the host whose writes wake the lab's other hosts for the work they
        #: give them (``bitelab.wakeup``); None: nobody to wake (SQLite)
        self.wakes_from = None

    # -- plumbing ---------------------------------------------------------

    def _check_file(self):
        if self._identity is None:
            return
        if file_identity(self.path) != self._identity:
            raise StorageError(
                f"the database file {self.path} was removed or replaced while "
                "the server ran; restart the server"
            )

    def write(self, fn, *args):
        """Deferred: ``fn(txn, *args)`` in one write transaction, events after.

        Its time is read once the transaction holds the lab's write lock, so
        that times follow the order in which transactions commit (a
        transaction that waited for another never records an earlier time).
        """

        def interaction(cursor):
            self._check_file()
            txn = Txn(self.wrap(cursor), None)
            txn.execute("BEGIN IMMEDIATE")
            txn.now = self.clock.seconds()
            result = fn(txn, *args)
            txn.flush()
            if self.wakes_from:
                self._wake_others(txn)
            return result, txn.events

        d = self.writer.runInteraction(interaction)
        d.addCallbacks(self._committed, _storage_failure)
        return d

    def _wake_others(self, txn):
        """Have PostgreSQL tell the other hosts, once ``txn`` commits, of
        the work it gives them."""
        payload = wakeup.notice(self.wakes_from, txn.events)
        if payload is not None:
            txn.execute("SELECT pg_notify(?, ?)", (wakeup.CHANNEL, payload))

    def _committed(self, outcome):
        result, events = outcome
        self.bus.publish(events)
        return result

    def read(self, fn, *args, **kwargs):
        """Deferred: ``fn(cursor, *args, **kwargs)`` on the read connection."""

        def interaction(cursor):
            self._check_file()
            return fn(self.wrap(cursor), *args, **kwargs)

        d = self.reader.runInteraction(interaction)
        d.addErrback(_storage_failure)
        return d

    def sync_boards(self, lab, facts=None, host="", url=""):
        """Deferred[dict]: ``sync_boards`` with ``lab`` on the running server's
        database (a board file reload): what it returns, the reservation id
        of each board being set up or reserved."""
        now = self.clock.seconds()

        def interaction(cursor):
            self._check_file()
            return sync_boards(self.wrap(cursor), lab, now, host, url, facts)

        d = self.writer.runInteraction(interaction)
        d.addErrback(_storage_failure)
        return d

    # -- reads ------------------------------------------------------------

    def boards(self):
        """Deferred[list[dict]]: every board, by name."""
        return self.read(
            lambda c: [_board(r) for r in c.execute(_BOARD_SELECT + " ORDER BY b.name")]
        )

    def board(self, name):
        """Deferred[dict]: one board; ``NotFound`` if there is none."""

        def get(cursor):
            row = _board(
                cursor.execute(_BOARD_SELECT + " WHERE b.name = ?", (name,)).fetchone()
            )
            if row is None:
                raise NotFound(f"no board named {name!r}")
            return row

        return self.read(get)

    def class_counts(self):
        """Deferred[dict]: class -> (boards configured, boards free)."""

        def counts(cursor):
            cursor.execute(
                "SELECT class, COUNT(*), "
                "COUNT(CASE WHEN state = 'free' THEN 1 END) "
                "FROM boards WHERE configured = 1 GROUP BY class"
            )
            return {name: (total, free) for name, total, free in cursor.fetchall()}

        return self.read(counts)

    def board_summary(self):
        """Deferred[(counts, maintenance)]: how many boards are in each
        (class, state), and (board, class, since) for each board in
        maintenance, ``since`` being its last ``maintenance`` audit entry's
        time (None if the audit log no longer has it)."""

        def summary(cursor):
            cursor.execute(
                "SELECT class, state, COUNT(*) FROM boards GROUP BY class, state"
            )
            counts = {(c, state): n for c, state, n in cursor.fetchall()}
            cursor.execute(
                "SELECT b.name, b.class, (SELECT MAX(e.at) FROM events e "
                "WHERE e.board = b.name AND e.action = 'maintenance') "
                "FROM boards b WHERE b.state = 'maintenance' ORDER BY b.name"
            )
            return counts, cursor.fetchall()

        return self.read(summary)

    def unsettled(self):
        """Deferred[list[dict]]: boards between states (reserving or releasing).

        Read through the write connection: a step's commit is always told to
        its caller before this read sees it, so a caller's board never looks
        abandoned.
        """
        d = self.writer.runInteraction(
            lambda raw: [
                _board(r)
                for r in self.wrap(raw).execute(
                    _BOARD_SELECT + " WHERE b.state IN (?, ?) AND b.host = ?",
                    (*rules.TRANSITIONAL, self.policy.host if self.policy else ""),
                )
            ]
        )
        d.addErrback(_storage_failure)
        return d

    def events(self, **filters):
        """Deferred[list[dict]]: audit entries, newest first."""
        return self.read(read_events, **filters)

    def reservations(self, user=None, board=None, limit=100):
        """Deferred[list[dict]]: reservations, newest first."""

        def get(cursor):
            clauses, args = [], []
            for column, value in (("user", user), ("board", board)):
                if value is not None:
                    clauses.append(f"{column} = ?")
                    args.append(value)
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            cursor.execute(
                f"SELECT {', '.join(_RESERVATION_KEYS)} FROM reservations {where} "
                "ORDER BY id DESC LIMIT ?",
                (*args, limit),
            )
            return [dict(zip(_RESERVATION_KEYS, row)) for row in cursor.fetchall()]

        return self.read(get)

    def reservation(self, rid):
        """Deferred[dict]: one reservation; ``NotFound`` if there is none."""

        def get(cursor):
            cursor.execute(
                f"SELECT {', '.join(_RESERVATION_KEYS)} FROM reservations "
                "WHERE id = ?",
                (rid,),
            )
            row = cursor.fetchone()
            if row is None:
                raise NotFound(f"no reservation {rid}")
            return dict(zip(_RESERVATION_KEYS, row))

        return self.read(get)

    def token_user(self, token_hash):
        """Deferred[(hash, user) or None]: an unrevoked token's owner."""
        return self.read(
            lambda c: c.execute(
                "SELECT hash, user FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
        )

    # -- reservations -----------------------------------------------------

    def claim(
        self,
        target,
        is_class,
        user,
        sshpubkey,
        timeout_for,
        direct,
        skip=(),
        wait=None,
    ):
        """Deferred[dict]: record a reservation of ``target`` for ``user``.

        For a class, the free board that has been free longest (not in
        ``skip``) is picked.  ``direct(name)``: nothing needs setting up, so
        the board goes straight to ``reserved``; otherwise to ``reserving``.
        With ``wait`` (a ``Wait``), a request that finds nothing it may take
        joins the queue in the same transaction: the answer is then
        ``{"waiter": ID}``.
        """
        return self.write(
            self._claim_or_wait,
            target,
            is_class,
            user,
            sshpubkey,
            timeout_for,
            direct,
            skip,
            wait,
        )

    def _claim_or_wait(
        self, txn, target, is_class, user, sshpubkey, timeout_for, direct, skip, wait
    ):
        if wait is not None and wait.resume is not None:
            return self._resume(txn, wait.resume, user)
        try:
            return self._claim(
                txn, target, is_class, user, sshpubkey, timeout_for, direct, skip
            )
        except rules.AlreadyHeld:
            raise
        except Unavailable as e:
            if wait is None or wait.deadline <= txn.now:
                raise
            why = e.message
        if is_class:
            cls, board = target, None
        else:
            cls, board = txn.board(target)["class"], target
        wid = txn.execute(
            "INSERT INTO waiters (user, target, class, board, priority, created_at, "
            "deadline, sshpubkey, timeout, ticket, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'waiting')",
            (
                user,
                target,
                cls,
                board,
                wait.priority,
                txn.now,
                wait.deadline,
                sshpubkey,
                wait.timeout,
                wait.ticket,
            ),
        ).lastrowid
        txn.event(
            events.QUEUED,
            board,
            user,
            f"waits for {target}: {why}",
            holder=user,
            waiter=wid,
            ticket=wait.ticket,
        )
        return {"waiter": wid, "why": why, "class": cls}

    def _resume(self, txn, wid, user):
        row = txn.execute(
            "SELECT user, state, reservation_id, lease_until FROM waiters "
            "WHERE id = ?",
            (wid,),
        ).fetchone()
        if row is None or row[0] != user:
            raise NotFound(f"no waiter {wid} of yours")
        state, rid = row[1], row[2]
        if state == "waiting" and row[3] is None:
            raise rules.AlreadyHeld(
                f"waiter {wid} is taken up by another open request already"
            )
        if state == "waiting":
            txn.execute("UPDATE waiters SET lease_until = NULL WHERE id = ?", (wid,))
            self._match(txn)
            state, rid = txn.execute(
                "SELECT state, reservation_id FROM waiters WHERE id = ?", (wid,)
            ).fetchone()
            if state == "waiting":
                return {"waiter": wid, "why": "resumed"}
        if state == "granted":
            board = txn.execute(
                _BOARD_SELECT + " WHERE b.reservation_id = ?", (rid,)
            ).fetchone()
            if board is not None:
                return {"waiter": wid, "granted": _board(board)}
        raise Unavailable(f"waiter {wid} is no longer waiting ({state})")

    def _limits(self, txn, user, brdclass):
        policy = self.policy
        if policy is None or not (policy.user_limit or policy.class_limit(brdclass)):
            return
        held, in_class = txn.execute(
            "SELECT COUNT(*), COUNT(CASE WHEN b.class = ? THEN 1 END) "
            "FROM reservations r JOIN boards b ON b.name = r.board "
            "WHERE r.user = ? AND r.state != 'ended'",
            (brdclass, user),
        ).fetchone()
        rules.check_limits(
            user,
            held,
            in_class,
            brdclass,
            policy.user_limit,
            policy.class_limit(brdclass),
        )

    def _claim(self, txn, target, is_class, user, sshpubkey, timeout_for, direct, skip):
        if is_class:
            self._limits(txn, user, target)
            marks = ", ".join("?" for _ in skip)
            exclude = f" AND name NOT IN ({marks})" if skip else ""
            alive, cutoff = self._alive(txn)
            row = txn.execute(
                "SELECT name FROM boards b WHERE class = ? AND state = 'free' "
                f"AND configured = 1{exclude} AND {alive} "
                "ORDER BY released_at, name LIMIT 1",
                (target, *skip, *cutoff),
            ).fetchone()
            if row is None:
                raise Unavailable(f"no free board of class {target!r}")
            name = row[0]
        else:
            name = target
        board = txn.board(name)
        if board is None:
            raise NotFound(f"no board named {name!r}")
        rules.check_claim(board, user)
        if not self._host_up(txn, board["host"]):
            raise Unavailable(f"board {name}'s host {board['host']} is down")
        if not is_class:
            self._limits(txn, user, board["class"])
        return self._start(
            txn,
            name,
            user,
            sshpubkey,
            timeout_for(name),
            direct(name),
            host=board["host"],
        )

    def _alive(self, txn):
        """SQL condition (on boards ``b``) that the board's host is up, and its
        arguments."""
        timeout = self.policy.host_timeout if self.policy is not None else 15.0
        condition = (
            "(b.host = '' OR b.host IN (SELECT name FROM hosts WHERE heartbeat_at > ?))"
        )
        return condition, (txn.now - timeout,)

    def _host_up(self, txn, host):
        if not host:
            return True
        alive, cutoff = self._alive(txn)
        return (
            txn.execute(
                f"SELECT 1 FROM boards b WHERE b.host = ? AND {alive} LIMIT 1",
                (host, *cutoff),
            ).fetchone()
            is not None
        )

    def _own(self, host):
        """Whether boards of ``host`` hang off this server's host."""
        return self.policy is None or host == self.policy.host

    def _start(
        self, txn, name, user, sshpubkey, timeout, direct, waiter=None, host=None
    ):
        """Record a reservation of the free board ``name``; its row.

        A board of another host is always set up (by that host, which takes
        the reservation up: ``driver`` stays NULL until it does).
        """
        if host is None:
            row = txn.execute("SELECT host FROM boards WHERE name = ?", (name,))
            host = row.fetchone()[0]
        own = self._own(host)
        direct = direct and own
        state = rules.RESERVED if direct else rules.RESERVING
        driver = self.policy.host if own and self.policy is not None else None
        rid = txn.add_reservation(
            board=name,
            user=user,
            sshpubkey=sshpubkey,
            state=state,
            created_at=txn.now,
            expires_at=txn.now + timeout,
            waiter=waiter,
            driver=driver,
        )
        if not txn.set_board(name, rules.FREE, None, state=state, reservation_id=rid):
            raise Unavailable(f"board {name} was taken")
        if waiter is not None:
            txn.execute(
                "UPDATE waiters SET state = 'granted', reservation_id = ?, "
                "ended_at = ? WHERE id = ?",
                (rid, txn.now, waiter),
            )
            txn.event(
                events.GRANTED,
                name,
                user,
                f"waiter {waiter}",
                reservation=rid,
                holder=user,
                waiter=waiter,
            )
        txn.event(
            state,
            name,
            user,
            f"timeout={timeout}",
            reservation=rid,
            holder=user,
            waiter=waiter,
        )
        return txn.board(name)

    def _match(self, txn):
        """Hand every free board that a connected waiter may take to the first
        such waiter, in queue order (inside the transaction that freed it)."""
        policy = self.policy
        if policy is None or not txn.anyone_waits():
            return
        classes = [
            row[0]
            for row in txn.execute(
                "SELECT DISTINCT w.class FROM waiters w JOIN boards b "
                "ON b.class = w.class AND b.state = 'free' AND b.configured = 1 "
                "WHERE w.state = 'waiting' AND w.lease_until IS NULL"
            ).fetchall()
        ]
        for cls in classes:
            alive, cutoff = self._alive(txn)
            free = [
                row[0]
                for row in txn.execute(
                    "SELECT name FROM boards b WHERE class = ? AND state = 'free' "
                    f"AND configured = 1 AND {alive} ORDER BY released_at, name",
                    (cls, *cutoff),
                ).fetchall()
            ]
            waiting = txn.execute(
                "SELECT id, user, board, sshpubkey, timeout FROM waiters "
                "WHERE state = 'waiting' AND lease_until IS NULL AND class = ? "
                "AND deadline > ? ORDER BY priority DESC, id",
                (cls, txn.now),
            ).fetchall()
            for wid, user, wanted, sshpubkey, timeout in waiting:
                if not free:
                    break
                if wanted is not None and wanted not in free:
                    continue
                name = wanted or free[0]
                try:
                    self._limits(txn, user, cls)
                except Unavailable:
                    continue
                free.remove(name)
                self._start(
                    txn,
                    name,
                    user,
                    sshpubkey,
                    timeout or policy.timeout_for(name),
                    policy.direct(name),
                    waiter=wid,
                )

    def confirm(self, name, rid, script_attrs):
        """Deferred[dict or None]: setup done; ``reserving`` -> ``reserved``.

        None if the reservation is no longer being set up (it was ended
        meanwhile): the caller must not report it as reserved.
        """

        def txn_fn(txn):
            board = txn.board(name)
            if not txn.set_board(
                name, rules.RESERVING, rid, state=rules.RESERVED, setup_failures=0
            ):
                return None
            txn.set_reservation(
                rid, state=rules.RESERVED, script_attrs=json.dumps(script_attrs)
            )
            txn.event(
                rules.RESERVED,
                name,
                board["holder"],
                reservation=rid,
                holder=board["holder"],
            )
            return txn.board(name)

        return self.write(txn_fn)

    def begin_release(self, name, user, admin, force, reason=None, direct=False):
        """Deferred[dict]: ``reserved`` -> ``releasing`` by ``user``.

        Refused (``rules.check_release``) unless the board is reserved, by
        ``user`` or by an admin forcing it.  ``direct``: nothing to wind down,
        so the board is freed in the same transaction.
        """

        def txn_fn(txn):
            board = txn.board(name)
            if board is None:
                raise NotFound(f"no board named {name!r}")
            cause = rules.check_release(board, user, admin, force)
            self._start_ending(txn, board, cause, user, reason)
            if direct:
                return self._finish(txn, name, board["reservation_id"], [], 0)
            return txn.board(name)

        return self.write(txn_fn)

    def begin_expiry(self, direct_names=frozenset()):
        """Deferred[list[dict]]: every reservation whose time is up -> ``releasing``.

        Boards in ``direct_names`` have nothing to wind down and are freed at
        once; the rows returned are the boards left releasing.
        """

        def txn_fn(txn):
            due = [
                _board(row)
                for row in txn.execute(
                    _BOARD_SELECT + " WHERE b.state = 'reserved' AND r.expires_at <= ? "
                    "AND b.host = ?",
                    (txn.now, self.policy.host if self.policy else ""),
                ).fetchall()
            ]
            ending = []
            for board in due:
                self._start_ending(txn, board, rules.EXPIRE, None, None)
                if board["name"] in direct_names:
                    self._finish(txn, board["name"], board["reservation_id"], [], 0)
                else:
                    ending.append(txn.board(board["name"]))
            return ending

        return self.write(txn_fn)

    def _start_ending(self, txn, board, cause, actor, reason):
        name, rid = board["name"], board["reservation_id"]
        detail = rules.release_detail(cause, actor, reason)
        if not txn.set_board(name, board["state"], rid, state=rules.RELEASING):
            raise Unavailable(f"board {name} changed meanwhile; try again")
        txn.set_reservation(
            rid, state=rules.RELEASING, cause=cause, actor=actor, detail=detail
        )
        txn.event(
            rules.RELEASING,
            name,
            actor,
            f"{cause}: {detail}",
            reservation=rid,
            holder=board["holder"],
        )

    def fail_setup(self, name, rid, message):
        """Deferred[dict or None]: the reserve script failed; -> ``releasing``."""

        def txn_fn(txn):
            board = txn.board(name)
            if board is None or board["state"] != rules.RESERVING:
                return None
            if board["reservation_id"] != rid:
                return None
            txn.execute(
                "UPDATE boards SET setup_failures = setup_failures + 1 "
                "WHERE name = ?",
                (name,),
            )
            txn.event(
                rules.SETUP_FAILED,
                name,
                board["holder"],
                message,
                reservation=rid,
                holder=board["holder"],
            )
            self._start_ending(txn, board, rules.SETUP_FAILED, None, message)
            return txn.board(name)

        return self.write(txn_fn)

    def interrupt(self, name, rid):
        """Deferred[dict or None]: roll back a setup cut short by a crash."""

        def txn_fn(txn):
            board = txn.board(name)
            if board is None or board["state"] != rules.RESERVING:
                return None
            if board["reservation_id"] != rid:
                return None
            self._start_ending(txn, board, rules.INTERRUPTED, None, None)
            return txn.board(name)

        return self.write(txn_fn)

    def finish(self, name, rid, problems, max_setup_failures):
        """Deferred[dict or None]: ``releasing`` -> ``free`` or ``maintenance``.

        None when the board has left the board file and is gone, or when the
        reservation already ended (a step of a finished ending changes
        nothing).
        """
        return self.write(self._finish, name, rid, problems, max_setup_failures)

    def _finish(self, txn, name, rid, problems, max_setup_failures):
        board = txn.board(name)
        if board is None or board["state"] != rules.RELEASING:
            return None
        if board["reservation_id"] != rid:
            return None
        last_error = None
        if board["setup_failures"]:
            row = txn.execute(
                "SELECT detail FROM events WHERE board = ? AND action = ? "
                "ORDER BY id DESC LIMIT 1",
                (name, rules.SETUP_FAILED),
            ).fetchone()
            last_error = row[0] if row else None
        state, reason = rules.ending_outcome(
            problems,
            board["setup_failures"],
            max_setup_failures,
            board["configured"],
            last_error,
        )
        values = {"state": state, "reservation_id": None, "released_at": txn.now}
        values["reason"] = reason
        if state == rules.MAINTENANCE:
            values["setup_failures"] = 0
        txn.set_board(name, rules.RELEASING, rid, **values)
        detail = board["detail"] or ""
        if reason:
            detail = f"{detail}; {reason}" if detail else reason
        txn.set_reservation(
            rid, state="ended", ended_at=txn.now, outcome=state, detail=detail
        )
        kind = rules.MAINTENANCE if state == rules.MAINTENANCE else "freed"
        txn.event(
            kind, name, None, reason or "", reservation=rid, holder=board["holder"]
        )
        if state == rules.FREE and not board["configured"]:
            txn.execute("DELETE FROM boards WHERE name = ?", (name,))
            txn.event("removed", name, detail="left the board file")
            self._match(txn)
            return None
        ended = txn.board(name)
        self._match(txn)
        return ended

    def extend(self, name, user, admin, timeout):
        """Deferred[dict]: the reservation ends ``timeout`` seconds from now."""

        def txn_fn(txn):
            board = txn.board(name)
            if board is None:
                raise NotFound(f"no board named {name!r}")
            rules.check_use(board, user, admin)
            if board["state"] != rules.RESERVED:
                raise Unavailable(f"board {name} is not reserved")
            rid = board["reservation_id"]
            # a new end: its notices are given again
            txn.execute(
                "UPDATE reservations SET expires_at = ?, noticed = NULL "
                "WHERE id = ? AND state = ?",
                (txn.now + timeout, rid, rules.RESERVED),
            )
            txn.event(
                "extended",
                name,
                user,
                f"timeout={timeout}",
                reservation=rid,
                holder=board["holder"],
            )
            return txn.board(name)

        return self.write(txn_fn)

    # -- maintenance and power ----------------------------------------------

    def start_maintenance(self, name, user, reason):
        """Deferred[dict]: a free board (or one in maintenance) -> ``maintenance``."""

        def txn_fn(txn):
            board = txn.board(name)
            if board is None:
                raise NotFound(f"no board named {name!r}")
            rules.check_maintenance_start(board)
            txn.set_board(
                name, board["state"], None, state=rules.MAINTENANCE, reason=reason
            )
            txn.event(rules.MAINTENANCE, name, user, reason)
            return txn.board(name)

        return self.write(txn_fn)

    def end_maintenance(self, name, user):
        """Deferred[dict or None]: ``maintenance`` -> ``free`` (None: board gone)."""

        def txn_fn(txn):
            board = txn.board(name)
            if board is None:
                raise NotFound(f"no board named {name!r}")
            rules.check_maintenance_end(board)
            txn.set_board(
                name,
                rules.MAINTENANCE,
                None,
                state=rules.FREE,
                reason=None,
                released_at=txn.now,
                setup_failures=0,
            )
            txn.event("maintenance_end", name, user)
            if not board["configured"]:
                txn.execute("DELETE FROM boards WHERE name = ?", (name,))
                return None
            row = txn.board(name)
            self._match(txn)
            return row

        return self.write(txn_fn)

    def record_power(self, name, on):
        """Deferred: the power state just read back from the device."""

        def txn_fn(txn):
            txn.execute(
                "UPDATE boards SET power = ?, power_at = ? WHERE name = ?",
                ("on" if on else "off", txn.now, name),
            )

        return self.write(txn_fn)

    def audit(self, kind, board, user, detail="", reservation=None):
        """Deferred: one audit entry (and its event) on its own."""
        return self.write(
            lambda txn: txn.event(kind, board, user, detail, reservation=reservation)
        )

    def prune_history(self, cutoff, limit):
        """Deferred[(events, reservations)]: delete at most ``limit`` audit
        entries and ``limit`` ended reservations from before ``cutoff``."""

        def txn_fn(txn):
            events = txn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events "
                "WHERE at < ? ORDER BY id LIMIT ?)",
                (cutoff, limit),
            ).rowcount
            reservations = txn.execute(
                "DELETE FROM reservations WHERE id IN (SELECT id FROM "
                "reservations WHERE state = 'ended' AND ended_at < ? "
                "ORDER BY id LIMIT ?)",
                (cutoff, limit),
            ).rowcount
            return events, reservations

        return self.write(txn_fn)

    # -- tokens -------------------------------------------------------------

    def add_token(self, user, token_hash):
        """Deferred: store a new token's hash."""
        return self.write(
            lambda txn: insert_token(txn.cursor, user, token_hash, txn.now)
        )

    def revoke_token(self, token_hash):
        """Deferred: revoke one token; ``Unauthorized`` if it is not valid."""

        def txn_fn(txn):
            row = txn.execute(
                "SELECT user FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
            if row is None:
                raise Unauthorized("invalid or revoked token")
            txn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE hash = ?", (txn.now, token_hash)
            )
            txn.event("token_revoke", None, row[0])

        return self.write(txn_fn)

    # -- the queue ----------------------------------------------------------

    def leave_queue(self, wid, why, user=None, admin=True):
        """Deferred: waiter ``wid`` leaves the queue (``why``: timed_out,
        cancelled or gone).

        Fires with ``("left", None)`` if it was waiting, ``("granted",
        reservation id)`` if a board was handed to it first, or ``(state,
        None)`` if it had already left.  ``user`` (unless ``admin``) must own
        it.
        """

        def txn_fn(txn):
            row = txn.execute(
                "SELECT user, state, reservation_id, board FROM waiters WHERE id = ?",
                (wid,),
            ).fetchone()
            if row is None or not (admin or row[0] == user):
                raise NotFound(f"no waiter {wid}")
            owner, state, rid, board = row
            if state == "granted":
                return ("granted", rid)
            if state != "waiting":
                return (state, None)
            txn.execute(
                "UPDATE waiters SET state = ?, ended_at = ? WHERE id = ?",
                (why, txn.now, wid),
            )
            txn.event(
                events.LEFT,
                board,
                user if user != owner else owner,
                why,
                holder=owner,
                waiter=wid,
            )
            return ("left", None)

        return self.write(txn_fn)

    def expire_waiters(self):
        """Deferred[list]: ``(id, why)`` of waiters whose wait or lease ran out."""

        def txn_fn(txn):
            rows = txn.execute(
                "SELECT id, user, board, CASE WHEN deadline <= ? THEN 'timed_out' "
                "ELSE 'gone' END FROM waiters WHERE state = 'waiting' AND "
                "(deadline <= ? OR lease_until <= ?)",
                (txn.now, txn.now, txn.now),
            ).fetchall()
            for wid, owner, board, why in rows:
                txn.execute(
                    "UPDATE waiters SET state = ?, ended_at = ? WHERE id = ?",
                    (why, txn.now, wid),
                )
                txn.event(events.LEFT, board, owner, why, holder=owner, waiter=wid)
            return [(wid, why) for wid, _, _, why in rows]

        return self.write(txn_fn)

    def lease_waiters(self, lease):
        """Deferred: at start no client is connected: every waiter keeps its
        place for ``lease`` seconds unless its client comes back."""

        def txn_fn(txn):
            txn.execute(
                "UPDATE waiters SET lease_until = ? WHERE state = 'waiting' "
                "AND lease_until IS NULL",
                (txn.now + lease,),
            )

        return self.write(txn_fn)

    def requeue(self, wid):
        """Deferred: a waiter whose handed-over board failed its setup waits again."""

        def txn_fn(txn):
            txn.execute(
                "UPDATE waiters SET state = 'waiting', reservation_id = NULL, "
                "ended_at = NULL WHERE id = ? AND state = 'granted'",
                (wid,),
            )
            self._match(txn)

        return self.write(txn_fn)

    def granted(self, wids):
        """Deferred[list]: ``(id, reservation id)`` of the waiters among
        ``wids`` that were handed a board."""
        if not wids:
            return self.read(lambda c: [])
        marks = ", ".join("?" for _ in wids)
        return self.read(
            lambda c: c.execute(
                "SELECT id, reservation_id FROM waiters "
                f"WHERE state = 'granted' AND id IN ({marks})",
                tuple(wids),
            ).fetchall()
        )

    def match(self):
        """Deferred: hand free boards to waiters that may take them now."""
        return self.write(self._match)

    def queue(self):
        """Deferred[list[dict]]: the waiting entries, in no particular order."""
        keys = (
            "id",
            "user",
            "target",
            "class",
            "board",
            "priority",
            "created_at",
            "deadline",
            "lease_until",
            "ticket",
        )
        return self.read(
            lambda c: [
                dict(zip(keys, row))
                for row in c.execute(
                    f"SELECT {', '.join(keys)} FROM waiters WHERE state = 'waiting'"
                )
            ]
        )

    def abandon(self, name, rid):
        """Deferred[dict or None]: end a reservation nobody took over (its
        waiter left as it was handed over); the board's releasing row."""

        def txn_fn(txn):
            board = txn.board(name)
            if board is None or board["reservation_id"] != rid:
                return None
            if board["state"] not in (rules.RESERVING, rules.RESERVED):
                return None
            self._start_ending(txn, board, rules.ABANDONED, None, None)
            return txn.board(name)

        return self.write(txn_fn)

    # -- several hosts --------------------------------------------------------

    def heartbeat(self, host, url="", facts=None):
        """Deferred: ``host`` is alive now (``facts``: see ``_beat``)."""
        return self.write(lambda txn: _beat(txn, host, url, facts=facts))

    def hosts(self):
        """Deferred[dict]: host name -> ``(url, heartbeat_at)``."""
        return self.read(
            lambda c: {
                name: (url, beat)
                for name, url, beat in c.execute(
                    "SELECT name, url, heartbeat_at FROM hosts"
                ).fetchall()
            }
        )

    def note_down_hosts(self, host_timeout):
        """Deferred: record in the audit log, once each, the hosts silent for
        ``host_timeout`` seconds (their boards are not handed out).  Only a
        read while every host beats."""

        def txn_fn(txn):
            rows = txn.execute(
                "SELECT name, heartbeat_at FROM hosts "
                "WHERE down_since IS NULL AND heartbeat_at <= ?",
                (txn.now - host_timeout,),
            ).fetchall()
            for name, beat in rows:
                txn.execute(
                    "UPDATE hosts SET down_since = ? WHERE name = ?", (txn.now, name)
                )
                txn.event(
                    events.HOST_DOWN,
                    None,
                    None,
                    f"host {name} is down: no heartbeat for {txn.now - beat:.0f} s; "
                    "its boards are not handed out",
                )

        d = self.read(
            lambda c: c.execute(
                "SELECT 1 FROM hosts WHERE down_since IS NULL AND heartbeat_at <= ?",
                (self.clock.seconds() - host_timeout,),
            ).fetchone()
        )
        d.addCallback(lambda silent: None if silent is None else self.write(txn_fn))
        return d

    def host(self, name):
        """Deferred[dict or None]: what is recorded of host ``name``."""

        def query(c):
            row = c.execute(
                "SELECT name, url, heartbeat_at, key_hash, ssh_port, ssh_host_key "
                "FROM hosts WHERE name = ?",
                (name,),
            ).fetchone()
            if row is None:
                return None
            keys = ("name", "url", "heartbeat_at", "key_hash", "ssh_port")
            return dict(zip((*keys, "ssh_host_key"), row))

        return self.read(query)

    def class_definitions(self):
        """Deferred[dict]: class -> ``(arch, attrs)`` of every host's classes."""
        return self.read(
            lambda c: {
                name: (arch, json.loads(attrs))
                for name, arch, attrs in c.execute(
                    "SELECT name, arch, attrs FROM classes"
                ).fetchall()
            }
        )

    def adopt(self, name, rid, host):
        """Deferred[dict or None]: ``host`` takes up the setup of reservation
        ``rid`` that another host recorded for one of its boards."""

        def txn_fn(txn):
            taken = txn.execute(
                "UPDATE reservations SET driver = ? WHERE id = ? AND state = ? "
                "AND driver IS NULL",
                (host, rid, rules.RESERVING),
            ).rowcount
            return txn.board(name) if taken == 1 else None

        return self.write(txn_fn)

    # -- expiry notices -------------------------------------------------------

    def due_notices(self, thresholds):
        """Deferred: audit and publish an ``expiring`` event for every
        reservation that has crossed a notice threshold not yet given."""

        def txn_fn(txn):
            rows = txn.execute(
                "SELECT r.id, r.board, r.user, r.expires_at, r.noticed, r.created_at "
                "FROM reservations r WHERE r.state = 'reserved' AND r.expires_at <= ?",
                (txn.now + max(thresholds),),
            ).fetchall()
            for rid, board, holder, expires_at, noticed, created_at in rows:
                due = rules.notices_due(
                    expires_at, noticed, thresholds, txn.now, expires_at - created_at
                )
                if due is None:
                    continue
                txn.execute(
                    "UPDATE reservations SET noticed = ? WHERE id = ?", (due, rid)
                )
                txn.event(
                    events.EXPIRING,
                    board,
                    None,
                    str(int(expires_at - txn.now)),
                    reservation=rid,
                    holder=holder,
                )

        return self.write(txn_fn)


def _storage_failure(failure):
    """Turn a database that cannot serve into ``StorageError``; pass the rest."""
    problem = storage_problem(failure.value) or postgres.storage_problem(failure.value)
    if problem is not None:
        raise StorageError(problem)
    return failure


class Wait:
    """How a reserve request waits: until ``deadline`` (POSIX time), with
    ``priority``, for a reservation of ``timeout`` seconds (None: the
    board's); ``resume``: the id of a place in the queue to take up again."""

    def __init__(self, deadline, priority=0, timeout=None, resume=None, ticket=None):
        self.deadline = deadline
        self.priority = priority
        self.timeout = timeout
        self.resume = resume
        #: the client's own name for this wait, echoed in its queue events
        self.ticket = ticket


#: the tables ``copy_lab`` moves, in an order their references allow, with
#: their columns
LAB_TABLES = {
    "classes": ("name", "arch", "attrs", "host"),
    "hosts": ("name", "url", "started_at", "heartbeat_at"),
    "reservations": (
        *("id", "board", "user", "sshpubkey", "state", "created_at", "expires_at"),
        *("ended_at", "cause", "actor", "detail", "outcome", "script_attrs"),
        *("waiter", "noticed", "driver"),
    ),
    "boards": (
        *("name", "class", "arch", "configured", "state", "reservation_id"),
        *("reason", "released_at", "setup_failures", "power", "power_at", "host"),
        "facts",
    ),
    "tokens": ("hash", "user", "created_at", "revoked_at"),
    "events": ("id", "at", "user", "board", "action", "detail", "reservation"),
    "waiters": (
        *("id", "user", "target", "class", "board", "priority", "created_at"),
        *("deadline", "lease_until", "sshpubkey", "timeout", "state"),
        *("reservation_id", "ended_at", "ticket"),
    ),
}


def copy_lab(source, target):
    """Copy every row of the lab's tables from one database to another.

    ``source`` and ``target`` are cursors speaking the store's SQL; the
    target's tables must be empty (``Unavailable`` otherwise).  Returns
    ``{table: rows copied}``; the caller commits.
    """
    target.execute("BEGIN IMMEDIATE")
    for table in LAB_TABLES:
        if target.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]:
            raise Unavailable(
                f"the target database already holds {table}; migrate into an "
                "empty database"
            )
    copied = {}
    for table, columns in LAB_TABLES.items():
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        rows = source.execute(f"SELECT {names} FROM {table}").fetchall()
        for row in rows:
            target.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", row)
        copied[table] = len(rows)
    return copied
