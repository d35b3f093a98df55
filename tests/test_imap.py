"""IMAP on 143 (STARTTLS) and 993 (implicit TLS) with real clients: imaplib, imapclient, curl,
mbsync; several sessions on one mailbox; hostile input."""
import imaplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import ALICE, ALICE_PW, BOB, BOB_PW, CAROL, CAROL_PW, plain_b64, send_until_reply, tls_client_context

MSG = (
    "From: Alice <alice@example.test>\r\n"
    "To: Bob <bob@example.test>\r\n"
    "Subject: end to end\r\n"
    "Message-ID: <e2e@example.test>\r\n"
    "Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
    "\r\n"
    "Hello Bob,\r\n"
    ".a dotted line\r\n"
    "bye\r\n"
)

MULTIPART = (
    b"From: a@example.test\r\nTo: bob@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n"
    b"--XX\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\n\r\nAAEC\r\n"
    b"--XX--\r\n"
)


def flat(data):
    """All bytes of an imaplib FETCH answer (tuples hold the literal), joined."""
    out = b""
    for d in data:
        out += b"".join(d) if isinstance(d, tuple) else (d or b"")
    return out


def imaps(server, user=BOB, pw=BOB_PW):
    m = imaplib.IMAP4_SSL("127.0.0.1", server.imaps, ssl_context=tls_client_context(), timeout=15)
    m.login(user, pw)
    return m


def send(server, msg=MSG, to=BOB):
    with smtplib.SMTP("127.0.0.1", server.submission, timeout=10) as s:
        s.starttls(context=tls_client_context())
        s.login(ALICE, ALICE_PW)
        s.sendmail(ALICE, [to], msg)


class RawImap:
    def __init__(self, port, tls=False, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            self.sock = tls_client_context().wrap_socket(self.sock)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def until_tagged(self, tag):
        lines = []
        while True:
            l = self.line()
            lines.append(l)
            if l.startswith(tag + " ") or l.startswith("* BYE"):
                return lines

    def closed(self, timeout=10):
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, ssl.SSLError):
            return True
        except socket.timeout:
            return False


# ---------------------------------------------------------------- TLS rules

def test_no_credentials_before_starttls(server):
    m = imaplib.IMAP4("127.0.0.1", server.imap, timeout=10)
    caps = m.capabilities
    assert "LOGINDISABLED" in caps and "STARTTLS" in caps
    assert not any(c.startswith("AUTH=") for c in caps)
    with pytest.raises(imaplib.IMAP4.error):
        m.login(BOB, BOB_PW)
    m.starttls(ssl_context=tls_client_context())
    assert "AUTH=PLAIN" in m.capabilities and "LOGINDISABLED" not in m.capabilities
    assert m.login(BOB, BOB_PW)[0] == "OK"
    m.logout()


def test_authenticate_refused_in_clear_and_plain_with_sasl_ir_after_tls(server):
    r = RawImap(server.imap)
    assert r.line().startswith("* OK")
    r.send(f"a AUTHENTICATE PLAIN {plain_b64(BOB, BOB_PW)}\r\n".encode())
    assert r.line().startswith("a NO [PRIVACYREQUIRED]")
    r2 = RawImap(server.imaps, tls=True)
    assert r2.line().startswith("* OK")
    r2.send(f"b AUTHENTICATE PLAIN {plain_b64(BOB, BOB_PW)}\r\n".encode())
    assert r2.until_tagged("b")[-1].startswith("b OK")
    # without SASL-IR: continuation then the response line
    r3 = RawImap(server.imaps, tls=True)
    r3.line()
    r3.send(b"c AUTHENTICATE PLAIN\r\n")
    assert r3.line().startswith("+")
    r3.send(plain_b64(BOB, BOB_PW).encode() + b"\r\n")
    assert r3.until_tagged("c")[-1].startswith("c OK")


def test_failures_are_uniform_and_capped(server):
    replies = []
    for user, pw in ((BOB, "wrong-password-1"), ("nobody@example.test", "wrong-password-1"), (CAROL, CAROL_PW)):
        r = RawImap(server.imaps, tls=True)
        r.line()
        r.send(f'a LOGIN "{user}" "{pw}"\r\n'.encode())
        replies.append(r.line())
    assert replies[0] == replies[1] == replies[2] == "a NO [AUTHENTICATIONFAILED] Authentication failed"
    r = RawImap(server.imaps, tls=True)
    r.line()
    for i in range(3):
        r.send(f'{i} LOGIN "{BOB}" "bad-{i}"\r\n'.encode())
        assert r.line().startswith(f"{i} NO")
    assert r.line().startswith("* BYE")
    assert r.closed()
    log = server.log()
    assert "wrong-password-1" not in log and "bad-0" not in log and BOB_PW not in log


