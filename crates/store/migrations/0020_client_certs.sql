-- v20: TLS client certificates registered to accounts (SASL EXTERNAL): the SHA-256 of the
-- certificate's public key (SubjectPublicKeyInfo), so a renewal with the same key keeps working.
CREATE TABLE client_certs (
    id           INTEGER PRIMARY KEY,
    account_id   INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    fingerprint  TEXT NOT NULL UNIQUE,
    not_after    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    last_used_ip TEXT,
    UNIQUE (account_id, name)
);
