"""Reserve+release cycles over authenticated HTTP against a real server.

Starts ``twistd -n bitelab`` on a temporary lab (SQLite in WAL mode, no
setup script, no power options), then measures:

* sequential reserve+release cycles on one keep-alive connection:
  cycles per second and per-cycle latency percentiles;
* 50 concurrent clients racing to reserve one class of 10 boards, repeated:
  request latency, and a check that no board was handed out twice.

Run: ``python bench/bench_reserve.py [--cycles N]``.  Target: under 1.5 ms
per sequential cycle on a 2-core machine.
"""

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from support.server import LabServer


def boards_file(count):
    lines = ["classes { seq { arch = x; } race { arch = y; } }", "boards ["]
    lines.append("{ name = seq-1; brdclass = seq; },")
    for i in range(count):
        lines.append(f"{{ name = race-{i}; brdclass = race; }},")
    lines.append("]")
    return "\n".join(lines)


class Client:
    """A keep-alive HTTP/1.1 client with a bearer token."""

    def __init__(self, port, token):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        }

    def post(self, path, body=b"{}"):
        self.conn.request("POST", path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def percentiles(samples):
    ordered = sorted(samples)

    def at(q):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"p50 {at(0.5):.3f} ms  p90 {at(0.9):.3f} ms  p99 {at(0.99):.3f} ms"


def sequential(server, token, cycles):
    client = Client(server.http_port, token)
    for _ in range(50):
        client.post("/api/v1/boards/seq-1/reserve")
        client.post("/api/v1/boards/seq-1/release")
    samples = []
    start = time.perf_counter()
    for _ in range(cycles):
        t0 = time.perf_counter()
        status1, _ = client.post("/api/v1/boards/seq-1/reserve")
        status2, _ = client.post("/api/v1/boards/seq-1/release")
        samples.append(time.perf_counter() - t0)
        assert (status1, status2) == (200, 200), (status1, status2)
    elapsed = time.perf_counter() - start
    print(f"sequential: {cycles} reserve+release cycles in {elapsed:.2f} s")
    print(
        f"  {cycles / elapsed:.0f} cycles/s, {elapsed / cycles * 1000:.3f} ms per cycle"
    )
    print(f"  cycle latency: {percentiles(samples)}")
    return elapsed / cycles


def race(server, tokens, boards, rounds):
    latencies, double = [], 0
    for _ in range(rounds):
        clients = [Client(server.http_port, t) for t in tokens]
        barrier = threading.Barrier(len(clients))
        results = [None] * len(clients)

        def run(i, barrier=barrier, clients=clients, results=results):
            barrier.wait()
            t0 = time.perf_counter()
            results[i] = clients[i].post("/api/v1/boards/race/reserve")
            latencies.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [
            (i, body["name"])
            for i, (status, body) in enumerate(results)
            if status == 200
        ]
        names = [name for _, name in won]
        if len(names) != len(set(names)) or len(won) != boards:
            double += 1
        for i, name in won:
            status, _ = clients[i].post(f"/api/v1/boards/{name}/release")
            assert status == 200
    print(
        f"race: {rounds} rounds of {len(tokens)} clients for {boards} boards; "
        f"rounds with a double or missing allocation: {double}"
    )
    print(f"  reserve latency under contention: {percentiles(latencies)}")
    return double


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="sequential runs; the machine's noise shows in their spread",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = LabServer(tmp, boards=boards_file(10)).start()
        try:
            token = server.token("bench")
            tokens = [server.token(f"racer{i}") for i in range(50)]
            runs = sorted(
                sequential(server, token, args.cycles) for _ in range(args.repeat)
            )
            per_cycle = runs[len(runs) // 2]
            print(
                "sequential runs, ms per cycle: "
                + ", ".join(f"{r * 1000:.3f}" for r in runs)
                + f" (median {per_cycle * 1000:.3f})"
            )
            double = race(server, tokens, 10, args.rounds)
        finally:
            server.stop()
    print(f"target: < 1.5 ms per cycle: {'met' if per_cycle < 0.0015 else 'NOT met'}")
    return 1 if double else 0


if __name__ == "__main__":
    sys.exit(main())
