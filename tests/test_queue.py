"""The waiting queue in-process: hand-over in the freeing step, order, leaving,
restarts, limits and expiry notices (``support.inlab``, a ``task.Clock``)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from bitelab.errors import Unavailable
from support.inlab import InLab

#: five plain boards (nothing to set up) and one with a setup script and a
#: console, in two classes; class c allows two boards per user
BOARDS = """
setup_script = /bin/true;
classes { c { arch = x; user_limit = 2; } s { arch = y; } }
boards [
    { name = c1; brdclass = c; }, { name = c2; brdclass = c; },
    { name = c3; brdclass = c; }, { name = c4; brdclass = c; },
    { name = c5; brdclass = c; },
    { name = s1; brdclass = s; options = [ { cls = serialconsole, val = /dev/ttyQ1 } ] },
]
"""


class Waiter:
    """One reserve call in flight: its result, its error, and its client."""

    def __init__(self, lab, user, target, wait=600, priority=None, waiter=None):
        self.user = user
        self.gone = defer.Deferred()
        self.result = self.error = None
        d = lab.manager.reserve(
            user, target, wait=wait, priority=priority, waiter=waiter, gone=self.gone
        )
        d.addCallbacks(self._ok, self._failed)
        lab.flush()

    def _ok(self, board):
        self.result = board

    def _failed(self, failure):
        self.error = failure.value

    def leave(self):
        self.gone.callback(None)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request):
    """None (a SQLite file) or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_server").database()


@pytest.fixture
def lab(tmp_path, database):
    """An in-process lab with the queue's boards."""
    made = InLab(tmp_path, BOARDS, database=database)
    # the plain boards need nothing; answer the setup of s1 whenever asked
    yield made
    made.close()


def settle(lab):
    while lab.calls.pending:
        lab.complete(0)


def release(lab, user, name):
    lab.request("POST", f"/boards/{name}/release", user)
    settle(lab)


def fill(lab, user, names):
    for name in names:
        response = lab.request("POST", f"/boards/{name}/reserve", user)
        settle(lab)
        assert response.status == 200, response.body


def test_freed_board_goes_to_the_first_waiter_in_the_same_step(lab):
    """A waiter holds a place; the board released is handed to it in the
    transaction that frees it, so a client reserving right after finds none."""
    fill(lab, "alice", ["c1", "c2"])
    fill(lab, "bob", ["c3", "c4"])
    fill(lab, "root", ["c5"])
    waiter = Waiter(lab, "carol", "c")
    assert waiter.result is None and waiter.error is None
    release(lab, "bob", "c3")
    assert waiter.result["name"] == "c3" and waiter.result["holder"] == "carol"
    assert lab.board("c3")["holder"] == "carol"
    late = lab.request("POST", "/boards/c/reserve", "bob")
    assert late.status == 409


def test_fifty_waiters_five_boards_fair_order(tmp_path, database):
    """50 waiters for a class of 5: each freed board goes to exactly one
    waiter, in priority-then-arrival order; no waiter gets two boards."""
    lab = InLab(tmp_path, BOARDS.replace("user_limit = 2;", ""), database=database)
    fill(lab, "root", ["c1", "c2", "c3", "c4", "c5"])
    waiters = [Waiter(lab, f"u{i}", "c") for i in range(49)]
    waiters.insert(10, Waiter(lab, "root", "c", priority=5))
    served = []
    holders = {name: "root" for name in ("c1", "c2", "c3", "c4", "c5")}
    for round_ in range(50):
        name = sorted(holders)[round_ % 5]
        release(lab, holders[name], name)
        done = [w for w in waiters if w.result is not None and w not in served]
        assert len(done) == 1
        served.append(done[0])
        holders[name] = done[0].user
        assert done[0].result["name"] == name
    assert served[0].user == "root"
    assert [w.user for w in served[1:]] == [f"u{i}" for i in range(49)]
    assert all(w.error is None for w in waiters)
    lab.close()


def test_wait_times_out_saying_how_long(lab):
    """A wait that runs out answers 409 saying how long it waited, and the
    waiter leaves the queue."""
    fill(lab, "alice", ["s1"])
    waiter = Waiter(lab, "bob", "s1", wait=30)
    lab.clock.advance(30)
    lab.flush()
    assert isinstance(waiter.error, Unavailable)
    assert "waited 30 s" in waiter.error.message
    assert lab.request("GET", "/queue", "root").body == {"queue": [], "total": 0}


def test_client_gone_leaves_the_queue(lab):
    """A waiter whose client disconnects leaves at once; the board goes to
    the next one."""
    fill(lab, "alice", ["s1"])
    first = Waiter(lab, "bob", "s1")
    second = Waiter(lab, "carol", "s1")
    first.leave()
    release(lab, "alice", "s1")
    assert first.result is None
    assert second.result["holder"] == "carol"