# ---------------------------------------------------------------- end to end

def test_smtp_to_imap_byte_for_byte(server):
    send(server)
    stored = server.inbox(BOB)[-1]
    m = imaps(server)
    typ, data = m.select("INBOX")
    n = int(data[0])
    typ, data = m.fetch(str(n), "(BODY.PEEK[] RFC822.SIZE FLAGS)")
    assert data[0][1] == stored
    assert f"RFC822.SIZE {len(stored)}".encode() in flat(data)
    assert b"\\Seen" not in flat(data)
    # BODY[] (not PEEK) sets \Seen and reports it
    typ, data = m.fetch(str(n), "(BODY[TEXT])")
    assert data[0][1] == b"Hello Bob,\r\n.a dotted line\r\nbye\r\n"
    assert b"\\Seen" in flat(data)
    typ, data = m.fetch(str(n), "(ENVELOPE)")
    env = flat(data)
    assert b'"end to end"' in env and b'"<e2e@example.test>"' in env and b'("Bob" NIL "bob" "example.test")' in env
    m.logout()


def test_imapclient_folders_append_search_flags_move_expunge(server):
    imapclient = pytest.importorskip("imapclient")
    c = imapclient.IMAPClient("127.0.0.1", port=server.imaps, ssl=True, ssl_context=tls_client_context(), timeout=15)
    c.login(BOB, BOB_PW)
    folders = {name: flags for flags, _d, name in c.list_folders()}
    for name, use in (("Sent", b"\\Sent"), ("Drafts", b"\\Drafts"), ("Trash", b"\\Trash"),
                      ("Junk", b"\\Junk"), ("Archive", b"\\Archive")):
        assert use in folders[name], (name, folders[name])
    assert "INBOX" in folders
    c.create_folder("Lists/rust")
    assert c.folder_exists("Lists/rust") and c.folder_exists("Lists")
    c.select_folder("Lists/rust")
    r1 = c.append("Lists/rust", MULTIPART, flags=[b"$Important"])
    r2 = c.append("Lists/rust", b"Subject: second\r\nFrom: x@example.test\r\n\r\nneedle in body\r\n")
    assert b"APPENDUID" in r1 and b"APPENDUID" in r2
    c.noop()
    uids = c.search(["ALL"])
    assert len(uids) == 2 and uids[0] < uids[1]
    assert c.search(["BODY", "needle"]) == [uids[1]]
    assert c.search(["SUBJECT", "PARTS"]) == [uids[0]]
    assert c.search(["KEYWORD", "$Important"]) == [uids[0]]
    assert c.search(["OR", "SUBJECT", "second", "LARGER", "100000"]) == [uids[1]]
    assert c.search(["NOT", "SUBJECT", "second"]) == [uids[0]]
    bs = c.fetch([uids[0]], ["BODYSTRUCTURE", "BODY.PEEK[2]", "BODY.PEEK[1.MIME]", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])[uids[0]]
    assert bs[b"BODY[2]"] == b"AAEC"
    assert bs[b"BODY[1.MIME]"].startswith(b"Content-Type: text/plain")
    assert bs[b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: parts\r\n\r\n"
    assert bs[b"BODYSTRUCTURE"].is_multipart
    c.add_flags([uids[1]], [b"\\Flagged"])
    assert c.search(["FLAGGED"]) == [uids[1]]
    c.move([uids[1]], "Archive")
    assert c.search(["ALL"]) == [uids[0]]
    c.set_flags([uids[0]], [b"\\Deleted"])
    c.expunge()
    assert c.search(["ALL"]) == []
    st = c.folder_status("Archive", ["MESSAGES", "UIDNEXT", "UIDVALIDITY"])
    assert st[b"MESSAGES"] >= 1
    c.rename_folder("Lists", "Groups")
    assert c.folder_exists("Groups/rust") and not c.folder_exists("Lists/rust")
    c.unselect_folder() if hasattr(c, "unselect_folder") else c.close_folder()
    c.delete_folder("Groups/rust")
    c.delete_folder("Groups")
    assert not c.folder_exists("Groups")
    c.logout()


def test_uids_strictly_ascending_and_never_reused(server):
    m = imaps(server)
    m.create("Seq")
    m.select("Seq")
    uids = []
    for i in range(3):
        typ, data = m.append("Seq", None, None, f"Subject: {i}\r\n\r\nx\r\n".encode())
        uids.append(int(data[0].split()[2].rstrip(b"]")))
    m.store("1:*", "+FLAGS", "(\\Deleted)")
    m.expunge()
    typ, data = m.append("Seq", None, None, b"Subject: again\r\n\r\nx\r\n")
    new = int(data[0].split()[2].rstrip(b"]"))
    assert uids == sorted(uids) and len(set(uids)) == 3 and new > uids[-1]
    m.logout()


# ---------------------------------------------------------------- several sessions

def test_sessions_see_each_others_changes_noop_and_idle(server):
    a = imaps(server)
    b = imaps(server)
    a.create("Shared")
    a.select("Shared")
    b.select("Shared")
    a.append("Shared", None, None, b"Subject: one\r\n\r\n1\r\n")
    b.response("EXISTS")  # forget the EXISTS of SELECT
    b.noop()
    assert b.response("EXISTS")[1][-1] == b"1"
    # flag change by A is reported to B as FETCH FLAGS
    a.store("1", "+FLAGS", "(\\Flagged)")
    b.noop()
    fetches = b.response("FETCH")[1]
    assert any(b"\\Flagged" in f for f in fetches if f), fetches
    # IDLE in a raw session sees a delivery from another session without polling
    r = RawImap(server.imaps, tls=True)
    r.line()
    r.send(f'a LOGIN "{BOB}" "{BOB_PW}"\r\n'.encode())
    r.until_tagged("a")
    r.send(b"b SELECT Shared\r\n")
    r.until_tagged("b")
    r.send(b"c IDLE\r\n")
    assert r.line().startswith("+")
    t0 = time.time()
    a.append("Shared", None, None, b"Subject: two\r\n\r\n2\r\n")
    assert r.line() == "* 2 EXISTS"
    assert time.time() - t0 < 5
    # expunge by A shows up as EXPUNGE during IDLE
    a.store("1", "+FLAGS", "(\\Deleted)")
    a.expunge()
    lines = []
    while "* 1 EXPUNGE" not in lines and len(lines) < 5:
        lines.append(r.line())
    assert "* 1 EXPUNGE" in lines, lines
    r.send(b"DONE\r\n")
    assert r.until_tagged("c")[-1].startswith("c OK")
    a.logout()
    b.logout()


def raw_login(server):
    r = RawImap(server.imaps, tls=True)
    r.line()
    r.send(f'a LOGIN "{BOB}" "{BOB_PW}"\r\n'.encode())
    assert r.until_tagged("a")[-1].startswith("a OK")
    return r


def test_keywords_are_announced_before_use_rfc3501_7_2_6(server):
    """A keyword set by STORE reaches every session with the mailbox selected as an untagged FLAGS
    and PERMANENTFLAGS listing it, before the FETCH that shows it: in the session that set it,
    in another one on its next command, and in one in IDLE. SELECT lists the keywords in use;
    EXAMINE permits no permanent flag."""
    a, b = raw_login(server), raw_login(server)
    a.send(b"c CREATE Kw\r\n")
    assert a.until_tagged("c")[-1].startswith("c OK")
    body = b"Subject: k\r\n\r\nbody\r\n"
    a.send(b"d APPEND Kw {%d}\r\n" % len(body))
    assert a.line().startswith("+")
    a.send(body + b"\r\n")
    assert a.until_tagged("d")[-1].startswith("d OK")
    for r in (a, b):
        r.send(b"s SELECT Kw\r\n")
        sel = r.until_tagged("s")
        assert "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)" in sel, sel
    c = raw_login(server)
    c.send(b"s SELECT Kw\r\n")
    c.until_tagged("s")
    c.send(b"i IDLE\r\n")
    assert c.line().startswith("+")
    # A sets a new keyword: FLAGS, then PERMANENTFLAGS, then the FETCH, in A's own answer
    a.send(b"e STORE 1 +FLAGS ($Label1)\r\n")
    got = a.until_tagged("e")
    assert got[-1].startswith("e OK"), got
    flags_at = [i for i, l in enumerate(got) if l.startswith("* FLAGS") and "$Label1" in l]
    perm_at = [i for i, l in enumerate(got) if "PERMANENTFLAGS" in l and "$Label1" in l and "\\*" in l]
    fetch_at = [i for i, l in enumerate(got) if "FETCH" in l and "$Label1" in l]
    assert flags_at and perm_at and fetch_at and flags_at[0] < perm_at[0] < fetch_at[0], got
    # B, on its next command
    b.send(b"n NOOP\r\n")
    got = b.until_tagged("n")
    flags_at = [i for i, l in enumerate(got) if l.startswith("* FLAGS") and "$Label1" in l]
    fetch_at = [i for i, l in enumerate(got) if "FETCH" in l and "$Label1" in l]
    assert flags_at and fetch_at and flags_at[0] < fetch_at[0], got
    # C, in IDLE, without a command
    lines = []
    while not any("FETCH" in l for l in lines) and len(lines) < 6:
        lines.append(c.line())
    assert lines[0].startswith("* FLAGS") and "$Label1" in lines[0], lines
    c.send(b"DONE\r\n")
    c.until_tagged("i")
    # a keyword already announced is not announced again; a silent STORE still announces a new one
    a.send(b"f STORE 1 +FLAGS.SILENT ($Label1 $hello)\r\n")
    got = a.until_tagged("f")
    assert [l for l in got if l.startswith("* FLAGS")] and all("FETCH" not in l for l in got), got
    b.send(b"g NOOP\r\n")
    got = b.until_tagged("g")
    assert len([l for l in got if l.startswith("* FLAGS")]) == 1 and "$hello" in got[0], got
    # SELECT lists the keywords in use; EXAMINE permits no permanent flag
    b.send(b"h EXAMINE Kw\r\n")
    got = b.until_tagged("h")
    assert any(l.startswith("* FLAGS") and "$Label1" in l and "$hello" in l for l in got), got
    assert "* OK [PERMANENTFLAGS ()] Read-only mailbox" in got, got
    for r in (a, b, c):
        r.send(b"z LOGOUT\r\n")


def test_search_sent_dates_and_decoded_addresses_rfc3501_6_4_4(server):
    """SENTON/SENTBEFORE/SENTSINCE compare the Date: header's own date, disregarding time and
    timezone; FROM/CC match decoded display names and group members."""
    m = imaps(server)
    m.create("Dates")
    msg = (b"Date: Mon, 30 Nov 2026 23:30:00 -0500\r\n"
           b"From: =?utf-8?q?J=C3=B6rg?= <jo@example.test>\r\n"
           b"To: undisclosed-recipients:;\r\n"
           b"Cc: Team: ann@example.test, Bob <bob@example.test>;\r\n"
           b"Subject: late\r\n\r\nx\r\n")
    m.append("Dates", None, None, msg)
    m.select("Dates")
    assert m.search(None, "SENTON", "30-Nov-2026")[1] == [b"1"]
    assert m.search(None, "SENTSINCE", "1-Dec-2026")[1] == [b""]
    assert m.search(None, "SENTBEFORE", "1-Dec-2026")[1] == [b"1"]
    m.literal = "Jörg".encode()
    assert m.search("UTF-8", "FROM")[1] == [b"1"]
    assert m.search(None, "CC", "Team")[1] == [b"1"]
    assert m.search(None, "CC", "ann@example.test")[1] == [b"1"]
    assert m.search(None, "FROM", "nobody")[1] == [b""]
    m.logout()


def test_lsub_parent_noselect_rfc3501_6_3_9(server):
    """LSUB lists subscribed names only; where % stops at a parent that is not subscribed but has
    a subscribed child, the parent comes back as \\Noselect, once; * lists the child itself."""
    r = raw_login(server)
    for i, cmd in enumerate([b"CREATE Lp/kid", b"CREATE Lp/other", b"UNSUBSCRIBE Lp", b"UNSUBSCRIBE Lp/other",
                             b"SUBSCRIBE Lp/kid"]):
        r.send(b"c%d %s\r\n" % (i, cmd))
        assert r.until_tagged("c%d" % i)[-1].startswith("c%d OK" % i)

    def lsub(pattern):
        r.send(b'l LSUB "" "%s"\r\n' % pattern)
        got = r.until_tagged("l")
        assert got[-1].startswith("l OK"), got
        return [l for l in got[:-1] if "Lp" in l]

    top = lsub(b"%")
    assert len(top) == 1 and top[0].startswith("* LSUB (\\Noselect)") and top[0].split()[-1].strip('"') == "Lp", top
    deep = lsub(b"Lp/*")
    assert len(deep) == 1 and deep[0].startswith("* LSUB ()") and deep[0].split()[-1].strip('"') == "Lp/kid", deep
    # once the parent is subscribed it is listed as itself
    r.send(b"s SUBSCRIBE Lp\r\n")
    r.until_tagged("s")
    top = lsub(b"%")
    assert len(top) == 1 and top[0].startswith("* LSUB ()"), top
    r.send(b"z LOGOUT\r\n")


def test_trycreate_and_create_with_trailing_delimiter_rfc3501_6_3(server):
    r = raw_login(server)
    # APPEND and COPY to a missing mailbox: NO [TRYCREATE] (6.3.11, 6.4.7)
    body = b"Subject: x\r\n\r\nx\r\n"
    r.send(b"b APPEND Missing {%d}\r\n" % len(body))
    got = r.line()
    if got.startswith("+"):
        r.send(body + b"\r\n")
        got = r.until_tagged("b")[-1]
    assert got.startswith("b NO [TRYCREATE]"), got
    r.send(b"c SELECT INBOX\r\n")
    r.until_tagged("c")
    r.send(b"d UID COPY 1:* Missing\r\n")
    assert r.until_tagged("d")[-1].startswith("d NO [TRYCREATE]")
    # CREATE with a trailing delimiter creates the name without it (6.3.3)
    r.send(b"e CREATE Parent/\r\n")
    assert r.until_tagged("e")[-1].startswith("e OK")
    r.send(b'f LIST "" "Parent*"\r\n')
    got = r.until_tagged("f")
    assert [l for l in got if l.startswith("* LIST") and (l.endswith('"Parent"') or l.endswith(" Parent"))], got
    r.send(b"g CREATE Parent/Child\r\n")
    assert r.until_tagged("g")[-1].startswith("g OK")
    r.send(b"h CREATE Parent/\r\n")
    assert r.until_tagged("h")[-1].startswith("h NO [ALREADYEXISTS]")
    r.send(b"z LOGOUT\r\n")


# ---------------------------------------------------------------- hostile input

def test_command_before_greeting_is_refused(server):
    s = socket.create_connection(("127.0.0.1", server.imap), timeout=10)
    s.sendall(b"a LOGIN x y\r\n")
    time.sleep(0.3)
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    assert b"BYE" in data and b"* OK" not in data


def test_literal_caps(server):
    r = RawImap(server.imaps, tls=True)
    r.line()
    r.send(f'a LOGIN "{BOB}" "{BOB_PW}"\r\n'.encode())
    r.until_tagged("a")
    # APPEND above APPENDLIMIT: refused before any byte of it is sent
    r.send(b"b APPEND INBOX {999999999}\r\n")
    assert r.line().startswith("b NO [TOOBIG]")
    # a literal in a non-APPEND command above the command cap
    r.send(b"c SELECT {100000}\r\n")
    assert r.line().startswith("c BAD")
    # the session is still in step
    r.send(b"d NOOP\r\n")
    assert r.until_tagged("d")[-1].startswith("d OK")
    # non-synchronizing literal above the cap: no way to stay in step -> BYE
    r.send(b"e APPEND INBOX {999999999+}\r\n")
    assert r.line().startswith("* BYE")
    assert r.closed()


def test_line_without_end_is_cut_off_and_told_why(server):
    """A command line that never ends (pushed as fast as the server reads, before login) is cut
    off at the command size cap, and the BYE reaches the client: the server drains what is still
    in flight before closing instead of resetting the connection over its own reply."""
    r = RawImap(server.imap)
    r.line()
    sent = send_until_reply(r, b"a NOOP ", b"x" * 65536, b"* BYE Command line or literal too long")
    assert sent < 20_000_000
    assert r.closed()


def test_endless_line_and_unterminated_literal(server):
    r = RawImap(server.imaps, tls=True)
    r.line()
    r.send(b"a NOOP " + b"x" * 70000)
    assert r.line().startswith("* BYE")
    r2 = RawImap(server.imaps, tls=True)
    r2.line()
    r2.send(f'a LOGIN "{BOB}" "{BOB_PW}"\r\n'.encode())
    r2.until_tagged("a")
    r2.send(b"b APPEND INBOX {50}\r\n")
    assert r2.line().startswith("+")
    r2.send(b"only a few bytes")
    r2.sock.close()
    # the server is fine
    m = imaps(server)
    assert m.noop()[0] == "OK"
    m.logout()


def test_nesting_bad_names_and_garbage(server):
    r = RawImap(server.imaps, tls=True)
    r.line()
    r.send(f'a LOGIN "{BOB}" "{BOB_PW}"\r\n'.encode())
    r.until_tagged("a")
    r.send(b"b SELECT INBOX\r\n")
    r.until_tagged("b")
    r.send(b"c SEARCH " + b"(" * 500 + b"ALL" + b")" * 500 + b"\r\n")
    assert r.until_tagged("c")[-1].startswith("c BAD")
    r.send(b"d FETCH 1 (" + b"(" * 500 + b"FLAGS" + b")" * 500 + b")\r\n")
    assert r.until_tagged("d")[-1].startswith("d BAD")
    r.send(b'e CREATE "bad\xff\xfename"\r\n')
    assert r.until_tagged("e")[-1].startswith(("e NO", "e BAD"))
    r.send(b"f CREATE &Jjo\r\n")
    assert r.until_tagged("f")[-1].startswith(("f NO", "f BAD"))
    r.send(b"\x00\x01\x02 garbage\r\n")
    assert "BAD" in r.line()
    r.send(b"g NOOP\r\n")
    assert r.until_tagged("g")[-1].startswith("g OK")


# ---------------------------------------------------------------- other real clients

@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl_imaps_and_starttls(server):
    send(server, MSG.replace("end to end", "for curl"))
    url = f"imaps://127.0.0.1:{server.imaps}/INBOX"
    out = subprocess.run(["curl", "-sS", "-k", "--user", f"{BOB}:{BOB_PW}", url, "-X", 'SEARCH SUBJECT "for curl"'],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    uid = out.stdout.split()[-1]
    out = subprocess.run(["curl", "-sS", "-k", "--user", f"{BOB}:{BOB_PW}", f"{url};MAILINDEX={uid}"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert b"Subject: for curl" in out.stdout
    # imap:// with --ssl-reqd goes through STARTTLS
    out = subprocess.run(["curl", "-sS", "-k", "--ssl-reqd", "--user", f"{BOB}:{BOB_PW}",
                          f"imap://127.0.0.1:{server.imap}/"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "INBOX" in out.stdout and "Archive" in out.stdout


@pytest.mark.skipif(not shutil.which("mbsync"), reason="mbsync (isync) not installed")
def test_mbsync_both_ways(server, tmp_path):
    send(server, MSG.replace("end to end", "for mbsync"))
    maildir = tmp_path / "mail"
    maildir.mkdir()
    pwfile = tmp_path / "pw"
    pwfile.write_text(BOB_PW)
    rc = tmp_path / "mbsyncrc"
    # `localhost` is in the certificate's names (127.0.0.1 is not), so mbsync verifies it
    rc.write_text(f"""IMAPAccount postern
Host localhost
Port {server.imaps}
User {BOB}
PassCmd "cat {pwfile}"
SSLType IMAPS
CertificateFile {server.dir / 'tls' / 'cert.pem'}
AuthMechs PLAIN

IMAPStore remote
Account postern

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns INBOX Archive
Create Both
SyncState *
""")
    p = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    new = list((maildir / "INBOX" / "cur").iterdir()) + list((maildir / "INBOX" / "new").iterdir())
    assert any(b"Subject: for mbsync" in f.read_bytes() for f in new)
    # local -> remote
    target = maildir / "Archive" / "new"
    target.mkdir(parents=True, exist_ok=True)
    (target / "1700000000.1.local").write_bytes(b"From: bob@example.test\r\nSubject: from maildir\r\n\r\nup\r\n")
    p = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert any(b"Subject: from maildir" in m for m in server.inbox(BOB, "Archive"))


def test_recent_semantics_across_sessions_rfc3501_2_3_2(make_server):
    """\\Recent: the first read-write session told of a message has it \\Recent, no later session
    does; EXAMINE sees recent messages without taking them; STATUS RECENT counts the messages no
    read-write session was told of; SEARCH RECENT/NEW/OLD follow; RECENT goes with EXISTS."""
    srv = make_server()

    def deliver(subject):
        with smtplib.SMTP("127.0.0.1", srv.smtp, timeout=10) as s:
            s.sendmail("someone@remote.test", [BOB], f"Subject: {subject}\r\n\r\nx\r\n")

    def login():
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
        m.login(BOB, BOB_PW)
        return m

    def recent_after(m, *cmd):
        m.response("RECENT")  # forget older ones
        getattr(m, cmd[0])(*cmd[1:])
        return m.response("RECENT")[1]

    def status_recent(m):
        return m.status("INBOX", "(RECENT)")[1][0]

    deliver("one")
    deliver("two")
    d = login()
    assert b"RECENT 2" in status_recent(d)
    # C examines first: it sees both recent, and takes nothing
    c = login()
    assert recent_after(c, "select", "INBOX", True) == [b"2"]
    assert b"RECENT 2" in status_recent(d)
    # A selects: both are its recent ones, with \Recent in FETCH and the searches
    a = login()
    assert recent_after(a, "select", "INBOX") == [b"2"]
    flags = a.fetch("1:*", "(FLAGS)")[1]
    assert all(b"\\Recent" in f for f in flags), flags
    assert a.search(None, "RECENT")[1] == [b"1 2"]
    assert a.search(None, "NEW")[1] == [b"1 2"]
    assert a.search(None, "OLD")[1] == [b""]
    a.store("1", "+FLAGS", "\\Seen")
    assert a.search(None, "NEW")[1] == [b"2"]
    # B selects after A: nothing recent for it; STATUS: nothing left for anyone
    b = login()
    assert recent_after(b, "select", "INBOX") == [b"0"]
    assert all(b"\\Recent" not in f for f in b.fetch("1:*", "(FLAGS)")[1])
    assert b.search(None, "OLD")[1] == [b"1 2"]
    assert b"RECENT 0" in status_recent(d)
    # a new message: whichever read-write session is told first has it recent (the RECENT
    # count is of every message \Recent in the session: its first two stay so)
    deliver("three")
    assert recent_after(a, "noop") == [b"3"]
    assert b"\\Recent" in a.fetch("3", "(FLAGS)")[1][0]
    assert recent_after(b, "noop") == [b"0"]
    assert b"\\Recent" not in b.fetch("3", "(FLAGS)")[1][0]
    # C (read-only) saw none of them taken by itself; after A took them, none is recent for it
    assert recent_after(c, "noop") == [b"0"]
    # \Recent cannot be stored by a client
    b.store("2", "+FLAGS", "(\\Recent)")
    assert b"\\Recent" not in b.fetch("2", "(FLAGS)")[1][0]
    # A selects again: what it already was told of is no longer recent
    assert recent_after(a, "select", "INBOX") == [b"0"]
    for m in (a, b, c, d):
        m.logout()


def test_binary_fetch_rfc3516(server):
    """FETCH BINARY[section] gives a part's content with its transfer encoding undone (base64,
    quoted-printable), as a literal8 when it holds NUL or 8-bit bytes; BINARY.SIZE its decoded size;
    BINARY without PEEK sets \\Seen; an encoding the server cannot undo is NO [UNKNOWN-CTE]."""
    r = raw_login(server)
    r.send(b"c CREATE Bin\r\n")
    r.until_tagged("c")
    msg = (b"Subject: bin\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9=\r\n!\r\n"
           b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n"
           b"--b\r\nContent-Type: application/x-odd\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n"
           b"--b--\r\n")
    r.send(b"a APPEND Bin {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert r.until_tagged("a")[-1].startswith("a OK")
    r.send(b"s SELECT Bin\r\n")
    r.until_tagged("s")
    r.send(b"f FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[2])\r\n")
    head = r.line()
    assert head == "* 1 FETCH (BINARY[1] ~{6}", head
    rest = "café!".encode() + b" BINARY.SIZE[2] 4)\r\n"
    assert r.buf.startswith(rest), r.buf
    r.buf = r.buf[len(rest):]
    assert r.until_tagged("f")[-1].startswith("f OK")
    r.send(b"g FETCH 1 (BINARY[2])\r\n")
    head = r.line()
    assert head == "* 1 FETCH (BINARY[2] ~{4}", head
    assert r.buf.startswith(b"\x00\x01\x02\x03"), r.buf
    r.buf = r.buf[4:]
    got = r.until_tagged("g")
    assert "\\Seen" in got[0] and got[-1].startswith("g OK"), got
    r.send(b"h FETCH 1 (BINARY.PEEK[3])\r\n")
    assert r.until_tagged("h")[-1].startswith("h NO [UNKNOWN-CTE]")
    r.send(b"z LOGOUT\r\n")


def test_list_extended_and_list_status_rfc5258_5819(server):
    """LIST-EXTENDED: selection by subscription or special use, RECURSIVEMATCH's CHILDINFO for a
    parent of what was selected, several patterns, \\Subscribed on request; LIST-STATUS: a STATUS
    after each mailbox listed; malformed options are BAD."""
    r = raw_login(server)

    def ok(tag, cmd):
        r.send(f"{tag} {cmd}\r\n".encode())
        got = r.until_tagged(tag)
        assert got[-1].startswith(f"{tag} OK"), got
        return got[:-1]

    r.send(b"c CAPABILITY\r\n")
    caps = r.until_tagged("c")[0]
    assert " LIST-EXTENDED" in caps and " LIST-STATUS" in caps, caps
    for box in ("Qx", "Qx/Sub", "Qx/Sub/Deep", "Qy"):
        ok("m", f"CREATE {box}")
    # CREATE subscribes; leave the parents unsubscribed
    ok("u1", "UNSUBSCRIBE Qx")
    ok("u2", "UNSUBSCRIBE Qx/Sub")
    body = b"Subject: lx\r\n\r\nx\r\n"
    r.send(b"a APPEND Qy {%d+}\r\n" % len(body) + body + b"\r\n")
    r.until_tagged("a")
    # subscribed only, with RECURSIVEMATCH: Qx and Qx/Sub are parents of a subscribed mailbox
    got = ok("l1", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "Q*"')
    assert got == ['* LIST (\\HasChildren) "/" "Qx" ("CHILDINFO" ("SUBSCRIBED"))',
                   '* LIST (\\HasChildren) "/" "Qx/Sub" ("CHILDINFO" ("SUBSCRIBED"))',
                   '* LIST (\\HasNoChildren \\Subscribed) "/" "Qx/Sub/Deep"',
                   '* LIST (\\HasNoChildren \\Subscribed) "/" "Qy"'], got
    # without RECURSIVEMATCH: the subscribed ones only
    got = ok("l2", 'LIST (SUBSCRIBED) "" "Q*"')
    assert [l.rsplit(" ", 1)[1] for l in got] == ['"Qx/Sub/Deep"', '"Qy"'], got
    # several patterns; RETURN (SUBSCRIBED) marks without selecting; STATUS after each
    got = ok("l3", 'LIST "" (Qy "Qx/%") RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))')
    assert got == ['* LIST (\\HasChildren) "/" "Qx/Sub"', '* STATUS "Qx/Sub" (MESSAGES 0 UNSEEN 0)',
                   '* LIST (\\HasNoChildren \\Subscribed) "/" "Qy"', '* STATUS "Qy" (MESSAGES 1 UNSEEN 1)'], got
    # special use
    got = ok("l4", 'LIST (SPECIAL-USE) "" "*"')
    names = {l.rsplit(" ", 1)[1].strip('"') for l in got}
    assert {"Sent", "Trash", "Drafts", "Junk"} <= names and "INBOX" not in names and "Qy" not in names, got
    # the plain form is unchanged
    got = ok("l5", 'LIST "" Qy')
    assert got == ['* LIST (\\HasNoChildren) "/" "Qy"'], got
    for bad in ('LIST (RECURSIVEMATCH) "" *', 'LIST (NOPE) "" *', 'LIST "" * RETURN (NOPE)',
                'LIST "" * RETURN (STATUS (NOPE))'):
        r.send(f"b {bad}\r\n".encode())
        assert r.until_tagged("b")[-1].startswith("b BAD"), bad
    r.send(b"z LOGOUT\r\n")
