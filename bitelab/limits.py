"""Connection limits shared by the HTTP and SSH faces, and the file budget.

``ConnectionLimiter`` is plain state: the protocol layers tell it when a
connection comes, changes and goes, and it answers whether to take a new
one and which old one to push out for it.  No I/O happens here.

A limiter holds at most ``max_total`` connections and at most
``max_per_source`` from one source address.  When it is full, a newcomer
takes the place of the oldest *evictable* connection (an idle HTTP
connection, an SSH connection still logging in) of the source holding the
most connections, provided that source holds at least as many as the
newcomer's own.  So a flood from a few addresses pushes out its own
connections, never those of other clients, and a new client is turned
away only when nothing can make room for it.
"""

import resource

#: file descriptors kept for everything but client connections: database,
#: logs, serial ports and their logs, helper processes, logged-in SSH users
FILE_RESERVE = 256


class ConnectionLimiter:
    """Which connections to keep, by source, within the caps (see module)."""

    def __init__(self, max_total, max_per_source=None):
        self.max_total = max_total
        self.max_per_source = max_per_source
        # source -> {connection: evictable}, oldest first
        self._by_source = {}
        self._source_of = {}

    def __len__(self):
        return len(self._source_of)

    def __contains__(self, conn):
        return conn in self._source_of

    def count(self, source):
        """How many connections ``source`` holds."""
        return len(self._by_source.get(source, ()))

    def admit(self, conn, source, evictable=True):
        """Take ``conn`` from ``source`` if the caps allow, making room if needed.

        Returns ``(admitted, victim)``: ``victim`` is a connection that was
        forgotten to make room and that the caller must now close.
        """
        held = self.count(source)
        if self.max_per_source is not None and held >= self.max_per_source:
            return False, None
        victim = None
        if len(self) >= self.max_total:
            victim = self._victim(held)
            if victim is None:
                return False, None
            self.remove(victim)
        self._by_source.setdefault(source, {})[conn] = evictable
        self._source_of[conn] = source
        return True, victim

    def _victim(self, held):
        """The oldest evictable connection of the heaviest source, if it
        holds at least ``held`` connections."""
        best = None
        for conns in self._by_source.values():
            if len(conns) < held or (best is not None and len(conns) <= len(best)):
                continue
            oldest = next((c for c, evictable in conns.items() if evictable), None)
            if oldest is not None:
                best, victim = conns, oldest
        return None if best is None else victim

    def set_evictable(self, conn, evictable):
        """Say whether ``conn`` may be pushed out for a newcomer."""
        source = self._source_of.get(conn)
        if source is not None:
            self._by_source[source][conn] = evictable

    def remove(self, conn):
        """Forget ``conn`` (closed, or no longer subject to this limiter)."""
        source = self._source_of.pop(conn, None)
        if source is None:
            return
        conns = self._by_source[source]
        del conns[conn]
        if not conns:
            del self._by_source[source]


def files_needed(settings):
    """File descriptors the server needs with ``settings``' connection caps."""
    return (
        settings.http_max_connections
        + settings.ssh_max_unauthenticated
        + (FILE_RESERVE)
    )


def raise_file_limit(needed):
    """Raise this process's open-file limit to ``needed`` if it is lower.

    Returns None when the limit suffices, else a one-line problem.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        return (
            f"the open-file limit ({hard}) is below the {needed} descriptors "
            f"http_max_connections + ssh_max_unauthenticated + {FILE_RESERVE} "
            "need; lower them or raise the limit (ulimit -n, LimitNOFILE=)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return None
