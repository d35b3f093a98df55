-- v6: forced password change and password history (no reuse of the last N).
ALTER TABLE accounts ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
CREATE TABLE password_history (
account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
hash        TEXT NOT NULL,
replaced_at INTEGER NOT NULL
);
CREATE INDEX password_history_account ON password_history(account_id, replaced_at);
