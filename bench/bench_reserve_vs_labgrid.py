"""bitelab reserve+release over HTTP against labgrid acquire+release over gRPC.

Side by side in one run on this machine:

* bitelab: a real ``twistd -n bitelab`` (SQLite in WAL mode, no setup
  script, no power), sequential ``POST /reserve`` + ``POST /release`` with a
  bearer token on one keep-alive connection;
* labgrid: a real ``labgrid-coordinator`` (``bench/labgrid_peer.py``), a
  client session like ``labgrid-client``'s, and sequential
  ``AcquirePlace`` + ``ReleasePlace`` gRPC calls on one channel.

Each side runs its cycles in rounds, alternating, and the medians of the
per-cycle times are compared (goal: bitelab at most 0.6 of labgrid).

labgrid is not a bitelab dependency: install it in a virtualenv of its own
and name it::

    python3 -m venv /tmp/lg && /tmp/lg/bin/pip install labgrid
    python bench/bench_reserve_vs_labgrid.py --labgrid-venv /tmp/lg
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))

from bench_lifecycle import Client
from labgrid_peer import Coordinator

from support.server import LabServer

#: run by the labgrid virtualenv's Python: N acquire+release cycles, the
#: per-cycle seconds as JSON on standard output
LABGRID_CYCLES = """
import asyncio, json, sys, time
from labgrid.remote.client import ClientSession
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb

async def main(address, place, cycles):
    session = ClientSession(address, asyncio.get_running_loop())
    await session.start()
    acquire = pb.AcquirePlaceRequest(placename=place)
    release = pb.ReleasePlaceRequest(placename=place)
    samples = []
    for _ in range(cycles):
        started = time.perf_counter()
        await session.stub.AcquirePlace(acquire)
        await session.stub.ReleasePlace(release)
        samples.append(time.perf_counter() - started)
    await session.stop()
    await session.close()
    print(json.dumps(samples))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def labgrid_round(coordinator, cycles):
    result = subprocess.run(
        [
            coordinator.tool("python"),
            "-c",
            LABGRID_CYCLES,
            coordinator.address,
            "bench-1",
            str(cycles),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def bitelab_round(client, cycles):
    samples = []
    for _ in range(cycles):
        started = time.perf_counter()
        status, _ = client.call("POST", "/api/v1/boards/bench-1/reserve", b"{}")
        assert status == 200
        status, _ = client.call("POST", "/api/v1/boards/bench-1/release", b"{}")
        assert status == 200
        samples.append(time.perf_counter() - started)
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labgrid-venv", required=True)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as directory,
        Coordinator(args.labgrid_venv) as lg,
    ):
        lg.add_places(["bench-1"])
        server = LabServer(
            os.path.join(directory, "lab"),
            boards="classes { c { arch = x; } }\nboards [ { name = bench-1; brdclass = c; } ]",
        )
        server.start()
        try:
            client = Client(server.http_port, server.token("bench"))
            bitelab_round(client, args.cycles // 10)
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(statistics.median(bitelab_round(client, args.cycles)))
                theirs.append(statistics.median(labgrid_round(lg, args.cycles)))
        finally:
            server.stop()
    for i, (a, b) in enumerate(zip(ours, theirs), 1):
        print(
            f"round {i}: bitelab {a * 1000:.3f} ms, labgrid {b * 1000:.3f} ms "
            f"per reserve+release (ratio {a / b:.2f})"
        )
    a, b = statistics.median(ours), statistics.median(theirs)
    print(
        f"median: bitelab {a * 1000:.3f} ms, labgrid {b * 1000:.3f} ms; "
        f"ratio {a / b:.2f} (goal <= 0.6)"
    )


if __name__ == "__main__":
    main()
