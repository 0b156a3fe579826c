-- bitelab database, schema version 2
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
    script_attrs TEXT NOT NULL DEFAULT '{}'
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
    power_at REAL
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
