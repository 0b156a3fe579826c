"""The SSH service: API tokens and serial consoles over Conch.

Users are identified by their public key alone; the SSH login name picks the
service:

- ``lab``: the session prints a new API token and a newline on stdout, then
  exits with status 0 (for a shell or an exec request, with or without a pty;
  a command, if given, is ignored).
- ``BOARD``: the session attaches to the board's serial console for as long
  as the user holds the board. Bytes pass through unchanged both ways, with
  or without a pty. Several viewers may watch the same board. When the
  reservation ends (or the client falls too far behind, or the server
  stops) the hub closes the viewer; the session then prints the reason on a
  line of its own and exits with status 0, since the session did what it
  was asked until the console went away. The end of the client's input
  also ends the session with status 0. A user who does not hold the board gets
  one line on stderr and exit status 1.

Any other login name, and any key not found in the keys directory, gets the
usual "Permission denied" with no further detail.

The keys directory holds one ``USER.pub`` file per user in authorized_keys
format; a line with an options prefix (``from=...``) is logged and skipped
rather than half honoured. Conch looks keys up synchronously, so ``KeysDirectory`` keeps an
in-memory snapshot of it, polled for changes every few seconds and reloaded
on demand (the server hooks SIGHUP to ``SSHService.reload``); a key it does
not know makes it look at the directory again at once, so that a key file
just added works at the first login. Sessions that are already open are
never affected by a reload. A reload that cannot read the directory, or a
key file for want of resources (``EMFILE``...), keeps the last snapshot and
is tried again at the next poll.

Before login, clients are held to ``SSHLimits``: a login grace time, a cap
on connections not logged in yet (overall and per source address, see
``bitelab.limits``) and a cap on failed authentication attempts.
"""

import errno
import os
import re
from typing import ClassVar

import attrs
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application import service
from twisted.conch import avatar
from twisted.conch import error as conch_error
from twisted.conch.checkers import IAuthorizedKeysDB
from twisted.conch.interfaces import IConchUser, ISession, ISessionSetEnv
from twisted.conch.ssh import factory, keys, session, transport, userauth
from twisted.cred import credentials, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, protocol, task
from twisted.internet import error as internet_error
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import components, failure
from zope.interface import implementer

from bitelab.errors import Forbidden, NotFound, StorageError, Unavailable
from bitelab.limits import ConnectionLimiter

log = Logger()

#: The login name that asks for an API token.
LAB_LOGIN = "lab"

#: Seconds between two looks at the keys directory.
KEYS_POLL_INTERVAL = 3.0

#: Seconds open connections get to close when the service stops.
STOP_GRACE = 5.0

_USER_NAME = re.compile(r"[A-Za-z0-9._-]+")
_KEY_SUFFIX = ".pub"

#: errors that say the system is short of something or failing, not that a
#: key file is bad
_SHORTAGE = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EIO, errno.EAGAIN}
)


