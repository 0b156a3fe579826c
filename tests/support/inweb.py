"""The web UI in-process: an ``InLab`` served by the real site, driven over
``StringTransport`` connections.

``WebLab`` puts the web UI (``bitelab.web.WebService``) in front of the
in-process lab's API, inside the server's own ``GuardedSite`` and connection
cap, as ``twistd`` does.  Its ``connect`` opens a client connection on a
``StringTransport``: requests are written as bytes, and every answer is
there at once (the database, the clock and the setup script are all
driven by the test, see ``support.inlab``).  WebSockets go through the
same connections, taken over from ``twisted.web`` as in the server; the
helpers here write and read their frames.
"""

import http.client
import io
import json
import os
import struct

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from bitelab.httpserver import GuardedSite, LimitedHTTPFactory
from bitelab.web import WebService
from bitelab.websession import COOKIE, LOGIN_COOKIE
from support.inlab import InLab

HOST = "lab.example:8080"
ORIGIN = f"http://{HOST}"


class WebLab(InLab):
    """An ``InLab`` with the web UI in front of its API (see the module)."""

    def start(self):
        super().start()
        self.web = WebService(self.api, self.manager, self.token_store, self.clock)
        site = GuardedSite(
            self.web.root, self.token_store.authenticate, reactor=self.clock
        )
        site.web_sessions = self.web.sessions
        self.site = LimitedHTTPFactory(site, 64)
        # autobahn's timers (handshake, ping, close) run on txaio's loop
        txaio.config.loop = self.clock

    def close(self):
        txaio.config.loop = None
        super().close()

    def connect(self, secure=False):
        """A new client connection: a ``Client``."""
        address = IPv4Address("TCP", "10.0.0.7", 40000)
        proto = self.site.buildProtocol(address)
        transport = TCPLikeTransport(peerAddress=address)
        if secure:
            # what twisted.web asks of a connection to know it is TLS
            alsoProvides(transport, ISSLTransport)
            # a TLS transport is a TCP one, which twisted.web tunes
            transport.setTcpNoDelay = lambda enabled: None
        # twisted.web registers the connection itself as the producer of
        # its transport, as a real TCP connection would have it
        proto.makeConnection(transport)
        return Client(proto, transport)

    def request(
        self,
        method,
        path,
        user=None,
        body=None,
        headers=None,
        cookie=None,
        secure=False,
        answer=False,
    ):
        """An HTTP request on a new connection: a ``Reply``.

        ``user`` signs it with that user's API token; ``cookie`` is a
        ``Browser``'s cookies; ``secure`` makes the connection TLS;
        ``answer`` completes the setup-script and power calls it makes
        before reading the answer.
        """
        all_headers = {"Host": HOST}
        if user is not None:
            if user not in self.tokens:
                self.tokens[user] = self._run(self.token_store.issue(user))
            all_headers["Authorization"] = f"Bearer {self.tokens[user]}"
        if cookie is not None:
            all_headers["Cookie"] = cookie
        all_headers.update(headers or {})
        data = b""
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        client = self.connect(secure=secure)
        client.send_request(method, path, all_headers, data)
        while answer and self.calls.pending:
            self.complete(0)
        return client.reply()

    def browser(self, user):
        """A ``Browser`` signed in as ``user`` with their API token."""
        browser = Browser(self)
        reply = browser.sign_in_with_token(self.tokens_for(user))
        assert reply.status == 200, reply.body
        return browser

    def tokens_for(self, user):
        """``user``'s API token (one is made if needed)."""
        if user not in self.tokens:
            self.tokens[user] = self._run(self.token_store.issue(user))
        return self.tokens[user]


class TCPLikeTransport(StringTransport):
    """A ``StringTransport`` that, like a TCP connection, takes an
    ``unregisterProducer`` with no producer registered (autobahn does that
    when it drops a connection)."""

    def unregisterProducer(self):
        self.producer = None
        self.streaming = None


class Client:
    """One client connection to the site."""

    def __init__(self, proto, transport):
        self.proto = proto
        self.transport = transport
        self.read_so_far = 0
        self.lost = False

    def settle(self):
        """If the server closed the connection, tell its protocol the
        connection is lost, as a real transport would."""
        if self.transport.disconnecting and not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))

    def send_request(self, method, path, headers, data=b""):
        lines = [f"{method} {path} HTTP/1.1"]
        lines += [f"{key}: {value}" for key, value in headers.items()]
        if data or method in ("POST", "PUT", "DELETE"):
            lines.append(f"Content-Length: {len(data)}")
        self.proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + data)

    def reply(self):
        """The HTTP answer written so far, parsed: a ``Reply``."""
        return Reply(self.transport.value())

    def new_bytes(self):
        """What the server wrote since the last call."""
        data = self.transport.value()[self.read_so_far :]
        self.read_so_far = len(self.transport.value())
        return data

    @property
    def closed(self):
        return self.transport.disconnecting or self.transport.disconnected


class _Socket:
    def __init__(self, data):
        self.data = data

    def makefile(self, mode):
        return io.BytesIO(self.data)


