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
    """A stand-in for the server's waiting queue, following the API contract.

    Boards ``zynq-1`` and ``zynq-2`` (class ``zynq``) start held by carol.
    Every call is recorded in ``calls`` as ``(method, path, user, body)``.
    ``restart()`` drops every connection as a restarting server would and
    refuses connections until ``up()``; waiters keep their place for
    ``LEASE`` seconds unless their client sends its reserve again with
    ``waiter``.  With ``slow_setup`` a board handed over is answered only
    at ``finish_setup()``, as a setup script that takes its time.
    """

    clock: task.Clock
    tokens: dict = attrs.Factory(
        lambda: {"tok-alice": "alice", "tok-bob": "bob", "tok-carol": "carol"}
    )
    boards: dict = attrs.Factory(dict)
    waiters: list = attrs.Factory(list)
    streams: list = attrs.Factory(list)
    calls: list = attrs.Factory(list)
    down: bool = False
    #: send no events at all
    quiet: bool = False
    slow_setup: bool = False
    setups: list = attrs.Factory(list)
    next_id: int = 1
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
            request = answer.request
            answer.callback(self._error(request, 409, "unavailable", message))

    def emit(self, user, kind, data):
        """Send an event to ``user``'s streams."""
        if self.quiet:
            return
        text = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
        for owner, request in list(self.streams):
            if owner == user:
                request.write(text)

    def _places(self, target):
        queue = [w for w in self.waiters if w.target == target]
        queue.sort(key=lambda w: (-w.priority, w.since, w.id))
        return queue

    def _announce(self, target, kind="position", only=None):
        queue = self._places(target)
        for position, waiter in enumerate(queue, 1):
            if only is not None and waiter is not only:
                continue
            self.emit(
                waiter.user,
                kind,
                {
                    "waiter": waiter.id,
                    "target": target,
                    "position": position,
                    "ahead": position - 1,
                    "total": len(queue),
                },
            )

    def _leave(self, waiter, why):
        if waiter not in self.waiters:
            return
        self.waiters.remove(waiter)
        for call in (waiter.timer, waiter.lease):
            if call is not None and call.active():
                call.cancel()
        self.emit(waiter.user, "left", {"waiter": waiter.id, "why": why})
        self._announce(waiter.target)

    def add_waiter(self, user, target, priority=0):
        """A waiter whose client is someone else's (it never answers)."""
        waiter = Waiter(
            self.next_id, user, target, priority, self.clock.seconds(), NOW + 10**6
        )
        self.next_id += 1
        self.waiters.append(waiter)
        self._announce(target, "queued", only=waiter)
        return waiter

    def release(self, name):
        """Free board ``name``: it goes to the first waiter of its class."""
        board = self.boards[name]
        board.update(state="free", holder=None, expires_at=None)
        queue = [
            w
            for w in self._places(board["class"])
            if w.answer is not None or w.lease is None
        ]
        if not queue:
            return
        waiter = queue[0]
        board.update(state="reserved", holder=waiter.user, expires_at=iso(NOW + 600))
        self.waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        self.emit(
            waiter.user,
            "granted",
            {"waiter": waiter.id, "board": name, "reservation": 9},
        )
        self._announce(board["class"])
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
        for waiter in self.waiters:
            answer, waiter.answer = waiter.answer, None
            if answer is not None:
                answer.request.channel.transport.abortConnection()
                self._lease(waiter)
        for _, request in self.streams:
            request.channel.transport.abortConnection()
        self.streams.clear()

    def _lease(self, waiter):
        if waiter.lease is not None and waiter.lease.active():
            waiter.lease.cancel()
        waiter.lease = self.clock.callLater(LEASE, self._leave, waiter, "gone")

    def up(self):
        """Accept connections again."""
        self.down = False

    # -- routes ----------------------------------------------------------

    def _user(self, request):
        header = request.getHeader("Authorization") or ""
        return self.tokens.get(header.removeprefix("Bearer "))

    def _refuse_connection(self, request):
        request.channel.transport.abortConnection()
        return defer.Deferred()

    @app.route("/api/v1/info", methods=["GET"])
    def info(self, request):
        """Server facts."""
        return self._json(request, {"name": "standin", "max_wait": MAX_WAIT})

    @app.route("/api/v1/events/stream", methods=["GET"])
    def stream(self, request):
        """The event stream of the caller."""
        user = self._user(request)
        self.calls.append(("GET", "events/stream", user, None))
        if self.down:
            return self._refuse_connection(request)
        if user is None:
            return self._error(request, 401, "unauthorized", "bad token")
        request.setHeader("Content-Type", "text/event-stream")
        request.write(b": hello\n\n")
        entry = (user, request)
        self.streams.append(entry)
        done = defer.Deferred()

        def gone(_):
            if entry in self.streams:
                self.streams.remove(entry)

        request.notifyFinish().addBoth(gone)
        return done

    def close_streams(self):
        """End every event stream (the reserves go on)."""
        streams, self.streams = self.streams, []
        for _, request in streams:
            request.finish()

    @app.route("/api/v1/boards/<name>/reserve", methods=["POST"])
    def reserve(self, request, name):
        """A reserve that may wait."""
        user = self._user(request)
        body = json.loads(request.content.read() or b"{}")
        self.calls.append(("POST", f"boards/{name}/reserve", user, body))
        if self.down:
            return self._refuse_connection(request)
        free = [
            b
            for b in self.boards.values()
            if b["state"] == "free" and name in (b["name"], b["class"])
        ]
        if free:
            free[0].update(state="reserved", holder=user, expires_at=iso(NOW + 600))
            return self._json(request, dict(free[0]))
        wait = body.get("wait", 0)
        if not wait:
            return self._error(request, 409, "unavailable", f"no {name} is free")
        if "waiter" in body:
            known = [w for w in self.waiters if w.id == body["waiter"]]
            if not known:
                message = f"no waiter {body['waiter']} in the queue"
                return self._error(request, 404, "not_found", message)
            waiter = known[0]
            waiter.lease.cancel()
            waiter.lease = None
            self._announce(name, "queued", only=waiter)
        else:
            waiter = self.add_waiter(user, name, body.get("priority", 0))
        waiter.timer = self.clock.callLater(
            wait, self._timed_out, waiter, self.clock.seconds(), wait
        )
        answer = defer.Deferred()
        answer.request = request
        waiter.answer = answer

        def gone(failure):
            if waiter.answer is answer:
                waiter.answer = None
                self._leave(waiter, "gone")

        request.notifyFinish().addErrback(gone)
        return answer

    def _timed_out(self, waiter, started, wait):
        self._refuse(waiter, f"no {waiter.target} was free after waiting {wait:g}s")
        self._leave(waiter, "timed_out")

    @app.route("/api/v1/boards/<name>/release", methods=["POST"])
    def release_route(self, request, name):
        """A holder releases a board."""
        user = self._user(request)
        self.calls.append(("POST", f"boards/{name}/release", user, None))
        if self.boards[name]["holder"] != user:
            return self._error(request, 403, "forbidden", f"you do not hold {name}")
        self.release(name)
        return self._json(request, dict(self.boards[name]))

    @app.route("/api/v1/queue", methods=["GET"])
    def queue(self, request):
        """The queue: the caller's waiters, and the total."""
        user = self._user(request)
        self.calls.append(("GET", "queue", user, None))
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
        user = self._user(request)
        self.calls.append(("DELETE", f"queue/{wid}", user, None))
        if self.down:
            return self._refuse_connection(request)
        known = [w for w in self.waiters if str(w.id) == wid and w.user == user]
        if not known:
            return self._error(request, 404, "not_found", f"no waiter {wid} of yours")
        self._refuse(known[0], "the wait was cancelled")
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
        ("GET", "events/stream"),
        ("POST", "boards/zynq/reserve"),
    ]
    assert lab.calls[1][3]["wait"] == 3600
    assert not command.done.called
    assert command.err.getvalue() == "waiting for zynq: position 1 (0 ahead)\n"
    command.pump(600)
    assert not command.done.called
    lab.release("zynq-2")
    command.pump()
    assert command.status() == 0
    assert command.out.getvalue().startswith("reserved zynq-2 (class zynq)")
    assert len(lab.calls) == 2
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


