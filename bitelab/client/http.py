"""The bitelab HTTP API seen from the client: one method per call.

Every failure leaves this module as one of three exceptions, so the command
line can turn it into a one-line message and an exit status:
``Refused`` (the server said no, 4xx), ``Failed`` (the server broke, 5xx or an
answer that is not the API's JSON) and ``Unreachable`` (no answer at all).
"""

import json
from urllib.parse import quote

import attrs
from twisted.internet import defer, error
from twisted.web import client as web_client
from twisted.web._newclient import RequestNotSent


class ClientError(Exception):
    """Base of the errors a call can end with; ``str()`` is one line for a user."""


class Refused(ClientError):
    """The server refused the request (4xx); ``body`` is its JSON error, if any."""

    def __init__(self, status, code, message, body=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class Failed(ClientError):
    """The server answered, but with a 5xx status or something that is not JSON."""

    def __init__(self, message, body=None):
        super().__init__(message)
        self.body = body


class Unreachable(ClientError):
    """No answer: the connection failed, was cut, or the request timed out."""


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
class LabAPI:
    """A client of one bitelab server's ``/api/v1``.

    ``client`` is a ``treq.client.HTTPClient`` (or anything with its
    ``request`` method), ``clock`` provides ``callLater`` for the time-out.
    """

    client: object
    base_url: str
    token: str | None
    clock: object
    timeout: float = 30.0

    def url(self, path):
        """The absolute URL of ``path`` under ``/api/v1``."""
        return self.base_url.rstrip("/") + "/api/v1" + path

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
        raw = await _read_body(response)
        return _decode(method, url, response.code, raw)

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

    def info(self):
        """``GET /info``: server name, version, SSH port and time (no token)."""
        return self.call("GET", "/info", auth=False)

    def whoami(self):
        """``GET /whoami``: the token's user and whether it is an admin."""
        return self.call("GET", "/whoami")

    def revoke_token(self):
        """``DELETE /tokens/current``: revoke the token in use."""
        return self.call("DELETE", "/tokens/current")

    def classes(self):
        """``GET /classes``: the board classes with their free and total counts."""
        return self.call("GET", "/classes")

    def boards(self):
        """``GET /boards``: every board."""
        return self.call("GET", "/boards")

    def board(self, name):
        """``GET /boards/NAME``: one board."""
        return self.call("GET", "/boards/" + _segment(name))

    def reserve(self, name, sshpubkey=None, timeout=None):
        """``POST /boards/NAME_OR_CLASS/reserve``: the board reserved."""
        body = {}
        if sshpubkey is not None:
            body["sshpubkey"] = sshpubkey
        if timeout is not None:
            body["timeout"] = timeout
        return self.call("POST", f"/boards/{_segment(name)}/reserve", body)

    def release(self, name, force=False):
        """``POST /boards/NAME/release``: the board after release."""
        body = {"force": True} if force else {}
        return self.call("POST", f"/boards/{_segment(name)}/release", body)

    def maintenance(self, name, reason):
        """``POST /boards/NAME/maintenance``: take a board out (admins)."""
        return self.call(
            "POST", f"/boards/{_segment(name)}/maintenance", {"reason": reason}
        )

    def end_maintenance(self, name):
        """``DELETE /boards/NAME/maintenance``: back in service (admins)."""
        return self.call("DELETE", f"/boards/{_segment(name)}/maintenance")

    def set_attrs(self, name, values):
        """``POST /boards/NAME/attrs``: change power or timeout; the board after."""
        return self.call("POST", f"/boards/{_segment(name)}/attrs", values)


def _segment(name):
    return quote(name, safe="")


async def _read_body(response):
    chunks = []
    await response.collect(chunks.append)
    return b"".join(chunks)


def _decode(method, url, status, raw):
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        document = None
    where = f"{method} {url}"
    if 200 <= status < 300:
        if document is None:
            raise Failed(f"{where}: HTTP {status} but the answer is not JSON")
        return document
    error_body = document.get("error") if isinstance(document, dict) else None
    if isinstance(error_body, dict) and "message" in error_body:
        code = str(error_body.get("code", status))
        message = " ".join(str(error_body["message"]).split())
    else:
        code, message = str(status), f"{where}: HTTP {status} without an API error"
        document = None
    if 400 <= status < 500:
        raise Refused(status, code, message, document)
    raise Failed(f"server error ({code}): {message}", document)
