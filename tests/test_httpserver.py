"""The HTTP server around the API: bodies judged by their headers, and the
connection cap, driven in-process over ``StringTransport``s with a
``task.Clock`` (the end-to-end versions are in ``test_api_fuzz.py``)."""

import json

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bitelab.config import load_config
from bitelab.errors import Unauthorized
from bitelab.httpserver import LINGER, MAX_BODY, GuardedSite, LimitedHTTPFactory

GOOD = "bl_good"


class Recorder(Resource):
    """Answers ``/quick`` at once and keeps ``/slow`` open; records bodies."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.bodies = []

    def render(self, request):
        self.bodies.append(request.content.read())
        if request.path == b"/slow":
            return NOT_DONE_YET
        return b"done"


class Tokens:
    """Checks tokens like the token store; ``pending`` holds slow answers."""

    def __init__(self):
        self.pending = []

    def authenticate(self, token):
        if token == "bl_slow":
            d = defer.Deferred()
            self.pending.append(d)
            return d
        if token == GOOD:
            return defer.succeed("alice")
        return defer.fail(Unauthorized("invalid or revoked token"))


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def web(clock):
    """(factory, resource, tokens) of a capped site on ``clock``."""
    return make_web(clock, 3)


def make_web(clock, max_connections):
    resource, tokens = Recorder(), Tokens()
    site = GuardedSite(resource, tokens.authenticate, reactor=clock)
    return LimitedHTTPFactory(site, max_connections), resource, tokens


def connect(factory, host="10.0.0.1"):
    """A connection from ``host``: (protocol, transport)."""
    address = IPv4Address("TCP", host, 40000)
    proto = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    proto.makeConnection(transport)
    return proto, transport


def answer(transport):
    """(status, JSON body) of what the server wrote."""
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def headers(*lines, path=b"/quick"):
    return b"\r\n".join([b"POST " + path + b" HTTP/1.1", b"Host: x", *lines, b"", b""])


def test_oversized_body_is_refused_from_its_length(web, clock):
    """A Content-Length over the limit is answered 413 before any body byte,
    nothing reaches the resource, and the connection closes after lingering."""
    factory, resource, _ = web
    proto, transport = connect(factory)
    proto.dataReceived(
        headers(
            b"Content-Length: 100000000000", b"Authorization: Bearer " + GOOD.encode()
        )
    )
    status, body = answer(transport)
    assert status == 413
    assert body["error"] == {
        "code": "invalid",
        "message": f"request body must be at most {MAX_BODY} bytes",
    }
    proto.dataReceived(b"x" * 100000)  # thrown away
    assert resource.bodies == []
    assert not transport.disconnected
    clock.advance(LINGER)
    assert transport.disconnected


@pytest.mark.parametrize(
    "authorization",
    [None, b"Authorization: Basic eDp5", b"Authorization: Bearer"],
    ids=["none", "basic", "empty"],
)
def test_body_without_a_token_is_refused_before_it_is_read(web, authorization):
    """A body without ``Authorization: Bearer TOKEN`` gets 401 at once."""
    factory, resource, _ = web
    proto, transport = connect(factory)
    lines = [b"Content-Length: 10"] + ([authorization] if authorization else [])
    proto.dataReceived(headers(*lines))
    status, body = answer(transport)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert b'WWW-Authenticate: Bearer realm="bitelab"' in transport.value()
    proto.dataReceived(b"0123456789")
    assert resource.bodies == []


def test_bad_token_is_refused_while_the_body_arrives(web):
    """A well-formed but wrong token is answered 401 as soon as it is known
    to be wrong, without waiting for the body."""
    factory, resource, tokens = web
    proto, transport = connect(factory)
    proto.dataReceived(
        headers(b"Content-Length: 1000", b"Authorization: Bearer bl_slow")
    )
    assert transport.value() == b""
    proto.dataReceived(b"{" * 10)
    tokens.pending[0].errback(Unauthorized("invalid or revoked token"))
    status, body = answer(transport)
    assert status == 401 and body["error"]["message"] == "invalid or revoked token"
    assert resource.bodies == []


def test_good_token_body_reaches_the_resource(web):
    """A body with a good token is read (into memory) and served."""
    factory, resource, _ = web
    proto, transport = connect(factory)
    proto.dataReceived(
        headers(b"Content-Length: 5", b"Authorization: Bearer " + GOOD.encode())
        + b"hello"
    )
    assert resource.bodies == [b"hello"]
    assert transport.value().startswith(b"HTTP/1.1 200")


def test_chunked_body_is_cut_off_at_the_limit(web):
    """A chunked body with a token is refused 413 once it passes the limit,
    without waiting for its end; a chunked body without one gets 401."""
    factory, resource, _ = web
    proto, transport = connect(factory)
    proto.dataReceived(
        headers(
            b"Transfer-Encoding: chunked", b"Authorization: Bearer " + GOOD.encode()
        )
    )
    chunk = b"x" * 4096
    for _ in range(MAX_BODY // len(chunk)):
        proto.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert transport.value() == b""
    proto.dataReceived(b"1\r\nx\r\n")
    assert answer(transport)[0] == 413
    assert resource.bodies == []
    proto, transport = connect(factory)
    proto.dataReceived(headers(b"Transfer-Encoding: chunked"))
    assert answer(transport)[0] == 401


def test_expect_continue_gets_the_refusal_and_no_continue(web):
    """A client waiting for "100 Continue" gets the refusal instead."""
    factory, _, _ = web
    proto, transport = connect(factory)
    proto.dataReceived(headers(b"Content-Length: 99999999", b"Expect: 100-continue"))
    assert transport.value().startswith(b"HTTP/1.1 413")
    assert b"100 Continue" not in transport.value()


def test_refused_body_that_ends_closes_at_once(web, clock):
    """When the client has sent all of a refused body, the connection
    closes without waiting for the lingering time, and once it is gone no
    timer is left."""
    factory, _, _ = web
    proto, transport = connect(factory)
    proto.dataReceived(headers(b"Content-Length: 4") + b"abcd")
    assert answer(transport)[0] == 401
    assert transport.disconnecting
    proto.connectionLost(None)
    assert clock.getDelayedCalls() == []


def fill(factory, count, host, busy):
    """``count`` connections from ``host``, each with a request in progress
    if ``busy``; their transports."""
    transports = []
    for _ in range(count):
        proto, transport = connect(factory, host)
        if busy:
            proto.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        transports.append(transport)
    return transports


def check_cap(factory, cap):
    """At ``cap`` idle connections a newcomer from elsewhere pushes out the
    oldest; at ``cap`` busy ones it gets 503 and is closed."""
    idle = fill(factory, cap, "10.0.0.2", busy=False)
    proto, transport = connect(factory, "10.0.0.1")
    assert idle[0].disconnected and not any(t.disconnected for t in idle[1:])
    proto.dataReceived(b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")
    for t in [transport, *idle[1:]]:
        t.loseConnection()
    for conn in list(factory.protocols):
        conn.connectionLost(None)
    assert len(factory.limiter) == 0
    fill(factory, cap, "10.0.0.2", busy=True)
    _, refused = connect(factory, "10.0.0.1")
    status, body = answer(refused)
    assert status == 503 and body["error"]["code"] == "unavailable"
    assert refused.disconnecting
    assert len(factory.limiter) == cap


def test_http_connection_cap_default(tmp_path, clock):
    """With the default http_max_connections (512) the cap holds at 512."""
    (tmp_path / ".env").write_text("db_file=db\nboard_conf=b.ucl\n")
    settings = load_config(str(tmp_path / ".env"))
    assert settings.http_max_connections == 512
    factory, _, _ = make_web(clock, settings.http_max_connections)
    check_cap(factory, 512)


def test_http_connection_cap_changed(tmp_path, clock):
    """http_max_connections=3 caps at 3."""
    (tmp_path / ".env").write_text(
        "db_file=db\nboard_conf=b.ucl\nhttp_max_connections=3\n"
    )
    settings = load_config(str(tmp_path / ".env"))
    factory, _, _ = make_web(clock, settings.http_max_connections)
    check_cap(factory, 3)


def test_finished_request_makes_the_connection_idle_again(web):
    """A connection is busy only while a request on it is served."""
    factory, _, _ = web
    proto, transport = connect(factory, "10.0.0.2")
    proto.dataReceived(b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
    fill(factory, 2, "10.0.0.2", busy=True)
    connect(factory, "10.0.0.1")
    assert transport.disconnected
