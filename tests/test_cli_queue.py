"""``bitelab reserve --wait``, ``bitelab queue`` and ``bitelab watch``.

The first part runs the client in-process, through ``treq.testing.StubTreq``
and a ``task.Clock``, against ``QueueStandIn``: a small Klein app that
follows the waiting contract of the API (waiting reserves, the event
stream, the queue, restarts with leases).  The real queue is the server's
own and is tested with it; the stand-in lets these tests put the client in
every situation at a chosen moment.  The second part runs the installed
``bitelab`` against sockets on loopback.
"""

import io
import json
import socket
import subprocess
import threading
from datetime import UTC

import attrs
import pytest
from klein import Klein
from test_cli import BITELAB, REPO, read_request
from treq.testing import StubTreq
from twisted.internet import defer, task

from bitelab.client import cli
from bitelab.client.http import LabAPI
from bitelab.client.render import Moment, render_event, render_queue
from bitelab.client.settings import Settings
from bitelab.client.waiting import BACKOFF_FIRST

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
LEASE = 30.0
MAX_WAIT = 7200


def iso(seconds):
    """An ISO 8601 UTC time, as the API writes them."""
    from datetime import datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@attrs.define
class Waiter:
    """One place in the stand-in's queue."""

    id: int
    user: str
    target: str
    priority: int
    since: float
    deadline: float
    #: the held reserve request's Deferred, or None while its client is away
    answer: object = None
    timer: object = None
    lease: object = None


