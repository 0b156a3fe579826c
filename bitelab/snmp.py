"""A small SNMP v2c manager over Twisted UDP, for switching PoE ports.

pysnmp 7's high-level API is asyncio-only, so this module builds and parses
messages with pysnmp's low-level protocol API (``pysnmp.proto.api``) and
pyasn1's BER codec, and does the rest itself: request-id matching, time-outs
and retries on an injected clock, and one request at a time per switch.

Use::

    client = SNMPClient(reactor)
    client.start()
    value = await client.get("poe", 161, "private", "1.3.6.1.2.1.1.3.0")
    ...
    await client.stop()
"""

import collections
import random

from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pysnmp.proto import api
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

_V2C = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]

#: varbind values an agent sends instead of a value it does not have
_EXCEPTION_VALUES = {
    _V2C.NoSuchObject.tagSet: "noSuchObject",
    _V2C.NoSuchInstance.tagSet: "noSuchInstance",
    _V2C.EndOfMibView.tagSet: "endOfMibView",
}

_MAX_REQUEST_ID = 2**31 - 1


class SNMPError(Exception):
    """An SNMP request failed; the message is one line naming host, OID and problem."""


class SNMPTimeout(SNMPError):
    """The agent did not answer any attempt of a request."""


class _Pending:
    """One request waiting for its response."""

    def __init__(self, op, host, addr, community, oid, timeout, attempts):
        self.op = op
        self.host = host
        self.addr = addr
        self.community = community
        self.oid = oid
        self.timeout = timeout
        self.attempts = attempts
        self.attempts_left = attempts
        self.datagram = None
        self.deferred = None
        self.timer = None

    def describe(self):
        """``HOST:PORT`` and the OID, for messages."""
        return f"SNMP {self.op} {self.oid} on {self.host}:{self.addr[1]}"