def test_other_waiters_of_the_same_user_are_not_ours(lab):
    """A wait of the same user that was queued before this one is not taken
    for this one: its position events do not show."""
    earlier = lab.add_waiter("bob", "zynq")
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    lab._announce("zynq")
    command.pump()
    assert "position 1" not in command.err.getvalue()
    assert command.err.getvalue().splitlines()[-1] == (
        "waiting for zynq: position 2 (1 ahead)"
    )
    assert earlier.id != lab.waiters[1].id


def test_wait_runs_out_with_the_servers_message(lab):
    """A wait that runs out ends with the server's 409 message and exit 1."""
    command = start(lab, ["reserve", "--wait=90", "zynq"])
    command.pump(89)
    assert not command.done.called
    command.pump(1)
    assert command.status() == 1
    assert command.err.getvalue().splitlines()[-1] == (
        "bitelab: no zynq was free after waiting 90s (unavailable)"
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
    assert ("DELETE", f"queue/{mine}", "bob", None) in lab.calls
    assert [w.user for w in lab.waiters] == ["alice"]
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


def test_ctrl_c_before_the_place_is_known_closes_the_request(lab):
    """Ctrl-C before the stream named the place: the request's connection is
    closed, which takes the waiter out."""
    lab.down = True
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    assert command.status() == cli.EXIT_UNREACHABLE
    lab.down = False
    lab.quiet = True
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    command.interrupted.callback(None)
    command.pump()
    assert command.status() == cli.EXIT_INTERRUPTED
    assert lab.waiters == []
    assert command.calls("DELETE") == []


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
    assert resent[3]["waiter"] == mine
    assert resent[3]["wait"] == pytest.approx(3600 - 100 - 1.75)
    assert command.err.getvalue().splitlines()[-1] == (
        "waiting for zynq: position 2 (1 ahead)"
    )
    lab.release("zynq-1")
    lab.release("zynq-2")
    command.pump()
    assert command.status() == 0
    assert "reserved zynq-2" in command.out.getvalue()
    assert [w.user for w in lab.waiters] == ["carol"]


def test_place_lost_after_the_lease_queues_again(lab):
    """Back after the lease ran out, the server no longer knows the waiter:
    the client says so and queues again, at the end."""
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    lab.restart()
    command.pump()
    for _ in range(12):
        command.pump(4)
    lab.up()
    command.pump(4)
    text = command.err.getvalue()
    assert "no waiter 1 in the queue; queueing again" in text
    assert command.calls("POST")[-1][3].get("waiter") is None
    assert [w.user for w in lab.waiters] == ["bob"]
    lab.release("zynq-1")
    command.pump()
    assert command.status() == 0


def test_stream_cut_alone_is_followed_again(lab):
    """If only the event stream ends, it is opened again and the position
    keeps showing, while the reserve goes on waiting."""
    lab.add_waiter("alice", "zynq")
    command = start(lab, ["reserve", "--wait=1h", "zynq"])
    lab.close_streams()
    command.pump(BACKOFF_FIRST)
    assert len(command.calls("GET")) == 2
    assert len(command.calls("POST")) == 1
    lab.release("zynq-1")
    command.pump()
    assert command.err.getvalue().splitlines()[-1] == (
        "waiting for zynq: position 1 (0 ahead)"
    )


def test_wait_without_a_value_is_the_labs_longest(lab):
    """``--wait`` before the class name takes no value: the lab's longest wait."""
    command = start(lab, ["reserve", "--wait", "zynq"])
    assert command.calls("POST")[0][3]["wait"] == MAX_WAIT


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
    ],
)
def test_bad_wait_usage_exits_2(argv, text, capsys):
    """Bad ``--wait`` and ``--priority`` usage is one line and exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_arguments(argv)
    assert exit_info.value.code == 2
    assert text in capsys.readouterr().err.splitlines()[-1]


def test_priority_is_sent(lab):
    """``--priority`` goes with the waiting reserve."""
    start(lab, ["reserve", "--wait=1h", "--priority", "5", "zynq"])
    assert lab.calls[-1][3]["priority"] == 5
    assert lab.waiters[0].priority == 5


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
