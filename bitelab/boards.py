"""The board manager: where reservations, releases, expiry and power are decided.

Board state lives in SQLite; every state change is one transaction that
also appends to the audit log.  Slow work (setup script, power switching,
closing consoles) happens outside transactions while the board is marked
busy in memory, so no other operation on that board can interleave.
"""

import json
from datetime import UTC, datetime
from typing import ClassVar

from twisted.application import service
from twisted.conch.ssh import keys
from twisted.internet import defer, task
from twisted.logger import Logger

from bitelab.db import add_event
from bitelab.errors import (
    Forbidden,
    Invalid,
    NotFound,
    PowerFailed,
    SetupFailed,
    Unavailable,
)
from bitelab.options import (
    EtherIface,
    PowerOption,
    SerialConsole,
    Timeout,
)
from bitelab.power import POWER_OPTIONS

BOARD_COLUMNS = (
    "name, class, arch, configured, state, holder, reserved_at, expires_at, "
    "sshpubkey, reason, script_attrs, power, power_at"
)
MAX_PUBKEY = 16 * 1024
#: why a board that left the board file while reserved is not simply freed:
#: its options (power, interface) left with the file, so nothing can switch
#: it off or take its jail down, and an admin must look
REMOVED_PROBLEM = (
    "removed from the board file while reserved: not powered off, "
    "release script not run"
)


def check_public_key(line):
    """Refuse anything but one OpenSSH public key line (``Invalid``)."""
    if "\n" in line or "\r" in line or "\0" in line:
        raise Invalid("sshpubkey must be a single line")
    try:
        key = keys.Key.fromString(line.encode("utf-8"))
    except Exception:  # noqa: BLE001 - any parse failure of untrusted input
        raise Invalid(
            "sshpubkey is not an OpenSSH public key line (e.g. the contents of "
            "~/.ssh/id_ed25519.pub)"
        ) from None
    if not key.isPublic():
        raise Invalid("sshpubkey is a private key; send the .pub file instead")


