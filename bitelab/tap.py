"""``twistd bitelab``: options and the service tree.

``Options.postOptions`` loads ``.env`` and the board file into frozen attrs
objects; a problem is one line on standard error and exit status 1 (twistd
would otherwise print its whole usage text before the message).  It also
has twistd write its log file readable by the server's user only.
"""

import os
import signal
import sqlite3
import sys
from typing import ClassVar

from twisted.application import service, strports
from twisted.python import usage

from bitelab.errors import ConfigError


class Options(usage.Options):
    """Command line of ``twistd bitelab``."""

    optParameters: ClassVar[list] = [
        ["config", "c", ".env", "path of the .env configuration file"],
    ]

    def postOptions(self):
        from bitelab.config import check_lab, load_boards, load_config
        from bitelab.logs import for_twistd

        try:
            self["settings"] = load_config(self["config"])
            self["lab"] = load_boards(self["settings"].board_conf, option_map())
            check_lab(self["settings"], self["lab"])
        except ConfigError as e:
            _fail(e)
        # twistd's own options say where its log goes
        self["server_log"] = for_twistd(
            getattr(self, "parent", None), self["settings"].log_level
        )


def option_map():
    """``cls`` in the board file -> option class."""
    from bitelab.options import EtherIface, SerialConsole, Timeout
    from bitelab.power import POWER_OPTIONS

    return {
        **{c.cls_name: c for c in (EtherIface, SerialConsole, Timeout)},
        **POWER_OPTIONS,
    }


def _fail(message):
    """Stop start-up with one line on standard error (twistd may have
    redirected ``sys.stderr`` into its log by now) and exit status 1."""
    sys.__stderr__.write(f"bitelab: {message}\n")
    sys.__stderr__.flush()
    raise SystemExit(1)


class LabService(service.MultiService):
    """The server's top service: a port that cannot be opened is one line.

    With a ``server_log`` (``bitelab.logs.ServerLog``), it becomes the log
    observer of the twistd application the service is put in.
    """

    server_log = None

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        if self.server_log is not None:
            from twisted.logger import ILogObserver

            # twistd asks its application for this before it starts logging
            parent.setComponent(ILogObserver, self.server_log.observer())

    def privilegedStartService(self):
        from twisted.internet.error import CannotListenError

        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or e.socketError
            _fail(f"cannot listen on {e.interface or '*'}:{e.port}: {reason}")
        except OSError as e:
            _fail(f"cannot start: {e.strerror or e}")
        except (IndexError, KeyError):
            _fail(
                "cannot listen: a systemd: endpoint names a socket systemd did "
                "not pass (start the server through its .socket unit)"
            )


class LockService(service.Service):
    """Holds the database's lock (``bitelab.backup.ServerLock``) while the
    server runs; it was taken before anything touched the database."""

    def __init__(self, lock):
        self.lock = lock

    def startService(self):
        super().startService()
        # twistd may have forked into a daemon since the lock was taken
        self.lock.mark()

    def stopService(self):
        super().stopService()
        self.lock.release()


class PoolService(service.Service):
    """Closes the database pools when the server stops."""

    def __init__(self, *pools):
        self.pools = pools

    def stopService(self):
        super().stopService()
        for pool in self.pools:
            pool.close()


class StreamsService(service.Service):
    """Keeps the event streams alive, and ends them when the server stops."""

    def __init__(self, streams):
        self.streams = streams

    def startService(self):
        super().startService()
        self.streams.start()

    def stopService(self):
        super().stopService()
        self.streams.stop()


class SNMPService(service.Service):
    """Owns the shared SNMP client's UDP port."""

    def __init__(self, client):
        self.client = client

    def startService(self):
        super().startService()
        self.client.start()

    def stopService(self):
        super().stopService()
        return self.client.stop()