def load_or_create_host_key(path):
    """Return the server's host key, creating it on first start.

    The key is an ed25519 private key stored at ``path`` in OpenSSH format,
    readable by its owner only. Missing parent directories are created.

    @param path: file name of the host key.
    @return: the private L{keys.Key}.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        data = key.toString("openssh", comment=b"bitelab host key")
        temp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.rename(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
        log.info("Created SSH host key {path}", path=path)
    with open(path, "rb") as f:
        key = keys.Key.fromString(f.read())
    if key.isPublic():
        raise keys.BadKeyError(f"{path}: this is a public key, not a host key")
    return key


def host_key_facts(key):
    """What ``GET /info`` publishes of the host ``key``, for clients to pin it.

    ``ssh_host_key`` is the public key as a ``known_hosts`` line would hold
    it, ``ssh_host_key_fingerprint`` its SHA256 fingerprint as
    ``ssh-keygen -l`` prints it.
    """
    public = key.public()
    fingerprint = public.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    return {
        "ssh_host_key": public.toString("openssh").decode("ascii"),
        "ssh_host_key_fingerprint": "SHA256:" + fingerprint.rstrip("="),
    }


def _parse_key_file(path):
    """Return the public keys in one authorized_keys-format file.

    Lines that are blank or comments are skipped; so, with a logged error,
    are lines that cannot be parsed and lines with an options prefix
    (options such as ``from=`` restrict a key, and honouring them only in
    part would grant more than the file says).
    """
    found = []
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            key = keys.Key.fromString(line)
        except (keys.BadKeyError, ValueError, IndexError) as e:
            log.error(
                "{path}:{number}: skipped, not a public key without options"
                " ({error})",
                path=path,
                number=number,
                error=e,
            )
            continue
        if not key.isPublic():
            log.error(
                "{path}:{number}: skipped, a private key does not belong here",
                path=path,
                number=number,
            )
            continue
        found.append(key)
    return found


@implementer(IAuthorizedKeysDB)
class KeysDirectory(service.Service):
    """An in-memory snapshot of the keys directory.

    Each ``USER.pub`` file (``USER`` matching ``[A-Za-z0-9._-]+``) holds the
    keys of that user. While the service runs it polls the directory every
    L{KEYS_POLL_INTERVAL} seconds on ``clock`` and reloads it when a file was
    added, removed or changed; L{reload} reloads it at once. A file that
    cannot be read, or a line that cannot be parsed, is logged and skipped.
    A key found in the files of two users is refused for both, since it
    cannot tell who is logging in.

    @ivar keys_dir: the directory.
    """

    def __init__(self, keys_dir, clock, interval=KEYS_POLL_INTERVAL):
        self.keys_dir = os.fspath(keys_dir)
        self._clock = clock
        self._interval = interval
        self._loop = None
        self._signature = ()
        self._by_user = {}
        self._by_blob = {}
        self._failing = False

    def startService(self):
        """Load the directory, then poll it for changes."""
        super().startService()
        self.reload()
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stopService(self):
        """Stop polling."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def users(self):
        """Return the names of the users that have at least one key."""
        return sorted(self._by_user)

    def getAuthorizedKeys(self, username):
        """Return the keys of user ``username`` (L{bytes} or L{str})."""
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        return self._by_user.get(username, ())

    def user_for_key(self, key):
        """Return the name of the user owning public ``key``, or L{None}."""
        return self._by_blob.get(key.blob())

    def poll(self):
        """Reload the directory if it changed since the last load."""
        try:
            if self._scan_signature() != self._signature:
                self.reload()
        except Exception:  # noqa: BLE001 - the polling loop must survive
            log.failure(
                "Polling the SSH keys directory {dir} failed", dir=self.keys_dir
            )

    def reload(self):
        """Read the directory again and replace the snapshot.

        If the directory cannot be listed (other than being missing), or a
        key file cannot be read for want of resources, the last snapshot is
        kept and the next poll tries again.
        """
        signature = self._scan_signature()
        try:
            by_user = self._read_keys()
        except OSError as e:
            if not self._failing:
                log.error(
                    "Cannot reload SSH keys from {dir}: {error}; keeping the keys"
                    " of the {count} users loaded before, and trying again",
                    dir=self.keys_dir,
                    error=e.strerror or e,
                    count=len(self._by_user),
                )
            self._failing = True
            self._signature = None
            return
        if self._failing:
            log.info("SSH keys directory {dir} readable again", dir=self.keys_dir)
            self._failing = False
        self._signature = signature
        owners = {}
        for user, user_keys in by_user.items():
            for key in user_keys:
                owners.setdefault(key.blob(), set()).add(user)
        by_blob = {}
        for blob, users in owners.items():
            if len(users) == 1:
                by_blob[blob] = users.pop()
            else:
                log.error(
                    "An SSH key is listed for several users ({users});"
                    " it is refused until it belongs to one",
                    users=", ".join(sorted(users)),
                )
                for user in users:
                    by_user[user] = tuple(k for k in by_user[user] if k.blob() != blob)
        self._by_user = {user: ks for user, ks in by_user.items() if ks}
        self._by_blob = by_blob
        log.info(
            "Loaded SSH keys of {count} users from {dir}",
            count=len(self._by_user),
            dir=self.keys_dir,
        )

    def _read_keys(self):
        """{user: keys} from the directory; OSError if it cannot be done now."""
        by_user = {}
        for name, path in self._key_files():
            try:
                user_keys = _parse_key_file(path)
            except OSError as e:
                if e.errno in _SHORTAGE:
                    raise
                log.error(
                    "Cannot read SSH key file {path}: {error}", path=path, error=e
                )
                continue
            by_user[name[: -len(_KEY_SUFFIX)]] = tuple(user_keys)
        return by_user

    def _key_files(self):
        """(file name, path) of every well-named key file; OSError if the
        directory exists but cannot be listed."""
        try:
            entries = sorted(os.scandir(self.keys_dir), key=lambda e: e.name)
        except FileNotFoundError:
            log.error("SSH keys directory {dir} is missing", dir=self.keys_dir)
            return []
        found = []
        for entry in entries:
            name = entry.name
            if not name.endswith(_KEY_SUFFIX) or name.startswith("."):
                continue
            if not _USER_NAME.fullmatch(name[: -len(_KEY_SUFFIX)]):
                log.error(
                    "Skipped SSH key file {path}: the user name may only hold"
                    " letters, digits, '.', '_' and '-'",
                    path=entry.path,
                )
                continue
            found.append((name, entry.path))
        return found

    def _scan_signature(self):
        """Return what changes when any key file changes."""
        try:
            entries = list(os.scandir(self.keys_dir))
        except OSError as e:
            return ("error", str(e))
        signature = []
        for entry in entries:
            if not entry.name.endswith(_KEY_SUFFIX):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            signature.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(sorted(signature))