def iso(seconds):
    """An ISO 8601 UTC string for a POSIX time, or None."""
    if seconds is None:
        return None
    stamp = datetime.fromtimestamp(seconds, UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


_BOARD_KEYS = tuple(k.strip() for k in BOARD_COLUMNS.split(","))


def _row_dict(row):
    return dict(zip(_BOARD_KEYS, row))


def _fetch_row(cursor, name):
    """One board's row as a dict, or None."""
    cursor.execute(f"SELECT {BOARD_COLUMNS} FROM boards WHERE name = ?", (name,))
    row = cursor.fetchone()
    return _row_dict(row) if row else None


class BoardManager(service.Service):
    """Reservations and board operations; the API and SSH layers call it."""

    log = Logger()

    #: ``cls`` in the board file -> option class
    _option_map: ClassVar[dict] = {
        **{c.cls_name: c for c in (EtherIface, SerialConsole, Timeout)},
        **POWER_OPTIONS,
    }

    def __init__(self, reactor, config, lab, pool, runtime, scripts, consoles=None):
        self.reactor = reactor
        self.config = config
        self.lab = lab
        self.pool = pool
        self.runtime = runtime
        self.scripts = scripts
        self.consoles = consoles if consoles is not None else {}
        self.busy = set()
        #: board -> the last power read or switch that failed, until one works
        self.power_errors = {}
        self._expiry = None

    # -- service --------------------------------------------------------

    def startService(self):
        """Check for expired reservations now and then periodically."""
        super().startService()
        self._expiry = task.LoopingCall(self.expire_due)
        self._expiry.clock = self.reactor
        self._expiry.start(self.config.expiry_interval, now=True)
        self.refresh_power()

    def stopService(self):
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        return super().stopService()

    # -- helpers --------------------------------------------------------

    def is_admin(self, user):
        """Whether ``user`` is listed in ``admins``."""
        return user in self.config.admins

    def is_board(self, name):
        """Whether ``name`` is a board of the board file."""
        return name in self.lab.boards

    def now(self):
        return self.reactor.seconds()

    def _power_option(self, name):
        board = self.lab.boards.get(name)
        return board.option(PowerOption) if board else None

    def _default_timeout(self, name):
        board = self.lab.boards.get(name)
        option = board.option(Timeout) if board else None
        return option.val if option else self.config.default_timeout

    def _check_timeout(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid("timeout must be a whole number of seconds")
        if not 0 < value <= self.config.max_timeout:
            raise Invalid(
                f"timeout must be between 1 and {self.config.max_timeout} seconds"
            )
        return value

    def _get_row(self, name):
        return self.pool.runInteraction(_fetch_row, name)

    @defer.inlineCallbacks
    def _row_or_404(self, name):
        row = yield self._get_row(name)
        if row is None:
            raise NotFound(f"no board named {name!r}")
        return row

    def view(self, row, user):
        """The API's BOARD object for one database row, as ``user`` may see it."""
        board = self.lab.boards.get(row["name"])
        brdclass = self.lab.classes.get(row["class"])
        attributes = {}
        if brdclass is not None:
            attributes.update(brdclass.attrs)
        if board is not None:
            for option in board.options:
                attributes.update(option.static_attrs())
            if board.option(PowerOption) is not None:
                attributes["power"] = row["power"]
                attributes["power_read_at"] = iso(row["power_at"])
                if row["name"] in self.power_errors:
                    attributes["power_error"] = self.power_errors[row["name"]]
            attributes["default_timeout"] = self._default_timeout(row["name"])
            if board.option(SerialConsole) is not None:
                attributes["console"] = True
                console = self.consoles.get(row["name"])
                if console is not None:
                    attributes["console_connected"] = console.connected
        if row["state"] == "reserved" and (
            user == row["holder"] or self.is_admin(user)
        ):
            attributes.update(json.loads(row["script_attrs"] or "{}"))
        result = {
            "name": row["name"],
            "class": row["class"],
            "arch": row["arch"],
            "state": row["state"],
            "holder": row["holder"],
            "reserved_at": iso(row["reserved_at"]),
            "expires_at": iso(row["expires_at"]),
            "attrs": attributes,
        }
        if row["state"] == "maintenance":
            result["reason"] = row["reason"]
        if not row["configured"]:
            result["removed"] = True
        return result

    # -- start-up -------------------------------------------------------

    def sync_txn(self, cursor, now):
        """Bring the boards table in line with the board file (one transaction).

        A board that left the file is deleted, unless it is reserved: then it
        is kept, marked removed, until its holder releases it.
        """
        cursor.execute("BEGIN IMMEDIATE")
        for board in self.lab.boards.values():
            arch = self.lab.classes[board.brdclass].arch
            cursor.execute(
                "INSERT INTO boards (name, class, arch) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET class = excluded.class, "
                "arch = excluded.arch, configured = 1",
                (board.name, board.brdclass, arch),
            )
        cursor.execute("SELECT name, state FROM boards")
        for name, state in cursor.fetchall():
            if name in self.lab.boards:
                continue
            if state == "reserved":
                cursor.execute(
                    "UPDATE boards SET configured = 0 WHERE name = ?", (name,)
                )
                self.log.warn(
                    "board {name} is no longer in the board file but is "
                    "reserved; kept until released",
                    name=name,
                )
            else:
                cursor.execute("DELETE FROM boards WHERE name = ?", (name,))
                add_event(cursor, now, None, name, "removed", "left the board file")

    def refresh_power(self):
        """Read every board's power state from its device, in the background."""
        for name, board in self.lab.boards.items():
            option = board.option(PowerOption)
            if option is not None and name not in self.busy:
                d = self.read_power(name)
                d.addErrback(
                    lambda f, name=name: self.log.warn(
                        "cannot read power of {name}: {err}",
                        name=name,
                        err=f.getErrorMessage(),
                    )
                )

    # -- queries --------------------------------------------------------

    @defer.inlineCallbacks
    def list_boards(self, user):
        """Deferred[list]: every board as ``user`` may see it."""
        rows = yield self.pool.runQuery(
            f"SELECT {BOARD_COLUMNS} FROM boards ORDER BY name"
        )
        return [self.view(_row_dict(row), user) for row in rows]

    @defer.inlineCallbacks
    def get_board(self, user, name):
        """Deferred[dict]: one board."""
        row = yield self._row_or_404(name)
        return self.view(row, user)

    @defer.inlineCallbacks
    def list_classes(self):
        """Deferred[list]: classes with their board counts."""
        rows = yield self.pool.runQuery(
            "SELECT class, COUNT(*), SUM(state = 'free') "
            "FROM boards WHERE configured = 1 GROUP BY class"
        )
        counts = {r[0]: (r[1], r[2] or 0) for r in rows}
        result = []
        for name, brdclass in sorted(self.lab.classes.items()):
            total, free = counts.get(name, (0, 0))
            entry = dict(brdclass.attrs)
            entry.update(
                {"name": name, "arch": brdclass.arch, "boards": total, "free": free}
            )
            result.append(entry)
        return result

    def events(self, limit=100, board=None, user=None, before=None):
        """Deferred[list]: audit events, newest first."""
        clauses, args = [], []
        for column, value in (("board", board), ("user", user)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if before is not None:
            clauses.append("id < ?")
            args.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        d = self.pool.runQuery(
            f"SELECT id, at, user, board, action, detail FROM events {where} "
            "ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        d.addCallback(
            lambda rows: [
                {
                    "id": r[0],
                    "time": iso(r[1]),
                    "user": r[2],
                    "board": r[3],
                    "action": r[4],
                    "detail": r[5],
                }
                for r in rows
            ]
        )
        return d

    # -- reserve --------------------------------------------------------

    def _claim(self, cursor, target, is_class, user, now, timeout, sshpubkey):
        cursor.execute("BEGIN IMMEDIATE")
        if is_class:
            cursor.execute(
                "SELECT name FROM boards WHERE class = ? AND state = 'free' "
                "AND configured = 1 ORDER BY released_at, name LIMIT 1",
                (target,),
            )
            row = cursor.fetchone()
            if row is None:
                raise Unavailable(f"no free board of class {target!r}")
            name = row[0]
        else:
            name = target
            cursor.execute("SELECT state, holder FROM boards WHERE name = ?", (name,))
            row = cursor.fetchone()
            if row is None:
                raise NotFound(f"no board named {name!r}")
            if row[0] == "reserved":
                raise Unavailable(f"board {name} is reserved by {row[1]}")
            if row[0] == "maintenance":
                raise Unavailable(f"board {name} is in maintenance")
        if timeout is None:
            timeout = self._default_timeout(name)
        cursor.execute(
            "UPDATE boards SET state = 'reserved', holder = ?, reserved_at = ?, "
            "expires_at = ?, sshpubkey = ?, script_attrs = '{}', reason = NULL "
            "WHERE name = ? AND state = 'free'",
            (user, now, now + timeout, sshpubkey, name),
        )
        if cursor.rowcount != 1:
            raise Unavailable(f"board {name} was taken")
        add_event(cursor, now, user, name, "reserve", f"timeout={timeout}")
        return _fetch_row(cursor, name)

    def script_env(self, name, user, sshpubkey):
        """The setup script's environment for one board."""
        board = self.lab.boards[name]
        env = {
            "BITELAB_BOARD": name,
            "BITELAB_CLASS": board.brdclass,
            "BITELAB_ARCH": self.lab.classes[board.brdclass].arch,
            "BITELAB_USER": user,
            "BITELAB_SSHPUBKEY": sshpubkey or "",
        }
        ether = board.option(EtherIface)
        if ether is not None:
            env["BITELAB_ETHERIFACE"] = ether.val
        console = board.option(SerialConsole)
        if console is not None:
            env["BITELAB_SERIALCONSOLE"] = console.val
        return env

    @defer.inlineCallbacks
    def reserve(self, user, target, sshpubkey=None, timeout=None):
        """Deferred[dict]: reserve a board by name, or any free board of a class."""
        if timeout is not None:
            self._check_timeout(timeout)
        if sshpubkey is not None:
            if not isinstance(sshpubkey, str) or len(sshpubkey) > MAX_PUBKEY:
                raise Invalid("sshpubkey must be an OpenSSH public key line")
            sshpubkey = sshpubkey.strip()
            if sshpubkey:
                check_public_key(sshpubkey)
        if target in self.lab.classes:
            is_class = True
        elif target in self.lab.boards:
            is_class = False
        else:
            raise NotFound(f"no board or class named {target!r}")
        now = self.now()
        row = yield self.pool.runInteraction(
            self._claim, target, is_class, user, now, timeout, sshpubkey
        )
        name = row["name"]
        console = self.consoles.get(name)
        if console is not None:
            console.mark_reserved(user, iso(now))
        if self.scripts.path:
            self.busy.add(name)
            try:
                row = yield self._run_reserve_script(name, user, sshpubkey)
            finally:
                self.busy.discard(name)
        return self.view(row, user)

    @defer.inlineCallbacks
    def _run_reserve_script(self, name, user, sshpubkey):
        """Run the reserve script; store its attributes, or undo the reservation."""
        try:
            result = yield self.scripts.run(
                "reserve", name, self.script_env(name, user, sshpubkey)
            )
        except SetupFailed as e:
            yield self._undo_reserve(name, user, e.message)
            raise

        def txn(cursor):
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(
                "UPDATE boards SET script_attrs = ? WHERE name = ? AND holder = ?",
                (json.dumps(result.attrs), name, user),
            )
            return _fetch_row(cursor, name)

        row = yield self.pool.runInteraction(txn)
        return row

    @defer.inlineCallbacks
    def _undo_reserve(self, name, user, message):
        problems = yield self._wind_down(
            name, user, f"reservation of {name} failed: {message}", "setup failed"
        )
        yield self._finish(name, user, "setup_failed", message, problems)

    # -- release and expiry ---------------------------------------------

    @defer.inlineCallbacks
    def _wind_down(self, name, holder, notice, why):
        """Power off and close the console of an ending reservation; its problems."""
        problems = []
        power_problem = yield self._power_off_quietly(name)
        if power_problem:
            problems.append(power_problem)
        console = self.consoles.get(name)
        if console is not None:
            console.close_viewers(notice)
            console.mark_released(holder, iso(self.now()), why)
        return problems

    @defer.inlineCallbacks
    def _power_off_quietly(self, name):
        """Power the board off; a one-line problem text, or None when done."""
        if self._power_option(name) is None:
            return None
        try:
            yield self._set_power(name, False)
        except PowerFailed as e:
            return f"power off failed: {e.message}"
        return None

    def _finish(self, name, user, action, detail, problems):
        """Free the board, or put it in maintenance if anything failed."""

        def txn(cursor, now):
            cursor.execute("BEGIN IMMEDIATE")
            return self._finish_txn(cursor, name, user, action, detail, problems, now)

        return self.pool.runInteraction(txn, self.now())

    def _finish_txn(self, cursor, name, user, action, detail, problems, now):
        """``_finish`` inside a transaction; the board's new row (None if gone)."""
        if problems:
            reason = "; ".join(problems)
            cursor.execute(
                "UPDATE boards SET state = 'maintenance', reason = ?, "
                "holder = NULL, reserved_at = NULL, expires_at = NULL, "
                "sshpubkey = NULL, script_attrs = '{}', released_at = ? "
                "WHERE name = ?",
                (reason, now, name),
            )
            add_event(cursor, now, user, name, action, detail)
            add_event(cursor, now, None, name, "maintenance", reason)
            return _fetch_row(cursor, name)
        cursor.execute(
            "UPDATE boards SET state = 'free', holder = NULL, "
            "reserved_at = NULL, expires_at = NULL, sshpubkey = NULL, "
            "script_attrs = '{}', reason = NULL, released_at = ? WHERE name = ?",
            (now, name),
        )
        add_event(cursor, now, user, name, action, detail)
        cursor.execute("DELETE FROM boards WHERE name = ? AND configured = 0", (name,))
        return _fetch_row(cursor, name)

    @defer.inlineCallbacks
    def _end_reservation(self, row, actor, action, why):
        """Power off, close consoles, run the release script, then free the board."""
        name = row["name"]
        self.busy.add(name)
        try:
            problems = yield self._wind_down(
                name, row["holder"], f"reservation of {name} ended: {why}", why
            )
            if not row["configured"]:
                problems.append(REMOVED_PROBLEM)
            if name in self.lab.boards:
                try:
                    yield self.scripts.run(
                        "release",
                        name,
                        self.script_env(name, row["holder"], row["sshpubkey"]),
                    )
                except SetupFailed as e:
                    problems.append(e.message)
            row = yield self._finish(name, actor, action, why, problems)
        finally:
            self.busy.discard(name)
        return row

    @defer.inlineCallbacks
    def release(self, user, name, force=False):
        """Deferred[dict]: release a board held by ``user`` (or any, by an admin with force)."""
        if name in self.busy:
            raise Unavailable(f"board {name} is busy; try again")
        if self._has_wind_down(name):
            row = yield self._row_or_404(name)
            action, why = self._release_allowed(row, user, force)
            row = yield self._end_reservation(row, user, action, why)
        else:
            # nothing to switch off, close or run: check and free in one go
            row = yield self.pool.runInteraction(
                self._release_at_once, user, name, force, self.now()
            )
        if row is None:
            return {"name": name, "state": "removed"}
        return self.view(row, user)

    def _has_wind_down(self, name):
        """Whether ending a reservation of ``name`` has work besides the database."""
        return (
            self._power_option(name) is not None
            or name in self.consoles
            or (bool(self.scripts.path) and name in self.lab.boards)
        )

    def _release_allowed(self, row, user, force):
        """``(action, why)`` of ``user`` releasing ``row``; raises if not allowed."""
        name = row["name"]
        if row["state"] != "reserved":
            raise Unavailable(f"board {name} is not reserved")
        if row["holder"] == user:
            return "release", "released by the holder"
        if not self.is_admin(user):
            raise Forbidden(f"board {name} is not held by you")
        if not force:
            raise Forbidden(
                f"board {name} is held by {row['holder']}; force the release "
                "(bitelab release -f) to take it back"
            )
        return "force_release", f"released by admin {user}"

    def _release_at_once(self, cursor, user, name, force, now):
        cursor.execute("BEGIN IMMEDIATE")
        row = _fetch_row(cursor, name)
        if row is None:
            raise NotFound(f"no board named {name!r}")
        action, why = self._release_allowed(row, user, force)
        problems = [] if row["configured"] else [REMOVED_PROBLEM]
        return self._finish_txn(cursor, name, user, action, why, problems, now)

    @defer.inlineCallbacks
    def expire_due(self):
        """Release every reservation whose time is up; errors are logged, not raised."""
        try:
            rows = yield self.pool.runQuery(
                f"SELECT {BOARD_COLUMNS} FROM boards "
                "WHERE state = 'reserved' AND expires_at <= ?",
                (self.now(),),
            )
            ending = []
            for row in map(_row_dict, rows):
                if row["name"] in self.busy:
                    continue
                self.log.info(
                    "reservation of {name} by {holder} expired",
                    name=row["name"],
                    holder=row["holder"],
                )
                ending.append(self._end_reservation(row, None, "expire", "expired"))
            # boards wind down side by side: one slow release script or
            # switch does not hold up the others
            results = yield defer.DeferredList(ending, consumeErrors=True)
            for ok, result in results:
                if not ok:
                    self.log.failure("ending an expired reservation failed", result)
        except Exception:  # noqa: BLE001 - the periodic check must survive anything
            self.log.failure("expiry check failed")

    # -- attributes -----------------------------------------------------

    def _accepted(self, name):
        board = self.lab.boards.get(name)
        accepted = {"timeout"}
        if board is not None:
            for option in board.options:
                accepted.update(option.accepts)
        return accepted

    @defer.inlineCallbacks
    def set_attrs(self, user, name, values):
        """Deferred[dict]: apply ``{"power": ..., "timeout": ...}`` for the holder or an admin."""
        row = yield self._row_or_404(name)
        admin = self.is_admin(user)
        if not admin and not (row["state"] == "reserved" and row["holder"] == user):
            raise Forbidden(f"board {name} is not held by you")
        if not values:
            raise Invalid("no attributes given")
        accepted = self._accepted(name)
        for key in values:
            if key not in accepted:
                raise Invalid(
                    f"board {name} has no settable attribute {key!r} "
                    f"(settable: {', '.join(sorted(accepted))})"
                )
        power = values.get("power")
        if "power" in values and power not in ("on", "off", "cycle"):
            raise Invalid("power must be 'on', 'off' or 'cycle'")
        timeout = values.get("timeout")
        if "timeout" in values:
            self._check_timeout(timeout)
            if row["state"] != "reserved":
                raise Unavailable(f"board {name} is not reserved")
        if name in self.busy:
            raise Unavailable(f"board {name} is busy; try again")
        self.busy.add(name)
        try:
            if timeout is not None:
                yield self._extend(name, row["holder"], user, timeout)
            if power is not None:
                yield self._switch(name, user, power)
        finally:
            self.busy.discard(name)
        board = yield self.get_board(user, name)
        return board

    def _extend(self, name, holder, user, timeout):
        now = self.now()

        def txn(cursor):
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(
                "UPDATE boards SET expires_at = ? WHERE name = ? AND "
                "state = 'reserved' AND holder = ?",
                (now + timeout, name, holder),
            )
            if cursor.rowcount != 1:
                raise Unavailable(f"board {name} is no longer reserved")
            add_event(cursor, now, user, name, "extend", f"timeout={timeout}")

        return self.pool.runInteraction(txn)

    @defer.inlineCallbacks
    def _switch(self, name, user, power):
        try:
            if power == "cycle":
                yield self._set_power(name, False)
                yield task.deferLater(self.reactor, self.config.power_cycle_pause)
                yield self._set_power(name, True)
            else:
                yield self._set_power(name, power == "on")
        except PowerFailed as e:
            yield self.pool.runInteraction(
                add_event, self.now(), user, name, "power_failed", e.message
            )
            raise
        yield self.pool.runInteraction(
            add_event, self.now(), user, name, "power", power
        )

    def _power_option_or_invalid(self, name):
        option = self._power_option(name)
        if option is None:
            raise Invalid(f"board {name} has no power control")
        return option

    @defer.inlineCallbacks
    def _set_power(self, name, on):
        option = self._power_option_or_invalid(name)
        state = yield self._noting_power_errors(name, option.set_power, on)
        yield self._store_power(name, state)
        return state

    @defer.inlineCallbacks
    def _noting_power_errors(self, name, method, *args):
        """Call a power driver method, remembering its failure for ``view``."""
        try:
            result = yield method(self.runtime, *args)
        except PowerFailed as e:
            self.power_errors[name] = e.message
            raise
        self.power_errors.pop(name, None)
        return result

    @defer.inlineCallbacks
    def read_power(self, name):
        """Deferred[bool]: read the power state from the device and store it."""
        option = self._power_option_or_invalid(name)
        state = yield self._noting_power_errors(name, option.get_power)
        yield self._store_power(name, state)
        return state

    def _store_power(self, name, state):
        return self.pool.runOperation(
            "UPDATE boards SET power = ?, power_at = ? WHERE name = ?",
            ("on" if state else "off", self.now(), name),
        )

    # -- maintenance ----------------------------------------------------

    def _require_admin(self, user):
        if not self.is_admin(user):
            raise Forbidden("only admins may do this")

    @defer.inlineCallbacks
    def set_maintenance(self, user, name, reason):
        """Deferred[dict]: take a free board out of service (admins)."""
        self._require_admin(user)
        yield self._row_or_404(name)
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
            raise Invalid("reason must be a non-empty string of at most 500 characters")
        now = self.now()

        def txn(cursor):
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("SELECT state, holder FROM boards WHERE name = ?", (name,))
            state, holder = cursor.fetchone()
            if state == "reserved":
                raise Unavailable(
                    f"board {name} is reserved by {holder}; force-release it first"
                )
            cursor.execute(
                "UPDATE boards SET state = 'maintenance', reason = ? WHERE name = ?",
                (reason.strip(), name),
            )
            add_event(cursor, now, user, name, "maintenance", reason.strip())

        yield self.pool.runInteraction(txn)
        board = yield self.get_board(user, name)
        return board

    @defer.inlineCallbacks
    def clear_maintenance(self, user, name):
        """Deferred[dict]: put a board in maintenance back in service (admins)."""
        self._require_admin(user)
        row = yield self._row_or_404(name)
        if row["state"] != "maintenance":
            raise Unavailable(f"board {name} is not in maintenance")
        if name in self.busy:
            raise Unavailable(f"board {name} is busy; try again")
        if self._power_option(name) is not None:
            # a board is only handed out switched off (PowerFailed: stays put)
            self.busy.add(name)
            try:
                yield self._set_power(name, False)
            finally:
                self.busy.discard(name)
        now = self.now()

        def txn(cursor):
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(
                "UPDATE boards SET state = 'free', reason = NULL, released_at = ? "
                "WHERE name = ? AND state = 'maintenance'",
                (now, name),
            )
            if cursor.rowcount != 1:
                raise Unavailable(f"board {name} is not in maintenance")
            add_event(cursor, now, user, name, "maintenance_end", "")
            cursor.execute(
                "DELETE FROM boards WHERE name = ? AND configured = 0", (name,)
            )
            return _fetch_row(cursor, name)

        row = yield self.pool.runInteraction(txn)
        if row is None:
            return {"name": name, "state": "removed"}
        return self.view(row, user)

    # -- consoles -------------------------------------------------------

    @defer.inlineCallbacks
    def open_console(self, user, name):
        """Deferred[hub]: the console of a board ``user`` holds (or any, for admins)."""
        row = yield self._get_row(name)
        if row is None or name not in self.consoles:
            raise NotFound(f"board {name} has no serial console")
        if not self.is_admin(user) and not (
            row["state"] == "reserved" and row["holder"] == user
        ):
            raise Forbidden(f"you do not hold board {name}")
        return self.consoles[name]
