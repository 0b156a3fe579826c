"""A real SNMP agent (snmpsim) playing a PoE switch, for tests and benchmarks.

``SNMPAgent`` writes a ``.snmprec`` data file whose
``pethPsePortAdminEnable.GROUP.PORT`` records use snmpsim's ``writecache``
variation, so they can be read and written; the community is the data
file's name.  It starts ``snmpsim-command-responder`` on a free loopback UDP
port, waits until net-snmp's ``snmpget`` gets an answer, and stops it.
``get`` reads the agent's state with ``snmpget``, independently of bitelab.

Test modules use the ``snmp_agent`` fixture by importing it.
"""

import os
import shutil
import socket
import subprocess
import time

import pytest

PETH_PSE_PORT_ADMIN_ENABLE = "1.3.6.1.2.1.105.1.1.1.3"
SYS_DESCR = "1.3.6.1.2.1.1.1.0"
#: a port whose SET is refused with wrongType, like a switch typing it otherwise
WRONGTYPE_PORT = 90
#: a port whose SET is refused with notWritable
NOTWRITABLE_PORT = 91


def free_udp_port():
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snmprec(groups=(1,), ports=range(1, 9), initial=2):
    """The ``.snmprec`` text: writable admin-enable records plus the refusing ports."""
    lines = [f"{SYS_DESCR}|4|bitelab test PoE switch"]
    records = []
    for group in groups:
        for port in ports:
            records.append((group, port, f"value={initial}"))
        records.append((group, WRONGTYPE_PORT, "value=2,status=wrongtype,op=set"))
        records.append((group, NOTWRITABLE_PORT, "value=2,status=notwritable,op=set"))
    # snmpsim needs its records in OID order.
    for group, port, settings in sorted(records):
        lines.append(
            f"{PETH_PSE_PORT_ADMIN_ENABLE}.{group}.{port}|2:writecache|{settings}"
        )
    return "\n".join(lines) + "\n"


class SNMPAgent:
    """One ``snmpsim-command-responder`` process serving one data file."""

    host = "127.0.0.1"

    def __init__(self, workdir, community="private", groups=(1,), ports=range(1, 9)):
        self.community = community
        self.port = free_udp_port()
        self._workdir = workdir
        self._data_dir = os.path.join(workdir, "data")
        self._cache_dir = os.path.join(workdir, "cache")
        os.makedirs(self._data_dir, exist_ok=True)
        os.makedirs(self._cache_dir, exist_ok=True)
        with open(os.path.join(self._data_dir, f"{community}.snmprec"), "w") as f:
            f.write(snmprec(groups, ports))
        self._process = None

    def start(self, wait=15.0):
        """Start the agent and wait until it answers ``snmpget``."""
        command = shutil.which("snmpsim-command-responder")
        if command is None or shutil.which("snmpget") is None:
            pytest.skip("needs snmpsim (pip) and snmpget (apt: snmp)")
        env = dict(os.environ, SNMPSIM_ALLOW_ROOT="true")
        log_path = os.path.join(self._workdir, "agent.log")
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    command,
                    f"--data-dir={self._data_dir}",
                    f"--cache-dir={self._cache_dir}",
                    f"--agent-udpv4-endpoint={self.host}:{self.port}",
                    "--log-level=error",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._snmpget(SYS_DESCR, timeout=0.2).returncode == 0:
                return self
        self.stop()
        with open(log_path, errors="replace") as f:
            raise RuntimeError(
                f"snmpsim did not come up on port {self.port}: {f.read()}"
            )

    def stop(self):
        """Stop the agent (its written values are lost)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _snmpget(self, oid, timeout=1.0):
        return subprocess.run(
            [
                "snmpget",
                "-v2c",
                "-c",
                self.community,
                "-On",
                "-Oqv",
                "-t",
                str(timeout),
                "-r",
                "0",
                f"{self.host}:{self.port}",
                oid,
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    def set(self, group, port, value):
        """Set ``pethPsePortAdminEnable.GROUP.PORT`` with net-snmp's ``snmpset``."""
        subprocess.run(
            [
                "snmpset",
                "-v2c",
                "-c",
                self.community,
                f"{self.host}:{self.port}",
                f"{PETH_PSE_PORT_ADMIN_ENABLE}.{group}.{port}",
                "i",
                str(value),
            ],
            check=True,
            capture_output=True,
        )

    def get(self, group, port):
        """``pethPsePortAdminEnable.GROUP.PORT`` as net-snmp's ``snmpget`` reads it."""
        result = self._snmpget(f"{PETH_PSE_PORT_ADMIN_ENABLE}.{group}.{port}")
        if result.returncode != 0:
            raise RuntimeError(f"snmpget failed: {result.stderr.strip()}")
        text = result.stdout.strip()
        return int(text) if text.lstrip("-").isdigit() else text


@pytest.fixture
def snmp_agent(tmp_path):
    """A running snmpsim PoE switch on loopback, stopped after the test."""
    agent = SNMPAgent(str(tmp_path / "snmpsim")).start()
    yield agent
    agent.stop()
