"""The API's read-only calls over the standard library's ``http.client``.

``bitelab list`` and the other commands that only read spend most of their
time starting up, and Twisted with treq takes several times longer to import
than the request itself takes; so they use this client, and treq does the
calls that change the lab.  Its methods are coroutines that never suspend
(the I/O blocks), so the CLI runs the same command code over either client;
``run_sync`` drives such a coroutine without a reactor.
"""

import http.client
import socket
from urllib.parse import urlsplit

from bitelab.client.calls import EVENTS_PATH, Calls, console_path
from bitelab.client.errors import Unreachable, decode_answer
from bitelab.client.stream import STREAM_SILENCE, EventReader

_CHUNK = 65536


def run_sync(coroutine):
    """The result of ``coroutine``, which must finish without suspending."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a quick call waited for a reactor")


def describe_os_error(exc):
    """One line for a connection-level ``OSError``."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the server's host name: {exc.strerror or exc}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the connection closed before an answer"
    if type(exc).__name__ == "SSLCertVerificationError":
        reason = getattr(exc, "verify_message", None) or exc
        return (
            f"the server's TLS certificate is not trusted ({reason}); give the "
            "lab's CA file with BITELAB_CACERT or the lab's cacert setting"
        )
    return exc.strerror or str(exc) or type(exc).__name__


class QuickAPI(Calls):
    """``GET`` calls to one lab with ``http.client``; see the module docstring."""

    def __init__(self, base_url, token, timeout=30.0, cacert=None):
        self.base_url = base_url
        self.token = token
        self.timeout = timeout
        self.cacert = cacert

    def _connect(self):
        parts = urlsplit(self.base_url)
        if parts.scheme == "https":
            import ssl

            try:
                context = ssl.create_default_context(cafile=self.cacert)
            except (OSError, ssl.SSLError) as exc:
                raise Unreachable(
                    f"cannot read the CA file {self.cacert}: "
                    f"{getattr(exc, 'strerror', None) or exc}"
                ) from exc
            return http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout, context=context
            )
        return http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=self.timeout
        )

    def _request(
        self, method, path, auth, accept="application/json", body_timeout=None
    ):
        """``(connection, response)`` of one request, the body still unread.

        ``body_timeout``: the longest silence while reading the body, if not
        the usual time-out.
        """
        headers = {"Accept": accept}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        parts = urlsplit(self.url(path))
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection = self._connect()
        try:
            connection.request(method, target, headers=headers)
            # the response keeps the socket even where the connection lets go
            sock = connection.sock
            response = connection.getresponse()
            if body_timeout is not None:
                sock.settimeout(body_timeout)
            return connection, response
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc):
        if isinstance(exc, TimeoutError | socket.timeout):
            text = f"no answer, timed out after {self.timeout:g}s"
        elif isinstance(exc, OSError):
            text = describe_os_error(exc)
        else:
            text = "the connection broke during the answer"
        return Unreachable(f"{self.base_url}: {text}")

    async def call(self, method, path, body=None, auth=True, longer=0):
        """Run one request without a body; the decoded JSON answer."""
        if body is not None or longer:
            raise ValueError("the quick client sends no bodies and waits for nothing")
        connection, response = self._request(method, path, auth)
        try:
            raw = self._read(response)
        finally:
            connection.close()
        return decode_answer(method, self.url(path), response.status, raw)

    async def console_log(self, name, out, follow=False, reservation=None):
        """Copy ``GET /boards/NAME/console`` to the binary file ``out``.

        With ``follow`` the copy goes on, without a time-out, until the server
        ends the stream (the reservation ended).
        """
        path = console_path(name, follow, reservation)
        connection, response = self._request("GET", path, auth=True)
        try:
            if response.status != 200:
                raw = self._read(response)
                decode_answer("GET", self.url(path), response.status, raw)
            if follow:
                connection.sock.settimeout(None)
            while chunk := self._read(response, _CHUNK):
                out.write(chunk)
                out.flush()
        finally:
            connection.close()

    async def follow_events(self, on_event, on_open=None, silence=STREAM_SILENCE):
        """Call ``on_event(ServerEvent)`` for each event of ``GET /events/stream``.

        ``on_open()`` is called once the server has accepted the request.
        Returns when the server ends the stream; ``Unreachable`` when the
        connection breaks or stays silent (not even a keep-alive) for
        ``silence`` seconds.
        """
        connection, response = self._request(
            "GET", EVENTS_PATH, True, "text/event-stream", body_timeout=silence
        )
        try:
            if response.status != 200:
                raw = self._read(response)
                decode_answer("GET", self.url(EVENTS_PATH), response.status, raw)
            if on_open is not None:
                on_open()
            reader = EventReader()
            while chunk := self._read_stream(response, silence):
                for event in reader.feed(chunk):
                    on_event(event)
        finally:
            connection.close()

    def _read_stream(self, response, silence):
        try:
            return response.read1(_CHUNK)
        except TimeoutError as exc:
            text = f"nothing on the event stream for {silence:g}s"
            raise Unreachable(f"{self.base_url}: {text}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from exc

    def _read(self, response, size=None):
        try:
            return response.read() if size is None else response.read1(size)
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from exc
