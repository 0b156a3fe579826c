"""The web UI's HTTP side in-process: sign-in with a token or a one-time
login link, session cookies, CSRF checks, sign-out, pages and static files,
driven through the server's own site over ``StringTransport`` connections
(``support.inweb``)."""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from bitelab import websession
from bitelab.websession import COOKIE
from support.inweb import HOST, ORIGIN, Browser, WebLab
from support.server import REPO

BOARDS = """
setup_script = /bin/true;
classes { a { arch = x; } }
boards [
    { name = a1; brdclass = a; options = [
        { cls = recpower, port = 1 }, { cls = serialconsole, val = /dev/ttyX1 } ] },
    { name = a2; brdclass = a; },
]
"""


@pytest.fixture
def lab(tmp_path):
    """An in-process lab with its web UI; start-up power reads answered."""
    made = WebLab(tmp_path, BOARDS)
    answer_all(made)
    yield made
    made.close()


def answer_all(lab):
    while lab.calls.pending:
        lab.complete(0)


def link(lab, user):
    """A login link path made with ``user``'s token."""
    reply = lab.request("POST", "/api/v1/login-link", user=user)
    assert reply.status == 200, reply.body
    return reply.json["path"]


def test_pages_send_a_browser_without_a_session_to_sign_in(lab):
    """The lab, board and audit pages answer 303 to /login (keeping where
    the browser was going); the sign-in page itself is served."""
    for path, target in (
        ("/", "/login"),
        ("/boards/a1", "/login?next=/boards/a1"),
        ("/audit", "/login?next=/audit"),
    ):
        reply = lab.request("GET", path)
        assert reply.status == 303, path
        assert reply.headers["Location"] == target
    reply = lab.request("GET", "/login")
    assert reply.status == 200 and b"Sign in" in reply.body


def test_token_sign_in_gives_a_strict_httponly_cookie_and_the_pages(lab):
    """Signing in with a token sets an HttpOnly, SameSite=Strict session
    cookie (not Secure over plain HTTP) holding no token; with it the pages
    and the API answer for that user."""
    browser = Browser(lab)
    reply = browser.sign_in_with_token(lab.tokens_for("alice"))
    assert reply.status == 200 and reply.json == {"user": "alice", "next": "/"}
    _, attributes = reply.cookies[COOKIE]
    assert "HttpOnly" in attributes and "SameSite=strict" in attributes
    assert "Path=/" in attributes and "Secure" not in attributes
    assert lab.tokens["alice"] not in reply.raw.decode()
    page = browser.get("/")
    assert page.status == 200
    assert b'data-user="alice"' in page.body and browser.csrf
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert browser.get("/api/v1/whoami").json == {"user": "alice", "admin": False}


def test_session_cookie_is_secure_under_tls(lab):
    """Over TLS the session cookie is also Secure."""
    browser = Browser(lab)
    browser.get("/login")
    reply = lab.request(
        "POST",
        "/login",
        cookie=browser.cookie,
        headers={
            "Origin": ORIGIN,
            "X-Login-CSRF": browser.login_check,
            "Authorization": f"Bearer {lab.tokens_for('alice')}",
        },
        secure=True,
    )
    assert reply.status == 200
    assert "Secure" in reply.cookies[COOKIE][1]


def test_sign_in_is_refused_without_the_login_page_or_from_another_site(lab):
    """Signing in needs the sign-in page's own check value and must not come
    from another site: no session is made otherwise."""
    token = lab.tokens_for("alice")
    browser = Browser(lab)
    browser.open_login_page()
    bearer = {"Authorization": f"Bearer {token}"}
    for headers in (
        {**bearer, "Origin": ORIGIN},
        {**bearer, "Origin": ORIGIN, "X-Login-CSRF": "forged"},
        {
            **bearer,
            "Origin": "http://evil.example",
            "X-Login-CSRF": browser.login_check,
        },
        {**bearer, "Sec-Fetch-Site": "cross-site", "X-Login-CSRF": browser.login_check},
    ):
        reply = lab.request("POST", "/login", cookie=browser.cookie, headers=headers)
        assert reply.status == 403, headers
        assert COOKIE not in reply.cookies
    assert len(lab.web.sessions) == 0


