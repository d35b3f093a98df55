"""Nothing acknowledged is lost: the server is killed with SIGKILL at random moments under SMTP
and IMAP load, 20 times; after each restart every message that got a 250 (or an APPEND OK) is
present exactly once unless an EXPUNGE (IMAP) or a DELE + QUIT (POP3) of it was answered OK
(then it is gone; one cut off before its answer may be either), MOVEd messages are in exactly one mailbox, UIDs only grow, the
database passes its integrity check, and no blob file is left without its row."""
import imaplib
import poplib
import random
import signal
import smtplib
import threading
import time
import uuid

from conftest import PG, open_db, ALICE, ALICE_PW, BOB, BOB_PW, init_dir, run_cli, start, tls_client_context

DAVE, DAVE_PW = "dave@example.test", "Crash-Kill-Pop3-Drop-7!q"

ROUNDS = 20


def smtp_load(srv, stop, confirmed, lock, to=ALICE):
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", srv.smtp, timeout=5) as s:
                while not stop.is_set():
                    token = uuid.uuid4().hex
                    body = f"From: x@remote.test\r\nTo: {to}\r\nSubject: {token}\r\n\r\n" + ("line\r\n" * 50) + f"end {token}\r\n"
                    s.sendmail("x@remote.test", [to], body)
                    with lock:
                        confirmed.append(token)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)


def imap_load(srv, stop, appended, lock):
    while not stop.is_set():
        try:
            m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=5)
            m.login(BOB, BOB_PW)
            while not stop.is_set():
                token = uuid.uuid4().hex
                msg = f"Subject: {token}\r\n\r\nappended {token}\r\n".encode()
                typ, _ = m.append("INBOX", None, None, msg)
                if typ == "OK":
                    with lock:
                        appended.append(token)
                m.select("INBOX")
                typ, data = m.uid("SEARCH", None, "ALL")
                uids = data[0].split() if typ == "OK" else []
                if len(uids) > 3:
                    m.uid("MOVE", uids[0], "Archive")
        except (OSError, imaplib.IMAP4.error, imaplib.IMAP4.abort, ValueError):
            time.sleep(0.05)


def expunge_load(srv, stop, pending, expunged, lock):
    """Alice deletes her oldest message again and again: STORE \\Deleted + UID EXPUNGE of that UID."""
    while not stop.is_set():
        try:
            m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=5)
            m.login(ALICE, ALICE_PW)
            while not stop.is_set():
                m.select("INBOX")
                typ, data = m.uid("SEARCH", None, "ALL")
                uids = data[0].split() if typ == "OK" else []
                if len(uids) < 5:
                    time.sleep(0.05)
                    continue
                uid = uids[0].decode()
                typ, data = m.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                if typ != "OK" or not data or not isinstance(data[0], tuple):
                    continue
                token = data[0][1].split(b"Subject: ")[1][:32].decode()
                with lock:
                    pending.add(token)
                m.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
                typ, _ = m.uid("EXPUNGE", uid)
                if typ == "OK":
                    with lock:
                        expunged.add(token)
        except (OSError, imaplib.IMAP4.error, imaplib.IMAP4.abort, ValueError, IndexError):
            time.sleep(0.05)


def pop3_load(srv, stop, pending, deleted, lock):
    """Dave reads and deletes his oldest message over POP3S: RETR 1, DELE 1, QUIT (UPDATE)."""
    while not stop.is_set():
        try:
            p = poplib.POP3_SSL("127.0.0.1", srv.pop3s, context=tls_client_context(), timeout=5)
            p.user(DAVE)
            p.pass_(DAVE_PW)
            count, _ = p.stat()
            if count < 5:
                p.quit()
                time.sleep(0.05)
                continue
            _, lines, _ = p.retr(1)
            token = next(l for l in lines if l.startswith(b"Subject: "))[9:41].decode()
            with lock:
                pending.add(token)
            p.dele(1)
            if p.quit().startswith(b"+OK"):
                with lock:
                    deleted.add(token)
        except (OSError, poplib.error_proto, StopIteration, ValueError):
            time.sleep(0.05)


def mailbox_tokens(srv, address, mailbox):
    with srv.db() as c:
        rows = c.execute(
            "SELECT m.uid, m.blob_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
            "JOIN accounts a ON a.id = b.account_id WHERE a.address = ? AND b.name = ? ORDER BY m.uid",
            (address, mailbox)).fetchall()
    out = []
    for (uid, _), data in zip(rows, srv.bodies([b for _, b in rows])):  # a row always has its body
        token = data.split(b"Subject: ")[1][:32].decode()
        assert f"end {token}".encode() in data or f"appended {token}".encode() in data, "half a message"
        out.append((uid, token))
    return out


