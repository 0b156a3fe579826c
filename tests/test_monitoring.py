"""The shipped Prometheus rules and Grafana dashboard, checked by promtool.

``promtool`` (Debian's ``prometheus`` package) checks the alert rules and
the example scrape configuration, runs the rules' unit tests (each alert
fires on its situation, and not before), lints the server's exposition,
and parses every expression of the dashboard (as recording rules).  Every
bitelab metric the rules and the dashboard use is one the server exports.
"""

import json
import os
import re
import subprocess

import yaml
from prometheus_client.exposition import generate_latest
from twisted.internet import task

from bitelab.metrics import Metrics
from support.server import REPO

PROMETHEUS = os.path.join(REPO, "conf", "prometheus")
DASHBOARD = os.path.join(REPO, "conf", "grafana", "bitelab-dashboard.json")


def promtool(*args, cwd=PROMETHEUS, stdin=None):
    result = subprocess.run(
        ["promtool", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def dashboard_expressions():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    return [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]


def alert_expressions():
    with open(os.path.join(PROMETHEUS, "bitelab-alerts.yml")) as f:
        rules = yaml.safe_load(f)
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_alert_rules_and_scrape_config_check():
    """``promtool check rules`` and ``check config`` accept the files."""
    out = promtool("check", "rules", "bitelab-alerts.yml")
    assert "SUCCESS: 9 rules found" in out
    promtool("check", "config", "prometheus.yml")


def test_alerts_fire_when_they_should():
    """The rules' unit tests pass: the server down for 5 minutes, a board a
    day in maintenance, repeated power failures, a silent PoE switch and a
    queue waiting over 30 minutes raise their alerts, not earlier."""
    out = promtool("test", "rules", "bitelab-alerts.test.yml")
    assert "SUCCESS" in out
    with open(os.path.join(PROMETHEUS, "bitelab-alerts.test.yml")) as f:
        tests = yaml.safe_load(f)["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"]}
    assert {
        "BitelabDown",
        "BitelabBoardStuckInMaintenance",
        "BitelabPowerFailures",
        "BitelabQueueWaitingTooLong",
    } <= tested


def test_dashboard_expressions_parse(tmp_path):
    """Every panel's query is valid PromQL once Grafana's variables are
    filled in (promtool parses them as recording rules)."""
    rules = []
    for number, expr in enumerate(dashboard_expressions()):
        filled = (
            expr.replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$class", ".*")
        )
        assert "$" not in filled, expr
        rules.append({"record": f"bitelab:panel_{number}", "expr": filled})
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    out = promtool("check", "rules", str(path), cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in out


def exported_names():
    """Every sample name a server's registry can export."""
    metrics = Metrics(task.Clock(), "0")
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_count", "_sum", "_info"):
            names.add(family.name + suffix)
    return names


def test_rules_and_dashboard_use_exported_metrics():
    """No rule or panel asks for a bitelab metric the server does not
    export (a renamed metric would leave them silently empty)."""
    exported = exported_names()
    used = set()
    for expr in dashboard_expressions() + alert_expressions():
        used.update(re.findall(r"\b(bitelab_[a-z_]+|process_[a-z_]+)\b", expr))
    assert used, "no metric found in the expressions"
    assert used <= exported, used - exported


def test_exposition_passes_the_lint():
    """``promtool check metrics`` finds nothing wrong with what a server
    exports (names, units, help texts)."""
    metrics = Metrics(task.Clock(), "0")
    metrics.http_request("GET", "/api/v1/info", 200, 0.01)
    metrics.power_operation("snmppower", "set", 0.1, "mismatch")
    metrics.set_boards({("zynq", "free"): 3}, [("zynq-4", "zynq", 1.0)])
    metrics.queue_changed("zynq", 1, 10.0)
    promtool("check", "metrics", stdin=generate_latest(metrics.registry).decode())