def test_bad_token_signs_nobody_in(lab):
    """A wrong token is refused with 401 and no cookie."""
    reply = Browser(lab).sign_in_with_token("bl_forged")
    assert reply.status == 401 and COOKIE not in reply.cookies


def test_login_link_works_once_and_briefly(lab):
    """A login link signs its user in once; used again, or after its two
    minutes, it is refused."""
    path = link(lab, "alice")
    assert path.startswith("/login#code=")
    browser = Browser(lab)
    reply = browser.sign_in_with_link(path, next_page="/boards/a1")
    assert reply.status == 200
    assert reply.json == {"user": "alice", "next": "/boards/a1"}
    assert browser.get("/api/v1/whoami").json["user"] == "alice"
    again = Browser(lab).sign_in_with_link(path)
    assert again.status == 401 and "not valid" in again.json["error"]["message"]
    late = link(lab, "alice")
    lab.clock.advance(websession.LINK_LIFETIME + 1)
    assert Browser(lab).sign_in_with_link(late).status == 401


def test_login_link_is_made_from_a_token_only(lab):
    """A session cannot make login links (they would outlive it): the call
    needs a bearer token; without any credentials it is 401."""
    browser = lab.browser("alice")
    reply = browser.change("POST", "/api/v1/login-link")
    assert reply.status == 400 and "Bearer" in reply.json["error"]["message"]
    assert lab.request("POST", "/api/v1/login-link").status == 401


def test_login_link_dies_with_its_token(lab):
    """A link made from a token that is revoked before use signs nobody in."""
    path = link(lab, "alice")
    assert lab.request("DELETE", "/api/v1/tokens/current", user="alice").status == 200
    assert Browser(lab).sign_in_with_link(path).status == 401


