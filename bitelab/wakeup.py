"""Wake-ups between the hosts of a lab: PostgreSQL ``LISTEN``/``NOTIFY``.

A write that may give another host work (a reservation of one of its
boards to set up, an ending to run, a waiter of its to answer, a board it
waits on that is now done) sends a notice on the lab's channel in the same
transaction (``bitelab.store`` issues the ``pg_notify``): PostgreSQL
delivers it when the transaction commits, and never for one rolled back.

Each host keeps one connection of its own listening on the channel
(``Listener``).  The reactor watches its socket (``addReader``) and reads
it with libpq's non-blocking ``PQconsumeInput``/``PQnotifies``, so no
thread sits waiting on it and stopping is immediate; only connecting, which
may block for the connect timeout, runs in the reactor's thread pool.
Whatever one read brings is merged into one call of ``deliver``, which
runs at most one round of work at a time (``BoardManager.wake``): a burst
of commits is one or two rounds, not one each.

A lost connection (the database restarted, the session was ended) is made
again at once, then after growing pauses; after every connect ``deliver``
hears that anything may have changed, since notices sent while nobody
listened are lost.  TCP keepalives find a connection whose peer went
silent.  The periodic tick stays as the safety net.
"""

import json
import os

from twisted.application import service
from twisted.internet import error, threads
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from bitelab import events
from bitelab.postgres import one_line

#: the channel every host of the lab listens on
CHANNEL = "bitelab_wakeup"
#: kinds of events that may give another host work or end its wait
WAKING = frozenset(
    {
        events.RESERVING,
        events.RESERVED,
        events.RELEASING,
        events.FREED,
        events.MAINTENANCE,
        events.GRANTED,
    }
)
#: PostgreSQL takes payloads shorter than 8000 bytes
MAX_NOTICE = 7900
#: longest pause between two tries to connect again
MAX_RETRY_DELAY = 30.0
#: seconds a connect may take
CONNECT_TIMEOUT = 10


def notice(origin, committed):
    """The payload that tells the other hosts of the ``committed`` events
    of a transaction of host ``origin``, or None if they concern nobody."""
    boards = sorted({e.board for e in committed if e.kind in WAKING and e.board})
    if not boards:
        return None
    granted = any(e.kind == events.GRANTED for e in committed)
    text = json.dumps({"host": origin, "boards": boards, "granted": granted})
    if len(text.encode("utf-8")) > MAX_NOTICE:
        # too many to name: every host looks at all of its work
        text = json.dumps({"host": origin, "boards": None, "granted": granted})
    return text


def read_notice(payload):
    """``(origin, boards, granted)`` of a notice; ``boards`` None means
    anything may have changed (also for a payload that cannot be read)."""
    try:
        data = json.loads(payload)
        boards = data["boards"]
        return (
            str(data["host"]),
            None if boards is None else frozenset(map(str, boards)),
            bool(data["granted"]),
        )
    except (ValueError, KeyError, TypeError):
        return None, None, True


def application_name(host):
    """How the listening session of ``host`` shows in ``pg_stat_activity``."""
    return f"bitelab wakeups {host}"


def _open(url, host):
    """A connection listening on the channel (run in a thread: it blocks)."""
    import psycopg

    conn = psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        application_name=application_name(host),
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )
    try:
        conn.execute(f"LISTEN {CHANNEL}")
    except BaseException:
        conn.close()
        raise
    return conn


class Listener(service.Service):
    """This host's listening connection, see the module docstring.

    ``deliver(boards, granted)`` gets what the other hosts' commits
    announced: the boards they changed (None: anything may have changed),
    and whether they handed a board to a waiter.
    """

    log = Logger()

    def __init__(self, reactor, url, host, deliver):
        self.reactor = reactor
        self.url = url
        self.host = host
        self.deliver = deliver
        #: whether the connection listens now
        self.listening = False
        self._reader = None
        self._retry = None
        self._delay = 0.0

    def startService(self):
        super().startService()
        self._connect()

    def stopService(self):
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._reader is not None:
            self.reactor.removeReader(self._reader)
            self._reader.close()
            self._reader = None
        self.listening = False

    def _connect(self):
        self._retry = None
        d = threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), _open, self.url, self.host
        )
        d.addCallbacks(self._listen, self._failed)

    def _listen(self, conn):
        if not self.running:
            # stopped while connecting
            conn.close()
            return
        self._reader = _Reader(conn, self)
        self.reactor.addReader(self._reader)
        self.listening = True
        if self._delay:
            self.log.info("listening for other hosts' wake-ups again")
        self._delay = 0.0
        # notices sent while nobody listened are lost: look at everything
        self._deliver(None, True)

    def _failed(self, failure):
        if not self.running:
            return
        self.log.warn(
            "cannot listen for other hosts' wake-ups: {error}; trying again in "
            "{delay} s",
            error=one_line(failure.value),
            delay=self._delay,
        )
        self._again()

    def _again(self):
        self._retry = self.reactor.callLater(self._delay, self._connect)
        self._delay = min(max(self._delay * 2, 1.0), MAX_RETRY_DELAY)

    def _lost(self, why):
        self._reader = None
        self.listening = False
        if self.running:
            self.log.warn(
                "lost the connection listening for other hosts' wake-ups "
                "({why}); connecting again",
                why=why,
            )
            self._again()

    def _received(self, payloads):
        """Merge the notices of one read into one delivery."""
        boards, granted = set(), False
        for payload in payloads:
            origin, named, was_granted = read_notice(payload)
            if origin == self.host:
                # this host's own commits: its event bus told it already
                continue
            granted = granted or was_granted
            if boards is not None:
                boards = None if named is None else boards | named
        if boards is None or boards or granted:
            self._deliver(boards, granted)

    def _deliver(self, boards, granted):
        try:
            self.deliver(boards, granted)
        except Exception:  # noqa: BLE001 - the listener must survive its callee
            self.log.failure("waking up for other hosts' work failed")


@implementer(IReadDescriptor)
class _Reader:
    """The listening connection's socket, as the reactor watches it."""

    def __init__(self, conn, listener):
        self.conn = conn
        self.listener = listener
        # a descriptor of our own: libpq closes its socket when the connection
        # fails, and the reactor must never watch a closed (or reused) number
        self.fd = os.dup(conn.pgconn.socket)
        #: why the connection ended (the reactor passes a generic reason)
        self.why = None

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "wakeup"

    def doRead(self):
        import psycopg
        from psycopg import pq

        pgconn = self.conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as e:
            self.why = one_line(e)
            return error.ConnectionLost()
        payloads = []
        while (notify := pgconn.notifies()) is not None:
            payloads.append(notify.extra.decode("utf-8", "replace"))
        if payloads:
            self.listener._received(payloads)
        if pgconn.status != pq.ConnStatus.OK:
            self.why = "the connection broke"
            return error.ConnectionLost()
        return None

    def connectionLost(self, reason):
        self.close()
        self.listener._lost(self.why or one_line(reason.value))

    def close(self):
        """Close the connection and our descriptor of its socket."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.conn.close()