class SNMPClient(DatagramProtocol):
    """An SNMP v2c manager on one UDP port, shared by every switch.

    ``reactor`` provides UDP and name resolution; ``clock`` (default: the
    reactor) drives time-outs and retries.  ``interface`` is the local
    address to bind ("" for all IPv4 interfaces).

    Requests to the same switch (host and agent port) are serialised, so a
    switch never sees a second request before the first is answered or has
    timed out; requests to different switches run in parallel.
    """

    log = Logger()

    def __init__(self, reactor, clock=None, interface=""):
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._interface = interface
        self._port = None
        self._pending = {}
        self._locks = {}
        self._next_id = random.randint(1, _MAX_REQUEST_ID)
        #: "host:port" -> requests that no attempt got an answer to
        self.timeouts = collections.Counter()

    def start(self):
        """Listen on an ephemeral UDP port; requests call this when needed."""
        if self._port is None:
            self._port = self._reactor.listenUDP(0, self, interface=self._interface)

    def stop(self):
        """Fail the requests in flight and close the UDP port; Deferred."""
        for request_id, pending in list(self._pending.items()):
            self._finish(
                request_id,
                pending,
                SNMPError(f"{pending.describe()}: the SNMP client was stopped"),
            )
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    def get(self, host, port, community, oid, timeout=1.0, retries=2):
        """GET one OID; Deferred firing with its value (int, bytes or str).

        Fails with ``SNMPError`` on time-out, an error status, or a
        noSuchObject/noSuchInstance/endOfMibView answer.
        """
        return self._locked(
            host,
            port,
            lambda addr: self._request(
                "get", host, addr, community, oid, None, timeout, retries
            ),
        )

    def set(self, host, port, community, oid, int_value, timeout=1.0, retries=2):
        """SET one OID to an INTEGER; Deferred firing with the value the agent echoed."""
        return self._locked(
            host,
            port,
            lambda addr: self._request(
                "set", host, addr, community, oid, int_value, timeout, retries
            ),
        )

    def set_verified(
        self, host, port, community, oid, int_value, timeout=1.0, retries=2
    ):
        """SET an INTEGER, then GET it back, with no other request in between.

        Fires with the read-back value; the caller decides whether it is the
        one requested.
        """

        @defer.inlineCallbacks
        def both(addr):
            yield self._request(
                "set", host, addr, community, oid, int_value, timeout, retries
            )
            value = yield self._request(
                "get", host, addr, community, oid, None, timeout, retries
            )
            return value

        return self._locked(host, port, both)

    def _locked(self, host, port, operation):
        """Resolve ``host`` and run ``operation(addr)`` under the switch's lock."""
        key = (host, port)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()

        def run():
            d = self._resolve(host)
            d.addCallback(lambda ip: operation((ip, port)))
            return d

        return lock.run(run)

    def _resolve(self, host):
        if isIPAddress(host):
            return defer.succeed(host)
        d = self._reactor.resolve(host)

        def failed(failure):
            raise SNMPError(
                f"cannot resolve SNMP host {host!r}: {failure.getErrorMessage()}"
            )

        return d.addErrback(failed)

    def _allocate_id(self):
        while True:
            request_id = self._next_id
            self._next_id = request_id % _MAX_REQUEST_ID + 1
            if request_id not in self._pending:
                return request_id

    def _request(self, op, host, addr, community, oid, int_value, timeout, retries):
        self.start()
        oid = str(_V2C.ObjectIdentifier(oid.lstrip(".")))
        request_id = self._allocate_id()
        pdu = _V2C.SetRequestPDU() if op == "set" else _V2C.GetRequestPDU()
        _V2C.apiPDU.set_defaults(pdu)
        _V2C.apiPDU.set_request_id(pdu, request_id)
        value = _V2C.null if int_value is None else _V2C.Integer(int_value)
        _V2C.apiPDU.set_varbinds(pdu, [(oid, value)])
        message = _V2C.Message()
        _V2C.apiMessage.set_defaults(message)
        _V2C.apiMessage.set_community(message, community)
        _V2C.apiMessage.set_pdu(message, pdu)

        pending = _Pending(op, host, addr, community, oid, timeout, retries + 1)
        pending.datagram = encoder.encode(message)
        pending.deferred = defer.Deferred(lambda _: self._cancel(request_id))
        self._pending[request_id] = pending
        self._send(request_id, pending)
        return pending.deferred

    def _send(self, request_id, pending):
        pending.attempts_left -= 1
        pending.timer = self._clock.callLater(
            pending.timeout, self._timed_out, request_id
        )
        try:
            self.transport.write(pending.datagram, pending.addr)
        except OSError as e:
            self._finish(
                request_id,
                pending,
                SNMPError(f"{pending.describe()}: cannot send: {e}"),
            )

    def _timed_out(self, request_id):
        pending = self._pending[request_id]
        pending.timer = None
        if pending.attempts_left > 0:
            self.log.debug("{what}: no answer, retrying", what=pending.describe())
            self._send(request_id, pending)
            return
        self.timeouts[f"{pending.host}:{pending.addr[1]}"] += 1
        self._finish(
            request_id,
            pending,
            SNMPTimeout(
                f"{pending.describe()}: no response after {pending.attempts} "
                f"attempt(s) of {pending.timeout:g} s; check the switch is "
                f"reachable and the community is right"
            ),
        )

    def _cancel(self, request_id):
        pending = self._pending.pop(request_id, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()

    def _finish(self, request_id, pending, result):
        del self._pending[request_id]
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        if isinstance(result, Exception):
            pending.deferred.errback(result)
        else:
            pending.deferred.callback(result)

    def datagramReceived(self, datagram, addr):
        """Match a response to its request; anything unexpected is dropped."""
        try:
            message, _ = decoder.decode(datagram, asn1Spec=_V2C.Message())
            pdu = _V2C.apiMessage.get_pdu(message)
            request_id = int(_V2C.apiPDU.get_request_id(pdu))
        except (PyAsn1Error, ValueError, TypeError) as e:
            self.log.debug(
                "dropping undecodable datagram from {addr}: {e}", addr=addr, e=e
            )
            return
        pending = self._pending.get(request_id)
        if pending is None:
            self.log.debug(
                "dropping response with unknown request id {id} from {addr}",
                id=request_id,
                addr=addr,
            )
            return
        if tuple(addr[:2]) != pending.addr:
            self.log.debug(
                "dropping response for {what} from unexpected address {addr}",
                what=pending.describe(),
                addr=addr,
            )
            return
        if (
            pdu.tagSet != _V2C.ResponsePDU.tagSet
            or bytes(_V2C.apiMessage.get_community(message))
            != pending.community.encode()
        ):
            self.log.debug("dropping non-response from {addr}", addr=addr)
            return
        self._finish(request_id, pending, self._result(pending, pdu))

    def _result(self, pending, pdu):
        """The value of a response PDU, or the ``SNMPError`` it amounts to."""
        status = _V2C.apiPDU.get_error_status(pdu)
        if status:
            return SNMPError(
                f"{pending.describe()}: the agent answered {status.prettyPrint()}"
            )
        varbinds = _V2C.apiPDU.get_varbinds(pdu)
        if len(varbinds) != 1:
            return SNMPError(
                f"{pending.describe()}: expected one value, got {len(varbinds)}"
            )
        oid, value = varbinds[0]
        if str(oid) != pending.oid:
            return SNMPError(f"{pending.describe()}: the agent answered for {oid}")
        problem = _EXCEPTION_VALUES.get(value.tagSet)
        if problem is not None:
            return SNMPError(
                f"{pending.describe()}: the agent answered {problem} "
                "(it has no such port: check group and port in the board file)"
            )
        if isinstance(value, univ.Integer):
            return int(value)
        if isinstance(value, univ.OctetString):
            return bytes(value)
        return value.prettyPrint()