@attrs.define
class QueueStandIn:
    """A stand-in for the server's waiting queue, following the API contract
    and the shapes of the real server's answers and events.

    Boards ``zynq-1`` and ``zynq-2`` (class ``zynq``) start held by carol;
    root is an admin.  Every call is recorded in ``calls`` as ``(method,
    path, user, body)``.  ``restart()`` drops every connection as a
    restarting server would and refuses connections until ``up()``; waiters
    keep their place for ``LEASE`` seconds unless their client sends its
    reserve again with ``waiter``.  With ``slow_setup`` a board handed over
    is answered only at ``finish_setup()``, as a setup script that takes its
    time.  ``before_join``, if set, is called as a request is about to join
    the queue (for other waits to join at that very moment).
    """

    clock: task.Clock
    tokens: dict = attrs.Factory(
        lambda: {f"tok-{u}": u for u in ("alice", "bob", "carol", "root")}
    )
    boards: dict = attrs.Factory(dict)
    waiters: list = attrs.Factory(list)
    #: waiter id -> why it left (timed_out, cancelled, gone) or granted
    ended: dict = attrs.Factory(dict)
    streams: list = attrs.Factory(list)
    calls: list = attrs.Factory(list)
    down: bool = False
    slow_setup: bool = False
    setups: list = attrs.Factory(list)
    before_join: object = None
    next_id: int = 1
    _shown: dict = attrs.Factory(dict)
    app = Klein()

    def __attrs_post_init__(self):
        for name in ("zynq-1", "zynq-2"):
            self.boards[name] = {
                "name": name,
                "class": "zynq",
                "arch": "arm",
                "state": "reserved",
                "holder": "carol",
                "reserved_at": iso(NOW - 60),
                "expires_at": iso(NOW + 3600),
                "attrs": {},
            }

    # -- helpers ---------------------------------------------------------

    def _json(self, request, document, status=200):
        request.setResponseCode(status)
        request.setHeader("Content-Type", "application/json")
        return json.dumps(document)

    def _error(self, request, status, code, message):
        return self._json(
            request, {"error": {"code": code, "message": message}}, status
        )

    def _refuse(self, waiter, message):
        answer, waiter.answer = waiter.answer, None
        if answer is not None:
            answer.callback(self._error(answer.request, 409, "unavailable", message))

    def emit(self, user, kind, data):
        """Send an event to ``user``'s streams and the admin's."""
        text = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
        for owner, request in list(self.streams):
            if owner in (user, "root"):
                request.write(text)

    def _bus(self, kind, waiter, **fields):
        data = {
            "id": len(self.calls),
            "kind": kind,
            "board": None,
            "reservation": None,
            "waiter": waiter.id,
            "user": waiter.user,
            "holder": waiter.user,
            "detail": "",
            "time": iso(self.clock.seconds()),
        }
        data.update(fields)
        self.emit(waiter.user, kind, data)

    def _places(self, target):
        queue = [w for w in self.waiters if w.target == target]
        queue.sort(key=lambda w: (-w.priority, w.id))
        return queue

    def _positions(self, target):
        """Position notices to the waiters whose place changed."""
        queue = self._places(target)
        for position, waiter in enumerate(queue, 1):
            place = (position, position - 1, len(queue))
            if self._shown.get(waiter.id) == place:
                continue
            self._shown[waiter.id] = place
            self.emit(
                waiter.user,
                "position",
                dict(zip(("position", "ahead", "total"), place, strict=True))
                | {"waiter": waiter.id, "target": target},
            )

    def _leave(self, waiter, why):
        if waiter not in self.waiters:
            return
        self.waiters.remove(waiter)
        self.ended[waiter.id] = why
        for call in (waiter.timer, waiter.lease):
            if call is not None and call.active():
                call.cancel()
        self._bus("left", waiter, detail=why)
        self._positions(waiter.target)

    def add_waiter(self, user, target, priority=0):
        """A waiter whose client is someone else's (it never answers)."""
        waiter = self._join(user, target, priority)
        self._positions(target)
        return waiter

    def _join(self, user, target, priority):
        waiter = Waiter(
            self.next_id, user, target, priority, self.clock.seconds(), NOW + 10**6
        )
        self.next_id += 1
        self.waiters.append(waiter)
        why = f"no free board of class {target!r}"
        self._bus("queued", waiter, detail=f"waits for {target}: {why}")
        return waiter

    def release(self, name):
        """Free board ``name``: it goes to the first connected waiter of its class."""
        board = self.boards[name]
        board.update(state="free", holder=None, expires_at=None)
        queue = [w for w in self._places(board["class"]) if w.lease is None]
        if not queue:
            return
        waiter = queue[0]
        board.update(state="reserved", holder=waiter.user, expires_at=iso(NOW + 600))
        self.waiters.remove(waiter)
        self.ended[waiter.id] = "granted"
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        self._bus(
            "granted", waiter, board=name, reservation=9, detail=f"waiter {waiter.id}"
        )
        self._positions(board["class"])
        if waiter.answer is None:
            return
        answer, waiter.answer = waiter.answer, None
        if self.slow_setup:
            self.setups.append((answer, dict(board)))
        else:
            answer.callback(self._json(answer.request, dict(board)))

    def finish_setup(self):
        """Answer the reserves whose boards were handed over with ``slow_setup``."""
        setups, self.setups = self.setups, []
        for answer, board in setups:
            answer.callback(self._json(answer.request, board))

    def restart(self):
        """Drop every connection; waiters keep their places for ``LEASE``."""
        self.down = True
        self._shown.clear()
        for waiter in self.waiters:
            answer, waiter.answer = waiter.answer, None
            if answer is not None:
                answer.request.channel.transport.abortConnection()
                waiter.lease = self.clock.callLater(LEASE, self._leave, waiter, "gone")
        for _, request in self.streams:
            request.channel.transport.abortConnection()
        self.streams.clear()

    def up(self):
        """Accept connections again."""
        self.down = False

    # -- routes ----------------------------------------------------------

    def _user(self, request):
        header = request.getHeader("Authorization") or ""
        return self.tokens.get(header.removeprefix("Bearer "))

    def _record(self, request, path, body=None):
        user = self._user(request)
        self.calls.append((request.method.decode(), path, user, body))
        if self.down:
            request.channel.transport.abortConnection()
        return user

    @app.route("/api/v1/whoami", methods=["GET"])
    def whoami(self, request):
        """The token's user."""
        user = self._record(request, "whoami")
        if self.down:
            return defer.Deferred()
        return self._json(request, {"user": user, "admin": user == "root"})

    @app.route("/api/v1/events/stream", methods=["GET"])
    def stream(self, request):
        """The event stream of the caller."""
        user = self._record(request, "events/stream")
        if self.down:
            return defer.Deferred()
        request.setHeader("Content-Type", "text/event-stream; charset=utf-8")
        request.write(b": bitelab events\n\n")
        entry = (user, request)
        self.streams.append(entry)

        def gone(_):
            if entry in self.streams:
                self.streams.remove(entry)

        request.notifyFinish().addBoth(gone)
        return defer.Deferred()

    def close_streams(self):
        """End every event stream (the reserves go on)."""
        streams, self.streams = self.streams, []
        for _, request in streams:
            request.finish()

    @app.route("/api/v1/boards/<name>/reserve", methods=["POST"])
    def reserve(self, request, name):
        """A reserve that may wait."""
        body = json.loads(request.content.read() or b"{}")
        user = self._record(request, f"boards/{name}/reserve", body)
        if self.down:
            return defer.Deferred()
        wait, priority = body.get("wait", 0), body.get("priority")
        if not isinstance(wait, int) or not 0 <= wait <= MAX_WAIT:
            message = f"wait must be between 0 and {MAX_WAIT} seconds"
            return self._error(request, 400, "invalid", message)
        if priority is not None and user != "root":
            return self._error(
                request, 403, "forbidden", "only admins may set a priority"
            )
        free = [
            b
            for b in self.boards.values()
            if b["state"] == "free" and name in (b["name"], b["class"])
        ]
        if free and "waiter" not in body:
            free[0].update(state="reserved", holder=user, expires_at=iso(NOW + 600))
            return self._json(request, dict(free[0]))
        if not wait and "waiter" not in body:
            return self._error(request, 409, "unavailable", f"no {name} is free")
        if "waiter" in body:
            wid = body["waiter"]
            known = [w for w in self.waiters if w.id == wid and w.user == user]
            if not known and wid in self.ended:
                message = f"waiter {wid} is no longer waiting ({self.ended[wid]})"
                return self._error(request, 409, "unavailable", message)
            if not known:
                message = f"no waiter {wid} of yours"
                return self._error(request, 404, "not_found", message)
            waiter = known[0]
            if waiter.lease is not None:
                waiter.lease.cancel()
                waiter.lease = None
        else:
            if self.before_join is not None:
                self.before_join()
            waiter = self._join(user, name, priority or 0)
        waiter.timer = self.clock.callLater(wait, self._timed_out, waiter, wait)
        answer = defer.Deferred()
        answer.request = request
        waiter.answer = answer
        self._positions(name)

        def gone(failure):
            if waiter.answer is answer:
                waiter.answer = None
                self._leave(waiter, "gone")

        request.notifyFinish().addErrback(gone)
        return answer

    def _timed_out(self, waiter, wait):
        message = f"no board for {waiter.target} became free: waited {wait} s"
        self._refuse(waiter, message)
        self._leave(waiter, "timed_out")

    @app.route("/api/v1/boards/<name>/release", methods=["POST"])
    def release_route(self, request, name):
        """A holder releases a board."""
        user = self._record(request, f"boards/{name}/release")
        if self.boards[name]["holder"] != user:
            return self._error(request, 403, "forbidden", f"you do not hold {name}")
        self.release(name)
        return self._json(request, dict(self.boards[name]))

    @app.route("/api/v1/queue", methods=["GET"])
    def queue(self, request):
        """The queue: the caller's waiters, and the total."""
        user = self._record(request, "queue")
        entries = []
        for target in sorted({w.target for w in self.waiters}):
            for position, waiter in enumerate(self._places(target), 1):
                if waiter.user == user:
                    entries.append(
                        {
                            "id": waiter.id,
                            "user": waiter.user,
                            "target": target,
                            "priority": waiter.priority,
                            "since": iso(waiter.since),
                            "position": position,
                            "ahead": position - 1,
                            "deadline": iso(waiter.deadline),
                        }
                    )
        return self._json(request, {"queue": entries, "total": len(self.waiters)})

    @app.route("/api/v1/queue/<wid>", methods=["DELETE"])
    def cancel(self, request, wid):
        """Cancel a waiter of the caller's."""
        user = self._record(request, f"queue/{wid}")
        if self.down:
            return defer.Deferred()
        if self.ended.get(int(wid)) == "granted":
            message = f"waiter {wid} was handed a board already"
            return self._error(request, 409, "unavailable", message)
        known = [w for w in self.waiters if str(w.id) == wid and w.user == user]
        if not known:
            return self._error(request, 404, "not_found", f"no waiter {wid}")
        self._refuse(known[0], f"the wait was cancelled by {user}")
        self._leave(known[0], "cancelled")
        return self._json(request, {"id": known[0].id, "state": "cancelled"})


