"""Web UI sessions: cookies, one-time login links and CSRF checks.

A browser never holds an API token.  It signs in with one (``POST /login``
with ``Authorization: Bearer``) or with a one-time login link that ``POST
/api/v1/login-link`` makes from a token (``bitelab web`` prints it), and
gets a session cookie instead: HttpOnly, SameSite=Strict, Secure when the
request came over TLS, holding 256 random bits of which only a hash is
kept.  A session stands for the token it was made from: every use checks
that token again (``TokenStore``'s short cache), so revoking the token, or
locking its user out, ends the session too.  Sessions and links live in
the server's memory only: a restart signs everyone out.

Every request that changes something and comes with a session cookie must
carry the session's CSRF token in ``X-CSRF-Token`` and, if the browser
says where it comes from (``Origin``, ``Sec-Fetch-Site``), come from this
site.  The CSRF token is in the pages the server renders for the session,
never in a cookie, so another site can neither read nor guess it.

Logging out ends the session at once: its cookie is refused from then on,
and its open streams and console WebSockets are closed.
"""

import hashlib
import hmac
import secrets
from collections import OrderedDict
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from bitelab.errors import Forbidden, Unauthorized
from bitelab.tokens import hash_token

#: the session cookie
COOKIE = "bitelab_session"
#: the cookie of the login page, matched against ``X-Login-CSRF`` on sign-in
LOGIN_COOKIE = "bitelab_login"
#: header carrying the session's CSRF token on requests that change things
CSRF_HEADER = b"X-CSRF-Token"
#: header carrying the login page's own CSRF value
LOGIN_CSRF_HEADER = b"X-Login-CSRF"
#: seconds a session lasts from sign-in, however busy
LIFETIME = 12 * 3600
#: seconds a session lasts without being used
IDLE = 2 * 3600
#: seconds a login link can be used
LINK_LIFETIME = 120
#: sessions kept at most; the least recently used go first
MAX_SESSIONS = 10000
#: sessions one user may have at once, so that nobody can push the others'
#: out; their own least recently used goes first
MAX_SESSIONS_PER_USER = 20
#: unused login links one user may have at once; older ones are dropped
MAX_LINKS_PER_USER = 5
#: methods that change nothing and need no CSRF token
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")

_SECRET_BYTES = 32


def _digest(secret):
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def cookie_value(header, name):
    """The value of cookie ``name`` in a ``Cookie`` header (str), or None.

    Parsed by hand: a browser may hold cookies of other applications on the
    same host whose values the standard library's parser rejects.
    """
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def same_origin(origin, host):
    """Whether the ``Origin`` header value ``origin`` names the host ``host``
    (the request's ``Host`` header, with its port if any)."""
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def _header(request, name):
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


@attrs.define(eq=False)
class Session:
    """One signed-in browser: whose, from which token, and its CSRF token."""

    key: str
    user: str
    token_digest: str
    csrf: str
    created: float
    seen: float
    #: called with a one-line reason when the session ends
    watchers: set = attrs.field(factory=set)


@attrs.define(eq=False)
class LoginLink:
    """A login link not used yet."""

    user: str
    token_digest: str
    expires: float


