"""Any interleaving of reservation steps, slow side effects and crashes is safe.

A hypothesis state machine drives the in-process lab (``support.inlab``):
reserves by name and by class, releases, forced releases, expiry,
extension, maintenance, power switching, console sessions and console
output, each slow side effect (setup script, power switch) answered, failed
or left pending in any order, and a crash-and-restart between any two steps.
After every step it checks:

* no board has two holders, and the database agrees with itself;
* a board is free only with no jail left, and reserved only with its own
  reservation's jail built;
* no reservation's release script runs twice in one server run, nor a
  reserve script after its release began, nor two scripts on one board at
  once;
* no console session outlives its reservation, and none ever received
  output printed during another reservation.

At the end every pending call is answered and the lab left to settle: then
no board may be between states, and every reservation whose setup ran has
had its release run.
"""

import collections
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from support.inlab import InLab

BOARDS = """
setup_script = /bin/true;
classes { a { arch = x; } b { arch = y; } }
boards [
    { name = a1; brdclass = a; options = [
        { cls = recpower, port = 1 }, { cls = serialconsole, val = /dev/ttyX1 } ] },
    { name = a2; brdclass = a; options = [
        { cls = recpower, port = 2 }, { cls = timeout, val = 30 } ] },
    { name = b1; brdclass = b; options = [ { cls = serialconsole, val = /dev/ttyX2 } ] },
]
"""
BOARD_NAMES = ("a1", "a2", "b1")
USERS = ("alice", "bob", "root")
HELD = ("reserving", "reserved", "releasing")


