-- v29: message bodies in the database, and periodic jobs claimed once per period.
-- `bodies` holds every message body when `[storage] bodies = "database"` (the default on
-- PostgreSQL, so that every node reads every body); installations with bodies as files (the
-- SQLite default) leave it empty.
CREATE TABLE bodies (
    id           TEXT PRIMARY KEY,
    data         BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    -- when the last message or queue entry using it went; the sweep removes it some time after
    orphaned_at  INTEGER
);
-- One row per periodic job (retention, reports, sweeps): the node whose UPDATE moves
-- `last_run` on runs it, so that several nodes on one database run each job once per period.
CREATE TABLE periodic_jobs (
    name      TEXT PRIMARY KEY,
    last_run  INTEGER NOT NULL,
    node      TEXT NOT NULL
);