@attrs.frozen
class Identity:
    """Who logged in (``user``, from the key) and for what (``service``).

    ``service`` is L{LAB_LOGIN} or a board name.
    """

    user: str
    service: str


@implementer(ICredentialsChecker)
@attrs.define
class KeyOwnerChecker:
    """Authenticate a public key against all users' keys.

    The login name is not a user name: it must be L{LAB_LOGIN} or a board
    the lab knows, and the user is whoever owns the key. The avatar ID is an
    L{Identity}.
    """

    keys: KeysDirectory
    lab: object

    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def requestAvatarId(self, creds):
        """Return a Deferred firing with the L{Identity} of ``creds``."""
        return defer.maybeDeferred(self._check, creds)

    @defer.inlineCallbacks
    def _check(self, creds):
        try:
            login = creds.username.decode("utf-8")
        except UnicodeDecodeError:
            raise UnauthorizedLogin("bad login name") from None
        # a board of another host of the lab is a Deferred question
        if login != LAB_LOGIN and not (yield self.lab.is_board(login)):
            raise UnauthorizedLogin("unknown login name")
        try:
            key = keys.Key.fromString(creds.blob)
        except (keys.BadKeyError, ValueError, IndexError):
            raise UnauthorizedLogin("bad key") from None
        user = self.keys.user_for_key(key)
        if user is None:
            # a key file added since the last poll counts at once
            self.keys.poll()
            user = self.keys.user_for_key(key)
        if user is None:
            raise UnauthorizedLogin("unknown key")
        if not creds.signature:
            # Tells the client this key would do; it signs and asks again.
            raise conch_error.ValidPublicKey()
        try:
            good = key.verify(creds.signature, creds.sigData)
        except Exception:  # noqa: BLE001 - a malformed signature is a failed login
            good = False
        if not good:
            raise UnauthorizedLogin("bad signature")
        return Identity(user, login)