def test_board_freed_as_its_waiter_gives_up(lab):
    """A board's release ends just before, or just after, its waiter's time
    runs out: before, the waiter gets it; after, the waiter gets 409 and the
    board is free.  It is never stranded."""
    fill(lab, "alice", ["c1", "c2"])
    fill(lab, "bob", ["c3", "c4"])
    fill(lab, "root", ["c5"])
    waiter = Waiter(lab, "carol", "c", wait=10)
    lab.clock.advance(9.5)
    lab.request("POST", "/boards/c3/release", "bob")
    lab.clock.advance(0.49)
    settle(lab)
    lab.clock.advance(0.01)
    lab.flush()
    assert waiter.error is None and waiter.result["name"] == "c3"
    late = Waiter(lab, "carol", "c", wait=10)
    lab.clock.advance(9.5)
    lab.request("POST", "/boards/c4/release", "bob")
    lab.clock.advance(0.5)
    lab.flush()
    assert "waited 10 s" in late.error.message
    settle(lab)
    assert lab.board("c4")["state"] == "free"


def test_waiters_survive_a_restart_for_their_lease(lab):
    """After a crash, waiters keep their places for queue_lease seconds: one
    whose client comes back (with its waiter id) is served in order, one that
    does not come back leaves."""
    fill(lab, "alice", ["s1"])
    Waiter(lab, "bob", "s1")
    Waiter(lab, "carol", "s1")
    ids = [e["id"] for e in lab.request("GET", "/queue", "root").body["queue"]]
    lab.crash()
    settle(lab)
    carol = Waiter(lab, "carol", "s1", waiter=ids[1])
    release(lab, "alice", "s1")
    # bob's client has not come back: the board goes to carol, who waits
    assert lab.board("s1")["holder"] == "carol"
    assert carol.result["holder"] == "carol"
    lab.tick(31)
    settle(lab)
    events = lab.request("GET", "/events?user=bob", "root").body["events"]
    assert [e["detail"] for e in events if e["action"] == "left"] == ["gone"]


def test_limits_refuse_and_waiting_past_them_waits(lab):
    """A user at the class limit (2) is refused a third board with a clear
    message; waiting for it waits until they are under the limit."""
    fill(lab, "alice", ["c1", "c2"])
    refused = lab.request("POST", "/boards/c/reserve", "alice")
    assert refused.status == 409
    assert (
        "holds 2 boards of class c; its limit is 2" in refused.body["error"]["message"]
    )
    waiter = Waiter(lab, "alice", "c")
    assert waiter.result is None and lab.board("c3")["state"] == "free"
    release(lab, "alice", "c1")
    assert waiter.result is not None and waiter.result["holder"] == "alice"


def test_lab_limit(tmp_path, database):
    """user_board_limit caps a user's boards over the whole lab."""
    lab = InLab(tmp_path, BOARDS, "user_board_limit=1\n", database=database)
    fill(lab, "alice", ["c1"])
    refused = lab.request("POST", "/boards/s1/reserve", "alice")
    assert refused.status == 409
    assert "the lab's limit is 1 per user" in refused.body["error"]["message"]
    lab.close()


def test_cancel_and_visibility(lab):
    """Users see their own queue entries and the total; admins see all; a
    waiter is cancelled by its owner or an admin, not by another user."""
    fill(lab, "alice", ["s1"])
    bob = Waiter(lab, "bob", "s1")
    Waiter(lab, "carol", "s1")
    mine = lab.request("GET", "/queue", "bob").body
    assert [e["user"] for e in mine["queue"]] == ["bob"] and mine["total"] == 2
    assert mine["queue"][0]["position"] == 1 and mine["queue"][0]["ahead"] == 0
    everyone = lab.request("GET", "/queue", "root").body
    assert [e["user"] for e in everyone["queue"]] == ["bob", "carol"]
    assert everyone["queue"][1]["ahead"] == 1
    wid = mine["queue"][0]["id"]
    assert lab.request("DELETE", f"/queue/{wid}", "carol").status == 404
    assert lab.request("DELETE", f"/queue/{wid}", "bob").status == 200
    assert "cancelled" in bob.error.message


