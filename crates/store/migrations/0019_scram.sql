-- v19: SCRAM verifiers.
-- SCRAM-SHA-256 (RFC 5802, 7677): one salt and iteration count per account, shared by all of
-- its verifiers; a verifier (StoredKey || ServerKey, 64 bytes) for the account password (only
-- with [auth] scram_for_account_passwords) and one per app password.
ALTER TABLE accounts ADD COLUMN scram_salt BLOB;
ALTER TABLE accounts ADD COLUMN scram_iterations INTEGER;
ALTER TABLE accounts ADD COLUMN scram_verifier BLOB;
ALTER TABLE app_passwords ADD COLUMN scram_verifier BLOB;
