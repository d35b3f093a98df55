-- v3: bans shared by the server and the CLI; the append-only, hash-chained audit log.
CREATE TABLE bans (
    target      TEXT PRIMARY KEY,
    until       INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    offences    INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL
);
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    event       TEXT NOT NULL,
    protocol    TEXT,
    ip          TEXT,
    username    TEXT,
    account_id  INTEGER,
    mechanism   TEXT,
    tls         TEXT,
    result      TEXT NOT NULL,
    reason      TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_account ON audit_log(account_id, ts);
CREATE INDEX audit_ip ON audit_log(ip, ts);
CREATE INDEX audit_user ON audit_log(username, ts);
