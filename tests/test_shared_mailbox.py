"""One mailbox, many sessions (RFC 2180): honest replies when another session changed the mailbox,
and POP3 framing that never hangs a client. The transcripts in ../shared/repro/ are turned into
the regression tests below; the load test at the end checks every reply against the mailbox."""
import poplib
import random
import re
import socket
import threading
import time

from conftest import BOB, BOB_PW, tls_client_context


class Imap:
    """A raw IMAP client that reads literals, for exact replies."""

    def __init__(self, port, user=BOB, pw=BOB_PW):
        self.sock = tls_client_context().wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20))
        self.buf = b""
        self.n = 0
        assert self._line().startswith(b"* OK")
        lines = self.cmd(f'LOGIN "{user}" "{pw}"')
        assert lines[-1].split(b" ")[1] == b"OK", lines

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(self.buf)
        self.buf += chunk

    def _line(self):
        """One response line, with any literal it announces inlined."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, self.buf = self.buf.split(b"\r\n", 1)
            out += line
            m = re.search(rb"\{(\d+)\}$", line)
            if not m:
                return out
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]

    def cmd(self, text):
        self.n += 1
        tag = f"t{self.n}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines = []
        while True:
            l = self._line()
            lines.append(l)
            if l.startswith(tag + b" ") or l.startswith(b"* BYE"):
                return lines

    def append(self, mailbox, data: bytes):
        self.n += 1
        tag = f"t{self.n}".encode()
        self.sock.sendall(tag + f" APPEND {mailbox} {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
        lines = []
        while True:
            l = self._line()
            lines.append(l)
            if l.startswith(tag + b" "):
                return lines

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def tagged(lines):
    return lines[-1].split(b" ", 2)[1].decode()


def fresh_box(a, name):
    a.cmd(f"DELETE {name}")
    assert tagged(a.cmd(f"CREATE {name}")) == "OK"


def test_copy_and_move_of_a_message_expunged_elsewhere_say_no(server):
    a, b = Imap(server.imaps), Imap(server.imaps)
    try:
        fresh_box(b, "Src4")
        b.append("Src4", b"Subject: exp-copy\r\n\r\nbody\r\n")
        assert tagged(a.cmd("SELECT Src4")) == "OK"
        b.cmd("SELECT Src4")
        b.cmd("STORE 1 +FLAGS (\\Deleted)")
        assert tagged(b.cmd("EXPUNGE")) == "OK"
        before = len(server.inbox(BOB))
        r = a.cmd("COPY 1 INBOX")
        assert tagged(r) == "NO" and b"EXPUNGEISSUED" in r[-1], r
        r = a.cmd("MOVE 1 INBOX")
        assert tagged(r) == "NO" and b"EXPUNGEISSUED" in r[-1], r
        assert len(server.inbox(BOB)) == before, "nothing arrived"
        r = a.cmd("NOOP")
        assert b"* 1 EXPUNGE" in r and tagged(r) == "OK", r
    finally:
        a.close()
        b.close()


def test_fetch_of_a_message_expunged_elsewhere_serves_the_body_until_told(server):
    a, b = Imap(server.imaps), Imap(server.imaps)
    try:
        fresh_box(b, "T1box")
        body = b"Subject: t1-unique\r\n\r\nbody t1\r\n"
        b.append("T1box", body)
        assert tagged(a.cmd("SELECT T1box")) == "OK"
        b.cmd("SELECT T1box")
        b.cmd("STORE 1 +FLAGS (\\Deleted)")
        assert tagged(b.cmd("EXPUNGE")) == "OK"
        r = a.cmd("FETCH 1 (UID BODY.PEEK[])")
        assert tagged(r) == "OK", r
        assert body in b"".join(r), r
        assert b"{0}" not in b"".join(r)
        r = a.cmd("STORE 1 +FLAGS (\\Flagged)")
        assert tagged(r) == "NO" and b"EXPUNGEISSUED" in r[-1], r
        r = a.cmd("NOOP")
        assert b"* 1 EXPUNGE" in r, r
        r = a.cmd("FETCH 1 (UID)")
        assert tagged(r) == "BAD", r
    finally:
        a.close()
        b.close()
    assert "blob unreadable" not in server.log()


def test_a_mailbox_deleted_under_a_session_is_never_reported_as_success(server):
    a, b = Imap(server.imaps), Imap(server.imaps)
    try:
        fresh_box(b, "Ghost")
        b.append("Ghost", b"Subject: ghost-1\r\n\r\nx\r\n")
        b.append("Ghost", b"Subject: ghost-2\r\n\r\ny\r\n")
        assert tagged(a.cmd("SELECT Ghost")) == "OK"
        assert tagged(b.cmd("DELETE Ghost")) == "OK"
        before = len(server.inbox(BOB))
        r = a.cmd("COPY 1 INBOX")
        assert r[-1].startswith(b"* BYE"), r
        assert all(b" OK " not in l for l in r), r
        assert len(server.inbox(BOB)) == before
    finally:
        a.close()
        b.close()
    # and in IDLE: told at once
    a, b = Imap(server.imaps), Imap(server.imaps)
    try:
        fresh_box(b, "Ghost2")
        assert tagged(a.cmd("SELECT Ghost2")) == "OK"
        a.sock.sendall(b"i IDLE\r\n")
        assert a._line().startswith(b"+")
        b.cmd("DELETE Ghost2")
        a.sock.settimeout(5)
        assert a._line().startswith(b"* BYE")
    finally:
        a.close()
        b.close()


def test_sequence_numbers_past_the_end_are_bad(server):
    a = Imap(server.imaps)
    try:
        fresh_box(a, "Seq30")
        for i in range(3):
            a.append("Seq30", f"Subject: s{i}\r\n\r\nx\r\n".encode())
        a.cmd("SELECT Seq30")
        assert tagged(a.cmd("FETCH 4294967295:1 (FLAGS)")) == "BAD"
        assert tagged(a.cmd("STORE 9 +FLAGS (\\Seen)")) == "BAD"
        assert tagged(a.cmd("COPY 4 INBOX")) == "BAD"
        assert tagged(a.cmd("FETCH 1:* (FLAGS)")) == "OK"
        assert tagged(a.cmd("UID FETCH 1:4294967295 (FLAGS)")) == "OK"
    finally:
        a.close()


def pop3(server):
    p = poplib.POP3_SSL("127.0.0.1", server.pop3s, context=tls_client_context(), timeout=20)
    p.user(BOB)
    p.pass_(BOB_PW)
    return p


def raw_pop3(server):
    s = tls_client_context().wrap_socket(socket.create_connection(("127.0.0.1", server.pop3s), timeout=20))
    f = s.makefile("rb")
    assert f.readline().startswith(b"+OK")
    for c in (f"USER {BOB}", f"PASS {BOB_PW}"):
        s.sendall(c.encode() + b"\r\n")
        assert f.readline().startswith(b"+OK")
    return s, f


def read_until_terminator(f):
    """What an RFC 1939 client does: read lines until a line that is exactly ".\\r\\n"."""
    out = b""
    while True:
        line = f.readline()
        if not line:
            raise EOFError(out)
        if line == b".\r\n":
            return out
        out += line


def test_pop3_framing_of_a_message_appended_with_bare_lf(server):
    a = Imap(server.imaps)
    try:
        r = a.append("INBOX", b"Subject: t3a\n\nline1\n.\nafter-dot-line\n")
        assert tagged(r) == "OK", r
    finally:
        a.close()
    stored = server.inbox(BOB)[-1]
    assert b"\n" not in stored.replace(b"\r\n", b""), "stored with CRLF only"
    s, f = raw_pop3(server)
    try:
        s.sendall(b"STAT\r\n")
        n = int(f.readline().split()[1])
        s.sendall(f"RETR {n}\r\n".encode())
        status = f.readline()
        assert status.startswith(b"+OK"), status
        s.settimeout(5)
        body = read_until_terminator(f)
        assert body == b"Subject: t3a\r\n\r\nline1\r\n..\r\nafter-dot-line\r\n", body
        assert int(status.split()[1]) == len(stored)
        s.sendall(f"LIST {n}\r\n".encode())
        assert int(f.readline().split()[2]) == len(stored)
        s.sendall(f"TOP {n} 0\r\n".encode())
        assert f.readline().startswith(b"+OK")
        assert read_until_terminator(f) == b"Subject: t3a\r\n\r\n"
    finally:
        s.close()


def test_pop3_retr_of_a_message_expunged_over_imap_is_deleted_not_temporary(server):
    a = Imap(server.imaps)
    a.append("INBOX", b"Subject: pop-gone\r\n\r\nbye\r\n")
    s, f = raw_pop3(server)
    try:
        s.sendall(b"STAT\r\n")
        n = int(f.readline().split()[1])
        a.cmd("SELECT INBOX")
        r = a.cmd("SEARCH SUBJECT pop-gone")
        uid_seq = r[0].split()[-1].decode()
        a.cmd(f"STORE {uid_seq} +FLAGS (\\Deleted)")
        assert tagged(a.cmd("EXPUNGE")) == "OK"
        for c in (f"RETR {n}", f"TOP {n} 0", f"LIST {n}", f"UIDL {n}", f"DELE {n}"):
            s.sendall(c.encode() + b"\r\n")
            line = f.readline()
            assert line.startswith(b"-ERR") and b"SYS/TEMP" not in line, (c, line)
        s.sendall(b"STAT\r\n")
        assert int(f.readline().split()[1]) == n - 1
        s.sendall(b"RSET\r\n")
        assert f.readline().startswith(b"+OK")
        s.sendall(f"LIST {n}\r\n".encode())
        assert f.readline().startswith(b"-ERR")
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"+OK")
    finally:
        a.close()
        s.close()


def test_concurrent_sessions_never_get_ok_for_work_not_done(server):
    """Several sessions expunge, move, copy, store and fetch in one mailbox at once; every reply
    is checked: a COPY/MOVE OK carries COPYUID naming messages that exist, a FETCH of BODY[]
    never returns an empty body, and no tagged reply is a server error."""
    setup = Imap(server.imaps)
    fresh_box(setup, "Busy")
    fresh_box(setup, "BusyDst")
    body_of = {}
    for i in range(40):
        data = f"Subject: busy-{i}\r\n\r\n{'x' * (i + 1)}\r\n".encode()
        body_of[i] = data
        setup.append("Busy", data)
    setup.close()
    problems = []
    copies = []
    stop = time.time() + 8

    def worker(seed):
        rnd = random.Random(seed)
        c = Imap(server.imaps)
        try:
            c.cmd("SELECT Busy")
            while time.time() < stop:
                exists = None
                op = rnd.choice(["fetch", "fetch", "copy", "move", "store", "expunge", "noop", "append"])
                if op == "append":
                    i = rnd.randrange(40)
                    r = c.append("Busy", body_of[i])
                    if tagged(r) != "OK":
                        problems.append(("append", r))
                    continue
                r = c.cmd("NOOP")
                for l in r:
                    m = re.match(rb"\* (\d+) EXISTS", l)
                    if m:
                        exists = int(m.group(1))
                if exists is None:
                    r = c.cmd("SELECT Busy")
                    exists = next(int(l.split()[1]) for l in r if l.endswith(b"EXISTS"))
                if exists == 0:
                    continue
                n = rnd.randint(1, exists)
                if op == "fetch":
                    r = c.cmd(f"FETCH {n} (UID BODY.PEEK[])")
                    if tagged(r) not in ("OK", "NO"):
                        problems.append(("fetch", r))
                    for l in r:
                        if b"BODY[] {0}" in l:
                            problems.append(("empty body", r))
                elif op in ("copy", "move"):
                    r = c.cmd(f"{op.upper()} {n} BusyDst")
                    t = tagged(r)
                    text = b" ".join(r)
                    if t == "OK":
                        m = re.search(rb"COPYUID \d+ (\d+) (\d+)", text)
                        if not m:
                            problems.append((op, "OK without COPYUID", r))
                        else:
                            copies.append(int(m.group(2)))
                    elif t != "NO" or b"EXPUNGEISSUED" not in text:
                        problems.append((op, r))
                elif op == "store":
                    r = c.cmd(f"STORE {n} +FLAGS (\\Deleted)")
                    if tagged(r) == "NO" and b"EXPUNGEISSUED" not in r[-1]:
                        problems.append(("store", r))
                    elif tagged(r) not in ("OK", "NO"):
                        problems.append(("store", r))
                elif op == "expunge":
                    r = c.cmd("EXPUNGE")
                    if tagged(r) != "OK":
                        problems.append(("expunge", r))
                    seen = 0
                    for l in r:
                        m = re.match(rb"\* (\d+) EXPUNGE", l)
                        if m:
                            seen += 1
                            if int(m.group(1)) > exists + 1000:
                                problems.append(("bad expunge number", r))
        except Exception as e:  # noqa: BLE001
            problems.append(("exception", repr(e)))
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not problems, problems[:5]
    # every COPY/MOVE that said OK left its copy in the destination (unless expunged there: nobody does)
    with server.db() as db:
        dst = {r[0] for r in db.execute(
            "SELECT m.uid FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
            "JOIN accounts a ON a.id = b.account_id WHERE a.address = ? AND b.name = 'BusyDst'", (BOB,))}
    assert set(copies) <= dst, sorted(set(copies) - dst)[:10]
    assert copies, "the load made copies"
    assert "blob unreadable" not in server.log()