class WebSessions:
    """The web UI's sessions and login links; see the module docstring.

    ``tokens`` is the ``TokenStore`` whose tokens sessions stand for;
    ``clock`` gives the time.
    """

    log = Logger()

    def __init__(
        self,
        clock,
        tokens,
        lifetime=LIFETIME,
        idle=IDLE,
        link_lifetime=LINK_LIFETIME,
        max_sessions=MAX_SESSIONS,
    ):
        self.clock = clock
        self.tokens = tokens
        self.lifetime = lifetime
        self.idle = idle
        self.link_lifetime = link_lifetime
        self.max_sessions = max_sessions
        #: hash of the cookie value -> Session, least recently used first
        self._sessions = OrderedDict()
        #: hash of the link's code -> LoginLink
        self._links = {}

    def __len__(self):
        return len(self._sessions)

    # -- login links -------------------------------------------------------

    def make_link(self, user, token):
        """A new login link for ``user`` standing for ``token``:
        ``(code, expires)``; the code is valid once, for ``link_lifetime``."""
        now = self.clock.seconds()
        self._drop_expired_links(now)
        mine = [
            key for key, link in self._links.items() if link.user == user
        ]  # oldest first: dicts keep insertion order
        for key in mine[: max(0, len(mine) - MAX_LINKS_PER_USER + 1)]:
            del self._links[key]
        code = secrets.token_urlsafe(_SECRET_BYTES)
        expires = now + self.link_lifetime
        self._links[_digest(code)] = LoginLink(user, hash_token(token), expires)
        return code, expires

    def link_user(self, code):
        """The user a valid, unused link ``code`` signs in, or None; the link
        stays valid (for the page that asks whether to sign in)."""
        link = self._link(code)
        return link.user if link is not None else None

    def _link(self, code):
        if not code or len(code) > 200:
            return None
        self._drop_expired_links(self.clock.seconds())
        return self._links.get(_digest(code))

    def _drop_expired_links(self, now):
        for key in [k for k, link in self._links.items() if link.expires <= now]:
            del self._links[key]

    @defer.inlineCallbacks
    def redeem_link(self, code):
        """Deferred[(Session, cookie)]: sign in with a login link, once.

        ``Unauthorized`` if the link is unknown, used, expired, or its token
        has been revoked since.
        """
        link = self._link(code)
        if link is None:
            raise Unauthorized(
                "this login link is not valid: it was used already, has expired "
                "or never existed; get a new one with: bitelab web"
            )
        del self._links[_digest(code)]
        user = yield self.tokens.authenticate_digest(link.token_digest)
        return self._open(user, link.token_digest)

    @defer.inlineCallbacks
    def sign_in(self, token):
        """Deferred[(Session, cookie)]: sign in with an API token."""
        user = yield self.tokens.authenticate(token)
        return self._open(user, hash_token(token))

    def _open(self, user, token_digest):
        now = self.clock.seconds()
        theirs = [s for s in self._sessions.values() if s.user == user]
        for oldest in theirs[: max(0, len(theirs) - MAX_SESSIONS_PER_USER + 1)]:
            self.end(oldest, "signed out: too many sessions")
        while len(self._sessions) >= self.max_sessions:
            _, oldest = self._sessions.popitem(last=False)
            self._ended(oldest, "signed out: too many sessions")
        cookie = secrets.token_urlsafe(_SECRET_BYTES)
        session = Session(
            key=_digest(cookie),
            user=user,
            token_digest=token_digest,
            csrf=secrets.token_urlsafe(_SECRET_BYTES),
            created=now,
            seen=now,
        )
        self._sessions[session.key] = session
        self.log.info("{user} signed in to the web UI", user=user)
        return session, cookie

    # -- finding and checking sessions -------------------------------------

    def find(self, cookie):
        """The live session whose cookie value is ``cookie``, or None.

        Using a session keeps it from going idle.
        """
        if not cookie or len(cookie) > 200:
            return None
        key = _digest(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock.seconds()
        if now >= session.created + self.lifetime or now >= session.seen + self.idle:
            self.end(session, "signed out: the session has expired")
            return None
        session.seen = now
        self._sessions.move_to_end(key)
        return session

    def from_request(self, request):
        """The live session of a ``twisted.web`` request's cookie, or None."""
        cookie = request.getCookie(COOKIE.encode())
        return self.find(cookie.decode("latin-1") if cookie else None)

    def check_token(self, session):
        """Deferred[str]: the session's user, if the token it stands for
        still authenticates them (``Unauthorized``, and the session ends,
        otherwise)."""
        d = self.tokens.authenticate_digest(session.token_digest)

        def revoked(failure):
            failure.trap(Unauthorized)
            self.end(session, "signed out: the token was revoked")
            raise Unauthorized(
                "your session has ended: the token it was made from was revoked; "
                "sign in again"
            )

        return d.addErrback(revoked)

    def check_request(self, request, session):
        """Raise ``Forbidden`` unless ``request`` may act for ``session``.

        Reading needs nothing more than the cookie (SameSite=Strict keeps
        it off other sites' requests); anything else needs the session's
        CSRF token and must not come from another site.
        """
        if request.method in SAFE_METHODS:
            return
        self.check_origin(request)
        given = _header(request, CSRF_HEADER)
        if not given or not hmac.compare_digest(given, session.csrf):
            raise Forbidden(
                "missing or wrong CSRF token (X-CSRF-Token); reload the page"
            )

    def check_origin(self, request):
        """Raise ``Forbidden`` if the browser says ``request`` comes from
        another site (``Origin`` or ``Sec-Fetch-Site``)."""
        origin = _header(request, b"Origin")
        if origin is not None and not same_origin(origin, _header(request, b"Host")):
            raise Forbidden("cross-site request refused")
        site = _header(request, b"Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise Forbidden("cross-site request refused")

    def admits_body(self, request):
        """Whether a request body may be read before the resource sees it:
        the request has a live session and its CSRF token (checked from
        the headers alone, see ``bitelab.httpserver``)."""
        session = self.from_request(request)
        if session is None:
            return False
        try:
            self.check_request(request, session)
        except Forbidden:
            return False
        return True

    @defer.inlineCallbacks
    def user(self, request):
        """Deferred[str | None]: the user a request's session cookie signs in.

        None without a session cookie; ``Unauthorized`` for a cookie of no
        live session; ``Forbidden`` for a change without the CSRF token.
        The request is tied to the session: if the session ends before
        the request does, its connection is closed.
        """
        cookie = request.getCookie(COOKIE.encode())
        if cookie is None:
            return None
        session = self.find(cookie.decode("latin-1"))
        if session is None:
            raise Unauthorized("your session has ended; sign in again")
        self.check_request(request, session)
        user = yield self.check_token(session)
        self.tie(session, request)
        return user

    def tie(self, session, request):
        """Close ``request``'s connection if ``session`` ends before it does."""

        def cut(reason):
            channel = request.channel
            if channel is not None and channel.transport is not None:
                channel.transport.loseConnection()

        self.watch(session, cut)
        request.notifyFinish().addBoth(lambda _: self.unwatch(session, cut))

    # -- ending sessions ---------------------------------------------------

    def watch(self, session, callback):
        """Call ``callback(reason)`` when ``session`` ends."""
        session.watchers.add(callback)

    def unwatch(self, session, callback):
        """Stop watching ``session``."""
        session.watchers.discard(callback)

    def end(self, session, reason="signed out"):
        """End ``session``: its cookie is refused from now on and everything
        watching it is told (streams and consoles close)."""
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
            self._ended(session, reason)

    def _ended(self, session, reason):
        watchers, session.watchers = session.watchers, set()
        for callback in watchers:
            try:
                callback(reason)
            except Exception:  # noqa: BLE001 - one watcher must not stop the others
                self.log.failure("closing a connection of a web session failed")
        self.log.info(
            "web session of {user} ended: {reason}", user=session.user, reason=reason
        )

    def expire(self):
        """Forget sessions and links past their time (run now and then)."""
        now = self.clock.seconds()
        self._drop_expired_links(now)
        for session in list(self._sessions.values()):
            if (
                now >= session.created + self.lifetime
                or now >= session.seen + self.idle
            ):
                self.end(session, "signed out: the session has expired")

    # -- cookies -----------------------------------------------------------

    def set_cookie(self, request, cookie):
        """Give the browser the session cookie ``cookie``."""
        request.addCookie(
            COOKIE,
            cookie,
            path="/",
            max_age=str(self.lifetime),
            secure=request.isSecure(),
            httpOnly=True,
            sameSite="strict",
        )

    def clear_cookie(self, request):
        """Have the browser forget its session cookie."""
        request.addCookie(
            COOKIE,
            "",
            path="/",
            max_age="0",
            secure=request.isSecure(),
            httpOnly=True,
            sameSite="strict",
        )
