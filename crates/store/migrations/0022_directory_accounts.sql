-- v22: accounts provisioned from a directory (LDAP) at their first login: the directory's
-- name; their password is checked there, not against password_hash.
ALTER TABLE accounts ADD COLUMN directory TEXT;