def sync_database(settings, lab, now):
    """Check the database, create or upgrade its schema and sync the boards,
    before serving; a damaged or unusable database is a ``ConfigError``.

    Returns the reservation id of every board being set up or reserved.
    """
    from bitelab import db
    from bitelab.store import sync_boards
    from bitelab.views import board_facts

    if settings.db_url:
        return _sync_postgresql(settings, lab, now)
    conn = db.connect(settings.db_file)
    try:
        damage = database_damage(conn)
        if damage is not None:
            raise ConfigError(
                f"{settings.db_file}: the database is damaged ({damage}); "
                "restore it from a backup or move it away to start afresh"
            )
        cursor = conn.cursor()
        try:
            held = sync_boards(
                cursor,
                lab,
                now,
                settings.host_name,
                settings.host_url,
                board_facts(lab, settings),
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{settings.db_file}: cannot use the database: {e}") from None
    finally:
        conn.close()
    return held


def _sync_postgresql(settings, lab, now):
    import psycopg

    from bitelab import db, postgres
    from bitelab.store import sync_boards
    from bitelab.views import board_facts

    conn = db.open_database(settings)
    try:
        held = sync_boards(
            conn.cursor(),
            lab,
            now,
            settings.host_name,
            settings.host_url,
            board_facts(lab, settings),
        )
        conn.commit()
    except psycopg.Error as e:
        conn.rollback()
        raise ConfigError(
            f"{postgres.redact(settings.db_url)}: cannot use the database: "
            f"{postgres.one_line(e)}"
        ) from None
    finally:
        conn.close()
    return held


def database_damage(conn):
    """What SQLite finds wrong with the database of ``conn`` (one line), or
    None if nothing."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError:
        raise  # locked, full: not damage
    except sqlite3.DatabaseError as e:
        return str(e)
    return None if rows == [("ok",)] else rows[0][0]


def make_lab_service(settings, lab, reactor, server_log=None):
    """The whole server as a ``MultiService``; ``.manager`` etc. for tests."""
    import gpiod

    import bitelab
    from bitelab import db
    from bitelab.api import API
    from bitelab.backup import ServerLock
    from bitelab.boardpower import BoardPower
    from bitelab.console import ConsoleService
    from bitelab.events import EventBus
    from bitelab.httpserver import LimitedHTTPFactory
    from bitelab.lifecycle import BoardManager
    from bitelab.limits import files_needed, raise_file_limit
    from bitelab.metrics import Metrics, MetricsService, metrics_site
    from bitelab.options import Runtime, SerialConsole
    from bitelab.reload import BoardReloader, run_all
    from bitelab.retention import RetentionService
    from bitelab.script import ScriptRunner
    from bitelab.site import LabSite
    from bitelab.snmp import SNMPClient
    from bitelab.ssh import SSHService, host_key_facts
    from bitelab.store import Store
    from bitelab.stream import EventStreams
    from bitelab.tokens import TokenStore
    from bitelab.web import WebService

    problem = raise_file_limit(files_needed(settings))
    if problem is not None:
        raise ConfigError(problem)
    top = LabService()
    host_key = check_host_key(settings.ssh_host_key)
    os.makedirs(settings.ssh_keys_dir, exist_ok=True)
    if settings.db_file:
        # before anything touches the database: no restore may run meanwhile
        lock = ServerLock(settings.db_file, "a running bitelab server")
        lock.acquire()
        LockService(lock).setServiceParent(top)
    held = sync_database(settings, lab, reactor.seconds())
    writer, reader, wrap, path = db.make_pools(settings)
    PoolService(writer, reader).setServiceParent(top)
    bus = EventBus()
    store = Store(writer, reader, bus, reactor, path, wrap)
    metrics = Metrics(reactor, bitelab.__version__)

    snmp = SNMPClient(reactor)
    SNMPService(snmp).setServiceParent(top)
    runtime = Runtime(reactor=reactor, snmp=snmp, gpio=gpiod)

    def make_console(name, option):
        return ConsoleService(
            reactor,
            name,
            option.val,
            option.baud,
            settings.console_log_dir,
            max_log_bytes=settings.console_log_max_bytes,
            backups=settings.console_log_backups,
        )

    consoles = {}
    for name, board in lab.boards.items():
        option = board.option(SerialConsole)
        if option is not None:
            console = make_console(name, option)
            console.setServiceParent(top)
            consoles[name] = console

    scripts = ScriptRunner(
        reactor, lab.setup_script, settings.setup_script_timeout, metrics=metrics
    )
    power = BoardPower(
        reactor, lab, runtime, store, settings.power_cycle_pause, metrics=metrics
    )
    manager = BoardManager(reactor, settings, lab, store, power, scripts, consoles)
    manager.resume_consoles(held)
    manager.setServiceParent(top)
    if settings.db_url and settings.host_name:
        from bitelab.wakeup import Listener

        # commits wake the other hosts, and this host hears theirs
        store.wakes_from = settings.host_name
        Listener(
            reactor, settings.db_url, settings.host_name, manager.wake
        ).setServiceParent(top)
    tokens = TokenStore(store, reactor)

    def class_of(name):
        board = manager.lab.boards.get(name)
        return board.brdclass if board is not None else "removed"

    metrics.class_of = class_of
    metrics.watch(consoles, snmp)
    MetricsService(metrics, store, bus, reactor).setServiceParent(top)
    if settings.metrics_endpoint:
        listening(
            "metrics_endpoint",
            settings.metrics_endpoint,
            metrics_site(metrics.registry),
        ).setServiceParent(top)
    if settings.audit_retention_days:
        RetentionService(
            store, reactor, settings.audit_retention_days
        ).setServiceParent(top)

    ssh = SSHService(
        reactor,
        settings.ssh_endpoint,
        settings.ssh_host_key,
        settings.ssh_keys_dir,
        SSHLab(manager, tokens),
        limits=ssh_limits(settings),
        metrics=metrics,
    )
    ssh.setServiceParent(top)

    streams = EventStreams(reactor)
    store.bus.subscribe(streams.publish)
    manager.room.notify = streams.notify
    manager.room.metrics = metrics
    StreamsService(streams).setServiceParent(top)
    api = API(
        manager,
        tokens,
        reactor,
        ssh_port=lambda: _port_number(ssh.port),
        host_key=host_key_facts(host_key),
        streams=streams,
        max_followers=settings.console_max_followers,
    )
    if settings.host_name:
        from bitelab.forward import http_client, trust_root

        trust = trust_root(settings.host_cacert)
        forwarding(
            settings,
            store,
            manager,
            api,
            http_client(reactor, trust),
            lambda: _port_number(ssh.port),
            host_key_facts(host_key)["ssh_host_key"],
            reactor,
            trust,
        )
    web = WebService(api, manager, tokens, reactor, settings.console_max_followers)
    web.setServiceParent(top)
    site = LabSite(
        web.root,
        tokens.authenticate,
        reactor,
        settings.http_access_log,
        settings.http_access_log_max_bytes,
        settings.http_access_log_backups,
        metrics,
    )
    site.web_sessions = web.sessions
    if api.hosts is not None:
        site.authenticate_host = api.hosts.verify
    http = LimitedHTTPFactory(site, settings.http_max_connections)
    listening("http_endpoint", settings.http_endpoint, http).setServiceParent(top)
    reloader = BoardReloader(
        settings,
        option_map(),
        manager,
        power,
        scripts,
        store,
        top,
        make_console,
        metrics,
    )
    hangup = [site.reopen_log, ssh.reload, reloader.reload]
    if server_log is not None:
        hangup.insert(0, server_log.reopen)
    reactor.addSystemEventTrigger(
        "after", "startup", _install_sighup, reactor, lambda: run_all(hangup)
    )
    if server_log is not None:
        # as twistd's own log does: SIGUSR1 rotates it
        reactor.addSystemEventTrigger(
            "after", "startup", _install_sigusr1, reactor, server_log.rotate
        )
    top.server_log = server_log
    top.manager, top.tokens, top.ssh, top.api = manager, tokens, ssh, api
    top.store, top.metrics, top.site, top.reloader = store, metrics, site, reloader
    top.http = http
    return top


def forwarding(
    settings, store, manager, api, http, ssh_port, ssh_host_key, clock, trust=None
):
    """Hosts of one lab forward hardware work to the board's own host
    (``bitelab.forward``) with the treq-like client ``http``; the heartbeat
    tells the others how to reach this one: its key's hash, ``ssh_port()``
    and the public ``ssh_host_key``."""
    from bitelab.forward import Forwarder, HostAuthority, HostKey

    key = HostKey(settings.host_name)
    manager.host_facts = lambda: (key.hash, ssh_port(), ssh_host_key)
    api.hosts = HostAuthority(store, clock, settings.host_timeout)
    api.forwarder = manager.forwarder = Forwarder(
        store, key, http, clock, settings.host_timeout, trust
    )


def ssh_limits(settings):
    """The ``SSHLimits`` of ``settings``."""
    from bitelab.ssh import SSHLimits

    return SSHLimits(
        login_grace_time=settings.ssh_login_grace_time,
        max_unauthenticated=settings.ssh_max_unauthenticated,
        max_unauthenticated_per_source=settings.ssh_max_unauthenticated_per_source,
        max_auth_tries=settings.ssh_max_auth_tries,
    )


def listening(key, description, factory):
    """The service listening on endpoint ``description`` (setting ``key``)."""
    try:
        return strports.service(description, factory)
    except (IndexError, KeyError):
        raise ConfigError(
            f"{key}: {description}: systemd passed no such socket; start the "
            "server through its .socket unit, or listen on tcp:PORT"
        ) from None


def check_host_key(path):
    """The SSH host key, created if missing; a broken one is a ConfigError."""
    from twisted.conch.ssh.keys import BadKeyError

    from bitelab.ssh import load_or_create_host_key

    try:
        return load_or_create_host_key(path)
    except (BadKeyError, ValueError, OSError) as e:
        problem = getattr(e, "strerror", None) or e
        raise ConfigError(f"ssh_host_key {path}: {problem}") from None


def _port_number(port):
    return port.getHost().port if port is not None else None


def _install_sighup(reactor, reload):
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))


def _install_sigusr1(reactor, rotate):
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(rotate))


class SSHLab:
    """What the SSH service needs from the lab."""

    def __init__(self, manager, tokens):
        self.manager = manager
        self.tokens = tokens

    def issue_token(self, user):
        """Deferred[str]: a new API token for ``user``."""
        return self.tokens.issue(user)

    def open_console(self, user, board):
        """Deferred[hub]: ``board``'s console if ``user`` may use it; that
        of another host's board is relayed from there."""
        return self.manager.open_any_console(user, board)

    def is_board(self, name):
        """Whether ``name`` is a board of the lab (a Deferred when it may be
        another host's)."""
        return self.manager.is_lab_board(name)


def makeService(options):
    """Build the service tree for twistd."""
    from twisted.internet import reactor

    try:
        return make_lab_service(
            options["settings"], options["lab"], reactor, options.get("server_log")
        )
    except ConfigError as e:
        _fail(e)