class LifecycleMachine(RuleBasedStateMachine):
    """Random steps against one in-process lab; invariants after each."""

    directory = None
    #: a callable giving a fresh PostgreSQL URL, or None for SQLite
    database = None

    def __init__(self):
        super().__init__()
        self.lab = InLab(
            self.directory.mktemp("lab"),
            BOARDS,
            database=self.database() if self.database else None,
        )
        self.crashes = 0

    def teardown(self):
        self.settle()
        self.lab.close()

    # -- steps ----------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), where=st.sampled_from(BOARD_NAMES + ("a", "b")))
    def reserve(self, user, where):
        self.lab.request("POST", f"/boards/{where}/reserve", user, {"timeout": 20})

    @rule(
        user=st.sampled_from(USERS),
        name=st.sampled_from(BOARD_NAMES),
        force=st.booleans(),
    )
    def release(self, user, name, force):
        self.lab.request("POST", f"/boards/{name}/release", user, {"force": force})

    @rule(user=st.sampled_from(USERS), name=st.sampled_from(BOARD_NAMES))
    def extend(self, user, name):
        self.lab.request("POST", f"/boards/{name}/attrs", user, {"timeout": 25})

    @rule(
        user=st.sampled_from(USERS),
        name=st.sampled_from(("a1", "a2")),
        action=st.sampled_from(("on", "off", "cycle")),
    )
    def power(self, user, name, action):
        self.lab.request("POST", f"/boards/{name}/attrs", user, {"power": action})

    @rule(name=st.sampled_from(BOARD_NAMES), start=st.booleans())
    def maintenance(self, name, start):
        if start:
            self.lab.request(
                "POST", f"/boards/{name}/maintenance", "root", {"reason": "checked"}
            )
        else:
            self.lab.request("DELETE", f"/boards/{name}/maintenance", "root")

    @rule(user=st.sampled_from(USERS), name=st.sampled_from(("a1", "b1")))
    def attach(self, user, name):
        self.lab.attach(user, name)

    @rule(name=st.sampled_from(("a1", "b1")))
    def output(self, name):
        # the board prints a line naming the reservation it runs for
        board = self.lab.board(name)
        tag = board["reservation_id"] if board["state"] in HELD else "free"
        self.lab.consoles[name].received(f"<{tag}>".encode())

    @rule(index=st.integers(0, 20), ok=st.booleans())
    def answer(self, index, ok):
        if self.lab.calls.pending:
            self.lab.complete(index, ok)

    @rule(seconds=st.sampled_from((0, 1, 10, 30)))
    def time_passes(self, seconds):
        self.lab.tick(seconds)

    @rule()
    def crash(self):
        self.crashes += 1
        self.lab.crash()

    # -- invariants ------------------------------------------------------------

    @invariant()
    def one_holder_per_board(self):
        rows = self.lab.pool.sql(
            "SELECT board, COUNT(*) FROM reservations WHERE state != 'ended' "
            "GROUP BY board"
        )
        assert all(count == 1 for _, count in rows), rows
        for board in self.lab.boards():
            if board["state"] in HELD:
                rid = board["reservation_id"]
                state = self.lab.pool.sql(
                    "SELECT state FROM reservations WHERE id = ?", (rid,)
                )[0][0]
                assert state == board["state"], (board, state)
            else:
                assert board["reservation_id"] is None, board

    @invariant()
    def jails_follow_reservations(self):
        for board in self.lab.boards():
            jail = self.lab.jails.get(board["name"])
            if board["state"] == "free":
                assert jail is None, (board, jail)
            if board["state"] == "reserved":
                assert jail == board["reservation_id"], (board, jail)
            if jail is not None:
                assert board["state"] != "free"

    @invariant()
    def scripts_run_once_and_alone(self):
        per_run = collections.Counter(
            (epoch, action, rid) for epoch, action, _, rid in self.lab.script_runs
        )
        assert all(count == 1 for count in per_run.values()), per_run
        reserves = collections.Counter(
            rid for _, action, _, rid in self.lab.script_runs if action == "reserve"
        )
        assert all(count == 1 for count in reserves.values()), reserves
        running = collections.Counter(
            c.board for c in self.lab.calls.pending if c.kind in ("reserve", "release")
        )
        assert all(count == 1 for count in running.values()), running
        released = set()
        for _, action, _, rid in self.lab.script_runs:
            if action == "release":
                released.add(rid)
            else:
                assert rid not in released

    @invariant()
    def consoles_belong_to_their_reservation(self):
        for name, console in self.lab.consoles.items():
            board = self.lab.board(name)
            expected = (
                board["reservation_id"]
                if board["state"] in ("reserving", "reserved")
                else None
            )
            assert console.reservation == expected, (board, console.reservation)
            for viewer in console.hub.viewers:
                assert viewer.reservation == console.reservation
        for viewer in self.lab.viewers:
            own = f"<{viewer.reservation}>" if viewer.reservation else "<free>"
            for tag in bytes(viewer.data).decode().replace(">", ">\n").split():
                assert tag == own, (viewer.user, viewer.reservation, bytes(viewer.data))

    # -- the end ---------------------------------------------------------------

    def settle(self):
        for _ in range(200):
            while self.lab.calls.pending:
                self.lab.complete(0, True)
            self.lab.tick(1)
            if not self.lab.calls.pending:
                break
        states = {b["name"]: b["state"] for b in self.lab.boards()}
        assert not set(states.values()) & {"reserving", "releasing"}, states
        set_up = {
            rid for _, action, _, rid in self.lab.script_runs if action == "reserve"
        }
        ended = {
            rid
            for (rid,) in self.lab.pool.sql(
                "SELECT id FROM reservations WHERE state = 'ended'"
            )
        }
        released = {
            rid for _, action, _, rid in self.lab.script_runs if action == "release"
        }
        assert (set_up & ended) <= released


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_lifecycle_interleavings(tmp_path_factory, backend, request):
    """Any interleaving of steps, slow side effects and crashes keeps the
    invariants in the module docstring (hypothesis stateful testing), on
    SQLite and on PostgreSQL."""
    LifecycleMachine.directory = tmp_path_factory
    examples = int(os.environ.get("BITELAB_MACHINE_EXAMPLES", "150"))
    LifecycleMachine.database = None
    if backend == "postgresql":
        LifecycleMachine.database = request.getfixturevalue("postgres_server").database
        examples = max(1, examples // 3)
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
