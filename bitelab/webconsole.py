"""The browser's serial console: a WebSocket at ``/ws/console/BOARD`` (autobahn).

The same rules as the SSH consoles hold: the holder only (admins too),
several viewers at once, every session cut with a notice when the
reservation ends, a viewer that does not keep up dropped by the console
hub.  A socket belongs to the web session it was opened with: signing out
closes it.

What goes over the socket:

* server to browser, binary messages: what the board prints, starting
  with a replay of the current reservation's log;
* server to browser, text messages: one JSON object each, ``{"type":
  "attached", "board", "reservation"}`` once attached, ``{"type":
  "notice", "message"}`` (shown, not logged), ``{"type": "error",
  "message", "code"}`` when the console is refused (the socket then
  closes with code 4000 + the HTTP status, e.g. 4403), and ``{"type":
  "closed", "reason"}`` just before the server closes the socket;
* browser to server, binary messages: keystrokes for the board; text
  messages: ``{"type": "break"}`` sends a BREAK where the console can.

The socket is refused at the handshake (401 or 403) without a session
cookie, or when the browser says it comes from another site.

In a lab of several hosts, the console of another host's board is relayed
from that host (``bitelab.remoteconsole``); the host the board hangs off
takes such a socket with the ``Bitelab-Host`` credentials of
``bitelab.forward`` instead of a session.
"""

import json
from collections import Counter

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper

from bitelab.config import NAME_RE
from bitelab.errors import BitelabError, NotFound, Unauthorized, Unavailable
from bitelab.forward import USER_HEADER
from bitelab.websession import COOKIE, cookie_value, same_origin

#: the path of a board's console socket, before the board's name
PATH = "/ws/console/"
#: largest message a browser may send (keystrokes, a paste)
MAX_MESSAGE = 64 * 1024
#: seconds between the server's pings, and how long an answer may take
PING_INTERVAL = 30
PING_TIMEOUT = 30
#: longest close reason a WebSocket close frame carries (bytes of UTF-8)
MAX_CLOSE_REASON = 120

# not the protocol's ``log``: autobahn's own logger, which keeps its
# per-frame debug lines out of the server's log
log = Logger()


def _close_reason(text):
    data = text.encode("utf-8")[:MAX_CLOSE_REASON]
    return data.decode("utf-8", "ignore")


class _SocketViewer:
    """A console viewer writing to one socket (see ``bitelab.console``).

    The hub registers itself as the producer of the socket's connection,
    so a browser that reads slowly pushes back, and is dropped once it is
    too far behind.
    """

    def __init__(self, socket):
        self.socket = socket

    def registerProducer(self, producer, streaming):
        self.socket.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        if self.socket.connected:
            self.socket.transport.unregisterProducer()

    def write(self, data):
        self.socket.output(data)

    def notice(self, message):
        self.socket.say(type="notice", message=message)

    def close(self, reason):
        self.socket.cut(reason)


