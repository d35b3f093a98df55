"""App passwords: generated, shown once, stored as a digest, scoped to protocols, networks and a
lifetime, revocable; last use recorded."""
import imaplib
import json
import poplib
import smtplib
import time

import pytest

from conftest import BOB, BOB_PW, tls_client_context


def create(srv, *args):
    out = srv.cli("app-password", "create", BOB, *args, "--json").stdout
    return json.loads(out)["secret"]


def imap_ok(srv, pw):
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    try:
        m.login(BOB, pw)
        m.logout()
        return True
    except imaplib.IMAP4.error:
        return False


def smtp_ok(srv, pw):
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        try:
            s.login(BOB, pw)
            return True
        except smtplib.SMTPAuthenticationError:
            return False


def test_app_password_lifecycle_and_scopes(make_server):
    srv = make_server()
    phone = create(srv, "--name", "phone")
    assert len(phone) == 29 and phone != BOB_PW
    assert imap_ok(srv, phone) and smtp_ok(srv, phone)
    p = poplib.POP3_SSL("127.0.0.1", srv.pop3s, context=tls_client_context(), timeout=10)
    p.user(BOB)
    p.pass_(phone)
    p.quit()
    # only a digest is stored
    with srv.db() as c:
        stored = [r[0] for r in c.execute("SELECT digest FROM app_passwords")]
    assert stored and phone not in stored[0]
    listing = srv.cli("app-password", "list", BOB).stdout
    assert "phone" in listing and phone not in listing and "127.0.0.1" in listing
    # scoped to SMTP: IMAP refused with the uniform failure
    sender = create(srv, "--name", "bookkeeping", "--protocols", "smtp")
    assert smtp_ok(srv, sender) and not imap_ok(srv, sender)
    # scoped to a network the client is not in
    office = create(srv, "--name", "office", "--from", "127.0.9.0/24")
    assert not imap_ok(srv, office)
    # expiry
    short = create(srv, "--name", "short", "--expires", "1s")
    time.sleep(2.1)
    assert not imap_ok(srv, short)
    # revoke takes effect at once
    srv.cli("app-password", "revoke", BOB, "phone")
    assert not imap_ok(srv, phone)
    # the account password keeps working (2FA is off for this account)
    assert imap_ok(srv, BOB_PW)
    # duplicate names and bad protocols are refused
    assert srv.cli("app-password", "create", BOB, "--name", "bookkeeping", check=False).returncode != 0
    assert srv.cli("app-password", "create", BOB, "--name", "x", "--protocols", "ftp", check=False).returncode != 0
    with srv.db() as c:
        reasons = {r[0] for r in c.execute("SELECT reason FROM audit_log WHERE reason IS NOT NULL")}
    assert "app_password_scope" in reasons


def test_forced_change_expiry_and_history(make_server):
    srv = make_server()
    app = create(srv, "--name", "laptop")
    srv.cli("user", "expire-password", BOB)
    assert "a change was forced" in srv.cli("user", "show", BOB).stdout
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="EXPIRED"):
        m.login(BOB, BOB_PW)
    # a wrong password still gets the uniform reply, not EXPIRED
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.imaps, ssl_context=tls_client_context(), timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(BOB, "Not-The-Password-42")
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions, context=tls_client_context(), timeout=10) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(BOB, BOB_PW)
        assert b"expired" in e.value.smtp_error
    # app passwords keep working
    assert imap_ok(srv, app)
    # the same password again is refused (history), a new one works
    again = srv.cli("user", "passwd", BOB, "--password-stdin", stdin=BOB_PW + "\n", check=False)
    assert again.returncode != 0 and "last 5 passwords" in again.stderr
    new = "Lantern#Quiver-Osprey-91"
    srv.cli("user", "passwd", BOB, "--password-stdin", stdin=new + "\n")
    assert imap_ok(srv, new) and not imap_ok(srv, BOB_PW)
    back = srv.cli("user", "passwd", BOB, "--password-stdin", stdin=BOB_PW + "\n", check=False)
    assert back.returncode != 0


def test_max_password_age(make_server, tmp_path):
    srv = make_server(toml_extra="")
    srv.stop()
    cfg = srv.dir / "postern.toml"
    cfg.write_text(cfg.read_text().replace("[password_policy]\n", "[password_policy]\nmax_age_days = 30\n"))
    with srv.db(write=True) as c:
        c.execute("UPDATE accounts SET password_changed_at = password_changed_at - 31 * 86400 WHERE address = ?", (BOB,))
        # Alice's password expires in about 5 days: within the default 14-day warning period
        c.execute("UPDATE accounts SET password_changed_at = password_changed_at - 25 * 86400 - 60 WHERE address = ?",
                  ("alice@example.test",))
    from conftest import start
    srv2 = start(srv.dir, srv.offset)
    try:
        assert "password expires:" in srv2.cli("user", "show", BOB).stdout
        m = imaplib.IMAP4_SSL("127.0.0.1", srv2.imaps, ssl_context=tls_client_context(), timeout=10)
        with pytest.raises(imaplib.IMAP4.error, match="EXPIRED"):
            m.login(BOB, BOB_PW)
        from conftest import ALICE, ALICE_PW
        m = imaplib.IMAP4_SSL("127.0.0.1", srv2.imaps, ssl_context=tls_client_context(), timeout=10)
        m.login(ALICE, ALICE_PW)
        alerts = [r.decode() for r in m.untagged_responses.get("OK", [])]
        assert any("[ALERT] your password expires in 4 days" in a for a in alerts), alerts
        m.logout()
        with smtplib.SMTP_SSL("127.0.0.1", srv2.submissions, context=tls_client_context(), timeout=10) as s:
            code, text = s.login(ALICE, ALICE_PW)
            assert code == 235 and b"expires in 4 days" in text
        p = poplib.POP3_SSL("127.0.0.1", srv2.pop3s, context=tls_client_context(), timeout=10)
        p.user(ALICE)
        assert b"expires in 4 days" in p.pass_(ALICE_PW)
        p.quit()
    finally:
        assert srv2.stop() == 0
