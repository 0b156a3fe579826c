-- schema 3 -> 4: one lab on several hosts
ALTER TABLE boards ADD COLUMN host TEXT NOT NULL DEFAULT '';
-- the host that runs the side effects of a reservation being set up;
-- NULL: not taken up yet by the host its board hangs off
ALTER TABLE reservations ADD COLUMN driver TEXT;
-- before several hosts, the one host drives every setup
UPDATE reservations SET driver = '' WHERE state = 'reserving';
-- the client's own name for a wait, echoed in its events
ALTER TABLE waiters ADD COLUMN ticket TEXT;
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
CREATE TABLE classes (
    name TEXT PRIMARY KEY,
    arch TEXT NOT NULL,
    -- the class's other keys, as a JSON object
    attrs TEXT NOT NULL DEFAULT '{}',
    -- the host whose board file defined it first
    host TEXT NOT NULL DEFAULT ''
)
