"""A labgrid coordinator to measure bitelab against, for the benchmarks.

labgrid (https://labgrid.readthedocs.io) is the usual tool for sharing
boards; its ``labgrid-client`` speaks gRPC to ``labgrid-coordinator``.  The
benchmarks compare a bitelab command with the labgrid command that does the
same, side by side in one run, on the same machine.

labgrid is not a dependency of bitelab: install it in a virtualenv of its own
(``python3 -m venv LGVENV && LGVENV/bin/pip install labgrid``) and give that
virtualenv's path.  ``Coordinator`` starts the coordinator on a free loopback
port in a temporary directory (it keeps its places there) and stops it::

    with Coordinator(venv) as coordinator:
        coordinator.add_places(["board-1", "board-2"])
        coordinator.client("places")        # argv of labgrid-client
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Coordinator:
    """A ``labgrid-coordinator`` of the virtualenv ``venv`` on a loopback port."""

    def __init__(self, venv, timeout=30.0):
        self.venv = os.path.abspath(venv)
        self.timeout = timeout
        self.address = f"127.0.0.1:{free_port()}"
        self.dir = None
        self.process = None
        for tool in ("labgrid-coordinator", "labgrid-client"):
            if not os.access(self.tool(tool), os.X_OK):
                raise FileNotFoundError(
                    f"{self.tool(tool)} not found: install labgrid in {self.venv} "
                    f"(python3 -m venv {self.venv} && {self.venv}/bin/pip install labgrid)"
                )

    def tool(self, name):
        """The path of the virtualenv's program ``name``."""
        return os.path.join(self.venv, "bin", name)

    def client(self, *args):
        """argv of ``labgrid-client`` talking to this coordinator."""
        return [self.tool("labgrid-client"), "-x", self.address, *args]

    def start(self):
        """Start the coordinator and wait until a client gets an answer."""
        self.dir = tempfile.mkdtemp(prefix="labgrid-coordinator-")
        self.process = subprocess.Popen(
            [self.tool("labgrid-coordinator"), "-l", self.address],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.timeout
        while True:
            probe = subprocess.run(
                self.client("places"), capture_output=True, check=False
            )
            if probe.returncode == 0:
                return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"labgrid-coordinator did not start: {probe.stderr}")
            time.sleep(0.2)

    def add_places(self, names):
        """Create a place for each of ``names``."""
        for name in names:
            subprocess.run(self.client("-p", name, "create"), check=True)

    def stop(self):
        """Stop the coordinator and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
