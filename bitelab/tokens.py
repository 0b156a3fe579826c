"""API tokens: random, stored only as a hash, compared in constant time."""

import hashlib
import hmac
import secrets

import attrs
from twisted.internet import defer

from bitelab.errors import Unauthorized
from bitelab.store import insert_token as store_token

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


def insert_token(cursor, user, now):
    """Store a new token's hash and audit it; returns the token (inside a transaction)."""
    token = new_token()
    store_token(cursor, user, hash_token(token), now)
    return token


@attrs.define
class TokenStore:
    """Issues, checks and revokes tokens; remembers valid ones for a few seconds."""

    store: object
    clock: object
    _cache: dict = attrs.field(factory=dict)

    def issue(self, user):
        """Deferred[str]: a new token for ``user``."""

        token = new_token()
        d = self.store.add_token(user, hash_token(token))
        d.addCallback(lambda _: token)
        return d

    @defer.inlineCallbacks
    def authenticate(self, token):
        """Deferred[str]: the user a token belongs to; ``Unauthorized`` otherwise."""
        if not token or len(token) > 200:
            raise Unauthorized("missing or malformed token")
        user = yield self.authenticate_digest(hash_token(token))
        return user

    @defer.inlineCallbacks
    def authenticate_digest(self, digest):
        """Deferred[str]: the user of the token whose hash is ``digest`` (what
        a web session keeps instead of the token); ``Unauthorized`` otherwise."""
        now = self.clock.seconds()
        cached = self._cache.get(digest)
        if (
            cached is not None
            and cached[2] > now
            and hmac.compare_digest(cached[0], digest)
        ):
            return cached[1]
        row = yield self.store.token_user(digest)
        if row is None or not hmac.compare_digest(row[0], digest):
            raise Unauthorized(
                "invalid or revoked token; get one with "
                "ssh -o 'ProxyCommand bitelab contssh' -l lab bitelab"
            )
        user = row[1]
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = (digest, user, now + CACHE_SECONDS)
        return user

    def revoke(self, token):
        """Deferred: the token no longer authenticates anyone."""
        digest = hash_token(token)
        self._cache.pop(digest, None)
        return self.store.revoke_token(digest)
