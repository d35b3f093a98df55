-- v21: where each account has logged in from (source network and client), for new-sign-in
-- notices: a login from a pair not seen within [notify] known_days tells the account's owner.
CREATE TABLE signin_sources (
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    network    TEXT NOT NULL,
    client     TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (account_id, network, client)
);
