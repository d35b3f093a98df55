-- v18: the highest UIDVALIDITY of a mailbox this account deleted, so that a mailbox created again
-- under a name in the same second still gets a larger UIDVALIDITY (RFC 3501 2.3.1.1).
ALTER TABLE accounts ADD COLUMN uidvalidity_floor INTEGER NOT NULL DEFAULT 0;
