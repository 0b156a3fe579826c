"""The web UI, served at ``/`` beside the API on the same HTTP endpoint.

``WebRoot`` is the site's root resource.  It serves the UI's own paths and
hands everything else (``/api/v1/...`` and whatever else the API serves)
to the API's resource:

* pages, for a signed-in browser (otherwise a redirect to ``/login``):
  ``/`` the lab, ``/boards/NAME`` one board and its console, ``/audit``
  the audit log (admins);
* ``/login``: the sign-in page (``GET``) and signing in (``POST``, with
  ``Authorization: Bearer TOKEN`` or ``X-Login-Code: CODE`` from a login
  link); ``POST /logout`` signs out;
* ``/static/...``: the UI's style sheet, scripts and xterm.js, from the
  package (``bitelab/webstatic``), nothing fetched from elsewhere;
* ``/ws/console/NAME``: the console WebSocket (``bitelab.webconsole``).

The pages are plain HTML; the scripts fetch the API with the session
cookie (``bitelab.websession``) and follow the event stream.  Every
response of the UI forbids framing and any script not from the server.
"""

import gzip
import hashlib
import hmac
import html
import json
import os
import re
import secrets
from importlib import resources

from autobahn.twisted.resource import WebSocketResource
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from bitelab.config import NAME_RE
from bitelab.errors import BitelabError, Forbidden, Invalid, Unauthorized
from bitelab.httpserver import BEARER_RE
from bitelab.webconsole import ConsoleSockets
from bitelab.websession import LOGIN_COOKIE, LOGIN_CSRF_HEADER, WebSessions

#: where a signed-in browser may be sent after signing in
NEXT_RE = re.compile(r"/(boards/[A-Za-z0-9._-]{1,128}|audit)?")
#: what a Host header may look like to be named in the security policy
HOST_RE = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")
#: seconds between two sweeps of expired sessions
SWEEP_INTERVAL = 60.0

_TYPES = {
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".txt": b"text/plain; charset=utf-8",
}


def _policy(host):
    """The Content-Security-Policy of every UI response."""
    sockets = f" ws://{host} wss://{host}" if host and HOST_RE.fullmatch(host) else ""
    return (
        "default-src 'self'; script-src 'self'; "
        # xterm.js sets its own styles at run time
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ).encode()


def _secure_headers(request):
    host = request.getHeader(b"Host")
    request.setHeader(
        b"Content-Security-Policy", _policy(host.decode("latin-1") if host else None)
    )
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")


def _json(request, value, code=200):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value).encode("utf-8") + b"\n"


def safe_next(value):
    """``value`` if it names one of the UI's pages, else ``/``."""
    return value if value and NEXT_RE.fullmatch(value) else "/"


class StaticFiles:
    """The files of ``bitelab/webstatic`` (but pages), read once at start.

    Only files found there are served: no directory listings, no paths
    outside.  Each is kept gzipped too, for browsers that take it.
    """

    def __init__(self, root):
        self.files = {}
        self.templates = {}
        for path in _walk(root):
            name = path.relative_to(root).as_posix()
            data = path.read_bytes()
            if name.endswith(".html"):
                self.templates[name[: -len(".html")]] = data.decode("utf-8")
                continue
            kind = _TYPES.get(os.path.splitext(name)[1], b"text/plain; charset=utf-8")
            packed = gzip.compress(data, 9, mtime=0)
            tag = b'"' + hashlib.sha256(data).hexdigest()[:32].encode() + b'"'
            self.files[name] = (
                data,
                packed if len(packed) < len(data) else None,
                kind,
                tag,
            )

    def render(self, request, name):
        """Serve file ``name``, or a 404."""
        found = self.files.get(name)
        if found is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"not found\n"
        data, packed, kind, tag = found
        request.setHeader(b"Content-Type", kind)
        # the files change with the server's version: check, then reuse
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"ETag", tag)
        request.setHeader(b"Vary", b"Accept-Encoding")
        if request.getHeader(b"If-None-Match") == tag:
            request.setResponseCode(304)
            return b""
        accepted = request.getHeader(b"Accept-Encoding") or b""
        if packed is not None and b"gzip" in accepted:
            request.setHeader(b"Content-Encoding", b"gzip")
            return packed
        return data


