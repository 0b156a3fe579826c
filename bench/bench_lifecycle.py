"""How the reservation lifecycle scales: big classes and mass expiry.

Starts real ``twistd -n bitelab`` servers on temporary labs and prints:

* class reserve latency (p50, p90) on a class of 10 boards and on a class
  of 10,000 boards, each reserve followed by its release, and their ratio
  (goal: the 10,000-board p50 within 1.5x of the 10-board one);
* ``GET /api/v1/boards`` latency on a 200-board lab while all 200
  reservations expire at once and each release script takes 1 s (goal: p99
  under 100 ms), and how long the whole wind-down took.

Run: ``python bench/bench_lifecycle.py [--cycles N]``.
"""

import argparse
import http.client
import json
import os
import stat
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from support.server import LabServer


def class_lab(count, script=None):
    lines = []
    if script:
        lines.append(f"setup_script = {script};")
    lines += ["classes { big { arch = x; } }", "boards ["]
    lines += [f"{{ name = b-{i}; brdclass = big; }}," for i in range(count)]
    lines.append("]")
    return "\n".join(lines)


class Client:
    """A keep-alive HTTP/1.1 client with a bearer token."""

    def __init__(self, port, token):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        }

    def call(self, method, path, body=None):
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def pct(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def class_reserve(directory, count, cycles):
    """Reserve-latency samples (s) of ``cycles`` class reserves on ``count`` boards."""
    server = LabServer(
        os.path.join(directory, f"class{count}"), boards=class_lab(count)
    )
    server.start(timeout=120)
    try:
        client = Client(server.http_port, server.token("bench"))
        samples = []
        for i in range(cycles + cycles // 10):
            started = time.perf_counter()
            status, board = client.call("POST", "/api/v1/boards/big/reserve", b"{}")
            if i >= cycles // 10:  # the first tenth warms up
                samples.append(time.perf_counter() - started)
            assert status == 200, board
            status, _ = client.call(
                "POST", f"/api/v1/boards/{board['name']}/release", b"{}"
            )
            assert status == 200
        return samples
    finally:
        server.stop()


def mass_expiry(directory, boards=200, pause=1.0):
    """GET /boards latencies (s) while ``boards`` reservations expire at once."""
    script = os.path.join(directory, "slow-release.sh")
    with open(script, "w") as f:
        f.write(f'#!/bin/sh\n[ "$1" = release ] && sleep {pause}\nexit 0\n')
    os.chmod(script, os.stat(script).st_mode | stat.S_IXUSR)
    server = LabServer(
        os.path.join(directory, "expiry"),
        boards=class_lab(boards, script),
        settings={"expiry_interval": "0.5"},
    )
    server.start(timeout=120)
    try:
        token = server.token("bench")
        client = Client(server.http_port, token)
        for i in range(boards):
            status, _ = client.call(
                "POST",
                f"/api/v1/boards/b-{i}/reserve",
                json.dumps({"timeout": 1}).encode(),
            )
            assert status == 200
        watcher = Client(server.http_port, token)
        samples = []
        started = time.perf_counter()
        seen_releasing = False
        while True:
            t0 = time.perf_counter()
            status, body = watcher.call("GET", "/api/v1/boards")
            samples.append(time.perf_counter() - t0)
            states = {b["state"] for b in body["boards"]}
            seen_releasing = seen_releasing or "releasing" in states
            if seen_releasing and states == {"free"}:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit("expiry did not finish in 600 s")
            time.sleep(0.01)
        return samples, time.perf_counter() - started
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        small = class_reserve(directory, 10, args.cycles)
        big = class_reserve(directory, 10_000, args.cycles)
        print(
            f"class reserve, 10 boards:     p50 {pct(small, 0.5):.3f} ms  "
            f"p90 {pct(small, 0.9):.3f} ms"
        )
        print(
            f"class reserve, 10000 boards:  p50 {pct(big, 0.5):.3f} ms  "
            f"p90 {pct(big, 0.9):.3f} ms"
        )
        print(f"ratio of p50s (goal <= 1.5): {pct(big, 0.5) / pct(small, 0.5):.2f}")
        samples, took = mass_expiry(directory)
        print(
            f"GET /boards during 200 expiries with 1 s release scripts: "
            f"{len(samples)} calls, p50 {pct(samples, 0.5):.1f} ms  "
            f"p99 {pct(samples, 0.99):.1f} ms  max {max(samples) * 1000:.1f} ms "
            f"(goal p99 < 100 ms); all free after {took:.1f} s"
        )


if __name__ == "__main__":
    main()
