"""SNMPClient: request matching, retries, time-outs and error mapping.

Most tests drive the client with a fake UDP transport and ``task.Clock``;
the last ones talk to a real snmpsim agent on loopback.
"""

import pytest
import pytest_twisted
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from twisted.internet import defer, error, task

from bitelab.snmp import SNMPClient, SNMPError, SNMPTimeout
from support.snmpagent import SYS_DESCR

V2C = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
OID = "1.3.6.1.2.1.105.1.1.1.3.1.2"
SWITCH = ("10.0.0.5", 161)
OTHER_SWITCH = ("10.0.0.6", 161)


class FakeUDPPort:
    """The transport the client writes to: records datagrams sent."""

    def __init__(self, protocol):
        self.sent = []
        self.listening = True
        self.protocol = protocol

    def write(self, datagram, addr):
        self.sent.append((decode(datagram), addr))

    def stopListening(self):
        self.listening = False
        self.protocol.doStop()


class FakeReactor:
    """``listenUDP`` and ``resolve``, the reactor parts SNMPClient uses."""

    def __init__(self, names=None):
        self.port = None
        self.names = names or {}

    def listenUDP(self, port, protocol, interface=""):
        self.port = FakeUDPPort(protocol)
        protocol.makeConnection(self.port)
        return self.port

    def resolve(self, name):
        if name in self.names:
            return defer.succeed(self.names[name])
        return defer.fail(error.DNSLookupError(name))


def decode(datagram):
    """(community, pdu) of an encoded v2c message."""
    message, _ = decoder.decode(datagram, asn1Spec=V2C.Message())
    return str(V2C.apiMessage.get_community(message)), V2C.apiMessage.get_pdu(message)


def request_id(pdu):
    return int(V2C.apiPDU.get_request_id(pdu))


def response(request_pdu, value, community="private", status=0, oid=None, rid=None):
    """An encoded response to ``request_pdu`` carrying ``value``."""
    pdu = V2C.apiPDU.get_response(request_pdu)
    if rid is not None:
        V2C.apiPDU.set_request_id(pdu, rid)
    V2C.apiPDU.set_error_status(pdu, status)
    request_oid = V2C.apiPDU.get_varbinds(request_pdu)[0][0]
    V2C.apiPDU.set_varbinds(pdu, [(oid or request_oid, value)])
    message = V2C.Message()
    V2C.apiMessage.set_defaults(message)
    V2C.apiMessage.set_community(message, community)
    V2C.apiMessage.set_pdu(message, pdu)
    return encoder.encode(message)


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def fake_reactor():
    return FakeReactor({"poe": "10.0.0.5"})


@pytest.fixture
def client(fake_reactor, clock):
    c = SNMPClient(fake_reactor, clock)
    c.start()
    return c


def answer(client, fake_reactor, index, value, **kwargs):
    """Answer the ``index``-th datagram sent, from the address it went to."""
    (_, pdu), addr = fake_reactor.port.sent[index]
    client.datagramReceived(response(pdu, value, **kwargs), addr)


def fired(d):
    """Whether the Deferred has a result (not merely waiting on another one)."""
    results = []
    d.addBoth(lambda r: results.append(r) or r)
    return bool(results)


