-- v11: audit rows chained with an HMAC under a key sealed by the master key (keyed = 1); rows from before stay SHA-256 chained (keyed = 0) behind an `audit_keyed` marker. Who made a change gets its own column (`cli:root`, `api:alice`, `apikey:deploy`, `server:…`).
ALTER TABLE audit_log ADD COLUMN keyed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_log ADD COLUMN actor TEXT;
CREATE INDEX IF NOT EXISTS audit_event ON audit_log(event, ts);
