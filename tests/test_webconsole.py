"""The browser's console WebSocket in-process: the handshake's checks, the
replay then live output, keystrokes and BREAK, the same holder-only rules
as SSH consoles, cut-off at the end of the reservation and at sign-out,
and slow browsers dropped (``support.inweb``: the server's own site over
``StringTransport`` connections, autobahn's real protocol)."""

import copy
import json

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from bitelab.console import BREAK_SECONDS, TOO_SLOW
from bitelab.webconsole import MAX_MESSAGE
from support.inlab import RecordingPort
from support.inweb import CLOSE, WebLab, open_socket, ws_upgrade

BOARDS = """
setup_script = /bin/true;
classes { a { arch = x; } }
boards [
    { name = a1; brdclass = a; options = [ { cls = serialconsole, val = /dev/ttyX1 } ] },
    { name = a2; brdclass = a; },
]
"""


@pytest.fixture
def lab(tmp_path):
    """An in-process lab with its web UI."""
    made = WebLab(tmp_path, BOARDS)
    answer_all(made)
    yield made
    made.close()


def answer_all(lab):
    while lab.calls.pending:
        lab.complete(0)


def reserve(lab, browser, board="a1"):
    reply = browser.change("POST", f"/api/v1/boards/{board}/reserve", {})
    assert reply.status == 200, reply.body
    return reply.json


def test_holder_gets_the_replay_then_live_output_and_types(lab):
    """The holder's socket opens, says it is attached, replays this
    reservation's log, then streams what the board prints; keystrokes
    reach the serial port."""
    alice = lab.browser("alice")
    board = reserve(lab, alice)
    console = lab.consoles["a1"]
    console.received(b"U-Boot 2024.01\r\n")
    socket = open_socket(lab, "a1", alice)
    assert socket.status == 101
    attached = socket.messages()[0]
    assert attached == {
        "type": "attached",
        "board": "a1",
        "reservation": board["reservation_id"],
    }
    replay = socket.output()
    assert replay.startswith(b"=== bitelab: reserved by alice")
    assert replay.endswith(b"U-Boot 2024.01\r\n")
    console.received(b"login: ")
    assert socket.output() == replay + b"login: "
    socket.send_binary(b"root\r")
    assert console._port.written == [b"root\r"]


def test_several_viewers_see_the_same_output(lab):
    """Two sockets of the holder (two tabs) both get the board's output."""
    alice = lab.browser("alice")
    reserve(lab, alice)
    first, second = open_socket(lab, "a1", alice), open_socket(lab, "a1", alice)
    lab.consoles["a1"].received(b"both\r\n")
    assert first.output().endswith(b"both\r\n")
    assert second.output().endswith(b"both\r\n")


def test_another_user_is_refused_the_console(lab):
    """Someone who does not hold the board gets an error message and a close
    with 4403, and never a byte of the console; nothing they send reaches
    the board."""
    alice, bob = lab.browser("alice"), lab.browser("bob")
    reserve(lab, alice)
    lab.consoles["a1"].received(b"alice's secret\r\n")
    socket = open_socket(lab, "a1", bob)
    assert socket.status == 101
    [error] = socket.messages()
    assert error["type"] == "error" and error["code"] == "forbidden"
    assert "do not hold" in error["message"]
    assert socket.close_code() == 4403
    socket.send_binary(b"reboot\r")
    lab.consoles["a1"].received(b"more secrets\r\n")
    assert socket.output() == b""
    assert lab.consoles["a1"]._port.written == []


def test_admin_may_watch_a_reserved_board(lab):
    """Admins attach to any board's console, as over SSH."""
    reserve(lab, lab.browser("alice"))
    socket = open_socket(lab, "a1", lab.browser("root"))
    assert socket.messages()[0]["type"] == "attached"


def test_unknown_board_and_board_without_console(lab):
    """A board that does not exist, or has no console, is an error message."""
    alice = lab.browser("alice")
    for name, code in (("nope", 4404), ("a2", 4404)):
        socket = open_socket(lab, name, alice)
        assert socket.messages()[0]["type"] == "error"
        assert socket.close_code() == code


def test_handshake_needs_a_session_and_this_site(lab):
    """Without a session cookie, or with a signed-out one, the upgrade is
    refused with 401; from another site's page, or with no Origin at all,
    with 403: no socket opens."""
    alice = lab.browser("alice")
    reserve(lab, alice)
    assert open_socket(lab, "a1", None).status == 401
    assert open_socket(lab, "a1", alice, origin="http://evil.example").status == 403
    assert open_socket(lab, "a1", alice, origin=None).status == 403
    signed_out = lab.browser("alice")
    stale = copy.copy(signed_out)
    signed_out.change("POST", "/logout")
    assert open_socket(lab, "a1", stale).status == 401


