"""Prompt wake-ups between the hosts of a lab, in-process on a real PostgreSQL.

Two servers (``support.inlab``) share one database, each with its own
listening connection (``bitelab.wakeup.Listener``) on the real reactor.
Their clocks never move: no periodic tick runs after start, so whatever
one host does for work another host committed happens because the commit's
notification reached it.  The reactor runs only for the real database I/O;
``until`` gives up after a generous bound so that a missing wake-up fails
instead of hanging.
"""

import pytest
import pytest_twisted
from twisted.internet import defer, task

from support.inlab import InLab

H1 = """
setup_script = /bin/true;
classes { c { arch = x; } }
boards [ { name = h1-a; brdclass = c; } ]
"""
H2 = """
setup_script = /bin/true;
classes { c { arch = x; } }
boards [ { name = h2-a; brdclass = c; }, { name = h2-b; brdclass = c; } ]
"""

#: rounds of 10 ms the reactor runs before ``until`` gives up (a hang guard)
ROUNDS = 2000


@pytest.fixture
def hosts(tmp_path, postgres_server):
    """Hosts h1 and h2, listening for each other, on one fresh database."""
    url = postgres_server.database()
    one = InLab(
        tmp_path / "h1", H1, "host_name=h1\nhost_timeout=5\n", database=url, listen=True
    )
    two = InLab(
        tmp_path / "h2", H2, "host_name=h2\nhost_timeout=5\n", database=url, listen=True
    )
    labs = (one, two)
    # both listen before the test starts (their first catch-up is done)
    pytest_twisted.blockon(until(lambda: all(lab.listening() for lab in labs)))
    started = [lab.clock.seconds() for lab in labs]
    yield one, two
    assert [lab.clock.seconds() for lab in labs] == started, "a clock moved"
    one.close()
    two.close()


@defer.inlineCallbacks
def until(predicate, what="the condition", labs=()):
    """Let the real reactor run (database I/O) until ``predicate()`` holds;
    the labs' answered HTTP calls are flushed on the way."""
    from twisted.internet import reactor

    for _ in range(ROUNDS):
        for lab in labs:
            lab.flush()
        if predicate():
            return
        yield task.deferLater(reactor, 0.01)
    pytest.fail(f"never happened: {what}")


def pending(lab):
    """``(kind, board)`` of the lab's pending script and power calls."""
    return [(call.kind, call.board) for call in lab.calls.pending]


@defer.inlineCallbacks
def reserve_across(asking, owner, board, user):
    """Reserve ``board`` of ``owner`` through ``asking``; the answered response."""
    response = asking.request("POST", f"/boards/{board}/reserve", user)
    yield until(lambda: pending(owner), f"{owner.config.host_name} sets {board} up")
    assert pending(owner) == [("reserve", board)]
    owner.complete(0)
    yield until(lambda: response.done, "the reserve is answered", [asking])
    return response


@pytest_twisted.inlineCallbacks
def test_reserve_of_another_hosts_board_is_set_up_and_answered_at_once(hosts):
    """A reserve on h1 of h2's board wakes h2, which runs the reserve script
    (nothing on h1), and h2's confirmation wakes h1, which answers."""
    one, two = hosts
    response = yield reserve_across(one, two, "h2-a", "bob")
    assert response.status == 200, response.body
    assert response.body["state"] == "reserved" and response.body["holder"] == "bob"
    assert response.body["host"] == "h2"
    assert [(a, b) for _, a, b, _ in two.script_runs] == [("reserve", "h2-a")]
    assert one.script_runs == []


@pytest_twisted.inlineCallbacks
def test_release_asked_on_another_host_is_run_and_answered_at_once(hosts):
    """A release on h1 of a board of h2 wakes h2, which winds it down, and
    h1 answers with the free board once h2 is done."""
    one, two = hosts
    yield reserve_across(one, two, "h2-a", "bob")
    released = one.request("POST", "/boards/h2-a/release", "bob")
    yield until(lambda: pending(two), "h2 winds h2-a down")
    assert pending(two) == [("release", "h2-a")]
    assert not released.done
    two.complete(0)
    yield until(lambda: released.done, "the release is answered", [one])
    assert released.status == 200, released.body
    assert released.body["state"] == "free"
    assert [a for _, a, _, _ in two.script_runs] == ["reserve", "release"]


