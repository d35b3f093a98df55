"""IMAP4rev2 (RFC 9051) beside IMAP4rev1, SEARCHRES (RFC 5182), UTF8=ACCEPT (RFC 6855) and
LITERAL- (RFC 7888) on the wire: what ENABLE IMAP4rev2 changes for the session that asks (no
\\Recent, ESEARCH for every SEARCH, a LIST line at SELECT, UTF-8 mailbox names) while an
IMAP4rev1 session on the same mailbox keeps the old rules; `$` after SEARCH RETURN (SAVE) in
FETCH, STORE, COPY, MOVE, UID EXPUNGE and SEARCH; UTF-8 names and APPEND UTF8 with Python's
imaplib, a real client that speaks UTF8=ACCEPT."""
import imaplib
import re

from conftest import BOB, BOB_PW, tls_client_context
from test_imap import raw_login


def ok(r, tag, cmd):
    r.send(f"{tag} {cmd}\r\n".encode())
    got = r.until_tagged(tag)
    assert got[-1].startswith(f"{tag} OK"), got
    return got


def append(r, box, subjects, flags=""):
    for s in subjects:
        body = f"Subject: {s}\r\nFrom: a@example.test\r\n\r\nbody of {s}\r\n".encode()
        r.send(b"ap APPEND %s %s{%d+}\r\n" % (box.encode(), flags.encode(), len(body)) + body + b"\r\n")
        assert r.until_tagged("ap")[-1].startswith("ap OK")


def test_capabilities(server):
    a = raw_login(server)
    caps = ok(a, "c", "CAPABILITY")[0].split()
    for cap in ("IMAP4rev1", "IMAP4rev2", "ENABLE", "ESEARCH", "SEARCHRES", "UTF8=ACCEPT",
                "LIST-EXTENDED", "LIST-STATUS", "BINARY", "SPECIAL-USE", "STATUS=SIZE",
                "MOVE", "IDLE", "NAMESPACE", "UIDPLUS", "UNSELECT", "SASL-IR"):
        assert cap in caps, caps
    # LITERAL+ is a superset of LITERAL- (RFC 7888 4): one of the two, never both
    assert "LITERAL+" in caps and "LITERAL-" not in caps


def test_enable_imap4rev2_changes_only_that_session(server):
    old = raw_login(server)
    ok(old, "m", "CREATE Rev2")
    ok(old, "m2", "CREATE Rev2/Child")
    append(old, "Rev2", ["one", "two"], "(\\Seen) ")
    append(old, "Rev2", ["three"])
    new = raw_login(server)
    got = ok(new, "e", "ENABLE IMAP4rev2")
    assert "* ENABLED IMAP4rev2" in got, got
    # a second ENABLE names nothing new
    assert "* ENABLED" in ok(new, "e2", "ENABLE IMAP4rev2")
    sel = ok(new, "s", "SELECT Rev2")
    # RFC 9051 6.3.2: FLAGS, EXISTS, the LIST line with accurate attributes, no RECENT and no
    # UNSEEN code
    assert "* 3 EXISTS" in sel, sel
    assert '* LIST (\\HasChildren) "/" "Rev2"' in sel, sel
    assert not any("RECENT" in l or "[UNSEEN" in l for l in sel), sel
    f = ok(new, "f", "FETCH 1:* (FLAGS)")
    assert not any("\\Recent" in l for l in f), f
    # every SEARCH answers ESEARCH, ALL when RETURN was not given
    got = ok(new, "k", "SEARCH UNSEEN")
    assert '* ESEARCH (TAG "k") ALL 3' in got and not any(l.startswith("* SEARCH") for l in got), got
    got = ok(new, "u", "UID SEARCH ALL")
    assert '* ESEARCH (TAG "u") UID ALL 1:3' in got, got
    got = ok(new, "n", "SEARCH SUBJECT nothing-matches")
    assert '* ESEARCH (TAG "n")' in got, got
    # the IMAP4rev1 session (which claimed nothing yet) still gets \Recent and SEARCH
    sel = ok(old, "s", "SELECT Rev2")
    assert "* 3 RECENT" in sel and "* OK [UNSEEN 3] First unseen" in sel, sel
    assert not any(l.startswith("* LIST") for l in sel), sel
    assert "* SEARCH 3" in ok(old, "k", "SEARCH UNSEEN")
    # a new message: EXISTS without RECENT for the IMAP4rev2 session, with it for the other
    append(old, "Rev2", ["four"])
    got = ok(new, "p", "NOOP")
    assert "* 4 EXISTS" in got and not any("RECENT" in l for l in got), got
    # selecting another mailbox tells [CLOSED]
    got = ok(new, "s2", "SELECT INBOX")
    assert got[0] == "* OK [CLOSED] Previous mailbox is now closed", got
    assert '* LIST (\\HasNoChildren) "/" INBOX' in got or '* LIST (\\HasNoChildren) "/" "INBOX"' in got, got
    ok(old, "d", "DELETE Rev2/Child")