class Reply:
    """A parsed HTTP answer: ``status``, ``headers`` (an ``HTTPMessage``),
    ``body`` (bytes), ``json`` (parsed, or None) and ``cookies``."""

    def __init__(self, raw):
        self.raw = raw
        response = http.client.HTTPResponse(_Socket(raw))
        response.begin()
        self.status = response.status
        self.headers = response.msg
        self.body = response.read() if response.status != 101 else b""
        try:
            self.json = json.loads(self.body)
        except ValueError:
            self.json = None

    @property
    def cookies(self):
        """``{name: (value, [attributes])}`` of the ``Set-Cookie`` headers."""
        found = {}
        for line in self.headers.get_all("Set-Cookie") or []:
            parts = [p.strip() for p in line.split(";")]
            name, _, value = parts[0].partition("=")
            found[name] = (value, parts[1:])
        return found

    @property
    def error_code(self):
        return (
            self.json["error"]["code"] if self.json and "error" in self.json else None
        )


class Browser:
    """A browser's cookie jar and the CSRF token of its pages."""

    def __init__(self, lab):
        self.lab = lab
        self.session = None
        self.login_check = None
        self.csrf = None

    @property
    def cookie(self):
        parts = []
        if self.session:
            parts.append(f"{COOKIE}={self.session}")
        if self.login_check:
            parts.append(f"{LOGIN_COOKIE}={self.login_check}")
        return "; ".join(parts) or None

    def keep(self, reply):
        for name, (value, attributes) in reply.cookies.items():
            gone = "Max-Age=0" in attributes
            if name == COOKIE:
                self.session = None if gone else value
            elif name == LOGIN_COOKIE:
                self.login_check = None if gone else value
        return reply

    def get(self, path, **kw):
        return self.keep(self.lab.request("GET", path, cookie=self.cookie, **kw))

    def change(self, method, path, body=None, csrf=True, headers=None, answer=True):
        """A request that changes something, with the page's CSRF token."""
        all_headers = {"Origin": ORIGIN}
        if csrf:
            all_headers["X-CSRF-Token"] = self.csrf
        all_headers.update(headers or {})
        return self.keep(
            self.lab.request(
                method,
                path,
                body=body,
                cookie=self.cookie,
                headers=all_headers,
                answer=answer,
            )
        )

    def open_login_page(self):
        reply = self.get("/login")
        assert reply.status == 200
        return reply

    def sign_in(self, headers, next_page=None):
        self.open_login_page()
        all_headers = {"Origin": ORIGIN, "X-Login-CSRF": self.login_check}
        all_headers.update(headers)
        path = "/login" + (f"?next={next_page}" if next_page else "")
        reply = self.keep(
            self.lab.request("POST", path, cookie=self.cookie, headers=all_headers)
        )
        if reply.status == 200:
            self.csrf = self.page_csrf()
        return reply

    def sign_in_with_token(self, token, **kw):
        return self.sign_in({"Authorization": f"Bearer {token}"}, **kw)

    def sign_in_with_link(self, path, **kw):
        code = path.split("#code=", 1)[1]
        return self.sign_in({"X-Login-Code": code}, **kw)

    def page_csrf(self):
        """The CSRF token in the lab page, as the page's scripts read it."""
        page = self.get("/")
        if page.status != 200:
            return None
        marker = b'<meta name="bitelab-csrf" content="'
        start = page.body.index(marker) + len(marker)
        return page.body[start : page.body.index(b'"', start)].decode()


# -- WebSocket frames ------------------------------------------------------------

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def ws_upgrade(client, path, cookie, origin=ORIGIN):
    """Send a WebSocket upgrade request for ``path`` on ``client``."""
    headers = {
        "Host": HOST,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    if origin is not None:
        headers["Origin"] = origin
    if cookie is not None:
        headers["Cookie"] = cookie
    client.send_request("GET", path, headers)


def ws_frame(opcode, payload):
    """A masked client frame (clients must mask theirs)."""
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def ws_frames(data):
    """Parse the server's (unmasked) frames: ``([(opcode, payload)...],
    bytes left over)``."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        at = 2
        if length == 126:
            length, at = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, at = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < at + length:
            break
        frames.append((opcode, data[at : at + length]))
        data = data[at + length :]
    return frames, data


class Socket:
    """A browser's console WebSocket over one ``Client``."""

    def __init__(self, client):
        self.client = client
        head = client.new_bytes()
        self.handshake = head[: head.index(b"\r\n\r\n") + 4]
        self.pending = head[len(self.handshake) :]
        self.frames = []

    @property
    def status(self):
        return int(self.handshake.split(b" ", 2)[1])

    def read(self):
        """Every frame the server sent so far (also kept in ``frames``)."""
        self.client.settle()
        self.pending += self.client.new_bytes()
        frames, self.pending = ws_frames(self.pending)
        self.frames += frames
        return frames

    def messages(self):
        """The JSON control messages received so far."""
        self.read()
        return [json.loads(p) for op, p in self.frames if op == TEXT]

    def output(self):
        """The console bytes received so far."""
        self.read()
        return b"".join(p for op, p in self.frames if op == BINARY)

    def close_code(self):
        """The code of the server's close frame, or None."""
        self.read()
        for op, payload in self.frames:
            if op == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if payload else 1005
        return None

    def send_binary(self, data):
        self.client.proto.dataReceived(ws_frame(BINARY, data))

    def send_text(self, text):
        self.client.proto.dataReceived(ws_frame(TEXT, text.encode()))


def open_socket(lab, board, browser=None, origin=ORIGIN):
    """Open ``board``'s console socket from ``browser``: a ``Socket``."""
    client = lab.connect()
    ws_upgrade(
        client,
        f"/ws/console/{board}",
        browser.cookie if browser is not None else None,
        origin,
    )
    return Socket(client)
