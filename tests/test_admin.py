"""``bitelab-admin`` and the CLI's token handling against a real server."""

import json
import os
import subprocess
import sys

import pytest

from support.server import wait_for

pytestmark = pytest.mark.e2e

BITELAB = os.path.join(os.path.dirname(sys.executable), "bitelab")


def cli(server, token, *args):
    return subprocess.run(
        [BITELAB, *args],
        env=server.client_env(token),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_admin_revoke_cuts_off_every_token_of_a_user(lab_server):
    """`bitelab-admin revoke USER` stops all of USER's tokens within seconds,
    leaves other users alone, and is audited."""
    server = lab_server()
    first, second, other = server.token("eve"), server.token("eve"), server.token("bob")
    assert cli(server, first, "whoami").returncode == 0
    result = server.admin("revoke", "eve")
    assert result.returncode == 0 and "revoked 2 tokens of eve" in result.stdout
    wait_for(lambda: cli(server, first, "whoami").returncode == 1, what="revocation")
    assert cli(server, second, "whoami").returncode == 1
    assert cli(server, other, "whoami").returncode == 0
    events = server.admin("events", "-n", "1")
    assert "token_revoke" in events.stdout and "eve" in events.stdout


def test_admin_events_arguments_and_closed_pipe(lab_server):
    """`events -n 0` is a usage error; a reader that goes away is no traceback."""
    server = lab_server()
    for user in ("a", "b", "c"):
        server.token(user)
    assert server.admin("events", "-n", "0").returncode == 2
    piped = subprocess.run(
        f"{sys.executable} -m bitelab.admin --config {server.env_path} events | head -1",
        shell=True,
        capture_output=True,
        text=True,
        env=server.client_env(None),
        check=False,
    )
    assert len(piped.stdout.splitlines()) == 1
    assert "Traceback" not in piped.stderr


def test_admin_events_filters_and_json(lab_server):
    """`events --board/--user` filter like the API; `--json` prints the API's
    document; text times are local with the zone's name, or UTC with --utc."""
    server = lab_server()
    alice, bob = server.token("alice"), server.token("bob")
    for token, board in ((alice, "zynq-1"), (bob, "zynq-2"), (alice, "pine-1")):
        server.request("POST", f"/api/v1/boards/{board}/reserve", {}, token)
    result = server.admin("events", "--user", "alice", "--json")
    events = json.loads(result.stdout)["events"]
    assert [(e["board"], e["action"]) for e in events] == [
        ("pine-1", "reserved"),
        ("zynq-1", "reserved"),
        (None, "token_issue"),
    ]
    assert set(events[0]) == {
        "id",
        "time",
        "user",
        "board",
        "action",
        "detail",
        "reservation",
    }
    status, api = server.request(
        "GET", "/api/v1/events?user=alice", token=server.token("root")
    )
    assert status == 200 and api["events"] == events
    text = server.admin("events", "--board", "zynq-2").stdout.splitlines()
    assert len(text) == 1 and " bob " in text[0] and "zynq-1" not in text[0]
    paris = subprocess.run(
        [sys.executable, "-m", "bitelab.admin", "--config", server.env_path]
        + ["events", "--board", "zynq-2"],
        capture_output=True,
        text=True,
        env=server.client_env(None) | {"TZ": "Europe/Paris"},
        check=False,
    ).stdout
    assert paris.split()[2] in ("CET", "CEST")
    utc = server.admin("events", "--board", "zynq-2", "--utc").stdout
    assert utc.split()[2] == "UTC"


def test_admin_token_for_lab_is_refused(lab_server):
    """`token lab` is refused: lab is the SSH login for tokens, not a user."""
    server = lab_server()
    result = server.admin("token", "lab")
    assert result.returncode == 2
    assert result.stderr.startswith("bitelab-admin: 'lab' is the SSH login")
    assert result.stdout == ""


def test_logout_revokes_the_token(lab_server):
    """`bitelab logout` revokes BITELAB_AUTH; the next call is refused with exit 1."""
    server = lab_server()
    token = server.token("alice")
    result = cli(server, token, "logout")
    assert result.returncode == 0 and "revoked" in result.stdout
    refused = cli(server, token, "whoami")
    assert refused.returncode == 1 and "unauthorized" in refused.stderr


def test_console_of_a_board_without_one(lab_server):
    """`bitelab console` on a board with no serial console: one line, exit 1, no ssh;
    `reserve` of such a board does not advertise a console."""
    server = lab_server()
    token = server.token("alice")
    reserved = cli(server, token, "reserve", "zynq-1")
    assert reserved.returncode == 0 and "console:" not in reserved.stdout
    result = cli(server, token, "console", "zynq-1")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "bitelab: board zynq-1 has no serial console (unavailable)"
    )
    missing = cli(server, token, "console", "nosuch")
    assert missing.returncode == 1 and "no board named 'nosuch'" in missing.stderr


@pytest.mark.parametrize(
    "url, token, status",
    [
        ("http://127.0.0.1:1", "t", 3),  # nothing listens
        ("", "t", 2),  # BITELAB_URL unset
        (None, "", 2),  # BITELAB_AUTH unset
        (None, "bl_wrong", 1),  # refused
    ],
)
def test_json_output_is_always_one_document(lab_server, url, token, status):
    """With --json, stdout holds one JSON document whatever goes wrong."""
    server = lab_server()
    env = server.client_env(token)
    if url is not None:
        env["BITELAB_URL"] = url
    result = subprocess.run(
        [BITELAB, "--json", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == status
    document = json.loads(result.stdout)
    assert document["error"]["code"] and document["error"]["message"]
    assert len(result.stderr.strip().splitlines()) == 1


def test_maintenance_from_the_cli(lab_server):
    """Admins take a board out and put it back with `bitelab maintenance`; the
    list stays narrow with a long reason; users are refused."""
    server = lab_server()
    root, alice = server.token("root"), server.token("alice")
    reason = "uart flaky after the 2026 firmware update, waiting for a new cable"
    refused = cli(server, alice, "maintenance", "zynq-2", "nope")
    assert refused.returncode == 1 and "forbidden" in refused.stderr
    assert cli(server, root, "maintenance", "zynq-2", *reason.split()).returncode == 0
    listing = cli(server, root, "list").stdout
    row = next(line for line in listing.splitlines() if line.startswith("zynq-2"))
    assert "maintenance (uart flaky" in row and "cable" not in row
    info = cli(server, root, "info", "zynq-2").stdout
    assert reason in info
    assert cli(server, alice, "reserve", "zynq-2").returncode == 1
    back = cli(server, root, "maintenance", "--end", "zynq-2")
    assert back.returncode == 0 and "free" in back.stdout
    assert cli(server, root, "maintenance", "zynq-2").returncode == 2
