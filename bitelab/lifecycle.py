"""The reservation lifecycle: the side effects around each committed transition.

``BoardManager`` is what the API and SSH layers call.  Every step follows
one pattern: commit the intent (``bitelab.store``, which asks
``bitelab.rules``), let the committed events cut consoles, then run the
side effects (reserve or release script, power), then commit the outcome.
A crash at any point leaves a board ``reserving`` or ``releasing`` in the
database; ``recover`` (at start, and periodically for anything no running
step drives) rolls an interrupted setup back and finishes an interrupted
ending.  Setup scripts must therefore be idempotent: a release may run
again for a reservation whose release was cut short.
"""

from urllib.parse import urlsplit

from twisted.application import service
from twisted.conch.ssh import keys
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitelab import events, rules
from bitelab.config import NAME_RE, BoardClass
from bitelab.console import ConsoleAccess
from bitelab.errors import (
    Elsewhere,
    Forbidden,
    Invalid,
    NotFound,
    PowerFailed,
    SetupFailed,
    StorageError,
    Unavailable,
)
from bitelab.options import EtherIface, SerialConsole
from bitelab.queue import WaitingRoom
from bitelab.script import ScriptResult
from bitelab.ssh import host_key_facts
from bitelab.store import Wait
from bitelab.views import (
    board_view,
    class_view,
    default_timeout,
    event_view,
    iso,
    reservation_view,
)

MAX_PUBKEY = 16 * 1024
#: longest wait between two tries of a commit that met a failing database
MAX_RETRY_DELAY = 30.0
#: seconds between two looks for reservation console logs past retention
PRUNE_INTERVAL = 3600.0
#: seconds between two looks at a board another host is working on
AWAIT_INTERVAL = 0.1


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


