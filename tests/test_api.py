"""The REST API against a real ``twistd -n bitelab`` process and its SQLite file."""

import concurrent.futures
import json
import os
import sqlite3
import stat
import subprocess
import time

import pytest

from support.server import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def lab(lab_server):
    """A server with users alice, bob and admin root, and their tokens."""
    server = lab_server()
    server.tokens = {u: server.token(u) for u in ("alice", "bob", "root")}
    return server


def call(server, method, path, user=None, body=None, **kw):
    token = server.tokens[user] if user else None
    return server.request(method, "/api/v1" + path, body=body, token=token, **kw)


def states(server):
    boards = server.get("/api/v1/boards", token=server.tokens["root"])["boards"]
    return {b["name"]: (b["state"], b["holder"]) for b in boards}


def server_key(tmp_path):
    """A fresh OpenSSH public key line, without its comment."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
        check=True,
    )
    return " ".join((tmp_path / "k.pub").read_text().split()[:2])


def script(tmp_path, body):
    path = tmp_path / "setup.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_info_needs_no_token_but_everything_else_does(lab):
    """/info answers without a token; other calls give 401 without or with a bad token."""
    status, info = call(lab, "GET", "/info")
    assert status == 200
    assert info["name"] == "bitelab" and info["ssh_port"] == lab.ssh_port
    assert info["time"].endswith("Z")
    for path in ("/whoami", "/boards", "/classes", "/boards/zynq-1", "/events"):
        status, body = call(lab, "GET", path)
        assert status == 401 and body["error"]["code"] == "unauthorized", path
        status, body = lab.request("GET", "/api/v1" + path, token="bl_forged")
        assert status == 401, path
    status, body = call(lab, "POST", "/boards/zynq-1/reserve", body={})
    assert status == 401
    assert states(lab)["zynq-1"] == ("free", None)


def test_whoami(lab):
    """/whoami names the token's user and whether they are an admin."""
    assert call(lab, "GET", "/whoami", "alice") == (
        200,
        {"user": "alice", "admin": False},
    )
    assert call(lab, "GET", "/whoami", "root") == (200, {"user": "root", "admin": True})


def test_class_reservations_spread_and_exhaust(lab):
    """Reserving a class hands out distinct free boards, then 409 when none is left."""
    got = []
    for user in ("alice", "bob", "alice"):
        status, board = call(lab, "POST", "/boards/zynq/reserve", user)
        assert status == 200, board
        assert board["class"] == "zynq" and board["holder"] == user
        assert board["state"] == "reserved"
        got.append(board["name"])
    assert sorted(got) == ["zynq-1", "zynq-2", "zynq-3"]
    status, body = call(lab, "POST", "/boards/zynq/reserve", "bob")
    assert status == 409 and body["error"]["code"] == "unavailable"
    status, classes = call(lab, "GET", "/classes", "bob")
    zynq = next(c for c in classes["classes"] if c["name"] == "zynq")
    assert (zynq["boards"], zynq["free"], zynq["arch"]) == (3, 0, "arm-armv7")


def test_reserve_by_name_and_holder_rules(lab):
    """Only the holder releases; others get 403/409; admins need force."""
    status, board = call(
        lab, "POST", "/boards/pine-1/reserve", "alice", {"timeout": 120}
    )
    assert status == 200 and board["holder"] == "alice"
    assert call(lab, "POST", "/boards/pine-1/reserve", "bob")[0] == 409
    status, body = call(lab, "POST", "/boards/pine-1/release", "bob")
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = call(lab, "POST", "/boards/pine-1/attrs", "bob", {"timeout": 60})
    assert status == 403
    status, body = call(lab, "POST", "/boards/pine-1/release", "bob", {"force": True})
    assert status == 403
    assert call(lab, "POST", "/boards/pine-1/release", "root")[0] == 403
    assert states(lab)["pine-1"] == ("reserved", "alice")
    status, board = call(lab, "POST", "/boards/pine-1/release", "root", {"force": True})
    assert status == 200 and board["state"] == "free"
    status, events = call(lab, "GET", "/events?board=pine-1", "root")
    actions = [e["action"] for e in events["events"]]
    assert actions[:3] == ["freed", "releasing", "reserved"]
    assert events["events"][1]["user"] == "root"
    assert events["events"][1]["detail"] == "force_release: released by admin root"


