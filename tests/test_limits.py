"""The connection limiter shared by HTTP and SSH, and the open-file budget."""

import resource
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from bitelab.config import Config
from bitelab.limits import FILE_RESERVE, ConnectionLimiter, files_needed
from support.server import repo_env


def test_per_source_cap_refuses_the_extra_connection():
    """A source at its cap gets no more, and pushes nobody out."""
    limiter = ConnectionLimiter(max_total=10, max_per_source=2)
    assert limiter.admit("a1", "A") == (True, None)
    assert limiter.admit("a2", "A") == (True, None)
    assert limiter.admit("a3", "A") == (False, None)
    assert limiter.admit("b1", "B") == (True, None)
    assert len(limiter) == 3 and "a3" not in limiter


def test_full_limiter_pushes_out_the_oldest_idle_of_the_heaviest_source():
    """When full, a newcomer takes the place of the busiest source's oldest
    evictable connection; busy connections are never pushed out."""
    limiter = ConnectionLimiter(max_total=4)
    limiter.admit("a1", "A", evictable=False)
    limiter.admit("a2", "A")
    limiter.admit("a3", "A")
    limiter.admit("b1", "B")
    assert limiter.admit("c1", "C") == (True, "a2")
    assert "a2" not in limiter and limiter.count("A") == 2
    # A and B hold 2 and 1 now: A still pays
    assert limiter.admit("c2", "C") == (True, "a3")
    # A holds only its busy one; C (2) is now the heaviest with an idle one
    assert limiter.admit("d1", "D") == (True, "c1")


def test_full_limiter_refuses_when_nothing_can_make_room():
    """With every connection busy, or every source lighter than the
    newcomer's, the newcomer is refused."""
    limiter = ConnectionLimiter(max_total=2)
    limiter.admit("a1", "A", evictable=False)
    limiter.admit("b1", "B")
    limiter.set_evictable("b1", False)
    assert limiter.admit("c1", "C") == (False, None)
    limiter.set_evictable("b1", True)
    assert limiter.admit("c1", "C") == (True, "b1")
    heavy = ConnectionLimiter(max_total=3)
    heavy.admit("a1", "A", evictable=False)
    heavy.admit("a2", "A", evictable=False)
    heavy.admit("b1", "B")
    # A holds 2 busy ones; B's one idle connection is lighter than A
    assert heavy.admit("a3", "A") == (False, None)


def test_a_source_flooding_alone_pushes_out_its_own():
    """A single source filling the limiter pushes out its own oldest
    connection for each new one; another source still gets in."""
    limiter = ConnectionLimiter(max_total=3)
    for n in range(3):
        limiter.admit(f"a{n}", "A")
    assert limiter.admit("a3", "A") == (True, "a0")
    assert limiter.admit("b1", "B") == (True, "a1")
    limiter.remove("b1")
    limiter.remove("b1")  # twice is harmless
    assert limiter.count("B") == 0 and len(limiter) == 2


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["admit", "busy", "idle", "remove"]),
            st.integers(0, 5),
            st.integers(0, 40),
        ),
        max_size=200,
    ),
    st.integers(1, 8),
    st.integers(1, 4),
)
def test_limiter_invariants(operations, max_total, max_per_source):
    """Under any sequence of events the caps hold, a victim was admitted
    before and is gone after, and a source that holds fewer connections
    than another with an idle one is never refused for lack of room."""
    limiter = ConnectionLimiter(max_total, max_per_source)
    evictable = {}
    for op, source, conn in operations:
        if op == "admit":
            if conn in limiter:
                continue
            counts = {s: limiter.count(s) for s in range(6)}
            held = counts[source]
            could_make_room = any(
                counts[limiter_source(limiter, c)] >= held
                for c, e in evictable.items()
                if e and c in limiter
            )
            admitted, victim = limiter.admit(conn, source)
            if victim is not None:
                assert evictable.pop(victim) and victim not in limiter
            if admitted:
                evictable[conn] = True
            elif held < max_per_source:
                assert len(limiter) >= max_total and not could_make_room
        elif conn in limiter:
            if op == "remove":
                limiter.remove(conn)
                evictable.pop(conn)
            else:
                evictable[conn] = op == "idle"
                limiter.set_evictable(conn, op == "idle")
        assert len(limiter) <= max_total
        assert all(limiter.count(s) <= max_per_source for s in range(6))


def limiter_source(limiter, conn):
    """The source ``conn`` was admitted from."""
    return next(s for s in range(6) if conn in limiter._by_source.get(s, {}))


def test_files_needed_counts_both_caps_and_the_reserve():
    """The open-file budget is the HTTP cap, the SSH cap before login and
    the fixed reserve, with the default settings and changed ones."""
    default = Config(path="x", db_file="d", board_conf="b")
    assert files_needed(default) == 512 + 64 + FILE_RESERVE
    changed = Config(
        path="x",
        db_file="d",
        board_conf="b",
        http_max_connections=100,
        ssh_max_unauthenticated=20,
    )
    assert files_needed(changed) == 100 + 20 + FILE_RESERVE


def test_raise_file_limit_raises_the_soft_limit_or_says_why_not():
    """Below the need, the soft limit is raised to it; above the hard limit,
    a one-line problem names the settings and nothing changes."""
    code = (
        "import resource\n"
        "from bitelab.limits import raise_file_limit\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (300, 1000))\n"
        "print(raise_file_limit(900))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "print(raise_file_limit(5000))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard >= 1000
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=repo_env(),
    ).stdout.splitlines()
    assert out[0] == "None"
    assert out[1] == "(900, 1000)"
    assert out[2].startswith("the open-file limit (1000) is below the 5000")
    assert "http_max_connections" in out[2] and "ulimit -n" in out[2]
    assert out[3] == "(900, 1000)"
