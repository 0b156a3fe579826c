"""One lab on several hosts sharing a PostgreSQL database, in-process.

Two servers (``support.inlab``) with board files of their own share one real
PostgreSQL database: a reserve made on one host for a board of the other is
set up by the other; a host that stops beating has its boards marked down
and not handed out; board files that disagree are refused at start.
"""

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.test.requesthelper import DummyChannel

from bitelab.errors import ConfigError
from bitelab.forward import _Relay
from bitelab.remoteconsole import RemoteConsoleAccess, _RelaySocket
from support.inlab import InLab

H1 = """
setup_script = /bin/true;
classes { c { arch = x; } }
boards [ { name = h1-a; brdclass = c; } ]
"""
H2 = """
setup_script = /bin/true;
classes { c { arch = x; } p { arch = x; } }
boards [ { name = h2-a; brdclass = c; }, { name = h2-b; brdclass = c; },
    { name = h2-p; brdclass = p; options = [
        { cls = recpower, port = 1 }, { cls = serialconsole, val = /dev/ttyX1 } ] } ]
"""


@pytest.fixture
def hosts(tmp_path, postgres_server):
    """Hosts h1 and h2 on one fresh PostgreSQL database, forwarding to each
    other in-process."""
    url, peers = postgres_server.database(), {}
    one, two = (
        InLab(
            tmp_path / name,
            boards,
            f"host_name={name}\nhost_url=http://{name}\nhost_timeout=5\n",
            database=url,
            peers=peers,
        )
        for name, boards in (("h1", H1), ("h2", H2))
    )
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
    """Either host lists all boards of the lab with their host, and shows a
    board's attributes as its own host does."""
    one, two = hosts
    for lab in hosts:
        boards = lab.request("GET", "/boards", "alice").body["boards"]
        assert {(b["name"], b["host"]) for b in boards} == {
            ("h1-a", "h1"),
            ("h2-a", "h2"),
            ("h2-b", "h2"),
            ("h2-p", "h2"),
        }
    mine, theirs = (
        lab.request("GET", "/boards/h2-p", "alice").body for lab in (two, one)
    )
    # only whether the console's device is open is the board's host's alone
    del mine["attrs"]["console_connected"]
    assert theirs["attrs"] == mine["attrs"]
    assert theirs["attrs"]["console"] is True and "power" in theirs["attrs"]
    assert theirs["attrs"]["default_timeout"] == 100
    classes = one.request("GET", "/classes", "alice").body["classes"]
    assert [(c["name"], c["boards"], c["free"]) for c in classes] == [
        ("c", 3, 3),
        ("p", 1, 1),
    ]


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


def reserved(one, two, user, name):
    """``user`` holds ``name`` (reserved through h1); its reservation id."""
    response = one.request("POST", f"/boards/{name}/reserve", user)
    settle(one, two)
    assert response.status == 200, response.body
    return response.body["reservation_id"]


def test_power_through_another_host_is_switched_by_the_boards_host(hosts):
    """Power of h2's board asked through h1 is forwarded: h2 switches it, for
    the holder only, and h1 relays h2's answer."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    switch = one.request("POST", "/boards/h2-p/attrs", "alice", {"power": "on"})
    settle(one, two)
    assert switch.status == 200, switch.body
    assert switch.body["name"] == "h2-p" and switch.body["attrs"]["power"] == "on"
    assert two.power_state == {1: True}
    audit = two.request("GET", "/events?board=h2-p", "root").body["events"]
    assert ("power", "alice", "on") in [
        (e["action"], e["user"], e["detail"]) for e in audit
    ]
    stranger = one.request("POST", "/boards/h2-p/attrs", "bob", {"power": "off"})
    settle(one, two)
    assert stranger.status == 403, stranger.body
    assert "not held by you" in stranger.body["error"]["message"]
    assert two.power_state == {1: True}


def test_console_logs_through_another_host_come_from_the_boards_host(hosts):
    """The console log of h2's board, now and of a past reservation, read
    through h1, is h2's, and only for its holder."""
    one, two = hosts
    rid = reserved(one, two, "alice", "h2-p")
    two.consoles["h2-p"].received(b"alice's output\n")
    now = one.request("GET", "/boards/h2-p/console", "alice")
    settle(one, two)
    assert now.status == 200 and now.raw.endswith(b"alice's output\n")
    other = one.request("GET", "/boards/h2-p/console", "bob")
    settle(one, two)
    assert other.status == 403
    one.request("POST", "/boards/h2-p/release", "alice")
    settle(one, two)
    past = one.request("GET", f"/boards/h2-p/console?reservation={rid}", "alice")
    settle(one, two)
    assert past.status == 200 and b"alice's output\n" in past.raw


