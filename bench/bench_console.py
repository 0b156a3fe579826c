"""Benchmark: many boards printing continuously into console services.

Run ``python bench/bench_console.py`` (``--help`` for options).  It makes one
pseudo-terminal per board; this process runs a ``ConsoleService`` for each
(real ``SerialPort``, log files in a temporary directory) with one viewer,
and a separate writer process plays the boards, each printing lines at the
serial line's rate (baud / 10 bytes a second) with the time of writing in
every line.  Only this process's CPU time is counted.

Reported: the server's CPU use (CPU seconds per wall second over the
measured window, 1.0 = one core busy) and the delay from a line being
written to the pty until the viewer got its last byte (p50, p99, max).
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import termios
import time
import tty

TICK = 0.01


def writer(fds, baud, seconds):
    """Print timestamped lines on every master fd at ``baud`` for ``seconds``."""
    per_tick = baud / 10 * TICK
    owed = [0.0] * len(fds)
    start = time.monotonic()
    tick = 0
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        for i, fd in enumerate(fds):
            owed[i] += per_tick
            size = int(owed[i])
            stamp = b"%.6f %d " % (time.monotonic(), i)
            line = stamp + b"x" * max(0, size - len(stamp) - 1) + b"\n"
            owed[i] -= len(line)
            os.write(fd, line)
        tick += 1
        pause = start + tick * TICK - time.monotonic()
        if pause > 0:
            time.sleep(pause)


class TimingViewer:
    """A viewer recording when each chunk of output arrived."""

    def __init__(self):
        self.chunks = []
        self.closed = None

    def write(self, data):
        self.chunks.append((time.monotonic(), data))

    def close(self, reason):
        self.closed = reason

    def delays(self, since, until):
        """Delays of the lines written in [since, until): arrival - stamp."""
        found = []
        partial = b""
        for arrived, data in self.chunks:
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            for line in lines:
                stamp = float(line.split(b" ", 1)[0])
                if since <= stamp < until:
                    found.append(arrived - stamp)
        return found

    def size(self):
        """Bytes received."""
        return sum(len(data) for _, data in self.chunks)


def percentile(values, fraction):
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_seconds():
    """CPU time (user + system) used by this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server(args):
    """Run the services and the writer process; print the figures."""
    from twisted.internet import reactor

    from bitelab.console import ConsoleService

    masters, paths = [], []
    for _ in range(args.boards):
        master, slave = os.openpty()
        tty.setraw(master, termios.TCSANOW)
        masters.append(master)
        paths.append(os.ttyname(slave))
        os.close(slave)

    log_dir = tempfile.mkdtemp(prefix="bench-console-")
    services, viewers = [], []
    for i, path in enumerate(paths):
        service = ConsoleService(reactor, f"board{i:03d}", path, args.baud, log_dir)
        service.startService()
        viewer = TimingViewer()
        service.attach(viewer)
        services.append(service)
        viewers.append(viewer)
    if not all(service.connected for service in services):
        sys.exit("some ptys could not be opened")

    total = args.warmup + args.seconds
    child = subprocess.Popen(
        [sys.executable, __file__, "--writer", "--baud", str(args.baud)]
        + ["--seconds", str(total), "--fds", ",".join(map(str, masters))],
        pass_fds=masters,
    )
    window = {}

    def begin():
        window["start"] = (time.monotonic(), cpu_seconds())

    def end():
        window["end"] = (time.monotonic(), cpu_seconds())
        # Let the lines still in flight arrive before stopping.
        reactor.callLater(0.5, reactor.stop)

    reactor.callLater(args.warmup, begin)
    reactor.callLater(total, end)
    reactor.run()
    child.wait()
    dropped = [viewer.closed for viewer in viewers if viewer.closed]
    for service in services:
        service.stopService()
    for master in masters:
        os.close(master)

    (t0, c0), (t1, c1) = window["start"], window["end"]
    delays = []
    for viewer in viewers:
        delays.extend(viewer.delays(t0, t1))
    received = sum(viewer.size() for viewer in viewers)
    logged = sum(
        os.path.getsize(os.path.join(log_dir, name)) for name in os.listdir(log_dir)
    )
    cpu = (c1 - c0) / (t1 - t0)
    ms = 1000
    print(f"boards: {args.boards} at {args.baud} baud, measured {t1 - t0:.1f} s")
    print(f"bytes: {received} to viewers, {logged} logged")
    print(f"lines measured: {len(delays)}")
    print(f"server CPU: {cpu * 100:.1f}% of one core")
    print(
        f"delay write->viewer: p50 {percentile(delays, 0.5) * ms:.2f} ms,"
        f" p99 {percentile(delays, 0.99) * ms:.2f} ms,"
        f" max {max(delays) * ms:.2f} ms"
    )
    print(f"viewers dropped: {len(dropped)} {sorted(set(dropped))}")
    for name in os.listdir(log_dir):
        os.unlink(os.path.join(log_dir, name))
    os.rmdir(log_dir)


def main():
    """Parse the command line and run the server side or the writer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", type=int, default=100)
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fds", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        writer([int(fd) for fd in args.fds.split(",")], args.baud, args.seconds)
    else:
        server(args)


if __name__ == "__main__":
    main()
