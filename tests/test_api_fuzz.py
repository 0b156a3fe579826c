"""Whatever a client sends, the API answers with a JSON error, never a 500, and
changes nothing it should not: hypothesis against a real server."""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.server import LabServer

pytestmark = pytest.mark.e2e

CODES = {
    400: "invalid",
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
    st.sampled_from(["zynq-1", "zynq", "pine-1", "nope", "..", "%2e%2e", "a%00b"]),
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