@pytest_twisted.inlineCallbacks
def test_a_waiter_is_answered_when_another_host_hands_it_a_board(hosts):
    """A reserve waiting on h1 is handed the board released on h2: h2 sets
    it up, and h1 learns of the grant and of the setup without a tick."""
    one, two = hosts
    for lab, board in ((one, "h1-a"), (two, "h2-a"), (two, "h2-b")):
        held = lab.request("POST", f"/boards/{board}/reserve", "root")
        lab.complete(0)
        assert held.status == 200, held.body
    waiting = one.request("POST", "/boards/c/reserve", "bob", {"wait": 60})
    assert not waiting.done
    released = two.request("POST", "/boards/h2-b/release", "root", {"force": True})
    assert pending(two) == [("release", "h2-b")]
    two.complete(0)
    assert released.status == 200
    # the release handed h2-b to the waiter: h2 sets it up for h1's waiter
    assert pending(two) == [("reserve", "h2-b")]
    yield until(lambda: one.manager.room.serving, "h1 takes its granted waiter up")
    assert not waiting.done
    two.complete(0)
    yield until(lambda: waiting.done, "the waiter is answered", [one])
    assert waiting.status == 200, waiting.body
    assert waiting.body["name"] == "h2-b" and waiting.body["holder"] == "bob"


@pytest_twisted.inlineCallbacks
def test_a_listener_cut_off_comes_back_and_still_delivers(hosts):
    """When the database ends h1's listening connection, h1 connects again,
    listens again, and a reserve of its board made on h2 still reaches it."""
    one, two = hosts
    (old,) = one.listening_backends()
    one.pool.sql("SELECT pg_terminate_backend(?)", (old,))
    yield until(
        lambda: one.listening() and one.listening_backends() not in ([], [old]),
        "h1 listens again on a new connection",
    )
    response = yield reserve_across(two, one, "h1-a", "carol")
    assert response.status == 200, response.body
    assert response.body["holder"] == "carol" and response.body["host"] == "h1"


def test_notices_name_the_boards_whose_work_other_hosts_may_have():
    """A notice names the boards of the events that may give another host
    work (not, e.g., an extension), says whether a waiter was handed a
    board, and falls back to "anything changed" when too long to send."""
    from bitelab import events
    from bitelab.events import Event
    from bitelab.wakeup import MAX_NOTICE, notice, read_notice

    def event(kind, board):
        return Event(kind=kind, board=board, at=0.0)

    assert notice("h1", [event(events.EXTENDED, "b"), event("power", "b")]) is None
    text = notice(
        "h1",
        [
            event(events.FREED, "b"),
            event(events.GRANTED, "b"),
            event(events.RESERVING, "b"),
        ],
    )
    assert read_notice(text) == ("h1", frozenset({"b"}), True)
    many = [event(events.RELEASING, f"board-{i:05}") for i in range(MAX_NOTICE // 8)]
    text = notice("h1", many)
    assert len(text.encode()) < 8000
    assert read_notice(text) == ("h1", None, False)


def test_one_read_of_notices_is_one_delivery_without_this_hosts_own():
    """The notices one read brings are merged into one delivery; this host's
    own are left out (its event bus told it), and one that cannot be read
    means anything may have changed."""
    from bitelab.wakeup import Listener

    delivered = []
    listener = Listener(None, None, "h1", lambda *args: delivered.append(args))
    own = '{"host": "h1", "boards": ["h1-a"], "granted": true}'
    listener._received([own])
    assert delivered == []
    listener._received(
        [
            own,
            '{"host": "h2", "boards": ["h1-a"], "granted": false}',
            '{"host": "h3", "boards": ["h2-b"], "granted": true}',
        ]
    )
    assert delivered == [({"h1-a", "h2-b"}, True)]
    listener._received(["not json", '{"host": "h2", "boards": ["x"]}'])
    assert delivered[-1] == (None, True)


def test_a_burst_of_wake_ups_is_one_round_more_not_one_each(hosts):
    """Wake-ups that come while a round of work runs are done in one more
    round; notices about other hosts' boards nobody here waits on, or of
    grants while nobody waits here, start no work at all.  (The database
    read that recovery starts with is held pending by the test, as a slow
    database would.)"""
    one, _two = hosts
    manager = one.manager
    reads = []
    real = one.store.unsettled

    def held():
        d = defer.Deferred()
        reads.append(d)
        return d.addCallback(lambda _: real())

    one.store.unsettled = held
    manager.wake(frozenset({"h2-a"}), granted=True)
    assert reads == []
    for _ in range(5):
        manager.wake(frozenset({"h1-a"}))
    assert len(reads) == 1
    reads[0].callback(None)
    assert len(reads) == 2
    reads[1].callback(None)
    assert len(reads) == 2
