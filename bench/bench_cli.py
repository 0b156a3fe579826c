"""``bitelab list`` against ``labgrid-client places``, side by side in one run.

Starts a real bitelab server and a labgrid coordinator (``labgrid_peer``),
each with the same number of boards (places), then times the two commands
as a user runs them, alternately, each as a new process: wall time from
start to exit, which for such commands is mostly start-up.  Prints the
figures of each and the ratio of the medians.  Target: bitelab at most 0.5
of labgrid.

Run: ``python bench/bench_cli.py --labgrid-venv PATH [--runs N]``, where
PATH is a virtualenv with labgrid installed (see ``labgrid_peer``).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from labgrid_peer import Coordinator

from support.server import REPO, LabServer


def boards_file(count):
    """A board file of ``count`` boards of one class."""
    boards = "".join(
        f"{{ name = board-{i}; brdclass = bench; }},\n" for i in range(count)
    )
    return f"classes {{ bench {{ arch = x; }} }}\nboards [\n{boards}]\n"


def wall_time(argv, env):
    """Seconds from start to exit of ``argv``, which must succeed."""
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr.decode()}")
    return elapsed


def summary(name, samples):
    """One line of figures, in milliseconds."""
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return (
        f"{name:<24} median {statistics.median(ms):7.1f} ms  mean "
        f"{statistics.mean(ms):7.1f} ms  min {ms[0]:7.1f} ms  p90 {p90:7.1f} ms"
    )


def main():
    """Run the comparison and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--labgrid-venv",
        default=os.environ.get("LABGRID_VENV"),
        required="LABGRID_VENV" not in os.environ,
        help="virtualenv with labgrid installed (default: $LABGRID_VENV)",
    )
    parser.add_argument("--runs", type=int, default=20, help="runs of each (20)")
    parser.add_argument("--boards", type=int, default=5, help="boards/places (5)")
    args = parser.parse_args()

    bitelab = [os.path.join(os.path.dirname(sys.executable), "bitelab"), "list"]
    with tempfile.TemporaryDirectory() as directory:
        server = LabServer(directory, boards=boards_file(args.boards)).start()
        try:
            env = dict(os.environ)
            env.update(
                PYTHONPATH=REPO,
                BITELAB_URL=server.url,
                BITELAB_AUTH=server.token("root"),
            )
            with Coordinator(args.labgrid_venv) as coordinator:
                coordinator.add_places(f"board-{i}" for i in range(args.boards))
                labgrid = coordinator.client("places")
                times = {"bitelab list": [], "labgrid-client places": []}
                for _ in range(2):  # warm the page cache and both servers
                    wall_time(bitelab, env)
                    wall_time(labgrid, env)
                for _ in range(args.runs):
                    times["bitelab list"].append(wall_time(bitelab, env))
                    times["labgrid-client places"].append(wall_time(labgrid, env))
        finally:
            server.stop()
    print(f"{args.runs} runs each, alternating, {args.boards} boards/places")
    for name, samples in times.items():
        print(summary(name, samples))
    ratio = statistics.median(times["bitelab list"]) / statistics.median(
        times["labgrid-client places"]
    )
    verdict = "met" if ratio <= 0.5 else "NOT met"
    print(f"ratio of medians bitelab/labgrid: {ratio:.2f} (target <= 0.50: {verdict})")


if __name__ == "__main__":
    main()
