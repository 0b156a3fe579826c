"""The console of another host's board, reached through that host.

A browser's console socket (or an SSH console login) is served by the
host it reached; when the board hangs off another host, that host opens the
board's console socket on the board's host (``/ws/console/BOARD`` at its
``host_url``, with the ``Bitelab-Host`` credentials of
``bitelab.forward``) and relays both ways.  The board's host applies every
rule of its own consoles: the holder only, the cut when the reservation
ends, slow readers dropped (the relay passes the browser's back-pressure
on).  ``RemoteConsoleAccess`` stands in for a ``bitelab.console.ConsoleAccess``.
"""

import json
from urllib.parse import urlsplit

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

from bitelab.console import TOO_SLOW
from bitelab.errors import Forbidden, NotFound, Unavailable

#: the console socket's path, before the board's name (``bitelab.webconsole``)
PATH = "/ws/console/"
#: bytes a viewer without back-pressure (an SSH session) may fall behind
#: before it is dropped, as the console hub drops its own
MAX_BACKLOG = 1024 * 1024
#: the errors a console socket's refusal may carry, by code
_ERRORS = {cls.code: cls for cls in (Forbidden, NotFound, Unavailable)}

log = Logger()


def refusal(message):
    """The ``BitelabError`` of a console socket's ``{"type": "error"}``."""
    cls = _ERRORS.get(message.get("code"), Unavailable)
    return cls(str(message.get("message") or "the console was refused"))


class RemoteConsoleAccess:
    """The access to a console another host serves; see the module."""

    def __init__(self, board, host, reservation, socket):
        self.board = board
        self.host = host
        self.reservation = reservation
        self.socket = socket
        self.viewer = None
        self.ended = False
        self._early = []

    @property
    def current(self):
        """Whether the board's host still serves this console."""
        return not self.ended

    def attach(self, viewer, replay=True):
        """Pass the console's output to ``viewer`` (the board's host replays
        the reservation's log itself)."""
        if self.ended:
            raise Unavailable(
                f"the reservation of {self.board} has ended; console closed"
            )
        self.viewer = viewer
        if hasattr(viewer, "registerProducer"):
            viewer.registerProducer(self.socket.transport, True)
        early, self._early = self._early, []
        for data in early:
            self.output(data)

    def detach(self, viewer):
        """The viewer has gone (or one that never attached gives the console
        up): so does the socket to the board's host."""
        if self.viewer is not None:
            if viewer is not self.viewer:
                return
            self.viewer = None
            if hasattr(viewer, "unregisterProducer"):
                viewer.unregisterProducer()
        self.ended = True
        self.socket.leave()

    def send(self, data):
        """Keystrokes for the board."""
        if not self.ended:
            self.socket.sendMessage(data, isBinary=True)

    def send_break(self):
        """Ask the board's host for a BREAK (it tells if it cannot)."""
        if not self.ended:
            self.socket.sendMessage(b'{"type": "break"}', isBinary=False)
        return True

    # -- from the board's host ------------------------------------------

    def output(self, data):
        viewer = self.viewer
        if viewer is None:
            if not self.ended:
                self._early.append(data)
            return
        viewer.write(data)
        pending = getattr(viewer, "pending", None)
        if pending is not None and pending() > MAX_BACKLOG:
            self.closed(TOO_SLOW)
            self.socket.leave()

    def notice(self, message):
        if self.viewer is not None and hasattr(self.viewer, "notice"):
            self.viewer.notice(message)

    def closed(self, reason):
        self.ended = True
        viewer, self.viewer = self.viewer, None
        if viewer is not None:
            if hasattr(viewer, "unregisterProducer"):
                viewer.unregisterProducer()
            viewer.close(reason)


class _RelaySocket(WebSocketClientProtocol):
    """The socket to the board's host: the first message says whether the
    console is ours; then output, notices and the end flow to the access."""

    access = None
    _left = False

    def onMessage(self, payload, isBinary):
        factory = self.factory
        if isBinary:
            if self.access is not None:
                self.access.output(payload)
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if self.access is None and not factory.ready.called:
            if kind == "attached":
                self.access = RemoteConsoleAccess(
                    factory.board, factory.host, message.get("reservation"), self
                )
                factory.ready.callback(self.access)
            elif kind == "error":
                factory.ready.errback(refusal(message))
        elif self.access is not None:
            if kind == "notice":
                self.access.notice(str(message.get("message", "")))
            elif kind == "closed":
                self.access.closed(str(message.get("reason", "console closed")))

    def onClose(self, wasClean, code, reason):
        factory = self.factory
        if not factory.ready.called:
            factory.ready.errback(
                Unavailable(
                    f"host {factory.host}, which board {factory.board} hangs "
                    f"off, did not open its console: {reason or code}"
                )
            )
        elif self.access is not None and not self._left:
            self.access.closed(reason or f"host {factory.host} closed the console")

    def leave(self):
        """Close the socket: the viewer here has gone."""
        self._left = True
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)


class _RelayFactory(WebSocketClientFactory):
    protocol = _RelaySocket


@defer.inlineCallbacks
def open_remote_console(reactor, host, url, board, headers, trust=None):
    """Deferred[RemoteConsoleAccess]: ``board``'s console on ``host``, whose
    API is at ``url``; ``headers`` prove this host and name the user,
    ``trust`` is the CA an https ``url`` is checked against (None: the
    system's)."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    factory = _RelayFactory(
        ("wss" if secure else "ws") + f"://{parts.netloc}{PATH}{board}",
        headers=headers,
        reactor=reactor,
    )
    factory.setProtocolOptions(autoPingInterval=30, autoPingTimeout=30)
    factory.host, factory.board, factory.ready = host, board, defer.Deferred()
    endpoint = HostnameEndpoint(reactor, parts.hostname, port, timeout=10)
    if secure:
        endpoint = wrapClientTLS(
            optionsForClientTLS(parts.hostname, trustRoot=trust), endpoint
        )
    try:
        yield endpoint.connect(factory)
    except Exception as e:  # noqa: BLE001 - any failure to connect is one answer
        log.info("console of {board} on {host}: {e}", board=board, host=host, e=e)
        raise Unavailable(
            f"host {host}, which board {board} hangs off, did not answer at "
            f"{parts.netloc}; try again"
        ) from None
    access = yield factory.ready
    return access
