"""API tokens: random, stored only as a hash, compared in constant time."""

import hashlib
import hmac
import secrets

import attrs
from twisted.internet import defer

from bitelab.db import add_event
from bitelab.errors import Forbidden, Unauthorized

TOKEN_PREFIX = "bl_"
TOKEN_BYTES = 32
#: seconds a checked token is trusted without asking the database again, so
#: that ``bitelab-admin revoke`` (another process) takes effect this soon
CACHE_SECONDS = 5.0


def hash_token(token):
    """The stored form of a token (SHA-256; tokens carry 256 random bits)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token():
    """A fresh token: 256 bits from the OS's random source."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def user_locked(txn, user):
    """Whether ``user`` is locked out: the last ``user_lock`` or
    ``user_unlock`` of theirs in the audit log is a lock."""
    txn.execute(
        "SELECT action FROM events WHERE user = ? "
        "AND action IN ('user_lock', 'user_unlock') ORDER BY id DESC LIMIT 1",
        (user,),
    )
    row = txn.fetchone()
    return row is not None and row[0] == "user_lock"


def insert_token(txn, user, now):
    """Store a new token's hash and audit it; returns the token (inside a
    transaction).  ``Forbidden`` for a user who is locked out."""
    if user_locked(txn, user):
        raise Forbidden(f"{user} is locked out of this lab; ask the lab admin")
    token = new_token()
    txn.execute(
        "INSERT INTO tokens (hash, user, created_at) VALUES (?, ?, ?)",
        (hash_token(token), user, now),
    )
    add_event(txn, now, user, None, "token_issue")
    return token


@attrs.define
class TokenStore:
    """Issues, checks and revokes tokens; remembers valid ones for a few seconds."""

    pool: object
    clock: object
    _cache: dict = attrs.field(factory=dict)

    def issue(self, user):
        """Deferred[str]: a new token for ``user``."""

        def txn(cursor):
            cursor.execute("BEGIN IMMEDIATE")
            return insert_token(cursor, user, self.clock.seconds())

        return self.pool.runInteraction(txn)

    @defer.inlineCallbacks
    def authenticate(self, token):
        """Deferred[str]: the user a token belongs to; ``Unauthorized`` otherwise."""
        if not token or len(token) > 200:
            raise Unauthorized("missing or malformed token")
        digest = hash_token(token)
        now = self.clock.seconds()
        cached = self._cache.get(digest)
        if (
            cached is not None
            and cached[2] > now
            and hmac.compare_digest(cached[0], digest)
        ):
            return cached[1]
        rows = yield self.pool.runQuery(
            "SELECT hash, user FROM tokens WHERE hash = ? AND revoked_at IS NULL",
            (digest,),
        )
        if not rows or not hmac.compare_digest(rows[0][0], digest):
            raise Unauthorized(
                "invalid or revoked token; get one with "
                "ssh -o 'ProxyCommand bitelab contssh' -l lab bitelab"
            )
        user = rows[0][1]
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = (digest, user, now + CACHE_SECONDS)
        return user

    def revoke(self, token):
        """Deferred: the token no longer authenticates anyone."""
        digest = hash_token(token)
        self._cache.pop(digest, None)
        now = self.clock.seconds()

        def txn(cursor):
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute(
                "SELECT user FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                (digest,),
            )
            row = cursor.fetchone()
            if row is None:
                raise Unauthorized("invalid or revoked token")
            cursor.execute(
                "UPDATE tokens SET revoked_at = ? WHERE hash = ?", (now, digest)
            )
            add_event(cursor, now, row[0], None, "token_revoke")

        return self.pool.runInteraction(txn)
