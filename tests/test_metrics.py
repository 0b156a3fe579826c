"""Prometheus metrics: a scripted session against a real server, scraped.

``test_metrics_follow_a_session`` starts a real ``twistd`` with a metrics
endpoint, drives it through reservations (one whose setup script fails, one
that expires), power switching that works, that reads back the wrong state
(a lying ``cmdpower`` status) and that times out (an SNMP port nobody
answers on loopback), console traffic on a pseudo-terminal with a viewer
attached, SSH logins and refusals and a board file reload, and scrapes
``/metrics`` over HTTP after each step, parsing it with
``prometheus_client``'s parser.  The queue's hooks are checked in-process:
the queue itself calls them.
"""

import os
import signal
import socket
import stat
import subprocess
import urllib.request

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task

import bitelab
from bitelab.metrics import Metrics
from support.server import free_port, wait_for


def parse(text):
    """{(sample name, sorted label items): value} of an exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    """One sample's value (0 when the series is absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def executable(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def test_queue_hooks_fill_their_metrics():
    """``queue_changed`` and ``queue_waited`` (the queue's hooks) set the
    depth and oldest-wait gauges and the wait histogram by class; an empty
    queue drops its oldest-wait series."""
    metrics = Metrics(task.Clock(), "0")
    metrics.queue_changed("zynq", 2, oldest_since=1000.0)
    metrics.queue_waited("zynq", 42.0, "granted")
    metrics.queue_waited("zynq", 700.0, "timeout")
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "bitelab_queue_depth", **{"class": "zynq"}) == 2
    assert (
        value(
            samples,
            "bitelab_queue_oldest_wait_start_timestamp_seconds",
            **{"class": "zynq"},
        )
        == 1000.0
    )
    assert (
        value(
            samples,
            "bitelab_queue_wait_seconds_count",
            outcome="granted",
            **{"class": "zynq"},
        )
        == 1
    )
    assert (
        value(
            samples,
            "bitelab_queue_wait_seconds_bucket",
            outcome="timeout",
            le="900.0",
            **{"class": "zynq"},
        )
        == 1
    )
    metrics.queue_changed("zynq", 0)
    samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "bitelab_queue_depth", **{"class": "zynq"}) == 0
    assert not any(
        name == "bitelab_queue_oldest_wait_start_timestamp_seconds"
        for name, _ in samples
    )


def test_two_servers_in_one_process_have_their_own_registries():
    """Each ``Metrics`` has a registry of its own: counts never mix."""
    one, two = Metrics(task.Clock(), "0"), Metrics(task.Clock(), "0")
    one.http_request("GET", "/api/v1/info", 200, 0.01)
    assert (
        value(
            parse(generate_latest(two.registry).decode()),
            "bitelab_http_requests_total",
            method="GET",
            route="/api/v1/info",
            status="200",
        )
        == 0
    )