class FakeTTY(io.StringIO):
    """Standard error at a terminal: status lines are rewritten in place."""

    def isatty(self):
        """Yes, a terminal."""
        return True


@attrs.define
class Command:
    """One ``bitelab`` command running in-process against the stand-in."""

    lab: QueueStandIn
    stub: StubTreq
    done: defer.Deferred
    out: io.StringIO
    err: io.StringIO
    interrupted: defer.Deferred

    def pump(self, seconds=0.0):
        """Move the clock on by ``seconds`` and deliver what is in flight."""
        for _ in range(5):
            self.stub.flush()
        if seconds:
            self.lab.clock.advance(seconds)
            for _ in range(5):
                self.stub.flush()

    def status(self):
        """The exit status (the command must have finished)."""
        assert self.done.called, "the command has not finished"
        return self.done.result

    def calls(self, method=None):
        """The stand-in's record of this command's calls."""
        return [c for c in self.lab.calls if method is None or c[0] == method]


def start(lab, argv, token="tok-bob", err=None):
    """Start ``bitelab ARGV`` against ``lab``; a ``Command`` to drive it."""
    args = cli.parse_arguments(argv)
    settings = Settings(url="http://lab.test", token=token)
    stub = StubTreq(lab.app.resource())
    api = LabAPI(stub, settings.url, token, lab.clock, args.http_timeout)
    out, err = io.StringIO(), err if err is not None else io.StringIO()
    interrupted = defer.Deferred()
    done = defer.Deferred.fromCoroutine(
        cli.dispatch(
            api,
            args,
            settings,
            out,
            err,
            {"HOME": "/nonexistent"},
            Moment(NOW, UTC),
            interrupted,
        )
    )
    command = Command(lab, stub, done, out, err, interrupted)
    command.pump()
    return command