def test_release_by_holder(lab):
    """The holder's release frees the board and is audited."""
    call(lab, "POST", "/boards/zynq-2/reserve", "bob")
    status, board = call(lab, "POST", "/boards/zynq-2/release", "bob")
    assert status == 200 and board["state"] == "free" and board["holder"] is None
    assert call(lab, "POST", "/boards/zynq-2/release", "bob")[0] == 409
    assert call(lab, "GET", "/events", "bob")[0] == 403
    status, body = call(lab, "GET", "/events?limit=x", "root")
    assert status == 400 and body["error"]["code"] == "invalid"
    status, body = call(lab, "GET", "/events?user=bob&limit=1", "root")
    assert [(e["user"], e["action"]) for e in body["events"]] == [("bob", "releasing")]


@pytest.mark.parametrize(
    "method, path, raw, code, status",
    [
        ("POST", "/boards/zynq-1/reserve", b"{not json", "invalid", 400),
        ("POST", "/boards/zynq-1/reserve", b"[1, 2]", "invalid", 400),
        ("POST", "/boards/zynq-1/reserve", b'{"timeout": "long"}', "invalid", 400),
        ("POST", "/boards/zynq-1/reserve", b'{"timeout": true}', "invalid", 400),
        ("POST", "/boards/zynq-1/reserve", b'{"timeout": 99999999}', "invalid", 400),
        ("POST", "/boards/zynq-1/reserve", b'{"timeout": -1}', "invalid", 400),
        ("POST", "/boards/zynq-1/reserve", b'{"colour": "red"}', "invalid", 400),
        ("POST", "/boards/zynq-1/reserve", b'{"sshpubkey": 5}', "invalid", 400),
        ("POST", "/boards/zynq-1/reserve", b'{"sshpubkey": "a\\nb"}', "invalid", 400),
        (
            "POST",
            "/boards/zynq-1/reserve",
            b'{"sshpubkey": "not a key"}',
            "invalid",
            400,
        ),
        (
            "POST",
            "/boards/zynq-1/reserve",
            b'{"sshpubkey": "ssh-ed25519 AAAA k; rm -rf /"}',
            "invalid",
            400,
        ),
        ("GET", "/boards/%A0", None, "invalid", 400),
        ("GET", "/boards/%FF/console", None, "invalid", 400),
        ("POST", "/boards/nope/maintenance", b"", "forbidden", 403),
        ("POST", "/boards/zynq-1/reserve", b"\xff\xfe", "invalid", 400),
        ("POST", "/boards/zynq-1/reserve", b"{" + b" " * 70000 + b"}", "invalid", 400),
        ("POST", "/boards/nope/reserve", b"{}", "not_found", 404),
        ("POST", "/boards/..%2F..%2Fetc/reserve", b"{}", "not_found", 404),
        ("POST", "/boards/a%20b/reserve", b"{}", "not_found", 404),
        ("GET", "/boards/%00", None, "not_found", 404),
        ("GET", "/nothing/here", None, "not_found", 404),
        ("POST", "/boards/zynq-1/release", b'{"force": "yes"}', "invalid", 400),
        ("POST", "/boards/zynq-1/attrs", b'{"power": "on"}', "forbidden", 403),
        ("PUT", "/boards/zynq-1", b"{}", "invalid", 405),
    ],
)
def test_bad_requests_change_nothing(lab, method, path, raw, code, status):
    """Malformed or odd requests get a JSON 4xx error and leave every board as it was."""
    before = states(lab)
    got, body = lab.request(
        method, "/api/v1" + path, raw=raw, token=lab.tokens["alice"]
    )
    assert (got, body["error"]["code"]) == (status, code), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert states(lab) == before


def test_settable_attributes(lab):
    """Holders extend the timeout up to max_timeout; unknown attributes are refused."""
    status, board = call(
        lab, "POST", "/boards/zynq-1/reserve", "alice", {"timeout": 60}
    )
    first = board["expires_at"]
    status, body = call(lab, "POST", "/boards/zynq-1/attrs", "alice", {"timeout": 7200})
    assert status == 200 and body["expires_at"] > first
    status, body = call(lab, "POST", "/boards/zynq-1/attrs", "alice", {"voltage": 5})
    assert status == 400 and "settable: timeout" in body["error"]["message"]
    status, body = call(
        lab, "POST", "/boards/zynq-1/attrs", "alice", {"timeout": 10**9}
    )
    assert status == 400
    status, body = call(lab, "POST", "/boards/zynq-1/attrs", "alice", {"power": "on"})
    assert status == 400 and "no settable attribute 'power'" in body["error"]["message"]


def test_expiry_releases_and_is_audited(lab):
    """A reservation past its time is released by the server on its own."""
    status, _ = call(lab, "POST", "/boards/zynq-3/reserve", "bob", {"timeout": 1})
    assert status == 200
    wait_for(lambda: states(lab)["zynq-3"] == ("free", None), what="expiry")
    status, events = call(lab, "GET", "/events?board=zynq-3", "root")
    assert [e["action"] for e in events["events"][:2]] == ["freed", "releasing"]
    assert events["events"][1]["detail"] == "expire: expired"


