-- v15: a DKIM key may live in the secret manager (OpenBao/Vault Transit key name); NULL = sealed in the internal store.
ALTER TABLE dkim_keys ADD COLUMN transit_key TEXT;