@pytest.fixture(name="lab")
def standin():
    """The stand-in on a clock at ``NOW``, both zynq boards held by carol."""
    clock = task.Clock()
    clock.advance(NOW)
    return QueueStandIn(clock)


# --- reserve --wait ----------------------------------------------------------


def test_waits_then_gets_the_board_a_release_frees(lab):
    """The stream is opened before the waiting reserve, the position shows
    from the stream, and the board comes when carol releases one: nothing
    polls in between."""
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    assert [c[:2] for c in lab.calls] == [
        ("GET", "whoami"),
        ("GET", "events/stream"),
        ("POST", "boards/zynq/reserve"),
    ]
    assert lab.calls[2][3] == {"wait": 3600}
    assert not command.done.called
    assert command.err.getvalue().splitlines() == [
        "waiting for zynq: queued",
        "waiting for zynq: position 1 (0 ahead)",
    ]
    command.pump(600)
    assert not command.done.called
    lab.release("zynq-2")
    command.pump()
    assert command.status() == 0
    assert command.out.getvalue().startswith("reserved zynq-2 (class zynq)")
    assert len(lab.calls) == 3
    assert lab.streams == []


def test_position_follows_the_queue(lab):
    """Behind two waiters, the status goes 3 → 2 → 1 as boards are handed out;
    at a terminal the line is rewritten in place and cleared at the end."""
    lab.add_waiter("alice", "zynq")
    lab.add_waiter("carol", "zynq")
    tty = FakeTTY()
    command = start(lab, ["reserve", "zynq", "--wait", "2h"], err=tty)
    assert tty.getvalue().endswith("\r\x1b[Kwaiting for zynq: position 3 (2 ahead)")
    lab.release("zynq-1")
    command.pump()
    assert tty.getvalue().endswith("\r\x1b[Kwaiting for zynq: position 2 (1 ahead)")
    lab.boards["zynq-1"]["holder"] = "carol"
    lab.release("zynq-1")
    command.pump()
    assert tty.getvalue().endswith("position 1 (0 ahead)")
    lab.release("zynq-2")
    command.pump()
    assert command.status() == 0
    assert tty.getvalue().endswith("\r\x1b[K")
    assert "reserved zynq-2" in command.out.getvalue()


def test_other_waits_are_not_taken_for_this_one(lab):
    """Waits queued before this one (the same user's, for the same class) and,
    for an admin who sees every event, other users' waits queued meanwhile,
    are not taken for this one."""
    lab.add_waiter("bob", "zynq")
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    assert command.err.getvalue().splitlines()[-1] == (
        "waiting for zynq: position 2 (1 ahead)"
    )
    lab.add_waiter("alice", "zynq")
    root = start(lab, ["reserve", "--wait=1h", "zynq"], token="tok-root")
    lab.add_waiter("carol", "zynq")
    root.pump()
    assert root.err.getvalue().splitlines()[-1] == (
        "waiting for zynq: position 4 (3 ahead)"
    )
    assert "position 5" not in root.err.getvalue()


