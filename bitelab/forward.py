"""Hosts of one lab forward hardware work to each other.

Every host answers the whole API, but power, console logs and the end of a
maintenance need the hardware of the board's own host.  The host that
receives such a request forwards it, as it came, to the board's host at
that host's ``host_url``, and relays the answer (a console that is
followed streams through, with back-pressure).  The client never needs to
know where a board hangs off.

The forwarded request carries ``Authorization: Bitelab-Host NAME KEY`` and
the user the forwarding host authenticated (token or web session) in
``X-Bitelab-User``.  ``KEY`` is a random key each host makes at start;
the others know only its hash, from the shared ``hosts`` table, as they
know only the hashes of tokens.  These credentials stand for a user only
on the requests hosts forward (``bitelab.api``, the console socket); a
forwarded request is never forwarded again.  Use an https ``host_url``
where the network between hosts is not trusted (``host_cacert`` names the
CA to check it against).
"""

import hashlib
import hmac
import re
import secrets
from urllib.parse import urlsplit

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from bitelab.config import USER_RE
from bitelab.errors import Unauthorized, Unavailable

#: ``Authorization`` of a request one host forwards to another (a key is
#: printable ASCII: anything else is no key, not a failure to hash it)
HOST_AUTH_RE = re.compile(
    r"Bitelab-Host ([A-Za-z0-9][A-Za-z0-9._-]{0,63}) ([!-~]{1,100})"
)
#: the header naming the user a forwarded request acts for
USER_HEADER = b"X-Bitelab-User"
#: response headers relayed from the board's host
RELAYED = (b"Content-Type", b"Cache-Control", b"Content-Disposition")


def hash_key(key):
    """The hash of a host key, as the ``hosts`` table keeps it."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


class HostKey:
    """This host's key: made at start, never stored; the others get its hash."""

    def __init__(self, host):
        self.host = host
        self.key = secrets.token_urlsafe(32)
        self.hash = hash_key(self.key)

    def header(self):
        """The ``Authorization`` value proving this host."""
        return f"Bitelab-Host {self.host} {self.key}".encode("ascii")


class HostAuthority:
    """Checks the ``Bitelab-Host`` credentials of forwarded requests: a
    host's key is taken while the host beats (a host silent for
    ``host_timeout`` seconds by ``clock`` sends nothing)."""

    def __init__(self, store, clock, host_timeout):
        self.store = store
        self.clock = clock
        self.host_timeout = host_timeout

    @defer.inlineCallbacks
    def verify(self, header):
        """Deferred[str]: the name of the host ``header`` proves;
        ``Unauthorized`` otherwise."""
        match = HOST_AUTH_RE.fullmatch(header)
        if match is None:
            raise Unauthorized("malformed host credentials")
        name, key = match.groups()
        row = yield self.store.host(name)
        if (
            row is None
            or not row["key_hash"]
            or not hmac.compare_digest(row["key_hash"], hash_key(key))
            or row["heartbeat_at"] <= self.clock.seconds() - self.host_timeout
        ):
            raise Unauthorized(f"host {name} did not prove itself")
        return name

    @defer.inlineCallbacks
    def forwarded_user(self, header, user):
        """Deferred[(str, str)]: the host ``header`` proves and the ``user``
        (its ``X-Bitelab-User``) it forwards for."""
        host = yield self.verify(header)
        if not USER_RE.fullmatch(user or ""):
            raise Unauthorized(f"host {host} forwarded a request for no valid user")
        return host, user

    @defer.inlineCallbacks
    def user(self, request, header):
        """Deferred[str]: the user a forwarded ``request`` acts for."""
        host, user = yield self.forwarded_user(
            header, (request.getHeader(USER_HEADER) or b"").decode("latin-1")
        )
        request.forwarded_by = host
        return user


@implementer(IPushProducer)
class _Relay(protocol.Protocol):
    """Writes the board's host's answer to the client's request as it comes,
    pausing the board's host while the client is slow."""

    def __init__(self, request, done):
        self.request = request
        self.done = done

    def connectionMade(self):
        if self.request.channel is None:
            # the client went away before the board's host answered
            self._client_gone(None)
            return
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(self._client_gone)

    def dataReceived(self, data):
        if not self.done.called:
            self.request.write(data)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.request.producer is self and self.request.channel is not None:
            self.request.unregisterProducer()
        if not self.done.called:
            self.done.callback(None)

    def _client_gone(self, _):
        if not self.done.called:
            self.done.callback(None)
            self.transport.stopProducing()

    def pauseProducing(self):
        self.transport.pauseProducing()

    def resumeProducing(self):
        self.transport.resumeProducing()

    def stopProducing(self):
        self.transport.stopProducing()


