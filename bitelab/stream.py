"""``GET /api/v1/events/stream``: the lab's changes as server-sent events.

Each stream gets the committed events (``bitelab.events``) it may see: a
user those of the reservations and queue places they hold, admins
everything; plus notices addressed to its user (queue positions).  A
stream opened for the whole lab (``?lab=1``, what the web UI's lab view
uses) also gets every other change of a board or of the queue, reduced
to its kind, board and time: no more than ``GET /boards`` and ``GET
/queue`` show anyone.  A comment line every ``KEEPALIVE`` seconds keeps proxies from closing an idle
stream.  A client that stops reading is dropped once ``MAX_BACKLOG`` bytes
are waiting for it, so a slow reader costs bounded memory.
"""

import json

from twisted.internet import task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from bitelab.views import iso

KEEPALIVE = 15.0
MAX_BACKLOG = 256 * 1024


def event_data(event):
    """The JSON object of one committed event."""
    data = {
        "id": event.id,
        "kind": event.kind,
        "board": event.board,
        "reservation": event.reservation,
        "waiter": event.waiter,
        "user": event.user,
        "holder": event.holder,
        "detail": event.detail,
        "time": iso(event.at),
    }
    if event.ticket is not None:
        data["ticket"] = event.ticket
    if event.kind == "left":
        data["why"] = event.detail
    if event.kind == "expiring":
        data["seconds_left"] = int(event.detail)
    if event.kind == "queued":
        data["target"] = event.detail.split(":", 1)[0].removeprefix("waits for ")
    return data


def lab_data(event):
    """What a stream of the whole lab shows of an event it may not see."""
    return {"kind": event.kind, "board": event.board, "time": iso(event.at)}


def frame(kind, data):
    """One server-sent event."""
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


@implementer(IPushProducer)
class _Client:
    """One open stream: its request, whose events it gets, and its backlog."""

    def __init__(self, streams, request, user, admin, lab=False):
        self.streams = streams
        self.request = request
        self.user = user
        self.admin = admin
        self.lab = lab
        self.paused = False
        self.queue = []
        self.queued = 0
        request.registerProducer(self, True)

    def sees(self, event):
        return self.admin or self.user in (event.holder, event.user)

    def send(self, data):
        if self.paused:
            self.queue.append(data)
            self.queued += len(data)
            if self.queued > MAX_BACKLOG:
                self.streams.drop(self)
            return
        self.request.write(data)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.queue and not self.paused:
            data = self.queue.pop(0)
            self.queued -= len(data)
            self.request.write(data)

    def stopProducing(self):
        self.streams.forget(self)


class EventStreams:
    """The open event streams; subscribe ``publish`` to the ``EventBus``."""

    log = Logger()

    def __init__(self, clock):
        self.clock = clock
        self.clients = set()
        self._keepalive = task.LoopingCall(self._ping)
        self._keepalive.clock = clock

    def start(self):
        """Start the keep-alive comments."""
        self._keepalive.start(KEEPALIVE, now=False)

    def stop(self):
        """Stop the keep-alives and end every stream."""
        if self._keepalive.running:
            self._keepalive.stop()
        for client in list(self.clients):
            self.drop(client)

    def open(self, request, user, admin, lab=False):
        """Start streaming to ``request``; a Deferred firing when it ends.

        With ``lab``, the changes the user may not see come too, reduced
        (see the module docstring).
        """
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        client = _Client(self, request, user, admin, lab)
        self.clients.add(client)
        request.write(b": bitelab events\n\n")
        done = request.notifyFinish()
        done.addBoth(lambda _: self.forget(client))
        return done

    def forget(self, client):
        """The stream ended: stop sending to it."""
        self.clients.discard(client)

    def drop(self, client):
        """End a stream whose client does not keep up."""
        self.clients.discard(client)
        self.log.info("dropping the event stream of {user}: too slow", user=client.user)
        if client.request.channel is not None:
            client.request.channel.transport.abortConnection()

    def publish(self, event):
        """``EventBus`` subscriber: send ``event`` to the streams that see it."""
        if not self.clients:
            return
        data = frame(event.kind, event_data(event))
        reduced = None
        for client in list(self.clients):
            if client.sees(event):
                client.send(data)
            elif client.lab and (event.board is not None or event.waiter is not None):
                if reduced is None:
                    reduced = frame(event.kind, lab_data(event))
                client.send(reduced)

    def notify(self, kind, data, user):
        """Send a notice to ``user``'s streams (and admins')."""
        encoded = frame(kind, data)
        for client in list(self.clients):
            if client.admin or client.user == user:
                client.send(encoded)

    def _ping(self):
        for client in list(self.clients):
            client.send(b": keep-alive\n\n")
