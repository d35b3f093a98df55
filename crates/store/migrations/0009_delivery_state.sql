-- v9: delivery state per recipient, delay warnings.
ALTER TABLE queue_recipients ADD COLUMN last_error TEXT;
ALTER TABLE queue_recipients ADD COLUMN updated_at INTEGER;
ALTER TABLE queue ADD COLUMN warned INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS queue_due ON queue(status, next_attempt_at);