class ConsoleSocket(WebSocketServerProtocol):
    """One browser's console socket; see the module docstring."""

    access = None
    refusal = None
    session = None
    #: the host of the lab that relays this socket, if one does
    forwarded_by = None
    user = None
    board = None
    viewer = None
    #: the console is done with: nothing more is sent or passed on
    ended = False
    connected = False

    def connectionMade(self):
        """The connection was an HTTP request's: the web server has let go
        of it, but is still registered as its producer."""
        self.connected = True
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass  # none registered: not a connection twisted.web served
        super().connectionMade()

    def makeConnection(self, transport):
        """Talk to the connection itself, not through the connection cap's
        wrapper, which only passes calls on: autobahn reads the TLS details
        off the TLS connection, and refuses any other transport claiming
        TLS."""
        if isinstance(transport, ProtocolWrapper) and transport.transport is not None:
            transport = transport.transport
        super().makeConnection(transport)

    def connectionLost(self, reason):
        self.connected = False
        super().connectionLost(reason)

    @defer.inlineCallbacks
    def _user(self, request):
        """The user of the socket: its session's, or the one another host
        of the lab forwards it for."""
        sockets = self.factory
        header = request.headers.get("authorization", "")
        if header.startswith("Bitelab-Host ") and sockets.hosts is not None:
            try:
                self.forwarded_by, user = yield sockets.hosts.forwarded_user(
                    header, request.headers.get(USER_HEADER.decode().lower())
                )
            except Unauthorized as e:
                raise ConnectionDeny(401, e.message) from None
            return user
        # the Host header with its port (``request.host`` has lost it)
        if not same_origin(request.origin, request.headers.get("host")):
            raise ConnectionDeny(403, "cross-site WebSocket refused")
        cookie = cookie_value(request.headers.get("cookie"), COOKIE)
        session = sockets.sessions.find(cookie)
        if session is None:
            raise ConnectionDeny(401, "sign in first")
        try:
            user = yield sockets.sessions.check_token(session)
        except Unauthorized as e:
            raise ConnectionDeny(401, e.message) from None
        self.session = session
        return user

    @defer.inlineCallbacks
    def onConnect(self, request):
        """Check the session and the board before the socket opens."""
        sockets = self.factory
        user = self.user = yield self._user(request)
        name = request.path[len(PATH) :] if request.path.startswith(PATH) else ""
        try:
            if not NAME_RE.fullmatch(name) or len(name) > 128:
                raise NotFound(f"no board named {name!r}")
            self.board = name
            if sockets.open[user] >= sockets.max_per_user:
                raise Unavailable(
                    f"you have {sockets.open[user]} consoles open in the browser, "
                    "the most one user may; close one first"
                )
            self.access = yield sockets.manager.open_any_console(
                user, name, relay=self.forwarded_by is None
            )
        except BitelabError as e:
            self.refusal = e

    def onOpen(self):
        """Attach to the console, replaying this reservation's log first."""
        if not self.connected:
            # the browser left while its console was being opened
            self.ended = True
            if self.access is not None:
                self.access.detach(_SocketViewer(self))
            return
        if self.refusal is None:
            try:
                self._attach()
            except Unavailable as e:
                self.refusal = e
        if self.refusal is not None:
            error = self.refusal
            self.ended = True
            self.say(type="error", message=error.message, code=error.code)
            self.sendClose(4000 + error.status, _close_reason(error.message))

    def _attach(self):
        access = self.access
        if not access.current:
            raise Unavailable(
                f"the reservation of {self.board} has ended; console closed"
            )
        self.say(type="attached", board=self.board, reservation=access.reservation)
        self.viewer = _SocketViewer(self)
        self.factory.open[self.user] += 1
        if self.session is not None:
            self.factory.sessions.watch(self.session, self.signed_out)
        access.attach(self.viewer, replay=True)
        log.info(
            "{user} attached to the console of {board} from a browser",
            user=self.user,
            board=self.board,
        )

    def onMessage(self, payload, isBinary):
        """Keystrokes go to the board; ``{"type": "break"}`` sends a BREAK."""
        if self.ended or self.viewer is None:
            return
        if isBinary:
            self.access.send(payload)
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        wants_break = isinstance(message, dict) and message.get("type") == "break"
        if wants_break and not self.access.send_break():
            self.say(type="notice", message="this console cannot send a BREAK")

    def onClose(self, wasClean, code, reason):
        """The socket is closed: leave the console."""
        self.ended = True
        if self.viewer is not None:
            viewer, self.viewer = self.viewer, None
            self.access.detach(viewer)
            if self.session is not None:
                self.factory.sessions.unwatch(self.session, self.signed_out)
            self.factory.open[self.user] -= 1
            if not self.factory.open[self.user]:
                del self.factory.open[self.user]

    # -- from the console and the session -------------------------------

    def say(self, **message):
        """Send one JSON control message, while the socket is open."""
        if self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def output(self, data):
        """Console output for the browser."""
        if not self.ended and self.state == self.STATE_OPEN:
            self.sendMessage(data, isBinary=True)

    def cut(self, reason):
        """The hub let go of this viewer (reservation over, too slow, server
        stopping): tell the browser why, and close."""
        if self.ended:
            return
        self.ended = True
        self.say(type="closed", reason=reason)
        if self.state == self.STATE_OPEN:
            self.sendClose(1000, _close_reason(reason))

    def signed_out(self, reason):
        """The session ended: leave the console and close."""
        if self.viewer is not None:
            self.access.detach(self.viewer)
        self.cut(reason)


class ConsoleSockets(WebSocketServerFactory):
    """Makes the console sockets; knows the board manager, the web sessions
    and how many consoles each user has open (``max_per_user`` at most)."""

    protocol = ConsoleSocket

    #: checks the credentials of other hosts (``bitelab.forward.HostAuthority``)
    hosts = None

    def __init__(self, manager, sessions, max_per_user=8, reactor=None):
        super().__init__(reactor=reactor)
        self.manager = manager
        self.sessions = sessions
        self.max_per_user = max_per_user
        self.open = Counter()
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE,
            maxMessagePayloadSize=MAX_MESSAGE,
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_TIMEOUT,
            # a request without an upgrade is refused, not shown a status page
            webStatus=False,
            # a browser breaking the rules is told why (e.g. 1009, too big)
            failByDrop=False,
        )
