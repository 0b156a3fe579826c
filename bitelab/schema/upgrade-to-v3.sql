-- schema 2 -> 3: the waiting queue, expiry notices
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
    ended_at REAL
);
CREATE INDEX waiters_order ON waiters (state, class, priority, id);
ALTER TABLE reservations ADD COLUMN waiter INTEGER;
-- the smallest expiry notice (seconds before the end) already given
ALTER TABLE reservations ADD COLUMN noticed INTEGER
