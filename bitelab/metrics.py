"""Prometheus metrics of one server, in a registry of its own.

``Metrics`` owns a ``prometheus_client.CollectorRegistry`` (never the
global one, so that a process may hold several servers, as tests do) and
fills it three ways:

* from the ``EventBus``: reservations started and ended (by cause), how
  long they lasted, how long setups and endings took;
* from small hooks the parts that do the work call: ``power_operation``
  (``bitelab.boardpower``), ``script_run`` (``bitelab.script``),
  ``http_request`` (``bitelab.site``), the SSH checker wrapped by
  ``counting_checker`` (``bitelab.ssh``) and, for the waiting queue,
  ``queue_changed`` and ``queue_waited``;
* at each scrape, from what the parts count themselves: console bytes and
  viewers (``bitelab.console``), SNMP time-outs by switch
  (``bitelab.snmp``); and, refreshed from the database after every change
  and every ``REFRESH_INTERVAL`` seconds, the boards by class and state.

``MetricsService`` serves the registry at ``/metrics`` on the
``metrics_endpoint`` with ``prometheus_client``'s Twisted resource, which
collects in the reactor's thread pool: everything it reads there is either
a ``prometheus_client`` metric (thread-safe) or a snapshot swapped in whole
by the reactor thread.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.application import service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Site
from zope.interface import implementer

from bitelab import events, rules

#: seconds between two reads of the boards' states when nothing changes
REFRESH_INTERVAL = 15.0

#: how long reservations last: a minute to a week
_HOLD_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)
#: setups, endings, scripts and HTTP calls: milliseconds to minutes
_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: power switching: milliseconds to the slowest command
_POWER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: waiting for a board: seconds to a day
_WAIT_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 86400)

#: what ``KeyOwnerChecker`` says when it refuses, as a label
_REFUSALS = {
    "bad login name": "bad_login_name",
    "unknown login name": "unknown_login_name",
    "bad key": "bad_key",
    "unknown key": "unknown_key",
    "bad signature": "bad_signature",
}


#: seconds between a change and the read of the boards' states it causes
REFRESH_DELAY = 0.25


class Metrics:
    """The metrics of one server; see the module docstring.

    ``clock`` times the steps; ``version`` goes into ``bitelab_build_info``.
    ``class_of(board)`` names a board's class for the labels (boards that
    left the board file keep the class the database knew).
    """

    log = Logger()

    def __init__(self, clock, version):
        self.clock = clock
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        Info("bitelab_build", "The running bitelab.", registry=registry).info(
            {"version": version}
        )
        self.boards = Gauge(
            "bitelab_boards",
            "Boards of the board file (and removed ones still held), by class "
            "and state.",
            ["class", "state"],
            registry=registry,
        )
        self.maintenance_since = Gauge(
            "bitelab_board_maintenance_since_timestamp_seconds",
            "When each board now in maintenance went there (POSIX time).",
            ["board", "class"],
            registry=registry,
        )
        self.started = Counter(
            "bitelab_reservations_started",
            "Reservations recorded.",
            ["class"],
            registry=registry,
        )
        self.ended = Counter(
            "bitelab_reservations_ended",
            "Reservations that started to end, by cause: release, "
            "force_release, expire, setup_failed, interrupted.",
            ["class", "cause"],
            registry=registry,
        )
        self.held = Histogram(
            "bitelab_reservation_duration_seconds",
            "How long reservations lasted, from being recorded to their end.",
            ["class"],
            buckets=_HOLD_BUCKETS,
            registry=registry,
        )
        self.reserve_steps = Histogram(
            "bitelab_reserve_duration_seconds",
            "From a reservation being recorded to its setup's outcome "
            "(reserved or setup_failed).",
            ["class", "outcome"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.release_steps = Histogram(
            "bitelab_release_duration_seconds",
            "From a reservation starting to end to its board being free or in "
            "maintenance.",
            ["class", "outcome"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.scripts = Histogram(
            "bitelab_setup_script_duration_seconds",
            "Runs of the setup script, by action and board class.",
            ["action", "class"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.script_failures = Counter(
            "bitelab_setup_script_failures",
            "Setup script runs that failed (status, time-out, output).",
            ["action", "class"],
            registry=registry,
        )
        self.power_ops = Counter(
            "bitelab_power_operations",
            "Power operations (set: switch and read back; get: read), by "
            "driver and outcome: ok, failed, mismatch (the device read back "
            "another state than the one set).",
            ["driver", "operation", "outcome"],
            registry=registry,
        )
        self.power_time = Histogram(
            "bitelab_power_operation_duration_seconds",
            "Time of power operations, by driver.",
            ["driver", "operation"],
            buckets=_POWER_BUCKETS,
            registry=registry,
        )
        self.http_requests = Counter(
            "bitelab_http_requests",
            "HTTP API requests, by method, route (the API's path pattern) and "
            "status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_time = Histogram(
            "bitelab_http_request_duration_seconds",
            "Time from an HTTP API request's arrival to its answer's end.",
            ["method", "route"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.ssh_logins = Counter(
            "bitelab_ssh_logins",
            "SSH logins accepted, by service: token or console.",
            ["service"],
            registry=registry,
        )
        self.ssh_refusals = Counter(
            "bitelab_ssh_refusals",
            "SSH authentication attempts refused, by reason (each key a "
            "client offers and the lab does not know counts).",
            ["reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "bitelab_queue_depth",
            "Reservations waiting for a board, by class.",
            ["class"],
            registry=registry,
        )
        self.queue_oldest = Gauge(
            "bitelab_queue_oldest_wait_start_timestamp_seconds",
            "When the longest-waiting reservation of each class started to "
            "wait (POSIX time; absent while none waits).",
            ["class"],
            registry=registry,
        )
        self.queue_waits = Histogram(
            "bitelab_queue_wait_seconds",
            "How long reservations waited, by class and outcome (granted, "
            "timeout, cancelled).",
            ["class", "outcome"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.reloads = Counter(
            "bitelab_board_file_reloads",
            "Reloads of the board file (SIGHUP), by outcome: ok or failed.",
            ["outcome"],
            registry=registry,
        )
        self._sources = _Sources()
        registry.register(self._sources)
        self.class_of = lambda board: "unknown"
        #: reservation id -> when it was recorded (for its duration)
        self._recorded = {}
        #: reservation id -> when its setup started
        self._setting_up = {}
        #: reservation id -> when its ending started
        self._ending = {}
        self._board_series = set()
        self._maintenance_series = set()

    # -- hooks ------------------------------------------------------------

    def power_operation(self, driver, operation, seconds, outcome):
        """A power ``operation`` (``set``/``get``) of ``driver`` took
        ``seconds`` and ended ``ok``, ``failed`` or ``mismatch``."""
        self.power_ops.labels(driver, operation, outcome).inc()
        self.power_time.labels(driver, operation).observe(seconds)

    def script_run(self, action, brdclass, seconds, ok):
        """The setup script ran ``action`` for a board of ``brdclass``."""
        self.scripts.labels(action, brdclass).observe(seconds)
        if not ok:
            self.script_failures.labels(action, brdclass).inc()

    def http_request(self, method, route, status, seconds):
        """An HTTP API request was answered."""
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_time.labels(method, route).observe(seconds)

    def queue_changed(self, brdclass, depth, oldest_since=None):
        """The waiting queue of ``brdclass`` now holds ``depth`` reservations,
        the longest waiting since ``oldest_since`` (POSIX time; None when
        empty).  The queue calls this after every change of a class's queue.
        """
        self.queue_depth.labels(brdclass).set(depth)
        if oldest_since is None:
            try:
                self.queue_oldest.remove(brdclass)
            except KeyError:
                pass
        else:
            self.queue_oldest.labels(brdclass).set(oldest_since)

    def queue_waited(self, brdclass, seconds, outcome):
        """A reservation of ``brdclass`` stopped waiting after ``seconds``:
        ``granted``, ``timeout`` or ``cancelled``.  Called by the queue."""
        self.queue_waits.labels(brdclass, outcome).observe(seconds)

    def board_file_reloaded(self, ok):
        """The board file was reloaded (``ok``) or the reload was refused."""
        self.reloads.labels("ok" if ok else "failed").inc()

    def counting_checker(self, checker):
        """``checker`` (an ``ICredentialsChecker`` giving ``ssh.Identity``),
        counting the logins it accepts and the attempts it refuses."""
        return _CountingChecker(checker, self)

    def watch(self, consoles, snmp):
        """Export the counts ``consoles`` (board -> ``ConsoleService``, read
        at each scrape) and ``snmp`` (an ``SNMPClient``) keep."""
        self._sources.consoles = consoles
        self._sources.snmp = snmp

    # -- events -----------------------------------------------------------

    def on_event(self, event):
        """``EventBus`` subscriber: the reservation metrics."""
        rid, at = event.reservation, event.at
        if rid is None or event.board is None:
            return
        brdclass = self.class_of(event.board)
        if event.kind == events.RESERVING:
            self.started.labels(brdclass).inc()
            self._recorded[rid] = self._setting_up[rid] = at
        elif event.kind == events.RESERVED:
            began = self._setting_up.pop(rid, None)
            if began is None:
                # nothing to set up: recorded and usable in one step
                self.started.labels(brdclass).inc()
                self._recorded[rid] = at
            else:
                self.reserve_steps.labels(brdclass, "reserved").observe(at - began)
        elif event.kind == events.SETUP_FAILED:
            began = self._setting_up.pop(rid, None)
            if began is not None:
                self.reserve_steps.labels(brdclass, "setup_failed").observe(at - began)
        elif event.kind == events.RELEASING:
            self._setting_up.pop(rid, None)
            cause = event.detail.split(":", 1)[0]
            self.ended.labels(brdclass, cause).inc()
            self._ending[rid] = at
            recorded = self._recorded.pop(rid, None)
            if recorded is not None:
                self.held.labels(brdclass).observe(at - recorded)
        elif event.kind in (events.FREED, events.MAINTENANCE):
            began = self._ending.pop(rid, None)
            if began is not None:
                outcome = rules.FREE if event.kind == events.FREED else event.kind
                self.release_steps.labels(brdclass, outcome).observe(at - began)

    def resume(self, reservations):
        """At start: ``reservations`` (id -> when recorded) already under way,
        so that their durations are known when they end."""
        for rid, recorded in reservations.items():
            self._recorded.setdefault(rid, recorded)

    # -- boards -----------------------------------------------------------

    def set_boards(self, counts, maintenance):
        """The boards' states as just read: ``counts`` maps (class, state) to
        a number, ``maintenance`` is (board, class, since) of each board in
        maintenance.  Every state of every class is exported, 0 included."""
        classes = {brdclass for brdclass, _ in counts}
        series = {(c, s) for c in classes for s in rules.STATES}
        for labels in series:
            self.boards.labels(*labels).set(counts.get(labels, 0))
        for labels in self._board_series - series:
            self.boards.remove(*labels)
        self._board_series = series
        now_in = set()
        for board, brdclass, since in maintenance:
            now_in.add((board, brdclass))
            if since is not None:
                self.maintenance_since.labels(board, brdclass).set(since)
        for labels in self._maintenance_series - now_in:
            self.maintenance_since.remove(*labels)
        self._maintenance_series = now_in


class _Sources:
    """A collector of what other parts count: consoles and SNMP time-outs."""

    def __init__(self):
        self.consoles = {}
        self.snmp = None

    def describe(self):
        return []

    def collect(self):
        received = CounterMetricFamily(
            "bitelab_console_bytes",
            "Bytes through serial consoles: from_board (printed by the board) "
            "and to_board (typed by viewers).",
            labels=["board", "direction"],
        )
        viewers = GaugeMetricFamily(
            "bitelab_console_viewers",
            "Console sessions attached (SSH and HTTP).",
            labels=["board"],
        )
        connected = GaugeMetricFamily(
            "bitelab_console_connected",
            "Whether the board's serial device is open (1) or not (0).",
            labels=["board"],
        )
        for board, console in sorted(self.consoles.items()):
            received.add_metric([board, "from_board"], console.bytes_received)
            received.add_metric([board, "to_board"], console.bytes_sent)
            viewers.add_metric([board], len(console.hub))
            connected.add_metric([board], 1 if console.connected else 0)
        timeouts = CounterMetricFamily(
            "bitelab_snmp_timeouts",
            "SNMP requests that no attempt got an answer to, by switch " "(host:port).",
            labels=["switch"],
        )
        if self.snmp is not None:
            for switch, count in sorted(dict(self.snmp.timeouts).items()):
                timeouts.add_metric([switch], count)
        return [received, viewers, connected, timeouts]


@implementer(ICredentialsChecker)
class _CountingChecker:
    """An SSH credentials checker counting what the one inside decides."""

    def __init__(self, inner, metrics):
        self.inner = inner
        self.metrics = metrics
        self.credentialInterfaces = inner.credentialInterfaces

    def requestAvatarId(self, credentials):
        d = defer.maybeDeferred(self.inner.requestAvatarId, credentials)
        d.addCallbacks(self._accepted, self._refused)
        return d

    def _accepted(self, identity):
        from bitelab.ssh import LAB_LOGIN

        service = "token" if identity.service == LAB_LOGIN else "console"
        self.metrics.ssh_logins.labels(service).inc()
        return identity

    def _refused(self, failure):
        if failure.check(UnauthorizedLogin):
            reason = _REFUSALS.get(failure.getErrorMessage(), "other")
            self.metrics.ssh_refusals.labels(reason).inc()
        return failure


class MetricsService(service.Service):
    """Keeps the boards' metrics fresh; serves ``/metrics`` on ``endpoint``.

    The boards' states are read again after each committed change (one read
    for a burst of them) and every ``interval`` seconds, which also catches
    changes made by other processes (``bitelab-admin``).
    """

    log = Logger()

    def __init__(self, metrics, store, bus, clock, interval=REFRESH_INTERVAL):
        self.metrics = metrics
        self.store = store
        self.bus = bus
        self.clock = clock
        self.interval = interval
        self._loop = None
        self._reading = None
        self._again = False
        self._soon = None

    def startService(self):
        super().startService()
        self.bus.subscribe(self.metrics.on_event)
        self.bus.subscribe(self._changed)
        # reservations under way since before a restart: their durations
        self.store.boards().addCallbacks(
            lambda rows: self.metrics.resume(
                {
                    row["reservation_id"]: row["reserved_at"]
                    for row in rows
                    if row["reservation_id"] is not None
                }
            ),
            lambda f: self.log.warn(
                "cannot read the reservations under way: {error}",
                error=f.getErrorMessage(),
            ),
        )
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        self.bus.unsubscribe(self.metrics.on_event)
        self.bus.unsubscribe(self._changed)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        return super().stopService()

    def _changed(self, event):
        # one read for a burst of changes, not one per change
        if self._soon is None or not self._soon.active():
            self._soon = self.clock.callLater(REFRESH_DELAY, self.refresh)

    def refresh(self):
        """Read the boards' states now (or once the read under way is done)."""
        if self._reading is not None:
            self._again = True
            return self._reading
        self._reading = d = self.store.board_summary()
        d.addCallback(lambda summary: self.metrics.set_boards(*summary))
        d.addErrback(
            lambda f: self.log.warn(
                "cannot read the boards for the metrics: {error}",
                error=f.getErrorMessage(),
            )
        )

        def done(_):
            self._reading = None
            if self._again and self.running:
                self._again = False
                self.refresh()

        d.addBoth(done)
        return d


class _ScrapeSite(Site):
    """The metrics endpoint's site: a scrape every few seconds is not worth
    a line in the server's log each."""

    noisy = False

    def log(self, request):
        pass


def metrics_site(registry):
    """The site of the metrics endpoint: ``registry`` at ``/metrics``, only.

    ``prometheus_client``'s resource collects in the reactor's thread pool.
    """
    # imported here: it imports the global reactor
    from prometheus_client.twisted import MetricsResource

    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"", NoResource("the metrics are at /metrics"))
    return _ScrapeSite(root)
