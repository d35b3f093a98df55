-- v8: the internal secret store (sealed values only).
CREATE TABLE secrets (
name        TEXT PRIMARY KEY,
description TEXT NOT NULL DEFAULT '',
key_id      TEXT NOT NULL,
sealed      BLOB NOT NULL,
created_at  INTEGER NOT NULL,
updated_at  INTEGER NOT NULL
);
