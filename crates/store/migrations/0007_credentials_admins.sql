-- v7: applications, second factors, recovery codes, administrators, sessions, API keys.
-- v7: application credentials, second factors (TOTP), recovery codes, administrators, admin
-- sessions and API keys.

-- An application may only submit mail, as its allowed senders. Its secret is generated and
-- stored as a SHA-256 digest; during a rotation the previous digest works until old_valid_until.
CREATE TABLE applications (
    id                       INTEGER PRIMARY KEY,
    name                     TEXT NOT NULL UNIQUE,
    digest                   TEXT NOT NULL,
    old_digest               TEXT,
    old_valid_until          INTEGER,
    allow_from               TEXT NOT NULL,
    networks                 TEXT NOT NULL DEFAULT '',
    send_messages_per_hour   INTEGER,
    send_recipients_per_hour INTEGER,
    expires_at               INTEGER,
    disabled                 INTEGER NOT NULL DEFAULT 0,
    created_at               INTEGER NOT NULL,
    rotated_at               INTEGER,
    last_used_at             INTEGER,
    last_used_ip             TEXT
);

-- TOTP (RFC 6238) seeds, sealed (never stored in clear). owner: 'account:ID' or 'admin:ID'.
-- last_step: the last time step accepted, so that a code is never accepted twice.
CREATE TABLE second_factors (
    owner         TEXT PRIMARY KEY,
    sealed_secret BLOB NOT NULL,
    confirmed     INTEGER NOT NULL DEFAULT 0,
    last_step     INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

-- One-time recovery codes, as keyed digests.
CREATE TABLE recovery_codes (
    owner    TEXT NOT NULL,
    digest   TEXT NOT NULL,
    used_at  INTEGER,
    PRIMARY KEY (owner, digest)
);

-- Administrators of the admin API. No built-in one: `postern admin bootstrap` creates the first.
CREATE TABLE admins (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    domains        TEXT NOT NULL DEFAULT '',
    disabled       INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL
);

-- Admin API sessions (bearer tokens, stored as SHA-256 digests). kind 'session' is a logged-in
-- session; 'enroll' only lets a first login finish its TOTP enrolment.
CREATE TABLE admin_sessions (
    digest      TEXT PRIMARY KEY,
    admin_id    INTEGER NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    ip          TEXT NOT NULL
);

-- API keys for automation: a role and scope, a digest, an expiry.
CREATE TABLE api_keys (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    digest        TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    domains       TEXT NOT NULL DEFAULT '',
    expires_at    INTEGER,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    last_used_at  INTEGER
);
