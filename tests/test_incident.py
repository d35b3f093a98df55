"""Incident response: `postern incident lock` on an account with live sessions (IMAP in IDLE,
POP3, an authenticated SMTP submission session) and an app password ends them all within a
couple of seconds, refuses its password and app password, holds its queued mail and records it;
another account's IDLE session is untouched; the timeline shows what happened; unlock needs a new
password. Over the admin API a helpdesk administrator may lock but not unlock."""
import imaplib
import json
import poplib
import smtplib
import socket
import time

from conftest import ALICE, ALICE_PW, BOB, BOB_PW, tls_client_context
from test_admin_api import create_admin, first_login
from test_hardening import call

NEW_PW = "Quartz-Lantern-Meadow-4417!"


def idle(srv, user, pw):
    """An IMAPS session of `user` in IDLE; returns the raw TLS socket."""
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    m.login(user, pw)
    m.select("INBOX")
    m.send(b"I1 IDLE\r\n")
    assert m.readline().startswith(b"+"), "IDLE not accepted"
    return m


def read_until_closed(sock_read, deadline):
    """Reads lines until the server closes; returns what it said."""
    said = b""
    while time.time() < deadline:
        try:
            line = sock_read()
        except (OSError, EOFError, imaplib.IMAP4.abort, poplib.error_proto):
            return said, True
        if not line:
            return said, True
        said += line
    return said, False


def imap_login_ok(srv, user, pw):
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    try:
        m.login(user, pw)
        m.logout()
        return True
    except imaplib.IMAP4.error:
        return False


def test_incident_lock_ends_sessions_and_unlock_needs_a_new_password(make_server):
    srv = make_server()
    app_pw = json.loads(srv.cli("app-password", "create", ALICE, "--name", "phone", "--json").stdout)["secret"]
    assert imap_login_ok(srv, ALICE, app_pw)
    # mail of hers waiting in the queue (delivery is off in tests)
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        s.login(ALICE, ALICE_PW)
        s.sendmail(ALICE, ["someone@remote.test"], f"From: {ALICE}\r\nSubject: out\r\n\r\nx\r\n")
    # her live sessions, and one of Bob's
    alice_idle = idle(srv, ALICE, ALICE_PW)
    bob_idle = idle(srv, BOB, BOB_PW)
    pop = poplib.POP3_SSL("127.0.0.1", srv.pop3s, context=tls_client_context(), timeout=10)
    pop.user(ALICE)
    pop.pass_(ALICE_PW)
    smtp = smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10)
    smtp.login(ALICE, ALICE_PW)

    t0 = time.time()
    out = json.loads(srv.cli("incident", "lock", ALICE, "--reason", "phished", "--json").stdout)
    assert out == {"app_passwords_revoked": 1, "client_certs_removed": 0, "second_factor_removed": False, "queued_messages_held": 1}, out
    # IMAP IDLE: a BYE, then the connection closes
    said, closed = read_until_closed(alice_idle.readline, t0 + 5)
    assert closed and b"* BYE" in said, said
    assert time.time() - t0 < 3, f"IDLE session ended only after {time.time() - t0:.1f} s"
    # POP3 and the SMTP session end too
    pop.sock.settimeout(5)
    said, closed = read_until_closed(pop.file.readline, t0 + 5)
    assert closed, said
    smtp.sock.settimeout(5)
    try:
        code, _ = smtp.noop()
        assert code == 421, code
    except (smtplib.SMTPServerDisconnected, OSError):
        pass
    # Bob's session is untouched
    bob_idle.send(b"DONE\r\n")
    assert bob_idle.readline().startswith(b"I1 OK")
    bob_idle.logout()
    # her password and her app password are refused; her queued mail is held
    assert not imap_login_ok(srv, ALICE, ALICE_PW)
    assert not imap_login_ok(srv, ALICE, app_pw)
    assert "held" in srv.cli("queue", "list").stdout
    # the timeline tells the story, oldest first
    events = json.loads(srv.cli("incident", "timeline", ALICE, "--json").stdout)
    names = [e["event"] for e in events]
    assert "app_password_created" in names or any("app_password" in n for n in names), names
    lock = [e for e in events if e["event"] == "incident_locked"]
    assert len(lock) == 1 and lock[0]["actor"].startswith("cli:") and "phished" in lock[0]["reason"]
    assert names.index("incident_locked") > names.index(next(n for n in names if n.startswith("auth")))
    # what she sent: the message she submitted, with its source
    sent = [e for e in events if e["event"] == "mail_sent"]
    assert len(sent) == 1 and sent[0]["ip"] == "127.0.0.1" and sent[0]["protocol"] == "submissions", sent
    assert "1 remote and 0 local recipients" in sent[0]["reason"] and f"from <{ALICE}>" in sent[0]["reason"], sent
    text = srv.cli("incident", "timeline", ALICE).stdout
    assert "incident_locked" in text and "phished" in text and "mail_sent" in text
    # unlock needs a new password (the policy applies); the old one never comes back
    weak = srv.cli("incident", "unlock", ALICE, "--password-stdin", stdin="Summer2024!!\n", check=False)
    assert weak.returncode != 0
    srv.cli("incident", "unlock", ALICE, "--password-stdin", stdin=NEW_PW + "\n")
    assert imap_login_ok(srv, ALICE, NEW_PW)
    assert not imap_login_ok(srv, ALICE, ALICE_PW)
    assert "held" in srv.cli("queue", "list").stdout, "held mail is released by an administrator, not by unlock"


def test_helpdesk_may_lock_but_not_unlock(make_server):
    srv = make_server()
    boot = create_admin(srv, "bootstrap")
    helpdesk = create_admin(srv, "add", "help1", "--role", "helpdesk")

    class Shim:
        def call(self, method, path, body=None, token=None):
            c, r, _ = call(srv, method, path, body, token)
            return c, r

    htok, _, _ = first_login(Shim(), "help1", helpdesk["password"])
    stok, _, _ = first_login(Shim(), "admin", boot["password"])
    c, r, _ = call(srv, "POST", f"/users/{BOB}/incident/lock", {"reason": "helpdesk ticket 42"}, token=htok)
    assert c == 200 and r["address"] == BOB, r
    assert not imap_login_ok(srv, BOB, BOB_PW)
    c, r, _ = call(srv, "POST", f"/users/{BOB}/incident/unlock", {"password": NEW_PW}, token=htok)
    assert c == 403, (c, r)
    c, events, _ = call(srv, "GET", f"/users/{BOB}/timeline?since_secs=3600", token=htok)
    assert c == 200 and any(e["event"] == "incident_locked" and e["actor"] == "api:help1" for e in events), events
    c, r, _ = call(srv, "POST", f"/users/{BOB}/incident/unlock", {"password": NEW_PW}, token=stok)
    assert c == 204, (c, r)
    assert imap_login_ok(srv, BOB, NEW_PW)
    # unlocking an account that is not locked is refused, not an error
    c, r, _ = call(srv, "POST", f"/users/{BOB}/incident/unlock", {"password": NEW_PW + "x"}, token=stok)
    assert c == 422, (c, r)
