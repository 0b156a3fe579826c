"""The bitelab HTTP API over treq, for the calls that change the lab.

Connection-level failures become ``errors.Unreachable`` with one line that
says what happened; answers are decoded by ``errors.decode_answer``.
"""

import attrs
from twisted.internet import defer, error
from twisted.internet.protocol import Protocol
from twisted.web import client as web_client
from twisted.web._newclient import RequestNotSent

from bitelab.client.calls import EVENTS_PATH, Calls
from bitelab.client.errors import ClientError, Unreachable, decode_answer
from bitelab.client.stream import STREAM_SILENCE, EventReader

#: Connection-level failures and what to tell the user about them.
_NETWORK_ERRORS = (
    (error.DNSLookupError, "cannot resolve the server's host name"),
    (error.ConnectionRefusedError, "connection refused (is the server running?)"),
    (error.TimeoutError, "timed out"),
    (defer.TimeoutError, "timed out"),
    (defer.CancelledError, "timed out"),
    (error.ConnectError, "cannot connect"),
    (web_client.ResponseNeverReceived, "the connection closed before an answer"),
    (web_client.ResponseFailed, "the connection broke during the answer"),
    (web_client.PartialDownloadError, "the connection broke during the answer"),
    (web_client.RequestTransmissionFailed, "the connection broke while sending"),
    (RequestNotSent, "the connection broke while sending"),
    (error.ConnectionLost, "the connection was lost"),
)


def describe_network_error(exc):
    """A one-line description of a connection-level exception, or ``None``."""
    for kind, text in _NETWORK_ERRORS:
        if isinstance(exc, kind):
            reasons = getattr(exc, "reasons", None)
            if reasons and kind is not web_client.PartialDownloadError:
                detail = reasons[0].getErrorMessage()
                if detail and "timed out" not in text:
                    return f"{text}: {detail}"
            return text
    return None


@attrs.define
class LabAPI(Calls):
    """A client of one bitelab server's ``/api/v1``.

    ``client`` is a ``treq.client.HTTPClient`` (or anything with its
    ``request`` method), ``clock`` provides ``callLater`` for the time-out.
    """

    client: object
    base_url: str
    token: str | None
    clock: object
    timeout: float = 30.0

    def call(self, method, path, body=None, auth=True, longer=0):
        """Run one request; a Deferred firing with the decoded JSON answer.

        The time-out is the client's, plus ``longer`` seconds for a call the
        server may hold on purpose (a reserve that waits).
        """
        d = defer.Deferred.fromCoroutine(self._call(method, path, body, auth))
        d.addTimeout(self.timeout + longer, self.clock, onTimeoutCancel=self._timed_out)
        d.addErrback(self._translate)
        return d

    def open_events(self, on_event):
        """Open ``GET /events/stream``: a Deferred firing with an ``EventStream``
        once the server has answered; ``on_event(ServerEvent)`` is called for
        every event from then on."""
        d = defer.Deferred.fromCoroutine(self._open_events(on_event))
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=self._timed_out)
        d.addErrback(self._translate)
        return d

    async def _open_events(self, on_event):
        url = self.url(EVENTS_PATH)
        headers = {
            b"Accept": [b"text/event-stream"],
            b"Authorization": [b"Bearer " + self.token.encode("utf-8")],
        }
        response = await self.client.request(
            "GET", url, headers=headers, unbuffered=True
        )
        if response.code != 200:
            chunks = []
            await response.collect(chunks.append)
            decode_answer("GET", url, response.code, b"".join(chunks))
        stream = EventStream(on_event, self.clock)
        response.deliverBody(stream)
        return stream

    def _timed_out(self, result, timeout):
        # Whatever the cancelled request failed with, the cause is the time-out.
        raise Unreachable(f"{self.base_url}: no answer, timed out after {timeout:g}s")

    async def _call(self, method, path, body, auth):
        url = self.url(path)
        headers = {b"Accept": [b"application/json"]}
        if auth:
            headers[b"Authorization"] = [b"Bearer " + self.token.encode("utf-8")]
        kwargs = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        response = await self.client.request(method, url, **kwargs)
        chunks = []
        await response.collect(chunks.append)
        return decode_answer(method, url, response.code, b"".join(chunks))

    def _translate(self, failure):
        if failure.check(ClientError):
            return failure
        exc = failure.value
        text = describe_network_error(exc)
        if text is None:
            if isinstance(exc, OSError):
                text = exc.strerror or str(exc)
            else:
                return failure
        raise Unreachable(f"{self.base_url}: {text}") from exc


class EventStream(Protocol):
    """The body of an event stream, handing each event to ``on_event``.

    ``ended`` fires (with ``None``) when the stream ends for any reason: the
    server closed it, the connection broke, ``close()`` was called, or
    nothing (not even a keep-alive) came for ``STREAM_SILENCE`` seconds.
    """

    def __init__(self, on_event, clock, silence=STREAM_SILENCE):
        self.on_event = on_event
        self.clock = clock
        self.silence = silence
        self.reader = EventReader()
        self.ended = defer.Deferred()
        self._timer = None

    def connectionMade(self):
        """Start watching for silence."""
        self._timer = self.clock.callLater(self.silence, self.close)

    def dataReceived(self, data):
        """Hand on the events ``data`` completes."""
        self._timer.reset(self.silence)
        for event in self.reader.feed(data):
            self.on_event(event)

    def connectionLost(self, reason):
        """The stream is over."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.ended.callback(None)

    def close(self):
        """Close the stream's connection."""
        self.transport.stopProducing()


def trust_root(cacert):
    """A Twisted trust root of the certificates in the PEM file ``cacert``."""
    from twisted.internet import ssl

    with open(cacert, "rb") as f:
        pem = f.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [part + marker for part in pem.split(marker) if b"-----BEGIN" in part]
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


def make_client(reactor, timeout, cacert=None):
    """A treq ``HTTPClient`` without persistent connections.

    With ``cacert``, HTTPS servers are checked against the certificates in
    that file instead of the system's.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    kwargs = {"pool": pool, "connectTimeout": timeout}
    if cacert:
        kwargs["contextFactory"] = BrowserLikePolicyForHTTPS(trust_root(cacert))
    return HTTPClient(Agent(reactor, **kwargs))