class BitelabAvatar(avatar.ConchUser):
    """A logged-in user: may open session channels, nothing else.

    @ivar identity: the L{Identity}.
    @ivar lab: the lab object serving tokens and consoles.
    """

    def __init__(self, identity, lab):
        super().__init__()
        self.identity = identity
        self.lab = lab
        self.channelLookup[b"session"] = session.SSHSession

    def logout(self):
        """Log the end of the connection."""
        log.info(
            "SSH logout: {user} from {service}",
            user=self.identity.user,
            service=self.identity.service,
        )


@implementer(portal.IRealm)
@attrs.define
class BitelabRealm:
    """Makes a L{BitelabAvatar} for each authenticated L{Identity}."""

    lab: object

    def requestAvatar(self, avatarId, mind, *interfaces):
        """Return the avatar for ``avatarId``."""
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH logins are served")
        log.info(
            "SSH login: {user} for {service}",
            user=avatarId.user,
            service=avatarId.service,
        )
        user = BitelabAvatar(avatarId, self.lab)
        return IConchUser, user, user.logout


def _one_line(message):
    """``message`` as one line starting with ``bitelab:``, without line end."""
    text = " ".join(str(message).split())
    if not text.startswith("bitelab:"):
        text = f"bitelab: {text}"
    return text


@implementer(ISession, ISessionSetEnv)
class _Session:
    """What both services share: pty and env handling, output and exit.

    The session is the transport of Conch's process protocol: channel data
    arrives in L{write}, and output goes out through that protocol.
    """

    def __init__(self, avatar):
        self.avatar = avatar
        self.pty = False
        self._proto = None
        self._ended = False

    # ISession and ISessionSetEnv

    def getPty(self, term, windowSize, modes):
        """Accept a pty; it only changes how our own messages end lines."""
        self.pty = True

    def setEnv(self, name, value):
        """Accept and ignore an environment variable."""

    def windowChanged(self, newWindowSize):
        """Ignore window size changes."""

    def openShell(self, proto):
        """Start the service on this channel."""
        self._proto = proto
        proto.makeConnection(self)
        self.start()

    def execCommand(self, proto, command):
        """Start the service on this channel; the command is ignored."""
        self.openShell(proto)

    def eofReceived(self):
        """Ignore the end of the client's input; the service ends itself."""

    def closed(self):
        """The channel is closed: stop sending."""
        self._ended = True

    # The process-transport side: channel input.

    def write(self, data):
        """Ignore input."""

    def loseConnection(self):
        """Nothing to tear down here; L{closed} follows."""

    # Output helpers.

    @property
    def eol(self):
        """The line end of our own messages."""
        return "\r\n" if self.pty else "\n"

    def start(self):
        """Run the service; subclasses override."""
        raise NotImplementedError

    def send_out(self, data):
        """Send ``data`` on stdout unless the session has ended."""
        if not self._ended:
            self._proto.outReceived(data)

    def send_err(self, text):
        """Send ``text`` as one line on stderr unless the session has ended."""
        if not self._ended:
            self._proto.errReceived(f"{_one_line(text)}{self.eol}".encode())

    def exit(self, code):
        """Send the exit status ``code`` and close the channel (once)."""
        if self._ended:
            return
        self._ended = True
        if code == 0:
            reason = internet_error.ProcessDone(None)
        else:
            reason = internet_error.ProcessTerminated(exitCode=code)
        self._proto.processEnded(failure.Failure(reason))

    def pending_output(self):
        """Bytes written to the channel but not yet sent to the client."""
        if self._ended:
            return 0
        return len(self._proto.session.buf or b"")


class TokenSession(_Session):
    """The ``lab`` login: print a new API token, exit 0."""

    def start(self):
        """Ask the lab for a token and print it."""
        user = self.avatar.identity.user
        d = defer.maybeDeferred(self.avatar.lab.issue_token, user)
        d.addCallbacks(self._issued, self._failed, errbackArgs=(user,))

    def _issued(self, token):
        self.send_out(token.encode("ascii") + b"\n")
        self.exit(0)

    def _failed(self, reason, user):
        if reason.check(Forbidden):
            self.send_err(reason.value.message)
        else:
            log.failure("Issuing an API token for {user} failed", reason, user=user)
            self.send_err("could not issue a token; try again or ask the lab admin")
        self.exit(1)


