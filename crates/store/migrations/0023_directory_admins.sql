-- v23: administrators that come from a directory (LDAP): the directory's name; their password
-- is checked there and their role follows their groups at each login.
ALTER TABLE admins ADD COLUMN directory TEXT;