def test_expiry_notices_reach_the_holders_console(lab):
    """The holder's console sessions are told 10 and 2 minutes before the
    end, once each, and the notices are audited."""
    response = lab.request("POST", "/boards/s1/reserve", "alice", {"timeout": 900})
    settle(lab)
    assert response.status == 200
    viewer = lab.attach("alice", "s1")
    lab.tick(299)
    assert b"ends in" not in bytes(viewer.data)
    lab.tick(1)
    assert bytes(viewer.data).count(b"ends in about 10 min") == 1
    lab.tick(10)
    assert bytes(viewer.data).count(b"ends in about") == 1
    lab.tick(470)
    assert bytes(viewer.data).count(b"ends in about 2 min") == 1
    events = lab.request("GET", "/events?board=s1", "root").body["events"]
    assert [e["detail"] for e in events if e["action"] == "expiring"] == ["120", "600"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["wait", "release", "leave", "time", "reserve"]),
            st.integers(0, 9),
        ),
        max_size=40,
    )
)
def test_queue_interleavings(tmp_path_factory, steps):
    """Any interleaving of waits, releases, leaving clients, time-outs and
    plain reserves: no board has two holders, no waiter gets two boards, and
    no board is free while a connected waiter that may take it waits."""
    lab = InLab(tmp_path_factory.mktemp("q"), BOARDS.replace("user_limit = 2;", ""))
    users = [f"u{i}" for i in range(10)]
    waiters = []
    for action, n in steps:
        user = users[n]
        if action == "wait":
            waiters.append(Waiter(lab, user, "c", wait=20))
        elif action == "reserve":
            lab.request("POST", "/boards/c/reserve", user)
        elif action == "release":
            board = lab.board(f"c{n % 5 + 1}")
            if board["state"] == "reserved":
                release(lab, board["holder"], board["name"])
        elif action == "leave":
            live = [w for w in waiters if w.result is None and w.error is None]
            if live:
                live[n % len(live)].leave()
        else:
            lab.tick(7)
        settle(lab)
        holders = [b["holder"] for b in lab.boards() if b["state"] != "free"]
        granted = [w for w in waiters if w.result is not None]
        assert len({w.result["reservation_id"] for w in granted}) == len(granted)
        free = [b for b in lab.boards() if b["state"] == "free" and b["class"] == "c"]
        queue = lab.request("GET", "/queue", "root").body["queue"]
        connected = [e for e in queue if e["connected"]]
        assert not (free and connected), (free, connected)
        assert len(holders) == len(
            {b["name"] for b in lab.boards() if b["state"] != "free"}
        )
    lab.close()


def test_a_ticket_names_the_clients_own_place(lab):
    """A wait may carry the client's own ticket: it comes back in the
    queue's entries, so that one user's simultaneous waits know their
    places; a place whose request is still open cannot be taken up twice."""
    fill(lab, "alice", ["s1"])
    d = lab.manager.reserve("bob", "s1", wait=60, ticket="job-7")
    entry = lab.request("GET", "/queue", "bob").body["queue"][0]
    assert entry["ticket"] == "job-7"
    again = lab.request(
        "POST", "/boards/s1/reserve", "bob", {"wait": 60, "waiter": entry["id"]}
    )
    assert (
        again.status == 409 and "taken up by another" in again.body["error"]["message"]
    )
    bad = lab.request("POST", "/boards/s1/reserve", "bob", {"wait": 5, "ticket": "a b"})
    assert bad.status == 400
    d.addErrback(lambda f: None)


def test_notice_rule():
    """Notices come once per threshold crossed, the smallest crossed first
    given; none for a threshold as long as the reservation itself."""
    from bitelab.rules import notices_due

    assert notices_due(1000, None, (600, 120), 399, 1000) is None
    assert notices_due(1000, None, (600, 120), 400, 1000) == 600
    assert notices_due(1000, 600, (600, 120), 500, 1000) is None
    assert notices_due(1000, 600, (600, 120), 900, 1000) == 120
    assert notices_due(1000, None, (600, 120), 950, 1000) == 120
    assert notices_due(120, None, (600, 120), 0, 120) is None


def test_queue_metrics(lab):
    """The queue tells the metrics each class's depth and oldest waiter after
    every change, and how long each wait lasted and how it ended."""
    from bitelab.metrics import Metrics

    metrics = Metrics(lab.clock, "test")
    lab.manager.room.metrics = metrics
    fill(lab, "alice", ["s1"])
    first = Waiter(lab, "bob", "s1", wait=30)
    Waiter(lab, "carol", "s1", wait=60)
    lab.clock.advance(0)
    registry = metrics.registry
    assert registry.get_sample_value("bitelab_queue_depth", {"class": "s"}) == 2
    lab.clock.advance(30)
    lab.flush()
    assert first.error is not None
    assert registry.get_sample_value("bitelab_queue_depth", {"class": "s"}) == 1
    waited = registry.get_sample_value(
        "bitelab_queue_wait_seconds_count", {"class": "s", "outcome": "timeout"}
    )
    assert waited == 1
