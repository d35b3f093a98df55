-- v5: app passwords (generated secrets, stored as SHA-256 digests).
CREATE TABLE app_passwords (
id            INTEGER PRIMARY KEY,
account_id    INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
name          TEXT NOT NULL,
digest        TEXT NOT NULL,
protocols     TEXT NOT NULL,
networks      TEXT NOT NULL DEFAULT '',
expires_at    INTEGER,
created_at    INTEGER NOT NULL,
last_used_at  INTEGER,
last_used_ip  TEXT,
UNIQUE (account_id, name)
);
