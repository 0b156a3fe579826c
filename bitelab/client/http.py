"""The bitelab HTTP API over treq, for the calls that change the lab.

Connection-level failures become ``errors.Unreachable`` with one line that
says what happened; answers are decoded by ``errors.decode_answer``.
"""

import attrs
from twisted.internet import defer, error
from twisted.web import client as web_client
from twisted.web._newclient import RequestNotSent

from bitelab.client.calls import Calls
from bitelab.client.errors import ClientError, Unreachable, decode_answer

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

    def call(self, method, path, body=None, auth=True):
        """Run one request; a Deferred firing with the decoded JSON answer."""
        d = defer.Deferred.fromCoroutine(self._call(method, path, body, auth))
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=self._timed_out)
        d.addErrback(self._translate)
        return d

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