def test_maintenance_of_another_hosts_board_ends_on_its_host(hosts):
    """An admin ends h2's board's maintenance through h1: h2 powers it off
    first, then it is free."""
    one, two = hosts
    one.request("POST", "/boards/h2-p/maintenance", "root", {"reason": "rewire"})
    settle(one, two)
    assert one.board("h2-p")["state"] == "maintenance"
    ended = one.request("DELETE", "/boards/h2-p/maintenance", "root")
    settle(one, two)
    assert ended.status == 200, ended.body
    assert ended.body["state"] == "free" and two.power_state == {1: False}


def test_hardware_work_for_a_silent_host_is_refused_at_once(hosts):
    """When h2 has stopped beating, power of its board through h1 is refused
    with a message naming h2, and nothing is switched."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    one.tick(6)
    switch = one.request("POST", "/boards/h2-p/attrs", "alice", {"power": "on"})
    settle(one)
    assert switch.status == 409
    assert "host h2" in switch.body["error"]["message"]
    assert "down" in switch.body["error"]["message"]
    assert two.power_state == {}


def raw(lab, method, path, headers, data=None):
    """Start an API call to ``lab`` with exactly ``headers``; a dict that gets
    its ``status`` and ``body`` once it is answered."""
    answer = {}
    d = lab.http.request(method, "http://lab/api/v1" + path, headers=headers, data=data)
    d.addCallback(lambda r: answer.update(status=r.code) or lab.http.json_content(r))
    d.addCallback(lambda body: answer.update(body=body))
    lab.http.flush()
    return answer


def forwarded(sender, user):
    """The headers of a request host ``sender`` forwards for ``user``."""
    return {
        "Authorization": [sender.api.forwarder.key.header()],
        "X-Bitelab-User": [user],
    }


def test_only_hosts_of_the_lab_may_forward(hosts):
    """A request claiming to come from a host is refused unless the key is
    that host's (the others know only its hash), and names a valid user."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    body = b'{"power": "on"}'
    for header, user in (
        (b"Bitelab-Host h1 " + b"x" * 43, b"alice"),
        (b"Bitelab-Host h9 " + one.api.forwarder.key.key.encode(), b"alice"),
        (one.api.forwarder.key.header(), b"alice;rm"),
        (one.api.forwarder.key.header(), b""),
    ):
        answer = raw(
            two,
            "POST",
            "/boards/h2-p/attrs",
            {"Authorization": [header], "X-Bitelab-User": [user]},
            body,
        )
        assert answer["status"] == 401, (header, user, answer)
    assert two.power_state == {}
    answer = raw(
        two,
        "POST",
        "/boards/h2-p/attrs",
        forwarded(one, "alice"),
        body,
    )
    assert "status" not in answer
    settle(one, two)
    assert answer["status"] == 200 and two.power_state == {1: True}


def test_a_forwarded_request_is_not_forwarded_again(hosts):
    """A request h2 forwarded to h1 for a board h1 does not serve is
    answered by h1 with an error, not sent back to h2."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    answer = raw(
        one,
        "POST",
        "/boards/h2-p/attrs",
        forwarded(two, "alice"),
        b'{"power": "on"}',
    )
    assert answer["status"] == 409
    assert "host h2 sent a request" in answer["body"]["error"]["message"]
    assert two.power_state == {}


def test_info_names_the_ssh_service_serving_a_boards_console(hosts):
    """``/info?login=BOARD`` on any host gives the SSH service of the board's
    host; other logins get the answering host's own."""
    one, two = hosts
    info = raw(one, "GET", "/info?login=h2-p", {})["body"]
    assert info["host"] == "h2" and info["ssh_host"] == "h2"
    assert info["ssh_port"] == two.ssh_port
    for login in ("h1-a", "lab", "nosuch", "%00"):
        info = raw(one, "GET", f"/info?login={login}", {})["body"]
        assert info["host"] == "h1" and "ssh_host" not in info


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


