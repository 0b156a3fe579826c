"""Power through a real server: snmpsim PoE switch, checked with net-snmp's snmpget."""

import stat

import pytest

from support.server import wait_for

pytestmark = pytest.mark.e2e

ON, OFF = 1, 2


def boards(agent, script=None):
    head = f"setup_script = {script};\n" if script else ""
    return head + (
        "classes { poe { arch = arm-armv7; } }\nboards [\n"
        + "".join(
            f"{{ name = b{port}; brdclass = poe; options = [ {{ cls = snmppower, "
            f"host = 127.0.0.1, snmp_port = {agent.port}, port = {port}, "
            f"community = {agent.community}, timeout = 0.3, retries = 1 }} ] }},\n"
            for port in (1, 2, 3)
        )
        + "]\n"
    )


def post(server, path, token, body=None):
    return server.request("POST", "/api/v1" + path, body or {}, token)


def test_power_on_off_and_release(lab_server, snmp_agent):
    """power=on flips the switch port (seen by snmpget); release turns it off again."""
    server = lab_server(boards=boards(snmp_agent))
    token = server.token("alice")
    assert post(server, "/boards/b2/reserve", token)[0] == 200
    status, board = post(server, "/boards/b2/attrs", token, {"power": "on"})
    assert status == 200, board
    assert snmp_agent.get(1, 2) == ON
    assert board["attrs"]["power"] == "on" and board["attrs"]["power_read_at"]
    assert snmp_agent.get(1, 1) != ON and snmp_agent.get(1, 3) != ON
    status, board = post(server, "/boards/b2/release", token)
    assert status == 200 and board["state"] == "free"
    assert snmp_agent.get(1, 2) == OFF
    assert board["attrs"]["power"] == "off"
    status, events = server.request(
        "GET", "/api/v1/events?board=b2", token=server.token("root")
    )
    assert [e["action"] for e in events["events"]][:4] == [
        "freed",
        "releasing",
        "power",
        "reserved",
    ]


def test_power_shown_is_read_from_the_device(lab_server, snmp_agent):
    """At start the server reads each port, so a port switched behind its back shows as it is."""
    snmp_agent.set(1, 3, ON)
    server = lab_server(boards=boards(snmp_agent))
    token = server.token("alice")
    wait_for(
        lambda: server.get("/api/v1/boards/b3", token)["attrs"]["power"] == "on",
        what="power read at start",
    )
    assert server.get("/api/v1/boards/b1", token)["attrs"]["power"] == "off"


def test_cycle(lab_server, snmp_agent):
    """power=cycle ends with the port on, and both switches are audited."""
    server = lab_server(boards=boards(snmp_agent))
    token = server.token("alice")
    post(server, "/boards/b1/reserve", token)
    status, board = post(server, "/boards/b1/attrs", token, {"power": "cycle"})
    assert status == 200 and board["attrs"]["power"] == "on"
    assert snmp_agent.get(1, 1) == ON


def test_dead_agent_gives_power_failed_and_changes_nothing(lab_server, snmp_agent):
    """With the agent stopped, power=on is a 502 power_failed and the board stays as it was."""
    server = lab_server(boards=boards(snmp_agent))
    token = server.token("alice")
    post(server, "/boards/b1/reserve", token)
    before = server.get("/api/v1/boards/b1", token)
    snmp_agent.stop()
    status, body = post(server, "/boards/b1/attrs", token, {"power": "on"})
    assert status == 502 and body["error"]["code"] == "power_failed"
    # the holder learns which driver failed; the switch's address is for admins
    assert "snmppower failed" in body["error"]["message"]
    assert "127.0.0.1" not in body["error"]["message"]
    after = server.get("/api/v1/boards/b1", token)
    # nothing changed but the note of the failure
    assert after["attrs"].pop("power_error") == body["error"]["message"]
    assert after == before
    admin = server.get("/api/v1/boards/b1", server.token("root"))
    assert "127.0.0.1" in admin["attrs"]["power_error"]


def test_power_failure_on_release_means_maintenance(lab_server, snmp_agent):
    """A release that cannot power the board off puts it in maintenance, not back to free."""
    server = lab_server(boards=boards(snmp_agent))
    token = server.token("alice")
    post(server, "/boards/b3/reserve", token)
    post(server, "/boards/b3/attrs", token, {"power": "on"})
    snmp_agent.stop()
    status, board = post(server, "/boards/b3/release", token)
    assert status == 200 and board["state"] == "maintenance"
    assert "power off failed" in board["reason"]
    assert post(server, "/boards/b3/reserve", token)[0] == 409
    root = server.token("root")
    status, body = server.request("DELETE", "/api/v1/boards/b3/maintenance", None, root)
    assert status == 502 and body["error"]["code"] == "power_failed"
    snmp_agent.start()
    snmp_agent.set(1, 3, ON)
    status, board = server.request(
        "DELETE", "/api/v1/boards/b3/maintenance", None, root
    )
    assert status == 200 and board["state"] == "free"
    assert snmp_agent.get(1, 3) == OFF and board["attrs"]["power"] == "off"


def test_expiry_powers_off(lab_server, snmp_agent):
    """An expired reservation powers the board off."""
    server = lab_server(boards=boards(snmp_agent))
    token = server.token("alice")
    post(server, "/boards/b1/reserve", token, {"timeout": 2})
    post(server, "/boards/b1/attrs", token, {"power": "on"})
    assert snmp_agent.get(1, 1) == ON
    wait_for(
        lambda: server.get("/api/v1/boards/b1", token)["state"] == "free", what="expiry"
    )
    assert snmp_agent.get(1, 1) == OFF


def test_failed_reserve_script_powers_off(lab_server, snmp_agent, tmp_path):
    """A reserve script that fails leaves the board free and powered off
    (its release script, which undoes a half-built jail, works)."""
    script = tmp_path / "fail.sh"
    script.write_text(
        "#!/bin/sh\n[ \"$1\" = release ] && exit 0\necho 'no jail today' >&2\nexit 1\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    snmp_agent.set(1, 2, ON)
    server = lab_server(boards=boards(snmp_agent, script))
    token = server.token("alice")
    status, body = post(server, "/boards/b2/reserve", token)
    assert status == 502 and "no jail today" in body["error"]["message"]
    assert snmp_agent.get(1, 2) == OFF
    assert server.get("/api/v1/boards/b2", token)["state"] == "free"
