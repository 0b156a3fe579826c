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

        try:
            self["settings"] = load_config(self["config"])
            self["lab"] = load_boards(self["settings"].board_conf, option_map())
            check_lab(self["settings"], self["lab"])
        except ConfigError as e:
            _fail(e)
        # twistd's own options, when run by twistd
        parent = getattr(self, "parent", None)
        if parent is not None:
            _private_log(parent)


#: the log file twistd was asked to write, for ``private_log_observer``
#: (twistd calls its ``--logger`` factory without arguments)
_log_path = "twistd.log"


def _private_log(twistd_options):
    """Have twistd log to its log file through ``private_log_observer``.

    The log names users, boards and addresses, and jail accounts are local
    users of this host.  An explicit ``--logger`` or ``--syslog``, and
    logging to standard output, are left alone.
    """
    global _log_path
    if twistd_options.get("logger") or twistd_options.get("syslog"):
        return
    path = twistd_options.get("logfile")
    if path == "-" or (not path and twistd_options.get("nodaemon")):
        return
    _log_path = path or "twistd.log"
    twistd_options["logger"] = f"{__name__}.private_log_observer"


def private_log_observer():
    """twistd's ``--logfile`` observer, but every log file it makes
    (rotated ones too) is readable by the server's user only (0600)."""
    from twisted.logger import textFileLogObserver
    from twisted.python.logfile import LogFile

    log_file = LogFile.fromFullPath(_log_path, defaultMode=0o600)
    # as twistd does: SIGUSR1 rotates the log
    if not signal.getsignal(signal.SIGUSR1):
        from twisted.internet import reactor

        signal.signal(
            signal.SIGUSR1, lambda *_: reactor.callFromThread(log_file.rotate)
        )
    return textFileLogObserver(log_file)


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
    """The server's top service: a port that cannot be opened is one line."""

    def privilegedStartService(self):
        from twisted.internet.error import CannotListenError

        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or e.socketError
            _fail(f"cannot listen on {e.interface or '*'}:{e.port}: {reason}")
        except OSError as e:
            _fail(f"cannot start: {e.strerror or e}")


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
            held = sync_boards(cursor, lab, now)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{settings.db_file}: cannot use the database: {e}") from None
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


def make_lab_service(settings, lab, reactor):
    """The whole server as a ``MultiService``; ``.manager`` etc. for tests."""
    import gpiod

    from bitelab import db
    from bitelab.api import API
    from bitelab.boardpower import BoardPower
    from bitelab.console import ConsoleService
    from bitelab.events import EventBus
    from bitelab.httpserver import LabSite, LimitedHTTPFactory
    from bitelab.lifecycle import BoardManager
    from bitelab.limits import files_needed, raise_file_limit
    from bitelab.options import Runtime, SerialConsole
    from bitelab.script import ScriptRunner
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
    held = sync_database(settings, lab, reactor.seconds())
    writer = db.make_pool(settings.db_file, settings.db_busy_timeout)
    reader = db.make_pool(settings.db_file, settings.db_busy_timeout)
    PoolService(writer, reader).setServiceParent(top)
    store = Store(writer, reader, EventBus(), reactor, settings.db_file)

    snmp = SNMPClient(reactor)
    SNMPService(snmp).setServiceParent(top)
    runtime = Runtime(reactor=reactor, snmp=snmp, gpio=gpiod)

    consoles = {}
    for name, board in lab.boards.items():
        option = board.option(SerialConsole)
        if option is not None:
            console = ConsoleService(
                reactor,
                name,
                option.val,
                option.baud,
                settings.console_log_dir,
                max_log_bytes=settings.console_log_max_bytes,
                backups=settings.console_log_backups,
            )
            console.setServiceParent(top)
            consoles[name] = console

    scripts = ScriptRunner(reactor, lab.setup_script, settings.setup_script_timeout)
    power = BoardPower(reactor, lab, runtime, store, settings.power_cycle_pause)
    manager = BoardManager(reactor, settings, lab, store, power, scripts, consoles)
    manager.resume_consoles(held)
    manager.setServiceParent(top)
    tokens = TokenStore(store, reactor)

    ssh = SSHService(
        reactor,
        settings.ssh_endpoint,
        settings.ssh_host_key,
        settings.ssh_keys_dir,
        SSHLab(manager, tokens),
        limits=ssh_limits(settings),
    )
    ssh.setServiceParent(top)

    streams = EventStreams(reactor)
    store.bus.subscribe(streams.publish)
    manager.room.notify = streams.notify
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
    # a file of its own is cheaper per request than the server's log
    if settings.http_access_log:
        os.makedirs(os.path.dirname(settings.http_access_log), exist_ok=True)
        os.close(os.open(settings.http_access_log, os.O_WRONLY | os.O_CREAT, 0o600))
    web = WebService(api, manager, tokens, reactor, settings.console_max_followers)
    web.setServiceParent(top)
    site = LabSite(
        web.root,
        tokens.authenticate,
        logPath=settings.http_access_log or None,
        reactor=reactor,
    )
    site.web_sessions = web.sessions
    http = LimitedHTTPFactory(site, settings.http_max_connections)
    strports.service(settings.http_endpoint, http).setServiceParent(top)
    reactor.addSystemEventTrigger(
        "after", "startup", _install_sighup, reactor, ssh.reload
    )
    top.manager, top.tokens, top.ssh, top.api = manager, tokens, ssh, api
    top.store = store
    top.http = http
    return top


def ssh_limits(settings):
    """The ``SSHLimits`` of ``settings``."""
    from bitelab.ssh import SSHLimits

    return SSHLimits(
        login_grace_time=settings.ssh_login_grace_time,
        max_unauthenticated=settings.ssh_max_unauthenticated,
        max_unauthenticated_per_source=settings.ssh_max_unauthenticated_per_source,
        max_auth_tries=settings.ssh_max_auth_tries,
    )


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


class SSHLab:
    """What the SSH service needs from the lab."""

    def __init__(self, manager, tokens):
        self.manager = manager
        self.tokens = tokens

    def issue_token(self, user):
        """Deferred[str]: a new API token for ``user``."""
        return self.tokens.issue(user)

    def open_console(self, user, board):
        """Deferred[hub]: ``board``'s console if ``user`` may use it."""
        return self.manager.open_console(user, board)

    def is_board(self, name):
        """Whether ``name`` is a board."""
        return self.manager.is_board(name)


def makeService(options):
    """Build the service tree for twistd."""
    from twisted.internet import reactor

    try:
        return make_lab_service(options["settings"], options["lab"], reactor)
    except ConfigError as e:
        _fail(e)