def test_a_release_through_another_host_cuts_the_consoles_on_the_boards_host(hosts):
    """Alice's console session on h2 is cut when her release, made through
    h1, is taken up by h2; the next holder's output never reaches it."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    viewer = two.attach("alice", "h2-p")
    assert viewer is not None
    two.consoles["h2-p"].received(b"alice's output\n")
    one.request("POST", "/boards/h2-p/release", "alice")
    settle(one, two)
    assert one.board("h2-p")["state"] == "free"
    assert viewer.closed and "ended" in viewer.closed
    reserved(one, two, "bob", "h2-p")
    two.consoles["h2-p"].received(b"bob's secret\n")
    assert b"bob's secret" not in bytes(viewer.data)


def test_a_reservation_made_through_another_host_expires_on_the_boards_host(hosts):
    """A reservation of h2's board made through h1 is ended by h2 when its
    time is up (h2 powers the board off); h1's ticks leave it alone."""
    one, two = hosts
    response = one.request("POST", "/boards/h2-p/reserve", "alice", {"timeout": 30})
    settle(one, two)
    assert response.status == 200, response.body
    one.request("POST", "/boards/h2-p/attrs", "alice", {"power": "on"})
    settle(one, two)
    assert two.power_state == {1: True}
    one.tick(31)
    assert one.board("h2-p")["state"] == "reserved"
    two.tick(31)
    settle(two, one)
    assert one.board("h2-p")["state"] == "free"
    assert two.power_state == {1: False}
    ended = one.request(
        "GET", f"/reservations/{response.body['reservation_id']}", "alice"
    )
    assert ended.body["cause"] == "expire"


def test_a_host_back_from_the_dead_ends_what_expired_while_it_was_gone(hosts):
    """While h2 is silent its board's reservation runs out: h1 shows the
    board down and still held; back, h2 powers it off and frees it, and the
    audit log shows h2 going down, coming back, and the expiry."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    one.request("POST", "/boards/h2-p/attrs", "alice", {"timeout": 10, "power": "on"})
    settle(one, two)
    assert two.power_state == {1: True}
    one.tick(60)
    board = one.request("GET", "/boards/h2-p", "root").body
    assert board["host_down"] is True and board["state"] == "reserved"
    two.tick(60)
    settle(two, one)
    assert one.board("h2-p")["state"] == "free"
    assert two.power_state == {1: False}
    seen = [
        (e["action"], e["board"], e["detail"])
        for e in reversed(one.request("GET", "/events", "root").body["events"])
    ]
    steps = [
        (action, board)
        for action, board, _ in seen
        if action in ("host_down", "host_up", "releasing", "freed")
    ]
    assert steps == [
        ("host_down", None),
        ("host_up", None),
        ("releasing", "h2-p"),
        ("freed", "h2-p"),
    ]
    down = next(detail for action, _, detail in seen if action == "host_down")
    assert down.startswith("host h2 is down")


def test_malformed_host_credentials_are_refused_with_401(hosts):
    """Host credentials that are not ASCII, too long, or a host that never
    beat are refused as bad credentials (401), with or without a body, and
    nothing is switched."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    key = one.api.forwarder.key.key.encode()
    two.pool.sql(
        "INSERT INTO hosts (name, started_at, heartbeat_at) VALUES ('h7', 0, 0) RETURNING name"
    )
    for header in (
        b"Bitelab-Host h1 \xe9" + key[1:],
        b"Bitelab-Host h1 " + key + b"\xe9",
        b"Bitelab-Host h1 " + b"k" * 5000,
        b"Bitelab-Host h7 " + key,
        b"Bitelab-Host h1",
    ):
        for method, path, body in (
            ("GET", "/boards/h2-p/console", None),
            ("POST", "/boards/h2-p/attrs", b'{"power": "on"}'),
        ):
            answer = raw(
                two,
                method,
                path,
                {"Authorization": [header], "X-Bitelab-User": [b"alice"]},
                body,
            )
            assert answer.get("status") == 401, (header, path, answer)
    assert two.power_state == {}


def follow(lab, user, path, method="GET", body=b""):
    """Start ``METHOD path`` on ``lab`` for ``user`` over a connection of its
    own (a ``StringTransport``); the connection's protocol."""
    lab.request("GET", "/whoami", user)
    site = server.Site(lab.api.resource(), reactor=lab.clock)
    connection = site.buildProtocol(IPv4Address("TCP", "10.0.0.9", 40000))
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.written = transport.value
    connection.dataReceived(
        b"%s /api/v1%s HTTP/1.1\r\nHost: lab\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: %d\r\n\r\n%s"
        % (method.encode(), path.encode(), lab.tokens[user].encode(), len(body), body)
    )
    return connection


