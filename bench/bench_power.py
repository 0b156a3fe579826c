"""Benchmark verified PoE power changes against real snmpsim agents.

Starts 4 snmpsim agents on loopback (4 "switches", 25 ports each), then
measures with ``bitelab.power.SNMPPower`` over one ``SNMPClient``:

- one verified change (SET, then GET read-back): median and p99 over
  ``--changes`` changes, alternating on and off;
- 100 boards switched off at once across the 4 switches: wall time;
- for comparison, a bare GET round trip and our client's own CPU cost per
  request (encode + decode), to show where the time goes.

Targets: one verified change < 5 ms, 100 boards < 1 s.

Run: ``python bench/bench_power.py [--changes N]``
"""

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from twisted.internet import defer, task

from bitelab.options import Runtime
from bitelab.power import SNMPPower
from bitelab.snmp import SNMPClient
from tests.support.snmpagent import SYS_DESCR, SNMPAgent

SWITCHES = 4
PORTS = 25


def percentile(values, fraction):
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def raw_get_round_trip(agent, rounds):
    """Round trips of a pre-encoded GET on a blocking socket: the agent's own floor."""
    v2c = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    pdu = v2c.GetRequestPDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_varbinds(pdu, [(SYS_DESCR, v2c.null)])
    message = v2c.Message()
    v2c.apiMessage.set_defaults(message)
    v2c.apiMessage.set_community(message, agent.community)
    v2c.apiMessage.set_pdu(message, pdu)
    datagram = encoder.encode(message)
    times = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(rounds):
            started = time.perf_counter()
            s.sendto(datagram, (agent.host, agent.port))
            s.recvfrom(65536)
            times.append(time.perf_counter() - started)
    return times


def codec_cost(rounds=2000):
    """Seconds of CPU our client spends encoding a request and decoding an answer."""
    v2c = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    pdu = v2c.GetRequestPDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_varbinds(pdu, [("1.3.6.1.2.1.105.1.1.1.3.1.1", v2c.Integer(1))])
    message = v2c.Message()
    v2c.apiMessage.set_defaults(message)
    v2c.apiMessage.set_community(message, "private")
    v2c.apiMessage.set_pdu(message, pdu)
    started = time.process_time()
    for _ in range(rounds):
        decoder.decode(encoder.encode(message), asn1Spec=v2c.Message())
    return (time.process_time() - started) / rounds


async def run(reactor, agents, changes):
    client = SNMPClient(reactor, interface="127.0.0.1")
    client.start()
    runtime = Runtime(reactor=reactor, snmp=client)

    def option(agent, port):
        return SNMPPower(
            host=agent.host,
            port=port,
            community=agent.community,
            snmp_port=agent.port,
            timeout=1.0,
            retries=0,
        )

    try:
        board = option(agents[0], 1)
        for n in range(10):
            await board.set_power(runtime, n % 2 == 0)
        durations = []
        for n in range(changes):
            started = time.perf_counter()
            await board.set_power(runtime, n % 2 == 0)
            durations.append(time.perf_counter() - started)

        gets = []
        for _ in range(changes):
            started = time.perf_counter()
            await client.get(agents[0].host, agents[0].port, "private", SYS_DESCR)
            gets.append(time.perf_counter() - started)

        boards = [option(a, p) for a in agents for p in range(1, PORTS + 1)]
        await defer.gatherResults([b.set_power(runtime, True) for b in boards])
        started = time.perf_counter()
        states = await defer.gatherResults(
            [b.set_power(runtime, False) for b in boards]
        )
        all_off = time.perf_counter() - started
    finally:
        await client.stop()
    # net-snmp's view, independent of bitelab
    checked = [a.get(1, p) for a in agents for p in range(1, PORTS + 1)]

    ms = 1000
    print(f"switches: {SWITCHES} snmpsim agents x {PORTS} ports, loopback")
    print(
        f"one verified change (SET + GET read-back), {changes} changes: "
        f"median {statistics.median(durations) * ms:.2f} ms, "
        f"p99 {percentile(durations, 0.99) * ms:.2f} ms, "
        f"max {max(durations) * ms:.2f} ms (target < 5 ms)"
    )
    print(
        f"bare GET round trip: median {statistics.median(gets) * ms:.2f} ms, "
        f"p99 {percentile(gets, 0.99) * ms:.2f} ms"
    )
    raw = raw_get_round_trip(agents[1], changes)
    print(
        f"same GET on a plain blocking socket (agent alone): "
        f"median {statistics.median(raw) * ms:.2f} ms, "
        f"p99 {percentile(raw, 0.99) * ms:.2f} ms"
    )
    print(f"client encode+decode CPU per request: {codec_cost() * ms:.3f} ms")
    print(
        f"{len(boards)} boards off at once across {SWITCHES} switches: "
        f"{all_off * ms:.1f} ms wall (target < 1000 ms); "
        f"reported off: {states.count(False)}, snmpget sees off: {checked.count(2)}"
    )


def main():
    """Start the agents, run the benchmark, stop the agents."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-power-") as workdir:
        agents = []
        try:
            for n in range(SWITCHES):
                agent = SNMPAgent(f"{workdir}/switch{n}", ports=range(1, PORTS + 1))
                agents.append(agent.start())
            task.react(
                lambda reactor: defer.ensureDeferred(run(reactor, agents, args.changes))
            )
        finally:
            for agent in agents:
                agent.stop()


if __name__ == "__main__":
    main()
