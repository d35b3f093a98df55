-- v25: storage quotas (RFC 9208 STORAGE): NULL = the server's default ([storage]
-- default_quota_mb), 0 = no limit, otherwise a limit in bytes on the sum of the account's
-- message sizes.
ALTER TABLE accounts ADD COLUMN quota_bytes INTEGER;
