"""The OpenAPI document (``bitelab/openapi.json``) against the real API.

Every route of the Klein application is in the document and nothing else
is; for every operation, every response the document lists is produced by
a real request and validated with ``openapi-core``, and so is every other
response these tests get (an undocumented status fails).  Most requests go
to the real Klein resource through ``StubTreq`` in an in-process lab
(``support.inlab``): real store on SQLite, recording setup script and power
switches that answer when the test says.  ``test_real_server_*`` do the
same against a real ``twistd``.
"""

import json
import os
import re

import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS31Validator

from bitelab.api import API
from support.inlab import InLab

DOCUMENT_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "bitelab",
    "openapi.json",
)
with open(DOCUMENT_PATH) as _f:
    DOCUMENT = json.load(_f)
SPEC = OpenAPI.from_dict(DOCUMENT)

BOARDS = """
setup_script = /bin/true;
classes { a { arch = x; } b { arch = y; } }
boards [
    { name = a1; brdclass = a; options = [
        { cls = recpower, port = 1 }, { cls = serialconsole, val = /dev/ttyX1 } ] },
    { name = a2; brdclass = a; options = [ { cls = recpower, port = 2 } ] },
    { name = a3; brdclass = a; options = [ { cls = recpower, port = 3 } ] },
    { name = b1; brdclass = b; options = [ { cls = serialconsole, val = /dev/ttyX2 } ] },
]
"""


def documented(template, method):
    """The response statuses the document lists for one operation."""
    return {int(code) for code in DOCUMENT["paths"][template][method]["responses"]}


def operations():
    """(path template, method) of every operation in the document."""
    return sorted(
        (template, method)
        for template, item in DOCUMENT["paths"].items()
        for method in item
    )


class Answer:
    """One HTTP answer: status, headers, raw body."""

    def __init__(self):
        self.status = None
        self.headers = None
        self.body = None

    @property
    def json(self):
        return json.loads(self.body)


class Checker:
    """Sends requests to an in-process lab; validates each answer."""

    def __init__(self, lab):
        self.lab = lab
        #: (template, method) -> statuses seen (and validated)
        self.seen = {}

    def send(self, method, path, user=None, body=None, raw=None, token=None):
        """Start a request; an ``Answer`` filled once it is answered."""
        headers = {}
        if user is not None:
            headers["Authorization"] = [f"Bearer {self.lab.tokens[user]}"]
        if token is not None:
            headers["Authorization"] = [f"Bearer {token}"]
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        answer = Answer()
        answer.request = (method, path, headers, data)
        http = self.lab.http
        d = http.request(method, "http://lab/api/v1" + path, headers=headers, data=data)

        def got(response):
            answer.headers = response.headers
            return http.content(response).addCallback(done, response)

        def done(content, response):
            answer.body = content
            answer.status = response.code

        d.addCallback(got)
        http.flush()
        return answer

    def check(self, answer, template, expect, request_valid=None):
        """Validate a finished ``answer`` of operation ``template`` and record it."""
        self.lab.flush()
        assert answer.status is not None, "the request was not answered"
        assert answer.status == expect, (answer.status, answer.body)
        method, path, headers, data = answer.request
        path_only, _, query = path.partition("?")
        args = {}
        for pair in filter(None, query.split("&")):
            key, _, value = pair.partition("=")
            args[key] = value
        request = MockRequest(
            "http://lab",
            method.lower(),
            "/api/v1" + path_only,
            args=args,
            headers={k: v[0] for k, v in headers.items()},
            data=data.encode() if isinstance(data, str) else data,
        )
        content_type = answer.headers.getRawHeaders(b"content-type", [b""])[0].decode()
        response = MockResponse(
            answer.body,
            status_code=answer.status,
            headers={
                k.decode(): v[0].decode() for k, v in answer.headers.getAllRawHeaders()
            },
            content_type=content_type,
        )
        SPEC.validate_response(request, response)
        if request_valid or (request_valid is None and 200 <= expect < 300):
            SPEC.validate_request(request)
        self.seen.setdefault((template, method.lower()), set()).add(answer.status)
        return answer

    def call(self, method, path, template, expect, user=None, **kwargs):
        """Send, then check at once (for calls nothing keeps pending)."""
        request_valid = kwargs.pop("request_valid", None)
        return self.check(
            self.send(method, path, user, **kwargs), template, expect, request_valid
        )

    def covered(self, template, method, skip=()):
        """Assert every documented status but ``skip`` was seen."""
        want = documented(template, method) - set(skip)
        assert self.seen.get((template, method), set()) >= want, (
            template,
            method,
            want - self.seen.get((template, method), set()),
        )


