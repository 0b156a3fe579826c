"""The waiting queue against a real server: hand-over latency, and the cost
of many waiting clients.

Starts ``twistd -n bitelab`` on a temporary lab (SQLite, no setup script,
no power options) and measures, with raw HTTP clients on loopback (asyncio
sockets, one thread, so that no client thread has to be scheduled before
it can read its answer):

1. Hand-over: 50 clients hold waiting reserves on a class whose boards are
   all taken.  One board at a time is force-released; the first waiter's
   answer is timed from the moment the release's own answer has been read
   (and from the moment the release was sent).  The waiter that got the
   board queues again at once, so every release finds 50 waiters.
   Target: p99 under 20 ms.
2. Many waiters: the server's resident memory, and ``GET /boards``
   latency (sequential requests on one keep-alive connection), without and
   with 1,000 waiting reserves held open, then with an event stream open
   for each of them too (as ``bitelab reserve --wait`` has).  Target: under
   100 MB more, and ``GET /boards`` no slower.

Run: ``python bench/bench_queue.py [--rounds N] [--waiters N] [--crowd N]``.
"""

import argparse
import asyncio
import http.client
import json
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from support.server import LabServer, wait_for


def boards_file(count):
    """A board file: ``count`` boards of class ``q``."""
    lines = ["classes { q { arch = x; } }", "boards ["]
    lines += [f"{{ name = q-{i}; brdclass = q; }}," for i in range(count)]
    lines.append("]")
    return "\n".join(lines)


def raise_file_limit(wanted):
    """Raise this process's open-file limit (the server inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_mb(pid):
    """Resident memory of process ``pid`` in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentiles(samples):
    """p50/p90/p99/max of ``samples`` (seconds) in ms, as text."""
    ordered = sorted(samples)

    def at(q):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return (
        f"p50 {at(0.5):.2f} ms  p90 {at(0.9):.2f} ms  p99 {at(0.99):.2f} ms  "
        f"max {ordered[-1] * 1000:.2f} ms"
    )


def request_bytes(method, path, token, body=None):
    """One HTTP/1.1 request that asks the server to close afterwards."""
    data = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def parse_answer(raw):
    """``(status, JSON body)`` of a whole HTTP answer read until the close."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
    }
    if headers.get("transfer-encoding") == "chunked":
        data, rest = b"", body
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            data, rest = data + rest[:size], rest[size + 2 :]
        body = data
    return status, json.loads(body) if body.strip() else None


async def exchange(port, payload):
    """Send one request and read its whole answer: ``(status, body, when)``,
    ``when`` being the moment the answer was complete."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        raw = await reader.read()
        when = time.perf_counter()
    finally:
        writer.close()
    status, body = parse_answer(raw)
    return status, body, when


class Waiters:
    """Clients holding waiting reserves on one class; each that is served
    records when its answer came and queues again if asked to."""

    def __init__(self, port, tokens, target, wait, requeue):
        self.port = port
        self.target = target
        self.wait = wait
        self.requeue = requeue
        self.tokens = tokens
        self.served = asyncio.Queue()
        self.tasks = []

    def start(self):
        """Start one waiting client per token."""
        for token in self.tokens:
            self.tasks.append(asyncio.ensure_future(self._client(token)))

    async def _client(self, token):
        path = f"/api/v1/boards/{self.target}/reserve"
        payload = request_bytes("POST", path, token, {"wait": self.wait})
        while True:
            status, body, when = await exchange(self.port, payload)
            await self.served.put((status, body, when))
            if not self.requeue:
                return

    async def stop(self):
        """Close every client's connection (each leaves the queue)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def queued(server, token):
    """How many waiters the server has."""
    return server.get("/api/v1/queue", token)["total"]


async def hand_over(server, root, tokens, rounds):
    """Part 1: release-to-answer latency with ``len(tokens)`` waiters."""
    port = server.http_port
    waiters = Waiters(port, tokens, "q", 3600, requeue=True)
    waiters.start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(
        None,
        lambda: wait_for(
            lambda: queued(server, root) == len(tokens), timeout=60, what="waiters"
        ),
    )
    after_return, after_send = [], []
    name = "q-0"
    for _ in range(rounds):
        sent = time.perf_counter()
        status, body, returned = await exchange(
            port,
            request_bytes(
                "POST", f"/api/v1/boards/{name}/release", root, {"force": True}
            ),
        )
        assert status == 200, body
        status, board, answered = await asyncio.wait_for(waiters.served.get(), 30)
        assert status == 200 and board["name"] == name, board
        after_return.append(max(answered - returned, 0.0))
        after_send.append(answered - sent)
        # the served client queues again: wait until all are back in line
        deadline = time.monotonic() + 30
        while queued(server, root) != len(tokens):
            assert time.monotonic() < deadline, "the waiters did not queue again"
            await asyncio.sleep(0.002)
    await waiters.stop()
    return after_return, after_send


def boards_latency(server, token, count):
    """``count`` sequential ``GET /boards`` on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", "/api/v1/boards", headers=headers)
        response = conn.getresponse()
        response.read()
        samples.append(time.perf_counter() - started)
        assert response.status == 200
    conn.close()
    return samples