def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path):
    d, off = init_dir(tmp_path)
    run_cli(d, "user", "add", DAVE, "--password-stdin", stdin=DAVE_PW + "\n")
    confirmed, appended, lock = [], [], threading.Lock()
    pending, expunged = set(), set()
    for_dave, pop_pending, pop_deleted = [], set(), set()
    rng = random.Random(7)
    max_uid = {}
    for rnd in range(ROUNDS):
        srv = start(d, off)
        stop = threading.Event()
        threads = [threading.Thread(target=smtp_load, args=(srv, stop, confirmed, lock)) for _ in range(2)]
        threads.append(threading.Thread(target=smtp_load, args=(srv, stop, for_dave, lock, DAVE)))
        threads.append(threading.Thread(target=pop3_load, args=(srv, stop, pop_pending, pop_deleted, lock)))
        threads.append(threading.Thread(target=imap_load, args=(srv, stop, appended, lock)))
        threads.append(threading.Thread(target=expunge_load, args=(srv, stop, pending, expunged, lock)))
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.2))
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=15)
        # after each crash: UIDs only grow (a restart never reuses one)
        for addr, box in ((ALICE, "INBOX"), (BOB, "INBOX"), (BOB, "Archive"), (DAVE, "INBOX")):
            uids = [u for u, _ in mailbox_tokens(srv, addr, box)]
            assert uids == sorted(set(uids))
            with open_db(d) as c:
                nxt = c.execute("SELECT uidnext FROM mailboxes b JOIN accounts a ON a.id = b.account_id "
                                "WHERE a.address = ? AND b.name = ?", (addr, box)).fetchone()[0]
            assert nxt >= max_uid.get((addr, box), 0)
            max_uid[(addr, box)] = nxt
    assert len(confirmed) > ROUNDS * 5, f"too little load to mean anything: {len(confirmed)}"
    assert len(appended) > ROUNDS
    assert len(expunged) > ROUNDS, f"too few expunges to mean anything: {len(expunged)}"
    assert len(pop_deleted) > ROUNDS, f"too few POP3 deletions to mean anything: {len(pop_deleted)}"
    # a clean start recovers and sweeps what the crashes left
    srv = start(d, off)
    try:
        deadline = time.time() + 20
        while "orphan blobs swept" not in srv.log() and time.time() < deadline:
            time.sleep(0.2)
        assert "orphan blobs swept" in srv.log()
        assert srv.cli("audit-log", "verify").returncode == 0
        with open_db(d) as c:
            referenced = {r[0] for r in c.execute("SELECT blob_id FROM messages UNION SELECT blob_id FROM queue")}
            if PG:
                # bodies are rows committed with their messages; unused ones are swept an hour
                # after their last message went (another node may still show it)
                in_db = {r[0] for r in c.execute("SELECT id FROM bodies")}
                assert referenced <= in_db, f"{len(referenced - in_db)} message(s) without a body"
            else:
                assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if not PG:
            on_disk = {p.name for p in (d / "blobs").rglob("*") if p.is_file()}
            assert on_disk == referenced, f"{len(on_disk - referenced)} orphan blob(s)"
        inbox = [t for _, t in mailbox_tokens(srv, ALICE, "INBOX")]
        # every 250 is there exactly once, unless its EXPUNGE was answered OK: then it is gone
        present = set(inbox)
        missing = [t for t in confirmed if t not in present and t not in pending]
        assert not missing, f"{len(missing)} acknowledged message(s) lost"
        back = [t for t in expunged if t in present]
        assert not back, f"{len(back)} expunged message(s) came back"
        assert len(inbox) == len(set(inbox)), "a message stored twice"
        # APPEND OK: present once, in INBOX or (moved) in Archive, never in both
        bob = [t for _, t in mailbox_tokens(srv, BOB, "INBOX")] + [t for _, t in mailbox_tokens(srv, BOB, "Archive")]
        assert len(bob) == len(set(bob)), "a moved message is in two mailboxes"
        lost = [t for t in appended if t not in set(bob)]
        assert not lost, f"{len(lost)} appended message(s) lost"
        # POP3: a DELE committed by a QUIT answered +OK is gone; everything else acknowledged stays
        dave = [t for _, t in mailbox_tokens(srv, DAVE, "INBOX")]
        assert len(dave) == len(set(dave)), "a message stored twice"
        missing = [t for t in for_dave if t not in set(dave) and t not in pop_pending]
        assert not missing, f"{len(missing)} acknowledged message(s) lost from the POP3 maildrop"
        back = [t for t in pop_deleted if t in set(dave)]
        assert not back, f"{len(back)} POP3-deleted message(s) came back"
        print(f"POP3: {len(for_dave)} delivered, {len(pop_deleted)} deleted by QUIT")
        print(f"{ROUNDS} kills: {len(confirmed)} messages acknowledged, {len(appended)} appends, "
              f"{len(expunged)} expunges, none lost or resurrected")
    finally:
        assert srv.stop() == 0