def test_a_client_gone_before_the_boards_host_answers_takes_the_forward_along(
    hosts,
):
    """A client that leaves while h2 is still switching the power it asked
    for through h1 cancels h1's request to h2 (the API cancels the call of
    a client that has gone): h1 holds nothing for a host that may never
    answer."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    outcome, peers = [], one.api.forwarder.http

    class Recording:
        def request(self, *args, **kwargs):
            d = peers.request(*args, **kwargs)
            return d.addBoth(lambda result: outcome.append(result) or result)

    one.api.forwarder.http = Recording()
    connection = follow(one, "alice", "/boards/h2-p/attrs", "POST", b'{"power": "on"}')
    one.flush()
    assert [call.kind for call in two.calls.pending] == ["power"]
    assert outcome == []
    connection.connectionLost(Failure(ConnectionDone()))
    assert len(outcome) == 1 and outcome[0].check(ResponseNeverReceived)
    assert outcome[0].value.reasons[0].check(defer.CancelledError)


def test_a_client_gone_mid_forward_leaves_nothing_open_on_the_boards_host(hosts):
    """A client following h2's console through h1 that goes away ends the
    stream on h2 too: h2 counts no follower for it, and its later output
    goes nowhere."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    connection = follow(one, "alice", "/boards/h2-p/console?follow=1")
    settle(one, two)
    assert two.api._followers == {"alice": 1}
    two.consoles["h2-p"].received(b"booting\n")
    settle(one, two)
    assert b"booting" in connection.written()
    connection.connectionLost(Failure(ConnectionDone()))
    settle(one, two)
    assert two.api._followers == {}
    two.consoles["h2-p"].received(b"later\n")
    settle(one, two)
    assert two.api._followers == {}
    assert b"later" not in connection.written()


def test_a_relay_lets_go_of_a_client_gone_before_or_during_the_answer():
    """When the board's host answers a forwarded request whose client has
    gone meanwhile, or the client goes while the answer streams, the relay
    stops reading the answer (closing the connection to the board's host)
    and ends cleanly instead of failing on the dead request."""
    for gone_first in (True, False):
        request = server.Request(DummyChannel())
        if gone_first:
            request.connectionLost(Failure(ConnectionDone()))
        upstream, done = StringTransport(), defer.Deferred()
        relay = _Relay(request, done)
        relay.makeConnection(upstream)
        if not gone_first:
            assert not done.called and request.producer is relay
            request.connectionLost(Failure(ConnectionDone()))
        assert upstream.producerState == "stopped" and done.called
        relay.dataReceived(b"more output")
        relay.connectionLost(Failure(ConnectionDone()))


def test_a_relayed_console_given_up_before_attaching_closes_its_socket():
    """A relayed console whose browser left before attaching is given up by
    detaching a viewer that never attached: its socket to the board's host
    is closed, so that host serves no console for nobody."""
    socket = _RelaySocket()
    socket.state = socket.STATE_CLOSED
    access = RemoteConsoleAccess("h2-p", "h2", 1, socket)
    access.detach(object())
    assert socket._left and not access.current


def test_host_credentials_serve_only_the_requests_hosts_forward(hosts):
    """A host's credentials act for a user only on what hosts forward (power
    and attributes, console and its logs, the end of a maintenance): with
    them, nothing else is done as anyone, not even as an admin."""
    one, two = hosts
    reserved(one, two, "alice", "h2-a")
    host = {"Authorization": [one.api.forwarder.key.header()]}
    for method, path, user, body in (
        ("GET", "/whoami", "alice", None),
        ("GET", "/events", "root", None),
        ("DELETE", "/tokens/current", "alice", None),
        ("POST", "/login-link", "alice", b"{}"),
        ("POST", "/boards/h2-a/release", "root", b'{"force": true}'),
        ("POST", "/boards/h2-b/reserve", "root", b"{}"),
        ("POST", "/boards/h2-b/maintenance", "root", b"{}"),
    ):
        answer = raw(two, method, path, {**host, "X-Bitelab-User": [user]}, body)
        settle(one, two)
        assert answer.get("status") == 401, (path, answer)
    assert one.board("h2-a")["holder"] == "alice"
    assert one.board("h2-b")["state"] == "free"


def test_the_key_of_a_host_that_stopped_beating_is_refused(hosts):
    """A host's key is taken only while it beats: once h1 has been silent for
    host_timeout, its key (say, one overheard) forwards nothing to h2; when
    h1 beats again it is taken again."""
    one, two = hosts
    reserved(one, two, "alice", "h2-p")
    headers = forwarded(one, "alice")
    two.tick(6)
    answer = raw(two, "POST", "/boards/h2-p/attrs", headers, b'{"power": "on"}')
    settle(two)
    assert answer.get("status") == 401, answer
    assert two.power_state == {}
    one.clock.advance(6)
    one.tick()
    answer = raw(two, "POST", "/boards/h2-p/attrs", headers, b'{"power": "on"}')
    settle(one, two)
    assert answer.get("status") == 200, answer
    assert two.power_state == {1: True}
