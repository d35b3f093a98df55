-- v1
-- Postern SQLite schema, version 1. Times are Unix seconds (UTC).
CREATE TABLE domains (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE TABLE accounts (
    id                   INTEGER PRIMARY KEY,
    address              TEXT NOT NULL UNIQUE,
    domain_id            INTEGER NOT NULL REFERENCES domains(id),
    password_hash        TEXT NOT NULL,
    disabled             INTEGER NOT NULL DEFAULT 0,
    -- opt-in: Received headers of this account's submissions carry TLS version and login name
    received_details     INTEGER NOT NULL DEFAULT 0,
    created_at           INTEGER NOT NULL,
    password_changed_at  INTEGER NOT NULL
);
CREATE TABLE aliases (
    address     TEXT PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL
);
CREATE INDEX aliases_account ON aliases(account_id);
-- IMAP-ready mailboxes: UIDs strictly ascending per mailbox, never reused within a UIDVALIDITY.
CREATE TABLE mailboxes (
    id              INTEGER PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    special_use     TEXT,
    uidvalidity     INTEGER NOT NULL,
    uidnext         INTEGER NOT NULL DEFAULT 1,
    highest_modseq  INTEGER NOT NULL DEFAULT 1,
    subscribed      INTEGER NOT NULL DEFAULT 1,
    UNIQUE (account_id, name)
);
CREATE TABLE messages (
    id             INTEGER PRIMARY KEY,
    mailbox_id     INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid            INTEGER NOT NULL,
    blob_id        TEXT NOT NULL,
    size           INTEGER NOT NULL,
    internal_date  INTEGER NOT NULL,
    flags          TEXT NOT NULL DEFAULT '',
    modseq         INTEGER NOT NULL DEFAULT 1,
    UNIQUE (mailbox_id, uid)
);
CREATE INDEX messages_blob ON messages(blob_id);
-- Outbound queue: one row per accepted message, one per remote recipient.
CREATE TABLE queue (
    id               INTEGER PRIMARY KEY,
    blob_id          TEXT NOT NULL,
    size             INTEGER NOT NULL,
    sender           TEXT NOT NULL,
    account_id       INTEGER,
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    status           TEXT NOT NULL DEFAULT 'queued',
    last_error       TEXT
);
CREATE TABLE queue_recipients (
    queue_id  INTEGER NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
    address   TEXT NOT NULL,
    status    TEXT NOT NULL DEFAULT 'pending',
    PRIMARY KEY (queue_id, address)
);
