-- v26: QRESYNC (RFC 7162 3.2.5): each expunged UID with the MODSEQ of its expunge, so that a
-- client coming back with the MODSEQ it last saw learns exactly what vanished since. Expunges
-- before this version were not recorded: `vanished_floor` is the MODSEQ below which the list is
-- incomplete (a client older than that is told every UID it may know that no longer exists).
CREATE TABLE vanished (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    modseq     INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX vanished_by_modseq ON vanished (mailbox_id, modseq);
ALTER TABLE mailboxes ADD COLUMN vanished_floor INTEGER NOT NULL DEFAULT 0;
UPDATE mailboxes SET vanished_floor = highest_modseq;
