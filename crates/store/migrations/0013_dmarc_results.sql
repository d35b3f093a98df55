-- v13: DMARC results of inbound mail, counted per day, policy domain and distinct report row, for the aggregate reports (RFC 7489 7.2) sent to each domain's rua.
CREATE TABLE dmarc_results (
    day     INTEGER NOT NULL,
    domain  TEXT NOT NULL,
    rua     TEXT NOT NULL,
    policy  TEXT NOT NULL,
    record  TEXT NOT NULL,
    count   INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (day, domain, record)
);