def test_maintenance(lab):
    """Admins take boards out and back; users cannot; boards in maintenance are not handed out."""
    status, body = call(
        lab, "POST", "/boards/pine-1/maintenance", "alice", {"reason": "x"}
    )
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, board = call(
        lab, "POST", "/boards/pine-1/maintenance", "root", {"reason": "flaky uart"}
    )
    assert (
        status == 200
        and board["state"] == "maintenance"
        and board["reason"] == "flaky uart"
    )
    assert call(lab, "POST", "/boards/pine/reserve", "alice")[0] == 409
    assert call(lab, "POST", "/boards/pine-1/reserve", "alice")[0] == 409
    assert call(lab, "DELETE", "/boards/pine-1/maintenance", "bob")[0] == 403
    status, board = call(lab, "DELETE", "/boards/pine-1/maintenance", "root")
    assert status == 200 and board["state"] == "free"
    assert call(lab, "DELETE", "/boards/pine-1/maintenance", "root")[0] == 409


def test_token_revocation(lab):
    """DELETE /tokens/current revokes the token used, and only that one."""
    other = lab.token("alice")
    status, body = call(lab, "DELETE", "/tokens/current", "alice")
    assert status == 200 and body["user"] == "alice"
    assert call(lab, "GET", "/whoami", "alice")[0] == 401
    assert lab.request("GET", "/api/v1/whoami", token=other)[0] == 200
    conn = sqlite3.connect(os.path.join(lab.dir, "bitelab.sqlite"))
    hashes = [r[0] for r in conn.execute("SELECT hash FROM tokens")]
    conn.close()
    assert other not in hashes and lab.tokens["alice"] not in hashes
    assert all(len(h) == 64 for h in hashes)


def test_state_survives_kill_and_expired_reservations_end_at_start(lab):
    """After SIGKILL and restart reservations are intact; ones that ran out meanwhile are released."""
    call(lab, "POST", "/boards/zynq-1/reserve", "alice", {"timeout": 3600})
    status, _ = call(lab, "POST", "/boards/zynq-2/reserve", "bob", {"timeout": 2})
    assert status == 200
    kept = call(lab, "GET", "/boards/zynq-1", "alice")[1]
    lab.kill()
    time.sleep(2.5)
    lab.start()
    assert call(lab, "GET", "/boards/zynq-1", "alice")[1] == kept
    wait_for(lambda: states(lab)["zynq-2"] == ("free", None), what="expiry at start")
    assert call(lab, "GET", "/whoami", "bob")[0] == 200


def test_concurrent_class_reservations_never_double_allocate(lab):
    """Forty clients racing for a class of three boards: three winners, three distinct boards."""
    users = [f"u{i}" for i in range(40)]
    tokens = {u: lab.token(u) for u in users}

    def reserve(user):
        return lab.request(
            "POST", "/api/v1/boards/zynq/reserve", body={}, token=tokens[user]
        )

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        results = list(pool.map(reserve, users))
    won = [body for status, body in results if status == 200]
    lost = [body for status, body in results if status != 200]
    assert len(won) == 3
    assert sorted(b["name"] for b in won) == ["zynq-1", "zynq-2", "zynq-3"]
    assert all(b["error"]["code"] == "unavailable" for b in lost)
    holders = {
        name: holder
        for name, (state, holder) in states(lab).items()
        if name.startswith("zynq")
    }
    assert holders == {b["name"]: b["holder"] for b in won}


def test_setup_script_protocol(lab_server, tmp_path):
    """The script gets argv and environment; its KEY=VALUE lines are shown to the holder only."""
    key = server_key(tmp_path) + " k; rm -rf /"
    record = tmp_path / "calls"
    path = script(
        tmp_path,
        f'echo "$1 $2 $BITELAB_BOARD $BITELAB_CLASS $BITELAB_ARCH $BITELAB_USER '
        f'$BITELAB_ETHERIFACE [$BITELAB_SSHPUBKEY]" >> {record}\n'
        'echo "ip=10.0.0.7"\necho "ssh_port=22"\necho "not an attribute"\n',
    )
    server = lab_server(
        boards=f"setup_script = {path};\nclasses {{ c {{ arch = riscv; }} }}\n"
        "boards [ { name = b1; brdclass = c; options = [ { cls = etheriface, val = veth9 } ] } ]"
    )
    alice, bob = server.token("alice"), server.token("bob")
    status, board = server.request(
        "POST",
        "/api/v1/boards/b1/reserve",
        {"sshpubkey": key},
        alice,
    )
    assert status == 200
    assert board["attrs"]["ip"] == "10.0.0.7" and board["attrs"]["ssh_port"] == "22"
    assert "not an attribute" not in json.dumps(board)
    other = server.get("/api/v1/boards/b1", bob)
    assert "ip" not in other["attrs"] and other["attrs"]["etheriface"] == "veth9"
    server.request("POST", "/api/v1/boards/b1/release", {}, alice)
    assert record.read_text().splitlines() == [
        f"reserve b1 b1 c riscv alice veth9 [{key}]",
        f"release b1 b1 c riscv alice veth9 [{key}]",
    ]


