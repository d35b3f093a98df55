-- v24: \Recent (RFC 3501 2.3.2): the highest UID some read-write session of the mailbox has
-- been told about; messages above it are recent for the next session that selects it. Existing
-- messages are not recent.
ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 0;
UPDATE mailboxes SET recent_uid = uidnext - 1;
