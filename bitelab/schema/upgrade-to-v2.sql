-- schema 1 -> 2: reservations get a table and an identity; transitional states
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
    cause TEXT,
    actor TEXT,
    detail TEXT,
    outcome TEXT,
    script_attrs TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX reservations_user ON reservations (user, id);
CREATE INDEX reservations_board ON reservations (board, id);
INSERT INTO reservations (board, user, sshpubkey, state, created_at, expires_at,
                          script_attrs)
    SELECT name, holder, sshpubkey, 'reserved', reserved_at, expires_at,
           script_attrs
    FROM boards WHERE state = 'reserved' ORDER BY reserved_at, name;
CREATE TABLE boards_v2 (
    name TEXT PRIMARY KEY,
    class TEXT NOT NULL,
    arch TEXT NOT NULL,
    configured INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'free'
        CHECK (state IN ('free', 'reserving', 'reserved', 'releasing',
                         'maintenance')),
    reservation_id INTEGER REFERENCES reservations (id),
    reason TEXT,
    released_at REAL NOT NULL DEFAULT 0,
    setup_failures INTEGER NOT NULL DEFAULT 0,
    power TEXT CHECK (power IN ('on', 'off')),
    power_at REAL
);
INSERT INTO boards_v2 (name, class, arch, configured, state, reservation_id,
                       reason, released_at, power, power_at)
    SELECT b.name, b.class, b.arch, b.configured, b.state,
           (SELECT r.id FROM reservations r
            WHERE r.board = b.name AND r.state = 'reserved'),
           b.reason, b.released_at, b.power, b.power_at
    FROM boards b;
DROP TABLE boards;
ALTER TABLE boards_v2 RENAME TO boards;
CREATE INDEX boards_pick ON boards (class, state, configured, released_at, name);
CREATE INDEX boards_state ON boards (state);
CREATE INDEX tokens_user ON tokens (user);
ALTER TABLE events ADD COLUMN reservation INTEGER
