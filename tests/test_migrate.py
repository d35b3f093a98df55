"""`postern migrate --from DIR --to postgres://…`: a populated SQLite installation (messages of
several sizes in several mailboxes with flags, an app password, a queued message, sealed secrets,
the audit chain) is copied into an empty PostgreSQL database; the same data directory, switched to
it, serves every message back byte for byte over IMAP with the same UIDs and flags, the app
password still opens IMAP, and the audit chain verifies there. A second copy into the now used
database is refused."""
import imaplib
import json
import smtplib

from conftest import ALICE, ALICE_PW, BOB, BOB_PW, init_dir, pg_database_on, run_cli, start, tls_client_context
from test_cluster import postgres, pytestmark  # noqa: F401  (the fixture and its skip marks)


def mailbox_contents(port, user, pw):
    """{mailbox: [(uid, flags, bytes)]} of every mailbox of an account, read over IMAPS."""
    m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_client_context(), timeout=20)
    m.login(user, pw)
    out = {}
    for name in ("INBOX", "Archive", "Sent"):
        typ, data = m.select(name, readonly=True)
        assert typ == "OK", (name, data)
        if int(data[0]) == 0:
            out[name] = []
            continue
        typ, items = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
        msgs = []
        for it in items:
            if isinstance(it, tuple):
                head = it[0].decode()
                uid = int(head.split("UID ")[1].split()[0])
                flags = head.split("FLAGS (")[1].split(")")[0]
                msgs.append((uid, sorted(f for f in flags.split() if f != "\\Recent"), it[1]))
        out[name] = sorted(msgs)
    m.logout()
    return out


def test_migrate_a_populated_sqlite_installation(tmp_path, postgres):
    d, off = init_dir(tmp_path, sqlite=True)
    srv = start(d, off)
    try:
        for i, size in enumerate([10, 5000, 200_000, 1_500_000]):
            body = ("x" * 76 + "\r\n") * (size // 78 + 1)
            with smtplib.SMTP("127.0.0.1", srv.smtp, timeout=30) as s:
                s.sendmail("someone@remote.test", [ALICE, BOB],
                           f"From: someone@remote.test\r\nTo: {ALICE}\r\nSubject: m{i}\r\n\r\n{body}")
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=20)
        m.login(ALICE, ALICE_PW)
        m.append("Archive", "(\\Seen \\Flagged)", None, b"From: a@b.test\r\nSubject: kept\r\n\r\narchived\r\n")
        m.select("INBOX")
        m.store("2", "+FLAGS", "(\\Answered)")
        m.logout()
        secret = json.loads(srv.cli("app-password", "create", BOB, "--name", "phone", "--json").stdout)["secret"]
        with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=20) as s:
            s.login(ALICE, ALICE_PW)
            s.sendmail(ALICE, ["far@remote.test"], f"From: {ALICE}\r\nTo: far@remote.test\r\nSubject: out\r\n\r\nqueued\r\n")
        before = {u: mailbox_contents(srv.imaps, u, pw) for u, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW))}
        assert len(before[ALICE]["INBOX"]) == 4 and len(before[ALICE]["Archive"]) == 1
        queued = len(srv.queue())
        assert queued == 1
    finally:
        assert srv.stop() == 0
    url = pg_database_on(postgres)
    out = run_cli(d, "migrate", "--from", str(d), "--to", url, "--to-password", "env:POSTERN_TEST_PGPASS")
    assert "intact in PostgreSQL" in out.stdout, out.stdout + out.stderr
    # four deliveries (one body each, for both recipients), the APPEND, the queued message
    assert "bodies: 6 " in out.stdout, out.stdout
    cfg = d / "postern.toml"
    text = cfg.read_text()
    assert 'database = "postern.db"' in text
    cfg.write_text(text.replace('database = "postern.db"',
                                f'database = "{url}"\ndatabase_password = "env:POSTERN_TEST_PGPASS"'))
    srv = start(d, off)
    try:
        after = {u: mailbox_contents(srv.imaps, u, pw) for u, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW))}
        assert after == before
        m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=20)
        m.login(BOB, secret)
        m.logout()
        assert len(srv.queue()) == queued
        assert "intact" in srv.cli("audit-log", "verify").stdout
        # new mail after the move gets the next UID
        with smtplib.SMTP("127.0.0.1", srv.smtp, timeout=30) as s:
            s.sendmail("someone@remote.test", [ALICE], "Subject: after\r\n\r\nafter the move\r\n")
        inbox = mailbox_contents(srv.imaps, ALICE, ALICE_PW)["INBOX"]
        assert inbox[-1][0] > before[ALICE]["INBOX"][-1][0] and inbox[-1][2].endswith(b"after the move\r\n")
    finally:
        assert srv.stop() == 0
    # the database is in use now: a second copy is refused
    again = run_cli(d, "migrate", "--from", str(d), "--to", url, "--to-password", "env:POSTERN_TEST_PGPASS",
                    check=False)
    assert again.returncode != 0