class BoardManager(service.Service):
    """Reservations and board operations over the store, power and scripts."""

    log = Logger()

    def __init__(self, clock, config, lab, store, power, scripts, consoles=None):
        self.clock = clock
        self.config = config
        self.lab = lab
        self.store = store
        self.power = power
        self.scripts = scripts
        self.consoles = consoles if consoles is not None else {}
        #: board -> reservation id of the step this process is driving
        self.driving = {}
        self._pending = set()
        self._slots = defer.DeferredSemaphore(config.release_concurrency)
        #: board -> Deferreds of waits on another host's work on it (``wake``)
        self._watchers = {}
        #: work another host's notice asked for, not started yet
        self._due = set()
        self._waking = False
        self._loop = None
        self._next_prune = 0
        #: reaches other hosts' boards (``bitelab.forward.Forwarder``; None
        #: in a one-host lab)
        self.forwarder = None
        #: () -> what the heartbeat tells the other hosts of this one
        #: (``bitelab.store._beat``'s ``facts``); set where the SSH service is
        self.host_facts = None
        self.store.bus.subscribe(self._cut_consoles)
        self.store.policy = self
        self.room = WaitingRoom(self)

    # -- service --------------------------------------------------------

    def startService(self):
        """Bring every board between states to an end, then watch expiry."""
        super().startService()
        # no waiting client survived the restart: their places are kept for
        # queue_lease seconds, for them to come back
        self._background(
            self.store.lease_waiters(self.config.queue_lease), "leasing the queue"
        )
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.config.expiry_interval, now=True)
        self.power.refresh()

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.store.bus.unsubscribe(self._cut_consoles)
        self.room.stop()
        return super().stopService()

    @defer.inlineCallbacks
    def tick(self):
        """One round of the periodic work; errors are logged, not raised."""
        try:
            if self.config.host_name:
                facts = self.host_facts() if self.host_facts is not None else None
                yield self.store.heartbeat(
                    self.config.host_name, self.config.host_url, facts
                )
            yield self.recover()
            yield self.expire_due()
            expired = yield self.store.expire_waiters()
            self.room.time_out_swept(expired)
            if self.config.host_name:
                yield self.store.note_down_hosts(self.config.host_timeout)
                yield self.room.poll_grants()
            if self.config.expiry_notices:
                yield self.store.due_notices(self.config.expiry_notices)
            yield self.store.match()
            if self.now() >= self._next_prune:
                self._next_prune = self.now() + PRUNE_INTERVAL
                self.prune_console_logs()
        except Exception:  # noqa: BLE001 - the periodic check must survive anything
            self.log.failure("periodic reservation check failed")

    def wake(self, boards=None, granted=False):
        """Another host committed work for this one (``bitelab.wakeup``).

        ``boards``: the boards its commit changed (None: anything may have
        changed, as after notices were missed); ``granted``: it handed a
        board to a waiter, maybe one held open here.  Waits on those boards
        look again at once.  Recovery (taking up reservations and endings of
        this host's boards) and the look for granted waiters run in the
        background, one round at a time: what comes during a round is done
        in one more round after it.
        """
        if not self.running:
            return
        for name, watchers in list(self._watchers.items()):
            if boards is None or name in boards:
                for d in list(watchers):
                    if not d.called:
                        d.callback(None)
        if boards is None or any(name in self.lab.boards for name in boards):
            self._due.add("recover")
        if granted and self.room.waiting:
            self._due.add("grants")
        if self._due and not self._waking:
            self._background(self._run_wakes(), "waking up for another host's work")

    @defer.inlineCallbacks
    def _run_wakes(self):
        self._waking = True
        try:
            while self._due:
                due, self._due = self._due, set()
                if "recover" in due:
                    yield self.recover()
                if "grants" in due:
                    yield self.room.poll_grants()
        except StorageError as e:
            # the periodic tick does it once the database is back
            self.log.warn(
                "cannot take up another host's work now: {error}", error=e.message
            )
            self._due.clear()
        finally:
            self._waking = False

    def _news_of(self, name):
        """Deferred: fires when another host reports a change of board
        ``name`` (``wake``), or after ``AWAIT_INTERVAL`` at the latest;
        cancel it once it is not wanted."""
        d = defer.Deferred()
        timer = self.clock.callLater(AWAIT_INTERVAL, d.callback, None)
        watchers = self._watchers.setdefault(name, set())
        watchers.add(d)

        def forget(result):
            if timer.active():
                timer.cancel()
            watchers.discard(d)
            if not watchers and self._watchers.get(name) is watchers:
                del self._watchers[name]
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                return None
            return result

        d.addBoth(forget)
        return d

    def settle(self):
        """Deferred: fires once every step running in the background is done."""
        return defer.DeferredList(list(self._pending), consumeErrors=True)

    def _background(self, d, what):
        self._pending.add(d)

        def done(result):
            self._pending.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(lambda f: self.log.failure(what, f))
        return d

    # -- helpers --------------------------------------------------------

    def is_admin(self, user):
        """Whether ``user`` is listed in ``admins``."""
        return user in self.config.admins

    def is_board(self, name):
        """Whether ``name`` is a board of the board file."""
        return name in self.lab.boards

    def is_lab_board(self, name):
        """Whether ``name`` is a board of this host's file, or (a Deferred)
        of another host's, in a lab of several hosts."""
        if name in self.lab.boards or not self.config.host_name:
            return name in self.lab.boards
        if not NAME_RE.fullmatch(name) or len(name) > 128:
            return False
        d = self.store.board(name)
        d.addCallbacks(
            lambda row: row is not None, lambda f: f.trap(NotFound) and False
        )
        return d

    def now(self):
        return self.clock.seconds()

    # -- the store's policy ---------------------------------------------

    def timeout_for(self, name):
        """How long a reservation of ``name`` lasts unless asked otherwise."""
        return default_timeout(self.lab, self.config, name)

    @property
    def host(self):
        """This host's name ('' in a one-host lab)."""
        return self.config.host_name

    @property
    def host_timeout(self):
        """Seconds without a heartbeat after which a host counts as down."""
        return self.config.host_timeout

    def own(self, row):
        """Whether the board of ``row`` hangs off this host."""
        return row["host"] == self.config.host_name

    @property
    def user_limit(self):
        """Boards one user may hold in the whole lab (0: no limit)."""
        return self.config.user_board_limit

    def class_limit(self, brdclass):
        """Boards of ``brdclass`` one user may hold (its ``user_limit``; 0: none)."""
        cls = self.lab.classes.get(brdclass)
        return int(cls.attrs.get("user_limit", 0) or 0) if cls is not None else 0

    def direct(self, name):
        """Whether a reservation of ``name`` needs no setting up or winding down
        (boards of other hosts are theirs to judge)."""
        return name in self.lab.boards and not self._has_side_effects(name)

    def _has_side_effects(self, name):
        """Whether starting or ending a reservation of ``name`` runs anything."""
        return name in self.lab.boards and (
            bool(self.scripts.path)
            or self.power.has_power(name)
            or name in self.consoles
        )

    def view(self, row, user, down_hosts=frozenset()):
        """The API's BOARD object for a store row, as ``user`` may see it."""
        return board_view(
            row,
            user,
            self.is_admin(user),
            self.lab,
            self.config,
            self.power.errors,
            self.consoles,
            down_hosts,
        )

    def script_env(self, row):
        """The setup script's environment for the reservation in ``row``."""
        name = row["name"]
        board = self.lab.boards[name]
        env = {
            "BITELAB_BOARD": name,
            "BITELAB_CLASS": board.brdclass,
            "BITELAB_ARCH": self.lab.classes[board.brdclass].arch,
            "BITELAB_USER": row["holder"],
            "BITELAB_SSHPUBKEY": row["sshpubkey"] or "",
            "BITELAB_RESERVATION": str(row["reservation_id"]),
        }
        if self.config.host_name:
            env["BITELAB_HOST"] = self.config.host_name
        ether = board.option(EtherIface)
        if ether is not None:
            env["BITELAB_ETHERIFACE"] = ether.val
        console = board.option(SerialConsole)
        if console is not None:
            env["BITELAB_SERIALCONSOLE"] = console.val
        return env

    # -- queries --------------------------------------------------------

    @defer.inlineCallbacks
    def list_boards(self, user):
        """Deferred[list]: every board of every host as ``user`` may see it."""
        rows = yield self.store.boards()
        down = yield self._down_hosts()
        return [self.view(row, user, down) for row in rows]

    @defer.inlineCallbacks
    def get_board(self, user, name):
        """Deferred[dict]: one board."""
        row = yield self.store.board(name)
        down = yield self._down_hosts()
        return self.view(row, user, down)

    @defer.inlineCallbacks
    def _down_hosts(self):
        """Deferred[set]: hosts that have stopped beating (none in a one-host lab)."""
        if not self.config.host_name:
            return frozenset()
        hosts = yield self.store.hosts()
        cutoff = self.now() - self.config.host_timeout
        return frozenset(name for name, (_, beat) in hosts.items() if beat <= cutoff)

    @defer.inlineCallbacks
    def list_classes(self):
        """Deferred[list]: classes with their board counts."""
        counts = yield self.store.class_counts()
        classes = dict(self.lab.classes)
        if self.config.host_name:
            # every host's classes; they agree where they are repeated
            defined = yield self.store.class_definitions()
            for name, (arch, attrs) in defined.items():
                classes.setdefault(name, BoardClass(name, arch, attrs))
        return [
            class_view(name, brdclass, *counts.get(name, (0, 0)))
            for name, brdclass in sorted(classes.items())
        ]

    @defer.inlineCallbacks
    def events(self, limit=100, board=None, user=None, before=None):
        """Deferred[list]: audit events, newest first."""
        rows = yield self.store.events(
            limit=limit, board=board, user=user, before=before
        )
        return [event_view(row) for row in rows]

    @defer.inlineCallbacks
    def reservations(self, user, of_user=None, board=None, limit=100):
        """Deferred[list]: reservations, newest first; users see their own."""
        if not self.is_admin(user):
            if of_user not in (None, user):
                raise Forbidden("only admins may list other users' reservations")
            of_user = user
        rows = yield self.store.reservations(user=of_user, board=board, limit=limit)
        return [reservation_view(row) for row in rows]

    @defer.inlineCallbacks
    def reservation(self, user, rid):
        """Deferred[dict]: one reservation, for its user or an admin."""
        row = yield self.store.reservation(rid)
        if row["user"] != user and not self.is_admin(user):
            raise NotFound(f"no reservation {rid}")
        return reservation_view(row)

    # -- reserve --------------------------------------------------------

    def _check_request(self, target, sshpubkey, timeout):
        if timeout is not None:
            rules.check_timeout(timeout, self.config.max_timeout)
        if sshpubkey is not None:
            if not isinstance(sshpubkey, str) or len(sshpubkey) > MAX_PUBKEY:
                raise Invalid("sshpubkey must be an OpenSSH public key line")
            sshpubkey = sshpubkey.strip() or None
            if sshpubkey:
                check_public_key(sshpubkey)
        if target in self.lab.classes:
            return True, sshpubkey
        if target in self.lab.boards:
            return False, sshpubkey
        if self.config.host_name:
            # a board or class of another host of the lab
            return None, sshpubkey
        raise NotFound(f"no board or class named {target!r}")

    @defer.inlineCallbacks
    def _lab_target(self, target):
        """Whether ``target``, known to no board file here, is a class of
        another host (True) or one of its boards (False)."""
        defined = yield self.store.class_definitions()
        if target in defined:
            return True
        yield self.store.board(target)
        return False

    @defer.inlineCallbacks
    def reserve(
        self,
        user,
        target,
        sshpubkey=None,
        timeout=None,
        wait=0,
        waiter=None,
        priority=None,
        gone=None,
        ticket=None,
    ):
        """Deferred[dict]: reserve a board by name, or any free board of a class.

        For a class, a board whose reserve script fails is wound down and the
        next free board of the class is tried; the request fails with the
        last script error once none is left.  With ``wait`` seconds, a
        request that finds nothing it may take joins the queue and answers
        once a board is handed to it (``waiter``: take up a place again after
        the connection was lost; ``gone``: fires when the client leaves;
        ``ticket``: the client's own name for the wait, echoed in its queue
        events so that it knows which place is its own).
        """
        is_class, sshpubkey = self._check_request(target, sshpubkey, timeout)
        if is_class is None:
            is_class = yield self._lab_target(target)
        rules.check_wait(wait, self.config.max_wait)
        priority = rules.check_priority(priority, self.is_admin(user))
        queue = None
        if wait or waiter is not None:
            queue = Wait(self.now() + wait, priority, timeout, waiter, ticket)

        def timeout_for(name):
            return timeout if timeout is not None else self.timeout_for(name)

        tried, failure = [], None
        while True:
            try:
                row = yield self.store.claim(
                    target,
                    is_class,
                    user,
                    sshpubkey,
                    timeout_for,
                    self.direct,
                    tried,
                    queue,
                )
            except Unavailable:
                if failure is None:
                    raise
                raise SetupFailed(
                    f"{failure.message} (tried {', '.join(tried)}; no other board "
                    f"of class {target} is free)"
                ) from None
            if "granted" in row:
                return self.view(row["granted"], user)
            if "waiter" in row:
                board = yield self.room.wait(
                    row["waiter"],
                    user,
                    target,
                    queue.deadline,
                    gone,
                    row.get("class"),
                )
                return board
            queue = Wait(queue.deadline, priority, timeout) if queue else None
            if row["state"] == rules.RESERVED:
                return self.view(row, user)
            try:
                if self.own(row):
                    reserved = yield self._set_up(row)
                else:
                    reserved = yield self._await_setup(row)
            except SetupFailed as e:
                if not is_class:
                    raise
                tried.append(row["name"])
                failure = e
                continue
            return self.view(reserved, user)

    @defer.inlineCallbacks
    def _set_up(self, row):
        """Run the reserve script of a ``reserving`` board; the reserved row.

        A failed script winds the reservation down (``SetupFailed``); a
        failed final commit rolls it back in the background once the
        database is back (``StorageError`` to the caller).
        """
        name, rid = row["name"], row["reservation_id"]
        self.driving[name] = rid
        handed_on = False
        try:
            try:
                result = yield self._reserve_script(row)
            except SetupFailed as e:
                ending = yield self._retrying(
                    self.store.fail_setup, name, rid, e.message
                )
                if ending is not None:
                    handed_on = True
                    yield self._wind_down(ending)
                raise
            try:
                reserved = yield self.store.confirm(name, rid, result.attrs)
            except StorageError:
                handed_on = True
                self._background(self._roll_back(name, rid), f"rolling back {name}")
                raise
            if reserved is None:
                raise Unavailable(f"the reservation of {name} ended during its setup")
            return reserved
        finally:
            if not handed_on and self.driving.get(name) == rid:
                del self.driving[name]

    def _reserve_script(self, row):
        if not self.scripts.path:
            return defer.succeed(ScriptResult({}, b"", b""))
        return self.scripts.run("reserve", row["name"], self.script_env(row))

    @defer.inlineCallbacks
    def _roll_back(self, name, rid):
        """Undo a setup whose outcome could not be committed."""
        self.driving[name] = rid
        ending = yield self._retrying(self.store.interrupt, name, rid)
        if ending is not None:
            yield self._wind_down(ending)
        elif self.driving.get(name) == rid:
            del self.driving[name]

    @defer.inlineCallbacks
    def abandon(self, row):
        """End a reservation handed to a waiter that has gone; the board
        goes back to the queue, or is freed."""
        name, rid = row["name"], row["reservation_id"]
        self.driving[name] = rid
        ending = yield self._retrying(self.store.abandon, name, rid)
        if ending is not None:
            yield self._wind_down(ending)
        elif self.driving.get(name) == rid:
            del self.driving[name]

    @defer.inlineCallbacks
    def queue(self, user):
        """Deferred[dict]: the queue as ``user`` may see it."""
        entries = yield self.store.queue()
        places = rules.positions(entries)
        admin = self.is_admin(user)
        shown = []
        for entry in sorted(entries, key=rules.queue_order):
            if not admin and entry["user"] != user:
                continue
            position, ahead = places[entry["id"]]
            shown.append(
                {
                    "id": entry["id"],
                    "ticket": entry["ticket"],
                    "user": entry["user"],
                    "target": entry["target"],
                    "priority": entry["priority"],
                    "since": iso(entry["created_at"]),
                    "deadline": iso(entry["deadline"]),
                    "connected": entry["lease_until"] is None,
                    "position": position,
                    "ahead": ahead,
                }
            )
        return {"queue": shown, "total": len(entries)}

    # -- boards of other hosts ------------------------------------------

    @defer.inlineCallbacks
    def _adopt(self, row):
        """Set up a reservation another host recorded for a board of ours."""
        name, rid = row["name"], row["reservation_id"]
        self.driving[name] = rid
        taken = yield self._retrying(self.store.adopt, name, rid, self.config.host_name)
        if taken is None:
            if self.driving.get(name) == rid:
                del self.driving[name]
            return
        try:
            yield self._set_up(taken)
        except (SetupFailed, Unavailable, StorageError) as e:
            self.log.info(
                "setting up {name} for another host failed: {e}", name=name, e=e.message
            )

    @defer.inlineCallbacks
    def _await_host(self, row, limit=None):
        """Wait until the host of ``row``'s board is done with its reservation
        (set up, or ended); the board's row then."""
        name, rid = row["name"], row["reservation_id"]
        limit = limit or self.config.setup_script_timeout * 2 + 30
        deadline = self.now() + limit
        while True:
            # armed before the read, so that no news between the two is missed
            news = self._news_of(name)
            try:
                current = yield self.store.board(name)
                if current["reservation_id"] != rid or current["state"] not in (
                    rules.RESERVING,
                    rules.RELEASING,
                ):
                    return current
                down = yield self._down_hosts()
                if row["host"] in down and current["state"] == rules.RELEASING:
                    # recorded: the host finishes the release when it is back
                    return current
                if self.now() > deadline:
                    raise Unavailable(
                        f"host {row['host']} has not finished with board {name} "
                        f"in {limit:g} s; it goes on there"
                    )
                yield news
            finally:
                news.cancel()

    @defer.inlineCallbacks
    def _await_setup(self, row):
        """Wait for the host of ``row``'s board to set its reservation up."""
        current = yield self._await_host(row)
        if current["reservation_id"] == row["reservation_id"]:
            return current
        ended = yield self.store.reservation(row["reservation_id"])
        if ended["cause"] == rules.SETUP_FAILED:
            raise SetupFailed(ended["detail"] or "setup failed")
        raise Unavailable(
            f"the reservation of {row['name']} ended: {ended['detail'] or ended['cause']}"
        )

    @defer.inlineCallbacks
    def locate_login(self, login):
        """Deferred[dict or None]: where the SSH service serving the console
        login ``login`` listens, when that is another host's (the board's)."""
        if not self.config.host_name or not NAME_RE.fullmatch(login):
            return None
        try:
            row = yield self.store.board(login)
        except NotFound:
            return None
        if self.own(row):
            return None
        host = yield self.store.host(row["host"])
        if host is None or not host["url"] or not host["ssh_port"]:
            return None
        where = {
            "host": host["name"],
            "ssh_host": urlsplit(host["url"]).hostname,
            "ssh_port": host["ssh_port"],
        }
        if host["ssh_host_key"]:
            where.update(host_key_facts(keys.Key.fromString(host["ssh_host_key"])))
        return where

    def _check_local(self, row, what):
        """``Elsewhere`` unless the board of ``row`` hangs off this host (the
        API then forwards the request to the board's host)."""
        if not self.own(row):
            raise Elsewhere(
                f"board {row['name']} hangs off host {row['host']}; {what}",
                row["host"],
            )

    # -- ending ---------------------------------------------------------

    @defer.inlineCallbacks
    def release(self, user, name, force=False, reason=None):
        """Deferred[dict]: end the reservation of ``name`` held by ``user``.

        Admins end anyone's with ``force`` and may give a ``reason`` the
        holder sees.  Answers once the board is free (or in maintenance).
        """
        admin = self.is_admin(user)
        if reason is not None:
            reason = rules.check_reason(reason)
        row = yield self.store.begin_release(
            name, user, admin, force, reason, direct=self.direct(name)
        )
        if row is not None and row["state"] == rules.RELEASING:
            if self.own(row):
                row = yield self._wind_down(row)
            else:
                row = yield self._await_host(row)
        if row is None:
            return {"name": name, "state": "removed"}
        return self.view(row, user)

    @defer.inlineCallbacks
    def expire_due(self):
        """End every reservation whose time is up; the endings run in the background."""
        direct = frozenset(n for n in self.lab.boards if self.direct(n))
        ending = yield self.store.begin_expiry(direct)
        for row in ending:
            self.log.info(
                "reservation {rid} of {name} by {holder} expired",
                rid=row["reservation_id"],
                name=row["name"],
                holder=row["holder"],
            )
            self._background(self._wind_down(row), f"ending {row['name']}")

    @defer.inlineCallbacks
    def recover(self):
        """Bring every board between states that no step drives to an end.

        An interrupted setup is rolled back; an interrupted ending is run
        again to its end.  The read goes through the write connection, so it
        sees no reservation whose own step has not yet been told of its
        commit.
        """
        rows = yield self.store.unsettled()
        for row in rows:
            name, rid = row["name"], row["reservation_id"]
            if name in self.driving:
                continue
            self.log.info(
                "board {name} is {state} (reservation {rid}) with nobody on it; "
                "taking it up",
                name=name,
                state=row["state"],
                rid=rid,
            )
            if row["state"] == rules.RESERVING and row["driver"] is None:
                d = self._adopt(row)
            elif row["state"] == rules.RESERVING:
                d = self._roll_back(name, rid)
            else:
                # an ending another host committed: its event was that host's
                self._end_console(row)
                d = self._wind_down(row)
            self._background(d, f"recovering {name}")

    @defer.inlineCallbacks
    def _wind_down(self, row):
        """Power off, run the release script, then free the board (or maintenance).

        Consoles were cut when the ending was committed.  At most
        ``release_concurrency`` endings run at once.
        """
        name, rid = row["name"], row["reservation_id"]
        self.driving[name] = rid
        try:
            yield self._slots.acquire()
            try:
                problems = []
                if name in self.lab.boards:
                    problem = yield self.power.off(name)
                    if problem:
                        problems.append(problem)
                    if self.scripts.path:
                        try:
                            yield self.scripts.run(
                                "release", name, self.script_env(row)
                            )
                        except SetupFailed as e:
                            problems.append(e.message)
                result = yield self._retrying(
                    self.store.finish,
                    name,
                    rid,
                    problems,
                    self.config.max_setup_failures,
                )
            finally:
                self._slots.release()
        finally:
            if self.driving.get(name) == rid:
                del self.driving[name]
        return result

    @defer.inlineCallbacks
    def _retrying(self, step, *args):
        """``step(*args)``, tried again while the database fails.

        The side effects before it are done and must not be lost or run
        again, so the commit waits for the storage to come back.
        """
        delay = 1.0
        while True:
            try:
                result = yield step(*args)
            except StorageError as e:
                if not self.running:
                    raise
                self.log.warn(
                    "cannot record {step}: {error}; retrying in {delay}s",
                    step=step.__name__,
                    error=e.message,
                    delay=delay,
                )
                yield task.deferLater(self.clock, delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            return result

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
        row = yield self.store.board(name)
        admin = self.is_admin(user)
        rules.check_use(row, user, admin)
        if not values:
            raise Invalid("no attributes given")
        if set(values) - {"timeout"}:
            # which attributes a board takes, and switching them, are its host's
            self._check_local(row, "switch its power through that host")
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
        if "timeout" in values:
            timeout = rules.check_timeout(values["timeout"], self.config.max_timeout)
            if row["state"] != rules.RESERVED:
                raise Unavailable(f"board {name} is not reserved")
            row = yield self.store.extend(name, user, admin, timeout)
        if power is not None:
            yield self._switch(row, user, admin, power)
            row = yield self.store.board(name)
        return self.view(row, user)

    @defer.inlineCallbacks
    def _switch(self, row, user, admin, action):
        name, rid = row["name"], row["reservation_id"]

        @defer.inlineCallbacks
        def still_allowed():
            # the board's turn has come: is it still the caller's to switch?
            now = yield self.store.board(name)
            rules.check_use(now, user, admin)
            if not admin and now["reservation_id"] != rid:
                raise Forbidden(f"board {name} is not held by you")

        try:
            yield self.power.switch(name, action, still_allowed, admin)
        except PowerFailed as e:
            yield self.store.audit("power_failed", name, user, e.message, rid)
            raise
        yield self.store.audit(events.POWER, name, user, action, rid)

    # -- maintenance ----------------------------------------------------

    def _require_admin(self, user):
        if not self.is_admin(user):
            raise Forbidden("only admins may do this")

    @defer.inlineCallbacks
    def set_maintenance(self, user, name, reason):
        """Deferred[dict]: take a free board out of service (admins)."""
        self._require_admin(user)
        yield self.store.board(name)
        reason = rules.check_reason(reason)
        row = yield self.store.start_maintenance(name, user, reason)
        return self.view(row, user)

    @defer.inlineCallbacks
    def clear_maintenance(self, user, name):
        """Deferred[dict]: power off, then put a board back in service (admins)."""
        self._require_admin(user)
        row = yield self.store.board(name)
        rules.check_maintenance_end(row)
        self._check_local(row, "end its maintenance through that host")
        if self.power.has_power(name):
            # a board is only handed out switched off (PowerFailed: stays put)
            @defer.inlineCallbacks
            def still_in_maintenance():
                rules.check_maintenance_end((yield self.store.board(name)))

            yield self.power.switch(name, "off", still_in_maintenance, admin=True)
        row = yield self.store.end_maintenance(name, user)
        if row is None:
            return {"name": name, "state": "removed"}
        return self.view(row, user)

    # -- consoles -------------------------------------------------------

    @defer.inlineCallbacks
    def open_console(self, user, name):
        """Deferred[ConsoleAccess]: ``name``'s console for ``user``'s reservation.

        The access is bound to the reservation the caller holds now: it
        attaches only while that reservation is the console's, and every
        session of it is cut when the reservation starts to end.
        """
        row = yield self.store.board(name)
        console = self.consoles.get(name)
        if console is None and not self.own(row):
            self._check_local(row, "reach its console through that host")
        if console is None:
            raise NotFound(f"board {name} has no serial console")
        rid = rules.check_console(row, user, self.is_admin(user))
        return ConsoleAccess(console, rid)

    @defer.inlineCallbacks
    def open_any_console(self, user, name, relay=True):
        """Deferred: ``open_console``, or in a lab of several hosts the
        console of another host's board relayed from there (unless not to
        ``relay``: what another host relays is not relayed again)."""
        try:
            access = yield self.open_console(user, name)
        except Elsewhere as e:
            if self.forwarder is None or not relay:
                raise
            access = yield self.forwarder.open_console(user, e.host, name)
        return access

    @defer.inlineCallbacks
    def past_console_log(self, user, name, rid):
        """Deferred[file]: the console output of reservation ``rid`` of ``name``,
        for its holder or an admin, kept ``console_log_retention`` days."""
        console = self.consoles.get(name)
        if console is None:
            board = yield self.store.board(name)
            self._check_local(board, "its console logs are kept there")
            raise NotFound(f"board {name} has no serial console")
        row = yield self.store.reservation(rid)
        if row["board"] != name or (row["user"] != user and not self.is_admin(user)):
            raise NotFound(f"no reservation {rid} of yours on board {name}")
        try:
            return console.reservation_logs.open(rid)
        except OSError:
            raise NotFound(
                f"the console log of reservation {rid} is no longer kept"
            ) from None

    def prune_console_logs(self):
        """Delete reservation console logs past their retention."""
        older_than = self.now() - self.config.console_log_retention * 86400
        for console in self.consoles.values():
            console.reservation_logs.prune(older_than)

    def _end_console(self, row):
        """Cut the sessions of the reservation ``row``'s board is ending."""
        console = self.consoles.get(row["name"])
        if console is not None:
            why = row["detail"] or "released"
            console.end(row["reservation_id"], row["holder"], iso(self.now()), why)

    def _cut_consoles(self, event):
        """Event subscriber: consoles follow their board's reservations (an
        ending committed on another host is cut here when this host takes
        it up, and at the latest when the board is free)."""
        console = self.consoles.get(event.board)
        if console is None:
            return
        when = iso(event.at)
        if event.kind in (events.RESERVING, events.RESERVED):
            console.begin(event.reservation, event.holder, when)
        elif event.kind == events.RELEASING or (
            event.kind in (events.FREED, events.MAINTENANCE)
            and event.reservation is not None
        ):
            console.end(event.reservation, event.holder, when, event.detail)
        elif event.kind == events.EXPIRING:
            minutes = max(1, round(int(event.detail) / 60))
            console.notice(
                event.reservation,
                f"reservation of {event.board} ends in about {minutes} min; "
                f"extend it with: bitelab set timeout=SECONDS {event.board}",
            )

    def resume_consoles(self, held):
        """At start: each console belongs to its board's current reservation.

        ``held`` maps boards being set up or reserved to their reservation
        ids (what ``bitelab.store.sync_boards`` returns).
        """
        for name, rid in held.items():
            console = self.consoles.get(name)
            if console is not None:
                console.resume(rid)
