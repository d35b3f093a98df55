-- v17: incident response. An account locked by `postern incident lock` (incident_locked_at), and the time its live sessions were last revoked (the running server ends them within a second).
ALTER TABLE accounts ADD COLUMN incident_locked_at INTEGER;
ALTER TABLE accounts ADD COLUMN sessions_revoked_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX accounts_revoked ON accounts(sessions_revoked_at);