class ConsoleViewer:
    """Bridges one console hub to one SSH session.

    The hub calls L{write} with console output and L{close} when the viewer
    must go (the reservation ended, the viewer is too slow, the server
    stops); L{pending} tells it how far the client is behind. After L{close}
    the viewer does not call ``hub.detach``: the hub has let go of it.
    """

    def __init__(self, console_session):
        self._session = console_session
        self.closed = False

    def write(self, data):
        """Send console output to the client."""
        if not self.closed:
            self._session.send_out(data)

    def pending(self):
        """Bytes of console output the client has not taken yet."""
        return self._session.pending_output()

    def close(self, reason):
        """End the session with the one-line ``reason``."""
        if self.closed:
            return
        self.closed = True
        self._session.viewer_closed(reason)


class ConsoleSession(_Session):
    """A board login: bridge the channel to the board's console hub.

    Input that arrives before the hub does is kept and sent once attached.
    The end of the client's input ends the session (exit 0), so that
    ``ssh ... </dev/null`` and the end of a pipe do not leave it hanging.
    """

    def __init__(self, avatar):
        super().__init__(avatar)
        self._hub = None
        self._viewer = None
        self._early_input = []
        self._input_ended = False

    def start(self):
        """Ask the lab for the console and attach to it."""
        identity = self.avatar.identity
        d = defer.maybeDeferred(
            self.avatar.lab.open_console, identity.user, identity.service
        )
        d.addCallbacks(self._opened, self._refused)

    def _opened(self, hub):
        if self._ended:
            return
        viewer = ConsoleViewer(self)
        try:
            hub.attach(viewer)
        except Unavailable as e:
            self._refused(failure.Failure(e))
            return
        self._hub, self._viewer = hub, viewer
        log.info(
            "{user} attached to the console of {board}",
            user=self.avatar.identity.user,
            board=self.avatar.identity.service,
        )
        early, self._early_input = b"".join(self._early_input), []
        if early:
            hub.send(early)
        if self._input_ended:
            self._leave()

    def _refused(self, reason):
        if reason.check(Forbidden, NotFound, Unavailable, StorageError):
            self.send_err(reason.value.message)
        else:
            log.failure(
                "Opening the console of {board} failed",
                reason,
                board=self.avatar.identity.service,
            )
            self.send_err(
                f"cannot open the console of {self.avatar.identity.service};"
                " try again or ask the lab admin"
            )
        self.exit(1)

    def write(self, data):
        """Send input from the client to the serial port."""
        if self._ended:
            return
        if self._hub is None:
            self._early_input.append(data)
        else:
            self._hub.send(data)

    def eofReceived(self):
        """The client's input ended: leave the console once it is attached."""
        self._input_ended = True
        if self._hub is not None:
            self._leave()

    def _leave(self):
        hub, self._hub = self._hub, None
        hub.detach(self._viewer)
        self.exit(0)

    def viewer_closed(self, reason):
        """The hub closed the viewer: print ``reason``, exit 0."""
        self._hub = None
        self.send_out(f"\r\n{_one_line(reason)}\r\n".encode())
        self.exit(0)

    def closed(self):
        """The channel is closed: leave the hub."""
        super().closed()
        if self._hub is not None:
            hub, self._hub = self._hub, None
            hub.detach(self._viewer)


def _session_for(user):
    """Adapt a L{BitelabAvatar} to the L{ISession} of its service."""
    if user.identity.service == LAB_LOGIN:
        return TokenSession(user)
    return ConsoleSession(user)


components.registerAdapter(_session_for, BitelabAvatar, ISession)


@attrs.frozen
class SSHLimits:
    """What a client may do before it has logged in.

    ``login_grace_time``: seconds from connecting to logging in.
    ``max_unauthenticated`` / ``max_unauthenticated_per_source``:
    connections not logged in yet, in all and from one address.
    ``max_auth_tries``: failed authentication attempts per connection.
    """

    login_grace_time: float = 30
    max_unauthenticated: int = 64
    max_unauthenticated_per_source: int = 10
    max_auth_tries: int = 6