def result_of(d):
    """The Deferred's result now (a value or a Failure)."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_get_sends_get_request_and_returns_value(client, fake_reactor):
    """A GET goes out as a v2c GetRequest to the switch and fires with the int answered."""
    d = client.get(*SWITCH, "private", OID)
    [((community, pdu), addr)] = fake_reactor.port.sent
    assert addr == SWITCH
    assert community == "private"
    assert pdu.tagSet == V2C.GetRequestPDU.tagSet
    assert str(V2C.apiPDU.get_varbinds(pdu)[0][0]) == OID
    answer(client, fake_reactor, 0, V2C.Integer(1))
    assert result_of(d) == 1


def test_set_sends_integer(client, fake_reactor):
    """A SET carries the INTEGER value and fires with the value echoed."""
    d = client.set(*SWITCH, "private", OID, 2)
    [((_, pdu), _)] = fake_reactor.port.sent
    assert pdu.tagSet == V2C.SetRequestPDU.tagSet
    assert int(V2C.apiPDU.get_varbinds(pdu)[0][1]) == 2
    answer(client, fake_reactor, 0, V2C.Integer(2))
    assert result_of(d) == 2


def test_unknown_request_id_ignored(client, fake_reactor):
    """A response with another request id does not complete the request."""
    d = client.get(*SWITCH, "private", OID)
    (_, pdu), addr = fake_reactor.port.sent[0]
    client.datagramReceived(
        response(pdu, V2C.Integer(1), rid=request_id(pdu) + 1), addr
    )
    assert not fired(d)
    answer(client, fake_reactor, 0, V2C.Integer(2))
    assert result_of(d) == 2


def test_wrong_source_address_ignored(client, fake_reactor):
    """A response with the right id from another address is dropped."""
    d = client.get(*SWITCH, "private", OID)
    (_, pdu), _ = fake_reactor.port.sent[0]
    client.datagramReceived(response(pdu, V2C.Integer(1)), ("10.0.0.99", 161))
    client.datagramReceived(response(pdu, V2C.Integer(1)), ("10.0.0.5", 1161))
    assert not fired(d)
    answer(client, fake_reactor, 0, V2C.Integer(1))
    assert result_of(d) == 1


def test_garbage_and_wrong_community_ignored(client, fake_reactor):
    """Undecodable datagrams and responses for another community are dropped."""
    d = client.get(*SWITCH, "private", OID)
    client.datagramReceived(b"\x30\x03garbage", SWITCH)
    answer(client, fake_reactor, 0, V2C.Integer(1), community="public")
    assert not fired(d)
    answer(client, fake_reactor, 0, V2C.Integer(1))
    assert result_of(d) == 1


def test_retries_then_timeout(client, fake_reactor, clock):
    """With retries=2 the same request goes out 3 times, one per timeout, then fails."""
    d = client.get(*SWITCH, "private", OID, timeout=1.0, retries=2)
    assert len(fake_reactor.port.sent) == 1
    clock.advance(0.9)
    assert len(fake_reactor.port.sent) == 1
    clock.advance(0.1)
    assert len(fake_reactor.port.sent) == 2
    clock.advance(1.0)
    assert len(fake_reactor.port.sent) == 3
    assert not fired(d)
    clock.advance(1.0)
    failure = result_of(d)
    failure.trap(SNMPTimeout)
    message = failure.getErrorMessage()
    assert "10.0.0.5:161" in message and OID in message and "3 attempt" in message
    ids = {request_id(pdu) for (_, pdu), _ in fake_reactor.port.sent}
    assert len(ids) == 1
    assert len(fake_reactor.port.sent) == 3
    assert clock.getDelayedCalls() == []


def test_answer_to_earlier_attempt_accepted(client, fake_reactor, clock):
    """A late answer after a retry completes the request and stops further retries."""
    d = client.get(*SWITCH, "private", OID, timeout=1.0, retries=2)
    clock.advance(1.0)
    answer(client, fake_reactor, 0, V2C.Integer(2))
    assert result_of(d) == 2
    clock.advance(5)
    assert len(fake_reactor.port.sent) == 2
    assert clock.getDelayedCalls() == []


def test_zero_retries_sends_once(client, fake_reactor, clock):
    """retries=0 means a single attempt."""
    d = client.get(*SWITCH, "private", OID, timeout=0.5, retries=0)
    clock.advance(0.5)
    result_of(d).trap(SNMPTimeout)
    assert len(fake_reactor.port.sent) == 1


@pytest.mark.parametrize(
    "status, name",
    [(7, "wrongType"), (6, "noAccess"), (17, "notWritable"), (5, "genErr")],
)
def test_error_status_mapped(client, fake_reactor, status, name):
    """A non-zero error-status fails with SNMPError naming it, the host and the OID."""
    d = client.set(*SWITCH, "private", OID, 1)
    answer(client, fake_reactor, 0, V2C.Integer(1), status=status)
    failure = result_of(d)
    failure.trap(SNMPError)
    message = failure.getErrorMessage()
    assert name in message and OID in message and "10.0.0.5" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "value, name",
    [
        (V2C.NoSuchInstance(""), "noSuchInstance"),
        (V2C.NoSuchObject(""), "noSuchObject"),
        (V2C.EndOfMibView(""), "endOfMibView"),
    ],
)
def test_exception_values_mapped(client, fake_reactor, value, name):
    """noSuchInstance/noSuchObject/endOfMibView varbinds fail with SNMPError naming them."""
    d = client.get(*SWITCH, "private", OID)
    answer(client, fake_reactor, 0, value)
    failure = result_of(d)
    failure.trap(SNMPError)
    assert name in failure.getErrorMessage()
    assert OID in failure.getErrorMessage()


def test_answer_for_other_oid_is_an_error(client, fake_reactor):
    """A response naming another OID is not taken as the value asked for."""
    d = client.get(*SWITCH, "private", OID)
    answer(client, fake_reactor, 0, V2C.Integer(1), oid="1.3.6.1.2.1.1.3.0")
    result_of(d).trap(SNMPError)


def test_same_switch_serialised(client, fake_reactor):
    """A second request to a switch is only sent once the first is answered."""
    first = client.get(*SWITCH, "private", OID)
    second = client.get(*SWITCH, "private", OID + "0")
    assert len(fake_reactor.port.sent) == 1
    answer(client, fake_reactor, 0, V2C.Integer(1))
    assert result_of(first) == 1
    assert len(fake_reactor.port.sent) == 2
    answer(client, fake_reactor, 1, V2C.Integer(2))
    assert result_of(second) == 2


def test_same_switch_serialised_after_timeout(client, fake_reactor, clock):
    """A request that timed out releases the switch for the next one."""
    first = client.get(*SWITCH, "private", OID, timeout=1.0, retries=0)
    second = client.get(*SWITCH, "private", OID)
    clock.advance(1.0)
    result_of(first).trap(SNMPTimeout)
    assert len(fake_reactor.port.sent) == 2
    answer(client, fake_reactor, 1, V2C.Integer(1))
    assert result_of(second) == 1


def test_different_switches_parallel(client, fake_reactor):
    """Requests to two switches are both on the wire at once, answered in any order."""
    a = client.get(*SWITCH, "private", OID)
    b = client.get(*OTHER_SWITCH, "private", OID)
    assert [addr for _, addr in fake_reactor.port.sent] == [SWITCH, OTHER_SWITCH]
    answer(client, fake_reactor, 1, V2C.Integer(2))
    answer(client, fake_reactor, 0, V2C.Integer(1))
    assert (result_of(a), result_of(b)) == (1, 2)


def test_set_verified_holds_switch_between_set_and_get(client, fake_reactor):
    """set_verified sends SET then GET, and another request waits until both are done."""
    d = client.set_verified(*SWITCH, "private", OID, 1)
    other = client.get(*SWITCH, "private", OID)
    answer(client, fake_reactor, 0, V2C.Integer(1))
    (_, pdu), _ = fake_reactor.port.sent[1]
    assert pdu.tagSet == V2C.GetRequestPDU.tagSet
    assert len(fake_reactor.port.sent) == 2
    answer(client, fake_reactor, 1, V2C.Integer(2))
    assert result_of(d) == 2
    assert len(fake_reactor.port.sent) == 3
    answer(client, fake_reactor, 2, V2C.Integer(2))
    assert result_of(other) == 2


def test_host_name_resolved(client, fake_reactor):
    """A host name is resolved through the reactor and used as the address."""
    d = client.get("poe", 161, "private", OID)
    [(_, addr)] = fake_reactor.port.sent
    assert addr == ("10.0.0.5", 161)
    answer(client, fake_reactor, 0, V2C.Integer(1))
    assert result_of(d) == 1


def test_unresolvable_host(client, fake_reactor):
    """A name that does not resolve fails with SNMPError naming it, and sends nothing."""
    d = client.get("nowhere", 161, "private", OID)
    failure = result_of(d)
    failure.trap(SNMPError)
    assert "nowhere" in failure.getErrorMessage()
    assert fake_reactor.port.sent == []


def test_request_ids_distinct(client, fake_reactor):
    """Concurrent requests carry distinct request ids."""
    for n in range(5):
        client.get(f"10.0.0.{n + 1}", 161, "private", OID)
    ids = {request_id(pdu) for (_, pdu), _ in fake_reactor.port.sent}
    assert len(ids) == 5


def test_cancel_forgets_request(client, fake_reactor, clock):
    """Cancelling a request stops its retries."""
    d = client.get(*SWITCH, "private", OID)
    d.cancel()
    result_of(d).trap(defer.CancelledError)
    clock.advance(10)
    assert len(fake_reactor.port.sent) == 1
    assert clock.getDelayedCalls() == []


def test_stop_fails_pending_and_closes_port(client, fake_reactor, clock):
    """stop() fails requests in flight and stops listening."""
    d = client.get(*SWITCH, "private", OID)
    result_of(client.stop())
    result_of(d).trap(SNMPError)
    assert not fake_reactor.port.listening
    assert clock.getDelayedCalls() == []


@pytest.fixture
def real_client():
    from twisted.internet import reactor

    c = SNMPClient(reactor, interface="127.0.0.1")
    c.start()
    yield c
    pytest_twisted.blockon(c.stop())


@pytest_twisted.ensureDeferred
async def test_real_agent_get(real_client, snmp_agent):
    """Against snmpsim, a GET of sysDescr returns the string in its data file."""
    value = await real_client.get(
        snmp_agent.host, snmp_agent.port, snmp_agent.community, SYS_DESCR
    )
    assert value == b"bitelab test PoE switch"


@pytest_twisted.ensureDeferred
async def test_real_agent_wrong_community_times_out(real_client, snmp_agent):
    """snmpsim ignores an unknown community, so the request times out."""
    with pytest.raises(SNMPTimeout):
        await real_client.get(
            snmp_agent.host,
            snmp_agent.port,
            "public",
            SYS_DESCR,
            timeout=0.2,
            retries=1,
        )
