"""One lab on several hosts sharing a PostgreSQL database, in-process.

Two servers (``support.inlab``) with board files of their own share one real
PostgreSQL database: a reserve made on one host for a board of the other is
set up by the other; a host that stops beating has its boards marked down
and not handed out; board files that disagree are refused at start.
"""

import pytest

from bitelab.errors import ConfigError
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


@pytest.fixture
def hosts(tmp_path, postgres_server):
    """Hosts h1 and h2 on one fresh PostgreSQL database."""
    url = postgres_server.database()
    one = InLab(tmp_path / "h1", H1, "host_name=h1\nhost_timeout=5\n", database=url)
    two = InLab(tmp_path / "h2", H2, "host_name=h2\nhost_timeout=5\n", database=url)
    yield one, two
    one.close()
    two.close()


def settle(*labs):
    """Answer every pending call and let time pass until the hosts are idle
    (at least a few rounds: hosts look at each other's work on their ticks)."""
    for round_ in range(50):
        busy = False
        for lab in labs:
            while lab.calls.pending:
                lab.complete(0)
                busy = True
            lab.tick(0.1)
        if round_ > 5 and not busy and not any(lab.calls.pending for lab in labs):
            break


def test_reserve_on_one_host_is_set_up_by_the_boards_host(hosts):
    """A class reserve through h1 that picks h2's board is recorded by h1,
    set up by h2 (its setup script runs on h2), and answered by h1."""
    one, two = hosts
    first = one.request("POST", "/boards/h1-a/reserve", "alice")
    settle(one, two)
    assert first.status == 200
    response = one.request("POST", "/boards/c/reserve", "bob")
    assert not response.done
    settle(one, two)
    assert response.status == 200, response.body
    assert response.body["host"] == "h2" and response.body["holder"] == "bob"
    assert [(a, b) for _, a, b, _ in two.script_runs] == [
        ("reserve", response.body["name"])
    ]
    assert all(b == "h1-a" for _, _, b, _ in one.script_runs)
    released = one.request("POST", f"/boards/{response.body['name']}/release", "bob")
    settle(one, two)
    assert released.status == 200 and released.body["state"] == "free"
    assert [a for _, a, _, _ in two.script_runs] == ["reserve", "release"]


def test_both_hosts_list_every_board_with_its_host(hosts):
    """Either host lists all boards of the lab with their host."""
    one, _two = hosts
    for lab in hosts:
        boards = lab.request("GET", "/boards", "alice").body["boards"]
        assert {(b["name"], b["host"]) for b in boards} == {
            ("h1-a", "h1"),
            ("h2-a", "h2"),
            ("h2-b", "h2"),
        }
    classes = one.request("GET", "/classes", "alice").body["classes"]
    assert [(c["name"], c["boards"], c["free"]) for c in classes] == [("c", 3, 3)]


def test_a_silent_host_is_down_and_its_boards_not_handed_out(hosts):
    """When h2 stops beating, its boards show host_down and a class reserve
    through h1 does not pick them."""
    one, two = hosts
    one.tick(6)
    one.request("POST", "/boards/h1-a/reserve", "alice")
    settle(one)
    boards = {
        b["name"]: b for b in one.request("GET", "/boards", "root").body["boards"]
    }
    assert boards["h2-a"]["host_down"] is True
    assert "host_down" not in boards["h1-a"]
    refused = one.request("POST", "/boards/c/reserve", "bob")
    assert refused.status == 409
    named = one.request("POST", "/boards/h2-a/reserve", "bob")
    assert named.status == 409 and "is down" in named.body["error"]["message"]
    two.tick(6)
    assert "host_down" not in one.request("GET", "/boards/h2-a", "root").body


def test_power_of_another_hosts_board_is_refused_with_where(hosts):
    """Hardware work on a board of another host says which host to use."""
    one, two = hosts
    one.request("POST", "/boards/h2-a/reserve", "alice")
    settle(one, two)
    power = one.request("POST", "/boards/h2-a/attrs", "alice", {"power": "on"})
    assert power.status in (400, 409)


def test_board_files_that_disagree_are_refused(tmp_path, postgres_server):
    """A class defined otherwise, or a board another host serves, stops the
    second host at start with one line."""
    url = postgres_server.database()
    one = InLab(tmp_path / "h1", H1, "host_name=h1\n", database=url)
    with pytest.raises(ConfigError, match="class c: defined otherwise by host h1"):
        InLab(
            tmp_path / "h2",
            H2.replace("arch = x", "arch = y"),
            "host_name=h2\n",
            database=url,
        )
    with pytest.raises(ConfigError, match="board h1-a: host h1 serves it already"):
        InLab(tmp_path / "h3", H1, "host_name=h3\n", database=url)
    one.close()


def test_a_waiter_on_one_host_gets_a_board_freed_on_another(hosts):
    """A reserve waiting on h1 is handed the board released on h2: h2 sets it
    up and h1 answers its waiter."""
    one, two = hosts
    for name in ("h1-a", "h2-a", "h2-b"):
        one.request("POST", f"/boards/{name}/reserve", "root")
        settle(one, two)
    waiting = one.request("POST", "/boards/c/reserve", "bob", {"wait": 60})
    settle(one, two)
    assert not waiting.done
    two.request("POST", "/boards/h2-b/release", "root", {"force": True})
    settle(one, two)
    assert waiting.status == 200, waiting.body
    assert waiting.body["name"] == "h2-b" and waiting.body["holder"] == "bob"
    assert ("reserve", "h2-b") in [(a, b) for _, a, b, _ in two.script_runs]
