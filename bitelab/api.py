"""The HTTP API (Klein), ``/api/v1``: every call but ``GET /info`` needs a token.

Handlers check the request's shape, then call the board manager; domain
errors (``bitelab.errors``) and routing errors become the JSON error shape.
"""

import json
import re
from collections import Counter
from importlib import resources
from urllib.parse import unquote_to_bytes

import attrs
from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import NoRangeStaticProducer
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

import bitelab
from bitelab.config import NAME_RE
from bitelab.errors import (
    BitelabError,
    Elsewhere,
    Forbidden,
    Invalid,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from bitelab.httpserver import BEARER_RE, MAX_BODY
from bitelab.views import iso

#: what ``API._here_or_forwarded`` gives once another host has answered
FORWARDED = object()

#: a client's own name for a wait in the queue
TICKET_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _json(request, value, code=200):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value).encode("utf-8") + b"\n"


def _read_body(request, allowed):
    """The request's JSON object, refusing fields not in ``allowed`` (unless None)."""
    length = request.getHeader(b"Content-Length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise TooLarge(f"request body must be at most {MAX_BODY} bytes")
    raw = request.content.read(MAX_BODY + 1) if request.content else b""
    if len(raw) > MAX_BODY:
        raise TooLarge(f"request body must be at most {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("request body is not valid JSON") from None
    except RecursionError:
        raise Invalid("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed)) if allowed is not None else []
    if unknown:
        raise Invalid(
            f"unknown field {unknown[0]!r} (accepted: {', '.join(sorted(allowed)) or 'none'})"
        )
    return body


def openapi_document():
    """The OpenAPI document of this API (``bitelab/openapi.json``), as bytes."""
    return resources.files("bitelab").joinpath("openapi.json").read_bytes()


def _board_name(name):
    if not NAME_RE.fullmatch(name) or len(name) > 128:
        raise NotFound(f"no board named {name!r}")
    return name


class _APIResource(Resource):
    """Klein's resource, but a URL that is not UTF-8 gets the JSON error shape,
    and one with an encoded slash is not found (routing would decode it into
    a separator: ``boards/x%2Freserve`` is no board's name)."""

    isLeaf = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def render(self, request):
        try:
            unquote_to_bytes(request.path).decode("utf-8")
            request.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            error = Invalid("the URL or Host header is not valid UTF-8")
            return _json(request, error.to_json(), 400)
        if b"%2f" in request.path.lower():
            error = NotFound(f"no such API path: {request.path.decode('latin-1')}")
            return _json(request, error.to_json(), 404)
        return self.inner.render(request)


#: a console log this short is answered at once; a longer one is streamed
SHORT_LOG = 64 * 1024


class _Prefixed:
    """A reader giving ``head`` first, then the rest of ``reader``."""

    def __init__(self, head, reader):
        self.head = head
        self.reader = reader

    def read(self, size=-1):
        if self.head:
            data, self.head = self.head, b""
            return data
        return self.reader.read(size)

    def close(self):
        self.reader.close()


class _LogResource(Resource):
    """Sends a console log reader's bytes as the client takes them; a short
    log (the common case) in one piece."""

    isLeaf = True

    def __init__(self, reader):
        super().__init__()
        self.reader = reader

    def render_GET(self, request):
        head = self.reader.read(SHORT_LOG)
        more = self.reader.read(1) if len(head) == SHORT_LOG else b""
        if not more:
            self.reader.close()
            return head
        NoRangeStaticProducer(request, _Prefixed(head + more, self.reader)).start()
        return NOT_DONE_YET


class _HTTPViewer:
    """A console viewer streaming to an HTTP response.

    The hub registers itself as the response's producer, so a client that
    reads slowly pushes back (and is dropped once too far behind) whatever
    the transport, TCP or TLS.
    """

    def __init__(self, request, done):
        self.request = request
        self.done = done

    def registerProducer(self, producer, streaming):
        self.request.registerProducer(producer, streaming)

    def unregisterProducer(self):
        if self.request.channel is not None and self.request.producer is not None:
            self.request.unregisterProducer()

    def write(self, data):
        if not self.done.called and self.request.channel is not None:
            self.request.write(data)

    def close(self, reason):
        if not self.done.called:
            self.write(f"\r\nbitelab: {reason}\r\n".encode())
            self.done.callback(None)


@attrs.define
class API:
    """The Klein application; ``manager`` and ``tokens`` do the work."""

    manager: object
    tokens: object
    clock: object
    #: a callable giving the SSH service's port once it listens
    ssh_port: object = lambda: None
    #: the open event streams (``bitelab.stream.EventStreams``)
    streams: object = None
    #: what ``/info`` says of the SSH host key (``ssh.host_key_facts``)
    host_key: dict = attrs.Factory(dict)
    #: console streams (``?follow=1``) one user may have open at once
    max_followers: int = 8
    #: the web UI's sessions (``bitelab.websession.WebSessions``): a session
    #: cookie stands in for a token
    sessions: object = None
    #: checks the credentials of requests other hosts forward here
    #: (``bitelab.forward.HostAuthority``; None in a one-host lab)
    hosts: object = None
    #: forwards hardware work to the board's own host (``bitelab.forward.Forwarder``)
    forwarder: object = None
    _followers: Counter = attrs.field(factory=Counter, init=False)
    app = Klein()
    log = Logger()

    def resource(self):
        """The twisted.web resource serving the API."""
        return _APIResource(self.app.resource())

    @defer.inlineCallbacks
    def _user(self, request, forwardable=False):
        """Deferred[str]: the user ``request`` acts for; another host's
        credentials stand for one only where hosts forward (``forwardable``)."""
        header = request.getHeader(b"Authorization")
        if header is None and self.sessions is not None:
            user = yield self.sessions.user(request)
            if user is not None:
                return user
        if header is None:
            raise Unauthorized(
                "missing Authorization header; get a token with "
                "ssh -o 'ProxyCommand bitelab contssh' -l lab bitelab"
            )
        if header.startswith(b"Bitelab-Host ") and self.hosts is not None:
            if not forwardable:
                raise Unauthorized("hosts forward only hardware work and consoles")
            user = yield self.hosts.user(request, header.decode("latin-1"))
            return user
        match = BEARER_RE.fullmatch(header.decode("latin-1"))
        if not match:
            raise Unauthorized("Authorization header must be 'Bearer TOKEN'")
        user = yield self.tokens.authenticate(match.group(1))
        return user

    @defer.inlineCallbacks
    def _here_or_forwarded(self, request, user, work):
        """Deferred: ``work``'s result, or ``FORWARDED`` once the board's own
        host has answered ``request`` (``work`` failed with ``Elsewhere``)."""
        try:
            result = yield work
        except Elsewhere as e:
            if self.forwarder is None:
                raise
            yield self.forwarder.forward(request, e.host, user)
            return FORWARDED
        return result

    # -- errors -----------------------------------------------------------

    @app.handle_errors(BitelabError)
    def _domain_error(self, request, failure):
        error = failure.value
        if error.status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="bitelab"')
        return _json(request, error.to_json(), error.status)

    @app.handle_errors(RouteNotFound)
    def _not_found(self, request, failure):
        return _json(
            request,
            NotFound(f"no such API path: {request.path.decode('latin-1')}").to_json(),
            404,
        )

    @app.handle_errors(MethodNotAllowed)
    def _bad_method(self, request, failure):
        allowed = ", ".join(sorted(failure.value.valid_methods or ()))
        error = Invalid(
            f"method {request.method.decode('latin-1')} is not allowed here"
            + (f" (allowed: {allowed})" if allowed else "")
        )
        if allowed:
            request.setHeader(b"Allow", allowed.encode("ascii"))
        return _json(request, error.to_json(), 405)

    @app.handle_errors(HTTPException)
    def _http_error(self, request, failure):
        return _json(request, Invalid(failure.value.description).to_json(), 400)

    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        self.log.failure("internal error handling {path}", failure, path=request.path)
        return _json(
            request, {"error": {"code": "internal", "message": "internal error"}}, 500
        )

    # -- routes -----------------------------------------------------------

    @app.route("/api/v1/info", methods=["GET"])
    @defer.inlineCallbacks
    def info(self, request):
        document = {
            "name": self.manager.config.lab_name,
            "version": bitelab.__version__,
            "ssh_port": self.ssh_port(),
            "time": iso(self.clock.seconds()),
            "max_wait": self.manager.config.max_wait,
            **self.host_key,
        }
        if self.manager.config.host_name:
            document["host"] = self.manager.config.host_name
        login = request.args.get(b"login", [None])[0]
        if login is not None:
            # the console of a board of another host is served by that host's SSH
            where = yield self.manager.locate_login(login.decode("latin-1"))
            document.update(where or {})
        return _json(request, document)

    @app.route("/api/v1/openapi.json", methods=["GET"])
    def openapi(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return openapi_document()

    @app.route("/api/v1/whoami", methods=["GET"])
    @defer.inlineCallbacks
    def whoami(self, request):
        user = yield self._user(request)
        return _json(request, {"user": user, "admin": self.manager.is_admin(user)})

    @app.route("/api/v1/classes", methods=["GET"])
    @defer.inlineCallbacks
    def classes(self, request):
        yield self._user(request)
        result = yield self.manager.list_classes()
        return _json(request, {"classes": result})

    @app.route("/api/v1/boards", methods=["GET"])
    @defer.inlineCallbacks
    def boards(self, request):
        user = yield self._user(request)
        result = yield self.manager.list_boards(user)
        return _json(request, {"boards": result})

    @app.route("/api/v1/boards/<name>", methods=["GET"])
    @defer.inlineCallbacks
    def board(self, request, name):
        user = yield self._user(request)
        result = yield self.manager.get_board(user, _board_name(name))
        return _json(request, result)

    @app.route("/api/v1/boards/<name>/reserve", methods=["POST"])
    @defer.inlineCallbacks
    def reserve(self, request, name):
        user = yield self._user(request)
        body = _read_body(
            request, ("sshpubkey", "timeout", "wait", "waiter", "priority", "ticket")
        )
        if body.get("sshpubkey") is not None and not isinstance(body["sshpubkey"], str):
            raise Invalid("sshpubkey must be a string")
        waiter = body.get("waiter")
        if waiter is not None and (
            isinstance(waiter, bool) or not isinstance(waiter, int)
        ):
            raise Invalid("waiter must be the id of a place in the queue")
        ticket = body.get("ticket")
        if ticket is not None and (
            not isinstance(ticket, str) or not TICKET_RE.fullmatch(ticket)
        ):
            raise Invalid("ticket must be 1 to 64 letters, digits, '-' or '_'")
        result = yield self.manager.reserve(
            user,
            _board_name(name),
            body.get("sshpubkey"),
            body.get("timeout"),
            wait=body.get("wait", 0),
            waiter=waiter,
            priority=body.get("priority"),
            gone=request.notifyFinish(),
            ticket=ticket,
        )
        return _json(request, result)

    @app.route("/api/v1/boards/<name>/release", methods=["POST"])
    @defer.inlineCallbacks
    def release(self, request, name):
        user = yield self._user(request)
        body = _read_body(request, ("force", "reason"))
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise Invalid("force must be true or false")
        reason = body.get("reason")
        if reason is not None and not force:
            raise Invalid("a reason goes with a forced release (force: true)")
        result = yield self.manager.release(user, _board_name(name), force, reason)
        return _json(request, result)

    @app.route("/api/v1/boards/<name>/attrs", methods=["POST"])
    @defer.inlineCallbacks
    def set_attrs(self, request, name):
        user = yield self._user(request, forwardable=True)
        name = _board_name(name)
        # which attributes a board accepts is the manager's to say
        body = _read_body(request, None)
        result = yield self._here_or_forwarded(
            request, user, self.manager.set_attrs(user, name, body)
        )
        return b"" if result is FORWARDED else _json(request, result)

    @app.route("/api/v1/boards/<name>/maintenance", methods=["POST"])
    @defer.inlineCallbacks
    def maintenance_on(self, request, name):
        user = yield self._user(request)
        body = _read_body(request, ("reason",))
        result = yield self.manager.set_maintenance(
            user, _board_name(name), body.get("reason")
        )
        return _json(request, result)

    @app.route("/api/v1/boards/<name>/maintenance", methods=["DELETE"])
    @defer.inlineCallbacks
    def maintenance_off(self, request, name):
        user = yield self._user(request, forwardable=True)
        result = yield self._here_or_forwarded(
            request, user, self.manager.clear_maintenance(user, _board_name(name))
        )
        return b"" if result is FORWARDED else _json(request, result)

    @app.route("/api/v1/boards/<name>/console", methods=["GET"])
    @defer.inlineCallbacks
    def console(self, request, name):
        user = yield self._user(request, forwardable=True)
        past = request.args.get(b"reservation", [None])[0]
        if past is not None:
            if not past.isdigit() or len(past) > 18:
                raise NotFound(f"no reservation {past.decode('latin-1')!r}")
            log = yield self._here_or_forwarded(
                request,
                user,
                self.manager.past_console_log(user, _board_name(name), int(past)),
            )
            if log is FORWARDED:
                return b""
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-store")
            return _LogResource(log)
        hub = yield self._here_or_forwarded(
            request, user, self.manager.open_console(user, _board_name(name))
        )
        if hub is FORWARDED:
            return b""
        follow = request.args.get(b"follow", [b"0"])[0] in (b"1", b"true", b"yes")
        if follow and self._followers[user] >= self.max_followers:
            raise Unavailable(
                f"you already follow {self._followers[user]} consoles, the most "
                "one user may; stop one first"
            )
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        if not follow:
            return _LogResource(hub.reservation_log())
        done = defer.Deferred()
        viewer = _HTTPViewer(request, done)
        # refused once the reservation is over (nothing to count then)
        hub.attach(viewer, replay=True)
        self._followers[user] += 1

        def gone(_):
            hub.detach(viewer)
            if not done.called:
                done.callback(None)

        request.notifyFinish().addBoth(gone)
        try:
            yield done
        finally:
            self._followers[user] -= 1
            if not self._followers[user]:
                del self._followers[user]
        hub.detach(viewer)
        return b""

    @app.route("/api/v1/events", methods=["GET"])
    @defer.inlineCallbacks
    def events(self, request):
        user = yield self._user(request)
        if not self.manager.is_admin(user):
            raise Forbidden("only admins may read the audit log")
        args = {}
        for key in ("board", "user"):
            if key.encode() in request.args:
                args[key] = request.args[key.encode()][0].decode("utf-8", "replace")
        for key, default in (("limit", 100), ("before", None)):
            raw = request.args.get(key.encode(), [None])[0]
            if raw is None:
                args[key] = default
                continue
            if not raw.isdigit() or not 0 < int(raw) <= 10**12:
                raise Invalid(f"{key} must be a positive whole number")
            args[key] = int(raw)
        args["limit"] = min(args["limit"], 1000)
        result = yield self.manager.events(**args)
        return _json(request, {"events": result})

    @app.route("/api/v1/queue", methods=["GET"])
    @defer.inlineCallbacks
    def queue(self, request):
        user = yield self._user(request)
        result = yield self.manager.queue(user)
        return _json(request, result)

    @app.route("/api/v1/queue/<wid>", methods=["DELETE"])
    @defer.inlineCallbacks
    def cancel_wait(self, request, wid):
        user = yield self._user(request)
        if not wid.isdigit() or len(wid) > 18:
            raise NotFound(f"no waiter {wid!r}")
        result = yield self.manager.room.cancel(user, int(wid))
        return _json(request, result)

    @app.route("/api/v1/events/stream", methods=["GET"])
    @defer.inlineCallbacks
    def event_stream(self, request):
        user = yield self._user(request)
        if self.streams is None:
            raise NotFound("no event stream here")
        lab = request.args.get(b"lab", [b"0"])[0] in (b"1", b"true", b"yes")
        yield self.streams.open(request, user, self.manager.is_admin(user), lab)
        return b""

    @app.route("/api/v1/reservations", methods=["GET"])
    @defer.inlineCallbacks
    def reservations(self, request):
        user = yield self._user(request)
        args = {}
        for key, arg in (("user", "of_user"), ("board", "board")):
            if key.encode() in request.args:
                args[arg] = request.args[key.encode()][0].decode("utf-8", "replace")
        raw = request.args.get(b"limit", [b"100"])[0]
        if not raw.isdigit() or not 0 < int(raw) <= 1000:
            raise Invalid("limit must be a whole number from 1 to 1000")
        result = yield self.manager.reservations(user, limit=int(raw), **args)
        return _json(request, {"reservations": result})

    @app.route("/api/v1/reservations/<rid>", methods=["GET"])
    @defer.inlineCallbacks
    def reservation(self, request, rid):
        user = yield self._user(request)
        if not rid.isdigit() or len(rid) > 18:
            raise NotFound(f"no reservation {rid!r}")
        result = yield self.manager.reservation(user, int(rid))
        return _json(request, result)

    def _token(self, request, what):
        """The bearer token of an authenticated request; ``Invalid`` for a
        web session, which holds none."""
        header = request.getHeader(b"Authorization")
        if header is None:
            raise Invalid(f"{what} needs Authorization: Bearer TOKEN, not a session")
        return BEARER_RE.fullmatch(header.decode("latin-1")).group(1)

    @app.route("/api/v1/tokens/current", methods=["DELETE"])
    @defer.inlineCallbacks
    def revoke(self, request):
        user = yield self._user(request)
        token = self._token(request, "revoking a token")
        yield self.tokens.revoke(token)
        return _json(request, {"revoked": True, "user": user})

    @app.route("/api/v1/login-link", methods=["POST"])
    @defer.inlineCallbacks
    def login_link(self, request):
        user = yield self._user(request)
        token = self._token(request, "a login link")
        _read_body(request, ())
        if self.sessions is None:
            raise NotFound("this server has no web UI")
        code, expires = self.sessions.make_link(user, token)
        return _json(
            request,
            {"user": user, "path": f"/login#code={code}", "expires_at": iso(expires)},
        )
