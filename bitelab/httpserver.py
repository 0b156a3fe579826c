"""The HTTP server around the API: connection cap, and bodies judged by headers.

``twisted.web`` stores a request's whole body (in a temporary file when it
is large) before the resource sees it.  ``LabRequest`` decides from the
headers first: a body larger than ``max_body`` is answered 413, a body
without a well-formed ``Authorization: Bearer`` header (or a web session
cookie with its CSRF token, see ``bitelab.websession``) 401, both before
a byte of it is read, and the connection is closed.  A token is checked
while the (bounded, in-memory) body arrives; a bad one is answered 401 at
once.  Chunked bodies are cut off at ``max_body`` too.  After such an
answer the server stops sending, discards what the client still sends for
up to ``LINGER`` seconds (closing at once with unread data would reset the
connection, and the client might lose the answer), then closes.

``LimitedHTTPFactory`` keeps at most ``max_connections`` connections open
(see ``bitelab.limits``): when full, a new connection pushes out the
oldest idle one of the busiest source; if none is idle it is answered 503
and closed.  A connection is idle while no request on it is being served.
"""

import io
import json
import re

from twisted.internet import protocol
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web import server
from zope.interface import implementer

from bitelab.errors import TooLarge, Unauthorized
from bitelab.limits import ConnectionLimiter

#: largest request body accepted, in bytes
MAX_BODY = 64 * 1024
#: seconds a refused body is read and thrown away before the connection closes
LINGER = 5.0
BEARER_RE = re.compile(r"Bearer\s+(\S+)")

_REASONS = {
    401: b"Unauthorized",
    413: b"Content Too Large",
    503: b"Service Unavailable",
}

log = Logger()


def error_response(status, code, message, extra=()):
    """A whole HTTP/1.1 response carrying the API's JSON error, closing the
    connection; for answers given outside ``twisted.web``'s request cycle."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"Content-Type: application/json",
        b"Cache-Control: no-store",
        b"Connection: close",
        b"Content-Length: %d" % len(body),
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class LabRequest(server.Request):
    """A request whose body is refused from its headers (see the module)."""

    # bodies are JSON: Twisted need not parse the Content-Type of every POST
    # (through the email package) looking for an HTML form
    _parsePOSTFormSubmission = False

    _refused = False
    _receiving = False
    _linger = None

    def gotLength(self, length):
        """Headers are in: refuse the body now, or read it into memory."""
        self.content = io.BytesIO()
        if length == 0:
            return
        self._receiving = True
        site = self.channel.site
        if length is not None and length > site.max_body:
            self._refuse(TooLarge(_too_large(site.max_body)))
            return
        header = self.getHeader(b"Authorization") or b""
        if header.startswith(b"Bitelab-Host ") and site.authenticate_host is not None:
            # another host of the lab forwarding a request
            site.authenticate_host(header.decode("latin-1")).addErrback(self._bad_token)
            return
        match = BEARER_RE.fullmatch(header.decode("latin-1"))
        if (
            match is None
            and site.web_sessions is not None
            and site.web_sessions.admits_body(self)
        ):
            return
        if match is None:
            self._refuse(
                Unauthorized("a request body needs Authorization: Bearer TOKEN")
            )
            return
        site.authenticate(match.group(1)).addErrback(self._bad_token)

    def _bad_token(self, reason):
        # Other failures (the database) are for the resource to report.
        if reason.check(Unauthorized) and self._receiving:
            self._refuse(reason.value)

    def handleContentChunk(self, data):
        """Keep ``data`` unless the body grows beyond ``max_body``."""
        if self._refused:
            return
        limit = self.channel.site.max_body
        if self.content.tell() + len(data) > limit:
            self._refuse(TooLarge(_too_large(limit)))
            return
        self.content.write(data)

    def requestReceived(self, command, path, version):
        """The body is complete: serve the request, the connection busy meanwhile."""
        if self._refused:
            # the rest of a refused body has been thrown away
            self.channel.loseConnection()
            return
        self._receiving = False
        site, connection = self.channel.site, self.channel.transport
        site.connection_busy(connection, True)
        self.notifyFinish().addBoth(lambda _: site.connection_busy(connection, False))
        super().requestReceived(command, path, version)

    def _refuse(self, error):
        """Answer ``error`` before the body is read and close the connection."""
        status = error.status
        self._refused = True
        self._receiving = False
        # no "100 Continue" after the answer
        self.requestHeaders.removeHeader(b"Expect")
        extra = [b'WWW-Authenticate: Bearer realm="bitelab"'] if status == 401 else []
        transport = self.channel.transport
        transport.write(error_response(status, error.code, error.message, extra))
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        self._linger = self.channel.callLater(LINGER, transport.abortConnection)
        log.info(
            "HTTP request from {peer} refused before its body: {status} {message}",
            peer=_host(transport.getPeer()),
            status=status,
            message=error.message,
        )

    def connectionLost(self, reason):
        """The connection is gone: nothing left to linger for."""
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)


def _too_large(limit):
    return f"request body must be at most {limit} bytes"


def _host(address):
    return getattr(address, "host", str(address))


class GuardedSite(server.Site):
    """The API's ``Site``: ``LabRequest``s, checking tokens with ``authenticate``.

    ``authenticate(token)`` returns a Deferred failing with ``Unauthorized``
    for a bad token.
    """

    requestFactory = LabRequest
    #: the web UI's sessions, whose requests may have bodies too
    web_sessions = None
    #: ``authenticate_host(header)``: a Deferred failing with ``Unauthorized``
    #: unless another host of the lab sent the request (None: one host)
    authenticate_host = None

    def __init__(self, resource, authenticate, max_body=MAX_BODY, **kwargs):
        super().__init__(resource, **kwargs)
        self.authenticate = authenticate
        self.max_body = max_body
        self.limiter = None

    def connection_busy(self, connection, busy):
        """A request on ``connection`` started (``busy``) or ended."""
        if self.limiter is not None:
            self.limiter.set_evictable(connection, not busy)


class _Busy(protocol.Protocol):
    """Tells a client over the connection cap to come back later, and closes."""

    def connectionMade(self):
        self.transport.write(
            error_response(
                503,
                "unavailable",
                "the server has too many connections open; try again shortly",
            )
        )
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class LimitedHTTPFactory(policies.WrappingFactory):
    """Listens for ``site``, holding at most ``max_connections`` (see module)."""

    def __init__(self, site, max_connections):
        super().__init__(site)
        self.limiter = ConnectionLimiter(max_connections)
        site.limiter = self.limiter
        # whether the limit was met since the count was last low: log once
        self._full = False

    def acceptableProtocols(self):
        """The site's protocols, for TLS's protocol negotiation (ALPN)."""
        return self.wrappedFactory.acceptableProtocols()

    def buildProtocol(self, addr):
        """A tracked HTTP connection, after making room; or a 503 answer."""
        connection = super().buildProtocol(addr)
        admitted, victim = self.limiter.admit(connection, _host(addr))
        if (victim is not None or not admitted) and not self._full:
            self._full = True
            log.warn(
                "HTTP connections at the limit ({limit}): closing idle ones"
                " or refusing new ones",
                limit=self.limiter.max_total,
            )
        if victim is not None:
            victim.transport.abortConnection()
        return connection if admitted else _Busy()

    def unregisterProtocol(self, p):
        """A connection closed."""
        super().unregisterProtocol(p)
        self.limiter.remove(p)
        if self._full and len(self.limiter) <= self.limiter.max_total // 2:
            self._full = False
            log.info("HTTP connections back to {count}", count=len(self.limiter))
