-- v12: greylisting state. A triplet is (client network, envelope sender, recipient); a network that
-- retried correctly and a sender domain that authenticated (SPF or aligned DKIM) are auto-allowed.
CREATE TABLE greylist (
    network     TEXT NOT NULL,
    sender      TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    passed      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (network, sender, recipient)
) WITHOUT ROWID;
CREATE INDEX greylist_seen ON greylist(last_seen);
CREATE TABLE greylist_allow (
    kind        TEXT NOT NULL CHECK (kind IN ('network', 'domain')),
    value       TEXT NOT NULL,
    passes      INTEGER NOT NULL DEFAULT 0,
    last_seen   INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
