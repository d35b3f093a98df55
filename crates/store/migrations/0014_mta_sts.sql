-- v14: MTA-STS policies of recipient domains (RFC 8461 5.1), cached for their max_age so that a blocked fetch or a removed TXT record cannot downgrade delivery.
CREATE TABLE mta_sts_policies (
    domain      TEXT PRIMARY KEY,
    id          TEXT NOT NULL,
    policy      TEXT NOT NULL,
    fetched_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
