-- v10: DKIM keys (the private key is a sealed secret named dkim:DOMAIN:SELECTOR).
CREATE TABLE dkim_keys (
domain      TEXT NOT NULL,
selector    TEXT NOT NULL,
algorithm   TEXT NOT NULL,
public_key  TEXT NOT NULL,
active      INTEGER NOT NULL DEFAULT 0,
created_at  INTEGER NOT NULL,
PRIMARY KEY (domain, selector)
);