async def follow(port, token, opened):
    """Hold an event stream open, reading (and dropping) what comes; count it
    in ``opened`` once the server has answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes("GET", "/api/v1/events/stream", token))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        opened.append(token)
        while await reader.read(65536):
            pass
    finally:
        writer.close()


async def crowd(server, root, tokens, samples):
    """Part 2: memory and ``GET /boards`` with ``len(tokens)`` waiters, then
    with as many event streams besides."""
    loop = asyncio.get_running_loop()
    pid = server.process.pid
    await loop.run_in_executor(None, boards_latency, server, root, 200)  # warm up
    before_rss = rss_mb(pid)
    before = await loop.run_in_executor(None, boards_latency, server, root, samples)
    waiters = Waiters(server.http_port, tokens, "q", 3600, requeue=False)
    waiters.start()
    await loop.run_in_executor(
        None,
        lambda: wait_for(
            lambda: queued(server, root) == len(tokens),
            timeout=120,
            interval=0.2,
            what="the crowd of waiters",
        ),
    )
    during_rss = rss_mb(pid)
    during = await loop.run_in_executor(None, boards_latency, server, root, samples)
    opened = []
    streams = [
        asyncio.ensure_future(follow(server.http_port, t, opened)) for t in tokens
    ]
    deadline = time.monotonic() + 120
    while len(opened) < len(tokens):
        assert time.monotonic() < deadline, "the event streams did not open"
        await asyncio.sleep(0.05)
    streams_rss = rss_mb(pid)
    with_streams = await loop.run_in_executor(
        None, boards_latency, server, root, samples
    )
    for stream in streams:
        stream.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    await waiters.stop()
    return (before_rss, during_rss, streams_rss), (before, during, with_streams)


def main():
    """Run both parts and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="releases timed")
    parser.add_argument("--waiters", type=int, default=50, help="waiters in part 1")
    parser.add_argument("--crowd", type=int, default=1000, help="waiters in part 2")
    parser.add_argument("--samples", type=int, default=1000, help="GET /boards timed")
    args = parser.parse_args()
    limit = raise_file_limit(args.crowd * 4 + 1024)
    print(f"open-file limit: {limit}")

    with tempfile.TemporaryDirectory() as directory:
        server = LabServer(
            directory,
            boards=boards_file(3),
            settings={"http_max_connections": str(2 * args.crowd + 256)},
        )
        server.start()
        try:
            root = server.token("root")
            for i in range(3):
                path = f"/api/v1/boards/q-{i}/reserve"
                assert server.request("POST", path, {}, root)[0] == 200
            # one user per waiter of part 1; the crowd shares their tokens
            # (minting a token runs bitelab-admin, too slow for a thousand)
            tokens = [server.token(f"w{i}") for i in range(args.waiters)]
            crowd_tokens = [tokens[i % len(tokens)] for i in range(args.crowd)]

            after_return, after_send = asyncio.run(
                hand_over(server, root, tokens, args.rounds)
            )
            p99 = sorted(after_return)[int(0.99 * len(after_return))]
            print(
                f"\n1. release -> first waiter's answer, {args.waiters} waiters, "
                f"{args.rounds} releases\n"
                f"   from the release's answer: {percentiles(after_return)}\n"
                f"   from sending the release:  {percentiles(after_send)}\n"
                f"   target p99 < 20 ms: {'met' if p99 < 0.020 else 'NOT met'}"
            )

            wait_for(lambda: queued(server, root) == 0, timeout=60, what="queue empty")
            for i in range(3):
                path = f"/api/v1/boards/q-{i}"
                server.request("POST", path + "/release", {"force": True}, root)
                assert server.request("POST", path + "/reserve", {}, root)[0] == 200
            rss, latencies = asyncio.run(
                crowd(server, root, crowd_tokens, args.samples)
            )
            print(f"\n2. {args.crowd} waiting clients")
            labels = (
                "without",
                "with the waiters",
                "with the waiters and their event streams",
            )
            for label, mb, samples in zip(labels, rss, latencies, strict=True):
                print(
                    f"   {label}: server RSS {mb:.1f} MB ({mb - rss[0]:+.1f} MB); "
                    f"GET /boards {percentiles(samples)}, "
                    f"mean {statistics.mean(samples) * 1000:.2f} ms"
                )
            print("   target: under +100 MB, GET /boards no slower")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
