"""Cross-host reserve and release latency: a board of host h2 reserved and
released through host h1.

Starts a PostgreSQL cluster (Debian's ``postgresql``: ``initdb`` and
``pg_ctl`` into a temporary directory) and two real ``twistd -n bitelab``
hosts sharing it, each with one board and the setup script ``/bin/true``,
both with the default ``expiry_interval`` (1 s).
Each cycle reserves h2's board through h1 (h2 takes the reservation up and
runs the script; h1 answers once it is set up) and releases it through h1,
and the script prints the median and 99th percentile of each.

Run: ``python bench/bench_hosts_wakeup.py [--cycles N]``.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

from bench_lifecycle import Client, pct

from support.pg import PostgresServer
from support.server import LabServer

H1 = (
    "setup_script = /bin/true;\nclasses { c { arch = x; } }\n"
    "boards [ { name = h1-0; brdclass = c; } ]"
)
H2 = H1.replace("h1-0", "h2-0")


def timed(client, method, path):
    """Seconds one call took; it must succeed."""
    started = time.perf_counter()
    status, body = client.call(method, path, b"{}")
    elapsed = time.perf_counter() - started
    assert status == 200, body
    return elapsed, body


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args()
    pg = PostgresServer().start()
    servers = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            url = pg.database()
            for name, boards in (("h1", H1), ("h2", H2)):
                server = LabServer(
                    os.path.join(directory, name),
                    boards=boards,
                    settings={"db_url": url, "host_name": name, "expiry_interval": "1"},
                )
                servers.append(server)
            for server in servers:
                with open(server.env_path, "a") as f:
                    f.write(f"host_url={server.url}\n")
                server.start(timeout=120)
            client = Client(servers[0].http_port, servers[0].token("bench"))
            reserves, releases = [], []
            for i in range(args.cycles + args.cycles // 10):
                took, board = timed(client, "POST", "/api/v1/boards/h2-0/reserve")
                assert board["state"] == "reserved" and board["host"] == "h2", board
                warm = i >= args.cycles // 10  # the first tenth warms up
                if warm:
                    reserves.append(took)
                took, board = timed(client, "POST", "/api/v1/boards/h2-0/release")
                assert board["state"] == "free", board
                if warm:
                    releases.append(took)
    finally:
        for server in servers:
            server.stop()
        pg.stop()
    for what, samples in (("reserve", reserves), ("release", releases)):
        print(
            f"cross-host {what} (h2's board through h1), {len(samples)} cycles: "
            f"p50 {pct(samples, 0.5):.1f} ms, p99 {pct(samples, 0.99):.1f} ms"
        )


if __name__ == "__main__":
    main()
