"""Whatever a client sends, the API answers with a JSON error, never a 500, and
changes nothing it should not: hypothesis against a real server.  Bodies are
judged by their headers before they are read, deep nesting is a 400, and an
encoded slash names nothing."""

import json
import re
import socket
import ssl
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.server import LabServer

pytestmark = pytest.mark.e2e

CODES = {
    400: "invalid",
    413: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "invalid",
    409: "unavailable",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One server for the module, with a token for an ordinary user."""
    server = LabServer(tmp_path_factory.mktemp("fuzz")).start()
    server.alice = server.token("alice")
    server.bob = server.token("bob")
    server.request("POST", "/api/v1/boards/pine-1/reserve", {}, server.bob)
    yield server
    server.stop()


def snapshot(lab):
    boards = lab.get("/api/v1/boards", token=lab.bob)["boards"]
    return {b["name"]: (b["state"], b["holder"], b["expires_at"]) for b in boards}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["timeout", "sshpubkey", "force", "power", "reason", "x"]),
        json_values,
        max_size=3,
    ).map(lambda v: json.dumps(v).encode()),
)
names = st.one_of(
    st.sampled_from(
        ["zynq-1", "zynq", "pine-1", "nope", "..", "%2e%2e", "a%00b", "zynq-1%0A"]
    ),
    st.lists(st.sampled_from(["zynq-1", "zynq", "..", "reserve"]), min_size=2).map(
        lambda parts: "%2F".join(parts)
    ),
    st.text(string.ascii_letters + string.digits + "._-%~!$&'()*+,;=:@", max_size=30),
)
actions = st.sampled_from(["reserve", "release", "attrs", "maintenance", "console", ""])


def check_error(status, body):
    assert status < 500, (status, body)
    if status >= 400:
        assert body["error"]["code"] == CODES[status]
        assert body["error"]["message"]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    name=names,
    action=actions,
    body=bodies,
)
def test_random_requests_on_someone_elses_board_never_500(
    lab, method, name, action, body
):
    """Random methods, paths and bodies: a 4xx JSON error or a success, never a 500,
    and bob's reservation of pine-1 survives anything alice sends."""
    path = f"/api/v1/boards/{name}" + (f"/{action}" if action else "")
    if name.startswith("zynq") and action == "reserve":
        path = "/api/v1/boards/nope/reserve"  # keep the free boards free
    status, answer = lab.request(method, path, raw=body, token=lab.alice)
    if status >= 400 or not isinstance(answer, dict):
        check_error(status, answer if isinstance(answer, dict) else {"error": {}})
    if "%2F" in path:
        assert status == 404
    state = snapshot(lab)
    assert state["pine-1"][:2] == ("reserved", "bob")
    assert state["zynq-1"][0] == "free"


@settings(max_examples=60, deadline=None)
@given(
    header=st.one_of(
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=250).map(
            lambda t: "Bearer " + t
        ),
    )
)
def test_random_authorization_headers_are_401(lab, header):
    """Any Authorization header that is not a valid token gives 401 unauthorized."""
    status, body = lab.request(
        "GET", "/api/v1/whoami", headers={"Authorization": header}
    )
    assert status == 401 and body["error"]["code"] == "unauthorized"


def raw_exchange(lab, head, body=b"", timeout=10):
    """Send ``head`` (and ``body``) on a fresh connection; the answer's
    (status, JSON) as soon as it comes, without sending anything more."""
    with socket.create_connection(("127.0.0.1", lab.http_port), timeout=timeout) as s:
        s.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < int(
            re.search(rb"Content-Length: (\d+)", answer).group(1)
            if b"Content-Length" in answer
            else 0
        ):
            part = s.recv(65536)
            if not part:
                break
            answer += part
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def post_head(token=None, *lines, path="/api/v1/boards/zynq-1/reserve"):
    auth = [f"Authorization: Bearer {token}"] if token else []
    return (
        "\r\n".join([f"POST {path} HTTP/1.1", "Host: x", *auth, *lines, "", ""])
    ).encode()


