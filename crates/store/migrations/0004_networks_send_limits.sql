-- v4: per-account allowed networks (comma-separated CIDRs; empty = anywhere) and send limit overrides (NULL: the [smtp] defaults).
ALTER TABLE accounts ADD COLUMN allowed_networks TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN send_messages_per_hour INTEGER;
ALTER TABLE accounts ADD COLUMN send_recipients_per_hour INTEGER;