def _walk(directory):
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.is_file() and not entry.name.endswith((".py", ".pyc")):
            yield entry


def static_root():
    """The package's ``webstatic`` directory."""
    return resources.files("bitelab") / "webstatic"


class WebRoot(Resource):
    """The site's root: the UI's paths, and the API for all others."""

    isLeaf = True
    log = Logger()

    def __init__(self, api, sessions, sockets, manager):
        super().__init__()
        self.api = api
        self.sessions = sessions
        self.sockets = sockets
        self.manager = manager
        self.static = StaticFiles(static_root())

    def render(self, request):
        path = request.path
        method = request.method
        if path.startswith(b"/ws/console/"):
            return self.sockets.render(request)
        if path.startswith(b"/static/"):
            _secure_headers(request)
            if method not in (b"GET", b"HEAD"):
                return self._not_allowed(request, b"GET, HEAD")
            return self.static.render(
                request, path[len(b"/static/") :].decode("latin-1")
            )
        if path == b"/login":
            _secure_headers(request)
            if method == b"POST":
                return self._deferred(request, self._sign_in(request))
            if method in (b"GET", b"HEAD"):
                return self._login_page(request)
            return self._not_allowed(request, b"GET, HEAD, POST")
        if path == b"/logout":
            _secure_headers(request)
            if method != b"POST":
                return self._not_allowed(request, b"POST")
            return self._sign_out(request)
        page = self._page_of(path)
        if page is not None:
            _secure_headers(request)
            if method not in (b"GET", b"HEAD"):
                return self._not_allowed(request, b"GET, HEAD")
            return self._deferred(request, self._page(request, *page))
        return self.api.render(request)

    @staticmethod
    def _page_of(path):
        """``(page, board)`` for the UI's page paths, else None."""
        if path == b"/":
            return "lab", None
        if path == b"/audit":
            return "audit", None
        if path.startswith(b"/boards/"):
            name = path[len(b"/boards/") :].decode("latin-1")
            if NAME_RE.fullmatch(name) and len(name) <= 128:
                return "board", name
        return None

    def _not_allowed(self, request, allowed):
        request.setHeader(b"Allow", allowed)
        error = Invalid(
            f"method {request.method.decode('latin-1')} is not allowed here"
        )
        return _json(request, error.to_json(), 405)

    def _deferred(self, request, d):
        """Finish ``request`` with what ``d`` gives; errors as the API's JSON."""

        def done(body):
            if body is not None and request.channel is not None:
                request.write(body)
            if request.channel is not None and not request.finished:
                request.finish()

        def failed(failure):
            if failure.check(BitelabError):
                error = failure.value
                return _json(request, error.to_json(), error.status)
            self.log.failure("web UI request {path} failed", failure, path=request.path)
            return _json(
                request,
                {"error": {"code": "internal", "message": "internal error"}},
                500,
            )

        d.addErrback(failed).addCallback(done)
        return NOT_DONE_YET

    # -- pages ------------------------------------------------------------

    def _fill(self, name, values):
        """Page template ``name`` with ``{{key}}`` replaced by escaped values."""
        text = self.static.templates[name]
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", html.escape(str(value), quote=True))
        return text

    @defer.inlineCallbacks
    def _page(self, request, page, board):
        session = self.sessions.from_request(request)
        user = None
        if session is not None:
            try:
                user = yield self.sessions.check_token(session)
            except Unauthorized:
                user = None
        request.setHeader(b"Cache-Control", b"no-store")
        if user is None:
            target = request.uri.decode("latin-1").split("?", 1)[0]
            request.setResponseCode(303)
            location = "/login" + (f"?next={target}" if target != "/" else "")
            request.setHeader(b"Location", location.encode("latin-1"))
            return b""
        admin = self.manager.is_admin(user)
        if page == "audit" and not admin:
            raise Forbidden("only admins may read the audit log")
        values = {
            "lab": self.manager.config.lab_name,
            "user": user,
            "admin": "true" if admin else "false",
            "csrf": session.csrf,
            "board": board or "",
        }
        header = self._fill("header", values)
        text = self._fill(page, values).replace("{{header}}", header)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return text.encode("utf-8")

    def _login_page(self, request):
        check = secrets.token_urlsafe(32)
        request.addCookie(
            LOGIN_COOKIE,
            check,
            path="/login",
            max_age="3600",
            secure=request.isSecure(),
            httpOnly=True,
            sameSite="strict",
        )
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        text = self._fill(
            "login", {"lab": self.manager.config.lab_name, "login_csrf": check}
        )
        return text.encode("utf-8")

    # -- signing in and out --------------------------------------------------

    @defer.inlineCallbacks
    def _sign_in(self, request):
        self.sessions.check_origin(request)
        given = request.getHeader(LOGIN_CSRF_HEADER)
        expected = request.getCookie(LOGIN_COOKIE.encode())
        if not given or not expected or not hmac.compare_digest(given, expected):
            raise Forbidden("the sign-in page has expired; reload it and try again")
        header = request.getHeader(b"Authorization")
        code = request.getHeader(b"X-Login-Code")
        if header is not None:
            match = BEARER_RE.fullmatch(header.decode("latin-1"))
            if match is None:
                raise Unauthorized("Authorization header must be 'Bearer TOKEN'")
            session, cookie = yield self.sessions.sign_in(match.group(1))
        elif code is not None:
            session, cookie = yield self.sessions.redeem_link(code.decode("latin-1"))
        else:
            raise Invalid("sign in with a token (Authorization) or a login link code")
        earlier = self.sessions.from_request(request)
        if earlier is not None:
            self.sessions.end(earlier, "signed in again")
        self.sessions.set_cookie(request, cookie)
        request.addCookie(
            LOGIN_COOKIE,
            "",
            path="/login",
            max_age="0",
            secure=request.isSecure(),
            httpOnly=True,
            sameSite="strict",
        )
        wanted = request.args.get(b"next", [b"/"])[0].decode("latin-1")
        return _json(request, {"user": session.user, "next": safe_next(wanted)})

    def _sign_out(self, request):
        session = self.sessions.from_request(request)
        if session is not None:
            try:
                self.sessions.check_request(request, session)
            except Forbidden as e:
                return _json(request, e.to_json(), 403)
            self.sessions.end(session, "signed out")
        self.sessions.clear_cookie(request)
        return _json(request, {"signed_out": True})


class WebService(service.Service):
    """The web UI: its sessions, its root resource (``root``, wrapping the
    API's), and a sweep of expired sessions from memory now and then.

    The API takes the sessions' cookies as well as tokens from now on.
    """

    log = Logger()

    def __init__(self, api, manager, tokens, clock, max_consoles=8):
        self.sessions = WebSessions(clock, tokens)
        api.sessions = self.sessions
        self.sockets = ConsoleSockets(manager, self.sessions, max_consoles, clock)
        # several hosts: the others relay their users' consoles of boards here
        self.sockets.hosts = api.hosts
        self.root = WebRoot(
            api.resource(), self.sessions, WebSocketResource(self.sockets), manager
        )
        self._loop = task.LoopingCall(self._sweep)
        self._loop.clock = clock

    def startService(self):
        super().startService()
        self._loop.start(SWEEP_INTERVAL, now=False)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _sweep(self):
        try:
            self.sessions.expire()
        except Exception:  # noqa: BLE001 - the sweep must survive anything
            self.log.failure("sweeping web sessions failed")
