-- v28: passkeys (WebAuthn credentials), a second factor beside TOTP. Only public data: the
-- credential id, the public key and its state (webauthn_rp's binary encodings), the user handle
-- the authenticator keeps (random, one per owner). An owner is `account:ID` or `admin:ID`, as
-- for second_factors; removing the second factor (reset, incident lock, account removal)
-- removes them too.
CREATE TABLE passkey_users (
    owner        TEXT PRIMARY KEY,
    user_handle  BLOB NOT NULL UNIQUE
);
CREATE TABLE passkeys (
    id             INTEGER PRIMARY KEY,
    owner          TEXT NOT NULL,
    credential_id  BLOB NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    static_state   BLOB NOT NULL,
    dynamic_state  BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    UNIQUE (owner, name)
);
CREATE INDEX passkeys_by_owner ON passkeys (owner);