class _UserAuth(userauth.SSHUserAuthServer):
    """Conch's user authentication with the factory's clock and attempt cap."""

    def serviceStarted(self):
        """Take the limits from the factory, then start as Conch does."""
        self.clock = self.transport.factory.clock
        # Conch closes after more than this many failures
        self.attemptsBeforeDisconnect = self.transport.factory.limits.max_auth_tries - 1
        super().serviceStarted()


class _ServerTransport(transport.SSHServerTransport):
    """The SSH transport, telling its factory when the connection is gone,
    and dropped if it has not logged in within the grace time."""

    _grace = None

    def connectionMade(self):
        super().connectionMade()
        self.factory.connections.add(self)
        self._grace = self.factory.clock.callLater(
            self.factory.limits.login_grace_time, self._grace_over
        )

    def _grace_over(self):
        self._grace = None
        log.debug("SSH client {peer} did not log in in time", peer=self.getPeer())
        self.sendDisconnect(
            transport.DISCONNECT_BY_APPLICATION, b"bitelab: login grace time over"
        )

    def setService(self, service):
        """Start ``service``; the connection service means the client logged in."""
        if service.name == b"ssh-connection":
            self._end_grace()
            self.factory.logged_in(self)
        super().setService(service)

    def _end_grace(self):
        if self._grace is not None:
            if self._grace.active():
                self._grace.cancel()
            self._grace = None

    def connectionLost(self, reason):
        self._end_grace()
        super().connectionLost(reason)
        self.factory.connection_gone(self)


class _Refused(protocol.Protocol):
    """A connection over the caps: closed at once."""

    def connectionMade(self):
        self.transport.loseConnection()


class BitelabSSHFactory(factory.SSHFactory):
    """The Conch server factory with one ed25519 host key.

    It keeps the open connections so that stopping the service closes them,
    and holds clients that have not logged in to ``limits`` (``SSHLimits``).
    """

    protocol = _ServerTransport
    noisy = False
    services: ClassVar[dict] = {
        **factory.SSHFactory.services,
        b"ssh-userauth": _UserAuth,
    }

    def __init__(self, host_key, ssh_portal, clock, limits=SSHLimits()):
        self.privateKeys = {host_key.sshType(): host_key}
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.portal = ssh_portal
        self.clock = clock
        self.limits = limits
        self.waiting = ConnectionLimiter(
            limits.max_unauthenticated, limits.max_unauthenticated_per_source
        )
        self.connections = set()
        self._all_gone = []
        # whether the cap was met since the count was last low: log once
        self._full = False

    def buildProtocol(self, addr):
        """A transport for a client within the caps, making room if need be."""
        conn = super().buildProtocol(addr)
        admitted, victim = self.waiting.admit(conn, getattr(addr, "host", str(addr)))
        if (victim is not None or not admitted) and not self._full:
            self._full = True
            log.warn(
                "SSH connections not logged in at the limit ({total} in all,"
                " {per_source} per address): closing the oldest or refusing"
                " new ones",
                total=self.waiting.max_total,
                per_source=self.waiting.max_per_source,
            )
        if victim is not None:
            victim.transport.abortConnection()
        return conn if admitted else _Refused()

    def logged_in(self, conn):
        """``conn`` has logged in: no longer held to the caps before login."""
        self._forget_waiting(conn)

    def connection_gone(self, conn):
        """Forget ``conn``; fire the waiters once none is left."""
        self._forget_waiting(conn)
        self.connections.discard(conn)
        if not self.connections:
            waiters, self._all_gone = self._all_gone, []
            for d in waiters:
                d.callback(None)

    def _forget_waiting(self, conn):
        self.waiting.remove(conn)
        if self._full and len(self.waiting) <= self.waiting.max_total // 2:
            self._full = False
            log.info(
                "SSH connections not logged in back to {count}", count=len(self.waiting)
            )

    def disconnect_all(self):
        """Close every connection; return a Deferred firing when all are gone."""
        if not self.connections:
            return defer.succeed(None)
        d = defer.Deferred()
        self._all_gone.append(d)
        for conn in list(self.connections):
            conn.sendDisconnect(
                transport.DISCONNECT_BY_APPLICATION, b"bitelab server stopping"
            )
        return d

    def abort_all(self):
        """Drop every connection at once, without flushing what is unsent."""
        for conn in list(self.connections):
            conn.transport.abortConnection()