@pytest.mark.e2e
def test_metrics_follow_a_session(lab_server, tmp_path, serial):
    """Each step of a session moves the metrics it should, as scraped."""
    master, device = serial
    dead_udp = free_port(socket.SOCK_DGRAM)
    state = tmp_path / "power"
    state.mkdir()
    power = executable(
        tmp_path / "power.sh",
        "#!/bin/sh\n"
        f"dir={state}\n"
        'case "$1" in\n'
        'on|off) echo "$1" >"$dir/$2" ;;\n'
        # a device that lies: it says off whatever it was told
        'status) if [ -e "$dir/lie" ]; then echo off; '
        'else cat "$dir/$2" 2>/dev/null || echo off; fi ;;\n'
        "esac\n",
    )
    script = executable(
        tmp_path / "setup.sh",
        "#!/bin/sh\n"
        'if [ "$2" = fail-1 ] && [ "$1" = reserve ]; then '
        "echo 'no jail today' >&2; exit 3; fi\n"
        "echo ip=10.0.0.2\n",
    )
    boards = f"""
setup_script = {script};
classes {{ cmd {{ arch = x; }} snmp {{ arch = x; }} con {{ arch = x; }} }}
boards [
  {{ name = cmd-1; brdclass = cmd; options = [ {{ cls = cmdpower,
     on = ["{power}", "on", "cmd-1"], off = ["{power}", "off", "cmd-1"],
     status = ["{power}", "status", "cmd-1"] }} ] }},
  {{ name = snmp-1; brdclass = snmp; options = [ {{ cls = snmppower,
     host = 127.0.0.1, snmp_port = {dead_udp}, port = 1, timeout = 0.2,
     retries = 0 }} ] }},
  {{ name = con-1; brdclass = con; options = [
     {{ cls = serialconsole, val = {device} }} ] }},
  {{ name = fail-1; brdclass = con; options = [] }},
]
"""
    metrics_port = free_port()
    server = lab_server(
        boards=boards,
        users=("alice",),
        settings={"metrics_endpoint": f"tcp:{metrics_port}:interface=127.0.0.1"},
    )
    alice = server.token("alice")

    def scrape():
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            return parse(response.read().decode())

    def call(method, path, token=alice, body=None):
        return server.request(method, "/api/v1" + path, body=body, token=token)

    def eventually(name, want, **labels):
        wait_for(
            lambda: value(scrape(), name, **labels) == want,
            what=f"{name}{labels} == {want}",
        )

    first = scrape()
    assert value(first, "bitelab_build_info", version=bitelab.__version__) == 1
    assert value(first, "process_open_fds") > 0
    eventually("bitelab_boards", 1, state="free", **{"class": "cmd"})

    # a reservation with its setup script, then power: on works, a lying
    # device is a mismatch
    assert call("POST", "/boards/cmd-1/reserve", body={})[0] == 200
    after = scrape()
    assert value(after, "bitelab_reservations_started_total", **{"class": "cmd"}) == 1
    assert (
        value(
            after,
            "bitelab_setup_script_duration_seconds_count",
            action="reserve",
            **{"class": "cmd"},
        )
        == 1
    )
    assert (
        value(
            after,
            "bitelab_reserve_duration_seconds_count",
            outcome="reserved",
            **{"class": "cmd"},
        )
        == 1
    )
    eventually("bitelab_boards", 1, state="reserved", **{"class": "cmd"})
    ok_before = value(
        after,
        "bitelab_power_operations_total",
        driver="cmdpower",
        operation="set",
        outcome="ok",
    )
    assert call("POST", "/boards/cmd-1/attrs", body={"power": "on"})[0] == 200
    (state / "lie").touch()
    assert call("POST", "/boards/cmd-1/attrs", body={"power": "on"})[0] == 502
    after = scrape()
    assert (
        value(
            after,
            "bitelab_power_operations_total",
            driver="cmdpower",
            operation="set",
            outcome="ok",
        )
        == ok_before + 1
    )
    assert (
        value(
            after,
            "bitelab_power_operations_total",
            driver="cmdpower",
            operation="set",
            outcome="mismatch",
        )
        == 1
    )
    assert (
        value(
            after,
            "bitelab_http_requests_total",
            method="POST",
            route="/api/v1/boards/<name>/attrs",
            status="502",
        )
        == 1
    )
    (state / "lie").unlink()
    assert call("POST", "/boards/cmd-1/release", body={})[0] == 200
    after = scrape()
    assert (
        value(
            after,
            "bitelab_reservations_ended_total",
            cause="release",
            **{"class": "cmd"},
        )
        == 1
    )
    assert (
        value(after, "bitelab_reservation_duration_seconds_count", **{"class": "cmd"})
        == 1
    )
    assert (
        value(
            after,
            "bitelab_release_duration_seconds_count",
            outcome="free",
            **{"class": "cmd"},
        )
        == 1
    )

    # an SNMP switch that never answers: time-outs by switch; the ending
    # cannot switch it off, so the board goes to maintenance
    timeouts_before = value(
        scrape(), "bitelab_snmp_timeouts_total", switch=f"127.0.0.1:{dead_udp}"
    )
    assert call("POST", "/boards/snmp-1/reserve", body={})[0] == 200
    assert call("POST", "/boards/snmp-1/attrs", body={"power": "on"})[0] == 502
    assert call("POST", "/boards/snmp-1/release", body={})[0] == 200
    after = scrape()
    assert (
        value(after, "bitelab_snmp_timeouts_total", switch=f"127.0.0.1:{dead_udp}")
        == timeouts_before + 2
    )
    assert (
        value(
            after,
            "bitelab_power_operations_total",
            driver="snmppower",
            operation="set",
            outcome="failed",
        )
        == 2
    )
    assert (
        value(
            after,
            "bitelab_release_duration_seconds_count",
            outcome="maintenance",
            **{"class": "snmp"},
        )
        == 1
    )
    wait_for(
        lambda: value(
            scrape(),
            "bitelab_board_maintenance_since_timestamp_seconds",
            board="snmp-1",
            **{"class": "snmp"},
        )
        > 0,
        what="snmp-1 in maintenance",
    )

    # a console: bytes both ways, a viewer, then expiry cuts it
    assert call("POST", "/boards/con-1/reserve", body={"timeout": 3})[0] == 200
    viewer = server.follow_console("con-1", alice)
    try:
        eventually("bitelab_console_viewers", 1, board="con-1")
        os.write(master, b"U-Boot 2024.01\r\n")
        eventually(
            "bitelab_console_bytes_total", 16, board="con-1", direction="from_board"
        )
        eventually(
            "bitelab_reservations_ended_total", 1, cause="expire", **{"class": "con"}
        )
        eventually("bitelab_console_viewers", 0, board="con-1")
        assert viewer.wait(30) == 0
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()
        viewer.stdout.close()
    assert value(scrape(), "bitelab_console_connected", board="con-1") == 1

    # a setup script that fails
    status, body = call("POST", "/boards/fail-1/reserve", body={})
    assert status == 502 and body["error"]["code"] == "setup_failed"
    after = scrape()
    assert (
        value(
            after,
            "bitelab_setup_script_failures_total",
            action="reserve",
            **{"class": "con"},
        )
        == 1
    )
    assert (
        value(
            after,
            "bitelab_reservations_ended_total",
            cause="setup_failed",
            **{"class": "con"},
        )
        == 1
    )
    assert (
        value(
            after,
            "bitelab_reserve_duration_seconds_count",
            outcome="setup_failed",
            **{"class": "con"},
        )
        == 1
    )

    # SSH: a token login, and a key the lab does not know
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True
    )
    for key, want in ((server.key("alice"), 0), (str(stranger), 255)):
        result = subprocess.run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-p",
                str(server.ssh_port),
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-i",
                key,
                "lab@127.0.0.1",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == want, result.stderr
    after = scrape()
    assert value(after, "bitelab_ssh_logins_total", service="token") == 1
    assert value(after, "bitelab_ssh_refusals_total", reason="unknown_key") >= 1

    # SIGHUP reloads the board file: counted
    server.process.send_signal(signal.SIGHUP)
    eventually("bitelab_board_file_reloads_total", 1, outcome="ok")
    assert (
        value(scrape(), "bitelab_boards", state="maintenance", **{"class": "snmp"}) == 1
    )


@pytest.mark.e2e
def test_durations_of_reservations_older_than_the_server(lab_server):
    """A reservation made before a restart still has its duration observed
    when it ends after it."""
    metrics_port = free_port()
    server = lab_server(
        settings={"metrics_endpoint": f"tcp:{metrics_port}:interface=127.0.0.1"}
    )
    token = server.token("root")
    assert (
        server.request("POST", "/api/v1/boards/zynq-1/reserve", body={}, token=token)[0]
        == 200
    )
    server.stop()
    server.start()
    assert (
        server.request("POST", "/api/v1/boards/zynq-1/release", body={}, token=token)[0]
        == 200
    )
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        samples = parse(response.read().decode())
    assert (
        value(
            samples, "bitelab_reservation_duration_seconds_count", **{"class": "zynq"}
        )
        == 1
    )
