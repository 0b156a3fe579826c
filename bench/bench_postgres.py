"""Reserve+release over HTTP on PostgreSQL against SQLite, side by side.

Starts a PostgreSQL cluster (Debian's ``postgresql``: ``initdb`` and
``pg_ctl`` into a temporary directory) and two real ``twistd -n bitelab``
servers with the same one-board lab, one on SQLite and one on PostgreSQL;
runs sequential reserve+release cycles on each, alternating rounds, and
prints the medians and their ratio (goal: PostgreSQL within 2x of SQLite).

Run: ``python bench/bench_postgres.py [--cycles N] [--rounds R]``.
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

from bench_lifecycle import Client
from bench_reserve_vs_labgrid import bitelab_round

from support.pg import PostgresServer
from support.server import LabServer

BOARDS = "classes { c { arch = x; } }\nboards [ { name = bench-1; brdclass = c; } ]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pg = PostgresServer().start()
    servers = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            sqlite = LabServer(os.path.join(directory, "sqlite"), boards=BOARDS)
            postgresql = LabServer(
                os.path.join(directory, "pg"),
                boards=BOARDS,
                settings={"db_url": pg.database()},
            )
            servers = [sqlite.start(), postgresql.start()]
            clients = [Client(s.http_port, s.token("bench")) for s in servers]
            for client in clients:
                bitelab_round(client, args.cycles // 10)
            medians = ([], [])
            for _ in range(args.rounds):
                for client, found in zip(clients, medians):
                    found.append(statistics.median(bitelab_round(client, args.cycles)))
            for server in servers:
                server.stop()
    finally:
        pg.stop()
    lite, post = (statistics.median(m) for m in medians)
    print(
        f"reserve+release, median of {args.rounds} rounds of {args.cycles}: "
        f"SQLite {lite * 1000:.3f} ms, PostgreSQL {post * 1000:.3f} ms; "
        f"ratio {post / lite:.2f} (goal <= 2)"
    )


if __name__ == "__main__":
    main()