def complete_all(lab, ok=True):
    """Answer every pending script or power call with success (or failure)."""
    while lab.calls.pending:
        lab.complete(0, ok)


@pytest.fixture
def lab(tmp_path):
    """An in-process lab whose start-up power reads have been answered."""
    made = InLab(tmp_path, BOARDS)
    complete_all(made)
    yield made
    made.close()


@pytest.fixture
def checker(lab):
    """A ``Checker`` of that lab."""
    return Checker(lab)


def reserve(checker, user, board):
    """Reserve ``board`` for ``user``, answering its setup; the Answer."""
    answer = checker.send("POST", f"/boards/{board}/reserve", user, body={})
    complete_all(checker.lab)
    return checker.check(answer, "/boards/{name}/reserve", 200)


def klein_routes():
    """(path template, method) of every route of the API's Klein app."""
    found = set()
    for rule in API.app.url_map.iter_rules():
        template = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert template.startswith("/api/v1/"), rule.rule
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found.add((template[len("/api/v1") :], method.lower()))
    return found


def test_every_route_is_documented_and_nothing_else():
    """The document's operations are exactly the Klein application's routes
    (with ``{rid}`` of the code named ``{id}`` in the document)."""
    routes = {(t.replace("{rid}", "{id}"), m) for t, m in klein_routes()}
    assert routes == set(operations())


