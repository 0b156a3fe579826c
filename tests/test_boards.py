"""The board manager in-process: expiry on an injected clock, and the
allocation rule under random concurrent requests (hypothesis)."""

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task, threads

from bitelab import db
from bitelab.boardpower import BoardPower
from bitelab.config import load_boards, load_config
from bitelab.errors import Forbidden, Invalid, NotFound, Unavailable
from bitelab.events import EventBus
from bitelab.lifecycle import BoardManager
from bitelab.script import ScriptRunner
from bitelab.store import Store
from bitelab.tap import option_map, sync_database
from bitelab.views import iso

BOARDS = """
classes { a { arch = x; } b { arch = y; } }
boards [
    { name = a1; brdclass = a; }, { name = a2; brdclass = a; },
    { name = a3; brdclass = a; options = [ { cls = timeout, val = 30 } ] },
    { name = b1; brdclass = b; },
]
"""


class Lab:
    """A manager on a real SQLite file whose clock is a ``task.Clock``."""

    def __init__(self, directory):
        (directory / "boards.ucl").write_text(BOARDS)
        (directory / ".env").write_text(
            "db_file=lab.sqlite\nboard_conf=boards.ucl\nadmins=root\n"
            "default_timeout=100\nmax_timeout=1000\n"
        )
        self.config = load_config(str(directory / ".env"))
        self.lab = load_boards(self.config.board_conf, option_map())
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        sync_database(self.config, self.lab, self.clock.seconds())
        self.writer = db.make_pool(self.config.db_file)
        self.reader = db.make_pool(self.config.db_file)
        store = Store(self.writer, self.reader, EventBus(), self.clock)
        self.manager = BoardManager(
            self.clock,
            self.config,
            self.lab,
            store,
            BoardPower(self.clock, self.lab, None, store, 0),
            scripts=ScriptRunner(reactor, None),
        )

    def close(self):
        self.writer.close()
        self.reader.close()


@pytest.fixture
def lab(tmp_path):
    """A ``Lab`` in a temporary directory."""
    made = Lab(tmp_path)
    yield made
    made.close()


async def states(lab):
    boards = await lab.manager.list_boards("root")
    return {b["name"]: (b["state"], b["holder"]) for b in boards}


@pytest_twisted.ensureDeferred
async def test_expiry_follows_the_clock(lab):
    """A reservation ends exactly when its time is up: not a second before."""
    await lab.manager.reserve("alice", "a1", timeout=10)
    await lab.manager.reserve("bob", "a3")  # the board's own timeout: 30 s
    lab.clock.advance(9)
    await lab.manager.expire_due()
    assert (await states(lab))["a1"] == ("reserved", "alice")
    lab.clock.advance(1)
    await lab.manager.expire_due()
    found = await states(lab)
    assert found["a1"] == ("free", None)
    assert found["a3"] == ("reserved", "bob")
    lab.clock.advance(20)
    await lab.manager.expire_due()
    assert (await states(lab))["a3"] == ("free", None)
    events = await lab.manager.events(board="a1")
    assert [e["action"] for e in events] == ["freed", "releasing", "reserved"]
    assert events[1]["detail"] == "expire: expired"


@pytest_twisted.ensureDeferred
async def test_extension_is_from_now_and_capped(lab):
    """timeout=N moves the expiry to now+N; more than max_timeout is refused."""
    await lab.manager.reserve("alice", "b1", timeout=10)
    lab.clock.advance(5)
    board = await lab.manager.set_attrs("alice", "b1", {"timeout": 50})
    assert board["expires_at"] == iso(lab.clock.seconds() + 50)
    with pytest.raises(Invalid, match="between 1 and 1000"):
        await lab.manager.set_attrs("alice", "b1", {"timeout": 1001})
    with pytest.raises(Forbidden):
        await lab.manager.set_attrs("bob", "b1", {"timeout": 50})
    lab.clock.advance(49)
    await lab.manager.expire_due()
    assert (await states(lab))["b1"] == ("reserved", "alice")


@pytest_twisted.ensureDeferred
async def test_unknown_names(lab):
    """Unknown boards and classes are not_found, not anything else."""
    with pytest.raises(NotFound):
        await lab.manager.reserve("alice", "zz")
    with pytest.raises(NotFound):
        await lab.manager.release("alice", "zz")


requests = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
        st.sampled_from(["a", "b", "a1", "a2", "a3", "b1"]),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(batch=requests)
def _check_batch(directory_factory, batch):
    """Run one batch against a fresh lab; called in a thread, the lab in the reactor."""
    lab = threads.blockingCallFromThread(reactor, Lab, directory_factory.mktemp("lab"))
    try:
        threads.blockingCallFromThread(
            reactor, lambda: defer.ensureDeferred(_run_batch(lab, batch))
        )
    finally:
        threads.blockingCallFromThread(reactor, lab.close)


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_never_double_allocate(tmp_path_factory):
    """Any mix of reserves and releases issued at once: every board has at most
    one holder, every success is a board that was free, and the database agrees.

    Hypothesis drives the batches from a thread, so that the reactor keeps
    running the manager's Deferreds while each example waits for them.
    """
    await threads.deferToThread(_check_batch, tmp_path_factory)


async def _run_batch(lab, batch):
    # first wave: everyone reserves at once
    calls = [lab.manager.reserve(user, target) for user, target, _ in batch]
    results = await defer.DeferredList(calls, consumeErrors=True)
    held = {}
    for (ok, value), (user, target, _) in zip(results, batch):
        if ok:
            assert value["name"] not in held, "one board given twice"
            assert value["holder"] == user
            assert target in (value["name"], value["class"])
            held[value["name"]] = user
        else:
            assert value.check(Unavailable), value
    free_per_class = {"a": 3, "b": 1}
    wanted = {}
    for _, target, _ in batch:
        cls = target[0]
        wanted[cls] = wanted.get(cls, 0) + 1
    for cls, count in wanted.items():
        got = sum(1 for name in held if name.startswith(cls))
        assert got <= free_per_class[cls]
        if any(t == cls for _, t, _ in batch):
            assert got >= min(1, count)
    # second wave: releases by the holder or by someone else, at once
    releases = []
    for user, target, by_holder in batch:
        name = target if target in held else next(iter(held), None)
        if name is None:
            continue
        who = held[name] if by_holder else user
        releases.append((name, who, lab.manager.release(who, name)))
    results = await defer.DeferredList([d for *_, d in releases], consumeErrors=True)
    released = set()
    for (ok, value), (name, who, _) in zip(results, releases):
        if ok:
            assert who == held[name] and name not in released
            released.add(name)
        else:
            assert value.check(Forbidden, Unavailable), value
    final = await states(lab)
    for name, (state, holder) in final.items():
        if name in held and name not in released:
            assert (state, holder) == ("reserved", held[name])
        else:
            assert (state, holder) == ("free", None)