def test_simultaneous_waits_of_one_user_are_told_apart_or_not_guessed(lab):
    """When another wait of the same user for the same class joins in the
    same step, the client cannot know which place is its own: it shows no
    position, and Ctrl-C just closes the request (taking its place out)
    instead of cancelling a place that may be the other's."""
    lab.before_join = lambda: lab._join("bob", "zynq", 0)
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    assert command.err.getvalue().splitlines() == [
        "waiting for zynq: queued",
        "waiting for zynq",
    ]
    twin, mine = lab.waiters
    command.interrupted.callback(None)
    command.pump()
    assert command.status() == cli.EXIT_INTERRUPTED
    assert command.calls("DELETE") == []
    assert lab.waiters == [twin]
    assert lab.ended[mine.id] == "gone"
    assert command.err.getvalue().splitlines()[-1] == (
        "bitelab: stopped waiting for zynq"
    )


def test_a_wait_served_first_at_the_same_moment_is_not_taken_for_ours(lab):
    """Another wait of the same user that the lab takes in (and places) just
    before ours, our request being out already, is not mistaken for ours."""
    lab.before_join = lambda: lab.add_waiter("bob", "zynq")
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    assert command.err.getvalue().splitlines()[-1] == "waiting for zynq"
    command.interrupted.callback(None)
    command.pump()
    assert command.status() == cli.EXIT_INTERRUPTED
    assert command.calls("DELETE") == []
    assert [w.user for w in lab.waiters] == ["bob"]


def test_a_later_wait_of_the_same_user_leaves_ours_known(lab):
    """A wait of the same user for the same class that joins later is another's:
    ours keeps its position, and Ctrl-C cancels ours only."""
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    mine = lab.waiters[0]
    command.pump(5)
    later = lab.add_waiter("bob", "zynq")
    command.pump()
    assert command.err.getvalue().splitlines()[-1] == (
        "waiting for zynq: position 1 (0 ahead)"
    )
    command.interrupted.callback(None)
    command.pump()
    assert command.calls("DELETE") == [("DELETE", f"queue/{mine.id}", "bob", None)]
    assert lab.waiters == [later]


def test_wait_runs_out_with_the_servers_message(lab):
    """A wait that runs out ends with the server's 409 message and exit 1."""
    command = start(lab, ["reserve", "--wait=90", "zynq"])
    command.pump(89)
    assert not command.done.called
    command.pump(1)
    assert command.status() == 1
    assert command.err.getvalue().splitlines()[-1] == (
        "bitelab: no board for zynq became free: waited 90 s (unavailable)"
    )
    assert lab.waiters == []


def test_json_prints_the_board_or_the_refusal(lab):
    """With --json the answer is the board's document (or the API's error)."""
    command = start(lab, ["--json", "reserve", "--wait=1m", "zynq"])
    command.pump(60)
    assert command.status() == 1
    assert json.loads(command.out.getvalue())["error"]["code"] == "unavailable"
    command = start(lab, ["reserve", "--json", "--wait=1m", "zynq"])
    lab.release("zynq-1")
    command.pump()
    assert command.status() == 0
    assert json.loads(command.out.getvalue())["name"] == "zynq-1"


def test_ctrl_c_leaves_the_queue(lab):
    """Ctrl-C cancels the place with DELETE /queue/ID before the command ends
    (status 130, the shell's for SIGINT)."""
    lab.add_waiter("alice", "zynq")
    command = start(lab, ["reserve", "--wait", "zynq"])
    mine = lab.waiters[1].id
    command.interrupted.callback(None)
    command.pump()
    assert command.status() == cli.EXIT_INTERRUPTED
    assert command.calls("DELETE") == [("DELETE", f"queue/{mine}", "bob", None)]
    assert [w.user for w in lab.waiters] == ["alice"]
    assert lab.ended[mine] == "cancelled"
    assert command.err.getvalue().splitlines()[-1] == (
        f"bitelab: stopped waiting for zynq; waiter {mine} left the queue"
    )
    assert command.out.getvalue() == ""