class SSHService(service.MultiService):
    """The SSH server: listener, host key and keys directory.

    @ivar port: the listening port, once listening (an C{IListeningPort}).
    @ivar keys: the L{KeysDirectory}.
    @ivar factory: the L{BitelabSSHFactory}, once listening.
    """

    def __init__(
        self,
        reactor,
        endpoint_description,
        host_key_path,
        keys_dir,
        lab,
        keys_poll_interval=KEYS_POLL_INTERVAL,
        limits=SSHLimits(),
        metrics=None,
    ):
        super().__init__()
        #: a ``bitelab.metrics.Metrics`` counting logins and refusals, or None
        self.metrics = metrics
        self._reactor = reactor
        self._endpoint_description = endpoint_description
        self._host_key_path = host_key_path
        self.lab = lab
        self.limits = limits
        self.keys = KeysDirectory(keys_dir, reactor, keys_poll_interval)
        self.keys.setServiceParent(self)
        self.port = None
        self.factory = None
        self._listening = None

    def reload(self):
        """Reload the keys directory now (the server calls this on SIGHUP)."""
        self.keys.reload()

    def privilegedStartService(self):
        """Load the host key and listen, before privileges are dropped."""
        super().privilegedStartService()
        self._listen()

    def startService(self):
        """Start the keys directory, and listen if not listening yet."""
        super().startService()
        self._listen()

    def _listen(self):
        if self._listening is not None:
            return
        host_key = load_or_create_host_key(self._host_key_path)
        checker = KeyOwnerChecker(self.keys, self.lab)
        if self.metrics is not None:
            checker = self.metrics.counting_checker(checker)
        self.factory = BitelabSSHFactory(
            host_key,
            portal.Portal(BitelabRealm(self.lab), [checker]),
            self._reactor,
            self.limits,
        )
        endpoint = serverFromString(self._reactor, self._endpoint_description)
        early_failure = []

        def failed(reason):
            if starting:
                early_failure.append(reason)
            else:
                log.failure("The SSH service could not listen", reason)

        starting = True
        self._listening = endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, failed)
        starting = False
        if early_failure:
            # Raised here so that start-up stops with the reason.
            self._listening = None
            early_failure[0].raiseException()

    def _listened(self, port):
        self.port = port
        log.info("SSH service listening on {address}", address=port.getHost())
        return port

    @defer.inlineCallbacks
    def stopService(self):
        """Stop listening, close open connections, stop polling the keys."""
        yield defer.maybeDeferred(super().stopService)
        if self._listening is None:
            return
        listening, self._listening = self._listening, None
        port = yield listening
        self.port = None
        if port is not None:
            yield port.stopListening()
        gone = self.factory.disconnect_all()
        # A client that reads nothing would keep its connection open forever.
        abort = self._reactor.callLater(STOP_GRACE, self.factory.abort_all)
        try:
            yield gone
        finally:
            if abort.active():
                abort.cancel()


__all__ = [
    "LAB_LOGIN",
    "BitelabAvatar",
    "BitelabRealm",
    "BitelabSSHFactory",
    "ConsoleSession",
    "ConsoleViewer",
    "Identity",
    "KeyOwnerChecker",
    "KeysDirectory",
    "SSHLimits",
    "SSHService",
    "TokenSession",
    "load_or_create_host_key",
]
