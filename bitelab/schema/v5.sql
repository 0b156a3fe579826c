-- bitelab database, schema version 4
CREATE TABLE reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    board TEXT NOT NULL,
    user TEXT NOT NULL,
    sshpubkey TEXT,
    state TEXT NOT NULL
        CHECK (state IN ('reserving', 'reserved', 'releasing', 'ended')),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    ended_at REAL,
    -- why it ended: release, force_release, expire, setup_failed, interrupted
    cause TEXT,
    actor TEXT,
    -- one line shown to the holder: why, and what went wrong if anything
    detail TEXT,
    -- the board's state once wound down: free or maintenance
    outcome TEXT,
    -- KEY=VALUE lines of the reserve script, as a JSON object
    script_attrs TEXT NOT NULL DEFAULT '{}',
    -- the queue entry it was handed to, if any
    waiter INTEGER,
    -- the smallest expiry notice (seconds before the end) already given
    noticed INTEGER,
    -- the host that runs the side effects of a reservation being set up;
    -- NULL: not taken up yet by the host its board hangs off
    driver TEXT
);
CREATE INDEX reservations_user ON reservations (user, id);
CREATE INDEX reservations_board ON reservations (board, id);

CREATE TABLE boards (
    name TEXT PRIMARY KEY,
    class TEXT NOT NULL,
    arch TEXT NOT NULL,
    -- 0 once the board left the board file while held; deleted once free
    configured INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'free'
        CHECK (state IN ('free', 'reserving', 'reserved', 'releasing',
                         'maintenance')),
    -- the reservation in reserving, reserved or releasing; NULL otherwise
    reservation_id INTEGER REFERENCES reservations (id),
    reason TEXT,
    released_at REAL NOT NULL DEFAULT 0,
    -- reserve-script failures in a row
    setup_failures INTEGER NOT NULL DEFAULT 0,
    power TEXT CHECK (power IN ('on', 'off')),
    power_at REAL,
    -- the lab host the board hangs off ('' in a one-host lab)
    host TEXT NOT NULL DEFAULT '',
    -- what every host shows of the board, as its own host describes it
    facts TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX boards_pick ON boards (class, state, configured, released_at, name);
CREATE INDEX boards_state ON boards (state);

CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX tokens_user ON tokens (user);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user TEXT,
    board TEXT,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    reservation INTEGER
);
CREATE INDEX events_board ON events (board, id);
CREATE INDEX events_user ON events (user, id);

CREATE TABLE waiters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    -- what was asked for: a board name or a class name
    target TEXT NOT NULL,
    -- the class whose boards can serve it; board: the one board, if named
    class TEXT NOT NULL,
    board TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    deadline REAL NOT NULL,
    -- NULL while its client waits on an open request; else it leaves then
    lease_until REAL,
    sshpubkey TEXT,
    timeout INTEGER,
    state TEXT NOT NULL
        CHECK (state IN ('waiting', 'granted', 'timed_out', 'cancelled', 'gone')),
    reservation_id INTEGER,
    ended_at REAL,
    -- the client's own name for this wait, echoed in its events
    ticket TEXT
);
CREATE INDEX waiters_order ON waiters (state, class, priority, id);

CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    -- the hash of the key this host proves itself with to the others
    key_hash TEXT NOT NULL DEFAULT '',
    -- where this host's SSH service listens, and its public host key
    ssh_port INTEGER,
    ssh_host_key TEXT NOT NULL DEFAULT '',
    -- when another host noted this one silent (NULL: it is beating)
    down_since REAL
);

CREATE TABLE classes (
    name TEXT PRIMARY KEY,
    arch TEXT NOT NULL,
    -- the class's other keys, as a JSON object
    attrs TEXT NOT NULL DEFAULT '{}',
    -- the host whose board file defined it first
    host TEXT NOT NULL DEFAULT ''
);
