-- schema 4 -> 5: hosts forward hardware work to each other
ALTER TABLE hosts ADD COLUMN key_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN ssh_port INTEGER;
ALTER TABLE hosts ADD COLUMN ssh_host_key TEXT NOT NULL DEFAULT '';
ALTER TABLE boards ADD COLUMN facts TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN down_since REAL
