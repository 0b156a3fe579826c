"""Benchmark: clients that stop reading a long console log, and server memory.

Run ``python bench/bench_followers.py`` (``--help`` for options).  It starts
a real ``twistd bitelab`` on a temporary lab whose one board's serial
console is a pseudo-terminal, reserves the board, prints MIB mebibytes on
it, then opens FOLLOWERS ``?follow=1`` streams and READERS plain ``GET``s of
the console that never read past a 4 KiB window.

Reported: the server's resident memory before the clients, the most seen
while they hang (sampled for two seconds after every client has been sent
something), and once they have closed; and how long the first byte took to
reach every client.
"""

import argparse
import fcntl
import os
import socket
import struct
import sys
import tempfile
import termios
import time
import tty

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from support.server import LabServer, wait_for

BOARDS = (
    "classes {{ z {{ arch = arm; }} }}\nboards [ {{ name = con-1; brdclass = z; "
    'options = [ {{ cls = serialconsole, val = "{device}" }} ] }} ]\n'
)


def rss_mib(pid):
    """Resident memory of ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1]) / 1024


def open_stream(server, token, follow):
    """A client that asked for the console and reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.http_port))
    query = "?follow=1" if follow else ""
    sock.sendall(
        f"GET /api/v1/boards/con-1/console{query} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def waiting(sock):
    """Bytes sent to ``sock`` and not read (SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=16, help="log size (16)")
    parser.add_argument("--followers", type=int, default=30, help="(30)")
    parser.add_argument("--readers", type=int, default=10, help="(10)")
    args = parser.parse_args()
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    users = max(1, -(-args.followers // 8))  # 8 followers each at most
    admins = tuple(f"admin{n}" for n in range(users))
    with tempfile.TemporaryDirectory() as directory:
        server = LabServer(
            directory,
            boards=BOARDS.format(device=os.ttyname(slave)),
            admins=admins,
            settings={"console_log_max_bytes": str(8 * 2**20)},
        ).start()
        try:
            tokens = [server.token(user) for user in admins]
            server.request("POST", "/api/v1/boards/con-1/reserve", {}, tokens[0])
            chunk = bytes(range(256)) * 256
            for _ in range(args.mib * 16):
                os.write(master, chunk)
            log = os.path.join(server.dir, "console", "con-1.log")
            names = [log] + [f"{log}.{n}" for n in range(1, 5)]
            wait_for(
                lambda: sum(os.path.getsize(n) for n in names if os.path.exists(n))
                >= args.mib * 2**20,
                timeout=120,
                what="the log",
            )
            pid = server.process.pid
            before = rss_mib(pid)
            start = time.monotonic()
            streams = [
                open_stream(server, tokens[n % users], True)
                for n in range(args.followers)
            ] + [open_stream(server, tokens[0], False) for _ in range(args.readers)]
            wait_for(
                lambda: all(waiting(s) > 0 for s in streams),
                timeout=120,
                what="every client to get data",
            )
            first_bytes = time.monotonic() - start
            peak = before
            for _ in range(20):
                peak = max(peak, rss_mib(pid))
                time.sleep(0.1)
            for sock in streams:
                sock.close()
            time.sleep(2)
            after = rss_mib(pid)
        finally:
            server.stop()
    print(
        f"{args.followers} followers + {args.readers} readers, {args.mib} MiB log: "
        f"RSS before {before:.0f} MiB, while stalled {peak:.0f} MiB, "
        f"after {after:.0f} MiB; first byte to all in {first_bytes:.2f} s"
    )


if __name__ == "__main__":
    main()