def test_document_is_valid_openapi_31_and_carries_the_version():
    """The document passes the OpenAPI 3.1 validator; its version is the
    package's."""
    from openapi_spec_validator import validate

    import bitelab

    validate(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.1")
    assert DOCUMENT["info"]["version"] == bitelab.__version__


def test_every_authenticated_operation_documents_401_500_503():
    """Every operation but the two public ones can meet a bad token, a bug
    and a database that is gone, so each documents those answers."""
    for template, method in operations():
        responses = documented(template, method)
        if template in ("/info", "/openapi.json"):
            assert DOCUMENT["paths"][template][method]["security"] == []
            continue
        assert {401, 500, 503} <= responses, (template, method)


# paths to send for each operation, with a board or reservation that exists
EXAMPLES = {
    ("/whoami", "get"): ("GET", "/whoami", None),
    ("/classes", "get"): ("GET", "/classes", None),
    ("/boards", "get"): ("GET", "/boards", None),
    ("/boards/{name}", "get"): ("GET", "/boards/a1", None),
    ("/boards/{name}/reserve", "post"): ("POST", "/boards/a2/reserve", {}),
    ("/boards/{name}/release", "post"): ("POST", "/boards/a2/release", {}),
    ("/boards/{name}/attrs", "post"): ("POST", "/boards/a2/attrs", {"power": "on"}),
    ("/boards/{name}/maintenance", "post"): (
        "POST",
        "/boards/a3/maintenance",
        {"reason": "r"},
    ),
    ("/boards/{name}/maintenance", "delete"): (
        "DELETE",
        "/boards/a3/maintenance",
        None,
    ),
    ("/boards/{name}/console", "get"): ("GET", "/boards/a1/console", None),
    ("/events", "get"): ("GET", "/events", None),
    ("/reservations", "get"): ("GET", "/reservations", None),
    ("/reservations/{id}", "get"): ("GET", "/reservations/1", None),
    ("/tokens/current", "delete"): ("DELETE", "/tokens/current", None),
    ("/queue", "get"): ("GET", "/queue", None),
    ("/queue/{wid}", "delete"): ("DELETE", "/queue/1", None),
    ("/events/stream", "get"): ("GET", "/events/stream", None),
    ("/login-link", "post"): ("POST", "/login-link", {}),
}


def test_examples_cover_every_authenticated_operation():
    """The table the next test runs on names every authenticated operation."""
    assert set(EXAMPLES) == {
        op for op in operations() if op[0] not in ("/info", "/openapi.json")
    }


@pytest.mark.parametrize("operation", sorted(EXAMPLES), ids="-".join)
def test_401_503_500_of_every_authenticated_operation(tmp_path, operation):
    """No token: 401; the database file replaced under the server: 503
    ``storage``; the database connection gone (a bug): 500 ``internal``.
    Each answer is the documented one."""
    lab = InLab(tmp_path, BOARDS)
    complete_all(lab)
    checker = Checker(lab)
    method, path, body = EXAMPLES[operation]
    template = operation[0]
    answer = checker.call(method, path, template, 401, body=body, request_valid=False)
    assert answer.headers.getRawHeaders(b"www-authenticate") == [
        b'Bearer realm="bitelab"'
    ]
    db_file = lab.config.db_file
    os.rename(db_file, db_file + ".away")
    with open(db_file, "wb"):
        pass
    answer = checker.call(method, path, template, 503, user="root", body=body)
    assert answer.json["error"]["code"] == "storage"
    os.unlink(db_file)
    os.rename(db_file + ".away", db_file)
    lab.pool.conn.close()
    answer = checker.call(method, path, template, 500, user="bob", body=body)
    assert answer.json["error"]["code"] == "internal"
    checker.covered(*operation, skip={200, 400, 403, 404, 409, 502})


def test_info_and_openapi(checker):
    """``/info`` and ``/openapi.json`` answer without a token; the document
    served is the file."""
    info = checker.call("GET", "/info", "/info", 200).json
    assert info["name"] == "bitelab"
    served = checker.call("GET", "/openapi.json", "/openapi.json", 200)
    assert json.loads(served.body) == DOCUMENT
    checker.covered("/info", "get")
    checker.covered("/openapi.json", "get")


def test_reading_routes(checker):
    """whoami, classes, boards, one board, events, reservations, one
    reservation: answers and errors as documented."""
    lab = checker.lab
    checker.call("GET", "/whoami", "/whoami", 200, "alice")
    checker.call("GET", "/classes", "/classes", 200, "alice")
    reserve(checker, "alice", "a1")
    boards = checker.call("GET", "/boards", "/boards", 200, "alice").json["boards"]
    assert [b["state"] for b in boards] == ["reserved", "free", "free", "free"]
    checker.call("GET", "/boards/a1", "/boards/{name}", 200, "root")
    checker.call("GET", "/boards/zz", "/boards/{name}", 404, "alice")
    checker.call("GET", "/events?limit=5&board=a1", "/events", 200, "root")
    checker.call("GET", "/events?limit=x", "/events", 400, "root", request_valid=False)
    checker.call("GET", "/events", "/events", 403, "alice")
    mine = checker.call("GET", "/reservations", "/reservations", 200, "alice").json
    rid = mine["reservations"][0]["id"]
    checker.call(
        "GET",
        "/reservations?limit=0",
        "/reservations",
        400,
        "alice",
        request_valid=False,
    )
    checker.call("GET", "/reservations?user=bob", "/reservations", 403, "alice")
    checker.call("GET", f"/reservations/{rid}", "/reservations/{id}", 200, "alice")
    checker.call("GET", f"/reservations/{rid}", "/reservations/{id}", 404, "bob")
    checker.call("GET", "/reservations/x", "/reservations/{id}", 404, "alice")
    assert lab.board("a1")["state"] == "reserved"
    for template, method in (
        ("/whoami", "get"),
        ("/classes", "get"),
        ("/boards", "get"),
        ("/boards/{name}", "get"),
        ("/events", "get"),
        ("/reservations", "get"),
        ("/reservations/{id}", "get"),
    ):
        checker.covered(template, method, skip={401, 500, 503})


def test_reserve_and_release(checker):
    """reserve: 200, 400, 404, 409, 502; release: 200, 400, 403, 404, 409."""
    reserved = reserve(checker, "alice", "a2").json
    assert reserved["state"] == "reserved" and reserved["attrs"]["ip"]
    t = "/boards/{name}/reserve"
    checker.call("POST", "/boards/a2/reserve", t, 409, "bob", body={})
    checker.call("POST", "/boards/zz/reserve", t, 404, "bob", body={})
    checker.call(
        "POST",
        "/boards/a3/reserve",
        t,
        400,
        "bob",
        body={"timeout": "x"},
        request_valid=False,
    )
    failing = checker.send("POST", "/boards/a3/reserve", "bob", body={})
    checker.lab.complete(0, ok=False)
    complete_all(checker.lab)
    answer = checker.check(failing, t, 502, request_valid=True)
    assert answer.json["error"]["code"] == "setup_failed"
    t = "/boards/{name}/release"
    checker.call(
        "POST",
        "/boards/a2/release",
        t,
        400,
        "alice",
        body={"force": "yes"},
        request_valid=False,
    )
    checker.call("POST", "/boards/a2/release", t, 403, "bob", body={})
    checker.call("POST", "/boards/zz/release", t, 404, "alice", body={})
    checker.call("POST", "/boards/b1/release", t, 409, "alice", body={})
    ending = checker.send("POST", "/boards/a2/release", "alice", body={})
    complete_all(checker.lab)
    assert checker.check(ending, t, 200).json["state"] == "free"
    checker.covered("/boards/{name}/reserve", "post", skip={401, 500, 503})
    checker.covered("/boards/{name}/release", "post", skip={401, 500, 503})


def test_attrs(checker):
    """attrs: 200 (power, timeout), 400, 403, 404, 409, 502."""
    reserve(checker, "alice", "a1")
    t = "/boards/{name}/attrs"
    switching = checker.send("POST", "/boards/a1/attrs", "alice", body={"power": "on"})
    complete_all(checker.lab)
    assert checker.check(switching, t, 200).json["attrs"]["power"] == "on"
    checker.call("POST", "/boards/a1/attrs", t, 200, "alice", body={"timeout": 500})
    checker.call(
        "POST",
        "/boards/a1/attrs",
        t,
        400,
        "alice",
        body={"power": "up"},
        request_valid=False,
    )
    checker.call("POST", "/boards/a1/attrs", t, 403, "bob", body={"power": "on"})
    checker.call("POST", "/boards/zz/attrs", t, 404, "alice", body={"power": "on"})
    checker.call("POST", "/boards/a2/attrs", t, 409, "root", body={"timeout": 10})
    failing = checker.send("POST", "/boards/a1/attrs", "alice", body={"power": "off"})
    checker.lab.complete(0, ok=False)
    answer = checker.check(failing, t, 502, request_valid=True)
    assert answer.json["error"]["code"] == "power_failed"
    checker.covered(t, "post", skip={401, 500, 503})


def test_maintenance(checker):
    """maintenance POST: 200, 400, 403, 404, 409; DELETE: 200, 403, 404,
    409, 502."""
    t = "/boards/{name}/maintenance"
    checker.call("POST", "/boards/a3/maintenance", t, 200, "root", body={"reason": "r"})
    checker.call(
        "POST",
        "/boards/a2/maintenance",
        t,
        400,
        "root",
        body={},
        request_valid=False,
    )
    checker.call(
        "POST", "/boards/a2/maintenance", t, 403, "alice", body={"reason": "r"}
    )
    checker.call("POST", "/boards/zz/maintenance", t, 404, "root", body={"reason": "r"})
    reserve(checker, "alice", "a1")
    checker.call("POST", "/boards/a1/maintenance", t, 409, "root", body={"reason": "r"})
    checker.call("DELETE", "/boards/a3/maintenance", t, 403, "alice")
    checker.call("DELETE", "/boards/zz/maintenance", t, 404, "root")
    checker.call("DELETE", "/boards/a2/maintenance", t, 409, "root")
    failing = checker.send("DELETE", "/boards/a3/maintenance", "root")
    checker.lab.complete(0, ok=False)
    assert checker.check(failing, t, 502).json["error"]["code"] == "power_failed"
    ending = checker.send("DELETE", "/boards/a3/maintenance", "root")
    complete_all(checker.lab)
    assert checker.check(ending, t, 200).json["state"] == "free"
    checker.covered(t, "post", skip={401, 500, 503})
    checker.covered(t, "delete", skip={401, 500, 503})


def test_console_and_token(checker):
    """console: 200 (text), 403, 404, 409; tokens/current: 200."""
    lab = checker.lab
    reserve(checker, "alice", "a1")
    lab.consoles["a1"].received(b"booting\r\n")
    t = "/boards/{name}/console"
    text = checker.call("GET", "/boards/a1/console", t, 200, "alice")
    assert text.body.endswith(b"booting\r\n")
    checker.call("GET", "/boards/a1/console", t, 403, "bob")
    checker.call("GET", "/boards/a2/console", t, 404, "root")
    ending = checker.send("POST", "/boards/a1/release", "alice", body={})
    assert lab.board("a1")["state"] == "releasing"
    checker.call("GET", "/boards/a1/console", t, 409, "root")
    complete_all(lab)
    checker.check(ending, "/boards/{name}/release", 200)
    checker.call("DELETE", "/tokens/current", "/tokens/current", 200, "carol")
    checker.call("GET", "/whoami", "/whoami", 401, "carol", request_valid=False)
    checker.covered(t, "get", skip={401, 500, 503})
    checker.covered("/tokens/current", "delete", skip={401, 500, 503})


def test_unknown_paths_and_methods_answer_the_error_object(checker):
    """A path the API does not have is 404, a method a path does not take
    405 with ``Allow``: both the document's ``Error`` object."""
    validator = OAS31Validator(
        {
            **DOCUMENT["components"]["schemas"]["Error"],
            "components": DOCUMENT["components"],
        }
    )
    missing = checker.send("GET", "/nothing", "alice")
    checker.lab.flush()
    assert missing.status == 404
    validator.validate(missing.json)
    wrong = checker.send("PUT", "/boards", "alice", body={})
    checker.lab.flush()
    assert wrong.status == 405
    assert wrong.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
    validator.validate(wrong.json)


@pytest.mark.e2e
def test_real_server_answers_as_documented(lab_server):
    """A real ``twistd``: /info, the document, boards, a reservation, its
    console error and a release validate against the document, and the
    document it serves is the file."""
    server = lab_server()
    token = server.token("root")

    def check(method, path, expect, body=None):
        status, payload = server.request(
            method, "/api/v1" + path, body=body, token=token
        )
        assert status == expect, payload
        raw = (
            json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        )
        path_only, _, query = path.partition("?")
        request = MockRequest(
            server.url,
            method.lower(),
            "/api/v1" + path_only,
            args=dict(pair.split("=", 1) for pair in filter(None, query.split("&"))),
            headers={"Authorization": f"Bearer {token}"},
            data=None if body is None else json.dumps(body).encode(),
        )
        content_type = (
            "application/json" if not isinstance(payload, bytes) else "text/plain"
        )
        SPEC.validate_response(
            request, MockResponse(raw, status_code=status, content_type=content_type)
        )
        return payload

    assert check("GET", "/openapi.json", 200) == DOCUMENT
    check("GET", "/info", 200)
    check("GET", "/boards", 200)
    check("POST", "/boards/zynq/reserve", 200, body={"timeout": 60})
    check("GET", "/boards/zynq-1/console", 404)
    check("GET", "/reservations", 200)
    check("POST", "/boards/zynq-1/release", 200, body={})
    check("GET", "/events?limit=3", 200)


def test_queue(checker):
    """queue: 200; leaving it: 200, 404 (none, or not one's own), 409 (a board
    was handed over first); a reserve that waits answers once served."""
    lab = checker.lab
    for name in ("a1", "a2", "a3"):
        reserve(checker, "root", name)
    waiting = checker.send(
        "POST", "/boards/a/reserve", "alice", body={"wait": 60, "ticket": "t-1"}
    )
    lab.flush()
    queue = checker.call("GET", "/queue", "/queue", 200, "alice")
    wid = queue.json["queue"][0]["id"]
    assert queue.json["queue"][0]["ticket"] == "t-1"
    checker.call("DELETE", f"/queue/{wid}", "/queue/{wid}", 404, "bob")
    checker.call("DELETE", "/queue/999", "/queue/{wid}", 404, "alice")
    ending = checker.send("POST", "/boards/a2/release", "root", body={})
    complete_all(lab)
    checker.check(ending, "/boards/{name}/release", 200)
    checker.check(waiting, "/boards/{name}/reserve", 200)
    checker.call("DELETE", f"/queue/{wid}", "/queue/{wid}", 409, "alice")
    second = checker.send("POST", "/boards/a/reserve", "bob", body={"wait": 60})
    lab.flush()
    other = checker.call("GET", "/queue", "/queue", 200, "root").json["queue"][0]
    checker.call("DELETE", f"/queue/{other['id']}", "/queue/{wid}", 200, "bob")
    checker.check(second, "/boards/{name}/reserve", 409)
    checker.covered("/queue", "get", skip={401, 500, 503})
    checker.covered("/queue/{wid}", "delete", skip={401, 500, 503})


def test_login_link(checker):
    """login-link: 200 with a one-time path, 400 for a body it does not take,
    404 on a server without the web UI."""
    from bitelab.websession import WebSessions

    t = "/login-link"
    checker.call("POST", t, t, 404, "alice", body={})
    lab = checker.lab
    lab.api.sessions = WebSessions(lab.clock, lab.token_store)
    answer = checker.call("POST", t, t, 200, "alice", body={})
    assert answer.json["path"].startswith("/login#code=")
    checker.call("POST", t, t, 400, "alice", body={"x": 1}, request_valid=False)
    checker.covered(t, "post", skip={401, 500, 503})