def test_ctrl_c_as_the_board_is_handed_over_gives_it_back(lab):
    """A board handed over at the moment of Ctrl-C (its setup still running)
    is released once its answer comes, not left to nobody."""
    lab.slow_setup = True
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    lab.release("zynq-1")
    command.pump()
    assert "zynq-1 handed over; setting it up" in command.err.getvalue()
    command.interrupted.callback(None)
    command.pump()
    assert not command.done.called
    lab.finish_setup()
    command.pump()
    assert command.status() == cli.EXIT_INTERRUPTED
    assert ("POST", "boards/zynq-1/release", "bob", None) in lab.calls
    assert lab.boards["zynq-1"]["state"] == "free"
    assert "zynq-1, handed over at that moment, was released" in command.err.getvalue()


def test_lab_unreachable_at_the_start_is_exit_3(lab):
    """A lab that cannot be reached at the start is exit 3, without retries."""
    lab.down = True
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    assert command.status() == cli.EXIT_UNREACHABLE
    assert len(lab.calls) == 1
    assert "the connection closed before an answer" in command.err.getvalue()


def test_restart_mid_wait_keeps_the_place(lab):
    """The server restarts: the client reaches for it with back-off, then sends
    the reserve again with its waiter and the time left, and keeps its place."""
    lab.add_waiter("alice", "zynq")
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    mine = lab.waiters[1].id
    command.pump(100)
    lab.restart()
    command.pump()
    notes = [line for line in command.err.getvalue().splitlines() if "again" in line]
    assert notes[-1].endswith(f"trying again in {BACKOFF_FIRST:g}s")
    command.pump(BACKOFF_FIRST)
    command.pump(2 * BACKOFF_FIRST)
    assert "trying again in 1s" in command.err.getvalue()
    lab.add_waiter("carol", "zynq")  # arrives while bob's client is away
    lab.up()
    command.pump(1)
    resent = command.calls("POST")[-1]
    assert resent[3] == {"wait": int(3600 - 100 - 1.75), "waiter": mine}
    assert command.err.getvalue().splitlines()[-2:] == [
        "bitelab: reached the lab again",
        "waiting for zynq: position 2 (1 ahead)",
    ]
    lab.release("zynq-1")
    lab.release("zynq-2")
    command.pump()
    assert command.status() == 0
    assert "reserved zynq-2" in command.out.getvalue()
    assert [w.user for w in lab.waiters] == ["carol"]


def test_place_lost_after_the_lease_queues_again(lab):
    """Back after the lease ran out, the server no longer keeps the waiter:
    the client says so and queues again, at the end."""
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    lab.restart()
    command.pump()
    for _ in range(12):
        command.pump(4)
    lab.up()
    command.pump(4)
    assert (
        "bitelab: waiter 1 is no longer waiting (gone); queueing again"
        in command.err.getvalue()
    )
    assert command.calls("POST")[-1][3] == {"wait": 3600 - 52}
    assert [w.user for w in lab.waiters] == ["bob"]
    lab.release("zynq-1")
    command.pump()
    assert command.status() == 0


def test_restart_with_an_uncertain_place_queues_again(lab):
    """After a restart, a wait that could not tell its place from another's
    queues again rather than take up a place that may be the other's."""
    lab.before_join = lambda: lab._join("bob", "zynq", 0)
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    lab.before_join = None
    lab.restart()
    lab.up()
    command.pump(BACKOFF_FIRST)
    assert "waiter" not in command.calls("POST")[-1][3]
    assert "cannot be told apart from another wait of yours" in command.err.getvalue()


def test_stream_cut_alone_is_followed_again(lab):
    """If only the event stream ends, it is opened again and the position
    keeps showing, while the reserve goes on waiting."""
    lab.add_waiter("alice", "zynq")
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    lab.close_streams()
    command.pump(BACKOFF_FIRST)
    assert [c[1] for c in lab.calls].count("events/stream") == 2
    assert len(command.calls("POST")) == 1
    lab.release("zynq-1")
    command.pump()
    assert command.err.getvalue().splitlines()[-1] == (
        "waiting for zynq: position 1 (0 ahead)"
    )