@pytest.mark.parametrize(
    "who, lines, status",
    [
        (None, ["Content-Length: 100000000000"], 413),
        ("alice", ["Content-Length: 100000000000"], 413),
        ("alice", ["Content-Length: 65537"], 413),
        (None, ["Content-Length: 2"], 401),
        ("bl_made_up", ["Content-Length: 2"], 401),
        (None, ["Transfer-Encoding: chunked"], 401),
        (None, ["Content-Length: 100000000", "Expect: 100-continue"], 413),
    ],
    ids=[
        "huge",
        "huge-token",
        "just-over",
        "no-token",
        "bad-token",
        "chunked",
        "expect",
    ],
)
def test_bodies_are_refused_from_the_headers(lab, who, lines, status):
    """An oversized body (413) or a body without a valid token (401) is
    answered before a byte of it is sent, with the JSON error shape."""
    token = {"alice": lab.alice}.get(who, who)
    got, body = raw_exchange(lab, post_head(token, *lines))
    assert got == status
    assert body["error"]["code"] == CODES[status] and body["error"]["message"]
    assert snapshot(lab)["zynq-1"][0] == "free"


def test_chunked_body_is_cut_off_at_the_limit(lab):
    """A chunked body is refused 413 once it passes 64 KiB, before its end."""
    chunk = b"x" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(9))
    got, answer = raw_exchange(
        lab, post_head(lab.alice, "Transfer-Encoding: chunked"), body
    )
    assert got == 413 and answer["error"]["code"] == "invalid"


def test_large_body_is_answered_before_it_is_sent_and_not_kept(lab):
    """A client that sends a large body anyway gets its 413 and the server's
    memory does not grow by it: nothing of it is kept."""
    before = rss_kib(lab.process.pid)
    body = b" " * (32 * 2**20)
    head = post_head(lab.alice, f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", lab.http_port), timeout=10) as s:
        s.sendall(head)
        first = s.recv(12)
        try:
            s.sendall(body)
        except OSError:
            pass  # the server may close before taking it all
    assert first == b"HTTP/1.1 413"
    assert rss_kib(lab.process.pid) < before + 16 * 1024


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1])


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1000, 10000), wrap=st.sampled_from(["[", '{"a":']))
def test_deeply_nested_json_is_400(lab, depth, wrap):
    """A body nested thousands deep is a 400 invalid, never a 500."""
    close = "]" if wrap == "[" else "}"
    body = ('{"power": ' + wrap * depth + "1" + close * depth + "}").encode()
    for path in ("/api/v1/boards/zynq-1/attrs", "/api/v1/boards/nope/reserve"):
        status, answer = lab.request("POST", path, raw=body, token=lab.alice)
        assert status in (400, 403, 404), (status, answer)
        check_error(status, answer)


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/api/v1/boards/zynq-1%2Freserve"),
        ("POST", "/api/v1/boards/zynq-1%2freserve"),
        ("POST", "/api/v1/boards/zynq%2F..%2Fzynq-1/reserve"),
        ("GET", "/api/v1/boards%2Fzynq-1"),
    ],
)
def test_encoded_slash_is_not_found(lab, method, path):
    """An encoded slash in a path segment names nothing: 404, and no board
    is touched (routing would otherwise decode it into a separator)."""
    status, body = lab.request(method, path, raw=b"{}", token=lab.alice)
    assert status == 404 and body["error"]["code"] == "not_found"
    assert snapshot(lab)["zynq-1"][0] == "free"


def test_tls_endpoint_serves_and_refuses_bodies_early(tmp_path):
    """Behind an ssl: endpoint the API answers (the connection cap keeps
    TLS's protocol negotiation working), and bodies are still judged by
    their headers."""
    server = LabServer(tmp_path, tls=True).start()
    try:
        assert server.get("/api/v1/info")["name"] == "bitelab"
        token = server.token("alice")
        context = ssl._create_unverified_context()
        with (
            socket.create_connection(
                ("127.0.0.1", server.http_port), timeout=10
            ) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(post_head(token, "Content-Length: 100000000000"))
            assert tls.recv(12) == b"HTTP/1.1 413"
        status, body = server.request(
            "POST", "/api/v1/boards/zynq-1/reserve", {}, token
        )
        assert status == 200 and body["holder"] == "alice"
    finally:
        server.stop()