def trust_root(cacert):
    """The CA of ``cacert`` (a PEM file) to check other hosts against; None
    (the system's CAs) without one."""
    from twisted.internet import ssl

    if not cacert:
        return None
    with open(cacert, "rb") as f:
        return ssl.Certificate.loadPEM(f.read())


def http_client(reactor, trust=None):
    """The treq client hosts forward with: persistent connections, a
    connection time-out, and https checked against the CA ``trust`` (the
    system's CAs if None)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    policy = BrowserLikePolicyForHTTPS(trustRoot=trust)
    pool = HTTPConnectionPool(reactor, persistent=True)
    agent = Agent(reactor, contextFactory=policy, connectTimeout=10, pool=pool)
    return HTTPClient(agent)


class Forwarder:
    """Sends a request to the host a board hangs off and relays its answer.

    ``http`` is a treq-like client (``request(method, url, headers=...,
    data=...)``); ``key`` this host's ``HostKey``.
    """

    log = Logger()

    def __init__(self, store, key, http, clock, host_timeout, trust=None):
        self.store = store
        self.key = key
        self.http = http
        self.clock = clock
        self.host_timeout = host_timeout
        #: the CA other hosts' https ``host_url`` is checked against
        self.trust = trust

    @defer.inlineCallbacks
    def _reachable(self, host):
        """Deferred[dict]: the ``hosts`` row of ``host``, if it can be asked."""
        row = yield self.store.host(host)
        if row is None or not row["url"]:
            raise Unavailable(
                f"host {host}, which the board hangs off, gives no host_url "
                "to reach it at"
            )
        if row["heartbeat_at"] <= self.clock.seconds() - self.host_timeout:
            raise Unavailable(
                f"host {host}, which the board hangs off, is down; try again "
                "when it is back"
            )
        return row

    def _headers(self, user):
        return {
            b"Authorization": [self.key.header()],
            USER_HEADER: [user.encode("ascii")],
        }

    @defer.inlineCallbacks
    def open_console(self, user, host, board):
        """Deferred[RemoteConsoleAccess]: ``board``'s console, served by
        ``host``, for ``user``."""
        from bitelab.remoteconsole import open_remote_console

        row = yield self._reachable(host)
        headers = {
            name.decode("ascii"): value.decode("ascii")
            for name, (value,) in self._headers(user).items()
        }
        access = yield open_remote_console(
            self.clock, host, row["url"], board, headers, self.trust
        )
        return access

    @defer.inlineCallbacks
    def forward(self, request, host, user):
        """Deferred: ``request`` answered by ``host`` for ``user``."""
        if getattr(request, "forwarded_by", None) is not None:
            # the hosts disagree on where the board is: no ping-pong
            raise Unavailable(
                f"host {request.forwarded_by} sent a request for a board of "
                f"host {host} here; try again once the hosts agree"
            )
        row = yield self._reachable(host)
        request.content.seek(0)
        body = request.content.read()
        headers = self._headers(user)
        content_type = request.getHeader(b"Content-Type")
        if content_type is not None:
            headers[b"Content-Type"] = [content_type]
        url = row["url"] + request.uri.decode("ascii")
        try:
            response = yield self.http.request(
                request.method.decode("ascii"),
                url,
                headers=headers,
                data=body or None,
                unbuffered=True,
            )
        except Exception as e:  # noqa: BLE001 - any failure to reach it is one answer
            self.log.info(
                "forwarding {method} {uri} to {host} failed: {e}",
                method=request.method,
                uri=request.uri,
                host=host,
                e=e,
            )
            raise Unavailable(
                f"host {host}, which the board hangs off, did not answer at "
                f"{urlsplit(row['url']).netloc}; try again"
            ) from None
        request.setResponseCode(response.code)
        for name in RELAYED:
            values = response.headers.getRawHeaders(name)
            if values:
                request.setHeader(name, values[0])
        done = defer.Deferred()
        response.deliverBody(_Relay(request, done))
        yield done