def test_failed_reserve_script_undoes_reservation(lab_server, tmp_path):
    """A reserve script that fails gives setup_failed with its error; the
    release script undoes whatever it did, and the board is free again."""
    record = tmp_path / "calls"
    path = script(
        tmp_path,
        f'echo "$1 $2" >> {record}\n[ "$1" = release ] && exit 0\n'
        'echo starting\necho "no VLAN $BITELAB_BOARD" >&2\nexit 3\n',
    )
    server = lab_server(
        boards=f"setup_script = {path};\nclasses {{ c {{ arch = x; }} }}\n"
        "boards [ { name = b1; brdclass = c; } ]"
    )
    token = server.token("alice")
    status, body = server.request("POST", "/api/v1/boards/b1/reserve", {}, token)
    assert status == 502 and body["error"]["code"] == "setup_failed"
    assert "no VLAN b1" in body["error"]["message"]
    assert server.get("/api/v1/boards/b1", token)["state"] == "free"
    assert record.read_text().splitlines() == ["reserve b1", "release b1"]


def test_failed_release_script_means_maintenance(lab_server, tmp_path):
    """A release script that fails puts the board in maintenance with the reason."""
    path = script(
        tmp_path,
        '[ "$1" = release ] && { echo "cannot destroy jail" >&2; exit 1; }\nexit 0\n',
    )
    server = lab_server(
        boards=f"setup_script = {path};\nclasses {{ c {{ arch = x; }} }}\n"
        "boards [ { name = b1; brdclass = c; } ]"
    )
    token = server.token("alice")
    assert server.request("POST", "/api/v1/boards/b1/reserve", {}, token)[0] == 200
    status, board = server.request("POST", "/api/v1/boards/b1/release", {}, token)
    assert status == 200 and board["state"] == "maintenance"
    assert "cannot destroy jail" in board["reason"]


def test_setup_script_timeout_kills_it(lab_server, tmp_path):
    """A reserve script that hangs is killed after setup_script_timeout and the board stays free."""
    path = script(tmp_path, '[ "$1" = release ] && exit 0\nsleep 600\n')
    server = lab_server(
        boards=f"setup_script = {path};\nclasses {{ c {{ arch = x; }} }}\n"
        "boards [ { name = b1; brdclass = c; } ]",
        settings={"setup_script_timeout": "1"},
    )
    token = server.token("alice")
    status, body = server.request("POST", "/api/v1/boards/b1/reserve", {}, token)
    assert status == 502 and "timed out" in body["error"]["message"]
    assert server.get("/api/v1/boards/b1", token)["state"] == "free"


def test_board_removed_from_file_while_reserved_is_kept(lab_server):
    """A reserved board that left the board file stays listed; its release cannot
    switch it off, so it waits in maintenance until an admin clears it, then goes."""
    server = lab_server()
    token, root = server.token("alice"), server.token("root")
    server.request("POST", "/api/v1/boards/zynq-3/reserve", {}, token)
    server.stop()
    server.write_boards(
        "classes { zynq { arch = arm-armv7; } }\nboards [ { name = zynq-1; brdclass = zynq; } ]"
    )
    server.start()
    board = server.get("/api/v1/boards/zynq-3", token)
    assert board["state"] == "reserved" and board["removed"] is True
    classes = server.get("/api/v1/classes", token)["classes"]
    assert (classes[0]["boards"], classes[0]["free"]) == (1, 1)
    status, board = server.request("POST", "/api/v1/boards/zynq-3/release", {}, token)
    assert status == 200 and board["state"] == "maintenance"
    assert "not powered off" in board["reason"]
    status, _ = server.request(
        "DELETE", "/api/v1/boards/zynq-3/maintenance", None, root
    )
    assert status == 200
    assert server.request("GET", "/api/v1/boards/zynq-3", token=token)[0] == 404
    names = [b["name"] for b in server.get("/api/v1/boards", token)["boards"]]
    assert names == ["zynq-1"]