def test_end_of_reservation_cuts_the_socket_with_a_notice(lab):
    """Releasing the board closes its console sockets at once with a
    message saying why; later output is not sent; a new socket of the old
    reservation is refused."""
    alice = lab.browser("alice")
    reserve(lab, alice)
    socket = open_socket(lab, "a1", alice)
    reply = alice.change("POST", "/api/v1/boards/a1/release", {})
    assert reply.status == 200
    closed = socket.messages()[-1]
    assert closed["type"] == "closed"
    assert "reservation of a1 ended" in closed["reason"]
    assert socket.close_code() == 1000
    before = socket.output()
    lab.consoles["a1"].received(b"next holder's output\r\n")
    assert socket.output() == before
    again = open_socket(lab, "a1", alice)
    assert again.messages()[0]["type"] == "error"


def test_sign_out_cuts_the_sessions_sockets(lab):
    """Signing out closes the session's console sockets; the reservation
    goes on."""
    alice = lab.browser("alice")
    reserve(lab, alice)
    socket = open_socket(lab, "a1", alice)
    assert alice.change("POST", "/logout").status == 200
    assert socket.messages()[-1] == {"type": "closed", "reason": "signed out"}
    assert lab.board("a1")["state"] == "reserved"
    lab.consoles["a1"].received(b"after\r\n")
    assert not socket.output().endswith(b"after\r\n")


def test_slow_browser_is_dropped_without_growing_memory(lab):
    """A browser whose connection stops taking data (the transport pauses
    the console) is dropped once it is a backlog's worth behind; the
    others carry on and the serial port is never held up."""
    alice = lab.browser("alice")
    reserve(lab, alice)
    console = lab.consoles["a1"]
    slow, fast = open_socket(lab, "a1", alice), open_socket(lab, "a1", alice)
    # the slow connection's buffers are full: its transport pauses its producer
    slow.client.transport.producer.pauseProducing()
    chunk = b"x" * 65536
    for _ in range(console.hub.max_backlog // len(chunk) + 2):
        console.received(chunk)
    assert len(console.hub) == 1
    assert slow.messages()[-1] == {"type": "closed", "reason": TOO_SLOW}
    assert fast.output().count(chunk) == console.hub.max_backlog // len(chunk) + 2


def test_break_where_the_console_can(lab):
    """``{"type": "break"}`` holds the line in BREAK for a moment on a
    console that can; one that cannot says so."""
    alice = lab.browser("alice")
    reserve(lab, alice)
    socket = open_socket(lab, "a1", alice)
    socket.send_text(json.dumps({"type": "break"}))
    assert socket.messages()[-1] == {
        "type": "notice",
        "message": "this console cannot send a BREAK",
    }

    class Serial:
        """What pyserial's ``Serial`` offers for BREAK: a settable line state."""

        def __init__(self):
            self.states = []

        @property
        def break_condition(self):
            return self.states[-1] if self.states else False

        @break_condition.setter
        def break_condition(self, value):
            self.states.append(value)

    port = RecordingPort()
    port._serial = Serial()
    lab.consoles["a1"]._port = port
    socket.send_text(json.dumps({"type": "break"}))
    assert port._serial.states == [True]
    lab.clock.advance(BREAK_SECONDS)
    assert port._serial.states == [True, False]
    socket.send_text("not json")
    socket.send_text(json.dumps({"type": "other"}))
    assert port.written == []


def test_oversized_message_closes_the_socket(lab):
    """A browser message over the limit closes the socket (1009) and is not
    passed to the board."""
    alice = lab.browser("alice")
    reserve(lab, alice)
    socket = open_socket(lab, "a1", alice)
    socket.send_binary(b"y" * (MAX_MESSAGE + 1))
    assert socket.close_code() == 1009
    assert lab.consoles["a1"]._port.written == []
    assert any(op == CLOSE for op, _ in socket.frames)


def test_consoles_per_user_are_capped(lab):
    """A user may keep a bounded number of console sockets open."""
    alice = lab.browser("alice")
    reserve(lab, alice)
    sockets = [open_socket(lab, "a1", alice) for _ in range(8)]
    assert all(s.messages()[0]["type"] == "attached" for s in sockets)
    ninth = open_socket(lab, "a1", alice)
    assert ninth.messages()[0]["code"] == "unavailable"
    assert ninth.close_code() == 4409


def test_a_browser_gone_while_the_console_opens_leaves_nothing_attached(lab):
    """A browser that goes away while its console is being looked up (the
    database is slow) is not attached once the lookup is done: no viewer
    stays on the board's console and its user's count of open consoles is
    back to none."""
    alice = lab.browser("alice")
    reserve(lab, alice)
    hub = lab.consoles["a1"].hub
    viewers = set(hub.viewers)
    real, held = lab.manager.open_console, []

    def slow(user, name):
        held.append(defer.Deferred())
        return held[-1].addCallback(lambda _: real(user, name))

    lab.manager.open_console = slow
    client = lab.connect()
    ws_upgrade(client, "/ws/console/a1", alice.cookie)
    assert held and client.transport.value() == b""
    client.proto.connectionLost(Failure(ConnectionDone()))
    held[0].callback(None)
    assert set(hub.viewers) == viewers
    assert lab.web.sockets.open == {}