def test_next_page_is_only_one_of_the_uis_pages(lab):
    """After sign-in the browser is sent only to a page of the UI, never to
    another site (an open redirect)."""
    for wanted, sent in (
        ("/audit", "/audit"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/api/v1/boards", "/"),
    ):
        reply = Browser(lab).sign_in_with_token(lab.tokens_for("bob"), next_page=wanted)
        assert reply.json["next"] == sent, wanted


def test_changes_need_the_csrf_token(lab):
    """With a session cookie, a request that changes something is refused
    without the session's CSRF token, with another one, or from another
    site, and changes nothing; reading needs no token; with it the change
    is made."""
    browser = lab.browser("alice")
    attempts = [
        {"csrf": False},
        {"csrf": False, "headers": {"X-CSRF-Token": "forged"}},
        {"headers": {"Origin": "http://evil.example"}},
        {"headers": {"Sec-Fetch-Site": "cross-site"}},
    ]
    for attempt in attempts:
        reply = browser.change("POST", "/api/v1/boards/a2/reserve", {}, **attempt)
        assert reply.status in (401, 403), attempt
        assert lab.board("a2")["state"] == "free"
    other = lab.browser("bob")
    reply = browser.change(
        "POST", "/api/v1/boards/a2/reserve", {}, headers={"X-CSRF-Token": other.csrf}
    )
    assert reply.status in (401, 403)
    assert browser.get("/api/v1/boards").status == 200
    reply = browser.change("POST", "/api/v1/boards/a2/reserve", {})
    assert reply.status == 200 and reply.json["holder"] == "alice"


def test_a_body_without_the_csrf_token_is_refused_before_it_is_read(lab):
    """The server judges a cookie request's body by its headers: without the
    CSRF token it is refused (401) and the connection closed, as a body
    without a token is."""
    browser = lab.browser("alice")
    reply = browser.change(
        "POST", "/api/v1/boards/a2/attrs", {"timeout": 60}, csrf=False
    )
    assert reply.status == 401
    assert reply.headers["Connection"] == "close"


def test_sign_out_ends_the_session_at_once(lab):
    """Signing out needs the CSRF token; then the cookie is cleared and the
    old session's cookie is refused everywhere, even if sent again."""
    browser = lab.browser("alice")
    old = browser.cookie
    assert browser.change("POST", "/logout", csrf=False).status == 403
    assert browser.get("/api/v1/whoami").status == 200
    reply = browser.change("POST", "/logout")
    assert reply.status == 200 and browser.session is None
    assert "Max-Age=0" in reply.cookies[COOKIE][1]
    assert lab.request("GET", "/api/v1/whoami", cookie=old).status == 401
    assert lab.request("GET", "/", cookie=old).status == 303
    stale = lab.request(
        "POST",
        "/api/v1/boards/a2/reserve",
        body={},
        cookie=old,
        headers={"Origin": ORIGIN, "X-CSRF-Token": browser.csrf},
    )
    assert stale.status == 401
    assert lab.board("a2")["state"] == "free"


def test_a_revoked_token_ends_its_sessions(lab):
    """A session stands for its token: once the token is revoked (and the
    token cache has let go), the session is refused."""
    browser = lab.browser("alice")
    assert lab.request("DELETE", "/api/v1/tokens/current", user="alice").status == 200
    lab.clock.advance(6)
    assert browser.get("/api/v1/whoami").status == 401
    assert browser.get("/").status == 303


def test_sessions_end_when_idle_or_old(lab):
    """A session unused for two hours ends; so does one twelve hours old,
    however busy."""
    idle = lab.browser("alice")
    lab.clock.advance(websession.IDLE + 1)
    assert idle.get("/api/v1/whoami").status == 401
    busy = lab.browser("alice")
    for _ in range(websession.LIFETIME // 3600):
        lab.clock.advance(3600)
        busy.get("/api/v1/whoami")
    assert busy.get("/api/v1/whoami").status == 401


def test_cookie_sessions_cannot_revoke_tokens(lab):
    """``DELETE /tokens/current`` from a session is refused: a session has
    no token of its own, and the one it stands for stays valid."""
    browser = lab.browser("alice")
    reply = browser.change("DELETE", "/api/v1/tokens/current")
    assert reply.status == 400
    assert lab.request("GET", "/api/v1/whoami", user="alice").status == 200


def test_audit_page_is_for_admins(lab):
    """Users are refused the audit page; admins get it."""
    assert lab.browser("bob").get("/audit").status == 403
    assert lab.browser("root").get("/audit").status == 200


def test_board_page_carries_the_board_and_escapes(lab):
    """The board page names its board; a name that is not a board name is
    not a page."""
    browser = lab.browser("alice")
    page = browser.get("/boards/a1")
    assert page.status == 200 and b'data-board="a1"' in page.body
    assert browser.get("/boards/%3Cscript%3E").status == 404


def test_static_files_are_the_packages_only(lab):
    """Scripts, styles and xterm.js with its licence are served from the
    package, gzipped when asked, revalidated by ETag; nothing else is."""
    script = lab.request("GET", "/static/lab.js")
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    xterm = lab.request(
        "GET", "/static/vendor/xterm.mjs", headers={"Accept-Encoding": "gzip"}
    )
    assert xterm.headers["Content-Encoding"] == "gzip"
    assert b"Terminal" in gzip.decompress(xterm.body)
    licence = lab.request("GET", "/static/vendor/xterm-LICENSE.txt")
    assert b"Permission is hereby granted" in licence.body
    again = lab.request(
        "GET", "/static/lab.js", headers={"If-None-Match": script.headers["ETag"]}
    )
    assert again.status == 304
    for path in ("/static/", "/static/vendor", "/static/../web.py", "/static/lab.html"):
        assert lab.request("GET", path).status == 404, path


def test_everything_else_is_the_api(lab):
    """Paths that are not the UI's go to the API, JSON errors included."""
    reply = lab.request("GET", "/api/v1/info")
    assert reply.status == 200 and reply.json["name"] == "bitelab"
    reply = lab.request("GET", "/nothing/here")
    assert reply.status == 404 and reply.error_code == "not_found"


def stream_events(client):
    """The server-sent events written to ``client`` so far: (kind, data)."""
    events, kind = [], None
    for line in client.transport.value().decode().split("\r\n"):
        for part in line.split("\n"):
            if part.startswith("event: "):
                kind = part[len("event: ") :]
            elif part.startswith("data: ") and kind:
                events.append((kind, json.loads(part[len("data: ") :])))
                kind = None
    return events


def open_stream(lab, browser, query=""):
    client = lab.connect()
    client.send_request(
        "GET",
        "/api/v1/events/stream" + query,
        {"Host": HOST, "Cookie": browser.cookie},
    )
    return client


def test_lab_stream_shows_others_changes_reduced(lab):
    """A session's event stream of the whole lab (``?lab=1``) gets other
    users' board changes as kind, board and time only, and its own in
    full; a plain stream gets only its own; token events go to neither."""
    alice = lab.browser("alice")
    everything = open_stream(lab, alice, "?lab=1")
    own = open_stream(lab, alice)
    lab.request("POST", "/api/v1/boards/a2/reserve", user="bob", body={}, answer=True)
    lab.token_store.issue("carol")
    seen = stream_events(everything)
    assert [kind for kind, _ in seen] == ["reserving", "reserved"]
    for _, data in seen:
        assert set(data) == {"kind", "board", "time"} and data["board"] == "a2"
    assert stream_events(own) == []
    alice.change("POST", "/api/v1/boards/a1/reserve", {})
    mine = [data for _, data in stream_events(own)]
    assert mine and all(data["holder"] == "alice" for data in mine)
    assert "reservation" in mine[-1]


def test_sign_out_closes_the_sessions_streams(lab):
    """Requests a session keeps open (the event stream) are cut when the
    session ends, so nothing outlives signing out."""
    alice = lab.browser("alice")
    stream = open_stream(lab, alice, "?lab=1")
    assert not stream.closed
    alice.change("POST", "/logout")
    assert stream.closed


def test_cookie_header_and_origin_parsing():
    """The session cookie is found among other applications' cookies (even
    ones the standard parser rejects); an Origin matches only its own host
    and port."""
    header = 'theme="a b"; x=[1,2]; bitelab_session=abc; other=1'
    assert websession.cookie_value(header, COOKIE) == "abc"
    assert websession.cookie_value("bitelab_sessionx=1", COOKIE) is None
    assert websession.cookie_value(None, COOKIE) is None
    assert websession.same_origin("http://lab:8080", "lab:8080")
    assert websession.same_origin("https://LAB:8080", "lab:8080")
    assert not websession.same_origin("http://lab:8081", "lab:8080")
    assert not websession.same_origin("http://lab.evil:8080", "lab:8080")
    assert not websession.same_origin("null", "lab:8080")
    assert not websession.same_origin(None, "lab:8080")


def test_sessions_and_links_are_bounded(lab):
    """Memory stays bounded: the least recently used session goes when the
    cap is reached, and a user's unused links beyond five are dropped."""
    sessions = lab.web.sessions
    sessions.max_sessions = 3
    first = lab.browser("alice")
    others = [lab.browser("bob") for _ in range(3)]
    assert len(sessions) == 3
    assert first.get("/api/v1/whoami").status == 401
    assert others[-1].get("/api/v1/whoami").status == 200
    paths = [link(lab, "alice") for _ in range(websession.MAX_LINKS_PER_USER + 1)]
    assert Browser(lab).sign_in_with_link(paths[0]).status == 401
    assert Browser(lab).sign_in_with_link(paths[-1]).status == 200


def test_one_user_cannot_sign_the_others_out(lab):
    """A user signing in again and again pushes out only their own oldest
    sessions, never another user's."""
    bob = lab.browser("bob")
    flood = [lab.browser("carol") for _ in range(websession.MAX_SESSIONS_PER_USER + 5)]
    assert bob.get("/api/v1/whoami").status == 200
    assert flood[0].get("/api/v1/whoami").status == 401
    assert flood[-1].get("/api/v1/whoami").status == 200
    assert len(lab.web.sessions) == websession.MAX_SESSIONS_PER_USER + 1


def test_vendored_xterm_is_what_the_refresh_script_pins():
    """The xterm.js files in the package are the ones ``tools/refresh_xterm.py``
    fetches, named with their versions and integrity, licences included."""
    path = Path(REPO) / "tools" / "refresh_xterm.py"
    spec = importlib.util.spec_from_file_location("refresh_xterm", path)
    refresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(refresh)
    vendor = Path(REPO) / "bitelab" / "webstatic" / "vendor"
    assert (vendor / "VERSIONS").read_text() == refresh.versions_text()
    for files in refresh.FILES.values():
        for target in files.values():
            assert (vendor / target).stat().st_size > 0, target
    for licence in ("xterm-LICENSE.txt", "addon-fit-LICENSE.txt"):
        assert "Permission is hereby granted" in (vendor / licence).read_text()
