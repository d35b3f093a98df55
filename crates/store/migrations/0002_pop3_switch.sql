-- v2: per-account POP3 switch ("prefer IMAP over POP3").
ALTER TABLE accounts ADD COLUMN pop3_enabled INTEGER NOT NULL DEFAULT 1;