def test_searchres_saved_result_in_later_commands(server):
    a = raw_login(server)
    ok(a, "m", "CREATE Saved")
    ok(a, "m2", "CREATE SavedCopy")
    append(a, "Saved", ["a1", "b2", "a3", "b4", "a5"])
    ok(a, "s", "SELECT Saved")
    # before any SAVE, `$` names nothing: success, no data
    got = ok(a, "f0", "FETCH $ (UID)")
    assert got == ["f0 OK FETCH completed"], got
    # SAVE alone answers no ESEARCH
    got = ok(a, "k", 'SEARCH RETURN (SAVE) SUBJECT "a"')
    assert not any(l.startswith("* ESEARCH") or l.startswith("* SEARCH") for l in got), got
    got = ok(a, "f", "FETCH $ (UID)")
    assert [l for l in got if "FETCH" in l and l.startswith("*")] == [
        "* 1 FETCH (UID 1)", "* 3 FETCH (UID 3)", "* 5 FETCH (UID 5)"], got
    # UID STORE $ and a SEARCH that uses `$` as a key (bare and after UID)
    ok(a, "t", "UID STORE $ +FLAGS.SILENT (\\Flagged)")
    assert "* SEARCH 1 3 5" in ok(a, "q", "SEARCH FLAGGED")
    assert "* SEARCH 3 5" in ok(a, "q2", "SEARCH $ NOT UID 1")
    assert "* SEARCH 5" in ok(a, "q3", "UID SEARCH UID $ SUBJECT a5")
    # COPY $ copies the saved messages
    got = ok(a, "c", "COPY $ SavedCopy")
    assert "[COPYUID" in got[-1], got
    assert "MESSAGES 3" in ok(a, "st", "STATUS SavedCopy (MESSAGES)")[0]
    # SAVE with MIN and MAX alone keeps only those two
    got = ok(a, "k2", 'SEARCH RETURN (SAVE MIN MAX) SUBJECT "a"')
    assert '* ESEARCH (TAG "k2") MIN 1 MAX 5' in got, got
    got = ok(a, "f2", "UID FETCH $ (FLAGS)")
    assert [re.search(r"UID (\d+)", l).group(1) for l in got if l.startswith("* ")] == ["1", "5"], got
    # an expunged message leaves the saved result
    ok(a, "d", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    ok(a, "x", "EXPUNGE")
    got = ok(a, "f3", "FETCH $ (UID)")
    assert [l for l in got if l.startswith("* ")] == ["* 4 FETCH (UID 5)"], got
    # MOVE $, then UID EXPUNGE $ on an empty result does nothing
    got = ok(a, "mv", "MOVE $ SavedCopy")
    assert any("EXPUNGE" in l for l in got), got
    ok(a, "k3", "SEARCH RETURN (SAVE) SUBJECT nothing")
    got = ok(a, "ue", "UID EXPUNGE $")
    assert got == ["ue OK EXPUNGE completed"], got
    # a SEARCH that fails empties the result; SELECT does too
    ok(a, "k4", "SEARCH RETURN (SAVE) ALL")
    a.send(b"k5 SEARCH RETURN (SAVE) CHARSET KOI8-R ALL\r\n")
    assert "BADCHARSET" in a.until_tagged("k5")[-1]
    assert ok(a, "f4", "FETCH $ (UID)") == ["f4 OK FETCH completed"]
    ok(a, "k6", "SEARCH RETURN (SAVE) ALL")
    ok(a, "s2", "SELECT Saved")
    assert ok(a, "f5", "FETCH $ (UID)") == ["f5 OK FETCH completed"]
    # `$` inside a quoted string is text, not the saved result
    assert "* SEARCH" in ok(a, "q4", 'SEARCH SUBJECT "$"')


def test_utf8_accept_with_imaplib(server):
    """Python's imaplib switches to UTF-8 after ENABLE UTF8=ACCEPT: names go and come back in
    UTF-8, while an IMAP4rev1 session sees the same mailbox in modified UTF-7."""
    c = imaplib.IMAP4_SSL("127.0.0.1", server.imaps, ssl_context=tls_client_context())
    c.login(BOB, BOB_PW)
    typ, data = c.enable("UTF8=ACCEPT")
    assert typ == "OK", data
    assert b"UTF8=ACCEPT" in c.response("ENABLED")[1][0]
    assert c.utf8_enabled
    typ, _ = c.create('"Entwürfe/Été"')
    assert typ == "OK"
    typ, data = c.list('""', '"Entw*"')
    names = [d.decode() for d in data]
    assert any(n.endswith('"Entwürfe"') for n in names), names
    assert any(n.endswith('"Entwürfe/Été"') for n in names), names
    typ, data = c.select('"Entwürfe/Été"')
    assert typ == "OK", data
    typ, data = c.status('"Entwürfe"', "(MESSAGES)")
    assert typ == "OK" and data[0].decode().startswith('"Entwürfe" (MESSAGES 0)'), data
    c.logout()
    old = raw_login(server)
    got = ok(old, "l", 'LIST "" "Entw*"')
    assert '* LIST (\\HasChildren) "/" "Entw&APw-rfe"' in got, got
    assert '* LIST (\\HasNoChildren) "/" "Entw&APw-rfe/&AMk-t&AOk-"' in got, got
    # an IMAP4rev1 name with "&" is modified UTF-7; in UTF-8 mode it is a plain ampersand
    u = raw_login(server)
    ok(u, "e", "ENABLE UTF8=ACCEPT")
    ok(u, "c", 'CREATE "R&D"')
    assert '* LIST (\\HasNoChildren) "/" "R&-D"' in ok(old, "l2", 'LIST "" "R*"')
    ok(old, "d", 'DELETE "R&-D"')


def test_append_utf8_literal(server):
    """RFC 6855 4: APPEND with `UTF8 (~{n}...)` stores the message as sent (UTF-8 headers); the
    form is refused before ENABLE UTF8=ACCEPT."""
    a = raw_login(server)
    ok(a, "m", "CREATE Intl")
    msg = "Subject: Grüße aus Köln\r\nFrom: Jürgen <jürgen@example.test>\r\n\r\nHallo\r\n".encode()
    a.send(b"x APPEND Intl UTF8 (~{%d+}\r\n" % len(msg) + msg + b")\r\n")
    assert a.until_tagged("x")[-1].startswith("x BAD"), "UTF8 APPEND before ENABLE"
    ok(a, "e", "ENABLE UTF8=ACCEPT")
    a.send(b"y APPEND Intl (\\Seen) UTF8 (~{%d}\r\n" % len(msg))
    assert a.line().startswith("+")
    a.send(msg + b")\r\n")
    got = a.until_tagged("y")
    assert got[-1].startswith("y OK [APPENDUID"), got
    ok(a, "s", "SELECT Intl")
    a.send(b"f FETCH 1 (FLAGS BODY.PEEK[])\r\n")
    head = a.line()
    assert head.startswith("* 1 FETCH (FLAGS (\\Seen \\Recent) BODY[] {%d}" % len(msg)), head
    raw = a.buf
    while len(raw) < len(msg):
        raw += a.sock.recv(65536)
    assert raw[: len(msg)] == msg
    a.buf = raw[len(msg):]
    assert a.until_tagged("f")[-1].startswith("f OK")


def test_literal_minus_sized_literal(server):
    """LITERAL- (RFC 7888): a non-synchronizing literal of up to 4096 octets is accepted without
    a continuation request (LITERAL+ covers it, with any size up to the caps)."""
    a = raw_login(server)
    name = "L" * 3000
    a.send(b"c CREATE {%d+}\r\n%s\r\n" % (len(name), name.encode()))
    got = a.until_tagged("c")
    # a name this long is refused by the name rules, but the literal was read in one go
    assert got[-1].startswith("c NO") or got[-1].startswith("c OK"), got
    body = b"Subject: lit\r\n\r\n" + b"x" * 4000 + b"\r\n"
    a.send(b"a APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
    assert a.until_tagged("a")[-1].startswith("a OK")