def test_wait_without_a_value_is_the_labs_longest(lab):
    """``--wait`` without a value asks for a week; a lab that allows less says
    how long it allows, and the client waits that long."""
    command = start(lab, ["reserve", "--wait", "zynq"])
    assert [c[3]["wait"] for c in command.calls("POST")] == [7 * 24 * 3600, MAX_WAIT]
    command.pump(MAX_WAIT)
    assert command.status() == 1
    assert f"waited {MAX_WAIT} s" in command.err.getvalue()


@pytest.mark.parametrize(
    "argv, board, wait",
    [
        (["reserve", "--wait", "zynq"], "zynq", cli.WAIT_LONGEST),
        (["reserve", "zynq", "--wait"], "zynq", cli.WAIT_LONGEST),
        (["reserve", "--wait", "2h", "zynq"], "zynq", 7200),
        (["reserve", "--wait=90", "zynq"], "zynq", 90),
        (["reserve", "-t", "1h", "--wait", "zynq"], "zynq", cli.WAIT_LONGEST),
        (["reserve", "zynq"], "zynq", None),
    ],
)
def test_wait_option_forms(argv, board, wait):
    """``--wait`` takes an optional duration, before or after the board."""
    args = cli.parse_arguments(argv)
    assert (args.board, args.wait) == (board, wait)


@pytest.mark.parametrize(
    "argv, text",
    [
        (["reserve", "--wait=soon", "zynq"], "not a duration"),
        (["reserve", "--wait"], "needs the BOARD or CLASS"),
        (["reserve", "--priority", "3", "zynq"], "goes with --wait"),
        (["queue", "--cancel"], "expected one argument"),
        (["queue", "--cancel", "7; rm"], "not a waiter id"),
    ],
)
def test_bad_wait_usage_exits_2(argv, text, capsys):
    """Bad ``--wait`` and ``--priority`` usage is one line and exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_arguments(argv)
    assert exit_info.value.code == 2
    assert text in capsys.readouterr().err.splitlines()[-1]


def test_priority_is_sent(lab):
    """``--priority`` goes with the waiting reserve; only admins may use it."""
    command = start(lab, ["reserve", "--wait=1h", "--priority", "5", "zynq"])
    assert command.status() == 1
    assert "only admins may set a priority" in command.err.getvalue()
    lab.add_waiter("alice", "zynq")
    start(lab, ["reserve", "--wait=1h", "--priority", "5", "zynq"], token="tok-root")
    assert lab.calls[-1][3] == {"wait": 3600, "priority": 5}
    assert [w.user for w in lab._places("zynq")] == ["root", "alice"]


# --- queue -------------------------------------------------------------------


def test_queue_cancel_and_refusal(lab):
    """``queue --cancel ID`` takes a waiter out; someone else's is refused."""
    mine = lab.add_waiter("bob", "zynq")
    theirs = lab.add_waiter("alice", "zynq")
    command = start(lab, ["queue", "--cancel", str(mine.id)])
    assert command.status() == 0
    assert command.out.getvalue() == f"waiter {mine.id} cancelled\n"
    command = start(lab, ["queue", "--cancel", str(theirs.id)])
    assert command.status() == 1
    assert lab.waiters == [theirs]


def test_queue_table():
    """The table shows position, id, user, target, priority, since and
    deadline; the others' waiters are counted under it."""
    document = {
        "queue": [
            {
                "id": 4,
                "user": "bob",
                "target": "zynq",
                "priority": 0,
                "since": iso(NOW - 125),
                "position": 2,
                "ahead": 1,
                "deadline": iso(NOW + 3600),
            }
        ],
        "total": 3,
    }
    lines = render_queue(document, Moment(NOW)).splitlines()
    assert lines[0].split() == [
        "POSITION", "ID", "USER", "TARGET", "PRIORITY", "SINCE", "DEADLINE",
    ]  # fmt: skip
    assert lines[1].split() == [
        "2",
        "4",
        "bob",
        "zynq",
        "0",
        "2m",
        "ago",
        "in",
        "1h00m",
    ]
    assert lines[2] == "3 waiting in all"
    assert render_queue({"queue": [], "total": 2}, Moment(NOW)) == (
        "none of yours; 2 waiting in all\n"
    )
    assert render_queue({"queue": [], "total": 0}, Moment(NOW)) == "nobody is waiting\n"


