-- bitelab database, schema version 1
CREATE TABLE boards (
    name TEXT PRIMARY KEY,
    class TEXT NOT NULL,
    arch TEXT NOT NULL,
    -- 0 once the board left the board file while reserved; deleted on release
    configured INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'free'
        CHECK (state IN ('free', 'reserved', 'maintenance')),
    holder TEXT,
    reserved_at REAL,
    expires_at REAL,
    sshpubkey TEXT,
    reason TEXT,
    -- KEY=VALUE lines of the reserve script, as a JSON object
    script_attrs TEXT NOT NULL DEFAULT '{}',
    released_at REAL NOT NULL DEFAULT 0,
    power TEXT CHECK (power IN ('on', 'off')),
    power_at REAL
);
CREATE INDEX boards_class_state ON boards (class, state, released_at);
CREATE INDEX boards_expiry ON boards (state, expires_at);

CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user TEXT,
    board TEXT,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_board ON events (board, id);
CREATE INDEX events_user ON events (user, id);
