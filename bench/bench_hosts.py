"""Concurrent class reserves and releases across three hosts on one PostgreSQL.

Starts a PostgreSQL cluster (Debian's ``postgresql``: ``initdb`` and
``pg_ctl`` into a temporary directory) and three real ``twistd -n bitelab``
hosts on loopback sharing one database, with 1,000 boards split across the
three hosts' board files, all of one class (no setup script, so a reserve
is the database's claim alone).  Client processes (``--processes``, each
running ``--clients / --processes`` threads over keep-alive
``http.client`` connections) race: each client reserves the class through a
random host and releases the board it got through a random host, in a loop
for ``--seconds``.  Then the same with one host on SQLite and the same
1,000 boards, as a baseline.

For each setup it prints the throughput (reserve+release cycles per second,
all clients together), the p50 and p99 of reserve and of release latency,
the CPU seconds spent by the hosts, PostgreSQL and the client processes,
and the result of two double-allocation checks:

* the database's: no two reservations of one board overlap in time (each
  one ended before the next one of its board was created), every
  reservation ended, and in the audit log each board's reservations start
  (``reserving`` or ``reserved``) and end (``freed``) in turn;
* the clients': every reservation id was handed out once, and no client got
  a board before the client that held it last had asked to release it
  (one clock, ``CLOCK_MONOTONIC``, for all processes).

Run: ``python bench/bench_hosts.py [--seconds S] [--clients N]
[--processes P] [--boards B] [--no-sqlite]``.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import random
import resource
import sqlite3
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from support.allocation import check_clients, check_database, history
from support.pg import PostgresServer
from support.server import LabServer

HOSTS = ("h1", "h2", "h3")
USERS = 10


def board_file(host, names):
    """A board file with ``names`` as boards of the lab-wide class ``c``."""
    boards = ", ".join(f"{{ name = {name}; brdclass = c; }}" for name in names)
    return f"classes {{ c {{ arch = x; }} }}\nboards [ {boards} ]\n"


def split(count, hosts):
    """``count`` board names dealt out to ``hosts``: ``{host: [names]}``."""
    return {
        host: [f"{host}-{i}" for i in range(part, count, len(hosts))]
        for part, host in enumerate(hosts)
    }


def cpu_seconds(pid):
    """User+system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid):
    """The pids of the direct children of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return found


class Connection:
    """A keep-alive HTTP/1.1 connection to one host, with a bearer token."""

    def __init__(self, port, token):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        }

    def post(self, path):
        """``(status, parsed JSON)`` of a POST with an empty JSON body."""
        self.conn.request("POST", path, body=b"{}", headers=self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def run_client(ports, token, seed, start, end, out):
    """One client: reserve class ``c`` and release what it got, each through a
    random host, from ``start`` to ``end`` (monotonic); appends to ``out``
    one ``(board, reservation, t0, t1, t2, t3, asked, releaser)`` per cycle
    (reserve sent, answered, release sent, answered; the indexes of the
    hosts asked to reserve and to release) or ``("error", text)``."""
    rng = random.Random(seed)
    hosts = [Connection(port, token) for port in ports]
    count = len(hosts)
    while time.monotonic() < start:
        time.sleep(0.001)
    while time.monotonic() < end:
        t0 = time.monotonic()
        asked = rng.randrange(count)
        status, board = hosts[asked].post("/api/v1/boards/c/reserve")
        t1 = time.monotonic()
        if status != 200:
            out.append(("error", f"reserve: {status} {board}"))
            continue
        t2 = time.monotonic()
        releaser = rng.randrange(count)
        status, body = hosts[releaser].post(f"/api/v1/boards/{board['name']}/release")
        t3 = time.monotonic()
        if status != 200:
            out.append(("error", f"release {board['name']}: {status} {body}"))
        out.append(
            (board["name"], board["reservation_id"], t0, t1, t2, t3, asked, releaser)
        )


def client_process(ports, tokens, first, count, start, end, results):
    """``count`` client threads (numbered from ``first``); puts their records
    and this process's CPU seconds on ``results``."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    outs = [[] for _ in range(count)]
    threads = [
        threading.Thread(
            target=run_client,
            args=(ports, tokens[(first + i) % len(tokens)], first + i, start, end, o),
        )
        for i, o in enumerate(outs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results.put(([r for o in outs for r in o], cpu))


def race(ports, tokens, args):
    """Run the clients against ``ports``; ``(records, errors, wall, client_cpu)``."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = time.monotonic() + 2.0  # every thread connected and waiting
    end = start + args.seconds
    per, extra = divmod(args.clients, args.processes)
    processes, first = [], 0
    for n in range(args.processes):
        count = per + (n < extra)
        processes.append(
            context.Process(
                target=client_process,
                args=(ports, tokens, first, count, start, end, results),
            )
        )
        first += count
    for process in processes:
        process.start()
    records, client_cpu = [], 0.0
    for _ in processes:
        got, cpu = results.get()
        records += got
        client_cpu += cpu
    for process in processes:
        process.join()
    wall = max(r[5] for r in records if r[0] != "error") - start
    errors = [r[1] for r in records if r[0] == "error"]
    return [r for r in records if r[0] != "error"], errors, wall, client_cpu


def pct(samples, q):
    """The ``q`` quantile of ``samples`` (seconds), in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def report(name, records, errors, wall, cpu, problems, hosts=None):
    """Print one setup's figures; the figures as a dict.  With ``hosts``
    (the hosts' names, in the clients' order), the p50s also apart for
    requests made to the board's own host and to another host."""
    reserve = [r[3] - r[2] for r in records]
    release = [r[5] - r[4] for r in records]
    figures = {
        "cycles": len(records),
        "rate": len(records) / wall,
        "reserve": (pct(reserve, 0.5), pct(reserve, 0.99)),
        "release": (pct(release, 0.5), pct(release, 0.99)),
        "problems": problems,
        "errors": errors,
    }
    print(f"== {name}")
    print(
        f"  {len(records)} reserve+release cycles in {wall:.1f} s: "
        f"{figures['rate']:.1f} cycles/s; {len(errors)} failed requests"
    )
    print(
        f"  reserve p50 {figures['reserve'][0]:.1f} ms  p99 "
        f"{figures['reserve'][1]:.1f} ms;  release p50 {figures['release'][0]:.1f} "
        f"ms  p99 {figures['release'][1]:.1f} ms"
    )
    if hosts:
        print("  p50 through the board's own host / through another host:")
        for what, sent, answered, index in (
            ("reserve", 2, 3, 6),
            ("release", 4, 5, 7),
        ):
            own, other = [], []
            for r in records:
                mine = hosts[r[index]] == r[0].split("-")[0]
                (own if mine else other).append(r[answered] - r[sent])
            print(
                f"    {what} {pct(own, 0.5):.1f} ms ({len(own)}) / "
                f"{pct(other, 0.5):.1f} ms ({len(other)})"
            )
    print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    boards = len({r[0] for r in records})
    print(
        f"  double allocations: {len(problems) or 'none'} "
        f"({boards} distinct boards reserved)"
    )
    for line in (problems + errors)[:10]:
        print("   ", line)
    return figures


def ended_history(conn):
    """``history`` of the database behind ``conn`` once every reservation has
    ended (releases finishing), or after 60 s."""
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and conn.execute(
            "SELECT count(*) FROM reservations WHERE ended_at IS NULL"
        ).fetchone()[0]
    ):
        time.sleep(0.1)
    return history(conn)


def several_hosts(directory, args):
    """The three-host run on PostgreSQL; its figures."""
    pg = PostgresServer().start()
    servers = []
    try:
        url = pg.database()
        for host, names in split(args.boards, HOSTS).items():
            server = LabServer(
                os.path.join(directory, host),
                boards=board_file(host, names),
                settings={
                    "db_url": url,
                    "host_name": host,
                    "expiry_interval": str(args.expiry_interval),
                    "log_level": "warn",
                },
            )
            with open(server.env_path, "a") as f:
                f.write(f"host_url={server.url}\n")
            servers.append(server.start(timeout=120))
        tokens = [servers[0].token(f"u{i}") for i in range(USERS)]
        ports = [s.http_port for s in servers]
        pids = [s.process.pid for s in servers]
        postmaster = _postmaster(pg)
        before = {p: cpu_seconds(p) for p in pids + children(postmaster)}
        records, errors, wall, client_cpu = race(ports, tokens, args)
        # backends started during the run count from 0
        spent = {p: cpu_seconds(p) - before.get(p, 0.0) for p in children(postmaster)}
        cpu = {
            "hosts": sum(cpu_seconds(p) - before[p] for p in pids),
            "PostgreSQL": sum(spent.values()),
            "clients": client_cpu,
        }
        import psycopg

        with psycopg.connect(url) as conn:
            reservations, events = ended_history(conn)
        problems = check_database(reservations, events) + check_clients(records)
        if len(reservations) != len(records):
            problems.append(
                f"{len(reservations)} reservations recorded, "
                f"{len(records)} answered to clients"
            )
        return report(
            f"3 hosts, PostgreSQL, {args.boards} boards",
            records,
            errors,
            wall,
            cpu,
            problems,
            HOSTS,
        )
    finally:
        for server in servers:
            server.stop()
        pg.stop()


def _postmaster(pg):
    with open(os.path.join(pg.data, "postmaster.pid")) as f:
        return int(f.readline())


def one_host_sqlite(directory, args):
    """The baseline: one host on SQLite with the same boards; its figures."""
    names = [n for part in split(args.boards, HOSTS).values() for n in part]
    server = LabServer(
        os.path.join(directory, "sqlite"),
        boards=board_file("h1", names),
        settings={"expiry_interval": str(args.expiry_interval), "log_level": "warn"},
    )
    server.start(timeout=120)
    try:
        tokens = [server.token(f"u{i}") for i in range(USERS)]
        before = cpu_seconds(server.process.pid)
        records, errors, wall, client_cpu = race([server.http_port], tokens, args)
        cpu = {"host": cpu_seconds(server.process.pid) - before, "clients": client_cpu}
        database = os.path.join(server.dir, "bitelab.sqlite")
        with sqlite3.connect(database) as conn:
            reservations, events = ended_history(conn)
        conn.close()
    finally:
        server.stop()
    problems = check_database(reservations, events) + check_clients(records)
    if len(reservations) != len(records):
        problems.append(
            f"{len(reservations)} reservations recorded, "
            f"{len(records)} answered to clients"
        )
    return report(
        f"1 host, SQLite, {args.boards} boards", records, errors, wall, cpu, problems
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--boards", type=int, default=1000)
    parser.add_argument("--no-sqlite", action="store_true")
    # the server's default; a host takes up other hosts' requests each tick
    parser.add_argument("--expiry-interval", type=float, default=1.0)
    args = parser.parse_args()
    print(
        f"{args.clients} clients in {args.processes} processes, {args.seconds:g} s "
        f"per setup, expiry_interval {args.expiry_interval:g} s; "
        f"{os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory() as directory:
        hosts = several_hosts(directory, args)
        lite = None if args.no_sqlite else one_host_sqlite(directory, args)
    summary = (
        f"Three hosts on one PostgreSQL ran {hosts['rate']:.0f} reserve+release "
        f"cycles/s for {args.clients} clients racing for one class of "
        f"{args.boards} boards (reserve p50/p99 {hosts['reserve'][0]:.0f}/"
        f"{hosts['reserve'][1]:.0f} ms, release {hosts['release'][0]:.0f}/"
        f"{hosts['release'][1]:.0f} ms)"
    )
    if lite:
        summary += (
            f"; one host on SQLite ran {lite['rate']:.0f} cycles/s (reserve "
            f"{lite['reserve'][0]:.0f}/{lite['reserve'][1]:.0f} ms, release "
            f"{lite['release'][0]:.0f}/{lite['release'][1]:.0f} ms), "
            f"{hosts['rate'] / lite['rate']:.2f}x"
        )
    clean = not any(f["problems"] or f["errors"] for f in (hosts, lite) if f)
    summary += (
        ".  Neither the database nor the clients' records show a board held " "twice."
        if clean
        else ".  PROBLEMS were found: see above."
    )
    print()
    print(summary)
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
