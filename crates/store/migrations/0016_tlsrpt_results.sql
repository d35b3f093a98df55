-- v16: TLS outcomes with recipient domains' MX hosts, counted per day, for the daily TLS reports (RFC 8460) to each domain's _smtp._tls rua.
CREATE TABLE tlsrpt_results (
    day          INTEGER NOT NULL,
    domain       TEXT NOT NULL,
    policy_type  TEXT NOT NULL,
    policy       TEXT NOT NULL,
    mx           TEXT NOT NULL,
    result       TEXT NOT NULL,
    count        INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (day, domain, policy_type, mx, result)
);
