-- v27: sessions of the self-service web portal (/account): a mail user logged in with password
-- (and second factor). The cookie's token is stored only as its SHA-256 digest; the CSRF token
-- of the session's forms beside it. An incident lock (sessions_revoked_at) or a disabled account
-- ends them.
CREATE TABLE web_sessions (
    digest      TEXT PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    csrf        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    ip          TEXT NOT NULL
);
CREATE INDEX web_sessions_by_account ON web_sessions (account_id);