# --- watch -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, data, text",
    [
        (
            "freed",
            {"kind": "freed", "board": "zynq-1", "reservation": 7, "user": "root",
             "holder": "bob", "detail": "forced", "time": "2027-01-15T08:00:05Z",
             "id": 3},
            (
                "2027-01-15 08:00:05 UTC  freed        zynq-1, holder bob, by root, "
                "reservation 7: forced"
            ),
        ),
        (
            "position",
            {"waiter": 4, "target": "zynq", "position": 2, "ahead": 1, "total": 5},
            (
                "2027-01-15 08:00:00 UTC  position     waiter 4 for zynq: position 2 "
                "(1 ahead, 5 waiting)"
            ),
        ),
        (
            "granted",
            {"waiter": 4, "board": "zynq-2", "reservation": 8},
            (
                "2027-01-15 08:00:00 UTC  granted      waiter 4 gets zynq-2 "
                "(reservation 8)"
            ),
        ),
        (
            "left",
            {"waiter": 4, "why": "timed_out"},
            "2027-01-15 08:00:00 UTC  left         waiter 4 left the queue: timed_out",
        ),
        (
            "expiring",
            {"board": "zynq-2", "reservation": 8, "expires_at": "2027-01-15T08:10:00Z",
             "seconds_left": 600},
            (
                "2027-01-15 08:00:00 UTC  expiring     zynq-2: reservation 8 ends in 10m "
                "(at 2027-01-15 08:10:00 UTC)"
            ),
        ),
    ],
    ids=["lifecycle", "position", "granted", "left", "expiring"],
)  # fmt: skip
def test_watch_lines(kind, data, text):
    """Each kind of event is one line: its time (or now), kind and words."""
    assert render_event(kind, data, Moment(NOW, UTC)) == text + "\n"


def sse_server(batches):
    """A loopback HTTP server answering each connection with the next batch
    of event-stream text, then closing; ``(port, stop)``."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stopping = threading.Event()
    served = []

    def run():
        while not stopping.is_set() and len(served) < len(batches):
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                read_request(conn)
                body = batches[len(served)]
                served.append(body)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Connection: close\r\n\r\n" + body
                )
        stopping.wait(30)
        sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stop():
        stopping.set()
        thread.join(5)

    return sock.getsockname()[1], stop


def watch(port, *argv, timeout=20):
    """Start ``bitelab ARGV watch`` against the server on ``port``."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, "LANG": "C.UTF-8"}
    env.update(BITELAB_URL=f"http://127.0.0.1:{port}", BITELAB_AUTH="t", TZ="UTC")
    return subprocess.Popen(
        [BITELAB, *argv, "watch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_watch_prints_events_and_follows_a_lost_stream():
    """``watch`` prints one line an event, and when the stream ends, says so
    and follows it again."""
    first = (
        b": keep-alive\n\n"
        b'event: queued\ndata: {"waiter": 1, "target": "zynq", "position": 1, '
        b'"ahead": 0, "total": 1}\n\n'
    )
    second = b'event: left\ndata: {"waiter": 1, "why": "cancelled"}\n\n'
    port, stop = sse_server([first, second])
    proc = watch(port, "--utc")
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=20)
        stop()
    assert lines[0].endswith(
        "UTC  queued       waiter 1 for zynq: position 1 (0 ahead, 1 waiting)\n"
    )
    assert lines[1].endswith("UTC  left         waiter 1 left the queue: cancelled\n")
    assert err.splitlines()[:2] == [
        "bitelab: the server ended the event stream; following it again in 0.5s",
        "bitelab: following the event stream again",
    ]


def test_watch_json_is_one_object_a_line():
    """``watch --json``: each event as one JSON object with its kind."""
    batch = (
        b'event: granted\ndata: {"waiter": 2, "board": "zynq-1", "reservation": 5}\n\n'
        b"event: note\ndata: not json\n\n"
    )
    port, stop = sse_server([batch])
    proc = watch(port, "--json")
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
    finally:
        proc.kill()
        proc.communicate(timeout=20)
        stop()
    assert [json.loads(line) for line in lines] == [
        {"kind": "granted", "waiter": 2, "board": "zynq-1", "reservation": 5},
        {"kind": "note", "data": "not json"},
    ]


def test_watch_unreachable_at_the_start_exits_3():
    """A lab that cannot be reached at all is exit 3 at once, not a retry loop."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = watch(port)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 3
    assert err.splitlines() == [
        f"bitelab: http://127.0.0.1:{port}: connection refused "
        + "(is the server running?)"
    ]
